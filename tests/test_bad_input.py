"""User mistakes and hostile peers: one clear line, a non-zero exit, and a receiver that keeps serving."""

from __future__ import annotations

import gzip
import json
import signal
import socket
import struct
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, run_script, script_env


def assert_clean_error(proc, *needles: str, rc: int = 1) -> None:
    assert proc.returncode == rc, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    err_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1, proc.stderr
    for needle in needles:
        assert needle in err_lines[0], err_lines[0]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda d: d / "missing.png", "image not found"),
        (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "not an image"),
        (lambda d: d, "no image files in folder"),
    ],
)
def test_sender_rejects_bad_image_files(tmp_path, tiny_model, make, needle):
    path = make(tmp_path)
    proc = run_script("sender_sdvae.py", "--image", str(path), "--model", str(tiny_model), "--port", str(closed_port()))
    assert_clean_error(proc, needle)


def test_sender_without_receiver_says_connection_refused(tiny_model):
    proc = run_script("sender_sdvae.py", "--model", str(tiny_model), "--port", str(closed_port()))
    assert_clean_error(proc, "connection refused", "receiver")


def test_bad_flags_are_usage_errors(tiny_model):
    proc = run_script("sender_sdvae.py", "--size", "100")
    assert proc.returncode == 2 and "multiple of 8" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_script("receiver_sdvae.py", "--port", "70000")
    assert proc.returncode == 2 and "port must be" in proc.stderr


def test_help_explains_every_flag():
    for script, flags in {
        "sender_sdvae.py": [
            "--image",
            "--host",
            "--port",
            "--model",
            "--device",
            "--size",
            "--dtype",
            "--no-original",
            "--json",
            "--precision",
        ],
        "receiver_sdvae.py": ["--host", "--port", "--model", "--device", "--out", "--no-show", "--once", "--json"],
        "sender_sdvae_metrics.py": ["--image", "--host", "--port", "--model", "--device", "--json"],
    }.items():
        proc = run_script(script, "--help")
        assert proc.returncode == 0
        for flag in flags:
            assert flag in proc.stdout, (script, flag)


@pytest.mark.parametrize(
    "model, needle",
    [
        ("does/not/exist/here", "does not exist"),
        ("stabilityai/sd-vae-ft-ema", "not in the local Hugging Face cache"),
    ],
)
def test_unloadable_models(tmp_path, model, needle):
    env = script_env(HF_HOME=str(tmp_path / "hf"))
    t0 = time.monotonic()
    proc = run_script("sender_sdvae.py", "--model", model, "--port", str(closed_port()), env=env)
    assert_clean_error(proc, needle, "--model")
    assert time.monotonic() - t0 < 60


