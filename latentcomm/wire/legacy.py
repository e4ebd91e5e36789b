"""The legacy wire format, sans-I/O: frames <-> bytes, no sockets.

Byte-compatible with the original scripts (see docs/protocol.md for the byte-level spec):

    header   struct "!IBHH": payload_len (u32), flag (u8), h (u16), w (u16)   9 bytes
    payload  payload_len bytes: gzip of the (1, 4, h, w) latent (flag 2 float16, flag 0 int8)
    original optional: the original image as float32 [0, 1], shape (3, 8h, 8w), C order
    size     optional latentcomm extension, 12 bytes: b"LCSZ" + struct "!II" (height, width)
             of the image before it was padded to a multiple of 8 (only sent for --size 0)

then the sender closes the connection. One frame per connection. What follows the payload is only
known once the peer closes: nothing, the original image, the size trailer, or both.

Usage, like h11: feed bytes with ``receive_data``, signal the end with ``receive_eof``, and pull
``next_event()`` until it returns a frame (``NEED_DATA`` until then). Anything malformed raises
``RemoteProtocolError``; limits are checked before anything is allocated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from latentcomm.errors import LocalProtocolError, RemoteProtocolError
from latentcomm.wire.encodings import FLAG_FLOAT16, FLAG_INT8

HEADER = struct.Struct("!IBHH")
SIZE_TRAILER_MAGIC = b"LCSZ"
SIZE_TRAILER = struct.Struct("!4sII")
LATENT_CHANNELS = 4
#: Pixels per latent cell along each axis (the autoencoder's down-sampling).
STRIDE = 8


class _Sentinel(Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = _Sentinel.NEED_DATA


@dataclass(frozen=True)
class Limits:
    """What a receiver accepts; checked against the header before any buffer grows.

    Defaults allow a 4096x4096 image (512x512 latent) and a 64 MiB compressed payload.
    """

    max_payload_bytes: int = 64 * 1024 * 1024
    max_latent_elements: int = LATENT_CHANNELS * 512 * 512

    def __post_init__(self) -> None:
        if self.max_payload_bytes <= 0 or self.max_latent_elements <= 0:
            raise ValueError("limits must be positive")


@dataclass(frozen=True)
class LegacyFrame:
    """One legacy frame: latent header fields, gzip payload, and what the sender appended."""

    flag: int
    height: int  # latent height (image height / 8)
    width: int  # latent width
    payload: bytes = field(repr=False)
    original: bytes | None = field(default=None, repr=False)  # float32 (3, 8h, 8w) bytes
    original_size: tuple[int, int] | None = None  # (H, W) before padding, from the size trailer

    @property
    def image_size(self) -> tuple[int, int]:
        """The size of the picture the frame describes (after cropping any padding)."""
        return self.original_size or (self.height * STRIDE, self.width * STRIDE)

    def original_array(self) -> np.ndarray | None:
        """The appended original image as float32 (3, 8h, 8w), or None if none was sent."""
        if self.original is None:
            return None
        arr = np.frombuffer(self.original, dtype=np.float32).reshape(3, self.height * STRIDE, self.width * STRIDE)
        if not np.isfinite(arr).all():
            raise RemoteProtocolError("original image contains NaN or inf values")
        return arr


def original_image_size(height: int, width: int) -> int:
    """Bytes of the float32 original image that may follow a payload for an h x w latent."""
    return 3 * (height * STRIDE) * (width * STRIDE) * 4


def _check_geometry(flag: int, height: int, width: int, limits: Limits) -> None:
    if flag not in (FLAG_FLOAT16, FLAG_INT8):
        raise RemoteProtocolError(f"unknown latent flag {flag} (expected 0 = int8 or 2 = float16)")
    if height == 0 or width == 0:
        raise RemoteProtocolError(f"empty latent {height}x{width}")
    if LATENT_CHANNELS * height * width > limits.max_latent_elements:
        raise RemoteProtocolError(
            f"latent 4x{height}x{width} exceeds the limit of {limits.max_latent_elements} elements"
        )


def frame_to_bytes(frame: LegacyFrame) -> bytes:
    """Serialize a frame exactly as the original sender would (plus the optional size trailer)."""
    if not (0 <= len(frame.payload) < 2**32):
        raise LocalProtocolError("payload too large for a legacy header")
    if not (0 < frame.height < 2**16 and 0 < frame.width < 2**16):
        raise LocalProtocolError(f"latent {frame.height}x{frame.width} does not fit the legacy header")
    if frame.flag not in (FLAG_FLOAT16, FLAG_INT8):
        raise LocalProtocolError(f"unknown latent flag {frame.flag}")
    parts = [HEADER.pack(len(frame.payload), frame.flag, frame.height, frame.width), frame.payload]
    if frame.original is not None:
        if len(frame.original) != original_image_size(frame.height, frame.width):
            raise LocalProtocolError("original image bytes don't match the latent size")
        parts.append(frame.original)
    if frame.original_size is not None:
        oh, ow = frame.original_size
        if not (
            frame.height * STRIDE - STRIDE < oh <= frame.height * STRIDE
            and frame.width * STRIDE - STRIDE < ow <= frame.width * STRIDE
        ):
            raise LocalProtocolError(f"original size {oh}x{ow} is not the latent's size minus padding")
        parts.append(SIZE_TRAILER.pack(SIZE_TRAILER_MAGIC, oh, ow))
    return b"".join(parts)


class LegacyReceiver:
    """Sans-I/O parser for one legacy frame (one connection).

    ``buffered`` never exceeds header + payload limit + original image + trailer, all of which
    are bounded by ``Limits`` before they are accepted.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._eof = False
        self._header: tuple[int, int, int, int] | None = None
        self._done = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def started(self) -> bool:
        """Has any byte arrived? (An empty connection is a port probe, not an error.)"""
        return bool(self._buf) or self._header is not None

    @property
    def header(self) -> tuple[int, int, int, int] | None:
        """(payload_len, flag, h, w) once the header has arrived."""
        return self._header

    def _tail_limit(self) -> int:
        assert self._header is not None
        payload_len, _, h, w = self._header
        return HEADER.size + payload_len + original_image_size(h, w) + SIZE_TRAILER.size

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer. Raises RemoteProtocolError as soon as they can't be valid."""
        if self._eof or self._done:
            if data:
                raise RemoteProtocolError("data after the end of the frame")
            return
        self._buf += data
        if self._header is None and len(self._buf) >= HEADER.size:
            payload_len, flag, h, w = HEADER.unpack_from(self._buf)
            _check_geometry(flag, h, w, self.limits)
            if payload_len > self.limits.max_payload_bytes:
                raise RemoteProtocolError(
                    f"payload of {payload_len} bytes exceeds the limit of {self.limits.max_payload_bytes}"
                )
            if payload_len == 0:
                raise RemoteProtocolError("empty payload")
            self._header = (payload_len, flag, h, w)
        if self._header is not None and len(self._buf) > self._tail_limit():
            raise RemoteProtocolError("more bytes after the payload than an original image and size trailer")

    def receive_eof(self) -> None:
        """The peer closed its side (or went idle after a complete frame)."""
        self._eof = True

    def next_event(self) -> LegacyFrame | _Sentinel:
        """The frame once complete (which needs EOF), else NEED_DATA; RemoteProtocolError if invalid."""
        if self._done:
            raise LocalProtocolError("frame already returned")
        if not self._eof:
            return NEED_DATA
        if self._header is None:
            raise RemoteProtocolError(f"connection closed after {len(self._buf)} of {HEADER.size} header bytes")
        payload_len, flag, h, w = self._header
        end = HEADER.size + payload_len
        if len(self._buf) < end:
            raise RemoteProtocolError(
                f"connection closed after {len(self._buf) - HEADER.size} of {payload_len} payload bytes"
            )
        payload = bytes(self._buf[HEADER.size : end])
        rest = memoryview(self._buf)[end:]
        img_len = original_image_size(h, w)
        original: bytes | None = None
        size: tuple[int, int] | None = None
        if len(rest) in (img_len, img_len + SIZE_TRAILER.size):
            original = bytes(rest[:img_len])
            rest = rest[img_len:]
        if len(rest) == SIZE_TRAILER.size and bytes(rest[:4]) == SIZE_TRAILER_MAGIC:
            _, oh, ow = SIZE_TRAILER.unpack(rest)
            if not (h * STRIDE - STRIDE < oh <= h * STRIDE and w * STRIDE - STRIDE < ow <= w * STRIDE):
                raise RemoteProtocolError(f"size trailer {oh}x{ow} does not match a {h}x{w} latent")
            size = (oh, ow)
        elif len(rest):
            raise RemoteProtocolError(
                f"connection closed after {len(rest)} bytes following the payload; expected 0 or {img_len} "
                "(the original image)"
            )
        self._done = True
        self._buf = bytearray()
        return LegacyFrame(flag, h, w, payload, original, size)
