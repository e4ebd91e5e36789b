"""Train the receiver's video enhancer: ``python -m latentcomm.training --objective enhance``.

Data: short pans over the training photos (the 43 of ``data/photos`` and the Unsplash set; never a
held-out photo, never the movie clips, which the stream benchmark evaluates on): each a window of
320x176 or 640x352 sliding a few pixels a frame across a photo, 12 frames at 10 fps, coded by the
stream's own H.264 encoder (``latentcomm.codecs.video.VideoCodec``, the sender's settings) at a rate drawn
log-uniformly from 40 kbit/s to 1.2 Mbit/s, and decoded with the quantizer map exported. The pairs
(decoded picture, quantizer map, source picture) are made once and kept in the run folder.

Training: random 128x128 patches aligned to the macroblocks, MSE on 0..255 (what PSNR measures),
Adam with a cosine decay, time-boxed by ``--minutes``. Evaluation: the held-out station scene of
``benchmarks/stream.py`` and the three shared clips (never trained on) at 64k, 256k and 1M, 320x176:
PSNR of the decoded frames with and without the enhancer, at identical bits.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from latentcomm import data
from latentcomm.codecs.video import VideoCodec, fit_picture, parse_payload
from latentcomm.enhance import BLOCK, EnhancerConfig, VideoEnhancer, qp_map
from latentcomm.images import load_image
from latentcomm.scenes import station_scene
from latentcomm.stream import video_frames
from latentcomm.training.loop import Objective, TrainingError, write_model_folder

log = logging.getLogger(__name__)

SIZES = ((320, 176), (640, 352))
PATCH = 128


def code_frames(frames: list[Image.Image], bitrate: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The frames through the stream's H.264 encoder at ``bitrate`` and back: (decoded, QP map) each."""
    codec = VideoCodec("h264", bitrate, 10.0, key_interval=1000, threads=1)
    dec = av.CodecContext.create("h264", "r")
    dec.options = {"export_side_data": "venc_params"}
    out = []
    for i, frame in enumerate(frames):
        enc = codec.encode_picture(frame, captured=i / 10)
        _, unit = parse_payload(enc.payload)
        for picture in dec.decode(av.Packet(unit)):
            out.append((picture.to_ndarray(format="rgb24"), qp_map(picture, picture.height, picture.width)))
    return out


