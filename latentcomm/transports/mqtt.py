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

import json
import logging
import math
import queue
import secrets
import ssl
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from latentcomm.errors import LatentcommError, TransportError
from latentcomm.transports.base import ReceivedFrame
from latentcomm.transports.messages import AckWindow, MessageOpener, MessageSender, Refused
from latentcomm.wire import v2
from latentcomm.wire.broker_seal import ControlSeal
from latentcomm.wire.keys import Keyring

log = logging.getLogger(__name__)

DEFAULT_GROUP = "receivers"
#: Seconds a receiver's claim on a video stream lasts unless renewed (it renews every third of it).
DEFAULT_LEASE_S = 3.0
#: Claimants whose newest claim counter a receiver remembers (to refuse a recorded claim replayed).
CLAIMANT_MEMORY = 4096


@dataclass(frozen=True)
class BrokerAuth:
    """How to reach a broker as brokers are run: TLS (``mqtts://``) with a CA (``--broker-ca``; the
    system's otherwise) and a client certificate (``--broker-cert``/``--broker-key``), and the password
    of the URL's user (``mqtts://USER@HOST``), read from a file or the environment, never the command
    line (``ps`` shows it)."""

    ca: str | None = None
    cert: str | None = None
    keyfile: str | None = None
    password: str | None = None


#: The environment variable a broker password may come from (the command line never carries one).
PASSWORD_ENV = "LATENTCOMM_BROKER_PASSWORD"


def auth_from_args(args) -> BrokerAuth:
    """The TLS and credential flags (--broker-ca, --broker-cert, --broker-key, --broker-password-file;
    or LATENTCOMM_BROKER_PASSWORD). LatentcommError for a file that can't be read."""
    import os

    password = None
    if getattr(args, "broker_password_file", None):
        try:
            password = Path(args.broker_password_file).read_text().splitlines()[0]
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            raise LatentcommError(f"--broker-password-file {args.broker_password_file}: cannot read a first line "
                                  f"({getattr(exc, 'strerror', None) or exc})") from None  # fmt: skip
    elif os.environ.get(PASSWORD_ENV):
        password = os.environ[PASSWORD_ENV]
    for flag in ("broker_ca", "broker_cert", "broker_key"):
        path = getattr(args, flag, None)
        if path and not Path(path).is_file():
            raise LatentcommError(f"--{flag.replace('_', '-')} {path}: no such file")
    return BrokerAuth(getattr(args, "broker_ca", None), getattr(args, "broker_cert", None),
                      getattr(args, "broker_key", None), password)  # fmt: skip


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None


def parse_broker(url: str) -> BrokerAddress:
    """mqtt://[USER@]HOST[:PORT] (1883) or mqtts://[USER@]HOST[:PORT] (TLS, 8883)."""
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise LatentcommError(f"--broker must look like mqtt://HOST:PORT or mqtts://USER@HOST:PORT, got {url!r}")
    if u.password is not None:
        raise LatentcommError(
            "--broker: no password in the URL (the command line shows in ps); put it in a file "
            "(--broker-password-file) or LATENTCOMM_BROKER_PASSWORD"
        )
    try:
        port = u.port or (8883 if u.scheme == "mqtts" else 1883)
    except ValueError:
        raise LatentcommError(f"--broker {url!r}: bad port") from None
    return BrokerAddress(u.hostname, port, u.scheme == "mqtts", u.username)


def _secure(client, address: BrokerAddress, auth: BrokerAuth | None) -> None:
    """TLS and credentials on a paho client, before it connects."""
    auth = auth or BrokerAuth()
    if address.tls:
        try:
            client.tls_set(ca_certs=auth.ca, certfile=auth.cert, keyfile=auth.keyfile,
                           cert_reqs=ssl.CERT_REQUIRED)  # fmt: skip
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise LatentcommError(f"--broker-ca/--broker-cert/--broker-key: {exc}") from None
    elif auth.ca or auth.cert:
        raise LatentcommError("--broker-ca and --broker-cert need an mqtts:// broker")
    if address.username:
        if auth.password is None:
            log.info("broker user %s without a password", address.username)
        client.username_pw_set(address.username, auth.password)
    elif auth.password is not None:
        raise LatentcommError("a broker password needs a user: mqtts://USER@HOST")


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


