"""Frames through an MQTT broker (paho-mqtt >= 2, e.g. Mosquitto): senders publish, receivers share.

The bytes are the same v2 frames as over TCP (sans-I/O, ``protocol_v2``); only the carrier changes:

    latentcomm/<topic>/frames/<sender id>   IMAGE frames, QoS 1, one v2 message per MQTT message
    latentcomm/<topic>/acks/<sender id>     the receivers' ACK messages for that sender, QoS 1

Receivers subscribe through a shared subscription (``$share/<group>/latentcomm/<topic>/frames/+``),
so the broker hands each frame to one receiver of the group and adding a receiver adds decode
throughput. Delivery is at least once, end to end:

- every client keeps a persistent session, so a client that drops and comes back with the same
  client id gets what was queued for it. A receiver's session (MQTT 5) expires ``session_expiry``
  seconds after it went away: the broker hands shared-subscription frames to offline members too
  (Mosquitto measured: with one of two receivers killed, every later frame first went to the dead
  one and cost its sender an ack timeout), so a receiver that is gone for good must leave the group.
  What its session still held is published again by the senders, whose ACK never came;
- a receiver acknowledges an MQTT message to the broker only after the frame was decoded (manual
  acks), so a receiver killed mid-frame leaves it with the broker;
- a sender waits for the receivers' ACK per frame and publishes it again when none comes in
  ``ack_timeout`` (a receiver died holding it, the broker restarted): another receiver of the group
  takes it, and the sender knows per image what was decoded;
- receivers drop duplicates by (sender id, seq), answering them again without decoding twice, but
  only when the copy is the same frame (its SHA-256); another frame under a used (sender id, seq) is
  refused. A sealed sender's id is its stream id, which every sealed frame authenticates, so a frame
  of one stream replayed on another sender's topic is refused and can't make that sender's real
  frames look like duplicates.

Which receiver decodes which frame is the broker's choice, so two receivers can each decode one
copy of a frame the sender published twice; the receivers' reports, merged by (sender, seq), count
every frame once.

With a key (``--key``) every message is sealed end to end (``BrokerSealer``/``BrokerOpener``,
docs/security.md): the broker routes and stores frames it can neither read nor forge, receivers
refuse replayed counters, and a sender accepts only authenticated acknowledgements.
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

from latentcomm.errors import LatentcommError, ProtocolError, TransportError
from latentcomm.transports.base import ReceivedFrame, ServerStats
from latentcomm.wire import v2
from latentcomm.wire.broker_seal import STREAM_OVERHEAD, TYPE_STREAM_SEALED, BrokerOpener, BrokerSealer
from latentcomm.wire.keys import Key, Keyring
from latentcomm.wire.sealed import SealError

log = logging.getLogger(__name__)

DEFAULT_GROUP = "receivers"
DEDUP_WINDOW = 100_000
#: Seconds a receiver's claim on a video stream lasts unless renewed (it renews every third of it).
DEFAULT_LEASE_S = 3.0
#: The only answers a sealed sender takes in clear (docs/security.md): from a receiver without its key.
PLAINTEXT_REFUSALS = (v2.Status.UNKNOWN_KEY, v2.Status.SEALING_REQUIRED)


def parse_broker(url: str) -> tuple[str, int]:
    """mqtt://HOST[:PORT] -> (host, port); 1883 by default."""
    u = urlparse(url)
    if u.scheme != "mqtt" or not u.hostname:
        raise LatentcommError(f"--broker must look like mqtt://HOST:PORT, got {url!r}")
    try:
        return u.hostname, u.port or 1883
    except ValueError:
        raise LatentcommError(f"--broker {url!r}: bad port") from None


def check_topic(topic: str) -> str:
    if not topic or any(c in topic for c in "#+$\0") or topic.startswith("/") or topic.endswith("/"):
        raise LatentcommError(f"--topic {topic!r}: use letters, digits, '-', '_' and inner '/' only")
    return topic


#: Seconds a receiver's session outlives its connection (``--session-expiry``): long enough to ride
#: out a restart or a network blip with its queued frames, short enough that a dead receiver stops
#: being handed frames before its senders' retries run out.
DEFAULT_SESSION_EXPIRY = 10


