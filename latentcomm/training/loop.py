"""The one training loop: every objective in :data:`latentcomm.training.OBJECTIVES` runs through
:func:`train`.

An objective (:class:`Objective`) says what is trained and how it is scored: its own flags, its model
and data, the parameters the optimizer moves, the loss on a batch, the held-out evaluation, the state
a checkpoint must keep beyond the optimizer's, and what its export writes. The loop owns the rest,
the same for all of them:

- the shared flags: ``--run-dir``, ``--export``, ``--steps``, ``--minutes``, ``--stop-after``,
  ``--ckpt-every``, ``--eval-every``, ``--log-every``, ``--resume``, ``--seed``, ``--lr``,
  ``--warmup`` and, for the time-boxed schedule, ``--decay-to`` and ``--decay-frac`` (each objective
  sets their defaults);
- resume: ``<run-dir>/last.pt`` holds the objective's state, the optimizer, the data generator and
  torch's RNG, the step and the training seconds, written atomically. Resuming continues bit for
  bit, and the keys are the ones each objective wrote before this loop existed, so those runs
  resume too;
- ``<run-dir>/metrics.jsonl``: one record per ``--log-every`` steps (step, LR, seconds, the loss's
  statistics) and the held-out evaluation where one ran;
- the stop: ``--steps`` (a total), ``--stop-after`` (this run's share), ``--minutes`` (a deadline);
- the learning-rate schedule (:func:`time_schedule` or :func:`step_schedule`);
- evaluation every ``--eval-every`` steps and when the run stops; a checkpoint and an export every
  ``--ckpt-every`` steps and when the run stops (the last export carries the last evaluation);
- the progress bar, and one-line errors (:class:`TrainingError`, exit status 2) for user mistakes;
- Ctrl-C: the step under way finishes, the run is checkpointed (exit status 130), and the same
  command resumes it; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from latentcomm import data
from latentcomm.device import configure_threads

log = logging.getLogger(__name__)

#: ``--steps`` when an objective runs until its time box or a Ctrl-C instead.
UNLIMITED = 10**7


class TrainingError(Exception):
    """A mistake in the command line or the files it names: said in one line, exit status 2."""


class Objective(ABC):
    """What one training objective is. Subclasses set the class attributes and implement the methods;
    :func:`train` calls them in this order: ``add_arguments`` (class), ``check``, ``run_instead``,
    ``setup``, ``parameters``, ``optimizer``, then ``load_state`` (resuming) or ``start`` (a new run),
    ``begin``, and per step ``loss`` and ``after_step``; ``evaluate``, ``state`` and ``export`` at
    the cadence the flags set.
    """

    #: The ``--objective`` value (its key in ``OBJECTIVES``).
    name: ClassVar[str]
    #: ``"time"``: warm-up, then ``--lr`` annealed over the end of ``--minutes`` (:func:`time_schedule`);
    #: ``"steps"``: warm-up, then a cosine over ``--steps`` (:func:`step_schedule`).
    schedule: ClassVar[str] = "time"
    #: Defaults of the shared flags (``run_dir``, ``export``, ``steps``, ``lr``, ...) for this objective.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Clip the gradient's norm to this before each step (None: don't).
    clip_grad_norm: ClassVar[float | None] = None
    #: The loss statistics the progress bar shows.
    progress: ClassVar[tuple[str, ...]] = ("loss",)

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        #: Where the loss runs, and the autocast precision it runs in (float32: no autocast).
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        #: The generator the batches are drawn from; a checkpoint keeps its state as ``gen``.
        self.generator: torch.Generator | None = None
        #: The checkpoint this run resumes (None: a new run), read once, before :meth:`setup`, which may
        #: shape the model after it; :meth:`load_state` then restores it.
        self.resumed: dict[str, Any] | None = None

    @classmethod  # noqa: B027 (a hook: doing nothing is the default)
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        """This objective's own flags."""

    def check(self) -> None:  # noqa: B027 (a hook: doing nothing is the default)
        """Raise :class:`TrainingError` for a mistake in the flags, before anything is loaded."""

    def run_instead(self) -> int | None:
        """An exit status when the flags ask for something else than training (``--pack``)."""
        return None

    @abstractmethod
    def setup(self) -> None:
        """Build the model and load the data (seeded: :func:`train` has seeded torch, numpy and random)."""

    @abstractmethod
    def parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer moves."""

    def optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.args.lr)

    def start(self) -> tuple[int, float]:
        """A new run (no checkpoint resumed): the steps and seconds of training it continues (a model
        it starts from may count its own); the optimizer is fresh, and warms up from there."""
        return 0, 0.0

    def begin(self) -> None:  # noqa: B027 (a hook: doing nothing is the default)
        """After resuming or starting, before the first step (compile, a baseline evaluation)."""

    @abstractmethod
    def loss(self) -> tuple[torch.Tensor, dict[str, Any]]:
        """Draw a batch and return its loss and statistics (floats or 0-d tensors, read when logged)."""

    def after_step(self, step: int) -> None:  # noqa: B027 (a hook: doing nothing is the default)
        """After the optimizer's step ``step`` (zero-based): an EMA update, say."""

    def evaluate(self) -> dict[str, float]:
        """Held-out scores, logged and exported."""
        return {}

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the optimizer, the RNG states, the step and the seconds."""

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` from a checkpoint; :class:`TrainingError` if it is not this run's."""

    @abstractmethod
    def export(self, step: int, seconds: float, evals: dict[str, float] | None) -> None:
        """Write the model folder (``evals``: the run's last evaluation, at its end; else None)."""

    def run_record(self, step: int, seconds: float) -> dict[str, Any]:
        """What an export's training record says of any run: steps, seconds, batch, LR, seed, device."""
        a = self.args
        return {"step": step, "train_seconds": round(seconds), "batch": a.batch, "lr": a.lr, "seed": a.seed,
                "device": str(self.device), "autocast": str(self.dtype)}  # fmt: skip

    def learning_rate(self, step: int, fresh_steps: int, frac_elapsed: float) -> float:
        if self.schedule == "steps":
            return step_schedule(step, self.args.steps, self.args.lr, self.args.warmup)
        return time_schedule(self.args, fresh_steps, frac_elapsed)


