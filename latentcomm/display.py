"""Showing and saving the receiver's output: original and reconstruction side by side."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)


def display_available() -> bool:
    """Can matplotlib open a window here? (False on headless servers, CI, SSH without X.)"""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        import matplotlib
    except ModuleNotFoundError:  # an install without the [display] extra: pictures go to --out instead
        log.info("matplotlib is not installed (pip install 'latentcomm[display]'): no window")
        return False
    backend = matplotlib.get_backend().lower()
    return backend not in ("agg", "pdf", "svg", "ps", "cairo", "template") and "inline" not in backend


def _figure(original: Image.Image | None, recon: Image.Image, title: str | None = None, text: str | None = None):
    import matplotlib.pyplot as plt

    panels = [("Original", original), ("Reconstructed", recon)] if original is not None else [("Reconstructed", recon)]
    w = max(recon.width, 1) / 100
    h = max(recon.height, 1) / 100
    scale = 4.0 / max(w, h)
    lines = text.splitlines()[:6] if text else []
    extra = 0.25 * len(lines)
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * w * scale, h * scale + 0.6 + extra), squeeze=False)
    for ax, (name, img) in zip(axes[0], panels, strict=True):
        ax.imshow(img)
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, extra / (h * scale + 0.6 + extra), 1, 1))
    if lines:  # the text sent beside the image, under the pictures (first lines, each cut at 120 characters)
        fig.text(0.01, 0.01, "\n".join(line[:120] for line in lines), fontsize=8, va="bottom", family="monospace")
    return fig


def compare_image(original: Image.Image | None, recon: Image.Image) -> Image.Image:
    """Original and reconstruction side by side at 1:1 pixels, titled, on white.

    Drawn with Pillow rather than matplotlib: ~50x faster, which matters for a server writing every
    image, and the pixels are not resampled, so the saved file is an exact comparison.
    """
    panels = [("Original", original), ("Reconstructed", recon)] if original is not None else [("Reconstructed", recon)]
    pad, title_h = 8, 22
    width = sum(img.width for _, img in panels) + pad * (len(panels) + 1)
    height = max(img.height for _, img in panels) + title_h + 2 * pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = pad
    for title, img in panels:
        draw.text((x, pad), title, fill="black", font=ImageFont.load_default())
        canvas.paste(img, (x, pad + title_h))
        x += img.width + pad
    return canvas


def save_outputs(out_dir: Path, index: int, original: Image.Image | None, recon: Image.Image) -> tuple[Path, Path]:
    """Write NNNN_recon.png (exact pixels) and NNNN_compare.png (side by side)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    recon_path = out_dir / f"{index:04d}_recon.png"
    compare_path = out_dir / f"{index:04d}_compare.png"
    recon.save(recon_path)
    compare_image(original, recon).save(compare_path)
    return recon_path, compare_path


class Viewer:
    """A matplotlib window that shows each new pair; ``block`` waits for the user to close it."""

    def __init__(self) -> None:
        import matplotlib.pyplot as plt

        self._plt = plt
        self._fig = None

    def show(
        self, original: Image.Image | None, recon: Image.Image, title: str | None, block: bool, text: str | None = None
    ) -> None:
        plt = self._plt
        if self._fig is not None:
            plt.close(self._fig)
        self._fig = _figure(original, recon, title, text)
        if block:
            plt.show()
            self._fig = None
        else:
            plt.show(block=False)
            plt.pause(0.001)

    def pump(self) -> None:
        """Keep an open window responsive while waiting for the next frame."""
        if self._fig is not None and self._plt.fignum_exists(self._fig.number):
            self._plt.pause(0.05)
