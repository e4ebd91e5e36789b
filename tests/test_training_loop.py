"""The one training loop (``latentcomm.training.loop``) with the smallest objective there is: a line
fitted to noisy points. A new objective is one class; the loop gives it resume (bit for bit), the
metrics log, evaluation and checkpoint cadence, the deadline, the LR schedule and one-line errors."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import torch

from latentcomm.training.loop import Objective, TrainingError, train, write_model_folder
from tests.conftest import REPO, script_env


class Line(Objective):
    """Fit y = a x + b to noisy points (a new objective: one class)."""

    name = "line"
    defaults = dict(lr=0.1, warmup=1, ckpt_every=3, eval_every=4, batch=8)

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--slope", type=float, default=2.0, help="the true slope")

    def check(self) -> None:
        if self.args.slope == 0:
            raise TrainingError("--slope must not be 0")

    def setup(self) -> None:
        self.generator = torch.Generator().manual_seed(self.args.seed)
        self.model = torch.nn.Linear(1, 1)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    def loss(self) -> tuple[torch.Tensor, dict[str, Any]]:
        x = torch.rand(self.args.batch, 1, generator=self.generator)
        y = self.args.slope * x + 0.01 * torch.randn(x.shape)  # the global RNG: restored on resume too
        loss = (self.model(x) - y).pow(2).mean()
        return loss, {"loss": loss.detach()}

    def evaluate(self) -> dict[str, float]:
        return {"slope_error": abs(float(self.model.weight.detach()) - self.args.slope)}

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])

    def export(self, step: int, seconds: float, evals: dict[str, float] | None) -> None:
        def save(folder):
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(self.model.state_dict(), folder / "w.pt")

        write_model_folder(self.args.export, {**self.run_record(step, seconds), "heldout": evals}, save)


def run(tmp_path, name: str, *flags: str) -> int:
    return train(Line, ["--run-dir", str(tmp_path / name), "--export", str(tmp_path / name / "export"), *flags])


def test_a_new_objective_trains_resumes_bit_for_bit_and_exports(tmp_path):
    assert run(tmp_path, "straight", "--steps", "10") == 0
    assert run(tmp_path, "split", "--steps", "10", "--stop-after", "5") == 0
    assert run(tmp_path, "split", "--steps", "10") == 0
    a = torch.load(tmp_path / "straight" / "export" / "w.pt")
    b = torch.load(tmp_path / "split" / "export" / "w.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 11))
    # Every --eval-every steps, and when the run stops; the export carries the last evaluation.
    assert [r["step"] for r in records if "slope_error" in r] == [4, 8, 10]
    meta = json.loads((tmp_path / "straight" / "export" / "training_state.json").read_text())
    assert meta["step"] == 10 and meta["heldout"]["slope_error"] == records[-1]["slope_error"]
    assert meta["heldout"]["slope_error"] < 2.0  # it learned something
    state = torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    assert state["step"] == 10 and {"opt", "gen", "torch_rng", "model", "elapsed"} <= set(state)


def test_the_learning_rate_warms_up_and_a_deadline_stops_the_run(tmp_path):
    assert run(tmp_path, "warm", "--steps", "3", "--warmup", "4", "--lr", "0.4") == 0
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.1, 0.2, 0.3])
    assert run(tmp_path, "boxed", "--minutes", "0.002") == 0  # 0.12 s: checkpointed, exported, stopped
    assert torch.load(tmp_path / "boxed" / "last.pt", weights_only=False)["step"] >= 1


def test_ctrl_c_checkpoints_at_a_step_end_and_the_run_resumes(tmp_path):
    run_dir = tmp_path / "run"
    code = "import sys\nfrom tests.test_training_loop import Line\nfrom latentcomm.training.loop import train\n"
    code += "sys.exit(train(Line, sys.argv[1:]))"
    command = [sys.executable, "-c", code, "--run-dir", str(run_dir), "--export", str(run_dir / "export")]
    proc = subprocess.Popen(command, cwd=REPO, env=script_env(), stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.exists() and metrics.stat().st_size > 2000):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted at step" in err, err
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    state = torch.load(run_dir / "last.pt", weights_only=False)
    assert state["step"] == steps[-1] and steps == list(range(1, steps[-1] + 1))
    again = subprocess.run([*command, "--stop-after", "3"], cwd=REPO, env=script_env(), capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert again.returncode == 0 and f"at step {steps[-1]}" in again.stderr, again.stderr
    assert torch.load(run_dir / "last.pt", weights_only=False)["step"] == steps[-1] + 3


def test_mistakes_are_one_line(tmp_path, capsys):
    assert run(tmp_path, "bad", "--slope", "0") == 2
    err = capsys.readouterr().err
    assert err == "error: --slope must not be 0\n"
    assert run(tmp_path, "bad", "--batch", "0") == 2
    assert "--batch" in capsys.readouterr().err
