"""Sealed frames: nobody without the key can read, forge or replay them (docs/security.md).

Real sender and receiver processes talk through a man in the middle on loopback that flips bits,
records and replays traffic, and forges acknowledgements; the sans-I/O layer is fuzzed on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from latentcomm.codecs import LEARNED_MODEL_DIR, LearnedCodec
from latentcomm.errors import RemoteProtocolError
from latentcomm.images import pil_to_tensor
from latentcomm.transports.tcp import V2Client
from latentcomm.wire import v2
from latentcomm.wire.keys import Key, Keyring, generate_key, load_key
from latentcomm.wire.sealed import TYPE_HELLO, TYPE_SEALED, Handshake, SealError, SecureConnection
from tests.conftest import PYTHON, REPO, run_script

# -- helpers ---------------------------------------------------------------------------------------


def keygen(path: Path) -> str:
    res = subprocess.run(
        [PYTHON, "-m", "latentcomm", "keygen", str(path), "--json"], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["key_id"]


@pytest.fixture
def keys(tmp_path) -> list[tuple[Path, str]]:
    """Four key files, written by the library function keygen runs (the command itself is tested once)."""
    return [(tmp_path / f"k{i}.key", generate_key(tmp_path / f"k{i}.key").key_id_hex) for i in range(4)]


def photo(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx * 3 + seed * 7, yy * 3, 128 + 50 * np.sin(xx / (3 + seed % 5))], -1) + rng.normal(
        0, 5, (size,) * 2 + (3,)
    )
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def message_bounds(buf: bytes | bytearray) -> int | None:
    """Length of the first complete v2-prefixed message in ``buf`` (None if incomplete)."""
    if len(buf) < v2.PREFIX.size:
        return None
    n = v2.PREFIX.size + v2.PREFIX.unpack_from(buf)[4]
    return n if len(buf) >= n else None


class Proxy:
    """A man in the middle on loopback, between a real sender and a real receiver.

    ``tamper``: {index of a sealed sender message, counted across connections: bit to flip in it}.
    ``forge``: rewrite the receiver's sealed acknowledgements ("plaintext-ok" or "flip").
    ``streams``: every connection's bytes from the sender, as sent (for replay).
    """

    def __init__(self, upstream: int, tamper: dict[int, int] | None = None, forge: str | None = None) -> None:
        self.upstream = upstream
        self.tamper = tamper or {}
        self.forge = forge
        self.streams: list[bytearray] = []
        self.sealed_seen = 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            record = bytearray()
            self.streams.append(record)
            threading.Thread(target=self._pump, args=(client, server, record, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None, False), daemon=True).start()

    def _rewrite(self, msg: bytes, from_sender: bool, acks: list[int]) -> bytes:
        mtype = msg[5]
        if from_sender and mtype == TYPE_SEALED:
            with self.lock:
                idx = self.sealed_seen
                self.sealed_seen += 1
            if idx in self.tamper:
                bit = self.tamper[idx]
                b = bytearray(msg)
                b[bit // 8] ^= 1 << (bit % 8)
                return bytes(b)
        if not from_sender and mtype == TYPE_SEALED and self.forge:
            acks[0] += 1
            if self.forge == "plaintext-ok":
                return v2.encode_ack(v2.Ack(acks[0], v2.Status.OK))
            b = bytearray(msg)
            b[-1] ^= 1
            return bytes(b)
        return msg

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray | None, from_sender: bool) -> None:
        buf = bytearray()
        acks = [0]
        try:
            while data := src.recv(65536):
                if record is not None:
                    record += data
                buf += data
                while (n := message_bounds(buf)) is not None:
                    dst.sendall(self._rewrite(bytes(buf[:n]), from_sender, acks))
                    del buf[:n]
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def summary_at_stop(rx) -> dict:
    """Stop a --json receiver and return its summary object."""
    rx.stop()
    lines = []
    while not rx.stdout_lines.empty():
        lines.append(json.loads(rx.stdout_lines.get()))
    return next(line for line in lines if line.get("summary"))


def decoded_reports(rx, n: int, timeout: float = 120) -> list[dict]:
    return [rx.next_json(timeout) for _ in range(n)]


# -- keys and policy -------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_and_never_overwrites(tmp_path):
    path = tmp_path / "fleet.key"
    key_id = keygen(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path).key_id_hex == key_id and len(key_id) == 16
    again = subprocess.run([PYTHON, "-m", "latentcomm", "keygen", str(path)], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.strip().startswith("error:") and "never overwrites" in again.stderr
    assert load_key(path).key_id_hex == key_id


def bad_key(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.key"
    if kind == "missing":
        return path
    text = {
        "world-readable": None,
        "malformed": "this is not a key\n",
        "short": "latentcomm-key-v1 " + "QUJD" * 4 + "\n",
    }[kind]
    if text is None:
        keygen(path)
        path.chmod(0o644)
    else:
        path.write_text(text)
        path.chmod(0o600)
    return path


KEY_ERRORS = {
    "missing": "does not exist",
    "world-readable": "readable by other users (mode 0644)",
    "malformed": "is not a latentcomm key",
    "short": "latentcomm keys are 32 bytes",
}


@pytest.mark.parametrize(
    ("script", "kind"),
    [("sender_sdvae.py", kind) for kind in KEY_ERRORS]
    + [("receiver_sdvae.py", "world-readable"), ("sender_sdvae_metrics.py", "short")],
)
def test_bad_key_files_are_refused_with_one_line(tmp_path, kind, script):
    path = bad_key(tmp_path, kind)
    args = ["--key", str(path), "--codec", "learned", "--port", "1"]
    if script == "sender_sdvae_metrics.py":
        args += ["--image", "temp/apple.jpeg"]
    if script == "receiver_sdvae.py":
        args += ["--no-show", "--once"]
    res = run_script(script, *args, timeout=120)
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and KEY_ERRORS[kind] in errors[0], res.stderr
    assert "Traceback" not in res.stderr


def test_receiver_beyond_loopback_needs_a_key_or_insecure(tmp_path, keys, start_receiver):
    res = run_script("receiver_sdvae.py", "--host", "0.0.0.0", "--port", "0", "--codec", "learned", "--no-show")
    assert res.returncode == 1 and "refusing to listen on 0.0.0.0 without --key" in res.stderr
    rx = start_receiver("--host", "0.0.0.0", "--codec", "learned", "--no-show", "--insecure")
    assert "--insecure: listening on 0.0.0.0" in rx.stderr
    rx = start_receiver("--host", "0.0.0.0", "--codec", "learned", "--no-show", "--key", str(keys[0][0]))
    assert f"sealed frames only, key id(s) {keys[0][1]}" in rx.stderr


def test_wrong_plaintext_and_legacy_senders_get_clear_errors(tmp_path, keys, start_receiver, tiny_model):
    """Unknown key, plaintext v2 and legacy frames to a keyed receiver, a keyed sender to a plain one.

    The receivers and the v2 senders use the learned codec (no diffusers to import: the test takes
    about half the time); the legacy sender needs the VAE path, and its frame is refused unread."""
    learned = ["--codec", "learned"]
    rx = start_receiver(*learned, "--no-show", "--json", "--key", str(keys[0][0]), "--out", str(tmp_path / "o"))
    port = ["--port", str(rx.port)]
    wrong = run_script("sender_sdvae.py", *learned, *port, "--key", str(keys[1][0]))
    assert wrong.returncode == 1 and f"UNKNOWN_KEY: unknown key id {keys[1][1]}" in wrong.stderr
    assert wrong.stderr.count("\n") <= 2 and "Traceback" not in wrong.stderr  # a log line and the error
    plain = run_script("sender_sdvae.py", *learned, *port)
    assert plain.returncode == 1 and "SEALING_REQUIRED" in plain.stdout
    legacy = run_script("sender_sdvae.py", "--model", str(tiny_model), *port)
    assert legacy.returncode == 1 and "refused" in legacy.stderr, legacy.stderr
    assert "legacy format has no room for an authentication tag" in rx.stderr
    assert "a plaintext v2 frame refused" in rx.stderr
    no_legacy = run_script("sender_sdvae.py", *port, "--key", str(keys[0][0]), "--protocol", "legacy")
    assert no_legacy.returncode == 2 and "legacy frames can't be sealed" in no_legacy.stderr
    ok = run_script("sender_sdvae.py", *learned, *port, "--key", str(keys[0][0]), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout.splitlines()[0])["acknowledged"]
    assert rx.next_json()["key_id"] == keys[0][1]
    summary = summary_at_stop(rx)
    assert summary["images_ok"] == 1 and summary["rejected"] == 3
    plain_rx = start_receiver(*learned, "--no-show")
    keyed = run_script("sender_sdvae.py", *learned, "--port", str(plain_rx.port), "--key", str(keys[0][0]))
    assert keyed.returncode == 1 and "is the receiver started with --key?" in keyed.stderr


# -- tampering, replay, forgery ------------------------------------------------------------------------

#: Where one bit is flipped in a sealed message (bit offset from its first byte) and what the
#: receiver must say. Layout: prefix (magic 0-3, version 4, type 5, reserved 6-7, body length 8-11),
#: key id 12-19, counter 20-27, ciphertext, tag (last 16 bytes).
TAMPER = {
    "magic": (0, "bad magic"),
    "version": (4 * 8, "unsupported protocol version"),
    "type": (5 * 8, "a type-5 message refused"),
    "reserved": (6 * 8 + 3, "failed authentication"),
    "length": (8 * 8 + 7, "exceeds the limit"),
    "key id": (12 * 8 + 2, "names key id"),
    "counter": (27 * 8, "failed authentication"),
    "ciphertext start": (28 * 8 + 5, "failed authentication"),
    "ciphertext middle": (200 * 8 + 1, "failed authentication"),
    "tag": (-1, "failed authentication"),  # resolved per message: the last bit
}


def test_every_part_of_a_sealed_frame_is_tamper_evident(tmp_path, keys, start_receiver):
    """One bit flipped in every other frame: each tampered frame is refused with its reason and
    nothing of it is decoded or saved; every honest frame in between arrives, exactly."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2 * len(TAMPER)):
        photo(i).save(folder / f"{i:02d}.png")
    out = tmp_path / "out"
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--key", str(keys[0][0]), "--out", str(out))
    flips = {}
    for n, (bit, _reason) in enumerate(TAMPER.values()):
        flips[2 * n] = bit
    proxy = Proxy(rx.port)
    # The tag is the last 16 bytes: flip its last bit, wherever the message ends.
    proxy.tamper = {i: b for i, b in flips.items() if b >= 0}
    tag_index = 2 * list(TAMPER).index("tag")
    orig = proxy._rewrite

    def rewrite(msg, from_sender, acks):
        if from_sender and msg[5] == TYPE_SEALED and proxy.sealed_seen == tag_index:
            proxy.sealed_seen += 1
            return msg[:-1] + bytes([msg[-1] ^ 0x80])
        return orig(msg, from_sender, acks)

    proxy._rewrite = rewrite
    tx = run_script(
        "sender_sdvae.py", "--codec", "learned", "--key", str(keys[0][0]), "--port", str(proxy.port),
        "--image", str(folder), "--size", "0", "--retries", "0", "--json", timeout=300,
    )  # fmt: skip
    assert tx.returncode == 1, tx.stderr
    sent = [json.loads(line) for line in tx.stdout.splitlines() if '"summary"' not in line]
    assert [r["acknowledged"] for r in sent] == [i % 2 == 1 for i in range(2 * len(TAMPER))]
    got = decoded_reports(rx, len(TAMPER))
    assert [g["name"] for g in got] == [f"{i:02d}.png" for i in range(1, 2 * len(TAMPER), 2)]
    honest = {r["name"]: r["payload_sha256"] for r in sent if r["acknowledged"]}
    assert all(g["payload_sha256"] == honest[g["name"]] and g["key_id"] == keys[0][1] for g in got)
    assert len(list(out.glob("*_recon.png"))) == len(TAMPER)
    rejected = [line for line in rx.stderr.splitlines() if "rejected frame" in line]
    assert len(rejected) == len(TAMPER), rx.stderr
    for line, (part, (_bit, reason)) in zip(rejected, TAMPER.items(), strict=True):
        assert reason in line, f"{part}: {line}"
    for r, part in zip(sent[::2], TAMPER, strict=True):
        assert r["ack_status"] in ("MALFORMED", "AUTH_FAILED", "SEALING_REQUIRED"), (part, r)
    assert summary_at_stop(rx)["images_ok"] == len(TAMPER)


