"""Train a context model on a trained codec's frozen transforms: ``python -m latentcomm.training --objective context``.

The context model (``latentcomm.codecs.learned.context``) only changes how the latent is *coded*, not what
is sent: its loss is the latent's code length alone, and the transforms, gains and hyperprior stay as
they are. So it trains on latents computed once (``g_a`` of every training image, cached on disk),
at 1/16 of the image resolution, and a CPU can afford it, where training the transforms needs a GPU.
Its last layers start at zero, so the first step codes exactly like the hyperprior and every step
after can only lower the rate at the same reconstruction (the rounding offset moves with the
predicted mean, but the rounding error stays uniform).

Why this is not the end of the road: the transforms were trained to make the hyperprior's job easy,
not the context model's. Jointly trained (``--objective codec`` on a model folder that has a context
model, on a GPU), context models give several times the saving measured here.

Training watches the held-out photos (centre 512x512 crops): the ideal code length of the latent
with and without the context model at several qualities, on the same rounded symbols.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from latentcomm.codecs.learned.model import (
    SCALE_MIN,
    LearnedCodecConfig,
    LearnedCodecModel,
    gaussian_likelihood,
    hyperprior,
    rounded_fetch,
)
from latentcomm.training.common import EVAL_QUALITIES, FrozenCodecObjective, heldout_squares, parse_groups
from latentcomm.training.datasets import training_set
from latentcomm.training.loop import TrainingError

log = logging.getLogger(__name__)


@torch.inference_mode()
def training_latents(model: LearnedCodecModel, images: list[np.ndarray], cache: Path) -> list[torch.Tensor]:
    """Un-gained latents ``g_a(x)`` (float16, (M, H, W)) of the training images, cached per model."""
    fp = model.fingerprint()
    if cache.is_file():
        with np.load(cache) as z:
            if str(z["fingerprint"]) == fp and int(z["count"]) == len(images):
                return [torch.from_numpy(z[f"y{i:04d}"].copy()) for i in range(len(images))]
        log.info("latent cache %s is for other weights or images: recomputing", cache)
    out = []
    for a in tqdm(images, desc="latents", unit="img"):
        h, w = a.shape[0] // 16 * 16, a.shape[1] // 16 * 16
        x = torch.from_numpy(a[:h, :w]).permute(2, 0, 1)[None].float() / 255.0
        out.append(model.g_a(x)[0].half())
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, fingerprint=fp, count=len(images), **{f"y{i:04d}": y.numpy() for i, y in enumerate(out)})
    return out


def code_length(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> float:
    """Ideal code length in bits of the symbols round(y - mean) under N(0, scale)."""
    r = torch.round(y - mean)
    like = gaussian_likelihood(r, torch.zeros_like(r), scale.clamp_min(SCALE_MIN))
    return float(-torch.log2(like.clamp_min(1e-12)).sum())


@torch.no_grad()
def evaluate(model: LearnedCodecModel, heldout: list[torch.Tensor]) -> dict[str, float]:
    """Held-out latent bpp with the hyperprior alone and with the context model, per quality."""
    res: dict[str, float] = {}
    if not heldout:
        return res
    for q in EVAL_QUALITIES:
        if q > model.config.levels:
            continue
        g, _ = model.gains(float(q))
        base = ctx = 0.0
        pixels = 0
        for y0 in heldout:
            y = y0 * g
            scale, mean = hyperprior(model, y)
            base += code_length(y, mean, scale)
            _, c_mean, c_scale = model.context.run(scale, mean, rounded_fetch(model, y))
            ctx += code_length(y, c_mean, c_scale)
            pixels += y.shape[2] * y.shape[3] * 256
        res[f"q{q}_hyper_bpp"] = base / pixels
        res[f"q{q}_context_bpp"] = ctx / pixels
        res[f"q{q}_saving_pct"] = 100 * (1 - ctx / base)
    return res


class Context(FrozenCodecObjective):
    """The context model, on latents of the frozen analysis computed once."""

    name = "context"
    # Its evaluation compares the context model with the hyperprior already: no score before training.
    scores_before = False
    # No warm-up: the context model either starts at zero (coding like the hyperprior) or resumes.
    defaults = dict(batch=8, lr=1e-3, decay_to=1e-4, warmup=1, ckpt_every=500, eval_every=2000)
    progress = ("bpp",)
    init_help = "trained codec whose transforms stay frozen"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        p.add_argument(
            "--groups", default="16,16,32,64,64", help="channel groups of the context model, in decoding order"
        )
        p.add_argument("--width", type=int, default=128, help="width of the context model's merging layers")
        p.add_argument("--crop", type=int, default=24, help="latent crop size (multiple of 4; 24 = 384 pixels)")

    def check(self) -> None:
        if self.args.crop % 4 or self.args.crop < 8:
            raise TrainingError("--crop must be a multiple of 4, at least 8")

    def build(self, base: LearnedCodecModel) -> LearnedCodecModel:
        self.groups = parse_groups(self.args.groups, base.config.M)
        config = LearnedCodecConfig(
            **{**asdict(base.config), "context_groups": self.groups, "context_width": self.args.width}
        )
        model = LearnedCodecModel(config)
        weights = base.state_dict()
        # Continue the base model's own context model when it has this shape; otherwise start afresh.
        if not self.continues_base():
            weights = {k: v for k, v in weights.items() if not k.startswith("context.")}
        model.load_state_dict(weights, strict=False)
        model.requires_grad_(False).eval()
        model.context.requires_grad_(True).train()
        return model

    def continues_base(self) -> bool:
        return self.base.config.context_groups == self.groups and self.base.config.context_width == self.args.width

    def load_data(self) -> None:
        try:
            images = training_set(self.args)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        c = self.args.crop
        cache = self.args.run_dir / "latents.npz"
        self.latents = [y for y in training_latents(self.base, images, cache) if min(y.shape[1:]) >= c]
        if not self.latents:
            raise TrainingError(f"no training image is at least {c * 16} pixels on its short side")
        with torch.inference_mode():
            self.heldout = [self.base.g_a(x) for x in heldout_squares(self.args.data)]
        log.info("%d training latents", len(self.latents))

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.context.parameters())

    def loss(self) -> tuple[torch.Tensor, dict[str, Any]]:
        n, c, gen, model = self.args.batch, self.args.crop, self.generator, self.model
        crops = []
        for _ in range(n):
            y0 = self.latents[int(torch.randint(len(self.latents), (1,), generator=gen))]
            i = int(torch.randint(y0.shape[1] - c + 1, (1,), generator=gen))
            j = int(torch.randint(y0.shape[2] - c + 1, (1,), generator=gen))
            crop = y0[:, i : i + c, j : j + c].float()
            crops.append(crop.flip(-1) if bool(torch.rand(1, generator=gen) < 0.5) else crop)
        quality = 1 + (model.config.levels - 1) * torch.rand(n, generator=gen)
        g, _ = model.gains(quality)
        y = torch.stack(crops) * g
        scale, mean = hyperprior(model, y)
        _, c_mean, c_scale = model.context.run(scale, mean, rounded_fetch(model, y))
        noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        bits = -torch.log2(gaussian_likelihood(noisy, c_mean, c_scale).clamp_min(1e-9)).sum()
        loss = bits / (n * c * c * 256)
        return loss, {"bpp": loss.detach()}

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.model, self.heldout)

    def trained_state(self) -> dict[str, Any]:
        return {"context": self.model.context.state_dict(), "groups": self.groups, "width": self.args.width}

    def load_trained(self, state: dict[str, Any]) -> None:
        if state.get("groups") != self.groups or state.get("width") != self.args.width:
            raise TrainingError(
                f"{self.args.run_dir / 'last.pt'} holds another context model; pass a new --run-dir or --no-resume"
            )
        self.model.context.load_state_dict(state["context"])

    def record_fields(self) -> dict[str, Any]:
        return {
            "groups": self.model.config.context_groups,
            "width": self.model.config.context_width,
            "objective": "latent code length on the frozen transforms of the base model",
        }
