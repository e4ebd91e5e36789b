"""Fine-tune a trained codec's decoder on its own frozen bitstream.

``python -m latentcomm.training --objective decoder``.

Only the synthesis transform (``g_s``) and the decoder gains change. The analysis transform, encoder
gains, hyperprior and context model stay as they are, so every image codes to exactly the same bytes
as before. Only the picture decoded from them changes, and quality can be compared at identical bytes.

Why there is something left to gain: the transforms were trained with the hyperprior, so the decoder
only ever saw latents rounded around the hyperprior's means. The context model, trained afterwards on
the frozen transforms, rounds around its own means. Crops are therefore rounded one way or the other,
half and half (``--context-share``), because streams still code with the hyperprior alone.

The loss is ``log MSE + w * log(1 - MS-SSIM)`` per crop: the sum of two quality scores in decibels.
Each crop counts the same whatever its quality level, with no lambda to balance. ``--msssim-weight 0``
fine-tunes for PSNR alone.

Training watches the held-out photos (centre 512x512 crops): PSNR and MS-SSIM at several qualities,
decoded from context-coded latents, as the receiver decodes them.
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
from pytorch_msssim import ms_ssim
from tqdm import tqdm

from latentcomm import data
from latentcomm.codecs.learned.model import LearnedCodecModel, rounded_latent
from latentcomm.device import configure_threads
from latentcomm.errors import ModelLoadError
from latentcomm.images import center_crop_square, load_image
from latentcomm.training.common import (
    EVAL_QUALITIES,
    add_frozen_run_args,
    crop_error,
    export,
    learning_rate,
    read_training_state,
    save_checkpoint,
)
from latentcomm.training.datasets import Crops, add_data_args, training_set

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m latentcomm.training --objective decoder",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=data.MODELS_ROOT / "latentcomm-lic",
        help="trained codec (with a context model) whose decoder is fine-tuned",
    )
    add_data_args(p)
    add_frozen_run_args(p, "decoder")
    p.add_argument("--batch", type=int, default=8, help="crops per step")
    p.add_argument("--crop", type=int, default=192, help="crop size in pixels (multiple of 64)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (Adam)")
    p.add_argument(
        "--decay-to", type=float, default=1e-5, help="with --minutes: cosine-anneal the LR to this over the last 40%%"
    )
    p.add_argument("--warmup", type=int, default=200, help="steps of linear LR warm-up")
    p.add_argument("--msssim-weight", type=float, default=1.0, help="w in log MSE + w * log(1 - MS-SSIM)")
    p.add_argument(
        "--context-share", type=float, default=0.5, help="share of steps whose crops are rounded by the context model"
    )
    p.add_argument("--steps", type=int, default=10**7, help="stop at this step count (this run's own)")
    p.add_argument("--ckpt-every", type=int, default=250, help="steps between checkpoints and exports")
    p.add_argument(
        "--eval-every", type=int, default=1000, help="steps between held-out evaluations (0 = only at the ends)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the crops and quality levels")
    return p.parse_args(argv)


def decode(model: LearnedCodecModel, y_hat: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    _, gi = model.gains(quality)
    return model.picture(model.g_s(y_hat * gi), quality)


def quality_loss(x_hat: torch.Tensor, x: torch.Tensor, msssim_weight: float) -> tuple[torch.Tensor, dict]:
    """Mean over crops of log MSE + w * log(1 - MS-SSIM), and the batch's PSNR and MS-SSIM."""
    mse = (x_hat - x).pow(2).mean(dim=(1, 2, 3))
    loss = torch.log(mse.clamp_min(1e-10))
    stats = {"psnr": float((-10 * torch.log10(mse.detach().clamp_min(1e-10))).mean())}
    if msssim_weight:
        ms = ms_ssim(x_hat.clamp(0, 1), x, data_range=1.0, size_average=False)
        loss = loss + msssim_weight * torch.log((1 - ms).clamp_min(1e-6))
        stats["ms_ssim"] = float(ms.detach().mean())
    return loss.mean(), stats


