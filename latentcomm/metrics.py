"""Image quality metrics on 8-bit pixels, as a viewer sees them (scikit-image implementations)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


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
    return float(peak_signal_noise_ratio(a, b, data_range=255))


def ssim(reference: Image.Image | np.ndarray, test: Image.Image | np.ndarray) -> float:
    """Mean SSIM over RGB channels (scikit-image defaults: 7x7 uniform window)."""
    a, b = _u8(reference), _u8(test)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))
