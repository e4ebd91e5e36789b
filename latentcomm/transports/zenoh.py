"""Frames through Zenoh (eclipse-zenoh), peer to peer: ``--broker zenoh://HOST:PORT``.

The bytes are the same v2 frames as over TCP and MQTT (sans-I/O, :mod:`latentcomm.wire.v2`); Zenoh's
query/reply carries them, which is exactly a frame and its acknowledgement:

    latentcomm/<topic>/frames/<sender id>   a sender's query, its payload one v2 IMAGE (sealed or not)
    the query's reply                       the receiver's v2 ACK for that frame, after decoding

A receiver listens on ``tcp/HOST:PORT`` and declares a complete queryable on
``latentcomm/<topic>/frames/*``; a sender connects there and sends each frame as a query, so Zenoh
hands it to one receiver and the answer comes back on the same query. A frame whose answer does not
come in ``ack_timeout`` is sent again (``--retries`` times); the receiver answers a copy of a frame it
already decoded from its memory (by sender id, sequence number and SHA-256), without decoding twice,
and refuses another frame under a used sequence number. Live video (:class:`ZenohPipeline`) keeps up
to ``window`` queries in flight; a frame not answered in time counts as lost (``KEY_FRAME_NEEDED``).

With a key, every message is sealed end to end exactly as through an MQTT broker
(:mod:`latentcomm.wire.broker_seal`, docs/security.md): a sealed sender's id is its stream id, which
every sealed frame authenticates.

Not here (MQTT has them): a broker that keeps frames for a receiver that is away, groups of
receivers sharing one topic's still images by subscription, viewers. A Zenoh router (``zenohd``)
in between is not needed for two peers and is not tested.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from urllib.parse import urlparse

import zenoh

from latentcomm.errors import LatentcommError, ProtocolError, TransportError
from latentcomm.transports.base import ReceivedFrame, ServerStats
from latentcomm.wire import v2
from latentcomm.wire.broker_seal import STREAM_OVERHEAD, TYPE_STREAM_SEALED, BrokerOpener, BrokerSealer
from latentcomm.wire.keys import Key, Keyring
from latentcomm.wire.sealed import SealError

log = logging.getLogger(__name__)

#: Answers remembered per receiver, to answer a resent frame without decoding it twice.
DEDUP_WINDOW = 100_000


def parse_endpoint(url: str) -> str:
    """``zenoh://HOST:PORT`` -> Zenoh's endpoint ``tcp/HOST:PORT`` (port 7447 by default)."""
    u = urlparse(url)
    if u.scheme != "zenoh" or not u.hostname:
        raise LatentcommError(f"--broker must look like zenoh://HOST:PORT, got {url!r}")
    try:
        port = u.port or 7447
    except ValueError:
        raise LatentcommError(f"--broker {url!r}: bad port") from None
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return f"tcp/{host}:{port}"


def check_topic(topic: str) -> str:
    if not topic or any(c in topic for c in "*$?#\0") or topic.startswith("/") or topic.endswith("/") or "//" in topic:
        raise LatentcommError(f"--topic {topic!r}: use letters, digits, '-', '_' and inner '/' only")
    return topic


def _open(listen: str | None = None, connect: str | None = None, wait_for: float = 0.0) -> zenoh.Session:
    """A peer session that listens on or connects to one endpoint, nothing else (no multicast
    scouting: a receiver must not pick up strangers' senders on the LAN)."""
    config = zenoh.Config()
    config.insert_json5("mode", '"peer"')
    config.insert_json5("scouting/multicast/enabled", "false")
    if listen:
        config.insert_json5("listen/endpoints", json.dumps([listen]))
    if connect:
        config.insert_json5("connect/endpoints", json.dumps([connect]))
    deadline = time.monotonic() + wait_for
    while True:
        try:
            return zenoh.open(config)
        except zenoh.ZError as exc:
            if time.monotonic() < deadline:
                time.sleep(0.25)
                continue
            where = f"listen on {listen}" if listen else f"reach a receiver at {connect}"
            raise TransportError(f"Zenoh could not {where}: {str(exc).splitlines()[0]}") from None


