"""Test videos, generated with PyAV (none are committed): a panning view and a nearly static one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_video(path: Path, frames: int = 60, fps: int = 10, size: int = 256, motion: str = "pan") -> Path:
    """``pan``: the view slides 4 pixels a frame; ``static``: a fixed view with a small moving patch."""
    import av

    src = np.asarray(Image.open(REPO / "temp" / "apple.jpeg").convert("RGB").resize((size * 3, size * 2)))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 8_000_000
        for i in range(frames):
            if motion == "pan":
                x = (i * 4) % (2 * size)
                img = src[size // 2 : size // 2 + size, x : x + size]
            else:
                img = src[size // 2 : size // 2 + size, size : 2 * size].copy()
                y0 = size // 2 + int(12 * np.sin(i / 3))
                img[y0 : y0 + 16, size // 2 : size // 2 + 16] = 255
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