def _connect(
    client, address: BrokerAddress, auth: BrokerAuth | None, wait_for: float, session_expiry: int | None = None
) -> None:
    """Connect, retrying for ``wait_for`` seconds; with ``session_expiry`` (MQTT 5) the session is kept
    (clean start off) for that many seconds after a disconnect. paho reconnects with the same options."""
    extra: dict = {}
    if session_expiry is not None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry
        extra = {"clean_start": False, "properties": props}
    _secure(client, address, auth)
    host, port = address.host, address.port
    deadline = time.monotonic() + wait_for
    while True:
        try:
            client.connect(host, port, keepalive=10, **extra)
            return
        except OSError as exc:  # ssl.SSLError is one: a certificate that doesn't verify
            if time.monotonic() < deadline and not isinstance(exc, ssl.SSLError):
                time.sleep(0.25)
                continue
            raise TransportError(f"cannot reach the MQTT broker at {host}:{port}: {exc.strerror or exc}") from None


def _accepted(endpoint, timeout: float) -> bool:
    """Wait for the broker's CONNACK: True once accepted, False on a refusal (bad user name or
    password, not authorized: said at once, not after the timeout) or the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if endpoint._connected.wait(0.1):
            return True
        if getattr(endpoint, "_refused", None):
            return False
    return endpoint._connected.is_set()


def refusal(reason_code) -> str:
    """What a broker's CONNACK refusal says ("Bad user name or password", "Not authorized")."""
    return f"the MQTT broker refused the connection: {reason_code}"