class ZenohSender:
    """Sends v2 frames as Zenoh queries and returns each one's acknowledgement (a :class:`FrameSender`)."""

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
    ) -> None:
        self.sealer = BrokerSealer(key) if key is not None else None
        if self.sealer is not None:
            if sender_id is not None and sender_id != self.sealer.stream_id.hex():
                raise LatentcommError("a sealed sender's id is its stream id; don't give sender_id")
            sender_id = self.sealer.stream_id.hex()
        self.endpoint = parse_endpoint(broker)
        self.topic = check_topic(topic)
        self.sender_id = sender_id or uuid.uuid4().hex[:16]
        self.key_expr = f"latentcomm/{topic}/frames/{self.sender_id}"
        self.seal_overhead = STREAM_OVERHEAD + v2.PREFIX.size if key is not None else 0
        self.pace: float | None = None
        self.timeout, self.retries, self.ack_timeout = timeout, retries, ack_timeout
        self.reconnects = 0
        self.last_frame_bytes = 0
        self.forged_acks = 0
        self._authenticated = False
        self.session = _open(connect=self.endpoint, wait_for=wait_for)

    def __enter__(self) -> ZenohSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def encode(self, frame: v2.ImageFrame) -> bytes:
        """The frame's bytes on the wire, sealed afresh each time (a resent frame gets a new counter)."""
        plain = v2.encode_image(frame)
        data = self.sealer.seal(plain) if self.sealer is not None else plain
        self.last_frame_bytes = len(data)
        return data

    def read_ack(self, payload: bytes) -> v2.Ack | None:
        """The acknowledgement in a reply, or None for one that is unreadable or not authentic."""
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
            log.warning("unreadable acknowledgement: %s", exc)
            return None
        if not isinstance(event, v2.Ack):
            return None
        if self.sealer is not None:
            if not sealed and (event.ok or event.status not in (v2.Status.UNKNOWN_KEY, v2.Status.SEALING_REQUIRED)
                               or self._authenticated):  # fmt: skip
                self.forged_acks += 1
                log.warning("an unauthenticated acknowledgement (%s) ignored", event.status.name)
                return None
            self._authenticated |= sealed
        return event

    def send(self, frame: v2.ImageFrame) -> v2.Ack:
        """Send one frame and return its acknowledgement, sending it again when none comes in time."""
        for attempt in range(self.retries + 1):
            replies = self.session.get(self.key_expr, payload=self.encode(frame), timeout=self.ack_timeout)
            for reply in replies:
                if reply.ok is None:
                    continue
                ack = self.read_ack(reply.ok.payload.to_bytes())
                if ack is not None and (ack.seq == frame.seq or (ack.seq == 0 and not ack.ok)):
                    return ack
            if attempt < self.retries:
                log.info("no acknowledgement for frame %d in %.0f s; sending it again", frame.seq, self.ack_timeout)
        raise TransportError(
            f"no acknowledgement for frame {frame.seq} from a receiver at {self.endpoint} "
            f"after {self.retries + 1} tries"
        )

    def pipeline(self, window: int = 4, ack_timeout: float = 2.0) -> ZenohPipeline:
        """Live video over this sender (a :class:`FramePipeline`)."""
        return ZenohPipeline(self, window, ack_timeout)


