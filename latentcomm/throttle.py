"""A slow link on loopback: a TCP proxy whose sender-to-receiver direction runs at a fixed rate.

    python -m latentcomm.throttle --listen 9000 --to 127.0.0.1:65432 --rate 64k

Try a stream the way it will meet a thin link (the benchmark and the tests use it). The forward
direction is a token bucket of ``rate`` bits/s with a small burst (about 50 ms of the rate, at least
one 1,500-byte packet): bytes wait in the proxy, as they would in a modem's or radio's buffer; the
answer direction (acknowledgements) is not throttled. Every forwarded chunk is logged with its time,
so callers can check the rate over any window.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
import time

log = logging.getLogger(__name__)


class Throttle:
    """Proxy ``listen`` -> ``upstream`` with the forward direction limited to ``rate_bps``."""

    def __init__(self, upstream: tuple[str, int], rate_bps: float, listen: tuple[str, int] = ("127.0.0.1", 0)):
        self.upstream = upstream
        self.rate = rate_bps / 8
        self.burst = max(1500.0, self.rate * 0.05)
        self.sock = socket.create_server(listen)
        self.port = self.sock.getsockname()[1]
        self.log: list[tuple[float, int]] = []  # (monotonic time, bytes forwarded)
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._t = time.monotonic()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, name="throttle", daemon=True).start()

    def _take(self, n: int) -> None:
        """Block until the shared bucket allows ``n`` bytes (all connections share one link)."""
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
                self._t = now
                if self._tokens >= n:
                    self._tokens -= n
                    self.log.append((now, n))
                    return
                wait = (n - self._tokens) / self.rate
            time.sleep(min(wait, 0.05))

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, throttled: bool) -> None:
        chunk = 1500 if throttled else 65536
        try:
            while data := src.recv(chunk):
                if throttled:
                    self._take(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def bytes_per_second(self, window_s: float) -> list[float]:
        """Forwarded bytes/s over every full ``window_s`` window (stepped by a tenth of it)."""
        with self._lock:
            events = list(self.log)
        if not events:
            return []
        t0, t1 = events[0][0], events[-1][0]
        out, step = [], window_s / 10
        start = t0
        while start + window_s <= t1:
            total = sum(n for t, n in events if start <= t < start + window_s)
            out.append(total / window_s)
            start += step
        return out

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def main(argv: list[str] | None = None) -> int:
    from latentcomm.stream import parse_rate

    p = argparse.ArgumentParser(prog="python -m latentcomm.throttle", description=__doc__.split("\n")[0])
    p.add_argument("--listen", type=int, default=9000, help="local port to listen on (127.0.0.1)")
    p.add_argument("--to", default="127.0.0.1:65432", help="HOST:PORT of the receiver")
    p.add_argument("--rate", default="64k", help="link rate in bits/s (64k, 1M, ...)")
    args = p.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    try:
        rate = parse_rate(args.rate)
        t = Throttle((host or "127.0.0.1", int(port)), rate, ("127.0.0.1", args.listen))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"127.0.0.1:{t.port} -> {args.to} at {rate / 1000:g} kbit/s; Ctrl-C to stop", file=sys.stderr)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
