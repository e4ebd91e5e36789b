"""Sealed v2 frames, sans-I/O: end-to-end authenticated encryption with replay protection.

The layout is specified in docs/security.md. In short, a sealed connection is a v2 connection whose
first messages are a handshake and whose every later message is one ordinary v2 message (IMAGE or
ACK, prefix included) encrypted and authenticated with ChaCha20-Poly1305:

    HELLO (type 3), sender -> receiver:   key id (8) | sender ephemeral X25519 public key (32)
    HELLO (type 3), receiver -> sender:   key id (8) | receiver ephemeral X25519 public key (32)
                                          | receiver confirmation (32)
    HELLO (type 3), sender -> receiver:   sender confirmation (32), sent in front of its first frame
    SEALED (type 4), both directions:     key id (8) | counter (u64) | ciphertext | tag (16)

Keys for the connection come from HKDF-SHA256 over the long-term key and the ephemeral X25519
shared secret, with both public keys as salt (the shape of Noise's NNpsk0: the pre-shared key
authenticates, the ephemeral exchange gives forward secrecy): one key per direction plus a
confirmation key. Fresh ephemeral keys on both sides mean a nonce (the counter) never repeats under
a key, even across restarts, that frames captured on one connection fail authentication on any
other, and that a key stolen later can't open a recording. Within a connection each direction's
counter must be exactly the next one, so a replayed, duplicated, dropped-and-reinserted or
reordered frame is refused. The prefix, key id and counter are authenticated as associated data,
and nothing inside a frame is parsed before its tag has been verified.

The receiver's HELLO carries an HMAC under the confirmation key, so a sender learns that the
receiver holds the same key before it sends a picture; a receiver without the key id answers with a
plaintext ACK (UNKNOWN_KEY) that a sender reports but never takes for a delivery. The sender proves
the same in its third message (prepended to its first sealed frame by ``send``): until it has, the
receiver refuses a SEALED prefix at once, so a stranger who knows only the key id (it travels in
clear) can make a receiver buffer a few dozen bytes, never a body of up to the frame limit.

Use it like ``protocol_v2.Connection``: ``receive_data``/``receive_eof``, ``next_event`` (a
``Handshake`` event on the receiver once a sender said hello: write its ``reply``; then IMAGE frames;
ACKs on the sender), ``send`` for sealed bytes. A sender starts with ``hello()``.
"""

from __future__ import annotations

import hmac
import logging
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from latentcomm.errors import LocalProtocolError, RemoteProtocolError
from latentcomm.wire import v2
from latentcomm.wire.keys import KEY_BYTES, KEY_ID_BYTES, Key, Keyring

log = logging.getLogger(__name__)


RANDOM_BYTES = 32
CONFIRM_BYTES = 32
TAG_BYTES = 16
TYPE_HELLO = 3
TYPE_SEALED = 4
SEALED_HEADER = struct.Struct("!8sQ")  # key id, counter
HELLO_SENDER_LEN = KEY_ID_BYTES + RANDOM_BYTES
HELLO_RECEIVER_LEN = KEY_ID_BYTES + RANDOM_BYTES + CONFIRM_BYTES
#: The sender's third handshake message: its key confirmation alone.
HELLO_CONFIRM_LEN = CONFIRM_BYTES
SEAL_OVERHEAD = SEALED_HEADER.size + TAG_BYTES


class SealError(RemoteProtocolError):
    """A sealed connection can't go on: failed tag, replay, wrong key, plaintext where a seal was due.

    ``status`` is the acknowledgement code a receiver answers with before closing.
    """

    def __init__(self, message: str, status: v2.Status = v2.Status.AUTH_FAILED) -> None:
        super().__init__(message)
        self.status = status


# -- session ---------------------------------------------------------------------------------------


def _ephemeral() -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _derive(key: Key, private: X25519PrivateKey, sender_public: bytes, receiver_public: bytes, peer_public: bytes
            ) -> tuple[bytes, bytes, bytes]:  # fmt: skip
    """(sender-to-receiver key, receiver-to-sender key, confirmation key) of one connection: the
    long-term key authenticates, the ephemeral Diffie-Hellman secret gives forward secrecy."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:  # a low-order point: no shared secret, so no session
        raise SealError("the peer's ephemeral key is invalid", v2.Status.MALFORMED) from None
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=3 * KEY_BYTES,
        salt=sender_public + receiver_public,
        info=b"latentcomm v2 sealed session x25519 " + key.key_id,
    ).derive(key.secret + shared)
    return okm[:32], okm[32:64], okm[64:]


def _confirmation(k_confirm: bytes, sender_hello: bytes, key_id: bytes, receiver_random: bytes) -> bytes:
    return hmac.new(
        k_confirm, b"latentcomm receiver hello" + sender_hello + key_id + receiver_random, "sha256"
    ).digest()


def _sender_confirmation(k_confirm: bytes, sender_hello: bytes, receiver_hello: bytes) -> bytes:
    return hmac.new(k_confirm, b"latentcomm sender confirm" + sender_hello + receiver_hello, "sha256").digest()


def _nonce(counter: int) -> bytes:
    return b"\0\0\0\0" + counter.to_bytes(8, "big")


@dataclass(frozen=True)
class Handshake:
    """The session is established. Receiver: a sender said hello with a key this receiver holds;
    write ``reply`` back. Sender: the receiver proved it holds our key (``reply`` is empty)."""

    key_id: str
    reply: bytes = field(repr=False)


class _Direction:
    """One direction's AEAD key and counter."""

    def __init__(self, key: bytes) -> None:
        self.aead = ChaCha20Poly1305(key)
        self.counter = 0


