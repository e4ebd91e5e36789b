"""Image quality metrics on 8-bit pixels, as a viewer sees them (scikit-image implementations).

scikit-image, pytorch-msssim and ssimulacra2 load on first use: PSNR needs only numpy, so the
dashboard of a video-only install (no scikit-image, see pyproject.toml's extras) still shows it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def _u8(img: Image.Image | np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels, got {arr.dtype}")
    return arr


def psnr(reference: Image.Image | np.ndarray, test: Image.Image | np.ndarray) -> float:
    """PSNR in dB over all RGB values (data range 255); inf for identical images."""
    a, b = _u8(reference), _u8(test)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    if np.array_equal(a, b):
        return float("inf")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)  # as skimage's peak_signal_noise_ratio
    return float(10 * np.log10(255.0**2 / mse))


def ssim(reference: Image.Image | np.ndarray, test: Image.Image | np.ndarray) -> float | None:
    """Mean SSIM over RGB channels (scikit-image defaults: 7x7 uniform window).

    A picture narrower than 7 pixels gets the largest odd window that fits (3 or 5); one narrower
    than 3 has no SSIM (None): there is no neighbourhood to compare.
    """
    a, b = _u8(reference), _u8(test)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    side = min(a.shape[:2])
    if side < 3:
        return None
    win = min(7, side if side % 2 else side - 1)
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=255, win_size=win))


def ms_ssim(reference: Image.Image | np.ndarray, test: Image.Image | np.ndarray) -> float:
    """MS-SSIM (Wang et al. 2003; pytorch-msssim, 5 scales, Gaussian 11x11 window) on RGB in [0, 255].

    Images smaller than 161 pixels on a side can't be down-sampled 4 times with that window; for
    those it uses a 7x7 window and as many scales as fit, and says so in the log.
    """
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    a, b = _u8(reference), _u8(test)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    ta = torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None]
    tb = torch.from_numpy(b.astype(np.float32)).permute(2, 0, 1)[None]
    side = min(a.shape[:2])
    if side > 160:
        return float(_ms_ssim(ta, tb, data_range=255.0))
    scales = max(1, min(5, int(np.log2(side / 7)) + 1))
    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333][:scales]
    return float(_ms_ssim(ta, tb, data_range=255.0, win_size=7, weights=weights))


def ssimulacra2(reference: Image.Image | np.ndarray, test: Image.Image | np.ndarray) -> float:
    """SSIMULACRA2 (Cloudinary's perceptual metric; pip ``ssimulacra2``): 100 = identical, 90 = visually
    lossless, 70 = high quality, 50 = medium, 30 = low, below 10 = very low."""

    from ssimulacra2 import compute_ssimulacra2

    a, b = _u8(reference), _u8(test)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    # The package reads files; PNG is lossless, so this measures exactly these pixels.
    with tempfile.TemporaryDirectory() as tmp:
        pa, pb = Path(tmp) / "a.png", Path(tmp) / "b.png"
        Image.fromarray(a).save(pa, compress_level=1)
        Image.fromarray(b).save(pb, compress_level=1)
        return float(compute_ssimulacra2(str(pa), str(pb)))