def _client(client_id: str, manual_ack: bool = False, v5: bool = False):
    """A paho client with a persistent session: MQTT 3.1.1 (senders), or MQTT 5 (receivers, whose
    session must expire, which 3.1.1 can't say)."""
    import paho.mqtt.client as mqtt

    session = {"protocol": mqtt.MQTTv5} if v5 else {"clean_session": False, "protocol": mqtt.MQTTv311}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, manual_ack=manual_ack, **session)
    c.reconnect_delay_set(0.2, 2.0)
    c.max_inflight_messages_set(20)
    c.max_queued_messages_set(0)
    return c


def _connect(client, host: str, port: int, wait_for: float, session_expiry: int | None = None) -> None:
    """Connect, retrying for ``wait_for`` seconds; with ``session_expiry`` (MQTT 5) the session is kept
    (clean start off) for that many seconds after a disconnect. paho reconnects with the same options."""
    extra: dict = {}
    if session_expiry is not None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry
        extra = {"clean_start": False, "properties": props}
    deadline = time.monotonic() + wait_for
    while True:
        try:
            client.connect(host, port, keepalive=10, **extra)
            return
        except OSError as exc:
            if time.monotonic() < deadline:
                time.sleep(0.25)
                continue
            raise TransportError(f"cannot reach the MQTT broker at {host}:{port}: {exc.strerror or exc}") from None


