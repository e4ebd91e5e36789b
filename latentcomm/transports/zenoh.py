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

import json
import logging
import queue
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import zenoh

from latentcomm.errors import LatentcommError, TransportError
from latentcomm.transports.base import ReceivedFrame
from latentcomm.transports.messages import AckWindow, MessageOpener, MessageSender, Refused
from latentcomm.wire import v2
from latentcomm.wire.keys import Keyring

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZenohTls:
    """``zenohs://``: the link in TLS (Zenoh's own, rustls). The receiver, which listens, presents
    ``cert``/``key`` (--broker-cert/--broker-key); a sender verifies it against ``ca`` (--broker-ca) for
    the URL's host. A receiver given ``ca`` too asks each sender for a certificate that CA signed
    (mutual TLS): then only holders of one connect at all, before any frame is read."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


def auth_from_args(args) -> ZenohTls:
    """The TLS flags a ``zenohs://`` URL takes (files checked here: one line, not Zenoh's panic)."""
    tls = ZenohTls(getattr(args, "broker_ca", None), getattr(args, "broker_cert", None),
                   getattr(args, "broker_key", None))  # fmt: skip
    for flag, path in (("--broker-ca", tls.ca), ("--broker-cert", tls.cert), ("--broker-key", tls.key)):
        if path is not None and not Path(path).is_file():
            raise LatentcommError(f"{flag} {path}: no such file")
    return tls


def _tls_config(config: zenoh.Config, tls: ZenohTls, listening: bool) -> None:
    link = "transport/link/tls/"
    if listening:
        if not (tls.cert and tls.key):
            raise LatentcommError("a zenohs:// receiver needs its certificate: --broker-cert PEM --broker-key PEM")
        config.insert_json5(link + "listen_certificate", json.dumps(tls.cert))
        config.insert_json5(link + "listen_private_key", json.dumps(tls.key))
        if tls.ca:  # senders must show a certificate this CA signed
            config.insert_json5(link + "root_ca_certificate", json.dumps(tls.ca))
            config.insert_json5(link + "enable_mtls", "true")
    else:
        if tls.ca:
            config.insert_json5(link + "root_ca_certificate", json.dumps(tls.ca))
        if tls.cert and tls.key:  # for a receiver that asks (mutual TLS)
            config.insert_json5(link + "connect_certificate", json.dumps(tls.cert))
            config.insert_json5(link + "connect_private_key", json.dumps(tls.key))
            config.insert_json5(link + "enable_mtls", "true")


def parse_endpoint(url: str) -> str:
    """``zenoh://HOST:PORT`` -> Zenoh's endpoint ``tcp/HOST:PORT`` (port 7447 by default);
    ``zenohs://HOST:PORT`` -> ``tls/HOST:PORT``."""
    u = urlparse(url)
    if u.scheme not in ("zenoh", "zenohs") or not u.hostname:
        raise LatentcommError(f"--broker must look like zenoh://HOST:PORT or zenohs://HOST:PORT, got {url!r}")
    try:
        port = u.port or 7447
    except ValueError:
        raise LatentcommError(f"--broker {url!r}: bad port") from None
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return f"{'tls' if u.scheme == 'zenohs' else 'tcp'}/{host}:{port}"


def check_topic(topic: str) -> str:
    if not topic or any(c in topic for c in "*$?#\0") or topic.startswith("/") or topic.endswith("/") or "//" in topic:
        raise LatentcommError(f"--topic {topic!r}: use letters, digits, '-', '_' and inner '/' only")
    return topic


def _open(
    listen: str | None = None, connect: str | None = None, wait_for: float = 0.0, tls: ZenohTls | None = None
) -> zenoh.Session:
    """A peer session that listens on or connects to one endpoint, nothing else (no multicast
    scouting: a receiver must not pick up strangers' senders on the LAN). Over TLS a sender's session
    opens only once the handshake with the receiver succeeded (within ``wait_for``), so a certificate
    that doesn't verify is said at once rather than as a missing acknowledgement."""
    config = zenoh.Config()
    config.insert_json5("mode", '"peer"')
    config.insert_json5("scouting/multicast/enabled", "false")
    if listen:
        config.insert_json5("listen/endpoints", json.dumps([listen]))
    if connect:
        config.insert_json5("connect/endpoints", json.dumps([connect]))
    secure = (listen or connect or "").startswith("tls/")
    if secure:
        _tls_config(config, tls or ZenohTls(), listening=bool(listen))
        if connect:
            config.insert_json5("connect/exit_on_failure", "true")
            config.insert_json5("connect/timeout_ms", str(max(2000, int(1000 * wait_for))))
    deadline = time.monotonic() + wait_for
    while True:
        try:
            return zenoh.open(config)
        except zenoh.ZError as exc:
            if time.monotonic() < deadline:
                time.sleep(0.25)
                continue
            where = f"listen on {listen}" if listen else f"reach a receiver at {connect}"
            hint = ""
            if secure and connect:
                hint = " (over TLS: is the receiver up, its certificate signed by --broker-ca and made for that host?)"
            reason = str(exc).splitlines()[0].split(" at /")[0]
            raise TransportError(f"Zenoh could not {where}: {reason}{hint}") from None


