"""The README's two-terminal walkthrough, run for real: receiver and sender as processes over loopback."""

from __future__ import annotations

import gzip
import json
import socket
import struct
import threading

import numpy as np
import pytest
from PIL import Image

from latentcomm.engine import Engine
from latentcomm.images import pil_to_tensor, resize_square, tensor_to_uint8
from latentcomm.wire.encodings import decode_latent, encode_latent
from tests.conftest import REPO, run_script

APPLE = REPO / "temp" / "apple.jpeg"


@pytest.fixture(scope="module")
def fp32_engine(tiny_model):
    return Engine(str(tiny_model), "cpu", "fp32", warmup=False)


def expected_recon(engine: Engine, image: Image.Image, flag: int = 2) -> np.ndarray:
    """Decode locally what the sender sends: encode -> wire quantization -> decode."""
    latent = engine.encode(pil_to_tensor(image))
    enc = encode_latent(latent, flag)
    wire = decode_latent(flag, 4, enc.height, enc.width, enc.payload)
    return tensor_to_uint8(engine.decode(wire))


def test_sender_to_receiver_round_trip(tiny_model, fp32_engine, start_receiver, tmp_path):
    out = tmp_path / "out"
    rx = start_receiver(
        "--once", "--no-show", "--out", str(out), "--json", "--model", str(tiny_model), "--precision", "fp32"
    )
    tx = run_script(
        "sender_sdvae.py", "--port", str(rx.port), "--model", str(tiny_model), "--precision", "fp32", "--json"
    )
    assert tx.returncode == 0, tx.stderr
    sent = json.loads(tx.stdout)
    got = rx.next_json()
    summary = rx.next_json()
    assert rx.proc.wait(timeout=60) == 0, rx.stderr

    # Sizes reported on both sides match the bytes that actually crossed the socket.
    assert sent["payload_bytes"] == got["payload_bytes"]
    assert sent["frame_bytes"] == got["frame_bytes"] == summary["bytes_received"]
    assert got["frame_bytes"] == 9 + got["payload_bytes"] + 3 * 256 * 256 * 4
    assert got["latent_shape"] == sent["latent_shape"] == [1, 4, 32, 32]
    assert got["has_original"] is True
    assert summary["images_ok"] == 1 and summary["rejected"] == 0

    # The saved reconstruction is what a direct local decode of the same latent gives.
    recon = np.asarray(Image.open(got["recon_path"]))
    want = expected_recon(fp32_engine, resize_square(Image.open(APPLE).convert("RGB"), 256))
    assert recon.shape == (256, 256, 3)
    assert np.abs(recon.astype(int) - want.astype(int)).max() <= 1
    compare = Image.open(got["compare_path"])
    assert compare.width > compare.height  # two panels side by side
    assert (out / "0001_recon.png").exists() and (out / "0001_compare.png").exists()
    assert json.loads((out / "images.jsonl").read_text()) == got