class ZenohPipeline:
    """Up to ``window`` frames in flight as Zenoh queries; answers come back on ``acks`` as they arrive,
    and a frame unanswered after ``ack_timeout`` counts as lost (``KEY_FRAME_NEEDED``)."""

    def __init__(self, sender: ZenohSender, window: int = 4, ack_timeout: float = 2.0) -> None:
        if window < 1:
            raise ValueError("the window holds at least one frame")
        self.client = sender
        self.window, self.ack_timeout = window, ack_timeout
        self.acks: queue.Queue[tuple[int, v2.Ack, float]] = queue.Queue()
        self.max_bytes: float | None = None
        self._inflight: dict[int, tuple[int, float]] = {}  # seq -> (payload bytes, sent at)
        self._cond = threading.Condition()
        self._fatal: str | None = None
        self._closed = False
        threading.Thread(target=self._expire, name="zenoh-acks", daemon=True).start()

    @property
    def reconnects(self) -> int:
        return self.client.reconnects

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._inflight)

    def _answered(self, seq: int, reply: zenoh.Reply) -> None:
        ack = self.client.read_ack(reply.ok.payload.to_bytes()) if reply.ok is not None else None
        if ack is None:
            return
        now = time.monotonic()
        with self._cond:
            if ack.seq == 0 and not ack.ok and ack.status != v2.Status.KEY_FRAME_NEEDED:
                self._fatal = f"{ack.status.name}: {ack.message}"
            known = self._inflight.pop(ack.seq if ack.seq else seq, None) is not None
            self._cond.notify_all()
        if known:
            self.acks.put((ack.seq or seq, ack, now))

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
                reason = f"no acknowledgement through Zenoh in {self.ack_timeout:g} s"
                self.acks.put((seq, v2.Ack(seq, v2.Status.KEY_FRAME_NEEDED, reason), now))

    def submit(self, frame: v2.ImageFrame) -> None:
        size = len(frame.payload)
        with self._cond:
            while not self._fatal and (
                len(self._inflight) >= self.window
                or (self._inflight and self.max_bytes is not None
                    and sum(n for n, _ in self._inflight.values()) + size > self.max_bytes)
            ):  # fmt: skip
                self._cond.wait(timeout=0.1)
            if self._fatal:
                raise TransportError(f"the receiver refused the stream: {self._fatal}")
            self._inflight[frame.seq] = (size, time.monotonic())
        seq = frame.seq
        self.client.session.get(
            self.client.key_expr,
            handler=lambda reply: self._answered(seq, reply),
            payload=self.client.encode(frame),
            timeout=self.ack_timeout,
        )

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._inflight and time.monotonic() < deadline:
                self._cond.wait(timeout=0.05)

    def close(self) -> None:
        self._closed = True
        self.client.close()


