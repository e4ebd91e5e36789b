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
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from latentcomm import data
from latentcomm.codecs.learned.model import LearnedCodecConfig, LearnedCodecModel, PostNetwork, rounded_latent
from latentcomm.device import configure_threads
from latentcomm.errors import ModelLoadError
from latentcomm.images import center_crop_square, load_image
from latentcomm.training.common import (
    EVAL_QUALITIES,
    add_frozen_run_args,
    export,
    learning_rate,
    read_training_state,
    save_checkpoint,
)
from latentcomm.training.datasets import add_data_args, training_set

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m latentcomm.training --objective postnet",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=data.MODELS_ROOT / "latentcomm-lic",
        help="trained codec (with a context model); a post-network it already has is trained on",
    )
    add_data_args(p)
    add_frozen_run_args(p, "postnet")
    p.add_argument("--width", type=int, default=64, help="channels of a new post-network's hidden layers")
    p.add_argument("--pairs", type=int, default=900, help="training crops decoded once by the frozen codec")
    p.add_argument("--crop", type=int, default=384, help="size of those crops in pixels (multiple of 64)")
    p.add_argument("--patch", type=int, default=128, help="training patch size in pixels (even, at most --crop)")
    p.add_argument("--batch", type=int, default=16, help="patches per step")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (Adam)")
    p.add_argument(
        "--decay-to", type=float, default=2e-5, help="with --minutes: cosine-anneal the LR to this over the last 40%%"
    )
    p.add_argument("--warmup", type=int, default=100, help="steps of linear LR warm-up")
    p.add_argument(
        "--hyperprior-share",
        type=float,
        default=0.25,
        help="share of the crops rounded by the hyperprior alone (as streams code) rather than the context model",
    )
    p.add_argument("--steps", type=int, default=10**7, help="stop at this step count (this run's own)")
    p.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints and exports")
    p.add_argument(
        "--eval-every", type=int, default=2000, help="steps between held-out evaluations (0 = only at the ends)"
    )
    p.add_argument(
        "--eval-crop",
        type=int,
        default=0,
        help="evaluate on squares of this size (scaled, centre-cropped; 0 = the photos at native size)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the crops, qualities and patches")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, or None."""
    if args.crop < 64 or args.crop % 64:
        return "--crop must be a multiple of 64"
    if args.patch < 16 or args.patch % 2 or args.patch > args.crop:
        return "--patch must be even, at least 16 and at most --crop"
    if args.eval_crop < 0 or args.eval_crop % 64:
        return "--eval-crop must be 0 or a multiple of 64"
    if args.width < 1:
        return "--width must be at least 1"
    if args.pairs < 1 or args.batch < 1:
        return "--pairs and --batch must be at least 1"
    if not 0.0 <= args.hyperprior_share <= 1.0:
        return "--hyperprior-share must be between 0 and 1"
    return None


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
    from dataclasses import asdict

    grown = LearnedCodecModel(LearnedCodecConfig(**{**asdict(model.config), "postnet_width": width}))
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("g_p.") for k in missing):
        raise ModelLoadError(f"cannot add a post-network: unexpected {unexpected[:3]}, missing {missing[:3]}")
    return grown.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    configure_threads()
    if problem := check_args(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        base = LearnedCodecModel.from_pretrained(args.init_from)
        if base.g_p is not None and base.config.postnet_width != args.width:
            raise ModelLoadError(
                f"{args.init_from} has a post-network of width {base.config.postnet_width}; --width sets a new one's"
            )
        model = with_postnet(base, args.width)
    except ModelLoadError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    base_fp = f"{args.init_from.resolve().name}@{base.fingerprint()}"
    net: PostNetwork = model.g_p
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    net.requires_grad_(True).train()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    base_meta = read_training_state(args.init_from).get("postnet", {})
    carried = {"steps": base_meta.get("steps", 0), "cpu_seconds": base_meta.get("cpu_seconds", 0)}
    origin = base_meta.get("base") or base_fp

    args.run_dir.mkdir(parents=True, exist_ok=True)
    cache_path = args.run_dir / "pairs.pt"
    cache_key = {"format": 2, "base": base_fp, "pairs": args.pairs, "crop": args.crop, "seed": args.seed,
                 "hyperprior_share": args.hyperprior_share}  # fmt: skip
    pairs = torch.load(cache_path, weights_only=False) if cache_path.exists() else None
    if pairs is None or pairs.get("key") != cache_key:
        try:
            pairs = {"key": cache_key, **build_pairs(model, training_set(args), args)}
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        torch.save(pairs, cache_path)
    heldout = heldout_decodes(model, args.data, args.eval_crop)
    ckpt_path = args.run_dir / "last.pt"
    step, elapsed, before = 0, 0.0, None
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed, before = state["step"], state["elapsed"], state.get("before")
        carried, origin = state["carried"], state["origin"]
        log.info("resumed from %s at step %d", ckpt_path, step)
    if before is None:
        before = evaluate(model, heldout)
        log.info("held-out before: %s", {k: round(v, 4) for k, v in before.items()})
    metrics = (args.run_dir / "metrics.jsonl").open("a")
    t0 = time.time()
    deadline = t0 + args.minutes * 60 if args.minutes > 0 else math.inf

    def checkpoint(evals: dict | None = None) -> None:
        total = elapsed + time.time() - t0
        save_checkpoint(
            ckpt_path,
            {
                "net": net.state_dict(),
                "opt": opt.state_dict(),
                "gen": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "elapsed": total,
                "before": before,
                "carried": carried,
                "origin": origin,
            },
        )
        meta = read_training_state(args.init_from)
        meta["postnet"] = {
            "objective": "MSE (0..255) of a residual post-network on the frozen decoder's pictures",
            "width": model.config.postnet_width,
            "pairs": args.pairs,
            "crop": args.crop,
            "hyperprior_share": args.hyperprior_share,
            "base": origin,
            "steps": carried["steps"] + step,
            "cpu_seconds": round(carried["cpu_seconds"] + total),
            "heldout_before": before,
            "heldout": evals,
        }
        export(model, args.export, meta)

    originals, decoded, levels = pairs["originals"], pairs["decoded"], model.quality_plane(pairs["qualities"])
    n, c, ps = len(originals), originals.shape[-1], args.patch
    bar = tqdm(desc="training post-network", unit="step", initial=step)
    while step < args.steps and time.time() < deadline:
        lr = learning_rate(args, step, (time.time() - t0) / (args.minutes * 60) if args.minutes > 0 else 0.0)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(n, (args.batch,), generator=gen)
        ys = torch.randint(c - ps + 1, (args.batch,), generator=gen)
        xs = torch.randint(c - ps + 1, (args.batch,), generator=gen)
        flips = torch.rand(args.batch, generator=gen) < 0.5
        inp = torch.stack([decoded[i, :, y : y + ps, x : x + ps] for i, y, x in zip(idx, ys, xs, strict=True)])
        ref = torch.stack([originals[i, :, y : y + ps, x : x + ps] for i, y, x in zip(idx, ys, xs, strict=True)])
        inp, ref = inp.float(), ref.float() / 255
        inp[flips], ref[flips] = inp[flips].flip(-1), ref[flips].flip(-1)
        out = net(inp, levels[idx])
        loss = F.mse_loss(out, ref) * 255**2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(mse=f"{loss.item():.1f}")
        record = {"step": step, "lr": lr, "loss": round(loss.item(), 5)}
        if args.eval_every and step % args.eval_every == 0:
            net.eval()
            record.update(evaluate(model, heldout))
            net.train()
            log.info("step %d held-out: %s", step, {k: round(v, 4) for k, v in record.items() if k.startswith("q")})
        metrics.write(json.dumps(record) + "\n")
        if step % args.ckpt_every == 0:
            metrics.flush()
            checkpoint()
    bar.close()
    net.eval()
    final = evaluate(model, heldout)
    log.info("held-out at step %d: %s", step, {k: round(v, 4) for k, v in final.items()})
    metrics.write(json.dumps({"step": step, **final}) + "\n")
    metrics.close()
    checkpoint(final)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
