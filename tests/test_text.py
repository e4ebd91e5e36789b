"""Text beside the images: a caption or a sensor reading rides in the v2 frame, sealed with it.

Real sender and receiver processes over loopback; the parser on its own for what a sender can't send.
"""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from PIL import Image

from latentcomm.wire import v2
from latentcomm.wire.keys import Key, Keyring
from latentcomm.wire.sealed import SecureConnection
from tests.conftest import run_script

CAPTION = "kitchen cam 3 \u2013 21.5 \u00b0C, door open"


def test_text_round_trip_is_saved_printed_and_reported(tmp_path, start_receiver):
    out = tmp_path / "out"
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--out", str(out))
    tx = run_script("sender_sdvae.py", "--codec", "learned", "--port", str(rx.port), "--text", CAPTION, "--json")
    assert tx.returncode == 0, tx.stderr
    assert json.loads(tx.stdout.splitlines()[0])["text"] == CAPTION
    assert rx.next_json()["text"] == CAPTION
    saved = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert [s["text"] for s in saved] == [CAPTION]


def test_a_jsonl_file_maps_images_to_texts_and_the_limit_refuses_only_the_long_one(tmp_path, start_receiver):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(folder / f"{i}.png")
    mapping = tmp_path / "texts.jsonl"
    reading = json.dumps({"temperature_c": 21.5, "door": "open"})
    mapping.write_text(
        json.dumps({"image": "0.png", "text": "x" * 101})
        + "\n"
        + json.dumps({"image": "1.png", "text": reading})
        + "\n"
    )
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--max-text", "100")
    tx = run_script(
        "sender_sdvae.py", "--codec", "learned", "--port", str(rx.port), "--image", str(folder), "--text-file",
        str(mapping), "--json", "--retries", "0",
    )  # fmt: skip
    assert tx.returncode == 1
    sent = {r["name"]: r for r in map(json.loads, tx.stdout.splitlines()) if "name" in r}
    assert not sent["0.png"]["acknowledged"]
    assert "text of 101 bytes exceeds the receiver's limit of 100 (--max-text)" in sent["0.png"]["ack_message"]
    assert sent["1.png"]["acknowledged"] and sent["2.png"]["acknowledged"]
    got = [rx.next_json(), rx.next_json()]
    assert [(g["name"], g.get("text")) for g in got] == [("1.png", reading), ("2.png", None)]
    assert "text of 101 bytes exceeds" in rx.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"caf\xe9\n", "is not valid UTF-8 (byte 3)"), (b'{"image": "a.png"}\n', "line 1: expected")],
)
def test_bad_text_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / ("t.jsonl" if content.startswith(b"{") else "t.txt")
    path.write_bytes(content)
    res = run_script("sender_sdvae.py", "--codec", "learned", "--port", "1", "--text-file", str(path))
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


def test_text_needs_v2():
    res = run_script("sender_sdvae.py", "--protocol", "legacy", "--text", "hi")
    assert res.returncode == 2 and "legacy frames can't carry a text" in res.stderr


FRAME = v2.ImageFrame(3, "m@0", 0, 0, (4, 2, 2), (16, 16), b"\x01" * 32, "x", text=CAPTION)


def test_text_in_the_frame_round_trips_and_is_under_the_checksum():
    data = v2.encode_image(FRAME)
    conn = v2.Connection(v2.Role.RECEIVER)
    conn.receive_data(data)
    assert conn.next_event() == FRAME
    flipped = bytearray(data)
    flipped[-1] ^= 1  # the text's last byte
    conn = v2.Connection(v2.Role.RECEIVER)
    conn.receive_data(bytes(flipped))
    with pytest.raises(v2.FrameRejected, match="checksum"):
        conn.next_event()


def test_invalid_utf8_text_with_a_valid_checksum_is_refused_with_the_reason():
    data = bytearray(v2.encode_image(v2.ImageFrame(4, "m@0", 0, 0, (4, 2, 2), (16, 16), b"\x01" * 32, "x", text="ab")))
    data[-2:] = b"\xff\xfe"
    body = bytes(data[v2.PREFIX.size :])
    fields = list(v2.IMAGE_HEADER.unpack_from(body))
    crc_region = body[v2.IMAGE_HEADER.size + 4 + 3 + 1 :]  # model "m@0", name "x": payload then text
    fields[-1] = zlib.crc32(crc_region) & 0xFFFFFFFF
    data[v2.PREFIX.size : v2.PREFIX.size + v2.IMAGE_HEADER.size] = v2.IMAGE_HEADER.pack(*fields)
    conn = v2.Connection(v2.Role.RECEIVER)
    conn.receive_data(bytes(data))
    with pytest.raises(v2.FrameRejected, match="text is not UTF-8") as err:
        conn.next_event()
    assert err.value.seq == 4 and err.value.status == v2.Status.MALFORMED


def test_unknown_prefix_flags_are_refused():
    data = bytearray(v2.encode_image(FRAME))
    struct.pack_into("!H", data, 6, 0x0003)
    conn = v2.Connection(v2.Role.RECEIVER)
    conn.receive_data(bytes(data))
    with pytest.raises(v2.RemoteProtocolError, match="unknown prefix flags"):
        conn.next_event()


def test_text_is_sealed_with_the_frame():
    import os

    key = Key(os.urandom(32))
    tx = SecureConnection(v2.Role.SENDER, key=key)
    rx = SecureConnection(v2.Role.RECEIVER, keyring=Keyring([key]))
    rx.receive_data(tx.hello())
    tx.receive_data(rx.next_event().reply)
    tx.next_event()
    sealed = tx.send(FRAME)
    assert CAPTION.encode() not in sealed and b"kitchen" not in sealed
    rx.receive_data(sealed)
    assert rx.next_event().text == CAPTION


def test_a_stream_carries_texts_by_frame_name(tmp_path, start_receiver):
    from tests.videos import make_video

    video = make_video(tmp_path / "cam.mp4", frames=2, fps=1, motion="static")
    mapping = tmp_path / "t.jsonl"
    mapping.write_text(json.dumps({"image": "cam-000001", "text": "second frame"}) + "\n")
    rx = start_receiver("--codec", "learned", "--no-show", "--json")
    tx = run_script(
        "sender_sdvae.py", "--codec", "learned", "--port", str(rx.port), "--video", str(video), "--text-file",
        str(mapping), "--json", timeout=300,
    )  # fmt: skip
    assert tx.returncode == 0, tx.stderr
    got = [rx.next_json(), rx.next_json()]
    assert [(g["name"], g.get("text")) for g in got] == [("cam-000000", None), ("cam-000001", "second frame")]
