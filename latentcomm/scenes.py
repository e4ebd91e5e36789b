"""Scenes made here for video tests, benchmarks and evaluation (none are committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentcomm import data
from latentcomm.codecs.video import fit_picture
from latentcomm.images import load_image


def station_scene(path: Path, seconds: float = 10.0, fps: int = 10) -> Path:
    """A fixed camera over a hall: a held-out photo as the still background, three people-sized
    patches of another photo walking across at different speeds, and a little sensor noise. Written
    losslessly (FFV1), 640x360, 10 fps, frames named station-NNNNNN by the sender."""
    import av

    photos = data.heldout_photos()
    hall = np.asarray(fit_picture(load_image(photos[0]), (640, 360))).astype(np.int16)
    crowd = np.asarray(fit_picture(load_image(photos[3 % len(photos)]), (640, 360)))
    walkers = [(40, 100, 200, 3.0, 0), (50, 120, 160, -5.0, 600), (36, 90, 230, 8.0, 100)]  # w, h, y, speed, x0
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv444p"
        for i in range(int(seconds * fps)):
            img = hall.copy()
            for k, (w, h, y, v, x0) in enumerate(walkers):
                x = int(x0 + v * i) % (640 - w)
                img[y - h // 2 : y + h // 2, x : x + w] = crowd[60 * k : 60 * k + h, 100 * k : 100 * k + w]
            img = np.clip(img + rng.normal(0, 1.5, img.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