class MqttSender:
    """Publishes v2 frames and waits for each frame's ACK; the V2Client interface over a broker."""

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
            # A sealed sender's topic id is its stream id: authenticated in every frame, so receivers
            # can refuse a frame of one stream republished on another sender's topic.
            if sender_id is not None and sender_id != self.sealer.stream_id.hex():
                raise LatentcommError("a sealed broker sender's id is its stream id; don't give sender_id")
            sender_id = self.sealer.stream_id.hex()
        self.key = key
        #: Bytes sealing adds to a message through the broker (the video sender's rate accounts for it).
        self.seal_overhead = STREAM_OVERHEAD + v2.PREFIX.size if key is not None else 0
        self.pace: float | None = None  # the broker link is not paced; the video encoder's rate holds it
        #: Where acknowledgements go instead of send()'s queue (a BrokerPipeline's reader).
        self.on_ack = None
        self.forged_acks = 0
        self._authenticated = False  # a sealed acknowledgement has come: no plaintext answer counts now
        self.host, self.port = parse_broker(broker)
        self.topic = check_topic(topic)
        self.sender_id = sender_id or uuid.uuid4().hex[:16]
        self.frames_topic = f"latentcomm/{topic}/frames/{self.sender_id}"
        self.video_topic = f"latentcomm/{topic}/video/{self.sender_id}"
        self.acks_topic = f"latentcomm/{topic}/acks/{self.sender_id}"
        self.timeout = timeout
        self.retries = retries
        self.ack_timeout = ack_timeout
        self.reconnects = 0
        self.last_frame_bytes = 0
        self._acks: queue.Queue[v2.Ack] = queue.Queue()
        self._connected = threading.Event()
        self._closing = False
        self.client = _client(f"latentcomm-send-{self.sender_id}")
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        _connect(self.client, self.host, self.port, wait_for)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise TransportError(f"the MQTT broker at {self.host}:{self.port} did not accept the connection")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        client.subscribe(self.acks_topic, qos=1)
        if self._connected.is_set() or flags.session_present:
            self.reconnects += 1
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self._closing:
            log.info("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        payload = msg.payload
        sealed = len(payload) > 5 and payload[5] == TYPE_STREAM_SEALED
        if self.sealer is not None and sealed:
            try:
                payload = self.sealer.open_ack(payload)
            except SealError as exc:
                self.forged_acks += 1
                log.warning("acknowledgement refused: %s", exc)
                return
        conn = v2.Connection(v2.Role.SENDER)
        try:
            conn.receive_data(payload)
            event = conn.next_event()
        except ProtocolError as exc:
            log.warning("unreadable acknowledgement on %s: %s", msg.topic, exc)
            return
        if not isinstance(event, v2.Ack):
            return
        if self.sealer is not None and not sealed:
            # In clear, only a receiver that can't open our stream may speak (UNKNOWN_KEY, or
            # SEALING_REQUIRED), and only until a receiver has answered us authenticated: after
            # that, anyone without the key could end this sender with a forged refusal.
            if event.ok or event.status not in PLAINTEXT_REFUSALS or self._authenticated:
                self.forged_acks += 1
                log.warning("an unauthenticated acknowledgement (%s) ignored: forged, or stale", event.status.name)
                return
        elif self.sealer is not None:
            self._authenticated = True
        if self.on_ack is not None:
            self.on_ack(event)
        else:
            self._acks.put(event)

    def __enter__(self) -> MqttSender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()

    def pipeline(self, window: int = 4, ack_timeout: float = 2.0) -> BrokerPipeline:
        """Live video through the broker (a :class:`~latentcomm.transports.base.FramePipeline`)."""
        return BrokerPipeline(self, window, ack_timeout)

    def send(self, frame: v2.ImageFrame) -> v2.Ack:
        """Publish one frame and return the receivers' ACK for it, publishing again on silence."""
        plain = v2.encode_image(frame)
        deadline = time.monotonic() + self.timeout + self.retries * self.ack_timeout
        for attempt in range(self.retries + 1):
            data = self.sealer.seal(plain) if self.sealer is not None else plain  # sealed afresh each time
            self.last_frame_bytes = len(data)
            self.client.publish(self.frames_topic, data, qos=1)
            wait_until = min(deadline, time.monotonic() + self.ack_timeout)
            while (left := wait_until - time.monotonic()) > 0:
                try:
                    ack = self._acks.get(timeout=left)
                except queue.Empty:
                    break
                if ack.seq == frame.seq or (ack.seq == 0 and not ack.ok):
                    return ack
            if attempt < self.retries:
                log.info("no acknowledgement for frame %d in %.0f s; publishing it again", frame.seq, self.ack_timeout)
        raise TransportError(
            f"no acknowledgement for frame {frame.seq} through the broker {self.host}:{self.port} after "
            f"{self.retries + 1} publications"
        )


class BrokerPipeline:
    """Live video through a broker: ``transport.Pipeline``'s interface over an :class:`MqttSender`.

    Frames go to ``latentcomm/<topic>/video/<sender id>``, where every receiver of a group and any
    number of viewers subscribe without sharing (one inter-coded stream can't be split frame by frame
    across a shared subscription). The group's receivers agree on one owner per stream, who alone
    decodes it for the group and acknowledges (``MqttServer``). Up to ``window`` frames are in flight;
    a frame not acknowledged within ``ack_timeout`` counts as lost (``KEY_FRAME_NEEDED``: the stream
    goes on from a key frame, as when a new owner takes over). A key-frame request that names no
    frame (seq 0: a viewer joining, a new owner) comes out of ``acks`` with seq 0.
    """

    def __init__(self, sender: MqttSender, window: int = 4, ack_timeout: float = 2.0) -> None:
        self.client = sender
        self.window = window
        self.ack_timeout = ack_timeout
        self.acks: queue.Queue[tuple[int, v2.Ack, float]] = queue.Queue()
        self.max_bytes: float | None = None
        self._inflight: dict[int, tuple[int, float]] = {}
        self._cond = threading.Condition()
        self._fatal: str | None = None
        self._closed = False
        sender.on_ack = self._on_ack
        threading.Thread(target=self._expire, name="video-acks", daemon=True).start()

    @property
    def reconnects(self) -> int:
        return self.client.reconnects

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._inflight)

    def _on_ack(self, ack: v2.Ack) -> None:
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
            time.sleep(0.1)
            now = time.monotonic()
            with self._cond:
                late = [seq for seq, (_, t) in self._inflight.items() if now - t > self.ack_timeout]
                for seq in late:
                    self._inflight.pop(seq)
                if late:
                    self._cond.notify_all()
            for seq in late:
                reason = f"no acknowledgement through the broker in {self.ack_timeout:g} s"
                self.acks.put((seq, v2.Ack(seq, v2.Status.KEY_FRAME_NEEDED, reason), now))

    def submit(self, frame: v2.ImageFrame) -> None:
        size = len(frame.payload)
        with self._cond:
            while not self._fatal and (
                len(self._inflight) >= self.window
                or (
                    self._inflight
                    and self.max_bytes is not None
                    and sum(n for n, _ in self._inflight.values()) + size > self.max_bytes
                )  # fmt: skip
            ):
                self._cond.wait(timeout=0.1)
            if self._fatal:
                raise TransportError(f"the broker's receivers refused the stream: {self._fatal}")
            self._inflight[frame.seq] = (size, time.monotonic())
        plain = v2.encode_image(frame)
        data = self.client.sealer.seal(plain) if self.client.sealer is not None else plain
        self.client.client.publish(self.client.video_topic, data, qos=1)

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._inflight and time.monotonic() < deadline:
                self._cond.wait(timeout=0.05)

    def close(self) -> None:
        self._closed = True
        self.client.close()