def test_sender_default_output_is_the_original_wire_format(tiny_model):
    """Parse what our sender emits the way the original receiver does: struct header, gzip, float32."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    chunks: list[bytes] = []

    def accept() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                chunks.append(data)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    tx = run_script("sender_sdvae.py", "--port", str(port), "--model", str(tiny_model))
    t.join(30)
    listener.close()
    assert tx.returncode == 0, tx.stderr
    data = b"".join(chunks)

    payload_len, flag, h, w = struct.unpack("!IBHH", data[:9])
    assert (flag, h, w) == (2, 32, 32)
    latent = np.frombuffer(gzip.decompress(data[9 : 9 + payload_len]), dtype=np.float16).reshape(1, 4, h, w)
    assert np.isfinite(latent).all()
    original = np.frombuffer(data[9 + payload_len :], dtype=np.float32).reshape(3, 8 * h, 8 * w)
    want = np.asarray(resize_square(Image.open(APPLE).convert("RGB"), 256), dtype=np.float32) / 255.0
    np.testing.assert_allclose(original, want.transpose(2, 0, 1), atol=1e-6)
    # The human report names the sizes that were sent.
    assert f"{payload_len:,} bytes" in tx.stdout


def legacy_frame(latent: np.ndarray, flag: int, with_image: bool) -> bytes:
    """A frame built by hand exactly as the original scripts build it."""
    _, _, h, w = latent.shape
    if flag == 2:
        raw = latent.astype(np.float16).tobytes()
    else:
        raw = np.clip(np.round(latent * 127), -127, 127).astype(np.int8).tobytes()
    payload = gzip.compress(raw)
    frame = struct.pack("!IBHH", len(payload), flag, h, w) + payload
    if with_image:
        frame += np.random.default_rng(1).random((3, 8 * h, 8 * w), dtype=np.float32).tobytes()
    return frame


def send_raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)


@pytest.mark.parametrize("flag", [2, 0])
def test_hand_built_legacy_frames_are_accepted(tiny_model, fp32_engine, start_receiver, tmp_path, flag):
    rx = start_receiver(
        "--no-show", "--out", str(tmp_path), "--json", "--model", str(tiny_model), "--precision", "fp32"
    )
    latent = np.random.default_rng(0).uniform(-0.9, 0.9, (1, 4, 12, 20)).astype(np.float32)
    for with_image in (True, False):
        send_raw(rx.port, legacy_frame(latent, flag, with_image))
        got = rx.next_json()
        assert got["flag"] == flag
        assert got["latent_shape"] == [1, 4, 12, 20]
        assert got["image_size"] == [96, 160]
        assert got["has_original"] is with_image
        recon = np.asarray(Image.open(got["recon_path"]))
        wire = decode_latent(flag, 4, 12, 20, legacy_frame(latent, flag, False)[9:])
        want = tensor_to_uint8(fp32_engine.decode(wire))
        assert np.abs(recon.astype(int) - want.astype(int)).max() <= 1
    assert rx.stop() == 0
    summary = rx.next_json()
    assert summary["images_ok"] == 2 and summary["rejected"] == 0


def test_native_size_is_cropped_back(tiny_model, start_receiver, tmp_path):
    """--size 0 on a 101x75 image: padded to 104x80 for the model, 101x75 again at the receiver."""
    img_path = tmp_path / "odd.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (75, 101, 3), dtype=np.uint8)).save(img_path)
    rx = start_receiver("--once", "--no-show", "--out", str(tmp_path / "out"), "--json", "--model", str(tiny_model))
    tx = run_script(
        "sender_sdvae.py",
        "--port",
        str(rx.port),
        "--model",
        str(tiny_model),
        "--image",
        str(img_path),
        "--size",
        "0",
        "--json",
    )
    assert tx.returncode == 0, tx.stderr
    assert json.loads(tx.stdout)["latent_shape"] == [1, 4, 10, 13]
    got = rx.next_json()
    assert got["image_size"] == [75, 101]
    assert Image.open(got["recon_path"]).size == (101, 75)
    assert got["has_original"]


def test_int8_reports_clipping_and_metrics_sender_sends_latent_only(tiny_model, start_receiver, tmp_path):
    rx = start_receiver("--no-show", "--json", "--model", str(tiny_model), "--out", str(tmp_path))
    tx = run_script("sender_sdvae.py", "--port", str(rx.port), "--model", str(tiny_model), "--dtype", "i8", "--json")
    assert tx.returncode == 0, tx.stderr
    sent = json.loads(tx.stdout)
    assert sent["dtype"] == "i8" and 0.0 <= sent["clipped_fraction"] <= 1.0
    got = rx.next_json()
    assert got["flag"] == 0

    m = run_script(
        "sender_sdvae_metrics.py", "--image", str(APPLE), "--port", str(rx.port), "--model", str(tiny_model), "--json"
    )
    assert m.returncode == 0, m.stderr
    metrics = json.loads(m.stdout)
    got = rx.next_json()
    assert got["has_original"] is False
    # Independent computation: the same 256x256 centre crop (not a resize) against what the receiver decoded.
    from latentcomm.images import center_crop_square
    from latentcomm.metrics import psnr, ssim

    ref = center_crop_square(Image.open(APPLE).convert("RGB"), 256)
    recon = Image.open(got["recon_path"]).convert("RGB")
    assert metrics["psnr_db"] == pytest.approx(psnr(ref, recon), abs=1e-3) and metrics["psnr_db"] < 60
    assert metrics["ssim"] == pytest.approx(ssim(ref, recon), abs=1e-4)
    assert got["frame_bytes"] == 9 + got["payload_bytes"] == 9 + metrics["payload_bytes"]
    assert rx.stop() == 0


def test_headless_receiver_saves_and_says_where(tiny_model, start_receiver, tmp_path):
    """No --no-show, no --out, no display: the receiver saves to ./received instead of failing."""
    rx = start_receiver("--once", "--json", "--model", str(tiny_model), cwd=tmp_path)
    assert "no display available; saving images to" in rx.stderr
    assert str(tmp_path / "received") in rx.stderr
    tx = run_script("sender_sdvae.py", "--port", str(rx.port), "--model", str(tiny_model))
    assert tx.returncode == 0, tx.stderr
    got = rx.next_json()
    assert got["recon_path"] == "received/0001_recon.png"
    assert (tmp_path / "received" / "0001_compare.png").exists()
    assert rx.proc.wait(60) == 0