def time_schedule(args: argparse.Namespace, fresh_steps: int, frac_elapsed: float) -> float:
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


def step_schedule(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 2% of the base rate at step ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def update_ema(ema: list[torch.Tensor], params: list[torch.Tensor], step: int, decay: float) -> None:
    """Move the averaged weights towards the trained ones; the decay ramps up over the first steps, so
    the average forgets the random start quickly."""
    with torch.no_grad():
        torch._foreach_lerp_(ema, params, 1 - min(decay, (1 + step) / (10 + step)))


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` atomically: a run killed mid-write keeps its previous checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def write_model_folder(folder: Path, meta: dict, save: Callable[[Path], None]) -> None:
    """Write a model folder: ``save(tmp)`` writes the weights and config into a fresh folder beside it,
    with ``meta`` as ``training_state.json``, and each file then replaces its old copy atomically (a
    receiver loading the folder meanwhile sees a whole file, old or new)."""
    tmp = folder.with_name(folder.name + ".tmp")
    save(tmp)
    (tmp / "training_state.json").write_text(json.dumps(meta, indent=2) + "\n")
    folder.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
        os.replace(f, folder / f.name)
    tmp.rmdir()


class _Interrupt(threading.Event):
    """Set by the first Ctrl-C (SIGINT): the loop stops at the end of the step and checkpoints; a
    second Ctrl-C aborts at once. Outside the main thread (no signals there) it is never set."""

    def __init__(self) -> None:
        super().__init__()
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.is_set():
            raise KeyboardInterrupt
        self.set()
        log.warning("Ctrl-C: stopping at the end of this step (again to abort)")

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def parser(cls: type[Objective], objectives: Iterable[str] = ()) -> argparse.ArgumentParser:
    """The objective's command line: the shared flags with its defaults, then its own (``objectives``:
    the names ``--help`` lists beside this one)."""
    objectives = list(objectives) or [cls.name]
    doc = (sys.modules[cls.__module__].__doc__ or "").strip().split("\n")[0]
    p = argparse.ArgumentParser(
        prog=f"python -m latentcomm.training --objective {cls.name}",
        description=doc,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--objective",
        default=cls.name,
        help=f"what to train: {', '.join(objectives)} (--objective NAME --help for each)",
    )
    d = {
        "run_dir": data.REPO_ROOT / "runs" / cls.name,
        "export": data.REPO_ROOT / "runs" / cls.name / "export",
        "steps": UNLIMITED,
        "minutes": 0.0,
        "ckpt_every": 500,
        "eval_every": 1000,
        "warmup": 100,
        "decay_to": None,
        "decay_frac": 0.4,
        "seed": 0,
        **cls.defaults,
    }
    run = p.add_argument_group("run (every objective)")
    run.add_argument("--run-dir", "--run", type=Path, default=d["run_dir"], help="checkpoint, metrics, caches")
    run.add_argument("--export", "--out", type=Path, default=d["export"], help="model folder the training writes")
    run.add_argument("--steps", type=int, default=d["steps"], help="stop at this step count")
    run.add_argument(
        "--minutes",
        type=float,
        default=d["minutes"],
        help="stop (checkpointed) after this many minutes; 0 = no limit",
    )
    run.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="end this run after N steps (checkpointed; resume later); 0 = no limit",
    )
    run.add_argument("--ckpt-every", type=int, default=d["ckpt_every"], help="steps between checkpoints and exports")
    run.add_argument(
        "--eval-every",
        type=int,
        default=d["eval_every"],
        help="steps between held-out evaluations; 0 = only when the run stops",
    )
    run.add_argument(
        "--log-every", type=int, default=1, help="steps between metrics records (each waits for the device)"
    )
    run.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True, help="continue from last.pt")
    run.add_argument("--seed", type=int, default=d["seed"], help="seed for the weights, the batches and the noise")
    run.add_argument("--batch", type=int, default=d["batch"], help="crops (or patches) per step")
    run.add_argument("--lr", type=float, default=d["lr"], help="learning rate (peak, after the warm-up)")
    run.add_argument("--warmup", type=int, default=d["warmup"], help="steps of linear LR warm-up of a fresh optimizer")
    if cls.schedule == "time":
        anneal = "with --minutes: cosine-anneal the LR to this over the last --decay-frac of the time box"
        run.add_argument("--decay-to", type=float, default=d["decay_to"], help=anneal)
        run.add_argument("--decay-frac", type=float, default=d["decay_frac"], help="share of --minutes it anneals over")
    cls.add_arguments(p.add_argument_group(f"{cls.name}"))
    return p


def parse_args(
    cls: type[Objective], argv: list[str] | None = None, objectives: Iterable[str] = ()
) -> argparse.Namespace:
    args = parser(cls, objectives).parse_args(argv)
    if args.objective != cls.name:
        raise SystemExit(f"error: --objective {args.objective} is not {cls.name}")
    return args


def train(cls: type[Objective], argv: list[str] | None = None, objectives: Iterable[str] = ()) -> int:
    """Run objective ``cls`` with the flags ``argv``; the exit status."""
    args = parse_args(cls, argv, objectives)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    objective = cls(args)
    try:
        return _train(objective, args)
    except TrainingError as exc:
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2


def _train(objective: Objective, args: argparse.Namespace) -> int:
    if min(args.ckpt_every, args.log_every, args.batch) < 1 or args.eval_every < 0:
        raise TrainingError("--batch, --ckpt-every and --log-every must be at least 1, --eval-every at least 0")
    if not 0 <= args.minutes <= 1e6 or not (math.isfinite(args.lr) and args.lr > 0):
        raise TrainingError("--minutes must be 0 (no limit) to 1,000,000 and --lr a positive finite number")
    objective.check()
    if (status := objective.run_instead()) is not None:
        return status
    configure_threads()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    ckpt_path = args.run_dir / "last.pt"
    if args.resume and ckpt_path.exists():
        # On the CPU: the RNG states must stay CPU byte tensors (mapped to CUDA, set_state refuses
        # them), and load_state_dict moves weights and Adam's moments to the model's device anyway.
        objective.resumed = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    objective.setup()
    params = objective.parameters()
    log.info(
        "%s: %.2fM parameters trained, device %s, autocast %s",
        objective.name,
        sum(p.numel() for p in params) / 1e6,
        objective.device,
        objective.dtype,
    )
    opt = objective.optimizer(params)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    if (state := objective.resumed) is not None:
        objective.load_state(state)
        try:
            opt.load_state_dict(state["opt"])
        except ValueError:
            raise TrainingError(
                f"{ckpt_path} trained other parameters than these flags name: "
                "resume it with the flags it started with, or pass a new --run-dir"
            ) from None
        if objective.generator is not None:
            objective.generator.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed, opt_start = state["step"], state.get("elapsed", 0.0), state.get("opt_start", 0)
        log.info("resumed from %s at step %d (%.1f h trained)", ckpt_path, step, elapsed / 3600)
    else:
        step, elapsed = objective.start()
        opt_start = step
    objective.begin()

    metrics = (args.run_dir / "metrics.jsonl").open("a")
    t0 = time.time()
    deadline = t0 + args.minutes * 60 if args.minutes > 0 else math.inf
    stop_at = min(args.steps, step + args.stop_after) if args.stop_after > 0 else args.steps

    def checkpoint(evals: dict[str, float] | None) -> None:
        seconds = elapsed + time.time() - t0
        state = {
            **objective.state(),
            "opt": opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "opt_start": opt_start,
            "elapsed": seconds,
        }
        if objective.generator is not None:
            state["gen"] = objective.generator.get_state()
        save_checkpoint(ckpt_path, state)
        objective.export(step, seconds, evals)

    bar = tqdm(
        desc=f"training {objective.name}", unit="step", initial=step, total=None if stop_at >= UNLIMITED else stop_at
    )
    final: dict[str, float] | None = None
    evaluated_at = -1
    interrupted = _Interrupt()
    try:
        while step < stop_at and time.time() < deadline and not interrupted.is_set():
            frac = (time.time() - t0) / (args.minutes * 60) if args.minutes > 0 else 0.0
            lr = objective.learning_rate(step, step - opt_start, frac)
            for g in opt.param_groups:
                g["lr"] = lr
            autocast = objective.dtype != torch.float32
            with torch.autocast(objective.device.type, dtype=objective.dtype, enabled=autocast):
                loss, stats = objective.loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if objective.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, objective.clip_grad_norm)
            opt.step()
            objective.after_step(step)
            step += 1
            bar.update(1)
            last = step >= stop_at or time.time() >= deadline or interrupted.is_set()
            evaluating = (last and not interrupted.is_set()) or (args.eval_every > 0 and step % args.eval_every == 0)
            if evaluating or step % args.log_every == 0:
                stats = {k: float(v) for k, v in stats.items()}
                bar.set_postfix({k: f"{stats[k]:.4g}" for k in objective.progress if k in stats})
                record = {"step": step, "lr": lr, "time_s": round(elapsed + time.time() - t0, 1), **stats}
                if evaluating:
                    final, evaluated_at = objective.evaluate(), step
                    record.update(final)
                    if final:
                        log.info("step %d held-out: %s", step, {k: round(v, 4) for k, v in final.items()})
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
            if last:
                break
            if step % args.ckpt_every == 0:
                checkpoint(None)
    finally:
        interrupted.restore()
    bar.close()
    if interrupted.is_set():  # Ctrl-C: checkpointed at a step's end, to resume; no evaluation
        metrics.close()
        checkpoint(None)
        log.warning("interrupted at step %d; checkpoint %s (run the same command to resume)", step, ckpt_path)
        return 130
    if evaluated_at != step:  # the run stopped without evaluating its last step: its export gets one
        final = objective.evaluate()
        if final:
            metrics.write(json.dumps({"step": step, **final}) + "\n")
    metrics.close()
    checkpoint(final)
    log.info("stopped at step %d; checkpoint %s, export %s", step, ckpt_path, args.export)
    return 0
