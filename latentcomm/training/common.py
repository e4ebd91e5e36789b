"""DOC"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
from pathlib import Path

import torch

from latentcomm import data
from latentcomm.codecs.learned.model import LearnedCodecModel


def add_frozen_run_args(p: argparse.ArgumentParser, name: str) -> None:
    """Run folder, export and time box of the objectives that train one part of a trained codec
    (context, decoder): ``runs/<name>``, resumable, LR annealed over the last 40% of ``--minutes``."""
    p.add_argument("--run-dir", type=Path, default=data.REPO_ROOT / "runs" / name, help="checkpoint, logs, caches")
    p.add_argument(
        "--export", type=Path, default=data.REPO_ROOT / "runs" / name / "export", help="model folder to write"
    )
    p.add_argument(
        "--minutes", type=float, default=0.0, help="stop (checkpointed) after this many minutes; 0 = no limit"
    )
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True, help="continue from last.pt")
    p.set_defaults(decay_frac=0.4)


def read_training_state(folder: Path) -> dict:
    """A model folder's training record ({} when it has none)."""
    path = folder / "training_state.json"
    return json.loads(path.read_text()) if path.exists() else {}


#: SSIMULACRA2's weights at its sixth scale are negligible, but the first five should all be scored:
#: the fifth (1/16 size) needs 8 pixels.
MIN_S2_CROP = 128


#: pytorch_msssim's five scales with its 11-pixel window need more than 160 pixels a side.
MSSSIM_MIN_SIDE = 161


#: The smallest training crop (a multiple of 64) that MS-SSIM can score.
MIN_MSSSIM_CROP = 192


def crop_error(crop: int, msssim_weight: float, s2_weight: float = 0.0) -> str | None:
    """What is wrong with a training ``--crop`` (the codec and decoder objectives), or None."""
    if crop < 64 or crop % 64:
        return "--crop must be a multiple of 64"
    if msssim_weight and crop < MIN_MSSSIM_CROP:
        return f"MS-SSIM needs --crop {MIN_MSSSIM_CROP} or more (or --msssim-weight 0)"
    if s2_weight and crop < MIN_S2_CROP:
        return f"SSIMULACRA2 needs --crop {MIN_S2_CROP} or more (or --s2-weight 0)"
    return None


def export(ema: LearnedCodecModel, folder: Path, meta: dict) -> None:
    """Write the EMA weights as a model folder (float16 safetensors + config + training state)."""
    tmp = folder.with_name(folder.name + ".tmp")
    half = copy.deepcopy(ema).cpu()
    half.save_pretrained(tmp, half_precision=True)
    (tmp / "training_state.json").write_text(json.dumps(meta, indent=2) + "\n")
    folder.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
        os.replace(f, folder / f.name)
    tmp.rmdir()


def learning_rate(args: argparse.Namespace, fresh_steps: int, frac_elapsed: float) -> float:
    """The LR of the next step: linear warm-up over the optimizer's first ``--warmup`` steps, then
    ``--lr``, annealed (cosine, by wall-clock time, since a time-boxed chunk doesn't know its step count)
    to ``--decay-to`` over the last ``--decay-frac`` of ``--minutes``.

    ``fresh_steps`` counts steps since the optimizer was new (Adam's moments start at zero, and its
    first updates are as large as the LR whatever the gradient, so weights that were already trained
    must be eased into them).
    """
    lr = args.lr * min(1.0, (fresh_steps + 1) / max(args.warmup, 1))
    if args.decay_to is not None and args.minutes > 0 and args.decay_frac > 0:
        t = (frac_elapsed - (1.0 - args.decay_frac)) / args.decay_frac
        if t > 0:
            t = min(t, 1.0)
            lr = args.decay_to + (lr - args.decay_to) * 0.5 * (1 + math.cos(math.pi * t))
    return lr


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


#: Qualities the held-out evaluation reports.
EVAL_QUALITIES = (1, 3, 5, 7, 9, 11)


def parse_groups(text: str, m: int) -> list[int]:
    try:
        groups = [int(g) for g in text.split(",")]
    except ValueError:
        raise ValueError(f"--groups must be comma-separated integers, got {text!r}") from None
    if sum(groups) != m or min(groups) <= 0:
        raise ValueError(f"--groups {text} must be positive and add up to the latent's {m} channels")
    return groups
