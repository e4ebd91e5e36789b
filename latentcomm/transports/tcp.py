"""TCP transport: sockets live here and only here.

Sender side: ``send_frame`` writes one legacy frame per connection; ``V2Client`` keeps a connection,
sends v2 frames, waits for each acknowledgement, and reconnects and resends when the connection drops.

Receiver side: ``FrameServer``, a small threaded server. One thread accepts; one thread per
connection tells legacy from v2 by the first bytes and feeds the sans-I/O parsers under a per-read
timeout. Complete frames go to the caller through a bounded queue; the caller (the receiver
script's main thread) decodes them one at a time, so model memory stays flat however many senders
connect, and matplotlib stays on the main thread where GUI toolkits need it. A v2 connection thread
waits for the caller's verdict on each frame and sends it back as the acknowledgement.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import socket
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from latentcomm.errors import ProtocolError, TransportError
from latentcomm.transports.base import SHUTDOWN_GRACE_S, ReceivedFrame, ServerStats
from latentcomm.wire import v2
from latentcomm.wire.keys import Key, Keyring
from latentcomm.wire.legacy import NEED_DATA, LegacyReceiver, Limits
from latentcomm.wire.sealed import SEAL_OVERHEAD, Handshake, SealError, SecureConnection

log = logging.getLogger(__name__)

RECV_CHUNK = 256 * 1024
#: What one read takes from a sealed connection whose peer has not proven the key yet: with 64
#: connections at most 64 x 4 KiB of a stranger's bytes sit in a receiver (docs/security.md).
PREAUTH_CHUNK = 4096
#: Socket read granularity: how often a connection thread looks at the clock and the stop flag.
POLL_S = 0.25


def _connect(host: str, port: int, timeout: float, wait_for: float) -> socket.socket:
    """Open a TCP_NODELAY connection, retrying a refused one for up to ``wait_for`` seconds (a
    receiver still starting). Failures become TransportError with a one-line, actionable message."""
    where = f"{host}:{port}"
    deadline = time.monotonic() + wait_for
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except ConnectionRefusedError:
            if time.monotonic() < deadline:
                time.sleep(0.25)
                continue
            raise TransportError(
                f"connection refused by {where}: is the receiver running? start it with 'python receiver_sdvae.py'"
            ) from None
        except socket.gaierror as exc:
            raise TransportError(f"cannot resolve host {host!r}: {exc.strerror}") from None
        except OSError as exc:
            raise TransportError(f"cannot connect to {where}: {exc.strerror or exc}") from None


def send_frame(host: str, port: int, data: bytes, timeout: float = 30.0, wait_for: float = 0.0) -> float:
    """Connect, send ``data``, close. Returns the seconds from connected to sent (TCP handshake excluded).

    ``wait_for``: keep retrying a refused connection this long, so a sender can be started
    together with its receiver. Raises TransportError with a one-line, actionable message.
    """
    where = f"{host}:{port}"
    try:
        with _connect(host, port, timeout, wait_for) as sock:
            t0 = time.perf_counter()
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sent = time.perf_counter() - t0
            _await_close(sock, where, min(timeout, LEGACY_CLOSE_WAIT_S))
            return sent
    except TimeoutError:
        raise TransportError(f"timed out after {timeout:.0f} s talking to {where}") from None
    except OSError as exc:
        if isinstance(exc, BrokenPipeError | ConnectionResetError) or exc.errno == errno.ENOTCONN:
            raise TransportError(
                f"{where} closed the connection before the frame was sent: it refused it (see the receiver's log; "
                "a receiver started with --key refuses legacy frames)"
            ) from None
        raise TransportError(f"cannot send to {where}: {exc.strerror or exc}") from None


#: How long a legacy sender waits for the receiver to close after the frame (the only signal it gets).
LEGACY_CLOSE_WAIT_S = 5.0


def _await_close(sock: socket.socket, where: str, wait: float) -> None:
    """Legacy frames have no acknowledgement, but a receiver that refuses one closes with unread
    data, which resets the connection; one that read it all closes cleanly. Tell the two apart.

    A clean close (or no close within ``wait``, as an original receiver showing its window) still
    does not prove the image was decoded: the report says legacy delivery is unconfirmed.
    """
    sock.settimeout(wait)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        raise TransportError(
            f"{where} reset the connection: it refused the frame (see the receiver's log; legacy frames get "
            "no acknowledgement, --protocol v2 gets one with the reason)"
        ) from None
    except TimeoutError:
        pass


class FrameServer:
    """Threaded TCP server producing ``ReceivedFrame`` objects on ``frames`` (a bounded queue).

    Limits: ``read_timeout`` per read (a silent peer is dropped), ``frame_timeout`` for a whole
    frame (a trickling peer is dropped), ``max_connections`` at once (more are closed and logged),
    and the protocols' ``Limits``. With a ``keyring``, only sealed v2 connections are served
    (docs/security.md): plaintext v2 and legacy frames are refused with the reason.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 65432,
        limits: Limits | None = None,
        read_timeout: float = 10.0,
        frame_timeout: float = 120.0,
        max_connections: int = 64,
        queue_size: int = 4,
        v2_limits: v2.Limits | None = None,
        ack_timeout: float = 600.0,
        keyring: Keyring | None = None,
    ) -> None:
        self.keyring = keyring
        #: Called (peer, reason) from connection threads for every frame refused here (the dashboard).
        self.on_reject: list = []
        self.on_stream_end: list = []
        self.limits = limits or Limits()
        self.v2_limits = v2_limits or v2.Limits(self.limits.max_payload_bytes, self.limits.max_latent_elements)
        self.read_timeout = read_timeout
        self.frame_timeout = frame_timeout
        self.ack_timeout = ack_timeout
        self.max_connections = max_connections
        self.frames: queue.Queue[ReceivedFrame] = queue.Queue(maxsize=queue_size)
        self.stats = ServerStats()
        self._lock = threading.Lock()
        self._active = 0
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise TransportError(
                    f"port {port} on {host} is already in use (another receiver running?); "
                    "stop it or choose another --port"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
                raise TransportError(f"cannot bind to {host}: not an address of this machine") from None
            raise TransportError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._sock.listen(128)
        self._sock.settimeout(0.2)
        self.address = self._sock.getsockname()[:2]
        self._thread = threading.Thread(target=self._accept_loop, name="accept", daemon=True)

    @property
    def active_connections(self) -> int:
        with self._lock:
            return self._active

    def start(self) -> FrameServer:
        self._thread.start()
        return self

    def stop_accepting(self) -> None:
        """Close the listening socket; open connections finish the frame they are receiving."""
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.05)  # e.g. EMFILE: back off instead of spinning
                continue
            peer = f"{addr[0]}:{addr[1]}"
            with self._lock:
                self.stats.connections += 1
                if self._active >= self.max_connections:
                    self.stats.rejected += 1
                    log.warning("rejected %s: %d connections already open (--max-connections)", peer, self._active)
                    conn.close()
                    continue
                self._active += 1
            threading.Thread(target=self._serve_connection, args=(conn, peer), name=f"conn {peer}", daemon=True).start()

    def _reject(self, peer: str, reason: str) -> None:
        with self._lock:
            self.stats.rejected += 1
        log.warning("rejected frame from %s: %s", peer, reason)
        for callback in self.on_reject:
            callback(peer, reason)

    def _recv(
        self, conn: socket.socket, started: float | None, between_frames: bool = False, size: int = RECV_CHUNK
    ) -> bytes | None:
        """One read. TimeoutError after ``read_timeout`` of silence, TransportError for a frame that
        takes longer than ``frame_timeout`` in all; None if the server stops while a connection sits
        idle between frames (polled, so shutdown doesn't wait for the read timeout)."""
        silent = 0.0
        while True:
            if started is not None and time.perf_counter() - started > self.frame_timeout:
                raise TransportError(f"frame not complete after {self.frame_timeout:.0f} s")
            try:
                data = conn.recv(size)
            except TimeoutError:
                silent += POLL_S
                if between_frames and self._stop.is_set():
                    return None
                if silent >= self.read_timeout:
                    raise
                continue
            with self._lock:
                self.stats.bytes_received += len(data)
            return data

    def _enqueue(self, item: ReceivedFrame) -> bool:
        """Hand a frame to the caller (blocking while the queue is full: back-pressure on the peer)."""
        deadline: float | None = None
        while True:
            try:
                self.frames.put(item, timeout=0.2)
                with self._lock:
                    self.stats.frames += 1
                return True
            except queue.Full:
                if self._stop.is_set():
                    deadline = deadline or time.monotonic() + SHUTDOWN_GRACE_S
                    if time.monotonic() > deadline:
                        return False

    def _serve_connection(self, conn: socket.socket, peer: str) -> None:
        try:
            # Acknowledgements are small writes: without this, Nagle holds one back until the peer's
            # (delayed, up to 40 ms) TCP ACK of the previous one, which pipelined streams feel.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(POLL_S)
            first = b""
            while (kind := v2.sniff(first)) is None:
                try:
                    data = self._recv(conn, None, size=PREAUTH_CHUNK if self.keyring else RECV_CHUNK)
                except TimeoutError:
                    raise TransportError(f"no data for {self.read_timeout:.0f} s") from None
                if not data:
                    if first:
                        raise TransportError(f"connection closed after {len(first)} bytes")
                    return  # connected and closed without a byte: a port check, not an error
                first += data
            if kind == "v2":
                self._serve_v2(conn, peer, first)
            elif self.keyring:
                raise SealError(
                    "legacy frame refused: this receiver only accepts sealed frames (the legacy format has no room "
                    "for an authentication tag; send v2 with --key)"
                )
            else:
                self._serve_legacy(conn, peer, first)
        except (ProtocolError, TransportError) as exc:
            self._reject(peer, str(exc))
        except (ConnectionResetError, BrokenPipeError) as exc:
            self._reject(peer, f"connection lost: {exc.strerror or exc}")
        except TimeoutError:
            self._reject(peer, f"no data for {self.read_timeout:.0f} s")
        except OSError as exc:
            self._reject(peer, f"socket error: {exc.strerror or exc}")
        finally:
            conn.close()
            with self._lock:
                self._active -= 1
            for callback in self.on_stream_end:
                callback(peer)

    def _serve_legacy(self, conn: socket.socket, peer: str, first: bytes) -> None:
        parser = LegacyReceiver(self.limits)
        received = len(first)
        t0 = time.perf_counter()
        parser.receive_data(first)
        while True:
            try:
                data = self._recv(conn, t0)
            except TimeoutError:
                # A complete legacy frame is only known at EOF; a sender that stays open after
                # sending everything gets its frame accepted once it goes quiet.
                if parser.header is None:
                    raise TransportError(f"no data for {self.read_timeout:.0f} s") from None
                data = b""
            if data:
                received += len(data)
                parser.receive_data(data)
                continue
            parser.receive_eof()
            event = parser.next_event()
            if event is NEED_DATA:  # pragma: no cover - EOF always completes or raises
                continue
            self._enqueue(ReceivedFrame(event, peer, received, time.perf_counter() - t0))
            return

    def _serve_v2(self, conn: socket.socket, peer: str, first: bytes) -> None:
        proto: v2.Connection | SecureConnection
        if self.keyring:
            proto = SecureConnection(v2.Role.RECEIVER, keyring=self.keyring, limits=self.v2_limits)
        else:
            proto = v2.Connection(v2.Role.RECEIVER, self.v2_limits)
        key_id = None
        proto.receive_data(first)
        t0: float | None = time.perf_counter()
        while True:
            try:
                event = proto.next_event()
            except v2.FrameRejected as exc:
                self._reject(peer, f"seq {exc.seq}: {exc}")
                conn.sendall(proto.send(v2.Ack(exc.seq, exc.status, str(exc))))
                t0 = None
                continue
            except ProtocolError as exc:
                status = getattr(exc, "status", v2.Status.MALFORMED)
                with contextlib.suppress(OSError, ProtocolError):  # tell the peer why before hanging up
                    conn.sendall(proto.send(v2.Ack(0, status, str(exc))))
                raise
            if event is v2.CLOSED:
                return
            if isinstance(event, Handshake):
                key_id = event.key_id
                log.info("sealed connection from %s with key %s", peer, key_id)
                conn.sendall(event.reply)
                continue
            if event is v2.NEED_DATA:
                idle = proto.buffered == 0
                if idle and self._stop.is_set():
                    return  # shutting down between frames
                size = RECV_CHUNK if getattr(proto, "authenticated", True) else PREAUTH_CHUNK
                try:
                    data = self._recv(conn, None if idle else t0, between_frames=idle, size=size)
                except TimeoutError:
                    if idle:
                        return  # an idle v2 connection between frames: close it quietly
                    raise
                if data is None:
                    return
                if t0 is None:
                    t0 = time.perf_counter()
                if data:
                    proto.receive_data(data)
                else:
                    proto.receive_eof()
                continue
            reply: Future = Future()
            elapsed = time.perf_counter() - t0 if t0 is not None else 0.0
            item = ReceivedFrame(event, peer, proto.last_message_size, elapsed, reply, key_id)
            t0 = None
            if not self._enqueue(item):
                ack = v2.Ack(event.seq, v2.Status.SHUTTING_DOWN, "receiver is shutting down")
            else:
                try:
                    ack = reply.result(timeout=self.ack_timeout)
                except FutureTimeout:
                    ack = v2.Ack(event.seq, v2.Status.DECODE_FAILED, "receiver did not process the frame in time")
            conn.sendall(proto.send(ack))


