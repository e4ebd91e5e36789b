"""The sans-I/O protocol and latent codec, driven with byte strings (no sockets)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentcomm.errors import LocalProtocolError, RemoteProtocolError
from latentcomm.wire.encodings import FLAG_FLOAT16, FLAG_INT8, bounded_gunzip, decode_latent, encode_latent
from latentcomm.wire.legacy import NEED_DATA, LegacyFrame, LegacyReceiver, Limits, frame_to_bytes, original_image_size


def parse(data: bytes, chunk: int = 7, limits: Limits | None = None):
    r = LegacyReceiver(limits)
    for i in range(0, len(data), chunk):
        r.receive_data(data[i : i + chunk])
        assert r.next_event() is NEED_DATA  # a legacy frame is only complete at EOF
    r.receive_eof()
    return r.next_event()


def sample_frame(with_original: bool, size: tuple[int, int] | None = None) -> LegacyFrame:
    latent = torch.linspace(-3, 3, 4 * 3 * 5).reshape(1, 4, 3, 5)
    enc = encode_latent(latent, FLAG_FLOAT16)
    original = np.linspace(0, 1, 3 * 24 * 40, dtype=np.float32).tobytes() if with_original else None
    return LegacyFrame(enc.flag, enc.height, enc.width, enc.payload, original, size)


@pytest.mark.parametrize("with_original", [True, False])
@pytest.mark.parametrize("size", [None, (17, 38)])
@pytest.mark.parametrize("chunk", [1, 9, 1000])
def test_frame_round_trip(with_original, size, chunk):
    frame = sample_frame(with_original, size)
    assert parse(frame_to_bytes(frame), chunk) == frame


def test_original_scripts_bytes_parse():
    latent = np.random.default_rng(0).standard_normal((1, 4, 6, 7)).astype(np.float32)
    payload = gzip.compress(latent.astype(np.float16).tobytes())
    image = np.random.default_rng(1).random((3, 48, 56), dtype=np.float32)
    data = struct.pack("!IBHH", len(payload), 2, 6, 7) + payload + image.tobytes()
    frame = parse(data)
    assert (frame.flag, frame.height, frame.width, frame.image_size) == (2, 6, 7, (48, 56))
    np.testing.assert_array_equal(frame.original_array(), image)
    z = decode_latent(frame.flag, 4, 6, 7, frame.payload)
    np.testing.assert_array_equal(z.numpy(), latent.astype(np.float16).astype(np.float32))


def test_huge_length_is_rejected_from_the_header_alone():
    r = LegacyReceiver(Limits(max_payload_bytes=1 << 20))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        r.receive_data(struct.pack("!IBHH", 0xFFFFFFFF, 2, 32, 32))
    r = LegacyReceiver(Limits(max_latent_elements=4 * 64 * 64))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        r.receive_data(struct.pack("!IBHH", 100, 2, 65535, 65535))


@pytest.mark.parametrize(
    "header, match",
    [
        (struct.pack("!IBHH", 10, 7, 4, 4), "unknown latent flag"),
        (struct.pack("!IBHH", 10, 2, 0, 4), "empty latent"),
        (struct.pack("!IBHH", 0, 2, 4, 4), "empty payload"),
    ],
)
def test_invalid_headers(header, match):
    with pytest.raises(RemoteProtocolError, match=match):
        LegacyReceiver().receive_data(header)


def test_truncations_are_remote_errors():
    data = frame_to_bytes(sample_frame(True))
    for cut in (0, 5, 9, 20, len(data) - 1, len(data) - 1000):
        if cut == 0:
            continue
        with pytest.raises(RemoteProtocolError, match="closed after"):
            parse(data[:cut])


def test_trailing_garbage_is_rejected():
    data = frame_to_bytes(sample_frame(True))
    with pytest.raises(RemoteProtocolError):
        parse(data + b"x" * 13)


def test_bad_size_trailer():
    frame = sample_frame(False)
    data = frame_to_bytes(frame) + struct.pack("!4sII", b"LCSZ", 5, 40)
    with pytest.raises(RemoteProtocolError, match="size trailer"):
        parse(data)
    with pytest.raises(LocalProtocolError):
        frame_to_bytes(LegacyFrame(frame.flag, frame.height, frame.width, frame.payload, None, (5, 40)))


def test_gzip_bomb_is_bounded():
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))
    assert len(bomb) < 100_000
    with pytest.raises(RemoteProtocolError, match="inflates past"):
        bounded_gunzip(bomb, 4 * 32 * 32 * 2)


def test_payload_size_mismatch_and_garbage():
    good = gzip.compress(np.zeros((1, 4, 8, 8), np.float16).tobytes())
    with pytest.raises(RemoteProtocolError, match="needs"):
        decode_latent(FLAG_FLOAT16, 4, 8, 9, good)
    with pytest.raises(RemoteProtocolError, match="not valid gzip"):
        decode_latent(FLAG_FLOAT16, 4, 8, 8, b"definitely not gzip")
    with pytest.raises(RemoteProtocolError, match="truncated"):
        decode_latent(FLAG_FLOAT16, 4, 8, 8, good[:-12])
    nan = gzip.compress(np.full((1, 4, 2, 2), np.nan, np.float16).tobytes())
    with pytest.raises(RemoteProtocolError, match="NaN"):
        decode_latent(FLAG_FLOAT16, 4, 2, 2, nan)


def test_int8_codec_matches_the_original_rule_and_reports_clipping():
    latent = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.004, 0.5, 1.0, 3.0]).reshape(1, 4, 1, 2)
    enc = encode_latent(latent, FLAG_INT8)
    assert enc.clipped_fraction == pytest.approx(2 / 8)
    raw = gzip.decompress(enc.payload)
    assert list(np.frombuffer(raw, np.int8)) == [-127, -127, -64, 0, 1, 64, 127, 127]
    back = decode_latent(FLAG_INT8, 4, 1, 2, enc.payload)
    np.testing.assert_allclose(back.flatten().numpy(), np.array([-127, -127, -64, 0, 1, 64, 127, 127]) / 127)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=64))
def test_fuzz_arbitrary_bytes_only_raise_protocol_errors(data, chunk):
    limits = Limits(max_payload_bytes=4096, max_latent_elements=4 * 16 * 16)
    r = LegacyReceiver(limits)
    try:
        for i in range(0, len(data), chunk):
            r.receive_data(data[i : i + chunk])
            bound = 9 + 4096 + original_image_size(16, 16) + 12
            assert r.buffered <= bound
        r.receive_eof()
        event = r.next_event()
    except RemoteProtocolError:
        return
    assert isinstance(event, LegacyFrame)
    try:
        decode_latent(event.flag, 4, event.height, event.width, event.payload)
        event.original_array()
    except RemoteProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=600))
def test_fuzz_valid_header_with_random_tail(tail):
    payload = gzip.compress(np.zeros((1, 4, 2, 2), np.float16).tobytes())
    data = struct.pack("!IBHH", len(payload), 2, 2, 2) + payload + tail
    try:
        frame = parse(data, chunk=50)
    except RemoteProtocolError:
        return
    # The only tails that parse are the ones the spec allows.
    assert len(tail) in (original_image_size(2, 2), 12, original_image_size(2, 2) + 12)
    assert frame.payload == payload
