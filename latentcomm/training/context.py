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
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from latentcomm import data
from latentcomm.codecs.learned.model import (
    SCALE_MIN,
    LearnedCodecConfig,
    LearnedCodecModel,
    gaussian_likelihood,
    hyperprior,
    rounded_fetch,
)
from latentcomm.device import configure_threads
from latentcomm.errors import ModelLoadError
from latentcomm.images import center_crop_square, load_image
from latentcomm.training.common import (
    EVAL_QUALITIES,
    add_frozen_run_args,
    learning_rate,
    parse_groups,
    read_training_state,
    save_checkpoint,
)
from latentcomm.training.common import export as write_model_folder
from latentcomm.training.datasets import add_data_args, training_set

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m latentcomm.training --objective context",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=data.MODELS_ROOT / "latentcomm-lic",
        help="trained codec whose transforms stay frozen",
    )
    p.add_argument("--groups", default="16,16,32,64,64", help="channel groups of the context model, in decoding order")
    p.add_argument("--width", type=int, default=128, help="width of the context model's merging layers")
    add_data_args(p)
    add_frozen_run_args(p, "context")
    p.add_argument("--batch", type=int, default=8, help="latent crops per step")
    p.add_argument("--crop", type=int, default=24, help="latent crop size (multiple of 4; 24 = 384 pixels)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (Adam)")
    p.add_argument(
        "--decay-to", type=float, default=1e-4, help="with --minutes: cosine-anneal the LR to this over the last 40%%"
    )
    p.add_argument("--steps", type=int, default=10**7, help="stop at this total step count")
    p.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints and exports")
    p.add_argument(
        "--eval-every", type=int, default=2000, help="steps between held-out evaluations (0 = only at the end)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the model, crops and noise")
    # No warm-up: the context model either starts at zero (coding like the hyperprior) or resumes.
    p.set_defaults(warmup=1)
    return p.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    configure_threads()
    if args.crop % 4 or args.crop < 8:
        print("error: --crop must be a multiple of 4, at least 8", file=sys.stderr)
        return 2
    try:
        base = LearnedCodecModel.from_pretrained(args.init_from)
        groups = parse_groups(args.groups, base.config.M)
    except (ModelLoadError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    config = LearnedCodecConfig(**{**asdict(base.config), "context_groups": groups, "context_width": args.width})
    model = LearnedCodecModel(config)
    weights = base.state_dict()
    # Continue the base model's own context model when it has this shape; otherwise start afresh.
    continuing = base.config.context_groups == groups and base.config.context_width == args.width
    if not continuing:
        weights = {k: v for k, v in weights.items() if not k.startswith("context.")}
    # The context training this run builds on: the base model's own (when continued), counted once.
    # A resumed run takes it from its checkpoint, whatever the base folder holds now (it may be this
    # run's own export, shipped).
    base_meta = read_training_state(args.init_from).get("context", {}) if continuing else {}
    carried = {"steps": base_meta.get("steps", 0), "cpu_seconds": base_meta.get("cpu_seconds", 0)}
    origin = base_meta.get("base") or f"{args.init_from.resolve().name}@{base.fingerprint()}"
    model.load_state_dict(weights, strict=False)
    model.requires_grad_(False).eval()
    model.context.requires_grad_(True).train()
    opt = torch.optim.Adam(model.context.parameters(), lr=args.lr)

    try:
        images = training_set(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    latents = [y for y in training_latents(base, images, args.run_dir / "latents.npz") if min(y.shape[1:]) >= args.crop]
    if not latents:
        print(f"error: no training image is at least {args.crop * 16} pixels on its short side", file=sys.stderr)
        return 2
    with torch.inference_mode():
        heldout = [
            base.g_a(
                torch.from_numpy(np.asarray(center_crop_square(load_image(p), 512)).copy()).permute(2, 0, 1)[None]
                / 255.0
            )
            for p in data.heldout_photos(args.data)
        ]

    args.run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.run_dir / "last.pt"
    step, elapsed = 0, 0.0
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        if state.get("groups") != groups or state.get("width") != args.width:
            print(
                f"error: {ckpt_path} holds another context model; pass a new --run-dir or --no-resume", file=sys.stderr
            )
            return 2
        model.context.load_state_dict(state["context"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed = state["step"], state["elapsed"]
        # Checkpoints before this field existed all started from a fresh context model.
        carried = state.get("carried", {"steps": 0, "cpu_seconds": 0})
        origin = state.get("origin", origin)
        log.info("resumed from %s at step %d", ckpt_path, step)
    log.info(
        "context model: %.2fM parameters, %d training latents",
        sum(p.numel() for p in model.context.parameters()) / 1e6,
        len(latents),
    )
    metrics = (args.run_dir / "metrics.jsonl").open("a")
    t0 = time.time()
    deadline = t0 + args.minutes * 60 if args.minutes > 0 else math.inf

    def checkpoint(evals: dict | None = None) -> None:
        total = elapsed + time.time() - t0
        save_checkpoint(
            ckpt_path,
            {
                "context": model.context.state_dict(),
                "opt": opt.state_dict(),
                "gen": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "elapsed": total,
                "groups": groups,
                "width": args.width,
                "carried": carried,
                "origin": origin,
            },
        )
        export(
            model,
            args.init_from,
            args.export,
            {
                "base": origin,
                "steps": carried["steps"] + step,
                "cpu_seconds": round(carried["cpu_seconds"] + total),
                "heldout": evals,
            },
        )

    bar = tqdm(desc="training context", unit="step", initial=step)
    c = args.crop
    while step < args.steps and time.time() < deadline:
        lr = learning_rate(args, step, (time.time() - t0) / (args.minutes * 60) if args.minutes > 0 else 0.0)
        for g in opt.param_groups:
            g["lr"] = lr
        crops = []
        for _ in range(args.batch):
            y0 = latents[int(torch.randint(len(latents), (1,), generator=gen))]
            i = int(torch.randint(y0.shape[1] - c + 1, (1,), generator=gen))
            j = int(torch.randint(y0.shape[2] - c + 1, (1,), generator=gen))
            crop = y0[:, i : i + c, j : j + c].float()
            crops.append(crop.flip(-1) if bool(torch.rand(1, generator=gen) < 0.5) else crop)
        quality = 1 + (config.levels - 1) * torch.rand(args.batch, generator=gen)
        g, _ = model.gains(quality)
        y = torch.stack(crops) * g
        scale, mean = hyperprior(model, y)
        _, c_mean, c_scale = model.context.run(scale, mean, rounded_fetch(model, y))
        noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        bits = -torch.log2(gaussian_likelihood(noisy, c_mean, c_scale).clamp_min(1e-9)).sum()
        loss = bits / (args.batch * c * c * 256)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(bpp=f"{loss.item():.4f}")
        record = {"step": step, "lr": lr, "bpp": round(loss.item(), 5)}
        if args.eval_every and step % args.eval_every == 0:
            record.update(evaluate(model, heldout))
            log.info(
                "step %d held-out saving: %s", step, {k: round(v, 2) for k, v in record.items() if k.endswith("pct")}
            )
        metrics.write(json.dumps(record) + "\n")
        if step % args.ckpt_every == 0:
            metrics.flush()
            checkpoint()
    bar.close()
    final = evaluate(model, heldout)
    log.info("held-out at step %d: %s", step, {k: round(v, 4) for k, v in final.items()})
    metrics.write(json.dumps({"step": step, **final}) + "\n")
    metrics.close()
    checkpoint(final)
    return 0


def export(model: LearnedCodecModel, init_from: Path, folder: Path, context_meta: dict) -> None:
    """Write the codec with its context model, keeping the base model's training record and adding
    this context model's (``context_meta``: its steps and seconds in all, including the base's own
    context training it continued, and ``base``, the transforms it was trained on)."""
    meta = read_training_state(init_from)
    meta["context"] = {
        "groups": model.config.context_groups,
        "width": model.config.context_width,
        "objective": "latent code length on the frozen transforms of the base model",
        **context_meta,
    }
    write_model_folder(model, folder, meta)


if __name__ == "__main__":
    raise SystemExit(main())