class ZenohSender(MessageSender):
    """Sends v2 frames as Zenoh queries and returns each one's acknowledgement (a :class:`FrameSender`)."""

    def connect(self, broker: str, topic: str, wait_for: float) -> None:
        self.endpoint = parse_endpoint(broker)
        self.topic = check_topic(topic)
        self.key_expr = f"latentcomm/{topic}/frames/{self.sender_id}"
        self.session = _open(connect=self.endpoint, wait_for=wait_for, tls=self.auth)

    def close(self) -> None:
        self.session.close()

    def where(self) -> str:
        return f"from a receiver at {self.endpoint}"

    def exchange(self, frame: v2.ImageFrame, until: float) -> Iterator[v2.Ack]:
        timeout = max(0.05, min(self.ack_timeout, until - time.monotonic()))
        for reply in self.session.get(self.key_expr, payload=self.encode(frame), timeout=timeout):
            if reply.ok is not None and (ack := self.read_ack(reply.ok.payload.to_bytes())) is not None:
                yield ack

    def pipeline(self, window: int = 4, ack_timeout: float = 2.0) -> ZenohPipeline:
        """Live video over this sender (a :class:`FramePipeline`)."""
        return ZenohPipeline(self, window, ack_timeout)


class ZenohPipeline(AckWindow):
    """Up to ``window`` frames in flight as Zenoh queries; each reply goes to the window as it comes."""

    def __init__(self, sender: ZenohSender, window: int = 4, ack_timeout: float = 2.0) -> None:
        super().__init__(sender, window, ack_timeout, "through Zenoh")

    def _reply(self, reply: zenoh.Reply) -> None:
        ack = self.client.read_ack(reply.ok.payload.to_bytes()) if reply.ok is not None else None
        if ack is not None:
            self.answered(ack)

    def submit(self, frame: v2.ImageFrame) -> None:
        self.admit(frame)
        self.client.session.get(
            self.client.key_expr, handler=self._reply, payload=self.client.encode(frame), timeout=self.ack_timeout
        )


class ZenohSource(MessageOpener):
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
        tls: ZenohTls | None = None,
    ) -> None:
        super().__init__(v2_limits, keyring, replay_state, queue_size)
        self.endpoint = parse_endpoint(broker)
        self.topic = check_topic(topic)
        scheme, _, where = self.endpoint.partition("/")
        host, _, port = where.rpartition(":")
        self.address = (f"{'zenohs' if scheme == 'tls' else 'zenoh'}://{host}", int(port))
        self.wait_for = wait_for
        self.tls = tls
        self.session: zenoh.Session | None = None
        self.queryable = None

    @classmethod
    def from_args(cls, args, v2_limits: v2.Limits, keyring: Keyring | None, replay_state: Path | None) -> ZenohSource:
        """The receiver's flags; those only a broker has (``--viewer``) are refused in one line."""
        if getattr(args, "viewer", False):
            raise LatentcommError("--viewer watches streams through an MQTT broker; Zenoh has no viewers")
        return cls(args.broker, args.topic, v2_limits, keyring=keyring, replay_state=replay_state,
                   tls=auth_from_args(args))  # fmt: skip

    def start(self) -> ZenohSource:
        self.session = _open(listen=self.endpoint, wait_for=self.wait_for, tls=self.tls)
        self.queryable = self.session.declare_queryable(
            f"latentcomm/{self.topic}/frames/*", self._on_query, complete=True
        )
        log.info("listening for frames on %s, latentcomm/%s/frames/*", self.endpoint, self.topic)
        return self

    def _answer(self, query, ack: v2.Ack | None, key_id: str | None = None, stream: bytes | None = None) -> None:
        """Reply to the query with ``ack`` (None: no answer), and let it go."""
        try:
            if ack is not None:
                query.reply(query.key_expr, self.ack_bytes(ack, key_id, stream))
        except zenoh.ZError as exc:  # the sender gave up on it (its timeout), or left
            log.info("acknowledgement not delivered: %s", exc)
        finally:
            query.drop()

    def _on_query(self, query) -> None:
        sender = str(query.key_expr).rsplit("/", 1)[-1]
        peer = f"zenoh:{sender}"
        data = query.payload.to_bytes() if query.payload is not None else b""
        try:
            frame, payload, key_id, stream = self.open_message(sender, peer, data)
        except Refused as refused:
            self._answer(query, refused.ack, refused.key_id, refused.stream)
            return
        try:
            done = self.answered_before(sender, peer, frame.seq, payload)
        except Refused as refused:
            self._answer(query, refused.ack, key_id, stream)
            return
        if done is not None:  # sent again (its answer was late): answered again, not decoded twice
            self._answer(query, done, key_id, stream)
            return
        reply: Future = Future()
        reply.add_done_callback(lambda f: self._finished(query, sender, frame.seq, f.result(), payload, key_id, stream))
        try:
            self.frames.put_nowait(ReceivedFrame(frame, peer, len(data), 0.0, reply, key_id))
            with self._lock:
                self.stats.frames += 1
        except queue.Full:  # unanswered: the sender's timeout sends it again
            log.warning("decode queue full: frame %s seq %d not taken", peer, frame.seq)
            query.drop()

    def _finished(self, query, sender: str, seq: int, ack: v2.Ack, payload: bytes, key_id, stream) -> None:
        self.remember(sender, seq, payload, ack)
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