def test_folder_with_another_model_class(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    proc = run_script("receiver_sdvae.py", "--model", str(tmp_path), "--no-show")
    assert_clean_error(proc, "UNet2DModel", "not an AutoencoderKL")


def test_port_in_use(tiny_model):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        proc = run_script("receiver_sdvae.py", "--port", str(port), "--model", str(tiny_model), "--no-show")
    assert_clean_error(proc, "already in use", str(port))


def write_odd_images(folder) -> list:
    rng = np.random.default_rng(0)
    gray = folder / "gray.png"
    Image.fromarray(rng.integers(0, 255, (64, 80), dtype=np.uint8), mode="L").save(gray)
    rgba = folder / "rgba.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    deep = folder / "deep16.png"
    Image.fromarray(rng.integers(0, 65535, (48, 48), dtype=np.uint16)).save(deep)
    assert Image.open(deep).mode.startswith("I")
    return [gray, rgba, deep]


def test_odd_image_modes_are_converted(tiny_model, start_receiver, tmp_path):
    rx = start_receiver("--no-show", "--json", "--model", str(tiny_model), "--out", str(tmp_path / "out"))
    for path in write_odd_images(tmp_path):
        proc = run_script(
            "sender_sdvae.py",
            "--image",
            str(path),
            "--model",
            str(tiny_model),
            "--port",
            str(rx.port),
            "--size",
            "64",
            "--json",
        )
        assert proc.returncode == 0, proc.stderr
        got = rx.next_json()
        assert Image.open(got["recon_path"]).mode == "RGB"
    assert rx.stop() == 0


def hostile_payloads() -> dict[str, bytes]:
    good = gzip.compress(np.zeros((1, 4, 4, 4), np.float16).tobytes())
    bomb = gzip.compress(b"\0" * (20 * 1024 * 1024))
    return {
        "random bytes": np.random.default_rng(7).bytes(5000),
        "truncated header": b"\x00\x00\x01",
        "truncated payload": struct.pack("!IBHH", len(good), 2, 4, 4) + good[:10],
        "huge length": struct.pack("!IBHH", 0xFFFFFFFF, 2, 4, 4) + b"x" * 100,
        "size mismatch": struct.pack("!IBHH", len(good), 2, 4, 5) + good,
        "gzip bomb": struct.pack("!IBHH", len(bomb), 2, 4, 4) + bomb,
        "partial original image": struct.pack("!IBHH", len(good), 2, 4, 4) + good + b"\0" * 1000,
        "nothing": b"",
    }


def test_receiver_survives_hostile_clients(tiny_model, start_receiver, tmp_path):
    rx = start_receiver(
        "--no-show", "--json", "--model", str(tiny_model), "--out", str(tmp_path), "--read-timeout", "2"
    )
    for data in hostile_payloads().values():
        with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as s:
            s.sendall(data)
    # A client that connects and goes silent, and one that disconnects mid-frame.
    silent = socket.create_connection(("127.0.0.1", rx.port))
    half = socket.create_connection(("127.0.0.1", rx.port))
    half.sendall(struct.pack("!IBHH", 1000, 2, 4, 4) + b"\x1f\x8b")
    half.close()
    time.sleep(3)
    assert silent.recv(1) == b""  # dropped after --read-timeout
    silent.close()

    proc = run_script("sender_sdvae.py", "--model", str(tiny_model), "--port", str(rx.port), "--json")
    assert proc.returncode == 0, proc.stderr
    got = rx.next_json()
    assert got["index"] == 1 and got["has_original"]
    assert rx.stop(signal.SIGINT) == 0
    summary = rx.next_json()
    assert summary["images_ok"] == 1
    # The seven bad payloads ("nothing" is an empty connection, not a frame), the half frame and the
    # silent client: nine rejections, each logged.
    assert summary["rejected"] == 9
    log = rx.stderr
    assert "Traceback" not in log
    for reason in ("exceeds the limit", "inflates past", "no data for", "closed after"):
        assert reason in log, reason


def test_peer_reset_during_send(tiny_model, start_receiver):
    """A sender that resets the connection mid-payload (RST, not FIN) is dropped, not fatal."""
    rx = start_receiver("--no-show", "--json", "--model", str(tiny_model))
    s = socket.create_connection(("127.0.0.1", rx.port))
    s.sendall(struct.pack("!IBHH", 100000, 2, 32, 32) + b"\x1f\x8b" + b"\0" * 5000)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    time.sleep(0.5)
    assert rx.proc.poll() is None
    assert rx.stop() == 0
    assert rx.next_json()["rejected"] == 1


@pytest.mark.parametrize("script", ["sender_sdvae.py", "receiver_sdvae.py", "sender_sdvae_metrics.py"])
def test_version_and_log_levels(script):
    import re

    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)[1]
    r = run_script(script, "--version", timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"latentcomm {version}"
    r = run_script(script, "-q", "-v", timeout=60)
    assert r.returncode == 2 and "not allowed with" in r.stderr


def test_quiet_leaves_warnings_and_errors_only(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loud = run_script("sender_sdvae.py", "--port", str(port), timeout=120)
    quiet = run_script("sender_sdvae.py", "--port", str(port), "-q", timeout=120)
    assert loud.returncode == quiet.returncode == 1
    assert "INFO " in loud.stderr and "INFO " not in quiet.stderr
    assert quiet.stderr.strip().splitlines()[-1].startswith("error: connection refused")
