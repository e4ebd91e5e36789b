"""Receiver-side enhancement of decoded H.264 pictures (``receiver_sdvae.py --enhance``).

A small residual CNN after the video decoder, told each macroblock's quantizer: what the decoder
itself exports (FFmpeg's ``export_side_data=venc_params``), so the network knows where and how hard
the encoder quantized. Nothing changes on the wire: the same bits, a better picture, at the
receiver's cost alone. It is the video counterpart of the learned codec's post-network, and of the
seed's receiver post-processing idea (GFPGAN for faces).

Shape: the picture folded 2x2 into 12 channels (``pixel_unshuffle``) plus one plane of the
quantizer ((QP - 30) / 10, per macroblock), then ``depth`` 3x3 convolutions of ``width`` channels
with leaky ReLUs, back to 12 channels, unfolded and added to the picture. The last layer starts at
zero, so an untrained network is the identity. Trained by ``python -m latentcomm.training --objective
enhance`` on frames libx264 decoded at stream rates (pans over the training photos).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latentcomm.data import MODELS_ROOT
from latentcomm.errors import ModelLoadError

log = logging.getLogger(__name__)

CLASS_NAME = "VideoEnhancer"
#: The shipped enhancer (H.264 only: what it was trained on).
ENHANCER_DIR = MODELS_ROOT / "latentcomm-enhance-h264"
#: Macroblock size of the quantizer map (H.264).
BLOCK = 16
#: A stream is enhanced if enhancing a picture of its size is predicted to take at most this share
#: of the time between frames (the sender tells its frame rate), and while its first
#: ``ENHANCE_TRIAL`` pictures each did; beyond it the receiver would fall behind and the sender
#: supersede frames (measured: 640x352 at 10 fps on 2 cores, 63% of frames shown).
ENHANCE_SHARE = 0.5
ENHANCE_TRIAL = 3


@dataclass
class EnhancerConfig:
    _class_name: str = CLASS_NAME
    width: int = 48
    depth: int = 4
    codec: str = "h264"


class VideoEnhancer(nn.Module):
    """``x + f(x, qp)`` on a decoded picture; see the module docstring."""

    def __init__(self, config: EnhancerConfig | None = None) -> None:
        super().__init__()
        self.config = config or EnhancerConfig()
        w, d = self.config.width, self.config.depth
        layers: list[nn.Module] = [nn.Conv2d(13, w, 3, 1, 1), nn.LeakyReLU(0.1)]
        for _ in range(d - 2):
            layers += [nn.Conv2d(w, w, 3, 1, 1), nn.LeakyReLU(0.1)]
        layers.append(nn.Conv2d(w, 12, 3, 1, 1))
        self.body = nn.Sequential(*layers)
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)
        self._seconds_per_pixel: float | None = None
        #: Skip the streams it can't keep up with (``--enhance auto``); False: enhance every picture.
        self.keep_up = True

    def forward(self, x: torch.Tensor, qp: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 3, H, W) in [0, 1], H and W even; ``qp`` (B, 1, H/16, W/16) the quantizer map."""
        folded = F.pixel_unshuffle(x, 2)
        plane = F.interpolate((qp - 30.0) / 10.0, size=folded.shape[-2:], mode="nearest")
        return x + F.pixel_shuffle(self.body(torch.cat([folded, plane], dim=1)), 2)

    def seconds_per_pixel(self) -> float:
        """What enhancing costs here, timed once (the fastest of three runs on a 256x256 picture
        after a warm-up, so a moment's contention doesn't count): the receiver predicts a stream's
        cost from its picture size before enhancing any of it."""
        if self._seconds_per_pixel is None:
            pixels, qp = np.zeros((256, 256, 3), np.uint8), np.full((16, 16), 30.0, np.float32)
            self.enhance(pixels, qp)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                self.enhance(pixels, qp)
                times.append(time.perf_counter() - t0)
            self._seconds_per_pixel = min(times) / (256 * 256)
        return self._seconds_per_pixel

    def enhance(self, pixels: np.ndarray, qp_map: np.ndarray) -> np.ndarray:
        """One decoded picture (H, W, 3 uint8) and its quantizer map -> the enhanced picture (uint8)."""
        h, w = pixels.shape[:2]
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
        qp = torch.from_numpy(np.ascontiguousarray(qp_map, dtype=np.float32))[None, None]
        with torch.inference_mode():
            y = self(x, qp)
        return (y[0, :, :h, :w].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

    def save_pretrained(self, folder: Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        state = {k: v.detach().cpu().float().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt", **(extra or {})})

    @classmethod
    def from_pretrained(cls, folder: str | Path = ENHANCER_DIR) -> VideoEnhancer:
        """Load an enhancer folder (``config.json`` + ``model.safetensors``); ModelLoadError otherwise."""
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg_path = folder / "config.json"
        try:
            raw = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{folder} is not a video enhancer folder ({exc})") from None
        if raw.get("_class_name") != CLASS_NAME:
            what = raw.get("_class_name") or "unknown model"
            raise ModelLoadError(f"{cfg_path} describes a {what}, not a {CLASS_NAME}")
        try:
            model = cls(EnhancerConfig(**raw))
            model.load_state_dict(load_file(str(folder / "model.safetensors")))
        except (OSError, TypeError, RuntimeError, ValueError) as exc:
            detail = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise ModelLoadError(f"cannot load the video enhancer from {folder}: {detail[:200]}") from None
        return model.eval().requires_grad_(False)


def qp_map(frame, height: int, width: int) -> np.ndarray:
    """The per-macroblock quantizer of a decoded PyAV frame (its decoder opened with
    ``export_side_data=venc_params``), (ceil(H/16), ceil(W/16)); the frame's base QP where a block
    map is missing."""
    rows, cols = -(-height // BLOCK), -(-width // BLOCK)
    side = frame.side_data
    for item in side:
        # PyAV 18.1.0 iterates the side data themselves, 18.1.1 their types (a mapping, as dicts do).
        sd = item if hasattr(item, "type") else side[item]
        if sd.type.name == "VIDEO_ENC_PARAMS":
            try:
                m = np.asarray(sd.qp_map(), dtype=np.float32)
                if m.size == rows * cols:
                    return m.reshape(rows, cols)
            except (ValueError, TypeError, AttributeError):
                pass
            return np.full((rows, cols), float(sd.qp), np.float32)
    return np.full((rows, cols), 30.0, np.float32)
