"""Train a post-network on a trained codec's frozen decoder: ``python -m latentcomm.training --objective postnet``.

The post-network (:class:`latentcomm.learned.PostNetwork`) is a small residual CNN after the
synthesis transform, told the quality of the picture it refines. Everything before it stays frozen:
the analysis, the gains, the entropy models and the synthesis itself. So every image codes to
exactly the same bytes as before, and only the decoded picture changes; quality can be compared at
identical bytes.

Why a cache: with the rest frozen, the synthesis' output for a training crop at a given quality never
changes. Decoding ``--pairs`` random crops once (at random qualities, rounded by the context model or,
for ``--hyperprior-share`` of them, by the hyperprior as streams code) and training on patches of
them is about 2.5x faster per step than running the frozen codec every step. The cache is kept in the
run folder (``pairs.pt``) and reused on resume when its base model and settings match.

The loss is plain MSE (on 0..255), as PSNR and the per-image post-filter measure it. Weighting each
crop by the inverse of the frozen decoder's error on it (so that every quality counts the same in
decibels) was tried first and gained less than a tenth as much after 3,000 steps: the flattest, most
finely quantized crops then dominate the gradient, and there is little left to fix in them.

Training watches the six held-out photos at native size: PSNR per quality with and without the
post-network, decoded from context-rounded latents, as the receiver decodes them.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from latentcomm import data
from latentcomm.codecs.learned.model import LearnedCodecConfig, LearnedCodecModel, PostNetwork, rounded_latent
from latentcomm.errors import ModelLoadError
from latentcomm.images import center_crop_square, load_image
from latentcomm.training.common import EVAL_QUALITIES, FrozenCodecObjective
from latentcomm.training.datasets import training_set
from latentcomm.training.loop import TrainingError


@torch.no_grad()
def decode_frozen(model: LearnedCodecModel, x: torch.Tensor, quality: float, context: bool) -> torch.Tensor:
    """The frozen synthesis' output (the post-network's input) for images ``x`` in [0, 1]."""
    q = torch.full((x.shape[0],), float(quality))
    _, gi = model.gains(q)
    return model.g_s(rounded_latent(model, x, q, context) * gi)


def build_pairs(
    model: LearnedCodecModel, images: list[np.ndarray], args: argparse.Namespace
) -> dict[str, torch.Tensor]:
    """``args.pairs`` random crops, the frozen decoder's pictures of them (float16) and their qualities."""
    gen = torch.Generator().manual_seed(args.seed)
    pool = [torch.from_numpy(a).permute(2, 0, 1) for a in images if min(a.shape[:2]) >= args.crop]
    if not pool:
        raise ValueError(f"no training image is at least {args.crop}x{args.crop}")
    c = args.crop
    originals = torch.empty(args.pairs, 3, c, c, dtype=torch.uint8)
    decoded = torch.empty(args.pairs, 3, c, c, dtype=torch.float16)
    qualities = torch.empty(args.pairs)
    for i in tqdm(range(args.pairs), desc="decoding training crops", unit="crop"):
        img = pool[int(torch.randint(len(pool), (1,), generator=gen))]
        y = int(torch.randint(img.shape[1] - c + 1, (1,), generator=gen))
        x = int(torch.randint(img.shape[2] - c + 1, (1,), generator=gen))
        originals[i] = img[:, y : y + c, x : x + c]
        quality = qualities[i] = 1 + (model.config.levels - 1) * float(torch.rand(1, generator=gen))
        context = model.context is not None and float(torch.rand(1, generator=gen)) >= args.hyperprior_share
        crop = originals[i : i + 1].float() / 255
        decoded[i] = decode_frozen(model, crop, quality, context)[0].half()
    return {"originals": originals, "decoded": decoded, "qualities": qualities}


