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


def serve_mpegts(url: str, frames_per_client: list[int], fps: int = 10, size: int = 64) -> None:
    """A live stream server, as an IP camera is one: for each entry, wait for a client at ``url``
    (FFmpeg's ``tcp://host:port?listen=1``), send it that many frames of a pan as MPEG-TS in real
    time, then drop it. Run it in its own process (``python -m tests.videos URL N [N ...]``)."""
    import av

    src = np.asarray(Image.open(REPO / "temp" / "apple.jpeg").convert("RGB").resize((size * 3, size * 2)))
    n = 0
    for count in frames_per_client:
        try:
            n = _serve_one(url, count, fps, size, src, n)
        except (av.error.FFmpegError, OSError):  # the client left first: the next one is served all the same
            n += count


def _serve_one(url: str, count: int, fps: int, size: int, src: np.ndarray, n: int) -> int:
    import time

    import av

    with av.open(url, "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 2_000_000
        stream.codec_context.gop_size = 1  # every picture decodable alone: a client joins anywhere
        for _ in range(count):
            x = (n * 4) % (2 * size)
            view = np.ascontiguousarray(src[size // 2 : size // 2 + size, x : x + size])
            for packet in stream.encode(av.VideoFrame.from_ndarray(view, format="rgb24")):
                container.mux(packet)
            n += 1
            time.sleep(1 / fps)
        for packet in stream.encode():
            container.mux(packet)
    return n


def push_rtsp(url: str, frames: int, fps: int = 10, size: int = 64) -> None:
    """A camera publishing to an RTSP server (``rtsp://host:port/path``, ANNOUNCE/RECORD over UDP, as
    FFmpeg's ``-f rtsp`` does): a pan in H.264, every 10th picture a key frame, in real time."""
    import time

    import av

    src = np.asarray(Image.open(REPO / "temp" / "apple.jpeg").convert("RGB").resize((size * 3, size * 2)))
    with av.open(url, "w", format="rtsp", options={"rtsp_transport": "udp"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"tune": "zerolatency", "preset": "ultrafast", "g": "10"}
        t0 = time.monotonic()
        for n in range(frames):
            x = (n * 4) % (2 * size)
            view = np.ascontiguousarray(src[size // 2 : size // 2 + size, x : x + size])
            frame = av.VideoFrame.from_ndarray(view, format="rgb24")
            frame.pts = n
            for packet in stream.encode(frame):
                container.mux(packet)
            time.sleep(max(0.0, t0 + (n + 1) / fps - time.monotonic()))


if __name__ == "__main__":
    import sys

    if sys.argv[1].startswith("rtsp://"):
        push_rtsp(sys.argv[1], int(sys.argv[2]))
    else:
        serve_mpegts(sys.argv[1], [int(v) for v in sys.argv[2:]])
