"""Image <-> tensor conversion.

Everything that turns a file into the autoencoder's input, or the autoencoder's output into pixels,
lives here so that the sender, the receiver, the metrics script, training and the benchmarks agree
on one convention: RGB, float tensors in [-1, 1] (the diffusers VAE convention), NCHW.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from latentcomm.errors import ImageError

if TYPE_CHECKING:  # tensors only for the learned and VAE codecs: a video-only install has no torch
    import torch

#: The autoencoder down-samples by 8; inputs must be a multiple of this.
LATENT_STRIDE = 8


def to_rgb(img: Image.Image) -> Image.Image:
    """Return an 8-bit RGB copy of any PIL image.

    Grayscale, palette, RGBA (composited on white, so transparent areas don't turn black) and
    16-bit images all occur in the wild; the model only understands 8-bit RGB.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr / _full_scale(img.mode, arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _full_scale(mode: str, arr: np.ndarray) -> float:
    """The value that means white for a single-channel image of this mode.

    16-bit modes: 65535. Float ("F", e.g. TIFFs from scientific cameras) holds [0, 1] by convention,
    unless its values say it holds 8- or 16-bit levels. 32-bit integer ("I"): 8- or 16-bit levels
    by its range, else its own maximum.
    """
    if mode.startswith("I;16"):
        return 65535.0
    peak = float(arr.max()) if arr.size else 0.0
    if mode == "F" and peak <= 1.0:
        return 1.0
    for full in (255.0, 65535.0):
        if peak <= full:
            return full
    return peak


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit RGB, honouring EXIF orientation.

    Raises ImageError with a one-line reason for a missing, unreadable or non-image file.
    """
    p = Path(path)
    if not p.exists():
        raise ImageError(f"image not found: {p}")
    if p.is_dir():
        raise ImageError(f"expected an image file, got a directory: {p}")
    try:
        with Image.open(p) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except UnidentifiedImageError:
        raise ImageError(f"not an image Pillow can read: {p}") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"refusing {p}: {exc}") from None
    except OSError as exc:
        raise ImageError(f"cannot read image {p}: {exc}") from None


def decode_image_bytes(
    data: bytes, max_pixels: int | None = None, formats: tuple[str, ...] | None = None
) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG...) to RGB; ImageError if they are not an image.

    ``max_pixels`` is checked from the file header, before any pixel is decoded, so a small file
    that claims a huge canvas (a "decompression bomb") is refused without allocating it.
    ``formats`` (Pillow names, e.g. ``("PNG",)``): only these decoders may touch the bytes, so a
    peer can't reach Pillow's other, less exercised parsers through a field the spec calls PNG.
    """
    if formats == ("PNG",) and not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ImageError("invalid image bytes: not a PNG (no PNG signature)")
    try:
        with Image.open(io.BytesIO(data), formats=list(formats) if formats else None) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageError(f"image of {img.width}x{img.height} exceeds {max_pixels} pixels")
            img.load()
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ImageError(f"invalid image bytes: {exc}") from None


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes of an image (lossless; used for reference images and tests)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Plain resize to size x size, as the original sender does (aspect ratio not kept)."""
    return img.resize((size, size), Image.Resampling.LANCZOS)


def center_crop_square(img: Image.Image, size: int) -> Image.Image:
    """Fit to size x size by scaling the short side and cropping the centre (LANCZOS)."""
    return ImageOps.fit(img, (size, size), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor (1, 3, H, W) in [-1, 1]."""
    import torch

    arr = np.asarray(to_rgb(img), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """Tensor (1, 3, H, W) or (3, H, W) in [-1, 1] -> RGB PIL image (rounded, clipped)."""
    return Image.fromarray(tensor_to_uint8(x), mode="RGB")


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """Tensor in [-1, 1] -> HxWx3 uint8 array, rounding to nearest."""
    import torch

    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected a single image, got batch of {x.shape[0]}")
        x = x[0]
    x = x.detach().float().cpu().clamp(-1.0, 1.0)
    arr = ((x + 1.0) * 127.5).round().to(torch.uint8)
    return arr.permute(1, 2, 0).numpy()


def unit_float_to_image(arr: np.ndarray) -> Image.Image:
    """Float (3, H, W) in [0, 1] (the original sender's wire layout) -> RGB image."""
    hwc = np.clip(arr.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(hwc, mode="RGB")


def pad_to_multiple(x: torch.Tensor, multiple: int = LATENT_STRIDE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad an NCHW tensor on the bottom/right to a multiple of ``multiple``.

    Reflection padding keeps the border statistics natural, so the codec doesn't waste bits (or
    produce ringing) on an artificial black edge. Returns the padded tensor and the original (H, W)
    to crop back to after decoding.
    """
    import torch

    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop an NCHW tensor back to (H, W) from the top-left corner."""
    h, w = size
    return x[..., :h, :w]