class MqttSender(MessageSender):
    """Publishes v2 frames and waits for each frame's ACK; the V2Client interface over a broker."""

    def connect(self, broker: str, topic: str, wait_for: float) -> None:
        #: Where acknowledgements go instead of send()'s queue (a BrokerPipeline's window).
        self.on_ack = None
        self.address = parse_broker(broker)
        self.host, self.port = self.address.host, self.address.port
        self.topic = check_topic(topic)
        self.frames_topic = f"latentcomm/{topic}/frames/{self.sender_id}"
        self.video_topic = f"latentcomm/{topic}/video/{self.sender_id}"
        self.acks_topic = f"latentcomm/{topic}/acks/{self.sender_id}"
        self._acks: queue.Queue[v2.Ack] = queue.Queue()
        self._connected = threading.Event()
        self._refused: str | None = None  # the broker's CONNACK refusal, when it refused
        self._closing = False
        self.client = _client(f"latentcomm-send-{self.sender_id}")
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        _connect(self.client, self.address, self.auth, wait_for)
        self.client.loop_start()
        if not _accepted(self, self.timeout):
            self.close()
            raise TransportError(self._refused or f"the MQTT broker at {self.host}:{self.port} did not accept the "
                                 "connection")  # fmt: skip

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            self._refused = refusal(reason_code)
            return
        client.subscribe(self.acks_topic, qos=1)
        if self._connected.is_set() or flags.session_present:
            self.reconnects += 1
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self._closing:
            log.info("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        ack = self.read_ack(msg.payload, msg.topic)
        if ack is None:
            return
        if self.on_ack is not None:
            self.on_ack(ack)
        else:
            self._acks.put(ack)

    def close(self) -> None:
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()

    def pipeline(self, window: int = 4, ack_timeout: float = 2.0) -> BrokerPipeline:
        """Live video through the broker (a :class:`~latentcomm.transports.base.FramePipeline`)."""
        return BrokerPipeline(self, window, ack_timeout)

    def where(self) -> str:
        return f"through the broker {self.host}:{self.port}"

    def exchange(self, frame: v2.ImageFrame, until: float) -> Iterator[v2.Ack]:
        self.client.publish(self.frames_topic, self.encode(frame), qos=1)
        wait_until = min(until, time.monotonic() + self.ack_timeout)
        while (left := wait_until - time.monotonic()) > 0:
            try:
                yield self._acks.get(timeout=left)
            except queue.Empty:
                return


class BrokerPipeline(AckWindow):
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
        super().__init__(sender, window, ack_timeout, "through the broker")
        sender.on_ack = self.answered

    def submit(self, frame: v2.ImageFrame) -> None:
        self.admit(frame)
        self.client.client.publish(self.client.video_topic, self.client.encode(frame), qos=1)


class MqttServer(MessageOpener):
    """A receiver's side of the broker, with FrameServer's interface (``frames``, ``stats``,
    ``stop_accepting``, ``on_reject``), so ``Receiver.serve`` runs unchanged."""

    came_as = "published on sender {sender}'s topic"

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
        auth: BrokerAuth | None = None,
    ) -> None:
        if session_expiry < 0 or session_expiry > 0xFFFFFFFF:
            raise LatentcommError(f"--session-expiry {session_expiry}: give 0 to 4294967295 seconds")
        super().__init__(v2_limits, keyring, replay_state, queue_size)
        self.broker_address = parse_broker(broker)
        self.host, self.port = self.broker_address.host, self.broker_address.port
        self.auth = auth
        self.topic = check_topic(topic)
        if not group or any(c in group for c in "/#+"):
            raise LatentcommError(f"--group {group!r}: no '/', '#' or '+'")
        self.subscription = f"$share/{group}/latentcomm/{topic}/frames/+"
        self.address = (f"{'mqtts' if self.broker_address.tls else 'mqtt'}://{self.host}", self.port)
        self.client_id = client_id or f"latentcomm-recv-{uuid.uuid4().hex[:12]}"
        self._stopping = threading.Event()
        # Video streams (latentcomm/<topic>/video/<sender>): every receiver subscribes without sharing;
        # a group's receivers agree on one owner per stream (retained claims under owners/, renewed
        # every lease/3 s, dropped at once by a receiver's last will under gone/), and only the owner
        # decodes and acknowledges. A viewer decodes every stream and acknowledges none.
        self.viewer = viewer
        self.lease_s = lease_s
        self.video_subscription = f"latentcomm/{topic}/video/+"
        # With a key, every control message is sealed for the group (ControlSeal): a claim names its
        # owner, the owner's session (new at every connection) and a counter that only grows, so a
        # recorded claim published again is refused; a last will names the session it ends, so a
        # recorded will of an earlier connection ends nothing.
        self.control = ControlSeal(keyring) if keyring else None
        self.forged_control = 0
        self._session = secrets.token_hex(8)
        self._claim_n = 0
        self._claims_seen: OrderedDict[str, int] = OrderedDict()  # claimant -> newest counter seen
        self._stream_keys: dict[str, bytes] = {}  # sender -> the key id its frames are sealed with
        self._owners: dict[str, tuple[str, float, str | None]] = {}  # sender -> (owner, lease end, session)
        self._mine: dict[str, float] = {}  # senders this receiver owns -> when a frame last came
        self._key_asked: dict[str, float] = {}
        self.client = _client(self.client_id, manual_ack=True, v5=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        if not viewer:
            self._set_will()
        self._connected = threading.Event()
        self._refused: str | None = None  # the broker's CONNACK refusal, when it refused
        _connect(self.client, self.broker_address, self.auth, wait_for, session_expiry)
        if not viewer:
            threading.Thread(target=self._renew, name="video-claims", daemon=True).start()

    @classmethod
    def from_args(cls, args, v2_limits: v2.Limits, keyring: Keyring | None, replay_state: Path | None) -> MqttServer:
        """The receiver's flags (``--broker``, ``--topic``, ``--group``, ``--client-id``, ...)."""
        return cls(
            args.broker, args.topic, args.group, args.client_id, v2_limits, keyring=keyring,
            session_expiry=args.session_expiry, replay_state=replay_state, viewer=args.viewer,
            auth=auth_from_args(args),
        )  # fmt: skip

    def start(self) -> MqttServer:
        self.client.loop_start()
        if not _accepted(self, 30):
            self.client.loop_stop()
            raise TransportError(self._refused or f"the MQTT broker at {self.host}:{self.port} did not accept the "
                                 "connection")  # fmt: skip
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            self._refused = refusal(reason_code)
            return
        if not self.viewer:
            client.subscribe(self.subscription, qos=1)
            client.subscribe(f"latentcomm/{self.topic}/owners/+", qos=1)
            client.subscribe(f"latentcomm/{self.topic}/gone/+", qos=1)
        client.subscribe(self.video_subscription, qos=1)
        what = self.video_subscription if self.viewer else self.subscription
        log.info("subscribed to %s as %s", what, self.client_id)
        self._connected.set()

    def _set_will(self) -> None:
        """The last will for this connection: it names the session, which every claim names too."""
        topic = f"latentcomm/{self.topic}/gone/{self.client_id}"
        will = b""
        if self.control is not None:
            will = self.control.seal(topic, {"gone": self.client_id, "session": self._session})
        self.client.will_set(topic, will, qos=1)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self.viewer and not self._stopping.is_set():
            # The broker may have published this connection's will: the next one gets a new session,
            # so that will, recorded and published again, can't end the streams this one claims.
            with self._lock:
                self._session = secrets.token_hex(8)
            self._set_will()

    def _forged(self, what: str, msg) -> None:
        self.forged_control += 1
        if self.forged_control == 1 or self.forged_control % 100 == 0:
            log.warning("%s on %s ignored: not sealed by this group, or replayed (%d so far)",
                        what, msg.topic, self.forged_control)  # fmt: skip

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
        try:
            frame, payload, key_id, stream = self.open_message(sender, peer, msg.payload)
        except Refused as refused:
            if refused.ack is not None:
                self._answer(sender, refused.ack, msg, refused.key_id, refused.stream)
            else:
                client.ack(msg.mid, msg.qos)
            return
        if kind == "video":
            self._on_video(sender, peer, frame, msg, key_id, stream)
            return
        try:
            done = self.answered_before(sender, peer, frame.seq, payload)
        except Refused as refused:
            self._answer(sender, refused.ack, msg, key_id, stream)
            return
        if done is not None:  # a copy the sender published again: answered, not decoded twice
            self._answer(sender, done, msg, key_id, stream)
            return
        reply: Future = Future()
        reply.add_done_callback(lambda f: self._finished(sender, frame.seq, f.result(), msg, key_id, stream, payload))
        try:
            self.frames.put_nowait(ReceivedFrame(frame, peer, len(msg.payload), 0.0, reply, key_id))
            with self._lock:
                self.stats.frames += 1
        except queue.Full:  # never PUBACKed: the broker keeps it, the sender's timeout sends it again
            log.warning("decode queue full: frame %s seq %d left with the broker", peer, frame.seq)

    def _finished(self, sender: str, seq: int, ack: v2.Ack, msg, key_id, stream, payload: bytes) -> None:
        if ack.status != v2.Status.SHUTTING_DOWN:
            self.remember(sender, seq, payload, ack)
            self._answer(sender, ack, msg, key_id, stream)
        # SHUTTING_DOWN: no PUBACK, so the broker keeps the frame for this session or the sender resends.

    def _answer(self, sender: str, ack: v2.Ack, msg, key_id: str | None = None, stream: bytes | None = None) -> None:
        self._publish_ack(sender, ack, key_id, stream)
        self.client.ack(msg.mid, msg.qos)

    def _publish_ack(self, sender: str, ack: v2.Ack, key_id: str | None = None, stream: bytes | None = None) -> None:
        self.client.publish(f"latentcomm/{self.topic}/acks/{sender}", self.ack_bytes(ack, key_id, stream), qos=1)

    # -- video streams: one owner per stream in a group, any number of viewers ------------------------

    def _owner(self, sender: str) -> str | None:
        with self._lock:
            owner = self._owners.get(sender)
        return owner[0] if owner is not None and owner[1] > time.monotonic() else None

    def _claim_bytes(self, sender: str, owner: str | None) -> bytes:
        """A claim (``owner``: this receiver) or a hand-back (None) of ``sender``'s stream."""
        topic = f"latentcomm/{self.topic}/owners/{sender}"
        if self.control is None:
            return json.dumps({"owner": owner, "lease_s": self.lease_s}).encode() if owner else b""
        with self._lock:
            self._claim_n = max(self._claim_n + 1, time.time_ns())
            claim = {"owner": owner, "by": self.client_id, "session": self._session, "lease_s": self.lease_s,
                     "n": self._claim_n}  # fmt: skip
            key_id = self._stream_keys.get(sender)
        return self.control.seal(topic, claim, [key_id] if key_id else None)

    def _claim(self, sender: str) -> None:
        with self._lock:
            self._owners[sender] = (self.client_id, time.monotonic() + self.lease_s, self._session)
            self._mine[sender] = time.monotonic()
        claim = self._claim_bytes(sender, self.client_id)
        self.client.publish(f"latentcomm/{self.topic}/owners/{sender}", claim, qos=1, retain=True)

    def _renew(self) -> None:
        while not self._stopping.is_set():
            time.sleep(self.lease_s / 3)
            now = time.monotonic()
            with self._lock:
                # Streams whose claims ran out a minute ago are forgotten (a long run meets many senders).
                for sender in [s for s, (_, end, _) in self._owners.items() if now - end > 60]:
                    del self._owners[sender]
                    self._key_asked.pop(sender, None)
                for sender in [s for s, t in self._mine.items() if now - t > 60]:
                    del self._mine[sender]
                live = [s for s, t in self._mine.items() if now - t < self.lease_s and self._owners.get(s, ("",))[0]
                        == self.client_id]  # fmt: skip
            for sender in live:
                self._claim(sender)

    def _read_claim(self, msg) -> tuple[str | None, float, str | None, str | None] | None:
        """(owner or None for a hand-back, lease, session, claimant) of a claim; None for one to ignore."""
        if self.control is None:
            try:
                claim = json.loads(msg.payload) if msg.payload else None
                return (str(claim["owner"]), float(claim["lease_s"]), None, None) if claim else (None, 0.0, None, None)
            except (ValueError, KeyError, TypeError):
                return None, 0.0, None, None
        claim = self.control.open(msg.topic, msg.payload) if msg.payload else None
        if claim is None:
            self._forged("an ownership claim", msg)
            return None
        owner, by, session, lease, n = (claim.get(k) for k in ("owner", "by", "session", "lease_s", "n"))
        if not (isinstance(by, str) and isinstance(session, str) and isinstance(n, int)
                and isinstance(lease, int | float) and math.isfinite(lease) and owner in (None, by)):  # fmt: skip
            self._forged("a malformed ownership claim", msg)
            return None
        with self._lock:
            if n <= self._claims_seen.get(by, -1):
                replayed = True
            else:
                replayed = False
                self._claims_seen[by] = n
                self._claims_seen.move_to_end(by)
                while len(self._claims_seen) > CLAIMANT_MEMORY:
                    self._claims_seen.popitem(last=False)
        if replayed:
            # The broker also hands a retained claim again after a reconnect: that is no forgery.
            log.debug("claim %d by %s on %s seen before: ignored", n, by, msg.topic)
            return None
        return owner, float(lease), session, by

    def _on_claim(self, msg) -> None:
        sender = msg.topic.rsplit("/", 1)[-1]
        claim = self._read_claim(msg)
        if claim is not None:
            owner, lease, session, by = claim
            lost = False
            with self._lock:
                if owner is None:
                    current = self._owners.get(sender)
                    if by is None or current is None or current[0] == by:  # only an owner hands back
                        self._owners.pop(sender, None)
                else:  # the broker orders claims: every receiver ends with the same, last one
                    self._owners[sender] = (owner, time.monotonic() + min(max(lease, 0.5), 60.0), session)
                    lost = owner != self.client_id and self._mine.pop(sender, None) is not None
            if owner is not None and lost:
                for callback in self.on_stream_end:  # another receiver decodes it now: free our decoder
                    callback(f"mqtt:{sender}")
        self.client.ack(msg.mid, msg.qos)

    def _on_gone(self, msg) -> None:
        gone = msg.topic.rsplit("/", 1)[-1]
        session = None
        if self.control is not None:
            will = self.control.open(msg.topic, msg.payload)
            if will is None or will.get("gone") != gone:
                self._forged("a last will", msg)
                self.client.ack(msg.mid, msg.qos)
                return
            session = will.get("session")
        with self._lock:
            ended = [s for s, (o, _, sess) in self._owners.items()
                     if o == gone and (self.control is None or sess == session)]  # fmt: skip
            for sender in ended:
                del self._owners[sender]
        if ended:
            log.info("receiver %s left the group: its video streams are free to take over", gone)
        self.client.ack(msg.mid, msg.qos)

    def _on_video(self, sender: str, peer: str, frame: v2.ImageFrame, msg, key_id, stream) -> None:
        """A live video frame: PUBACKed at once (a late frame is worth nothing: a loss is repaired by a
        key frame, not by the broker's redelivery); decoded here if this receiver owns the stream for
        its group, or watches as a viewer."""
        self.client.ack(msg.mid, msg.qos)
        if not self.viewer:
            if key_id is not None:
                with self._lock:
                    self._stream_keys[sender] = bytes.fromhex(key_id)
                    if len(self._stream_keys) > CLAIMANT_MEMORY:
                        self._stream_keys.pop(next(iter(self._stream_keys)))
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
            mine = [s for s, (o, _, _) in self._owners.items() if o == self.client_id]
        for sender in mine:  # hand the streams back at once rather than at the lease's end
            self.client.publish(f"latentcomm/{self.topic}/owners/{sender}", self._claim_bytes(sender, None), qos=1,
                                retain=True)  # fmt: skip

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


#: The names the transport registry (:data:`latentcomm.transports.BROKERS`) looks up.
Sender, Source = MqttSender, MqttServer
