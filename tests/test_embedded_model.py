"""The shipped model: offline default, and real-weight quality that a wrong pipeline cannot reach."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from latentcomm import data
from latentcomm.engine import Engine
from latentcomm.images import pil_to_tensor, resize_square, tensor_to_pil
from latentcomm.metrics import psnr
from latentcomm.models import EMBEDDED_MODEL_DIR
from tests.conftest import REPO, run_script, script_env

#: Set from the measured result of the shipped weights: 20.37 dB on held-out photo 007 resized to
#: 256x256 (bf16 and fp32 alike; 11.5 dB with [0, 1] input scaling), minus a margin for CPU-to-CPU
#: differences in arithmetic. A pipeline bug costs far more than this margin.
PSNR_FLOOR_DB = 20.0
HELDOUT = data.PHOTOS_DIR / data.HELDOUT_PHOTOS[0]

pytestmark = pytest.mark.skipif(not (EMBEDDED_MODEL_DIR / "config.json").exists(), reason="embedded model missing")


def test_model_is_small_and_has_the_sd_vae_interface():
    weights = EMBEDDED_MODEL_DIR / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 20 * 1000 * 1000
    cfg = json.loads((EMBEDDED_MODEL_DIR / "config.json").read_text())
    assert cfg["_class_name"] == "AutoencoderKL"
    assert cfg["latent_channels"] == 4 and len(cfg["block_out_channels"]) == 4  # 8x down-sampling
    assert (EMBEDDED_MODEL_DIR / "README.md").exists()


@pytest.mark.parametrize(
    "env_extra",
    [
        {"HF_HUB_OFFLINE": "1"},
        # Not marked offline, but the Hub can't be reached: the probe must give up within seconds.
        {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "https://hub.invalid"},
        {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},
    ],
)
def test_default_model_falls_back_to_the_embedded_one_quickly(tmp_path, env_extra):
    env = script_env(HF_HOME=str(tmp_path / "empty-hf-home"), **env_extra)
    # Time the choice only (the imports before it take about a second on their own). The probe
    # gives up after HUB_PROBE_TIMEOUT_S (1.5 s); 1 s on top covers the cache lookup and a slow CI.
    code = (
        "import time; from latentcomm.models import choose_default_model; t=time.monotonic(); "
        "m=choose_default_model(); print(m); print(time.monotonic()-t)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    chosen, seconds = proc.stdout.split()
    assert chosen == str(EMBEDDED_MODEL_DIR)
    assert float(seconds) < 2.5
    assert "using the embedded model" in proc.stderr or "embedded model" in proc.stderr


def test_round_trip_with_real_weights_reaches_the_floor(start_receiver, tmp_path):
    """The README's walkthrough with no --model at all, offline, on a held-out photo."""
    rx = start_receiver("--once", "--no-show", "--json", "--out", str(tmp_path))
    assert "embedded model" in rx.stderr
    t0 = time.monotonic()
    tx = run_script("sender_sdvae.py", "--image", str(HELDOUT), "--port", str(rx.port), "--json")
    assert tx.returncode == 0, tx.stderr
    assert json.loads(tx.stdout)["model"] == str(EMBEDDED_MODEL_DIR)
    got = rx.next_json()
    assert time.monotonic() - t0 < 120
    reference = resize_square(Image.open(HELDOUT).convert("RGB"), 256)
    recon = Image.open(got["recon_path"])
    score = psnr(reference, recon)
    assert score >= PSNR_FLOOR_DB, f"PSNR {score:.2f} dB below the floor {PSNR_FLOOR_DB}"


def test_wrong_input_scaling_falls_below_the_floor():
    """Feeding [0, 1] instead of [-1, 1] (a classic pipeline bug) must fail the same floor."""
    engine = Engine(str(EMBEDDED_MODEL_DIR), "cpu", "auto", warmup=False)
    reference = resize_square(Image.open(HELDOUT).convert("RGB"), 256)
    x = pil_to_tensor(reference)
    good = tensor_to_pil(engine.decode(engine.encode(x)))
    wrong = tensor_to_pil(engine.decode(engine.encode((x + 1) / 2)))
    assert psnr(reference, good) >= PSNR_FLOOR_DB
    assert psnr(reference, wrong) < PSNR_FLOOR_DB
    assert np.asarray(good).shape == (256, 256, 3)
