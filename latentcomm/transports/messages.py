"""What the message transports share: one v2 frame per message and one acknowledgement back, through an
MQTT broker (:mod:`~latentcomm.transports.mqtt`) or Zenoh (:mod:`~latentcomm.transports.zenoh`).

- :class:`MessageSender`: a sender's identity (a sealed sender's id is its stream id, which every
  sealed frame authenticates), frames sealed afresh for each message, and acknowledgements read with
  the rule that once a receiver has answered authenticated, nothing in clear counts.
- :class:`MessageOpener`: a receiver's side: opening a sealed message and checking its stream against
  the sender it came as, reading exactly one v2 IMAGE, remembering answers to answer a resent copy
  without decoding twice, and refusing another frame under a used sequence number.
- :class:`AckWindow`: live video's window of frames in flight, a frame unanswered in time counting as
  lost (``KEY_FRAME_NEEDED``: the stream goes on from a key frame).

The carrier (topics and sessions, queries and replies) stays in each transport's module.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from latentcomm.errors import LatentcommError, ProtocolError, TransportError
from latentcomm.transports.base import ServerStats
from latentcomm.wire import v2
from latentcomm.wire.broker_seal import STREAM_OVERHEAD, TYPE_STREAM_SEALED, BrokerOpener, BrokerSealer
from latentcomm.wire.keys import Key, Keyring
from latentcomm.wire.sealed import SealError

log = logging.getLogger(__name__)

#: The only answers a sealed sender takes in clear (docs/security.md): from a receiver without its key.
PLAINTEXT_REFUSALS = (v2.Status.UNKNOWN_KEY, v2.Status.SEALING_REQUIRED)
#: Plaintext refusals a sealed sender must read (for different sends of its frames) before it gives up.
PLAINTEXT_REFUSALS_BELIEVED = 2
#: Answers a receiver remembers, to answer a resent frame without decoding it twice.
DEDUP_WINDOW = 100_000


class MessageSender:
    """The transport-independent half of a message sender (a :class:`~latentcomm.transports.base.FrameSender`)."""

    def __init__(
        self,
        broker: str,
        topic: str,
        timeout: float = 30.0,
        retries: int = 3,
        wait_for: float = 0.0,
        ack_timeout: float = 10.0,
        sender_id: str | None = None,
        key: Key | None = None,
        auth=None,
    ) -> None:
        """``broker``: the URL its transport takes (``auth``: its TLS and credentials, MQTT's BrokerAuth);
        ``timeout``: seconds to wait for a connection;
        ``ack_timeout``: seconds until a frame is sent again (``retries`` times at most); ``wait_for``:
        seconds to keep trying to reach the other end; a sealed sender's ``sender_id`` is its stream's."""
        self.sealer = BrokerSealer(key) if key is not None else None
        if self.sealer is not None:
            # A sealed sender's id is its stream id: authenticated in every frame, so receivers can
            # refuse a frame of one stream sent again under another sender's id.
            if sender_id is not None and sender_id != self.sealer.stream_id.hex():
                raise LatentcommError("a sealed sender's id is its stream id; don't give sender_id")
            sender_id = self.sealer.stream_id.hex()
        self.key = key
        self.sender_id = sender_id or uuid.uuid4().hex[:16]
        #: Bytes sealing adds to a message (the video sender's rate accounts for them).
        self.seal_overhead = STREAM_OVERHEAD + v2.PREFIX.size if key is not None else 0
        self.pace: float | None = None  # messages are not paced; the video encoder's rate holds them
        self.timeout, self.retries, self.ack_timeout = timeout, retries, ack_timeout
        self.reconnects = 0
        self.last_frame_bytes = 0
        self.forged_acks = 0
        self._authenticated = False  # a sealed acknowledgement has come: no plaintext answer counts now
        self._plain_refusals = 0  # plaintext refusals read before that (one alone is not believed)
        self.auth = auth
        self.connect(broker, topic, wait_for)

    def connect(self, broker: str, topic: str, wait_for: float) -> None:
        """Open the transport (its ids and topics follow from :attr:`sender_id`)."""
        raise NotImplementedError

    def __enter__(self) -> MessageSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def exchange(self, frame: v2.ImageFrame, until: float) -> Iterator[v2.Ack]:
        """Send ``frame`` once and yield the acknowledgements that come back by ``ack_timeout`` from now
        (and by ``until``, monotonic)."""
        raise NotImplementedError

    #: Where the frames go, as a failure names it.
    def where(self) -> str:
        raise NotImplementedError

    def send(self, frame: v2.ImageFrame) -> v2.Ack:
        """Send one frame and return its acknowledgement, sending it again when none comes in time."""
        until = time.monotonic() + self.timeout + self.retries * self.ack_timeout
        for attempt in range(self.retries + 1):
            for ack in self.exchange(frame, until):
                if ack.seq == frame.seq or (ack.seq == 0 and not ack.ok):
                    return ack
            if attempt < self.retries:
                log.info("no acknowledgement for frame %d in %.0f s; sending it again", frame.seq, self.ack_timeout)
        raise TransportError(f"no acknowledgement for frame {frame.seq} {self.where()} after {self.retries + 1} tries")

    def encode(self, frame: v2.ImageFrame) -> bytes:
        """The frame's message, sealed afresh each time (a frame sent again gets a new counter)."""
        plain = v2.encode_image(frame)
        data = self.sealer.seal(plain) if self.sealer is not None else plain
        self.last_frame_bytes = len(data)
        return data

    def read_ack(self, payload: bytes, where: str = "") -> v2.Ack | None:
        """The acknowledgement in a message, or None for one that is unreadable, forged or stale."""
        sealed = len(payload) > 5 and payload[5] == TYPE_STREAM_SEALED
        if self.sealer is not None and sealed:
            try:
                payload = self.sealer.open_ack(payload)
            except SealError as exc:
                self.forged_acks += 1
                log.warning("acknowledgement refused: %s", exc)
                return None
        conn = v2.Connection(v2.Role.SENDER)
        try:
            conn.receive_data(payload)
            event = conn.next_event()
        except ProtocolError as exc:
            log.warning("unreadable acknowledgement%s: %s", f" on {where}" if where else "", exc)
            return None
        if not isinstance(event, v2.Ack):
            return None
        if self.sealer is not None and not sealed:
            # In clear, only a receiver that can't open our stream may speak (UNKNOWN_KEY, or
            # SEALING_REQUIRED), and only until a receiver has answered us authenticated: after
            # that, anyone without the key could end this sender with a forged refusal.
            if event.ok or event.status not in PLAINTEXT_REFUSALS or self._authenticated:
                self.forged_acks += 1
                log.warning("an unauthenticated acknowledgement (%s) ignored: forged, or stale", event.status.name)
                return None
            self._plain_refusals += 1
            if self._plain_refusals < PLAINTEXT_REFUSALS_BELIEVED:
                # Anyone on a broker (or any Zenoh peer) can publish one; a receiver that really lacks
                # the key refuses the frame again when it is sent again.
                log.warning("a receiver refused in clear (%s: %s); waiting for the frame's next answer before "
                            "giving up", event.status.name, event.message)  # fmt: skip
                return None
        elif self.sealer is not None:
            self._authenticated = True
        return event


#: What :meth:`MessageOpener.open_message` gives: the frame, its plaintext, key id and stream id.
Opened = tuple[v2.ImageFrame, bytes, "str | None", "bytes | None"]


class Refused(Exception):
    """A message a receiver won't pass on: ``ack`` is the answer it gets (None: none)."""

    def __init__(self, reason: str, ack: v2.Ack | None, key_id: str | None = None, stream: bytes | None = None):
        super().__init__(reason)
        self.ack, self.key_id, self.stream = ack, key_id, stream


class MessageOpener:
    """The transport-independent half of a message receiver: statistics, rejections, sealing, copies."""

    #: How a refusal names where a sealed frame of another stream came in (``{sender}``: its id).
    came_as = "sent as sender {sender}"

    def __init__(
        self, v2_limits: v2.Limits | None, keyring: Keyring | None, replay_state: Path | None, queue_size: int
    ) -> None:
        self.opener = BrokerOpener(keyring, v2_limits, replay_state) if keyring else None
        self.limits = v2_limits or v2.Limits()
        self.frames: queue.Queue = queue.Queue(maxsize=queue_size)
        self.stats = ServerStats()
        self.on_reject: list = []
        self.on_stream_end: list = []
        self.active_connections = 0
        #: (sender, seq) -> (SHA-256 of the frame, the answer given): a copy is answered again only if
        #: it is the same frame; another frame under a used (sender, seq) is refused, never answered OK.
        self._done: OrderedDict[tuple[str, int], tuple[bytes, v2.Ack]] = OrderedDict()
        self._lock = threading.Lock()

    def _reject(self, peer: str, reason: str) -> None:
        with self._lock:
            self.stats.rejected += 1
        log.warning("rejected frame from %s: %s", peer, reason)
        for callback in self.on_reject:
            callback(peer, reason)

    def open_message(self, sender: str, peer: str, data: bytes) -> Opened:
        """(frame, its plaintext, key id, stream id) of one message from ``sender``; :class:`Refused`
        (already counted and logged) for one that isn't passed on."""
        with self._lock:
            self.stats.bytes_received += len(data)
        payload, key_id, stream = data, None, None
        if self.opener is not None:
            try:
                payload, key_id, stream = self.opener.open(data)
                if stream.hex() != sender:
                    came = self.came_as.format(sender=repr(sender[:32]))
                    raise SealError(f"a frame of sealed stream {stream.hex()[:16]}... {came} (replayed from elsewhere)")
            except SealError as exc:
                self._reject(peer, str(exc))
                # In clear: there is no session to seal with.
                ack = v2.Ack(0, exc.status, str(exc)) if exc.status in PLAINTEXT_REFUSALS else None
                raise Refused(str(exc), ack) from None
        conn = v2.Connection(v2.Role.RECEIVER, self.limits)
        try:
            conn.receive_data(payload)
            conn.receive_eof()
            frame = conn.next_event()
            if not isinstance(frame, v2.ImageFrame) or conn.next_event() is not v2.CLOSED:
                raise ProtocolError("a message must hold exactly one v2 IMAGE")
        except v2.FrameRejected as exc:
            self._reject(peer, f"seq {exc.seq}: {exc}")
            raise Refused(str(exc), v2.Ack(exc.seq, exc.status, str(exc)), key_id, stream) from None
        except ProtocolError as exc:
            self._reject(peer, str(exc))
            raise Refused(str(exc), None) from None
        return frame, payload, key_id, stream

    def answered_before(self, sender: str, peer: str, seq: int, payload: bytes) -> v2.Ack | None:
        """The answer already given to this frame (a copy sent again: answer it, don't decode it), None
        for a new frame; :class:`Refused` for another frame under a used sequence number."""
        with self._lock:
            done = self._done.get((sender, seq))
        if done is None:
            return None
        if done[0] != hashlib.sha256(payload).digest():
            reason = f"seq {seq} was already used for another frame of this sender: refused"
            self._reject(peer, reason)
            raise Refused(reason, v2.Ack(seq, v2.Status.MALFORMED, reason))
        log.info("a copy of %s seq %d: answered again, not decoded", peer, seq)
        return done[1]

    def remember(self, sender: str, seq: int, payload: bytes, ack: v2.Ack) -> None:
        """Keep the answer a frame got (not a SHUTTING_DOWN: that frame is still to be decoded)."""
        if ack.status == v2.Status.SHUTTING_DOWN:
            return
        with self._lock:
            self._done[(sender, seq)] = (hashlib.sha256(payload).digest(), ack)
            while len(self._done) > DEDUP_WINDOW:
                self._done.popitem(last=False)

    def ack_bytes(self, ack: v2.Ack, key_id: str | None = None, stream: bytes | None = None) -> bytes:
        """An acknowledgement's message: sealed for the stream it answers, when that was sealed."""
        data = v2.encode_ack(ack)
        if key_id is not None and stream is not None and self.opener is not None:
            data = self.opener.seal_ack(key_id, stream, data)
        return data


class AckWindow:
    """Up to ``window`` frames in flight, answers on ``acks`` as ``(seq, Ack, arrival time)``; a frame
    unanswered after ``ack_timeout`` comes out as ``KEY_FRAME_NEEDED``, and so does a key-frame request
    that names no frame (seq 0: a viewer joining, a new owner). The transport sends; this keeps count."""

    def __init__(self, client: MessageSender, window: int, ack_timeout: float, via: str) -> None:
        if window < 1:
            raise ValueError("the window holds at least one frame")
        self.client = client
        self.window, self.ack_timeout, self.via = window, ack_timeout, via
        self.acks: queue.Queue[tuple[int, v2.Ack, float]] = queue.Queue()
        #: Also hold the next frame while the ones in flight hold this many payload bytes.
        self.max_bytes: float | None = None
        self._inflight: dict[int, tuple[int, float]] = {}  # seq -> (payload bytes, sent at)
        self._cond = threading.Condition()
        self._fatal: str | None = None
        self._closed = False
        threading.Thread(target=self._expire, name="video-acks", daemon=True).start()

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._inflight)

    @property
    def reconnects(self) -> int:
        return self.client.reconnects

    def answered(self, ack: v2.Ack) -> None:
        """An acknowledgement came (any, for any frame: those of frames not in flight are dropped)."""
        now = time.monotonic()
        if ack.seq == 0:
            if ack.status == v2.Status.KEY_FRAME_NEEDED:
                self.acks.put((0, ack, now))
            elif not ack.ok:  # a receiver that can't open our frames (UNKNOWN_KEY, SEALING_REQUIRED)
                with self._cond:
                    self._fatal = f"{ack.status.name}: {ack.message}"
                    self._cond.notify_all()
            return
        with self._cond:
            known = self._inflight.pop(ack.seq, None) is not None
            self._cond.notify_all()
        if known:
            self.acks.put((ack.seq, ack, now))

    def _expire(self) -> None:
        while not self._closed:
            time.sleep(0.05)
            now = time.monotonic()
            with self._cond:
                late = [seq for seq, (_, t) in self._inflight.items() if now - t > self.ack_timeout]
                for seq in late:
                    del self._inflight[seq]
                if late:
                    self._cond.notify_all()
            for seq in late:
                reason = f"no acknowledgement {self.via} in {self.ack_timeout:g} s"
                self.acks.put((seq, v2.Ack(seq, v2.Status.KEY_FRAME_NEEDED, reason), now))

    def admit(self, frame: v2.ImageFrame) -> None:
        """Wait for room for ``frame`` in the window (and under ``max_bytes``), then count it in flight."""
        size = len(frame.payload)
        with self._cond:
            while not self._fatal and (
                len(self._inflight) >= self.window
                or (self._inflight and self.max_bytes is not None
                    and sum(n for n, _ in self._inflight.values()) + size > self.max_bytes)
            ):  # fmt: skip
                self._cond.wait(timeout=0.1)
            if self._fatal:
                raise TransportError(f"the receivers refused the stream: {self._fatal}")
            self._inflight[frame.seq] = (size, time.monotonic())

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._inflight and time.monotonic() < deadline:
                self._cond.wait(timeout=0.05)

    def close(self) -> None:
        self._closed = True
        self.client.close()
