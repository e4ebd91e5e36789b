"""Sealed frames through a broker, sans-I/O: a broker has no connection to run a handshake on, so each
stream seals its frames under keys derived from the long-term key and a random stream id (the layout
is in docs/security.md)."""

from __future__ import annotations

import collections
import json
import logging
import secrets
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from latentcomm.wire import v2
from latentcomm.wire.keys import KEY_BYTES, Key, Keyring
from latentcomm.wire.replay import DEFAULT_MAX_AGE_S, ReplayError, ReplayMemory, new_stream_id
from latentcomm.wire.sealed import TAG_BYTES, SealError

log = logging.getLogger(__name__)


TYPE_STREAM_SEALED = 5
STREAM_HEADER = struct.Struct("!8s16s12s")  # key id, stream id, nonce
STREAM_OVERHEAD = STREAM_HEADER.size + TAG_BYTES


def _stream_keys(key: Key, stream_id: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=2 * KEY_BYTES,
        salt=stream_id,
        info=b"latentcomm v2 broker stream " + key.key_id,
    ).derive(key.secret)
    return okm[:32], okm[32:]


def _stream_seal(aead: ChaCha20Poly1305, key_id: bytes, stream_id: bytes, nonce: bytes, inner: bytes) -> bytes:
    prefix = v2.PREFIX.pack(v2.MAGIC, v2.VERSION, TYPE_STREAM_SEALED, 0, STREAM_OVERHEAD + len(inner))
    header = STREAM_HEADER.pack(key_id, stream_id, nonce)
    return prefix + header + aead.encrypt(nonce, inner, prefix + header)


def _stream_parse(data: bytes, limit: int) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """(prefix+header as associated data, key id, stream id, nonce, sealed part) of one message."""
    if len(data) < v2.PREFIX.size + STREAM_OVERHEAD:
        raise SealError("sealed message shorter than its header and tag", v2.Status.MALFORMED)
    magic, version, mtype, _flags, body_len = v2.PREFIX.unpack_from(data)
    if magic != v2.MAGIC or version != v2.VERSION:
        raise SealError("not a v2 message", v2.Status.MALFORMED)
    if mtype != TYPE_STREAM_SEALED:
        raise SealError(f"a type-{mtype} message refused: this stream is sealed", v2.Status.SEALING_REQUIRED)
    if body_len != len(data) - v2.PREFIX.size or body_len > limit:
        raise SealError("sealed message length mismatch or over the limit", v2.Status.MALFORMED)
    ad_end = v2.PREFIX.size + STREAM_HEADER.size
    key_id, stream_id, nonce = STREAM_HEADER.unpack_from(data, v2.PREFIX.size)
    return data[:ad_end], key_id, stream_id, nonce, data[ad_end:]


class BrokerSealer:
    """Sender side of sealed frames through a broker: one stream per sender process.

    A broker has no connection to run a handshake on, so each sender picks a random 128-bit stream id
    that every message carries (authenticated); keys come from HKDF over the long-term key and the
    stream id, one per direction. Frames use a counter nonce (never repeated: a new stream id per
    process); receivers' acknowledgements, sealed by whichever receiver of the group answers, use
    random nonces. Each publication is sealed afresh (a new counter), so receivers can refuse any
    counter they have seen.
    """

    def __init__(self, key: Key) -> None:
        self.key = key
        self.stream_id = new_stream_id()  # its start second, then random: receivers age streams out by it
        s2r, r2s = _stream_keys(key, self.stream_id)
        self._out, self._in = ChaCha20Poly1305(s2r), ChaCha20Poly1305(r2s)
        self._counter = 0
        # Nonces of the acknowledgements opened lately: a recorded one published again (a key-frame
        # request, to make the sender spend its link on key frames) is refused.
        self._ack_nonces: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def seal(self, inner: bytes) -> bytes:
        nonce = b"\0\0\0\0" + self._counter.to_bytes(8, "big")
        self._counter += 1
        return _stream_seal(self._out, self.key.key_id, self.stream_id, nonce, inner)

    def open_ack(self, data: bytes) -> bytes:
        """The inner ACK message of a sealed answer; SealError if it isn't this stream's or fails."""
        ad, key_id, stream_id, nonce, sealed = _stream_parse(data, STREAM_OVERHEAD + v2.PREFIX.size + 2048)
        if key_id != self.key.key_id or stream_id != self.stream_id:
            raise SealError("an acknowledgement for another stream")
        if nonce in self._ack_nonces:
            raise SealError("a sealed acknowledgement seen before (replayed)")
        try:
            inner = self._in.decrypt(nonce, sealed, ad)
        except InvalidTag:
            raise SealError("a sealed acknowledgement failed authentication (forged or tampered)") from None
        self._ack_nonces[nonce] = None
        if len(self._ack_nonces) > ACK_NONCE_MEMORY:
            self._ack_nonces.popitem(last=False)
        return inner


#: Acknowledgement nonces a sealed sender remembers to refuse replays (random 96-bit nonces: a
#: repeat among honest receivers has probability about n^2 / 2^97).
ACK_NONCE_MEMORY = 65536


TYPE_CONTROL_SEALED = 6
CONTROL_HEADER = struct.Struct("!8s12s")  # key id, random nonce
CONTROL_LIMIT = 4096


