"""The differentiable SSIMULACRA2 that the codec can train on scores what the benchmarks' metric scores."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from latentcomm import data
from latentcomm.metrics import ssimulacra2
from latentcomm.perceptual import ssimulacra2_score


def as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].double() / 255.0


def jpeg(im: Image.Image, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.mark.parametrize("quality", [8, 50, 92])
def test_it_gives_the_pip_packages_score_on_a_held_out_photo(quality):
    """Odd sizes included (the last row and column of a scale average what they have): the same score
    to a thousandth, from heavy blocking (below zero) to nearly transparent. (257 rows: all six scales;
    below 256 the package shifts its weights, see latentcomm.perceptual.)"""
    im = Image.open(data.heldout_photos()[0]).convert("RGB")
    im = im.crop((0, 0, 301, 257))
    a, b = np.asarray(im), jpeg(im, quality)
    assert float(ssimulacra2_score(as_tensor(a), as_tensor(b))) == pytest.approx(ssimulacra2(a, b), abs=1e-3)


def test_a_batch_scores_each_pair_and_identical_images_score_100():
    im = Image.open(data.heldout_photos()[1]).convert("RGB").crop((0, 0, 128, 128))
    a, b = as_tensor(np.asarray(im)), as_tensor(jpeg(im, 30))
    scores = ssimulacra2_score(torch.cat([a, a]), torch.cat([a, b]))
    assert scores[0] == pytest.approx(100.0, abs=0.05) and scores[1] < 90


def test_its_gradient_leads_towards_a_better_score():
    """A few gradient steps on a blurred copy raise its score: what training needs from it."""
    im = Image.open(data.heldout_photos()[2]).convert("RGB").crop((0, 0, 128, 128))
    a = as_tensor(np.asarray(im)).float()
    b = torch.nn.functional.avg_pool2d(a, 3, 1, 1, count_include_pad=False).requires_grad_(True)
    start = float(ssimulacra2_score(a, b).detach())
    for _ in range(5):
        (grad,) = torch.autograd.grad(ssimulacra2_score(a, b).sum(), b)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        b = (b + 0.001 * grad.sign()).clamp(0, 1).detach().requires_grad_(True)
    assert float(ssimulacra2_score(a, b).detach()) > start + 2


def test_it_refuses_shapes_it_cannot_score():
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="one shape"):
        ssimulacra2_score(x, torch.rand(1, 3, 16, 17))
    with pytest.raises(ValueError, match="8 pixels"):
        ssimulacra2_score(torch.rand(1, 3, 7, 16), torch.rand(1, 3, 7, 16))


def test_the_training_loss_scores_its_perceptual_terms_in_float32_under_bf16_autocast():
    """A training step runs ``rd_loss`` inside bf16 autocast on CPUs with native bf16 (and on CUDA).
    MS-SSIM's and SSIMULACRA2's variances are differences of blurred squares, which cancel in bf16
    (a held-out crop scored MS-SSIM 1.016 and SSIMULACRA2 -79 instead of 0.985 and 45), so both terms
    must come out as in float32. The decoder's output here is a real JPEG of a held-out photo."""
    from latentcomm.codecs.learned.model import LearnedCodecConfig, LearnedCodecModel
    from latentcomm.training.codec import rd_loss

    im = Image.open(data.heldout_photos()[3]).convert("RGB").crop((0, 0, 192, 192))
    x, x_hat = as_tensor(np.asarray(im)).float(), as_tensor(jpeg(im, 20)).float()
    ones = torch.ones(1, 8, 4, 4)

    def decoded(_x, _quality):
        return {"x_hat": x_hat, "y_likelihood": ones, "z_likelihood": ones}

    lambdas_only = LearnedCodecModel(LearnedCodecConfig(N=8, M=8, H=8))
    levels = torch.tensor([3])
    _, want = rd_loss(lambdas_only, x, levels, decoded, msssim_weight=0.3, s2_weight=0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, got = rd_loss(lambdas_only, x, levels, decoded, msssim_weight=0.3, s2_weight=0.3)
    assert 0.5 < float(want["ms_ssim"]) < 1 and 0 < float(want["ssimulacra2"]) < 100
    assert float(got["ms_ssim"]) == pytest.approx(float(want["ms_ssim"]), abs=1e-5)
    assert float(got["ssimulacra2"]) == pytest.approx(float(want["ssimulacra2"]), abs=1e-3)