def test_captured_frames_replayed_later_are_refused(tmp_path, keys, start_receiver):
    """Replays on the same connection, on a new connection, and to a restarted receiver."""
    args = ("--codec", "learned", "--no-show", "--json", "--key", str(keys[0][0]), "--out", str(tmp_path / "o"))
    rx = start_receiver(*args)
    proxy = Proxy(rx.port)
    photo(1).save(tmp_path / "p.png")
    tx = run_script(
        "sender_sdvae.py", "--codec", "learned", "--key", str(keys[0][0]), "--port", str(proxy.port),
        "--image", str(tmp_path / "p.png"), "--json", timeout=300,
    )  # fmt: skip
    assert tx.returncode == 0, tx.stderr
    assert rx.next_json()["name"] == "p.png"
    captured = bytes(proxy.streams[0])

    def replay(port: int) -> bytes:
        hello = message_bounds(captured)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(captured[:hello])  # the HELLO first: its answer comes before the hang-up
            answer = b""
            while message_bounds(answer) is None:
                answer += s.recv(65536)
            try:
                s.sendall(captured[hello:])
                s.shutdown(socket.SHUT_WR)
                while chunk := s.recv(65536):
                    answer += chunk
            except OSError:  # reset, broken pipe, or already disconnected when we shut down
                pass  # hung up on with our bytes unread: the confirmation was refused
        return answer

    # A new connection: the receiver answers the replayed HELLO with a fresh ephemeral key, so the
    # recorded sender confirmation (and the frame behind it) belongs to other keys and fails.
    answer = replay(rx.port)
    assert answer[5] == TYPE_HELLO
    deadline = time.monotonic() + 30
    while "key confirmation failed" not in rx.stderr and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "the sender could not prove it holds this key" in rx.stderr

    # The same connection: a sealed frame sent twice, and one that skips ahead.
    codec = LearnedCodec(LEARNED_MODEL_DIR, "cpu", "fp32")
    enc = codec.encode(pil_to_tensor(photo(2)))
    frames = [
        v2.ImageFrame(seq, codec.model_id, enc.encoding, enc.compression, enc.shape, (64, 64), enc.payload, f"r{seq}")
        for seq in (1, 2, 3)
    ]
    for trick in ("duplicate", "skip"):
        conn = SecureConnection(v2.Role.SENDER, key=load_key(keys[0][0]))
        with socket.create_connection(("127.0.0.1", rx.port), timeout=30) as s:

            def next_event(conn=conn, s=s):
                while (ev := conn.next_event()) is v2.NEED_DATA:
                    conn.receive_data(s.recv(65536))
                return ev

            s.sendall(conn.hello())
            assert isinstance(next_event(), Handshake)
            first = conn.send(frames[0])  # the sender's key confirmation, then the sealed frame
            s.sendall(first)
            assert next_event() == v2.Ack(1, v2.Status.OK)
            if trick == "duplicate":
                s.sendall(first[v2.PREFIX.size + 32 :])
            else:
                conn.send(frames[1])  # sealed but never sent: the next one arrives out of order
                s.sendall(conn.send(frames[2]))
            ack = next_event()
            assert ack.status == v2.Status.AUTH_FAILED and ack.seq == 0
            assert ("replayed or duplicated" if trick == "duplicate" else "out of order") in ack.message
        assert rx.next_json()["name"] == "r1"
    assert summary_at_stop(rx)["images_ok"] == 3

    # A restarted receiver with the same key.
    rx2 = start_receiver(*args)
    replay(rx2.port)
    deadline = time.monotonic() + 30
    while "key confirmation failed" not in rx2.stderr and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "the sender could not prove it holds this key" in rx2.stderr
    assert summary_at_stop(rx2)["images_ok"] == 0


