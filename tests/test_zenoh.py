"""Frames through Zenoh, peer to peer (``--broker zenoh://HOST:PORT``): a transport added as one module
(``latentcomm/transports/zenoh.py``) and one registry line (``latentcomm.transports.BROKERS``).

Real processes: the receiver listens, the sender connects; still images, sealed frames, live video.
In-process: a resent frame is answered again without a second decode, another frame under a used
sequence number is refused."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentcomm.errors import TransportError
from latentcomm.transports.base import FramePipeline, FrameSender, FrameSource
from latentcomm.transports.zenoh import ZenohSender, ZenohSource
from latentcomm.wire import v2
from tests.conftest import PYTHON, REPO, run_script, script_env
from tests.videos import make_video

pytest.importorskip("zenoh")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def url() -> str:
    return f"zenoh://127.0.0.1:{free_port()}"


def images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = (np.random.default_rng(i).random((96, 128, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return folder


def send(url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, str(REPO / "sender_sdvae.py"), "--broker", url, "--topic", "cams", "--json", *extra],
        cwd=REPO, capture_output=True, text=True, env=script_env(), timeout=300,
    )  # fmt: skip


def results(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if '"summary"' not in line]


def decoded(rx, n: int) -> list[dict]:
    return [r for r in (rx.next_json() for _ in range(n)) if "seq" in r]


def test_images_reach_the_receiver_through_zenoh_once_each(url, tmp_path, start_receiver):
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--broker", url, "--topic", "cams")
    assert "Receiver listening on zenoh://127.0.0.1" in rx.stderr
    r = send(url, "--codec", "learned", "--image", str(images(tmp_path / "in", 3)), "--size", "0")
    assert r.returncode == 0, r.stderr
    sent = results(r)
    assert [s["ack_status"] for s in sent] == ["OK"] * 3
    got = decoded(rx, 3)
    assert [g["payload_sha256"] for g in got] == [s["payload_sha256"] for s in sent]
    assert {g["peer"] for g in got} == {got[0]["peer"]} and got[0]["peer"].startswith("zenoh:")


def test_sealed_frames_and_refusals_by_name(url, tmp_path, start_receiver):
    for name in ("k", "other"):
        r = subprocess.run([PYTHON, "-m", "latentcomm", "keygen", str(tmp_path / f"{name}.key")], cwd=REPO,
                           capture_output=True, text=True, env=script_env())  # fmt: skip
        assert r.returncode == 0, r.stderr
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--broker", url, "--topic", "cams",
                        "--key", str(tmp_path / "k.key"))  # fmt: skip
    folder = images(tmp_path / "in", 2)
    ok = send(url, "--codec", "learned", "--image", str(folder), "--size", "0", "--key", str(tmp_path / "k.key"))
    assert ok.returncode == 0 and [s["ack_status"] for s in results(ok)] == ["OK", "OK"], ok.stderr
    got = decoded(rx, 2)
    assert all(g["key_id"] for g in got)
    wrong = send(url, "--codec", "learned", "--image", str(folder), "--size", "0", "--key", str(tmp_path / "other.key"),
                 "--retries", "0")  # fmt: skip
    assert wrong.returncode != 0 and "UNKNOWN_KEY" in wrong.stdout + wrong.stderr
    plain = send(url, "--codec", "learned", "--image", str(folder), "--size", "0", "--retries", "0")
    assert plain.returncode != 0 and "SEALING_REQUIRED" in plain.stdout + plain.stderr
    assert rx.proc.poll() is None


@pytest.mark.exclusive
def test_live_video_through_zenoh(url, tmp_path, start_receiver):
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--broker", url, "--topic", "cams")
    video = make_video(tmp_path / "pan.mp4", frames=30, fps=10, size=128)
    r = send(url, "--video", str(video), "--codec", "h264", "--bandwidth", "256k")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    summary = next(x for x in lines if x.get("summary"))
    assert summary["frames_acknowledged"] >= 20, summary
    assert rx.proc.poll() is None


def image_frame(payload: bytes, seq: int = 1) -> v2.ImageFrame:
    return v2.ImageFrame(seq, "m", 1, 0, (4, 2, 2), (16, 16), payload)


def test_a_resent_frame_is_answered_again_and_a_reused_seq_refused(url):
    source = ZenohSource(url, "t").start()
    decodes = []

    def decoder() -> None:  # what Receiver.serve does with each frame, minus the picture
        while (item := source.frames.get()) is not None:
            decodes.append(item.frame.seq)
            item.reply.set_result(v2.Ack(item.frame.seq, v2.Status.OK, ""))

    threading.Thread(target=decoder, daemon=True).start()
    sender = ZenohSender(url, "t", ack_timeout=5.0, retries=0, wait_for=5.0)
    try:
        assert isinstance(sender, FrameSender) and isinstance(source, FrameSource)
        assert isinstance(sender.pipeline(), FramePipeline)
        frame = image_frame(b"x" * 100)
        assert sender.send(frame).ok and sender.send(frame).ok  # the second: a copy, answered again
        other = image_frame(b"y" * 100)
        assert sender.send(other).status == v2.Status.MALFORMED
        assert decodes == [1]
    finally:
        sender.close()
        source.frames.put(None)
        source.close()


def test_no_receiver_is_a_transport_error_and_bad_urls_are_one_line(url):
    with pytest.raises(TransportError, match="no acknowledgement"):
        with ZenohSender(url, "t", ack_timeout=0.5, retries=1) as sender:
            sender.send(image_frame(b"x"))
    r = run_script("receiver_sdvae.py", "--codec", "learned", "--no-show", "--broker", "amqp://127.0.0.1:1")
    assert r.returncode != 0 and "mqtt://HOST:PORT or zenoh://HOST:PORT" in r.stderr.strip().splitlines()[-1]
    r = run_script("receiver_sdvae.py", "--codec", "learned", "--no-show", "--broker", url, "--viewer")
    assert r.returncode != 0 and "Zenoh has no viewers" in r.stderr.strip().splitlines()[-1]


def test_zenohs_is_tls_with_the_receivers_certificate_and_mutual_with_a_ca(tmp_path, start_receiver):
    """zenohs://: the link in TLS, certificates made here (tests/test_broker_tls.py). A sender that
    can't verify the receiver, or lacks the certificate a mutual-TLS receiver asks for, stops at once
    with one line; one that can sends."""
    from tests.test_broker_tls import make_ca_and_server_cert

    ca, cert, key = make_ca_and_server_cert(tmp_path)
    url = f"zenohs://localhost:{free_port()}"
    folder = images(tmp_path / "in", 2)
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--broker", url, "--topic", "cams",
                        "--broker-cert", str(cert), "--broker-key", str(key))  # fmt: skip
    assert "Receiver listening on zenohs://localhost" in rx.stderr
    ok = send(url, "--codec", "learned", "--image", str(folder), "--size", "0", "--broker-ca", str(ca))
    assert ok.returncode == 0 and [s["ack_status"] for s in results(ok)] == ["OK", "OK"], ok.stderr
    assert len(decoded(rx, 2)) == 2
    untrusted = send(url, "--codec", "learned", "--image", str(folder), "--size", "0", "--wait-for-receiver", "1")
    last = untrusted.stderr.strip().splitlines()[-1]
    assert untrusted.returncode == 1 and "over TLS" in last and "Traceback" not in untrusted.stderr, untrusted.stderr
    plain = send(url.replace("zenohs", "zenoh"), "--codec", "learned", "--image", str(folder), "--size", "0",
                 "--retries", "0", "--ack-timeout", "1")  # fmt: skip
    assert plain.returncode != 0 and "Traceback" not in plain.stderr  # no frame reaches a TLS listener in clear
    rx.stop()

    mutual = f"zenohs://localhost:{free_port()}"
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--broker", mutual, "--topic", "cams",
                        "--broker-cert", str(cert), "--broker-key", str(key), "--broker-ca", str(ca))  # fmt: skip
    anonymous = send(mutual, "--codec", "learned", "--image", str(folder), "--size", "0", "--broker-ca", str(ca),
                     "--wait-for-receiver", "1")  # fmt: skip
    assert anonymous.returncode == 1 and "over TLS" in anonymous.stderr.strip().splitlines()[-1], anonymous.stderr
    known = send(mutual, "--codec", "learned", "--image", str(folder), "--size", "0", "--broker-ca", str(ca),
                 "--broker-cert", str(cert), "--broker-key", str(key))  # fmt: skip
    assert known.returncode == 0 and [s["ack_status"] for s in results(known)] == ["OK", "OK"], known.stderr

    r = run_script("receiver_sdvae.py", "--codec", "learned", "--no-show", "--broker", mutual)
    assert r.returncode == 1 and "needs its certificate: --broker-cert" in r.stderr.strip().splitlines()[-1]
    r = run_script("sender_sdvae.py", "--broker", mutual, "--broker-ca", str(tmp_path / "nope.pem"))
    assert r.returncode == 1 and "--broker-ca" in r.stderr and "no such file" in r.stderr
    r = run_script("sender_sdvae.py", "--broker", "zenoh://localhost:1", "--broker-ca", str(ca))
    assert r.returncode == 2 and "needs TLS" in r.stderr
