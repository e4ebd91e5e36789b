"""TCP transport: sockets live here and only here.

The sender side opens a connection, writes one frame's bytes and closes. The receiver side is a
small threaded server: one thread accepts, one thread per connection feeds bytes into the sans-I/O
``LegacyReceiver`` under a per-read timeout, and complete frames are handed to the caller through
a bounded queue. The caller (the receiver script's main thread) decodes and displays them one at a
time, so model memory stays flat however many senders connect, and matplotlib stays on the main
thread where GUI toolkits require it.
"""

from __future__ import annotations

import errno
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass

from latentcomm.errors import ProtocolError, TransportError
from latentcomm.protocol import NEED_DATA, LegacyFrame, LegacyReceiver, Limits

log = logging.getLogger(__name__)

RECV_CHUNK = 256 * 1024


def _connect(host: str, port: int, timeout: float, wait_for: float) -> socket.socket:
    """Open a connection, retrying a refused one for up to ``wait_for`` seconds (receiver starting)."""
    deadline = time.monotonic() + wait_for
    while True:
        try:
            return socket.create_connection((host, port), timeout=timeout)
        except ConnectionRefusedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.25)


def send_frame(host: str, port: int, data: bytes, timeout: float = 30.0, wait_for: float = 0.0) -> float:
    """Connect, send ``data``, close. Returns the seconds from connected to sent (TCP handshake excluded).

    ``wait_for``: keep retrying a refused connection this long, so a sender can be started
    together with its receiver. Raises TransportError with a one-line, actionable message.
    """
    where = f"{host}:{port}"
    try:
        with _connect(host, port, timeout, wait_for) as sock:
            t0 = time.perf_counter()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
    except ConnectionRefusedError:
        raise TransportError(
            f"connection refused by {where}: is the receiver running? start it with 'python receiver_sdvae.py'"
        ) from None
    except socket.gaierror as exc:
        raise TransportError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    except TimeoutError:
        raise TransportError(f"timed out after {timeout:.0f} s talking to {where}") from None
    except (BrokenPipeError, ConnectionResetError):
        raise TransportError(
            f"{where} closed the connection before the frame was sent (it may have rejected it; see the receiver's log)"
        ) from None
    except OSError as exc:
        raise TransportError(f"cannot send to {where}: {exc.strerror or exc}") from None
    return time.perf_counter() - t0


@dataclass(frozen=True)
class ReceivedFrame:
    """A complete frame, who sent it, and transport-level facts for the report."""

    frame: LegacyFrame
    peer: str
    frame_bytes: int
    receive_seconds: float


@dataclass
class ServerStats:
    connections: int = 0
    frames: int = 0
    rejected: int = 0
    bytes_received: int = 0


class FrameServer:
    """Threaded TCP server producing ``ReceivedFrame`` objects on ``frames`` (a bounded queue).

    Limits: ``read_timeout`` per read (a silent or trickling peer is dropped), ``max_connections``
    handled at once (extra ones are closed immediately and logged), and the protocol ``Limits``.
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
    ) -> None:
        self.limits = limits or Limits()
        self.read_timeout = read_timeout
        self.frame_timeout = frame_timeout
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

    def start(self) -> FrameServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting; connections in flight finish or time out on their own."""
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

    def _serve_connection(self, conn: socket.socket, peer: str) -> None:
        parser = LegacyReceiver(self.limits)
        received = 0
        t0 = time.perf_counter()
        try:
            conn.settimeout(self.read_timeout)
            while True:
                if time.perf_counter() - t0 > self.frame_timeout:
                    raise TransportError(f"frame not complete after {self.frame_timeout:.0f} s")
                try:
                    data = conn.recv(RECV_CHUNK)
                except TimeoutError:
                    # A complete legacy frame is only known at EOF; a sender that stays open after
                    # sending everything gets its frame accepted once it goes quiet.
                    if parser.header is None:
                        raise TransportError(f"no data for {self.read_timeout:.0f} s") from None
                    parser.receive_eof()
                    data = None
                if data:
                    received += len(data)
                    with self._lock:
                        self.stats.bytes_received += len(data)
                    parser.receive_data(data)
                    continue
                if data is not None:
                    if not parser.started:
                        return  # connected and closed without a byte: a port check, not an error
                    parser.receive_eof()
                event = parser.next_event()
                if event is NEED_DATA:  # pragma: no cover - EOF always completes or raises
                    continue
                item = ReceivedFrame(event, peer, received, time.perf_counter() - t0)
                while not self._stop.is_set():
                    try:
                        self.frames.put(item, timeout=0.2)
                        with self._lock:
                            self.stats.frames += 1
                        break
                    except queue.Full:
                        continue
                return
        except (ProtocolError, TransportError) as exc:
            self._reject(peer, str(exc))
        except (ConnectionResetError, BrokenPipeError) as exc:
            self._reject(peer, f"connection lost: {exc.strerror or exc}")
        except OSError as exc:
            self._reject(peer, f"socket error: {exc.strerror or exc}")
        finally:
            conn.close()
            with self._lock:
                self._active -= 1
