"""SSIMULACRA2 in torch, differentiable, so the codec can be trained on the metric it is judged by.

Why: the learned codec's weak point against AVIF is SSIMULACRA2 at low rates (blur costs it far more
there than in PSNR), and MS-SSIM only partly stands in for it. This module computes the same score as
the pip ``ssimulacra2`` package that ``latentcomm.metrics`` evaluates with (XYB colour, six scales,
SSIM and edge-difference maps in L1 and L4 norms, the published weights and final transform) as a
batch of torch tensors with gradients. The metric's constants are read from that package, so the two
cannot drift apart; ``tests/test_perceptual.py`` holds the two to the same score on real images.

One difference, on purpose: on images under 256 pixels a side, which have fewer than six scales, the
package (like libjxl's C++) numbers its weights by the scales present, so every weight after the
missing scale shifts to another plane's term. Here each term keeps its own weight: a 192-pixel
training crop is scored the way a large photo's pixels are, which is what the benchmarks measure.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from ssimulacra2 import ssimulacra2 as _ref

#: Gaussian blur of the SSIM statistics: sigma 1.5, radius 5 (scipy's truncate 3.33).
_SIGMA, _RADIUS = 1.5, 5
#: Scales scored while the image is at least this many pixels a side (the reference's rule).
_MIN_SIDE = 8


@functools.lru_cache(maxsize=8)
def _kernel(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    t = torch.arange(-_RADIUS, _RADIUS + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / _SIGMA) ** 2)
    return (k / k.sum()).to(device=device, dtype=dtype)


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with the reference's borders: zeros left and right,
    mirrored (edge pixel repeated) above and below. (The package's XYB planes are transposed, so its
    "vertical" zero padding falls on the image's sides.)"""
    c, r = x.shape[1], _RADIUS
    k = _kernel(x.device, x.dtype)
    x = F.pad(x, (r, r, 0, 0))
    x = torch.cat([x[..., :r, :].flip(-2), x, x[..., -r:, :].flip(-2)], dim=-2)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _positive_xyb(linear: torch.Tensor) -> torch.Tensor:
    """Linear RGB (B, 3, H, W) to the reference's positive XYB planes."""
    m = torch.as_tensor(_ref.kOpsinAbsorbanceMatrix, dtype=linear.dtype, device=linear.device).view(3, 3)
    bias = torch.as_tensor(_ref.kOpsinAbsorbanceBias, dtype=linear.dtype, device=linear.device)
    mixed = torch.einsum("ij,bjhw->bihw", m, linear) + bias.view(1, 3, 1, 1)
    # The cube root's slope is steep near 0 but finite above the bias, which every pixel has.
    mixed = mixed.clamp_min(float(bias.min())) ** (1 / 3) - bias.view(1, 3, 1, 1) ** (1 / 3)
    x = 0.5 * (mixed[:, 0] - mixed[:, 1])
    y = 0.5 * (mixed[:, 0] + mixed[:, 1])
    b = mixed[:, 2]
    return torch.stack([x * 14.0 + 0.42, y + 0.01, (b - y) + 0.55], dim=1)


def _l1_l4(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and plane: mean and fourth-root of the mean fourth power, (B, 3) each."""
    l1 = d.mean(dim=(2, 3))
    l4 = (d.pow(4).mean(dim=(2, 3)) + 1e-30) ** 0.25  # the epsilon keeps the root's gradient finite at 0
    return l1, l4


def ssimulacra2_score(reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
    """SSIMULACRA2 of each image pair: (B, 3, H, W) sRGB in [0, 1] -> (B,), 100 = identical.

    Differentiable in ``distorted`` (and ``reference``). Scores below 0 are possible, as in the
    reference implementation. Images need at least 8 pixels a side.
    """
    if reference.shape != distorted.shape or reference.dim() != 4 or reference.shape[1] != 3:
        raise ValueError(
            f"need two (B, 3, H, W) tensors of one shape, got {tuple(reference.shape)} and {tuple(distorted.shape)}"
        )
    if min(reference.shape[2:]) < _MIN_SIDE:
        raise ValueError(f"SSIMULACRA2 needs images of at least {_MIN_SIDE} pixels a side")
    # Variances are differences of blurred squares: in bf16 (a training step's autocast) they cancel
    # to noise and the score is meaningless (45 becomes -79 on a held-out crop), so always float32+.
    with torch.autocast(reference.device.type, enabled=False):
        return _score(
            reference.float() if reference.dtype != torch.float64 else reference,
            distorted.float() if distorted.dtype != torch.float64 else distorted,
        )


def _score(reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
    lin1 = _srgb_to_linear(reference.clamp(0, 1))
    lin2 = _srgb_to_linear(distorted.clamp(0, 1))
    # terms[scale] = (ssim L1, ssim L4, artifact L1, artifact L4, detail-lost L1, detail-lost L4), each (B, 3)
    terms = []
    for scale in range(_ref.kNumScales):
        if scale:  # 2x2 means in linear light; a last odd row or column averages what it has
            lin1 = F.avg_pool2d(lin1, 2, ceil_mode=True)
            lin2 = F.avg_pool2d(lin2, 2, ceil_mode=True)
        if min(lin1.shape[2:]) < _MIN_SIDE:
            break
        a, b = _positive_xyb(lin1), _positive_xyb(lin2)
        mu1, mu2 = _blur(a), _blur(b)
        s11, s22, s12 = _blur(a * a), _blur(b * b), _blur(a * b)
        num_m = 1.0 - (mu1 - mu2) ** 2
        num_s = 2.0 * (s12 - mu1 * mu2) + _ref.kC2
        den_s = (s11 - mu1 * mu1) + (s22 - mu2 * mu2) + _ref.kC2
        ssim_d = (1.0 - num_m * num_s / den_s).clamp_min(0.0)
        ratio = (1.0 + (b - mu2).abs()) / (1.0 + (a - mu1).abs()) - 1.0
        terms.append((*_l1_l4(ssim_d), *_l1_l4(ratio.clamp_min(0.0)), *_l1_l4((-ratio).clamp_min(0.0))))
    weights = torch.as_tensor(_ref.weights, dtype=reference.dtype, device=reference.device)
    total = torch.zeros(reference.shape[0], dtype=reference.dtype, device=reference.device)
    # The reference's weight order: plane, scale, norm (L1, L4), then (ssim, artifact, detail lost).
    for c in range(3):
        for s, (ssim1, ssim4, art1, art4, lost1, lost4) in enumerate(terms):
            base = (c * _ref.kNumScales + s) * 6
            for n, (ss, ar, lo) in enumerate(((ssim1, art1, lost1), (ssim4, art4, lost4))):
                i = base + 3 * n
                total = total + weights[i] * ss[:, c] + weights[i + 1] * ar[:, c] + weights[i + 2] * lo[:, c]
    s = total * 0.9562382616834844
    s = 2.326765642916932 * s - 0.020884521182843837 * s**2 + 6.248496625763138e-05 * s**3
    return 100.0 - 10.0 * s.clamp_min(1e-6) ** 0.6276336467831387
