"""A slow link on loopback: a TCP proxy whose sender-to-receiver direction runs at a fixed rate.

    python -m latentcomm.transports.throttle --listen 9000 --to 127.0.0.1:65432 --rate 64k
    python -m latentcomm.transports.throttle --listen 9000 --to 127.0.0.1:65432 --rate 256k,64k@10s,256k@20s

Try a stream the way it will meet a thin link (the benchmark and the tests use it). The forward
direction is a token bucket of ``rate`` bits/s with a small burst (about 50 ms of the rate, at least
one 1,500-byte packet): bytes wait in the proxy, as they would in a modem's or radio's buffer; the
answer direction (acknowledgements) is not throttled. Forwarded bytes are logged in 50 ms bins (the
last half hour of them), so callers can check the rate over any window.
"""

from __future__ import annotations

import argparse
import logging
import math
import socket
import sys
import threading
import time
from collections import deque

log = logging.getLogger(__name__)

#: The forwarded-bytes log: bins of this many seconds, the newest LOG_S seconds of them.
LOG_BIN_S = 0.05
LOG_S = 1800.0


def parse_schedule(text: str) -> list[tuple[float, float]]:
    """'256k,64k@10s,256k@20s' -> [(0, 256000), (10, 64000), (20, 256000)]: the link's rate from each
    time on, in seconds from the first byte forwarded. ValueError for anything else."""
    from latentcomm.stream import parse_rate

    steps: list[tuple[float, float]] = []
    for n, part in enumerate(text.split(",")):
        rate, _, at = part.strip().partition("@")
        if n == 0 and at:
            raise ValueError(f"the first rate of {text!r} applies from the start: drop its @")
        if n and not at:
            raise ValueError(f"{part!r}: say when it starts, e.g. 64k@10s")
        t = 0.0
        if at:
            try:
                t = float(at.strip().lower().removesuffix("s"))
            except ValueError:
                raise ValueError(f"{part!r}: not a time (e.g. 64k@10s)") from None
            if not math.isfinite(t) or t <= steps[-1][0]:
                raise ValueError(f"{part!r}: times must be finite and increasing")
        steps.append((t, parse_rate(rate)))
    return steps


class Throttle:
    """Proxy ``listen`` -> ``upstream`` with the forward direction limited to ``rate_bps``.

    ``rate_bps`` may be a schedule, ``[(seconds, bits/s), ...]`` from the first byte forwarded
    (``parse_schedule``): a link whose rate changes mid-stream, to test a sender that adapts.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        rate_bps: float | list[tuple[float, float]],
        listen: tuple[str, int] = ("127.0.0.1", 0),
        clock=time.monotonic,
    ):
        self.upstream = upstream
        self.clock = clock  # injectable: a test runs an hour of link in a moment
        self.schedule = [(0.0, float(rate_bps))] if isinstance(rate_bps, int | float) else list(rate_bps)
        self._started: float | None = None
        self.rate = self.schedule[0][1] / 8
        self.burst = max(1500.0, self.rate * 0.05)
        self.sock = socket.create_server(listen)
        self.port = self.sock.getsockname()[1]
        # (start of a LOG_BIN_S bin, bytes forwarded in it): bounded to LOG_S of history (36,000 bins, ~4 MB),
        # where a tuple per 1,500-byte chunk took ~420 MB an hour at 10 Mbit/s.
        self.log: deque[tuple[float, int]] = deque(maxlen=int(LOG_S / LOG_BIN_S))
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._t = clock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, name="throttle", daemon=True).start()

    def _take(self, n: int) -> None:
        """Block until the shared bucket allows ``n`` bytes (all connections share one link)."""
        while True:
            with self._lock:
                now = self.clock()
                if self._started is None:
                    self._started = now
                rate = [r for t, r in self.schedule if now - self._started >= t][-1] / 8
                if rate != self.rate:
                    self.rate, self.burst = rate, max(1500.0, rate * 0.05)
                    log.info("link rate now %g kbit/s", 8 * rate / 1000)
                self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
                self._t = now
                if self._tokens >= n:
                    self._tokens -= n
                    start = now - now % LOG_BIN_S
                    if self.log and self.log[-1][0] == start:
                        self.log[-1] = (start, self.log[-1][1] + n)
                    else:
                        self.log.append((start, n))
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
            for sock in (client, server):  # a link of its own rate, not Nagle's 40 ms waits
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m latentcomm.transports.throttle", description=__doc__.split("\n")[0])
    p.add_argument("--listen", type=int, default=9000, help="local port to listen on (127.0.0.1)")
    p.add_argument("--to", default="127.0.0.1:65432", help="HOST:PORT of the receiver")
    p.add_argument(
        "--rate",
        default="64k",
        help="link rate in bits/s (64k, 1M, ...), or a schedule: 256k,64k@10s,256k@20s (the rate from each time "
        "on, seconds from the first byte forwarded)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    try:
        schedule = parse_schedule(args.rate)
    except ValueError as exc:
        p.error(f"--rate: {exc}")
    try:
        t = Throttle((host or "127.0.0.1", int(port)), schedule, ("127.0.0.1", args.listen))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"127.0.0.1:{t.port} -> {args.to} at {args.rate} bit/s; Ctrl-C to stop", file=sys.stderr)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