def heldout_decodes(
    model: LearnedCodecModel, folder: Path, crop: int = 0
) -> list[tuple[torch.Tensor, dict[int, torch.Tensor]]]:
    """Each held-out photo (1, 3, H, W in [0, 1]: its centre ``crop`` square, or with ``crop=0``
    the photo cut to a multiple of 64) and the frozen decoder's pictures of it at every evaluation
    quality."""
    out = []
    for p in tqdm(data.heldout_photos(folder), desc="decoding held-out photos", unit="photo"):
        img = load_image(p)
        a = np.asarray(center_crop_square(img, crop) if crop else img)
        h, w = a.shape[0] // 64 * 64, a.shape[1] // 64 * 64
        x = torch.from_numpy(a[:h, :w].copy()).permute(2, 0, 1)[None].float() / 255
        qs = [q for q in EVAL_QUALITIES if q <= model.config.levels]
        out.append((x, {q: decode_frozen(model, x, q, model.context is not None).half() for q in qs}))
    return out


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR in dB of a picture rounded to 8 bits, as the receiver shows it."""
    err = (x_hat.clamp(0, 1) * 255).round() - x * 255
    return float(10 * torch.log10(255**2 / err.pow(2).mean().clamp_min(1e-10)))


@torch.no_grad()
def evaluate(model: LearnedCodecModel, heldout) -> dict[str, float]:
    """Held-out PSNR per quality with the post-network, and its gain over the frozen decoder."""
    res: dict[str, float] = {}
    for q in heldout[0][1] if heldout else ():
        plain, post = [], []
        for x, decodes in heldout:
            d = decodes[q].float()
            plain.append(psnr(d, x))
            post.append(psnr(model.picture(d, q), x))
        res[f"q{q}_psnr"] = float(np.mean(post))
        res[f"q{q}_gain_db"] = float(np.mean(post) - np.mean(plain))
    return res


def with_postnet(model: LearnedCodecModel, width: int) -> LearnedCodecModel:
    """``model`` itself if it has a post-network, else a copy with a new (identity) one."""
    if model.g_p is not None:
        return model
    grown = LearnedCodecModel(LearnedCodecConfig(**{**asdict(model.config), "postnet_width": width}))
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("g_p.") for k in missing):
        raise ModelLoadError(f"cannot add a post-network: unexpected {unexpected[:3]}, missing {missing[:3]}")
    return grown.eval().requires_grad_(False)


class Postnet(FrozenCodecObjective):
    """The post-network after the frozen synthesis, on patches of a cache of its inputs."""

    name = "postnet"
    init_help = "trained codec (with a context model); a post-network it already has is trained on"
    defaults = dict(batch=16, lr=1e-3, decay_to=2e-5, warmup=100, ckpt_every=500, eval_every=2000)

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        p.add_argument("--width", type=int, default=64, help="channels of a new post-network's hidden layers")
        p.add_argument("--pairs", type=int, default=900, help="training crops decoded once by the frozen codec")
        p.add_argument("--crop", type=int, default=384, help="size of those crops in pixels (multiple of 64)")
        p.add_argument("--patch", type=int, default=128, help="training patch size in pixels (even, at most --crop)")
        share = "share of the crops rounded by the hyperprior alone (as streams code) rather than the context model"
        p.add_argument("--hyperprior-share", type=float, default=0.25, help=share)
        squares = "evaluate on squares of this size (scaled, centre-cropped; 0 = the photos at native size)"
        p.add_argument("--eval-crop", type=int, default=0, help=squares)

    def check(self) -> None:
        args = self.args
        if args.crop < 64 or args.crop % 64:
            raise TrainingError("--crop must be a multiple of 64")
        if args.patch < 16 or args.patch % 2 or args.patch > args.crop:
            raise TrainingError("--patch must be even, at least 16 and at most --crop")
        if args.eval_crop < 0 or args.eval_crop % 64:
            raise TrainingError("--eval-crop must be 0 or a multiple of 64")
        if args.width < 1:
            raise TrainingError("--width must be at least 1")
        if args.pairs < 1:
            raise TrainingError("--pairs must be at least 1")
        if not 0.0 <= args.hyperprior_share <= 1.0:
            raise TrainingError("--hyperprior-share must be between 0 and 1")

    def build(self, base: LearnedCodecModel) -> LearnedCodecModel:
        if base.g_p is not None and base.config.postnet_width != self.args.width:
            raise ModelLoadError(
                f"{self.args.init_from} has a post-network of width {base.config.postnet_width}; "
                "--width sets a new one's"
            )
        model = with_postnet(base, self.args.width)
        self.net: PostNetwork = model.g_p
        self.net.requires_grad_(True).train()
        return model

    def load_data(self) -> None:
        args = self.args
        self.generator = torch.Generator().manual_seed(args.seed + 1)
        cache_path = args.run_dir / "pairs.pt"
        base_fp = f"{args.init_from.resolve().name}@{self.base.fingerprint()}"
        cache_key = {"format": 2, "base": base_fp, "pairs": args.pairs, "crop": args.crop, "seed": args.seed,
                     "hyperprior_share": args.hyperprior_share}  # fmt: skip
        pairs = torch.load(cache_path, weights_only=False) if cache_path.exists() else None
        if pairs is None or pairs.get("key") != cache_key:
            try:
                pairs = {"key": cache_key, **build_pairs(self.model, training_set(args), args)}
            except ValueError as exc:
                raise TrainingError(str(exc)) from None
            args.run_dir.mkdir(parents=True, exist_ok=True)
            torch.save(pairs, cache_path)
        self.originals, self.decoded = pairs["originals"], pairs["decoded"]
        self.levels = self.model.quality_plane(pairs["qualities"])
        self.heldout = heldout_decodes(self.model, args.data, args.eval_crop)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.net.parameters())

    def loss(self) -> tuple[torch.Tensor, dict[str, Any]]:
        n, c, ps, gen = self.args.batch, self.originals.shape[-1], self.args.patch, self.generator
        idx = torch.randint(len(self.originals), (n,), generator=gen)
        ys = torch.randint(c - ps + 1, (n,), generator=gen)
        xs = torch.randint(c - ps + 1, (n,), generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5
        inp = torch.stack([self.decoded[i, :, y : y + ps, x : x + ps] for i, y, x in zip(idx, ys, xs, strict=True)])
        ref = torch.stack([self.originals[i, :, y : y + ps, x : x + ps] for i, y, x in zip(idx, ys, xs, strict=True)])
        inp, ref = inp.float(), ref.float() / 255
        inp[flips], ref[flips] = inp[flips].flip(-1), ref[flips].flip(-1)
        loss = F.mse_loss(self.net(inp, self.levels[idx]), ref) * 255**2
        return loss, {"loss": loss.detach()}

    def evaluate(self) -> dict[str, float]:
        self.net.eval()
        try:
            return evaluate(self.model, self.heldout)
        finally:
            self.net.train()

    def trained_state(self) -> dict[str, Any]:
        return {"net": self.net.state_dict()}

    def load_trained(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])

    def record_fields(self) -> dict[str, Any]:
        return {
            "objective": "MSE (0..255) of a residual post-network on the frozen decoder's pictures",
            "width": self.model.config.postnet_width,
            "pairs": self.args.pairs,
            "crop": self.args.crop,
            "hyperprior_share": self.args.hyperprior_share,
        }