def make_pairs(count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(decoded, qp, source) for ``count`` pans over the training photos."""
    rng = random.Random(seed)
    photos = data.training_photos() + sorted(data.UNSPLASH_DIR.glob("*.jpg")) + sorted(data.UNSPLASH_DIR.glob("*.png"))
    if not photos:
        raise TrainingError(f"no training photos under {data.DATA_ROOT}")
    cache: dict[Path, Image.Image] = {}
    pairs = []
    for _ in tqdm(range(count), desc="pans"):
        path = rng.choice(photos)
        if path not in cache:
            img = load_image(path)
            scale = 1000 / max(img.size)
            cache[path] = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
        photo = cache[path]
        w, h = rng.choice(SIZES)
        zoom = rng.uniform(max(w / photo.width, h / photo.height) * 1.3, 1.0 if photo.width > 1.3 * w else 1.6)
        big = photo.resize((max(w + 80, round(photo.width * zoom)), max(h + 80, round(photo.height * zoom))))
        dx, dy = rng.uniform(-6, 6), rng.uniform(-3, 3)
        x0 = rng.uniform(max(0, -dx * 12), big.width - w - max(0, dx * 12))
        y0 = rng.uniform(max(0, -dy * 12), big.height - h - max(0, dy * 12))
        frames = [big.crop((round(x0 + dx * i), round(y0 + dy * i), round(x0 + dx * i) + w, round(y0 + dy * i) + h))
                  for i in range(12)]  # fmt: skip
        bitrate = math.exp(rng.uniform(math.log(40_000), math.log(1_200_000)))
        for (decoded, qp), source in zip(code_frames(frames, bitrate), frames, strict=True):
            pairs.append((decoded, qp, np.asarray(source)))
    return pairs


def batch(pairs, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs, qs, ys = [], [], []
    for k in rng.integers(0, len(pairs), n):
        decoded, qp, source = pairs[k]
        h, w = decoded.shape[:2]
        by = rng.integers(0, (h - PATCH) // BLOCK + 1)
        bx = rng.integers(0, (w - PATCH) // BLOCK + 1)
        y, x = by * BLOCK, bx * BLOCK
        xs.append(decoded[y : y + PATCH, x : x + PATCH])
        ys.append(source[y : y + PATCH, x : x + PATCH])
        qs.append(qp[by : by + PATCH // BLOCK, bx : bx + PATCH // BLOCK])
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(np.stack(ys)).permute(0, 3, 1, 2).float() / 255
    q = torch.from_numpy(np.stack(qs))[:, None].float()
    return x, q, y


def evaluate(model: VideoEnhancer, quick: bool = False) -> list[dict]:
    """PSNR with and without the enhancer on scenes never trained on, at identical bits."""
    clips = sorted((data.DATA_ROOT / "videos").glob("clip_*.mp4"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scenes = [station_scene(Path(tmp) / "station.mkv", 4.0 if quick else 10.0), *clips]
        for scene in scenes[:1] if quick else scenes:
            frames = [fit_picture(f.image, (320, 176)) for f in video_frames(scene, 10.0)]
            for rate in (64_000, 256_000, 1_000_000):
                coded = code_frames(frames, 0.96 * rate - 5600)  # what the sender's encoder aims at, unsealed
                before, after, t = [], [], 0.0
                for (decoded, qp), source in zip(coded, frames, strict=True):
                    src = np.asarray(source)
                    t0 = time.perf_counter()
                    better = model.enhance(decoded, qp)
                    t += time.perf_counter() - t0
                    before.append(_psnr(src, decoded))
                    after.append(_psnr(src, better))
                rows.append({
                    "scene": scene.stem, "rate": rate, "psnr_db": float(np.mean(before)),
                    "enhanced_psnr_db": float(np.mean(after)), "gain_db": float(np.mean(after) - np.mean(before)),
                    "enhance_ms_per_frame": 1000 * t / len(coded),
                })  # fmt: skip
    return rows


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


class Enhance(Objective):
    """The receiver's video enhancer, on pans over the training photos coded by the stream's H.264."""

    name = "enhance"
    # Cosine from --lr down to --decay-to over the whole time box, no warm-up (a new network is the identity).
    defaults = dict(batch=16, minutes=20.0, lr=1e-3, warmup=1, decay_to=1e-5, decay_frac=1.0, eval_every=0)

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--pans", type=int, default=160, help="pans made for training (12 frames each)")
        p.add_argument("--width", type=int, default=48, help="channels of the hidden convolutions")
        p.add_argument("--depth", type=int, default=4, help="3x3 convolutions")
        p.add_argument("--eval-only", type=Path, metavar="DIR", help="evaluate this enhancer folder and exit")
        p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation (tests)")

    def check(self) -> None:
        if self.args.pans < 1:
            raise TrainingError("--pans must be at least 1")

    def run_instead(self) -> int | None:
        if self.args.eval_only is None:
            return None
        print(json.dumps(evaluate(VideoEnhancer.from_pretrained(self.args.eval_only)), indent=1))
        return 0

    def setup(self) -> None:
        args = self.args
        args.run_dir.mkdir(parents=True, exist_ok=True)
        cache = args.run_dir / f"pairs-{args.pans}-{args.seed}.pt"
        if cache.exists():
            self.pairs = torch.load(cache, weights_only=False)
        else:
            self.pairs = make_pairs(args.pans, args.seed)
            torch.save(self.pairs, cache)
        log.info("%d training pairs", len(self.pairs))
        self.model = VideoEnhancer(EnhancerConfig(width=args.width, depth=args.depth))
        self.rng = np.random.default_rng(args.seed)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    def loss(self) -> tuple[torch.Tensor, dict[str, Any]]:
        x, q, y = batch(self.pairs, self.args.batch, self.rng)
        loss = F.mse_loss(self.model(x, q), y) * 255**2
        return loss, {"loss": loss.detach()}

    def evaluate(self) -> dict[str, float]:
        if self.args.no_eval:
            return {}
        self.model.eval()
        try:
            rows = evaluate(self.model)
        finally:
            self.model.train()
        for r in rows:
            log.info("%s %d: %.2f -> %.2f dB (%+.2f), %.1f ms a frame", r["scene"], r["rate"], r["psnr_db"],
                     r["enhanced_psnr_db"], r["gain_db"], r["enhance_ms_per_frame"])  # fmt: skip
        keys = ("psnr_db", "enhanced_psnr_db", "gain_db", "enhance_ms_per_frame")
        return {f"{r['scene']}@{r['rate'] // 1000}k_{k}": r[k] for r in rows for k in keys}

    def state(self) -> dict[str, Any]:
        # The patch sampler's numpy generator stands in for a torch generator.
        return {"model": self.model.state_dict(), "np_rng": self.rng.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.rng.bit_generator.state = state["np_rng"]

    def export(self, step: int, seconds: float, evals: dict[str, float] | None) -> None:
        a = self.args
        meta = {"steps": step, "seconds": round(seconds), "minutes": a.minutes, "pans": a.pans, "seed": a.seed,
                "evaluation": evals}  # fmt: skip
        write_model_folder(a.export, meta, lambda tmp: self.model.save_pretrained(tmp, extra={"steps": str(step)}))