class V2Client:
    """Sends v2 frames over one connection and waits for each acknowledgement.

    A dropped connection (reset, EOF, timeout) is re-opened and the unacknowledged frame sent again,
    up to ``retries`` times with a growing pause, so no image is silently lost: ``send`` returns the
    receiver's Ack or raises TransportError.

    With a ``key`` every connection starts with the sealed handshake (docs/security.md) and every
    frame and acknowledgement is sealed; a receiver that doesn't hold the key, or can't prove it
    does, ends the send at once with the reason (no retries), and an acknowledgement that fails
    authentication never counts as a delivery.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 60.0,
        retries: int = 3,
        wait_for: float = 0.0,
        key: Key | None = None,
        pace_bps: float | None = None,
    ) -> None:
        self.key = key
        #: Bytes sealing adds to a message (the video sender's rate accounts for it).
        self.seal_overhead = SEAL_OVERHEAD + v2.PREFIX.size if key is not None else 0
        #: Write no faster than this many bits/s (streams under --bandwidth): a burst of 50 ms at most.
        self.pace = pace_bps / 8 if pace_bps else None
        self._pace_tokens = 0.0
        self._pace_t = time.monotonic()
        self.host, self.port = host, port
        self.timeout = timeout
        self.retries = retries
        self.wait_for = wait_for
        self._sock: socket.socket | None = None
        self._proto: v2.Connection | SecureConnection | None = None
        self.reconnects = 0
        self.last_frame_bytes = 0  # wire size of the frame last passed to send()

    def __enter__(self) -> V2Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = self._proto = None

    def _open(self) -> None:
        self._sock = _connect(self.host, self.port, self.timeout, self.wait_for)
        if self.key is None:
            self._proto = v2.Connection(v2.Role.SENDER)
            return
        proto = SecureConnection(v2.Role.SENDER, key=self.key)
        self._proto = proto
        self._sock.sendall(proto.hello())
        while not isinstance(self._next(), Handshake):
            pass

    def _next(self) -> object:
        """The next protocol event, reading from the socket until there is one."""
        assert self._sock is not None and self._proto is not None
        while True:
            event = self._proto.next_event()
            if event is not v2.NEED_DATA:
                return event
            chunk = self._sock.recv(65536)
            if chunk:
                self._proto.receive_data(chunk)
            else:
                self._proto.receive_eof()

    def _paced_send(self, data: bytes) -> None:
        assert self._sock is not None and self.pace is not None
        burst = max(1500.0, self.pace * 0.05)
        view = memoryview(data)
        while view:
            now = time.monotonic()
            self._pace_tokens = min(burst, self._pace_tokens + (now - self._pace_t) * self.pace)
            self._pace_t = now
            if self._pace_tokens < min(1500, len(view)):
                time.sleep((min(1500, len(view)) - self._pace_tokens) / self.pace)
                continue
            n = int(min(self._pace_tokens, len(view)))
            self._sock.sendall(view[:n])
            self._pace_tokens -= n
            view = view[n:]

    def _exchange(self, frame: v2.ImageFrame) -> v2.Ack:
        assert self._sock is not None and self._proto is not None
        data = self._proto.send(frame)
        self.last_frame_bytes = len(data)
        if self.pace is None:
            self._sock.sendall(data)
        else:
            self._paced_send(data)
        seq = frame.seq
        while True:
            event = self._next()
            if isinstance(event, v2.Ack):
                if event.seq in (seq, 0):
                    return event
                continue  # a stale ack from before a reconnect
            if event is v2.CLOSED:
                raise ConnectionResetError("receiver closed the connection")

    def send(self, frame: v2.ImageFrame) -> v2.Ack:
        """Send one frame and return its acknowledgement, reconnecting on a dropped connection."""
        self.last_frame_bytes = len(v2.encode_image(frame))  # checks the frame before any connection
        last: Exception | None = None
        fatal: TransportError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.reconnects += 1
                time.sleep(min(2.0, 0.2 * 2**attempt))
            try:
                if self._sock is None:
                    try:
                        self._open()
                    except SealError as exc:  # the key or the policy, not the link: retrying can't help
                        self.close()
                        fatal = TransportError(f"{self.host}:{self.port}: {exc}")
                        break
                ack = self._exchange(frame)
                if ack.status == v2.Status.SHUTTING_DOWN:
                    self.close()
                    last = TransportError(f"receiver shutting down: {ack.message}")
                    continue
                if ack.seq == 0 and frame.seq != 0:
                    self.close()  # the receiver dropped the connection after a stream error
                return ack
            except (OSError, ProtocolError, TransportError) as exc:  # reset, EOF, timeout, refused reconnect
                last = exc
                self.close()
        if fatal is not None:
            raise fatal
        raise TransportError(
            f"no acknowledgement from {self.host}:{self.port} for frame {frame.seq} after "
            f"{self.retries + 1} attempts: {last}"
        )


class Pipeline:
    """Several v2 frames in flight on one connection, acknowledgements coming back as a window.

    What a live stream needs instead of stop-and-wait (one frame on the wire, then its answer): up to
    ``window`` frames are written before the first is acknowledged, so a link whose round trip is
    longer than a frame interval still carries every frame. ``submit`` writes a frame (paced by the
    client's rate) and returns; a reader thread puts every acknowledgement on ``acks`` as
    ``(seq, Ack, monotonic time)``. When the connection drops, every frame still in flight is answered
    locally with ``KEY_FRAME_NEEDED`` ("connection lost"): a new connection means a new decoder at the
    receiver, so the stream goes on from the next key frame, and the next ``submit`` reconnects
    (retrying a refused connection for up to ``reconnect_wait`` seconds: a receiver restarting).
    """

    def __init__(self, client: V2Client, window: int = 4, reconnect_wait: float = 30.0) -> None:
        if window < 1:
            raise ValueError("the window holds at least one frame")
        self.client = client
        self.window = window
        self.reconnect_wait = reconnect_wait
        self.acks: queue.Queue[tuple[int, v2.Ack, float]] = queue.Queue()
        self._inflight: dict[int, int] = {}  # seq -> payload bytes, of the frames not yet acknowledged
        #: Also hold the next frame while the ones in flight hold this many payload bytes (at least
        #: one frame always goes): what a stream sets to a fraction of a second of its rate, so that
        #: when the link slows down, no more than that waits in its queues.
        self.max_bytes: float | None = None
        self._cond = threading.Condition()
        self._generation = 0
        self._closed = False
        self.reconnects = 0
        #: Bytes on the wire of the last frame written (sealing included; an INTER is smaller).
        self.last_frame_bytes = 0

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._inflight)

    @property
    def compact(self) -> bool:
        """This connection sends inter frames as INTER messages (its receiver said it reads them)."""
        proto = self.client._proto
        return bool(proto is not None and proto.compact)

    @property
    def _inflight_bytes(self) -> int:
        return sum(self._inflight.values())

    def _connect(self) -> None:
        client = self.client
        wait, client.wait_for = client.wait_for, max(client.wait_for, self.reconnect_wait if self._generation else 0)
        try:
            client._open()
        except SealError as exc:  # the key or the policy, not the link: retrying can't help
            client.close()
            raise TransportError(f"{client.host}:{client.port}: {exc}") from None
        finally:
            client.wait_for = wait
        generation = self._generation
        threading.Thread(target=self._read, args=(generation,), name="stream-acks", daemon=True).start()

    def submit(self, frame: v2.ImageFrame) -> None:
        """Write one frame; blocks while ``window`` frames are unacknowledged (or the pacer holds it)."""
        size = len(frame.payload)
        with self._cond:
            deadline = time.monotonic() + self.client.timeout
            while len(self._inflight) >= self.window or (
                self._inflight and self.max_bytes is not None and self._inflight_bytes + size > self.max_bytes
            ):
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())) and time.monotonic() > deadline:
                    self._lost(self._generation, f"no acknowledgement in {self.client.timeout:.0f} s")
        if self.client._sock is None:
            if self._generation:
                self.reconnects += 1
            self._connect()
        client = self.client
        assert client._proto is not None
        data = client._proto.send(frame)
        self.last_frame_bytes = len(data)
        generation = self._generation
        with self._cond:
            self._inflight[frame.seq] = size
        try:
            if client.pace is None:
                client._sock.sendall(data)
            else:
                client._paced_send(data)
        except (OSError, AttributeError) as exc:  # AttributeError: the reader closed the socket meanwhile
            self._lost(generation, f"connection lost: {getattr(exc, 'strerror', None) or exc}")

    def _read(self, generation: int) -> None:
        client = self.client
        try:
            while True:
                try:
                    event = client._next()
                except TimeoutError:
                    with self._cond:
                        idle = not self._inflight
                    if idle and generation == self._generation and not self._closed:
                        continue  # a paused stream, not a dead link
                    raise
                if isinstance(event, v2.Ack):
                    if event.seq == 0 and not event.ok:
                        # The receiver refused the next frame it read so badly that it hangs up (a
                        # header over its limits): that is the oldest one in flight; tell it so.
                        with self._cond:
                            oldest = min(self._inflight, default=None)
                            if oldest is not None:
                                self._inflight.pop(oldest)
                        if oldest is not None:
                            self.acks.put((oldest, v2.Ack(oldest, event.status, event.message), time.monotonic()))
                        raise TransportError(f"receiver ended the connection: {event.status.name}: {event.message}")
                    with self._cond:
                        known = self._inflight.pop(event.seq, None) is not None
                        self._cond.notify_all()
                    if known:
                        self.acks.put((event.seq, event, time.monotonic()))
                elif event is v2.CLOSED:
                    raise ConnectionResetError("receiver closed the connection")
        except (OSError, ProtocolError, TransportError, AttributeError) as exc:
            if not self._closed:
                self._lost(generation, f"connection lost: {getattr(exc, 'strerror', None) or exc}")

    def _lost(self, generation: int, reason: str) -> None:
        with self._cond:
            if generation != self._generation:
                return
            self._generation += 1
            lost, self._inflight = self._inflight, {}
            self._cond.notify_all()
        self.client.close()
        if not self._closed:
            log.warning("%s; %d frame(s) in flight lost, the stream goes on from a key frame", reason, len(lost))
        now = time.monotonic()
        for seq in sorted(lost):
            self.acks.put((seq, v2.Ack(seq, v2.Status.KEY_FRAME_NEEDED, reason), now))

    def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the frames in flight to be answered; the rest count as lost."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._inflight and time.monotonic() < deadline:
                self._cond.wait(timeout=0.05)
        if self.in_flight:
            self._lost(self._generation, f"no acknowledgement within {timeout:.0f} s of the end")

    def close(self) -> None:
        self._closed = True
        self.client.close()