@pytest.mark.parametrize("forge", ["plaintext-ok", "flip"])
def test_a_forged_acknowledgement_is_detected_by_the_sender(tmp_path, keys, start_receiver, forge):
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--key", str(keys[0][0]))
    proxy = Proxy(rx.port, forge=forge)
    photo(3).save(tmp_path / "p.png")
    tx = run_script(
        "sender_sdvae.py", "--codec", "learned", "--key", str(keys[0][0]), "--port", str(proxy.port),
        "--image", str(tmp_path / "p.png"), "--retries", "1", "--json", timeout=300,
    )  # fmt: skip
    assert tx.returncode == 1
    assert '"acknowledged": true' not in tx.stdout
    reason = "claimed success: refused" if forge == "plaintext-ok" else "failed authentication"
    errors = [line for line in tx.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and reason in errors[0] and "after 2 attempts" in errors[0]


# -- many senders, many keys -------------------------------------------------------------------------


def test_sixteen_senders_with_four_keys_at_once(tmp_path, keys, start_receiver):
    key_args = [a for path, _ in keys for a in ("--key", str(path))]
    rx = start_receiver("--codec", "learned", "--no-show", "--json", *key_args)
    codec = LearnedCodec(LEARNED_MODEL_DIR, "cpu", "fp32")
    enc = codec.encode(pil_to_tensor(photo(5)))
    results: dict[int, list[v2.Ack]] = {}

    def sender(i: int) -> None:
        key = load_key(keys[i % 4][0])
        with V2Client("127.0.0.1", rx.port, timeout=120, key=key) as client:
            results[i] = [
                client.send(
                    v2.ImageFrame(
                        seq,
                        codec.model_id,
                        enc.encoding,
                        enc.compression,
                        enc.shape,
                        (64, 64),
                        enc.payload,
                        f"s{i}-{seq}",
                    )  # fmt: skip
                )
                for seq in (1, 2)
            ]

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(a.ok for i in range(16) for a in results[i])
    got = decoded_reports(rx, 32)
    assert sorted(g["name"] for g in got) == sorted(f"s{i}-{seq}" for i in range(16) for seq in (1, 2))
    for g in got:
        sender_index = int(g["name"][1:].split("-")[0])
        assert g["key_id"] == keys[sender_index % 4][1]


# -- the sans-I/O layer ----------------------------------------------------------------------------


def session(limits: v2.Limits | None = None):
    key = Key(os.urandom(32))
    tx = SecureConnection(v2.Role.SENDER, key=key)
    rx = SecureConnection(v2.Role.RECEIVER, keyring=Keyring([key]), limits=limits)
    rx.receive_data(tx.hello())
    hs = rx.next_event()
    tx.receive_data(hs.reply)
    assert isinstance(tx.next_event(), Handshake)
    return tx, rx


FRAME = v2.ImageFrame(7, "m@0", 0, 0, (4, 2, 2), (16, 16), b"\x01" * 32, "x")


def test_sealed_round_trip_hides_the_content():
    tx, rx = session()
    data = tx.send(FRAME)
    assert b"\x01" * 8 not in data and b"m@0" not in data
    rx.receive_data(data)
    assert rx.next_event() == FRAME
    ack = rx.send(v2.Ack(7, v2.Status.OK))
    tx.receive_data(ack)
    assert tx.next_event() == v2.Ack(7, v2.Status.OK)


def test_a_tampered_key_confirmation_is_refused_by_the_sender():
    key = Key(os.urandom(32))
    for byte in (20, 60):  # receiver random, confirmation
        tx = SecureConnection(v2.Role.SENDER, key=key)
        rx = SecureConnection(v2.Role.RECEIVER, keyring=Keyring([key]))
        rx.receive_data(tx.hello())
        reply = bytearray(rx.next_event().reply)
        reply[v2.PREFIX.size + byte] ^= 1
        tx.receive_data(bytes(reply))
        with pytest.raises(SealError, match="key confirmation failed"):
            tx.next_event()


def test_every_bit_of_a_sealed_frame_matters():
    """Exhaustive over the prefix, key id and counter, and sampled over ciphertext and tag."""
    _, rx0 = session()
    tx, _ = session()
    data = tx.send(FRAME)
    bits = list(range(28 * 8)) + list(range(28 * 8, len(data) * 8, 37)) + [len(data) * 8 - 1]
    for bit in bits:
        tx2, rx2 = session()
        sealed = bytearray(tx2.send(FRAME))
        sealed[bit // 8] ^= 1 << (bit % 8)
        rx2.receive_data(bytes(sealed))
        rx2.receive_eof()
        with pytest.raises(RemoteProtocolError):
            rx2.next_event()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.booleans())
def test_fuzzed_bytes_raise_only_the_protocol_error(data, after_handshake):
    limits = v2.Limits(max_payload_bytes=1000, max_latent_elements=1000, max_image_pixels=10000,
                       max_reference_bytes=1000)  # fmt: skip
    if after_handshake:
        _, rx = session(limits)
    else:
        rx = SecureConnection(v2.Role.RECEIVER, keyring=Keyring([Key(os.urandom(32))]),
                                     limits=limits)  # fmt: skip
    rx.receive_data(data)
    rx.receive_eof()
    try:
        while rx.next_event() not in (v2.CLOSED,):
            pass
    except RemoteProtocolError:
        pass


def test_an_announced_body_past_the_limit_is_refused_before_it_is_buffered():
    limits = v2.Limits(max_payload_bytes=1000, max_latent_elements=1000, max_image_pixels=10000,
                       max_reference_bytes=1000)  # fmt: skip
    tx, rx = session(limits)
    rx.receive_data(tx.send(FRAME))  # the sender's key confirmation goes in front of its first frame
    assert rx.next_event() == FRAME
    rx.receive_data(v2.PREFIX.pack(v2.MAGIC, v2.VERSION, TYPE_SEALED, 0, 2**31))
    with pytest.raises(SealError, match="exceeds the limit"):
        rx.next_event()
    tx = SecureConnection(v2.Role.SENDER, key=Key(os.urandom(32)))
    tx.hello()
    tx.receive_data(v2.PREFIX.pack(v2.MAGIC, v2.VERSION, TYPE_HELLO, 0, 10**6))
    with pytest.raises(SealError, match="exceeds the limit"):
        tx.next_event()


def test_a_stranger_who_knows_the_key_id_gets_no_body_buffered_before_proving_the_key():
    """The key id travels in clear: a HELLO with it gets the receiver's answer, but a SEALED message
    before the sender's key confirmation is refused from its 12-byte prefix, and a wrong
    confirmation is refused too."""
    key = Key(os.urandom(32))
    stranger = SecureConnection(v2.Role.SENDER, key=Key(os.urandom(32)))
    hello = bytearray(stranger.hello())
    hello[v2.PREFIX.size : v2.PREFIX.size + 8] = key.key_id  # the id read off the wire, not the key
    for after in ("nothing", "a wrong confirmation"):
        rx = SecureConnection(v2.Role.RECEIVER, keyring=Keyring([key]))
        rx.receive_data(bytes(hello))
        assert isinstance(rx.next_event(), Handshake)
        assert not rx.authenticated
        if after == "a wrong confirmation":
            rx.receive_data(v2.PREFIX.pack(v2.MAGIC, v2.VERSION, TYPE_HELLO, 0, 32) + os.urandom(32))
            with pytest.raises(SealError, match="could not prove it holds this key"):
                rx.next_event()
            continue
        rx.receive_data(v2.PREFIX.pack(v2.MAGIC, v2.VERSION, TYPE_SEALED, 0, 90 * 2**20))
        with pytest.raises(SealError, match="before the sender's key confirmation"):
            rx.next_event()
        assert rx.buffered == v2.PREFIX.size


def test_recorded_sessions_stay_closed_to_a_later_key_thief():
    """Forward secrecy: the connection's keys need the ephemeral secrets, not only the long-term key,
    so the same HELLO answered twice gives two unrelated sessions."""
    key = Key(os.urandom(32))
    tx = SecureConnection(v2.Role.SENDER, key=key)
    hello = tx.hello()
    replies = []
    for _ in range(2):
        rx = SecureConnection(v2.Role.RECEIVER, keyring=Keyring([key]))
        rx.receive_data(hello)
        replies.append(rx.next_event().reply)
    assert replies[0][20:52] != replies[1][20:52]
    tx.receive_data(replies[0])
    assert isinstance(tx.next_event(), Handshake)
    sealed = tx.send(FRAME)
    rx.receive_data(sealed)  # the second receiver: same long-term key, other ephemeral secret
    with pytest.raises(SealError):
        rx.next_event()


def test_sealed_and_plain_payload_hashes_agree():
    """Sealing wraps the v2 frame without changing it: the opened frame is byte-identical."""
    tx, rx = session()
    rx.receive_data(tx.send(FRAME))
    opened = rx.next_event()
    assert hashlib.sha256(v2.encode_image(opened)).digest() == hashlib.sha256(v2.encode_image(FRAME)).digest()


def test_metrics_sender_seals_its_frame_too(tmp_path, keys, start_receiver, tiny_model):
    model = ["--model", str(tiny_model)]
    rx = start_receiver(*model, "--no-show", "--json", "--key", str(keys[2][0]))
    res = run_script(
        "sender_sdvae_metrics.py", *model, "--image", "temp/apple.jpeg", "--port", str(rx.port),
        "--key", str(keys[2][0]), "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    sent = json.loads(res.stdout)
    assert sent["acknowledged"] and sent["sealed"] and sent["psnr_db"] > 0
    got = rx.next_json()
    assert got["key_id"] == keys[2][1] and got["payload_sha256"] == sent["payload_sha256"]
