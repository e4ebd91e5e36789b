"""Versioned frames (v2), sans-I/O: many frames per connection, each acknowledged.

The byte layout is specified in docs/protocol.md. In short, every message is

    prefix  "!4sBBHI": magic b"LCV2", version 2, type (1 IMAGE, 2 ACK, 7 INTER), flags, body_len

followed by ``body_len`` bytes of body. The magic read as a legacy header means a 1.28 GB payload,
which no receiver accepts, so a receiver tells v2 from legacy on one port by the first four bytes.

Use it like h11: one ``Connection`` per TCP connection and role. Feed bytes with ``receive_data``,
pull events with ``next_event`` (``NEED_DATA`` until a whole message is there, ``CLOSED`` after a
clean EOF), and turn events into bytes with ``send``. Two kinds of errors:

- ``RemoteProtocolError``: the byte stream itself is broken (bad magic, absurd length, EOF inside a
  message). The connection cannot continue: answer if you can, then close.
- ``FrameRejected`` (a subclass): a well-delimited IMAGE whose content is bad (checksum, sizes).
  The stream is still in sync: acknowledge with the error code and keep reading.

INTER is an IMAGE that says only what changes from frame to frame (sequence number, checksum,
payload, text) and inherits the rest (model, encoding, compression, shapes, parameters) from the
last IMAGE on the connection: a live video's inter frame in 20 bytes of framing instead of about 51.
A sender uses it only once the receiver has said it reads it (``COMPACT`` in an acknowledgement;
the transport sets :attr:`Connection.compact`), so an older receiver never gets one; each message of
a broker stands alone and is always a whole IMAGE (a late viewer must be able to read it).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum

from latentcomm.errors import LocalProtocolError, RemoteProtocolError
from latentcomm.wire.encodings import (
    COMP_GZIP,
    COMP_NONE,
    COMP_ZSTD,
    ENC_LEARNED,
    ENC_UINT8_AFFINE,
    ENC_VIDEO,
    check_encoding,
)

MAGIC = b"LCV2"
VERSION = 2
PREFIX = struct.Struct("!4sBBHI")
IMAGE_HEADER = struct.Struct("!IBBHHHIIHHIII")
ACK_HEADER = struct.Struct("!IBH")
PARAM = struct.Struct("!ff")
TEXT_LEN = struct.Struct("!I")
TYPE_IMAGE = 1
TYPE_ACK = 2
#: (3 HELLO, 4 SEALED: latentcomm.wire.sealed; 5, 6: latentcomm.wire.broker_seal)
TYPE_INTER = 7
#: INTER's fixed body: sequence number, checksum (then the text's length with FLAG_TEXT).
INTER_HEADER = struct.Struct("!II")
#: The word in an acknowledgement by which a receiver says it reads INTER messages.
COMPACT = "compact"
#: Prefix flag (the prefix's 16-bit field, 0 in the first v2 receivers): an IMAGE carries a text.
FLAG_TEXT = 0x0001


class Status(IntEnum):
    """Acknowledgement codes (the receiver's verdict on one IMAGE)."""

    OK = 0
    MALFORMED = 1
    CHECKSUM = 2
    UNKNOWN_MODEL = 3
    TOO_LARGE = 4
    DECODE_FAILED = 5
    SHUTTING_DOWN = 6
    UNKNOWN_KEY = 7  # sealed connections (docs/security.md): the receiver holds no key with that id
    AUTH_FAILED = 8  # a sealed frame failed authentication, was replayed or came out of order
    SEALING_REQUIRED = 9  # a receiver with --key got a plaintext or legacy frame
    KEY_FRAME_NEEDED = 10  # video: an inter frame whose reference the receiver lacks; send a key frame next


class Role(Enum):
    SENDER = "sender"  # sends IMAGE, receives ACK
    RECEIVER = "receiver"  # receives IMAGE, sends ACK


class _Sentinel(Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


NEED_DATA = _Sentinel.NEED_DATA
CLOSED = _Sentinel.CLOSED


class FrameRejected(RemoteProtocolError):
    """A complete IMAGE with bad content; the stream is intact, so answer with ``status`` and go on."""

    def __init__(self, seq: int, status: Status, message: str) -> None:
        super().__init__(message)
        self.seq = seq
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What a v2 receiver accepts, enforced from the prefix and header before buffering the body."""

    max_payload_bytes: int = 64 * 1024 * 1024
    max_latent_elements: int = 4 * 512 * 512
    max_image_pixels: int = 4096 * 4096
    max_reference_bytes: int = 32 * 1024 * 1024
    max_text_bytes: int = 64 * 1024

    @property
    def max_body(self) -> int:
        fixed = IMAGE_HEADER.size + TEXT_LEN.size + 2 * 65535 + 8 * 65535
        return fixed + self.max_reference_bytes + self.max_payload_bytes + self.max_text_bytes


@dataclass(frozen=True)
class ImageFrame:
    """One image's latent plus what the receiver needs to show it (see docs/protocol.md)."""

    seq: int
    model: str
    encoding: int
    compression: int
    shape: tuple[int, int, int]  # latent (C, H, W)
    image_size: tuple[int, int]  # original (height, width), before padding
    payload: bytes = field(repr=False)
    name: str = ""
    params: tuple[tuple[float, float], ...] = ()  # uint8: per-channel (scale, offset)
    reference_png: bytes | None = field(default=None, repr=False)
    text: str | None = None  # optional UTF-8 text beside the image (a caption, a sensor reading)


@dataclass(frozen=True)
class Ack:
    seq: int
    status: Status
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == Status.OK


def sniff(first_bytes: bytes) -> str | None:
    """'v2' or 'legacy' from a connection's first bytes; None if fewer than 4 have arrived."""
    if len(first_bytes) < len(MAGIC):
        return "legacy" if first_bytes and not MAGIC.startswith(first_bytes) else None
    return "v2" if first_bytes[:4] == MAGIC else "legacy"


def _checksum(params: bytes, reference: bytes, payload: bytes, text: bytes = b"") -> int:
    return zlib.crc32(text, zlib.crc32(payload, zlib.crc32(reference, zlib.crc32(params)))) & 0xFFFFFFFF


def _utf8(data: bytes, what: str, seq: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameRejected(seq, Status.MALFORMED, f"{what} is not UTF-8") from None


def encode_image(frame: ImageFrame) -> bytes:
    # File names from the OS may hold undecodable bytes (surrogate escapes); send them as visible
    # backslash escapes rather than fail or put invalid UTF-8 on the wire.
    model, name = frame.model.encode(), frame.name.encode("utf-8", "backslashreplace")
    c, h, w = frame.shape
    ref = frame.reference_png or b""
    if len(model) > 65535 or len(name) > 65535:
        raise LocalProtocolError("model id or image name longer than 65535 bytes")
    if not all(0 < v < 65536 for v in frame.shape):
        raise LocalProtocolError(f"latent shape {frame.shape} does not fit the v2 header")
    if frame.compression not in (COMP_NONE, COMP_GZIP, COMP_ZSTD):
        raise LocalProtocolError(f"unknown compression {frame.compression}")
    check_encoding(frame.encoding)
    if (frame.encoding == ENC_UINT8_AFFINE) != bool(frame.params) or (frame.params and len(frame.params) != c):
        raise LocalProtocolError("uint8 latents need one (scale, offset) per channel, other encodings none")
    params = b"".join(PARAM.pack(s, o) for s, o in frame.params)
    text = b""
    if frame.text is not None:
        try:
            text = frame.text.encode("utf-8")
        except UnicodeEncodeError:
            raise LocalProtocolError("the text is not valid UTF-8 (undecodable bytes)") from None
    header = IMAGE_HEADER.pack(
        frame.seq,
        frame.encoding,
        frame.compression,
        c,
        h,
        w,
        *frame.image_size,
        len(model),
        len(name),
        len(ref),
        len(frame.payload),
        _checksum(params, ref, frame.payload, text),
    )
    flags = 0
    if frame.text is not None:
        flags |= FLAG_TEXT
        header += TEXT_LEN.pack(len(text))
    body = b"".join([header, model, name, params, ref, frame.payload, text])
    return PREFIX.pack(MAGIC, VERSION, TYPE_IMAGE, flags, len(body)) + body


def inherits(frame: ImageFrame, base: ImageFrame | None) -> bool:
    """Can ``frame`` go as an INTER after ``base`` (everything but seq, payload and text the same, no
    name, no reference picture)?"""
    return (
        base is not None
        and not frame.name
        and frame.reference_png is None
        and (frame.model, frame.encoding, frame.compression, frame.shape, frame.image_size, frame.params)
        == (base.model, base.encoding, base.compression, base.shape, base.image_size, base.params)
    )


def _header_of(frame: ImageFrame) -> ImageFrame:
    """What an INTER inherits, without the bytes: a connection keeps no payload, reference picture or
    text between frames (64 connections holding a 64 MiB payload each would be 4 GiB)."""
    return replace(frame, payload=b"", reference_png=None, text=None, name="")


def encode_inter(frame: ImageFrame) -> bytes:
    """``frame`` as an INTER message (the caller checked :func:`inherits`)."""
    text = b"" if frame.text is None else frame.text.encode("utf-8", "strict")
    header = INTER_HEADER.pack(frame.seq, _checksum(b"", b"", frame.payload, text))
    flags = 0
    if frame.text is not None:
        flags |= FLAG_TEXT
        header += TEXT_LEN.pack(len(text))
    body = header + frame.payload + text
    return PREFIX.pack(MAGIC, VERSION, TYPE_INTER, flags, len(body)) + body


def encode_ack(ack: Ack) -> bytes:
    msg = ack.message.encode()[:1024]
    body = ACK_HEADER.pack(ack.seq, int(ack.status), len(msg)) + msg
    return PREFIX.pack(MAGIC, VERSION, TYPE_ACK, 0, len(body)) + body


class ReceiveBuffer:
    """Bytes received and not yet parsed: consumed from the front with an offset, compacted only when
    at least half is spent, so parsing stays O(n) in the bytes received. EOF is remembered."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes) -> None:
        if self._eof:
            if data:
                raise RemoteProtocolError("data after EOF")
            return
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def receive_eof(self) -> None:
        self._eof = True


class Connection(ReceiveBuffer):
    """The protocol state of one v2 connection, for one role. No I/O inside.

    The receive buffer is consumed from the front with an offset and compacted only when at least
    half of it is spent, so processing stays O(n) in the bytes received.
    """

    def __init__(self, role: Role, limits: Limits | None = None) -> None:
        super().__init__()
        self.role = role
        self.limits = limits or Limits()
        self._closed = False
        #: Bytes on the wire of the last message returned by ``next_event`` (prefix included).
        self.last_message_size = 0
        #: Sender: the receiver reads INTER messages (it said :data:`COMPACT`); the transport sets it.
        self.compact = False
        #: The last IMAGE sent (sender) or read (receiver): what an INTER inherits.
        self.base: ImageFrame | None = None

    def send(self, event: ImageFrame | Ack) -> bytes:
        if isinstance(event, ImageFrame):
            if self.role is not Role.SENDER:
                raise LocalProtocolError("a receiver does not send images")
            if self.compact and inherits(event, self.base):
                return encode_inter(event)
            data = encode_image(event)
            self.base = _header_of(event)
            return data
        if isinstance(event, Ack):
            if self.role is not Role.RECEIVER:
                raise LocalProtocolError("a sender does not send acknowledgements")
            return encode_ack(event)
        raise LocalProtocolError(f"cannot send {event!r}")

    def next_event(self) -> ImageFrame | Ack | _Sentinel:
        """The next complete message, NEED_DATA, or CLOSED after a clean EOF between messages."""
        if self._closed:
            return CLOSED
        avail = len(self._buf) - self._pos
        if avail < PREFIX.size:
            if self._eof:
                if avail == 0:
                    self._closed = True
                    return CLOSED
                raise RemoteProtocolError(f"connection closed inside a message prefix ({avail} bytes)")
            if avail and sniff(bytes(self._buf[self._pos : self._pos + 4])) == "legacy":
                raise RemoteProtocolError("not a v2 message (bad magic)")
            return NEED_DATA
        magic, version, mtype, flags, body_len = PREFIX.unpack_from(self._buf, self._pos)
        if magic != MAGIC:
            raise RemoteProtocolError("not a v2 message (bad magic)")
        if version != VERSION:
            raise RemoteProtocolError(f"unsupported protocol version {version}")
        want = (TYPE_IMAGE, TYPE_INTER) if self.role is Role.RECEIVER else (TYPE_ACK,)
        if mtype not in want:
            raise RemoteProtocolError(f"unexpected message type {mtype} for a {self.role.value}")
        limit = {
            TYPE_IMAGE: self.limits.max_body,
            TYPE_INTER: INTER_HEADER.size + TEXT_LEN.size + self.limits.max_payload_bytes + self.limits.max_text_bytes,
        }.get(mtype, ACK_HEADER.size + 65535)
        if body_len > limit:
            raise RemoteProtocolError(f"message body of {body_len} bytes exceeds the limit of {limit}")
        if flags & ~FLAG_TEXT or (flags and mtype == TYPE_ACK):
            raise RemoteProtocolError(f"unknown prefix flags {flags:#06x}")
        has_text = bool(flags & FLAG_TEXT)
        if mtype == TYPE_IMAGE and avail >= PREFIX.size + IMAGE_HEADER.size + has_text * TEXT_LEN.size:
            self._check_image_header(body_len, has_text)
        if mtype == TYPE_INTER and avail >= PREFIX.size + INTER_HEADER.size + has_text * TEXT_LEN.size:
            self._check_inter_header(body_len, has_text)
        if avail < PREFIX.size + body_len:
            if self._eof:
                raise RemoteProtocolError(f"connection closed after {avail - PREFIX.size} of {body_len} body bytes")
            return NEED_DATA
        start = self._pos + PREFIX.size
        body = bytes(self._buf[start : start + body_len])
        self._pos = start + body_len
        self.last_message_size = PREFIX.size + body_len
        if mtype == TYPE_IMAGE:
            self.base = None  # an IMAGE refused here leaves nothing to inherit: INTERs are refused till the next
            frame = self._parse_image(body, has_text)
            self.base = _header_of(frame)
            return frame
        if mtype == TYPE_INTER:
            return self._parse_inter(body, has_text)
        ack = self._parse_ack(body)
        if not ack.ok:  # the receiver may lack the last IMAGE: the next frame goes whole
            self.base = None
        elif COMPACT in ack.message.split():
            self.compact = True
        return ack

    def _parse_inter(self, body: bytes, has_text: bool) -> ImageFrame:
        """An INTER: the last IMAGE's fields with this message's sequence number, payload and text."""
        fixed = INTER_HEADER.size + has_text * TEXT_LEN.size
        if len(body) < fixed:
            raise RemoteProtocolError("inter frame shorter than its header")
        seq, crc = INTER_HEADER.unpack_from(body)
        text_len = TEXT_LEN.unpack_from(body, INTER_HEADER.size)[0] if has_text else 0
        if text_len > self.limits.max_text_bytes:
            raise FrameRejected(seq, Status.TOO_LARGE, f"text of {text_len} bytes exceeds the limit")
        if text_len > len(body) - fixed:
            raise FrameRejected(seq, Status.MALFORMED, f"text of {text_len} bytes in a {len(body)}-byte body")
        payload, text_raw = body[fixed : len(body) - text_len], body[len(body) - text_len :]
        if len(payload) > self.limits.max_payload_bytes:
            raise FrameRejected(seq, Status.TOO_LARGE, f"payload of {len(payload)} bytes exceeds the limit")
        if self.base is None:
            raise FrameRejected(seq, Status.MALFORMED, "an inter frame before any image frame on this connection")
        if _checksum(b"", b"", payload, text_raw) != crc:
            raise FrameRejected(seq, Status.CHECKSUM, "checksum mismatch (data corrupted in transit)")
        text = _utf8(text_raw, "text", seq) if has_text else None
        b = self.base
        return ImageFrame(seq, b.model, b.encoding, b.compression, b.shape, b.image_size, payload, "", b.params,
                          None, text)  # fmt: skip

    def _check_inter_header(self, body_len: int, has_text: bool) -> None:
        """An INTER's text and payload within the limits, from its header, before its body is buffered
        (the same limits and words as an IMAGE's)."""
        lim = self.limits
        text_len = 0
        if has_text:
            (text_len,) = TEXT_LEN.unpack_from(self._buf, self._pos + PREFIX.size + INTER_HEADER.size)
            if text_len > lim.max_text_bytes:
                raise RemoteProtocolError(
                    f"text of {text_len} bytes exceeds the receiver's limit of {lim.max_text_bytes} (--max-text)"
                )
        payload_len = body_len - INTER_HEADER.size - has_text * TEXT_LEN.size - text_len
        if payload_len > lim.max_payload_bytes:
            raise RemoteProtocolError(f"payload of {payload_len} bytes exceeds the limit of {lim.max_payload_bytes}")

    def _check_image_header(self, body_len: int, has_text: bool) -> None:
        """Refuse oversized images from the fixed header alone, before their body is buffered."""
        f = IMAGE_HEADER.unpack_from(self._buf, self._pos + PREFIX.size)
        _seq, enc, _comp, c, h, w, oh, ow, _ml, _nl, ref_len, payload_len, _crc = f
        lim = self.limits
        if payload_len > lim.max_payload_bytes:
            raise RemoteProtocolError(f"payload of {payload_len} bytes exceeds the limit of {lim.max_payload_bytes}")
        # A learned latent (and a video access unit) is bounded by the image size instead (its codec
        # checks that the two match), so the pixel limit below bounds what decoding it allocates.
        if enc not in (ENC_LEARNED, ENC_VIDEO) and c * h * w > lim.max_latent_elements:
            raise RemoteProtocolError(f"latent {c}x{h}x{w} exceeds the limit of {lim.max_latent_elements} elements")
        if oh * ow > lim.max_image_pixels:
            raise RemoteProtocolError(f"image {ow}x{oh} exceeds the limit of {lim.max_image_pixels} pixels")
        if ref_len > lim.max_reference_bytes:
            raise RemoteProtocolError(f"reference image of {ref_len} bytes exceeds the limit")
        if has_text:
            (text_len,) = TEXT_LEN.unpack_from(self._buf, self._pos + PREFIX.size + IMAGE_HEADER.size)
            if text_len > lim.max_text_bytes:
                raise RemoteProtocolError(
                    f"text of {text_len} bytes exceeds the receiver's limit of {lim.max_text_bytes} (--max-text)"
                )

    def _parse_image(self, body: bytes, has_text: bool = False) -> ImageFrame:
        fixed = IMAGE_HEADER.size + has_text * TEXT_LEN.size
        if len(body) < fixed:
            raise RemoteProtocolError("image body shorter than its header")
        seq, enc, comp, c, h, w, oh, ow, ml, nl, ref_len, payload_len, crc = IMAGE_HEADER.unpack_from(body)
        text_len = TEXT_LEN.unpack_from(body, IMAGE_HEADER.size)[0] if has_text else 0
        if text_len > self.limits.max_text_bytes:
            raise FrameRejected(seq, Status.TOO_LARGE, f"text of {text_len} bytes exceeds the limit")
        nparams = c if enc == ENC_UINT8_AFFINE else 0
        expected = fixed + ml + nl + nparams * PARAM.size + ref_len + payload_len + text_len
        if expected != len(body):
            raise FrameRejected(seq, Status.MALFORMED, f"body is {len(body)} bytes but its fields add up to {expected}")
        if c == 0 or h == 0 or w == 0 or oh == 0 or ow == 0:
            raise FrameRejected(seq, Status.MALFORMED, "empty latent or image size")
        try:
            check_encoding(enc)
        except RemoteProtocolError as exc:
            raise FrameRejected(seq, Status.MALFORMED, str(exc)) from None
        if comp not in (COMP_NONE, COMP_GZIP, COMP_ZSTD):
            raise FrameRejected(seq, Status.MALFORMED, f"unknown compression {comp}")
        pos = fixed
        model = _utf8(body[pos : pos + ml], "model id", seq)
        pos += ml
        name = _utf8(body[pos : pos + nl], "image name", seq)
        pos += nl
        params_raw = body[pos : pos + nparams * PARAM.size]
        pos += len(params_raw)
        ref = body[pos : pos + ref_len]
        pos += ref_len
        payload = body[pos : pos + payload_len]
        text_raw = body[pos + payload_len :]
        if _checksum(params_raw, ref, payload, text_raw) != crc:
            raise FrameRejected(seq, Status.CHECKSUM, "checksum mismatch (data corrupted in transit)")
        text = _utf8(text_raw, "text", seq) if has_text else None
        params = tuple(PARAM.unpack_from(params_raw, i * PARAM.size) for i in range(nparams))
        return ImageFrame(seq, model, enc, comp, (c, h, w), (oh, ow), payload, name, params, ref or None, text)

    def _parse_ack(self, body: bytes) -> Ack:
        if len(body) < ACK_HEADER.size:
            raise RemoteProtocolError("acknowledgement shorter than its header")
        seq, status, mlen = ACK_HEADER.unpack_from(body)
        if ACK_HEADER.size + mlen != len(body):
            raise RemoteProtocolError("acknowledgement length mismatch")
        try:
            st = Status(status)
        except ValueError:
            raise RemoteProtocolError(f"unknown acknowledgement status {status}") from None
        return Ack(seq, st, body[ACK_HEADER.size :].decode("utf-8", "replace"))