class SecureConnection(v2.ReceiveBuffer):
    """A sealed v2 connection for one role. Same shape as ``protocol_v2.Connection``; no I/O inside.

    ``role`` SENDER needs ``key``; RECEIVER needs ``keyring``.
    """

    def __init__(
        self,
        role: v2.Role,
        key: Key | None = None,
        keyring: Keyring | None = None,
        limits: v2.Limits | None = None,
    ) -> None:
        if role is v2.Role.SENDER and key is None:
            raise LocalProtocolError("a sealed sender needs a key")
        if role is v2.Role.RECEIVER and not keyring:
            raise LocalProtocolError("a sealed receiver needs at least one key")
        super().__init__()
        self.role = role
        self.limits = limits or v2.Limits()
        self.key = key
        self.keyring = keyring
        self._closed = False
        self._hello: bytes | None = None  # the sender's HELLO body (bound into the confirmation)
        self._ephemeral: X25519PrivateKey | None = None
        #: Receiver: the sender's confirmation is still due (its expected value). Sender: the
        #: confirmation message still to go out in front of the first frame.
        self._confirm_due: bytes | None = None
        self._out: _Direction | None = None
        self._in: _Direction | None = None
        #: Bytes on the wire of the last message returned by ``next_event`` (prefix included).
        self.last_message_size = 0
        #: As :class:`v2.Connection`'s: the receiver reads INTER messages; what an INTER inherits.
        self.compact = False
        self.base: v2.ImageFrame | None = None

    @property
    def established(self) -> bool:
        return self._in is not None

    @property
    def authenticated(self) -> bool:
        """The peer has proven it holds the key (a receiver: the sender's confirmation came)."""
        return self._in is not None and (self.role is v2.Role.SENDER or self._confirm_due is None)

    @property
    def key_id(self) -> str | None:
        return self.key.key_id_hex if self.key is not None else None

    # -- sending --

    def hello(self) -> bytes:
        """Sender: the first message of the connection."""
        if self.role is not v2.Role.SENDER or self._hello is not None:
            raise LocalProtocolError("hello() is the sender's first message, sent once")
        assert self.key is not None
        self._ephemeral, public = _ephemeral()
        self._hello = self.key.key_id + public
        return v2.PREFIX.pack(v2.MAGIC, v2.VERSION, TYPE_HELLO, 0, len(self._hello)) + self._hello

    def send(self, event: v2.ImageFrame | v2.Ack) -> bytes:
        """The sealed bytes of one IMAGE (sender) or ACK (receiver).

        Before a receiver has a session (an unknown key id, plaintext where a seal was due), an ACK
        can only go out in clear: the sender treats such an answer as a refusal, never a delivery.
        """
        plain = v2.Connection(self.role)
        plain.compact, plain.base = self.compact, self.base  # INTER state spans the sealed messages
        inner = plain.send(event)
        self.base = plain.base
        if self._out is None:
            if self.role is v2.Role.RECEIVER and isinstance(event, v2.Ack) and not event.ok:
                return inner
            raise LocalProtocolError("no sealed session yet")
        assert self.key is not None
        d = self._out
        if d.counter >= 2**64 - 1:
            raise LocalProtocolError("sealed counter exhausted; reconnect")
        body_len = SEAL_OVERHEAD + len(inner)
        prefix = v2.PREFIX.pack(v2.MAGIC, v2.VERSION, TYPE_SEALED, 0, body_len)
        header = SEALED_HEADER.pack(self.key.key_id, d.counter)
        sealed = d.aead.encrypt(_nonce(d.counter), inner, prefix + header)
        d.counter += 1
        confirm = b""
        if self.role is v2.Role.SENDER and self._confirm_due is not None:
            confirm, self._confirm_due = self._confirm_due, None
        return confirm + prefix + header + sealed

    # -- receiving --

    def next_event(self) -> v2.ImageFrame | v2.Ack | Handshake | object:
        """The next event, ``v2.NEED_DATA``, or ``v2.CLOSED`` after a clean EOF between messages."""
        if self._closed:
            return v2.CLOSED
        avail = len(self._buf) - self._pos
        if avail < v2.PREFIX.size:
            if self._eof:
                if avail == 0:
                    self._closed = True
                    return v2.CLOSED
                raise RemoteProtocolError(f"connection closed inside a message prefix ({avail} bytes)")
            if avail and v2.sniff(bytes(self._buf[self._pos : self._pos + 4])) == "legacy":
                raise self._bad_magic()
            return v2.NEED_DATA
        prefix = bytes(self._buf[self._pos : self._pos + v2.PREFIX.size])
        magic, version, mtype, _reserved, body_len = v2.PREFIX.unpack(prefix)
        if magic != v2.MAGIC:
            raise self._bad_magic()
        if version != v2.VERSION:
            raise RemoteProtocolError(f"unsupported protocol version {version}")
        if mtype not in (TYPE_HELLO, TYPE_SEALED):
            return self._plaintext(mtype, body_len, avail)
        if mtype == TYPE_HELLO and _reserved:
            raise SealError("a HELLO with reserved bits set", v2.Status.MALFORMED)
        if mtype == TYPE_SEALED and self._in is None:
            # Decided from the 12-byte prefix: a stranger who never said hello can't make this
            # connection buffer a body (up to the frame limit) before being refused.
            raise SealError("a sealed frame before the handshake", v2.Status.MALFORMED)
        if mtype == TYPE_SEALED and not self.authenticated:
            # Nor can one who said hello with a key id it read off the wire: the body waits for the
            # sender's proof that it holds the key.
            raise SealError("a sealed frame before the sender's key confirmation (a sender older than the receiver, "
                            "or without the key)", v2.Status.AUTH_FAILED)  # fmt: skip
        limit = self._limit(mtype)
        if body_len > limit:
            raise SealError(f"sealed message of {body_len} bytes exceeds the limit of {limit}", v2.Status.MALFORMED)
        if avail < v2.PREFIX.size + body_len:
            if self._eof:
                raise RemoteProtocolError(f"connection closed after {avail - v2.PREFIX.size} of {body_len} body bytes")
            return v2.NEED_DATA
        start = self._pos + v2.PREFIX.size
        body = bytes(self._buf[start : start + body_len])
        self._pos = start + body_len
        self.last_message_size = v2.PREFIX.size + body_len
        if mtype == TYPE_HELLO:
            return self._on_hello(body)
        return self._open(prefix, body)

    def _limit(self, mtype: int) -> int:
        if mtype == TYPE_HELLO:
            return HELLO_SENDER_LEN if self.role is v2.Role.RECEIVER else HELLO_RECEIVER_LEN
        inner = self.limits.max_body if self.role is v2.Role.RECEIVER else v2.ACK_HEADER.size + 65535
        return SEAL_OVERHEAD + v2.PREFIX.size + inner

    def _bad_magic(self) -> RemoteProtocolError:
        """A connection that opens with a legacy frame gets the policy's reason; later, it's corruption."""
        if self.role is v2.Role.RECEIVER and self._hello is None:
            return self._not_sealed("a legacy frame")
        return RemoteProtocolError("not a v2 message (bad magic)")

    def _not_sealed(self, what: str) -> SealError:
        if self.role is v2.Role.RECEIVER:
            detail = (
                "legacy frames have no room for an authentication tag; use v2 with --key"
                if "legacy" in what
                else "send with --key"
            )
            return SealError(f"{what} refused: this receiver only accepts sealed frames ({detail})",
                             v2.Status.SEALING_REQUIRED)  # fmt: skip
        return SealError(f"{what} in clear refused on a sealed connection")

    def _plaintext(self, mtype: int, body_len: int, avail: int) -> object:
        """A plain v2 message. Receiver: refused. Sender: an error ACK from a receiver that can't seal
        (unknown key id, no --key) is reported as a refusal; a plaintext OK is a forgery."""
        if self.role is v2.Role.RECEIVER:
            raise self._not_sealed("a plaintext v2 frame" if mtype == v2.TYPE_IMAGE else f"a type-{mtype} message")
        if mtype != v2.TYPE_ACK or body_len > v2.ACK_HEADER.size + 1024:
            raise RemoteProtocolError(f"unexpected message type {mtype} on a sealed connection")
        if avail < v2.PREFIX.size + body_len:
            return v2.NEED_DATA
        plain = v2.Connection(v2.Role.SENDER)
        plain.receive_data(bytes(self._buf[self._pos : self._pos + v2.PREFIX.size + body_len]))
        self._pos += v2.PREFIX.size + body_len
        ack = plain.next_event()
        assert isinstance(ack, v2.Ack)
        if ack.ok:
            raise SealError("an unauthenticated acknowledgement claimed success: refused (forged or downgraded)")
        hint = (
            ""
            if self._in is not None or ack.status != v2.Status.MALFORMED
            else " (is the receiver started with --key?)"
        )
        raise SealError(f"receiver refused the sealed connection: {ack.status.name}: {ack.message}{hint}", ack.status)

    def _on_hello(self, body: bytes) -> Handshake | object:
        if self.role is v2.Role.RECEIVER and self._confirm_due is not None:
            if not hmac.compare_digest(body, self._confirm_due):
                raise SealError("the sender could not prove it holds this key (key confirmation failed)")
            self._confirm_due = None
            return self.next_event()
        second = self._in is not None or (self.role is v2.Role.RECEIVER and self._hello is not None)
        if second:
            raise SealError("a second HELLO on one connection", v2.Status.MALFORMED)
        if self.role is v2.Role.RECEIVER:
            if len(body) != HELLO_SENDER_LEN:
                raise SealError("HELLO of the wrong length", v2.Status.MALFORMED)
            assert self.keyring is not None
            key = self.keyring.get(body[:KEY_ID_BYTES])
            if key is None:
                raise SealError(f"unknown key id {body[:KEY_ID_BYTES].hex()}", v2.Status.UNKNOWN_KEY)
            self.key = key
            self._hello = body
            private, rnd = _ephemeral()
            s2r, r2s, kc = _derive(key, private, body[KEY_ID_BYTES:], rnd, body[KEY_ID_BYTES:])
            self._in, self._out = _Direction(s2r), _Direction(r2s)
            reply = key.key_id + rnd + _confirmation(kc, body, key.key_id, rnd)
            self._confirm_due = _sender_confirmation(kc, body, reply)
            return Handshake(key.key_id_hex, v2.PREFIX.pack(v2.MAGIC, v2.VERSION, TYPE_HELLO, 0, len(reply)) + reply)
        assert self.key is not None
        if self._hello is None or len(body) != HELLO_RECEIVER_LEN or body[:KEY_ID_BYTES] != self.key.key_id:
            raise SealError("the receiver's HELLO does not answer ours")
        rnd, confirm = body[KEY_ID_BYTES : KEY_ID_BYTES + RANDOM_BYTES], body[KEY_ID_BYTES + RANDOM_BYTES :]
        assert self._ephemeral is not None
        s2r, r2s, kc = _derive(self.key, self._ephemeral, self._hello[KEY_ID_BYTES:], rnd, rnd)
        self._ephemeral = None  # used once, then dropped
        if not hmac.compare_digest(confirm, _confirmation(kc, self._hello, self.key.key_id, rnd)):
            raise SealError("the receiver could not prove it holds this key (key confirmation failed; "
                            "or it runs a latentcomm older than this sender)")  # fmt: skip
        self._out, self._in = _Direction(s2r), _Direction(r2s)
        mine = _sender_confirmation(kc, self._hello, body)
        self._confirm_due = v2.PREFIX.pack(v2.MAGIC, v2.VERSION, TYPE_HELLO, 0, len(mine)) + mine
        return Handshake(self.key.key_id_hex, b"")

    def _open(self, prefix: bytes, body: bytes) -> v2.ImageFrame | v2.Ack:
        if self._in is None or self.key is None:
            raise SealError("a sealed frame before the handshake", v2.Status.MALFORMED)
        if len(body) < SEAL_OVERHEAD:
            raise SealError("sealed frame shorter than its header and tag", v2.Status.MALFORMED)
        key_id, counter = SEALED_HEADER.unpack_from(body)
        if key_id != self.key.key_id:
            raise SealError(f"sealed frame names key id {key_id.hex()}, the connection uses {self.key.key_id_hex}")
        d = self._in
        try:
            inner = d.aead.decrypt(_nonce(counter), body[SEALED_HEADER.size :], prefix + body[: SEALED_HEADER.size])
        except InvalidTag:
            why = "tampered, or not for this connection"
            raise SealError(f"sealed frame {counter} failed authentication ({why})") from None
        if counter != d.counter:
            kind = "replayed or duplicated" if counter < d.counter else "out of order (a frame is missing)"
            raise SealError(f"sealed frame {counter} is {kind}; expected {d.counter}")
        d.counter += 1
        # Authenticated: only now is the inner v2 message parsed, with the ordinary limits.
        parser = v2.Connection(self.role, self.limits)
        parser.base, parser.compact = self.base, self.compact
        parser.receive_data(inner)
        parser.receive_eof()
        try:
            event = parser.next_event()
        finally:
            self.base, self.compact = parser.base, parser.compact
        if parser.next_event() is not v2.CLOSED:
            raise SealError("a sealed frame holds more than one message", v2.Status.MALFORMED)
        return event
