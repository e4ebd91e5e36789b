"""The Engine: batches, padding, tiling, precision choice and the fast path's quality guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from latentcomm.device import cpu_flags, resolve_device, resolve_precision
from latentcomm.engine import TILING_THRESHOLD_PIXELS, Engine
from latentcomm.errors import DeviceError, ModelLoadError
from latentcomm.images import pil_to_tensor, tensor_to_pil
from latentcomm.metrics import psnr
from latentcomm.models import EMBEDDED_MODEL_DIR
from tests.conftest import REPO, make_tiny_vae


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(str(tiny_model), "cpu", "fp32", warmup=False)


def test_batch_matches_one_by_one(engine):
    x = torch.rand(3, 3, 64, 48) * 2 - 1
    batch = engine.decode(engine.encode(x))
    singles = torch.cat([engine.decode(engine.encode(x[i : i + 1])) for i in range(3)])
    assert batch.shape == (3, 3, 64, 48)
    torch.testing.assert_close(batch, singles, atol=1e-4, rtol=1e-4)


def test_odd_sizes_are_padded_and_cropped_back(engine):
    x = torch.rand(1, 3, 37, 53) * 2 - 1
    latent, size = engine.encode_image(x)
    assert latent.shape == (1, 4, 5, 7) and size == (37, 53)
    assert engine.decode_image(latent, size).shape == (1, 3, 37, 53)


def test_large_images_use_tiling(engine):
    side = int(TILING_THRESHOLD_PIXELS**0.5) + 64
    x = torch.zeros(1, 3, side, side)
    z = engine.encode(x)
    assert engine.vae.use_tiling
    assert engine.decode(z).shape == (1, 3, side, side)
    engine.encode(torch.zeros(1, 3, 64, 64))
    assert not engine.vae.use_tiling


def test_wrong_stride_model_is_refused(tmp_path):
    from diffusers import AutoencoderKL

    AutoencoderKL(
        block_out_channels=[8, 8],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=8,
    ).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="down-samples by 2"):
        Engine(str(tmp_path), "cpu", "fp32", warmup=False)


def test_precision_policy():
    cpu = torch.device("cpu")
    # bf16 only where it is faster: AMX. AVX512-BF16 alone runs bf16 convolutions ~8x slower than fp32.
    fast = "amx_bf16" in cpu_flags()
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if fast else torch.float32)
    assert resolve_precision("fp32", cpu) == torch.float32
    assert resolve_precision("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(DeviceError):
        resolve_precision("fp16", cpu)
    with pytest.raises(DeviceError):
        resolve_precision("int4", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA"):
            resolve_device("cuda")


def test_encoding_is_deterministic_across_loads(tiny_model):
    a = Engine(str(tiny_model), "cpu", "fp32", warmup=False)
    b = Engine(str(make_tiny_vae(tiny_model.parent / "same-seed")), "cpu", "fp32", warmup=False)
    x = pil_to_tensor(Image.open(REPO / "temp" / "apple.jpeg").convert("RGB"))
    np.testing.assert_array_equal(a.encode(x).numpy(), b.encode(x).numpy())


@pytest.mark.skipif(not (EMBEDDED_MODEL_DIR / "config.json").exists(), reason="embedded model missing")
def test_bf16_fast_path_is_invisible_with_real_weights():
    """Quality guard: the bf16 reconstruction is >= 40 dB from the fp32 one (real trained weights)."""
    x = pil_to_tensor(Image.open(REPO / "temp" / "apple.jpeg").convert("RGB"))
    ref = Engine(str(EMBEDDED_MODEL_DIR), "cpu", "fp32", warmup=False)
    fast = Engine(str(EMBEDDED_MODEL_DIR), "cpu", "bf16")
    assert fast.dtype == torch.bfloat16
    assert psnr(tensor_to_pil(ref.decode(ref.encode(x))), tensor_to_pil(fast.decode(fast.encode(x)))) >= 40.0


def test_non_finite_fast_path_output_is_recomputed_in_fp32(tiny_model):
    """The fp16/bf16 overflow guard: a non-finite result under autocast is redone in fp32."""
    engine = Engine(str(tiny_model), "cpu", "bf16", warmup=False)
    calls = []

    def overflowing(t: torch.Tensor) -> torch.Tensor:
        calls.append(torch.is_autocast_enabled("cpu"))
        return torch.full_like(t, float("inf")) if calls[-1] else t * 2

    out = engine._run(overflowing, torch.ones(1, 3, 8, 8))
    assert calls == [True, False]
    assert torch.equal(out, torch.full((1, 3, 8, 8), 2.0))