@torch.no_grad()
def evaluate(model: LearnedCodecModel, heldout: list[torch.Tensor]) -> dict[str, float]:
    """Held-out PSNR and MS-SSIM per quality, decoded from context-rounded latents."""
    res: dict[str, float] = {}
    for q in EVAL_QUALITIES:
        if q > model.config.levels:
            continue
        psnrs, msssims = [], []
        quality = torch.tensor([float(q)])
        for x in heldout:
            x_hat = decode(model, rounded_latent(model, x, quality, model.context is not None), quality).clamp(0, 1)
            psnrs.append(float(-10 * torch.log10((x_hat - x).pow(2).mean())))
            msssims.append(float(ms_ssim(x_hat, x, data_range=1.0)))
        res[f"q{q}_psnr"] = float(np.mean(psnrs))
        res[f"q{q}_ms_ssim"] = float(np.mean(msssims))
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    configure_threads()
    if problem := crop_error(args.crop, args.msssim_weight):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if not 0.0 <= args.context_share <= 1.0:
        print("error: --context-share must be between 0 and 1", file=sys.stderr)
        return 2
    try:
        model = LearnedCodecModel.from_pretrained(args.init_from)
    except ModelLoadError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    base_fp = f"{args.init_from.resolve().name}@{model.fingerprint()}"
    share = args.context_share if model.context is not None else 0.0
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model.requires_grad_(False).eval()
    # A post-network, where the model has one, stays as it is (``--objective postnet`` trains it);
    # the pictures this objective scores go through it.
    trained = [*model.g_s.parameters(), model.log_inv_gain]
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.Adam(trained, lr=args.lr)
    # Decoder fine-tuning the base model already had (this run continues it), counted once.
    base_meta = read_training_state(args.init_from).get("decoder", {})
    carried = {"steps": base_meta.get("steps", 0), "cpu_seconds": base_meta.get("cpu_seconds", 0)}
    origin = base_meta.get("base") or base_fp

    try:
        crops = Crops(training_set(args), args.crop, gen)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    heldout = [
        torch.from_numpy(np.asarray(center_crop_square(load_image(p), 512)).copy()).permute(2, 0, 1)[None] / 255.0
        for p in data.heldout_photos(args.data)
    ]
    args.run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.run_dir / "last.pt"
    step, elapsed, before = 0, 0.0, None
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        model.g_s.load_state_dict(state["g_s"])
        with torch.no_grad():
            model.log_inv_gain.copy_(state["log_inv_gain"])
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
                "g_s": model.g_s.state_dict(),
                "log_inv_gain": model.log_inv_gain.detach().clone(),
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
        # The base model's training record, with this fine-tuning's added.
        meta = read_training_state(args.init_from)
        meta["decoder"] = {
            "objective": f"log MSE + {args.msssim_weight:g} * log(1 - MS-SSIM) on the frozen bitstream",
            "context_share": share,
            "base": origin,
            "steps": carried["steps"] + step,
            "cpu_seconds": round(carried["cpu_seconds"] + total),
            "heldout_before": before,
            "heldout": evals,
        }
        export(model, args.export, meta)

    bar = tqdm(desc="training decoder", unit="step", initial=step)
    while step < args.steps and time.time() < deadline:
        # Warm-up (--warmup): Adam's first steps move every weight by about the LR whatever its
        # gradient; a full-LR start was measured to cost 1.2 dB at quality 11 in 3 steps.
        lr = learning_rate(args, step, (time.time() - t0) / (args.minutes * 60) if args.minutes > 0 else 0.0)
        for g in opt.param_groups:
            g["lr"] = lr
        x = crops.batch(args.batch)
        quality = 1 + (model.config.levels - 1) * torch.rand(args.batch, generator=gen)
        context = bool(torch.rand(1, generator=gen) < share)
        y_hat = rounded_latent(model, x, quality, context)
        loss, stats = quality_loss(decode(model, y_hat, quality), x, args.msssim_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(psnr=f"{stats['psnr']:.2f}")
        record = {"step": step, "lr": lr, "loss": round(loss.item(), 5), **{k: round(v, 5) for k, v in stats.items()}}
        if args.eval_every and step % args.eval_every == 0:
            record.update(evaluate(model, heldout))
            log.info("step %d held-out: %s", step, {k: round(v, 4) for k, v in record.items() if k.startswith("q")})
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


if __name__ == "__main__":
    raise SystemExit(main())
