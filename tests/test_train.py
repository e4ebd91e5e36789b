"""`python -m latentcomm.training`, run as a user runs it: seeded, resumable bit for bit, exports a
diffusers folder the scripts load, starts a second phase from trained weights, and refuses a
checkpoint of another architecture in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from latentcomm import data
from latentcomm.engine import Engine
from latentcomm.images import center_crop_square, pil_to_tensor
from tests.conftest import REPO, script_env

SOURCES = ["001.png", "002.png", "003.png", "007.png"]  # 007 is held out: evaluated, never trained on

pytestmark = pytest.mark.skipif(
    not all((data.PHOTOS_DIR / n).exists() for n in SOURCES), reason="needs ../shared/data/photos"
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A few real photos, downscaled so a training step takes milliseconds."""
    folder = tmp_path_factory.mktemp("photos")
    for name in SOURCES:
        img = Image.open(data.PHOTOS_DIR / name).convert("RGB")
        img.resize((img.width // 4, img.height // 4), Image.Resampling.LANCZOS).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def trained(photos, tmp_path_factory):
    """A 2-step run (run dir with last.pt, and its export) that second-phase tests start from."""
    root = tmp_path_factory.mktemp("trained")
    proc = train(photos, root / "a", root / "model-a", "--stop-after", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def train(photos, run_dir, export, *extra: str) -> subprocess.CompletedProcess:
    args = ["--data", str(photos), "--run-dir", str(run_dir), "--export", str(export)]
    args += ["--channels", "32,32,32,32", "--steps", "6", "--batch", "2", "--crop", "64"]
    args += ["--warmup", "2", "--ckpt-every", "2", "--eval-every", "3", "--seed", "3"]
    args += [*extra] if "--compile" in extra else ["--no-compile", *extra]
    return subprocess.run(
        [sys.executable, "-m", "latentcomm.training", *args],
        cwd=REPO,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=900,  # torch.compile of the step takes a minute alone, several when the CPU is shared
    )


def test_training_resumes_bit_for_bit_and_exports_a_loadable_model(photos, tmp_path):
    straight = train(photos, tmp_path / "a", tmp_path / "model-a")
    assert straight.returncode == 0, straight.stderr[-2000:]

    first = train(photos, tmp_path / "b", tmp_path / "model-b", "--stop-after", "4")
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads((tmp_path / "model-b" / "training_state.json").read_text())["step"] == 4
    second = train(photos, tmp_path / "b", tmp_path / "model-b")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from" in second.stderr

    weights_a = load_file(tmp_path / "model-a" / "diffusion_pytorch_model.safetensors")
    weights_b = load_file(tmp_path / "model-b" / "diffusion_pytorch_model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    state = json.loads((tmp_path / "model-b" / "training_state.json").read_text())
    assert state["step"] == 6 and state["seed"] == 3

    # The held-out photo was evaluated (logged), and the export is a model the scripts can load.
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "heldout_psnr_256" in r] == [3, 6]
    engine = Engine(str(tmp_path / "model-a"), "cpu", "fp32", warmup=False)
    x = pil_to_tensor(center_crop_square(Image.open(photos / "007.png"), 64))
    assert engine.encode(x).shape == (1, 4, 8, 8)


def test_resuming_another_architecture_is_one_clear_error(photos, tmp_path):
    assert train(photos, tmp_path / "run", tmp_path / "model", "--stop-after", "2").returncode == 0
    proc = train(photos, tmp_path / "run", tmp_path / "model", "--channels", "32,32,32,64")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "another architecture" in proc.stderr.strip().splitlines()[-1]


def test_a_second_phase_starts_from_trained_weights_compiled(photos, trained, tmp_path):
    """--init-from takes a run's last.pt or a diffusers folder; with a vanishing learning rate the
    exported weights are the ones it started from (random weights would differ everywhere). This
    run also exercises the torch.compile'd, channels-last training step the real runs use."""
    start = load_file(trained / "model-a" / "diffusion_pytorch_model.safetensors")

    for source, name in ((trained / "a" / "last.pt", "from-ckpt"), (trained / "model-a", "from-folder")):
        extra = ["--init-from", str(source), "--lr", "1e-12", "--l1-weight", "0", "--steps", "3"]
        if name == "from-ckpt":
            extra.append("--compile")
        proc = train(photos, tmp_path / name, tmp_path / f"model-{name}", *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "initialised from" in proc.stderr
        weights = load_file(tmp_path / f"model-{name}" / "diffusion_pytorch_model.safetensors")
        assert all(torch.allclose(weights[k].float(), start[k].float(), atol=1e-3) for k in start), name
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2, 3]
        assert records[0]["lr"] < 1e-11


def test_init_from_mistakes_are_one_clear_error(photos, trained, tmp_path):
    for source, message in (
        (tmp_path / "missing", "does not exist"),
        (trained / "a" / "last.pt", "another architecture"),
        (trained / "a" / "metrics.jsonl", "can't be read"),
    ):
        proc = train(
            photos, tmp_path / "b", tmp_path / "model-b", "--init-from", str(source), "--channels", "32,32,32,64"
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert message in proc.stderr.strip().splitlines()[-1]


def test_decoder_only_phase_keeps_the_latent_and_trains_the_decoder(photos, trained, tmp_path):
    """A decoder fine-tune must leave the encoder (what goes over the wire) bit-identical."""
    start = load_file(trained / "model-a" / "diffusion_pytorch_model.safetensors")
    extra = ["--init-from", str(trained / "a" / "last.pt"), "--decoder-only", "--lr", "1e-2", "--steps", "3"]
    proc = train(photos, tmp_path / "d", tmp_path / "model-d", *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tuned = load_file(tmp_path / "model-d" / "diffusion_pytorch_model.safetensors")
    frozen = [k for k in start if k.startswith(("encoder.", "quant_conv."))]
    trained = [k for k in start if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and trained
    assert all(torch.equal(tuned[k], start[k]) for k in frozen)
    assert sum(not torch.equal(tuned[k], start[k]) for k in trained) > len(trained) // 2

    # Resuming that run without --decoder-only is a one-line error, not an optimizer traceback.
    proc = train(photos, tmp_path / "d", tmp_path / "model-d", "--steps", "4")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--decoder-only" in proc.stderr.strip().splitlines()[-1]