class MqttServer:
    """A receiver's side of the broker, with FrameServer's interface (``frames``, ``stats``,
    ``stop_accepting``, ``on_reject``), so ``Receiver.serve`` runs unchanged."""

    def __init__(
        self,
        broker: str,
        topic: str,
        group: str = DEFAULT_GROUP,
        client_id: str | None = None,
        v2_limits: v2.Limits | None = None,
        queue_size: int = 64,
        wait_for: float = 10.0,
        keyring: Keyring | None = None,
        session_expiry: int = DEFAULT_SESSION_EXPIRY,
        replay_state: Path | None = None,
        viewer: bool = False,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        if session_expiry < 0 or session_expiry > 0xFFFFFFFF:
            raise LatentcommError(f"--session-expiry {session_expiry}: give 0 to 4294967295 seconds")
        self.opener = BrokerOpener(keyring, v2_limits, replay_state) if keyring else None
        self.host, self.port = parse_broker(broker)
        self.topic = check_topic(topic)
        if not group or any(c in group for c in "/#+"):
            raise LatentcommError(f"--group {group!r}: no '/', '#' or '+'")
        self.subscription = f"$share/{group}/latentcomm/{topic}/frames/+"
        self.limits = v2_limits or v2.Limits()
        self.frames: queue.Queue[ReceivedFrame] = queue.Queue(maxsize=queue_size)
        self.stats = ServerStats()
        self.on_reject: list = []
        self.active_connections = 0
        self.address = (f"mqtt://{self.host}", self.port)
        self.client_id = client_id or f"latentcomm-recv-{uuid.uuid4().hex[:12]}"
        #: (sender, seq) -> (SHA-256 of the frame, the answer given): a copy is answered again only if
        #: it is the same frame; another frame under a used (sender, seq) is refused, never answered OK.
        self._done: OrderedDict[tuple[str, int], tuple[bytes, v2.Ack]] = OrderedDict()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # Video streams (latentcomm/<topic>/video/<sender>): every receiver subscribes without sharing;
        # a group's receivers agree on one owner per stream (retained claims under owners/, renewed
        # every lease/3 s, dropped at once by a receiver's last will under gone/), and only the owner
        # decodes and acknowledges. A viewer decodes every stream and acknowledges none.
        self.viewer = viewer
        self.lease_s = lease_s
        self.video_subscription = f"latentcomm/{topic}/video/+"
        self._owners: dict[str, tuple[str, float]] = {}  # sender -> (owner client id, lease end)
        self._mine: dict[str, float] = {}  # senders this receiver owns -> when a frame last came
        self._key_asked: dict[str, float] = {}
        self.client = _client(self.client_id, manual_ack=True, v5=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        if not viewer:
            self.client.will_set(f"latentcomm/{topic}/gone/{self.client_id}", b"", qos=1)
        self._connected = threading.Event()
        _connect(self.client, self.host, self.port, wait_for, session_expiry)
        if not viewer:
            threading.Thread(target=self._renew, name="video-claims", daemon=True).start()

    @classmethod
    def from_args(cls, args, v2_limits: v2.Limits, keyring: Keyring | None, replay_state: Path | None) -> MqttServer:
        """The receiver's flags (``--broker``, ``--topic``, ``--group``, ``--client-id``, ...)."""
        return cls(
            args.broker, args.topic, args.group, args.client_id, v2_limits, keyring=keyring,
            session_expiry=args.session_expiry, replay_state=replay_state, viewer=args.viewer,
        )  # fmt: skip

    def start(self) -> MqttServer:
        self.client.loop_start()
        if not self._connected.wait(30):
            raise TransportError(f"the MQTT broker at {self.host}:{self.port} did not accept the connection")
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        if not self.viewer:
            client.subscribe(self.subscription, qos=1)
            client.subscribe(f"latentcomm/{self.topic}/owners/+", qos=1)
            client.subscribe(f"latentcomm/{self.topic}/gone/+", qos=1)
        client.subscribe(self.video_subscription, qos=1)
        what = self.video_subscription if self.viewer else self.subscription
        log.info("subscribed to %s as %s", what, self.client_id)
        self._connected.set()

    def _reject(self, peer: str, reason: str) -> None:
        with self._lock:
            self.stats.rejected += 1
        log.warning("rejected frame from %s: %s", peer, reason)
        for callback in self.on_reject:
            callback(peer, reason)

    def _on_message(self, client, userdata, msg) -> None:
        kind = msg.topic.split("/")[-2]
        if kind == "owners":
            self._on_claim(msg)
            return
        if kind == "gone":
            self._on_gone(msg)
            return
        sender = msg.topic.rsplit("/", 1)[-1]
        peer = f"mqtt:{sender}"
        with self._lock:
            self.stats.bytes_received += len(msg.payload)
        payload, key_id, stream = msg.payload, None, None
        if self.opener is not None:
            try:
                payload, key_id, stream = self.opener.open(msg.payload)
                if stream.hex() != sender:
                    raise SealError(
                        f"a frame of sealed stream {stream.hex()[:16]}... published on sender {sender[:32]!r}'s topic "
                        "(replayed from another stream)"
                    )
            except SealError as exc:
                self._reject(peer, str(exc))
                if exc.status in (v2.Status.UNKNOWN_KEY, v2.Status.SEALING_REQUIRED):
                    self._answer(sender, v2.Ack(0, exc.status, str(exc)), msg)  # in clear: no session to seal with
                else:
                    client.ack(msg.mid, msg.qos)
                return
        conn = v2.Connection(v2.Role.RECEIVER, self.limits)
        try:
            conn.receive_data(payload)
            conn.receive_eof()
            frame = conn.next_event()
            if not isinstance(frame, v2.ImageFrame) or conn.next_event() is not v2.CLOSED:
                raise ProtocolError("an MQTT message must hold exactly one v2 IMAGE")
        except v2.FrameRejected as exc:
            self._reject(peer, f"seq {exc.seq}: {exc}")
            self._answer(sender, v2.Ack(exc.seq, exc.status, str(exc)), msg, key_id, stream)
            return
        except ProtocolError as exc:
            self._reject(peer, str(exc))
            client.ack(msg.mid, msg.qos)
            return
        if kind == "video":
            self._on_video(sender, peer, frame, msg, key_id, stream)
            return
        key = (sender, frame.seq)
        digest = hashlib.sha256(payload).digest()
        with self._lock:
            done = self._done.get(key)
        if done is not None:
            if done[0] != digest:
                reason = f"seq {frame.seq} was already used for another frame of this sender: refused"
                self._reject(peer, reason)
                self._answer(sender, v2.Ack(frame.seq, v2.Status.MALFORMED, reason), msg, key_id, stream)
                return
            # A copy the sender published again: answer, don't decode twice.
            log.info("duplicate of %s seq %d: answered again, not decoded", peer, frame.seq)
            self._answer(sender, done[1], msg, key_id, stream)
            return
        reply: Future = Future()
        reply.add_done_callback(lambda f: self._finished(sender, frame.seq, f.result(), msg, key_id, stream, digest))
        try:
            self.frames.put_nowait(ReceivedFrame(frame, peer, len(msg.payload), 0.0, reply, key_id))
            with self._lock:
                self.stats.frames += 1
        except queue.Full:  # never PUBACKed: the broker keeps it, the sender's timeout sends it again
            log.warning("decode queue full: frame %s seq %d left with the broker", peer, frame.seq)

    def _finished(self, sender: str, seq: int, ack: v2.Ack, msg, key_id=None, stream=None, digest=b"") -> None:
        if ack.status != v2.Status.SHUTTING_DOWN:
            with self._lock:
                self._done[(sender, seq)] = (digest, ack)
                while len(self._done) > DEDUP_WINDOW:
                    self._done.popitem(last=False)
            self._answer(sender, ack, msg, key_id, stream)
        # SHUTTING_DOWN: no PUBACK, so the broker keeps the frame for this session or the sender resends.

    def _answer(self, sender: str, ack: v2.Ack, msg, key_id: str | None = None, stream: bytes | None = None) -> None:
        self._publish_ack(sender, ack, key_id, stream)
        self.client.ack(msg.mid, msg.qos)

    def _publish_ack(self, sender: str, ack: v2.Ack, key_id: str | None = None, stream: bytes | None = None) -> None:
        data = v2.encode_ack(ack)
        if key_id is not None and stream is not None and self.opener is not None:
            data = self.opener.seal_ack(key_id, stream, data)
        self.client.publish(f"latentcomm/{self.topic}/acks/{sender}", data, qos=1)

    # -- video streams: one owner per stream in a group, any number of viewers ------------------------

    def _owner(self, sender: str) -> str | None:
        with self._lock:
            owner = self._owners.get(sender)
        return owner[0] if owner is not None and owner[1] > time.monotonic() else None

    def _claim(self, sender: str) -> None:
        with self._lock:
            self._owners[sender] = (self.client_id, time.monotonic() + self.lease_s)
            self._mine[sender] = time.monotonic()
        claim = json.dumps({"owner": self.client_id, "lease_s": self.lease_s}).encode()
        self.client.publish(f"latentcomm/{self.topic}/owners/{sender}", claim, qos=1, retain=True)

    def _renew(self) -> None:
        while not self._stopping.is_set():
            time.sleep(self.lease_s / 3)
            now = time.monotonic()
            with self._lock:
                live = [s for s, t in self._mine.items() if now - t < self.lease_s and self._owners.get(s, ("",))[0]
                        == self.client_id]  # fmt: skip
            for sender in live:
                self._claim(sender)

    def _on_claim(self, msg) -> None:
        sender = msg.topic.rsplit("/", 1)[-1]
        try:
            claim = json.loads(msg.payload) if msg.payload else None
            owner, lease = (str(claim["owner"]), float(claim["lease_s"])) if claim else (None, 0.0)
        except (ValueError, KeyError, TypeError):
            owner, lease = None, 0.0
        with self._lock:
            if owner is None:
                self._owners.pop(sender, None)
            else:  # the broker orders claims: every receiver ends with the same, last one
                self._owners[sender] = (owner, time.monotonic() + min(max(lease, 0.5), 60.0))
                if owner != self.client_id:
                    self._mine.pop(sender, None)
        self.client.ack(msg.mid, msg.qos)

    def _on_gone(self, msg) -> None:
        gone = msg.topic.rsplit("/", 1)[-1]
        with self._lock:
            for sender in [s for s, (o, _) in self._owners.items() if o == gone]:
                del self._owners[sender]
        log.info("receiver %s left the group: its video streams are free to take over", gone)
        self.client.ack(msg.mid, msg.qos)

    def _on_video(self, sender: str, peer: str, frame: v2.ImageFrame, msg, key_id, stream) -> None:
        """A live video frame: PUBACKed at once (a late frame is worth nothing: a loss is repaired by a
        key frame, not by the broker's redelivery); decoded here if this receiver owns the stream for
        its group, or watches as a viewer."""
        self.client.ack(msg.mid, msg.qos)
        if not self.viewer:
            owner = self._owner(sender)
            if owner is None:
                log.info("taking the video stream of %s for the group", peer)
                self._claim(sender)
            elif owner != self.client_id:
                return
            with self._lock:
                self._mine[sender] = time.monotonic()
        reply: Future = Future()
        reply.add_done_callback(lambda f: self._video_done(sender, frame.seq, f.result(), key_id, stream))
        try:
            self.frames.put_nowait(ReceivedFrame(frame, peer, len(msg.payload), 0.0, reply, key_id))
            with self._lock:
                self.stats.frames += 1
        except queue.Full:
            log.warning("decode queue full: video frame %s seq %d dropped", peer, frame.seq)

    def _video_done(self, sender: str, seq: int, ack: v2.Ack, key_id, stream) -> None:
        if not self.viewer:
            if self._owner(sender) == self.client_id:
                self._publish_ack(sender, ack, key_id, stream)
            return
        if ack.status == v2.Status.KEY_FRAME_NEEDED:  # a viewer asks for a key frame, once a second at most
            now = time.monotonic()
            if now - self._key_asked.get(sender, 0.0) >= 1.0:
                self._key_asked[sender] = now
                self._publish_ack(sender, v2.Ack(0, v2.Status.KEY_FRAME_NEEDED, "a viewer joined"), key_id, stream)

    def stop_accepting(self) -> None:
        self._stopping.set()
        self.client.unsubscribe(self.subscription)
        self.client.unsubscribe(self.video_subscription)
        with self._lock:
            mine = [s for s, (o, _) in self._owners.items() if o == self.client_id]
        for sender in mine:  # hand the streams back at once rather than at the lease's end
            self.client.publish(f"latentcomm/{self.topic}/owners/{sender}", b"", qos=1, retain=True)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


#: The names the transport registry (:data:`latentcomm.transports.BROKERS`) looks up.
Sender, Source = MqttSender, MqttServer