class ControlSeal:
    """A group's control messages through a broker (ownership claims, hand-backs, last wills),
    sealed so that nobody outside the group can stop or steal its video streams.

    Each message is JSON sealed with ChaCha20-Poly1305 under a control key derived from a long-term
    key (HKDF, ``"latentcomm v2 broker control"`` and the key id); the topic it is published on is
    associated data, so a claim on one stream can't be moved to another. A message may be sealed
    under several keys (a receiver's last will, for every key it holds): it is the concatenation of
    one type-6 v2 message per key, and :meth:`open` takes the first one it can open. Replays (a
    recorded claim or will published again) are the caller's to refuse, by the counters and session
    ids inside (``MqttServer``).
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._aeads: dict[bytes, ChaCha20Poly1305] = {}

    def _aead(self, key: Key) -> ChaCha20Poly1305:
        aead = self._aeads.get(key.key_id)
        if aead is None:
            okm = HKDF(
                algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=b"latentcomm v2 broker control " + key.key_id,
            ).derive(key.secret)  # fmt: skip
            aead = self._aeads[key.key_id] = ChaCha20Poly1305(okm)
        return aead

    def seal(self, topic: str, message: dict, key_ids: list[bytes] | None = None) -> bytes:
        """``message`` sealed for ``topic`` under the keys named (all of the keyring's by default)."""
        inner = json.dumps(message, separators=(",", ":")).encode()
        keys = [self.keyring.keys[k] for k in key_ids] if key_ids else list(self.keyring.keys.values())
        out = b""
        for key in keys:
            nonce = secrets.token_bytes(12)
            body_len = CONTROL_HEADER.size + len(inner) + TAG_BYTES
            prefix = v2.PREFIX.pack(v2.MAGIC, v2.VERSION, TYPE_CONTROL_SEALED, 0, body_len)
            header = CONTROL_HEADER.pack(key.key_id, nonce)
            out += prefix + header + self._aead(key).encrypt(nonce, inner, prefix + header + topic.encode())
        return out

    def open(self, topic: str, data: bytes) -> dict | None:
        """The message, or None for anything this group didn't seal for ``topic`` (in clear, forged,
        moved from another topic, under a key not held, malformed)."""
        pos = 0
        while len(data) - pos >= v2.PREFIX.size + CONTROL_HEADER.size + TAG_BYTES and pos < 64 * CONTROL_LIMIT:
            magic, version, mtype, _flags, body_len = v2.PREFIX.unpack_from(data, pos)
            end = pos + v2.PREFIX.size + body_len
            if magic != v2.MAGIC or version != v2.VERSION or mtype != TYPE_CONTROL_SEALED or end > len(data) \
                    or body_len > CONTROL_LIMIT:  # fmt: skip
                return None
            ad_end = pos + v2.PREFIX.size + CONTROL_HEADER.size
            key_id, nonce = CONTROL_HEADER.unpack_from(data, pos + v2.PREFIX.size)
            key = self.keyring.get(key_id)
            if key is not None:
                try:
                    inner = self._aead(key).decrypt(nonce, data[ad_end:end], data[pos:ad_end] + topic.encode())
                    message = json.loads(inner)
                except (InvalidTag, ValueError):
                    return None
                return message if isinstance(message, dict) else None
            pos = end
        return None


class BrokerOpener:
    """Receiver side: opens sealed frames of any stream whose key it holds, refuses replayed counters
    (:class:`~latentcomm.wire.replay.ReplayMemory`, kept in ``state_path`` across restarts), seals the
    acknowledgements."""

    def __init__(
        self,
        keyring: Keyring,
        limits: v2.Limits | None = None,
        state_path: Path | None = None,
        max_age_s: float = DEFAULT_MAX_AGE_S,
    ) -> None:
        self.keyring = keyring
        self.limits = limits or v2.Limits()
        self.replay = ReplayMemory(state_path, max_age_s)
        # Stream keys derived lately (HKDF per stream is cheap, but not per frame).
        self._keys: collections.OrderedDict[tuple[bytes, bytes], tuple[ChaCha20Poly1305, ChaCha20Poly1305]] = (
            collections.OrderedDict()
        )

    def _stream(self, key: Key, stream_id: bytes) -> tuple[ChaCha20Poly1305, ChaCha20Poly1305]:
        k = (key.key_id, stream_id)
        aeads = self._keys.get(k)
        if aeads is None:
            s2r, r2s = _stream_keys(key, stream_id)
            aeads = self._keys[k] = (ChaCha20Poly1305(s2r), ChaCha20Poly1305(r2s))
            while len(self._keys) > 4096:
                self._keys.popitem(last=False)
        self._keys.move_to_end(k)
        return aeads

    def open(self, data: bytes) -> tuple[bytes, str, bytes]:
        """(inner v2 message, key id hex, stream id) of a sealed frame, or SealError."""
        ad, key_id, stream_id, nonce, sealed = _stream_parse(
            data, STREAM_OVERHEAD + v2.PREFIX.size + self.limits.max_body
        )
        key = self.keyring.get(key_id)
        if key is None:
            raise SealError(f"unknown key id {key_id.hex()}", v2.Status.UNKNOWN_KEY)
        if nonce[:4] != b"\0\0\0\0":
            raise SealError("sealed frame with a malformed nonce")
        counter = int.from_bytes(nonce[4:], "big")
        try:
            self.replay.check(key_id, stream_id, counter)
        except ReplayError as exc:
            raise SealError(str(exc)) from None
        aead, _ = self._stream(key, stream_id)
        try:
            inner = aead.decrypt(nonce, sealed, ad)
        except InvalidTag:
            raise SealError(f"sealed frame {counter} failed authentication (tampered, or another key)") from None
        self.replay.record(key_id, stream_id, counter)
        return inner, key.key_id_hex, stream_id

    def seal_ack(self, key_id_hex: str, stream_id: bytes, inner: bytes) -> bytes:
        key = self.keyring.keys[bytes.fromhex(key_id_hex)]
        _, aead = self._stream(key, stream_id)
        return _stream_seal(aead, key.key_id, stream_id, secrets.token_bytes(12), inner)
