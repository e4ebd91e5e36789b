"""v2 frames without sockets: round trips, limits, rejections that keep the stream in sync, fuzzing."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentcomm.errors import LocalProtocolError, RemoteProtocolError
from latentcomm.wire import v2
from latentcomm.wire.encodings import (
    COMP_GZIP,
    COMP_NONE,
    COMP_ZSTD,
    ENC_BFLOAT16,
    ENC_FLOAT16,
    ENC_INT8_LEGACY,
    ENC_UINT8_AFFINE,
    bounded_decompress,
    compress,
    v2_dequantize,
    v2_quantize,
    v2_raw_size,
)


def make_frame(seq=1, encoding=ENC_FLOAT16, compression=COMP_ZSTD, ref=b"\x89PNG fake", name="cam0/001.png"):
    latent = torch.linspace(-4, 4, 4 * 3 * 5).reshape(1, 4, 3, 5)
    raw, params = v2_quantize(latent, encoding)
    return v2.ImageFrame(
        seq,
        "latentcomm-kl-f8@0011223344556677",
        encoding,
        compression,
        (4, 3, 5),
        (22, 40),
        compress(raw, compression),
        name,
        tuple(params),
        ref,
    )


def feed(conn: v2.Connection, data: bytes, chunk: int) -> list:
    events = []
    for i in range(0, len(data), chunk):
        conn.receive_data(data[i : i + chunk])
        while (ev := conn.next_event()) is not v2.NEED_DATA:
            events.append(ev)
    return events


@pytest.mark.parametrize("encoding", [ENC_FLOAT16, ENC_BFLOAT16, ENC_INT8_LEGACY, ENC_UINT8_AFFINE])
@pytest.mark.parametrize("compression", [COMP_NONE, COMP_GZIP, COMP_ZSTD])
def test_round_trip_many_frames_any_chunking(encoding, compression):
    frames = [make_frame(seq, encoding, compression, ref=None if seq % 2 else b"ref") for seq in range(1, 6)]
    data = b"".join(v2.encode_image(f) for f in frames)
    for chunk in (1, 13, len(data)):
        conn = v2.Connection(v2.Role.RECEIVER)
        assert feed(conn, data, chunk) == frames
        conn.receive_eof()
        assert conn.next_event() is v2.CLOSED


@pytest.mark.parametrize("encoding, tol", [(ENC_FLOAT16, 2e-3), (ENC_BFLOAT16, 2e-2), (ENC_UINT8_AFFINE, 8 / 255)])
def test_latent_encodings_round_trip(encoding, tol):
    latent = torch.randn(1, 4, 6, 7) * 5
    raw, params = v2_quantize(latent, encoding)
    assert len(raw) == v2_raw_size(encoding, 4, 6, 7)
    back = v2_dequantize(raw, encoding, (4, 6, 7), params)
    assert torch.allclose(back, latent, atol=tol * 5, rtol=1e-2)


def test_uint8_keeps_sd_scale_latents_that_legacy_int8_clips():
    latent = torch.randn(1, 4, 16, 16) * 5  # SD VAE-like spread
    raw, params = v2_quantize(latent, ENC_UINT8_AFFINE)
    err_u8 = (v2_dequantize(raw, ENC_UINT8_AFFINE, (4, 16, 16), params) - latent).abs().mean()
    raw8, _ = v2_quantize(latent, ENC_INT8_LEGACY)
    err_i8 = (v2_dequantize(raw8, ENC_INT8_LEGACY, (4, 16, 16), []) - latent).abs().mean()
    assert err_u8 < 0.05 < err_i8


def test_acks_round_trip_and_roles_are_enforced():
    rx, tx = v2.Connection(v2.Role.RECEIVER), v2.Connection(v2.Role.SENDER)
    data = rx.send(v2.Ack(7, v2.Status.UNKNOWN_MODEL, "frame is for model 'x'"))
    assert feed(tx, data, 3) == [v2.Ack(7, v2.Status.UNKNOWN_MODEL, "frame is for model 'x'")]
    with pytest.raises(LocalProtocolError):
        rx.send(make_frame())
    with pytest.raises(RemoteProtocolError, match="unexpected message type"):
        feed(v2.Connection(v2.Role.SENDER), v2.encode_image(make_frame()), 100)


def test_sniff_tells_legacy_from_v2():
    assert v2.sniff(b"") is None and v2.sniff(b"LC") is None
    assert v2.sniff(b"LCV2....") == "v2"
    assert v2.sniff(struct.pack("!IBHH", 100, 2, 32, 32)) == "legacy"
    assert v2.sniff(b"\x00") == "legacy"


def test_checksum_error_keeps_the_stream_in_sync():
    good, bad = v2.encode_image(make_frame(1)), bytearray(v2.encode_image(make_frame(2)))
    bad[-1] ^= 0xFF
    conn = v2.Connection(v2.Role.RECEIVER)
    conn.receive_data(bytes(bad) + good)
    with pytest.raises(v2.FrameRejected) as exc:
        conn.next_event()
    assert exc.value.seq == 2 and exc.value.status == v2.Status.CHECKSUM
    assert conn.next_event().seq == 1


def test_limits_are_checked_from_the_header():
    limits = v2.Limits(max_payload_bytes=1000, max_latent_elements=4 * 8 * 8, max_image_pixels=64 * 64)
    huge = v2.PREFIX.pack(v2.MAGIC, 2, v2.TYPE_IMAGE, 0, 0xFFFFFFFF)
    conn = v2.Connection(v2.Role.RECEIVER, limits)
    conn.receive_data(huge)
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        conn.next_event()
    big_latent = v2.ImageFrame(1, "m", ENC_FLOAT16, COMP_NONE, (4, 9, 9), (72, 72), b"x" * 10)
    conn = v2.Connection(v2.Role.RECEIVER, limits)
    conn.receive_data(v2.encode_image(big_latent)[:60])  # header only: refused before the body arrives
    with pytest.raises(RemoteProtocolError, match="latent 4x9x9 exceeds"):
        conn.next_event()


def test_zstd_and_gzip_bombs_are_bounded():
    zeros = b"\0" * (30 * 1024 * 1024)
    for comp, blob in ((COMP_ZSTD, compress(zeros, COMP_ZSTD)), (COMP_GZIP, gzip.compress(zeros))):
        assert len(blob) < 100_000
        with pytest.raises(RemoteProtocolError, match="inflates past"):
            bounded_decompress(blob, comp, 4096)
    with pytest.raises(RemoteProtocolError, match="not valid zstd"):
        bounded_decompress(b"nonsense", COMP_ZSTD, 10)


def test_eof_inside_a_message_is_an_error():
    data = v2.encode_image(make_frame())
    conn = v2.Connection(v2.Role.RECEIVER)
    conn.receive_data(data[:-5])
    conn.receive_eof()
    with pytest.raises(RemoteProtocolError, match="closed after"):
        conn.next_event()


def test_buffer_is_consumed_in_linear_time():
    """Thousands of small frames fed byte-chunked: the buffer is compacted, never re-copied per frame."""
    frame = v2.encode_image(make_frame(ref=None))
    conn = v2.Connection(v2.Role.RECEIVER)
    events = feed(conn, frame * 2000, 4096)
    assert len(events) == 2000 and conn.buffered == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=128))
def test_fuzz_arbitrary_bytes(data, chunk):
    limits = v2.Limits(max_payload_bytes=2048, max_latent_elements=256, max_image_pixels=4096, max_reference_bytes=512)
    conn = v2.Connection(v2.Role.RECEIVER, limits)
    try:
        feed(conn, v2.MAGIC + data, chunk)
        conn.receive_eof()
        conn.next_event()
    except RemoteProtocolError:
        pass
    assert conn.buffered <= v2.PREFIX.size + limits.max_body + 128


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=255))
def test_fuzz_bit_flips_in_a_valid_frame(pos, value):
    data = bytearray(v2.encode_image(make_frame(encoding=ENC_UINT8_AFFINE)))
    data[pos % len(data)] = value
    conn = v2.Connection(v2.Role.RECEIVER)
    try:
        events = feed(conn, bytes(data), 64)
        conn.receive_eof()
        conn.next_event()
    except RemoteProtocolError:
        return
    for ev in events:
        c, h, w = ev.shape
        try:
            raw = bounded_decompress(ev.payload, ev.compression, v2_raw_size(ev.encoding, c, h, w))
            v2_dequantize(raw, ev.encoding, ev.shape, list(ev.params))
        except RemoteProtocolError:
            pass
        else:
            assert np.isfinite(v2_dequantize(raw, ev.encoding, ev.shape, list(ev.params)).numpy()).all()


# -- INTER: an inter frame that inherits its header from the connection's last IMAGE -----------------


def video_frame(seq: int, name: str = "", text: str | None = None, size=(96, 160)) -> v2.ImageFrame:
    from latentcomm.wire.encodings import ENC_VIDEO

    return v2.ImageFrame(seq, "h264", ENC_VIDEO, COMP_NONE, (3, *size), size, bytes([seq % 256]) * 300, name, (),
                         None, text)  # fmt: skip


def test_inter_frames_go_only_once_the_receiver_says_it_reads_them_and_arrive_whole():
    tx, rx = v2.Connection(v2.Role.SENDER), v2.Connection(v2.Role.RECEIVER)
    frames = [video_frame(1, "cam-000000"), video_frame(2), video_frame(3, text="gate 7")]
    before = [tx.send(f) for f in frames]
    assert all(b[5] == v2.TYPE_IMAGE for b in before)  # no word from the receiver yet: whole IMAGEs
    ack = rx.send(v2.Ack(1, v2.Status.OK, f"scaled {v2.COMPACT}"))
    tx.receive_data(ack)
    assert tx.next_event().ok and tx.compact
    after = [tx.send(f) for f in frames]
    assert [b[5] for b in after] == [v2.TYPE_IMAGE, v2.TYPE_INTER, v2.TYPE_INTER]  # a named frame goes whole
    saved = v2.IMAGE_HEADER.size + len("h264") - v2.INTER_HEADER.size  # 20 bytes of framing instead of 52
    assert len(after[1]) == len(before[1]) - saved == v2.PREFIX.size + v2.INTER_HEADER.size + 300
    assert feed(rx, b"".join(before + after), 7) == frames + frames  # expanded to the very frames sent
    # Between frames a connection keeps the header an INTER inherits, never a payload (memory per connection).
    assert rx.base.payload == b"" and tx.base.payload == b"" and rx.base.shape == (3, 96, 160)


def test_an_inter_frame_without_its_image_is_refused_and_the_stream_stays_in_sync():
    tx = v2.Connection(v2.Role.SENDER)
    tx.compact = True
    whole, inter, other = tx.send(video_frame(1, "cam-000000")), tx.send(video_frame(2)), tx.send(video_frame(3))
    rx = v2.Connection(v2.Role.RECEIVER)
    rx.receive_data(inter + whole + other)
    with pytest.raises(v2.FrameRejected, match="before any image frame") as exc:
        rx.next_event()
    assert exc.value.status == v2.Status.MALFORMED and exc.value.seq == 2
    assert rx.next_event().seq == 1 and rx.next_event() == video_frame(3)
    # A refused IMAGE leaves nothing to inherit: the INTERs after it are refused too, not guessed.
    bad = bytearray(tx.send(video_frame(4, "cam-000004")))
    bad[-1] ^= 0xFF
    rx.receive_data(bytes(bad) + tx.send(video_frame(5)))
    for seq, status in ((4, v2.Status.CHECKSUM), (5, v2.Status.MALFORMED)):
        with pytest.raises(v2.FrameRejected) as exc:
            rx.next_event()
        assert (exc.value.seq, exc.value.status) == (seq, status)


def test_a_refusal_makes_the_senders_next_frame_whole_and_a_new_size_goes_whole():
    tx, rx = v2.Connection(v2.Role.SENDER), v2.Connection(v2.Role.RECEIVER)
    tx.compact = True
    tx.send(video_frame(1, "cam-000000"))
    assert tx.send(video_frame(2))[5] == v2.TYPE_INTER
    tx.receive_data(rx.send(v2.Ack(2, v2.Status.KEY_FRAME_NEEDED, "frame 1 is missing")))
    assert not tx.next_event().ok
    assert tx.send(video_frame(3))[5] == v2.TYPE_IMAGE  # whatever the receiver lacks, this one it can read
    assert tx.send(video_frame(4, size=(48, 80)))[5] == v2.TYPE_IMAGE  # a thin link's smaller picture


def test_inter_frames_are_held_to_the_limits_from_their_header():
    tx = v2.Connection(v2.Role.SENDER)
    tx.compact = True
    tx.send(video_frame(1, "cam-000000"))
    for frame, limits, words in (
        (video_frame(2), v2.Limits(max_payload_bytes=100), "payload of 300 bytes exceeds the limit of 100"),
        (video_frame(3, text="x" * 50), v2.Limits(max_text_bytes=10), r"text of 50 bytes .* 10 \(--max-text\)"),
        (video_frame(4), v2.Limits(max_payload_bytes=100, max_text_bytes=10), "message body of 308 bytes exceeds"),
    ):
        rx = v2.Connection(v2.Role.RECEIVER, limits)
        rx.base = video_frame(1)
        rx.receive_data(tx.send(frame)[: v2.PREFIX.size + v2.INTER_HEADER.size + v2.TEXT_LEN.size])  # header only
        with pytest.raises(RemoteProtocolError, match=words):
            rx.next_event()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=1), st.integers(min_value=1, max_value=64))
def test_fuzz_inter_bodies(body, flags, chunk):
    limits = v2.Limits(max_payload_bytes=256, max_text_bytes=64)
    rx = v2.Connection(v2.Role.RECEIVER, limits)
    rx.base = video_frame(1)
    message = v2.PREFIX.pack(v2.MAGIC, v2.VERSION, v2.TYPE_INTER, flags, len(body)) + body
    try:
        events = feed(rx, message, chunk)
    except RemoteProtocolError:
        return
    for ev in events:  # whatever parses is the base's header with a payload within the limit
        assert ev.shape == (3, 96, 160) and len(ev.payload) <= 256 and ev.name == ""