class ZenohSource:
    """A receiver's end (a :class:`FrameSource`): listens on the endpoint and answers each frame's query
    with its acknowledgement once ``Receiver.serve`` has decided it."""

    def __init__(
        self,
        broker: str,
        topic: str,
        v2_limits: v2.Limits | None = None,
        queue_size: int = 64,
        wait_for: float = 10.0,
        keyring: Keyring | None = None,
        replay_state: Path | None = None,
    ) -> None:
        self.opener = BrokerOpener(keyring, v2_limits, replay_state) if keyring else None
        self.endpoint = parse_endpoint(broker)
        self.topic = check_topic(topic)
        self.limits = v2_limits or v2.Limits()
        self.frames: queue.Queue[ReceivedFrame] = queue.Queue(maxsize=queue_size)
        self.stats = ServerStats()
        self.on_reject: list = []
        self.active_connections = 0
        host, _, port = self.endpoint.removeprefix("tcp/").rpartition(":")
        self.address = (f"zenoh://{host}", int(port))
        self.wait_for = wait_for
        self._done: OrderedDict[tuple[str, int], tuple[bytes, v2.Ack]] = OrderedDict()
        self._lock = threading.Lock()
        self.session: zenoh.Session | None = None
        self.queryable = None

    @classmethod
    def from_args(cls, args, v2_limits: v2.Limits, keyring: Keyring | None, replay_state: Path | None) -> ZenohSource:
        """The receiver's flags; those only a broker has (``--viewer``) are refused in one line."""
        if getattr(args, "viewer", False):
            raise LatentcommError("--viewer watches streams through an MQTT broker; Zenoh has no viewers")
        return cls(args.broker, args.topic, v2_limits, keyring=keyring, replay_state=replay_state)

    def start(self) -> ZenohSource:
        self.session = _open(listen=self.endpoint, wait_for=self.wait_for)
        self.queryable = self.session.declare_queryable(
            f"latentcomm/{self.topic}/frames/*", self._on_query, complete=True
        )
        log.info("listening for frames on %s, latentcomm/%s/frames/*", self.endpoint, self.topic)
        return self

    def _reject(self, peer: str, reason: str) -> None:
        with self._lock:
            self.stats.rejected += 1
        log.warning("rejected frame from %s: %s", peer, reason)
        for callback in self.on_reject:
            callback(peer, reason)

    def _answer(self, query, ack: v2.Ack, key_id: str | None = None, stream: bytes | None = None) -> None:
        data = v2.encode_ack(ack)
        if key_id is not None and stream is not None and self.opener is not None:
            data = self.opener.seal_ack(key_id, stream, data)
        try:
            query.reply(query.key_expr, data)
        except zenoh.ZError as exc:  # the sender gave up on it (its timeout), or left
            log.info("acknowledgement not delivered: %s", exc)
        finally:
            query.drop()

    def _on_query(self, query) -> None:
        sender = str(query.key_expr).rsplit("/", 1)[-1]
        peer = f"zenoh:{sender}"
        payload = query.payload.to_bytes() if query.payload is not None else b""
        with self._lock:
            self.stats.bytes_received += len(payload)
        key_id, stream = None, None
        if self.opener is not None:
            try:
                payload, key_id, stream = self.opener.open(payload)
                if stream.hex() != sender:
                    raise SealError(f"a frame of sealed stream {stream.hex()[:16]}... sent as sender {sender[:32]!r}")
            except SealError as exc:
                self._reject(peer, str(exc))
                if exc.status in (v2.Status.UNKNOWN_KEY, v2.Status.SEALING_REQUIRED):
                    self._answer(query, v2.Ack(0, exc.status, str(exc)))
                else:
                    query.drop()
                return
        conn = v2.Connection(v2.Role.RECEIVER, self.limits)
        try:
            conn.receive_data(payload)
            conn.receive_eof()
            frame = conn.next_event()
            if not isinstance(frame, v2.ImageFrame) or conn.next_event() is not v2.CLOSED:
                raise ProtocolError("a Zenoh query must hold exactly one v2 IMAGE")
        except v2.FrameRejected as exc:
            self._reject(peer, f"seq {exc.seq}: {exc}")
            self._answer(query, v2.Ack(exc.seq, exc.status, str(exc)), key_id, stream)
            return
        except ProtocolError as exc:
            self._reject(peer, str(exc))
            query.drop()
            return
        digest = hashlib.sha256(payload).digest()
        with self._lock:
            done = self._done.get((sender, frame.seq))
        if done is not None:
            if done[0] != digest:
                reason = f"seq {frame.seq} was already used for another frame of this sender: refused"
                self._reject(peer, reason)
                self._answer(query, v2.Ack(frame.seq, v2.Status.MALFORMED, reason), key_id, stream)
            else:  # sent again (its answer was late): answered again, not decoded twice
                self._answer(query, done[1], key_id, stream)
            return
        reply: Future = Future()
        reply.add_done_callback(lambda f: self._finished(query, sender, frame.seq, f.result(), digest, key_id, stream))
        try:
            self.frames.put_nowait(ReceivedFrame(frame, peer, len(payload), 0.0, reply, key_id))
            with self._lock:
                self.stats.frames += 1
        except queue.Full:  # unanswered: the sender's timeout sends it again
            log.warning("decode queue full: frame %s seq %d not taken", peer, frame.seq)
            query.drop()

    def _finished(self, query, sender: str, seq: int, ack: v2.Ack, digest: bytes, key_id, stream) -> None:
        if ack.status != v2.Status.SHUTTING_DOWN:
            with self._lock:
                self._done[(sender, seq)] = (digest, ack)
                while len(self._done) > DEDUP_WINDOW:
                    self._done.popitem(last=False)
        self._answer(query, ack, key_id, stream)

    def stop_accepting(self) -> None:
        if self.queryable is not None:
            self.queryable.undeclare()
            self.queryable = None

    def close(self) -> None:
        self.stop_accepting()
        if self.session is not None:
            self.session.close()
            self.session = None


#: The names the transport registry (:data:`latentcomm.transports.BROKERS`) looks up.
Sender, Source = ZenohSender, ZenohSource
