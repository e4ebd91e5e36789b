"""What a stranger and a long run cost a receiver, after the fixes of issue "Hardening III".

Real receiver processes on loopback (the installed CLI's code, ``receiver_sdvae.py``), real H.264 units
from libx264, real sockets; each figure is measured side by side with its baseline in the same run:

- ``strangers``: RSS of a sealed receiver while 64 strangers who know the key id say HELLO, then
  announce a 90 MiB SEALED body and push what they can of it.
- ``closed_streams``: RSS after 64 connections each sent one 4096x4096 H.264 key frame and closed.
- ``skip_flood``: receiver CPU seconds per wall second under a flood of all-skip inter frames (about a
  dozen bytes each) at 1920x1088, with the default pixel-rate budget, and with the budget lifted.
- ``replay_memory``: the per-frame cost of the sealed broker replay memory holding 4,096 streams with
  full 4,096-counter windows (a journal line), against rewriting the whole memory per frame (what it
  did before).
- ``live_events``: frames a second a receiver handles with no dashboard page open and with 300
  ``/events`` connections attempted (32 are served).
- ``day_stream``: Python heap (tracemalloc) of what a ``--bandwidth auto`` stream sender keeps (the
  rate estimator, latencies, bytes by second) after a simulated hour and after a simulated day at
  10 fps.

    python -m benchmarks.hardening [--json]

Writes benchmarks/results/hardening.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import numpy as np

from benchmarks.harness import RESULTS, run_meta, write_results

REPO = Path(__file__).resolve().parents[1]


def _status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Receiver:
    """A receiver process on a free port (``receiver_sdvae.py --codec learned --no-show``)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "receiver_sdvae.py"), "--codec", "learned", "--no-show", "--port", "0", *args],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.port = 0
        self.dashboard = ""
        deadline = time.monotonic() + 120
        while not self.port or ("--dashboard" in args and not self.dashboard):
            line = self.proc.stderr.readline()
            if not line and (self.proc.poll() is not None or time.monotonic() > deadline):
                raise RuntimeError("receiver did not start: " + "".join(self.lines))
            self.lines.append(line)
            if m := re.search(r"listening on \S+:(\d+)", line):
                self.port = int(m.group(1))
            if line.startswith("Dashboard on "):
                self.dashboard = line.split()[-1]
        import threading

        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def h264_units(width: int, height: int, pictures: int = 1) -> list[bytes]:
    """Access units of a flat grey picture coded ``pictures`` times by libx264 (the first a key frame,
    the rest all-skip inter frames of a dozen bytes); the tests send the same."""
    import av

    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt, enc.time_base = width, height, "yuv420p", Fraction(1, 10)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 128, np.uint8), format="rgb24")
    units = []
    for i in range(pictures):
        frame.pts = i
        units.append(b"".join(bytes(p) for p in enc.encode(frame.reformat(format="yuv420p"))))
    units[-1] += b"".join(bytes(p) for p in enc.encode(None))
    return units


def video_frame(seq: int, unit: bytes, number: int, height: int, width: int, key: bool):
    from latentcomm.codecs.video import FLAG_KEY, VIDEO_HEADER
    from latentcomm.wire import v2

    payload = VIDEO_HEADER.pack(1, FLAG_KEY if key else 0, 1000, number, number, 0, 0) + unit
    return v2.ImageFrame(seq, "h264", 5, 0, (3, height, width), (height, width), payload, "v-000000" if key else "")


def send_all(port: int, frames: list, *, wait: bool = True) -> list:
    from latentcomm.wire import v2

    tx = v2.Connection(v2.Role.SENDER)
    acks = []
    with socket.create_connection(("127.0.0.1", port), timeout=300) as s:
        s.sendall(b"".join(tx.send(f) for f in frames))
        while wait and len(acks) < len(frames):
            while (ev := tx.next_event()) is v2.NEED_DATA:
                data = s.recv(65536)
                if not data:
                    return acks
                tx.receive_data(data)
            acks.append(ev)
    return acks


# -- the measurements ---------------------------------------------------------------------------------------


def strangers(tmp: Path) -> dict:
    from latentcomm.wire import v2
    from latentcomm.wire.keys import Key, generate_key
    from latentcomm.wire.sealed import TYPE_SEALED, SecureConnection

    key_id = generate_key(tmp / "k.key").key_id
    rx = Receiver("--key", str(tmp / "k.key"))
    time.sleep(1.0)
    before = _status(rx.pid, "VmRSS")
    socks, pushed = [], 0
    for _ in range(64):
        hello = bytearray(SecureConnection(v2.Role.SENDER, key=Key(os.urandom(32))).hello())
        hello[v2.PREFIX.size : v2.PREFIX.size + 8] = key_id
        s = socket.create_connection(("127.0.0.1", rx.port), timeout=30)
        s.sendall(bytes(hello))
        s.recv(4096)
        socks.append(s)
    during_hello = _status(rx.pid, "VmRSS")
    for s in socks:
        s.settimeout(5)
        try:
            s.sendall(v2.PREFIX.pack(v2.MAGIC, v2.VERSION, TYPE_SEALED, 0, 90 * 2**20))
            for _ in range(16):
                s.sendall(os.urandom(256 * 1024))
                pushed += 256 * 1024
        except OSError:
            pass
    time.sleep(1.0)
    after = _status(rx.pid, "VmRSS")
    peak = _status(rx.pid, "VmHWM")
    for s in socks:
        s.close()
    rx.stop()
    return {"rss_before_mib": round(before, 1), "rss_64_open_after_hello_mib": round(during_hello, 1),
            "rss_after_the_bodies_mib": round(after, 1), "peak_rss_mib": round(peak, 1),
            "bytes_the_strangers_got_in": pushed}  # fmt: skip


def closed_streams() -> dict:
    rx = Receiver("--max-video-pixels", str(4096 * 4096), "--max-pixel-rate", "1e10", "--max-total-pixel-rate", "1e10")
    key = h264_units(4096, 4096, 1)[0]
    send_all(rx.port, [video_frame(1, key, 0, 4096, 4096, True)])
    time.sleep(1.0)
    before = _status(rx.pid, "VmRSS")
    for _ in range(64):
        send_all(rx.port, [video_frame(1, key, 0, 4096, 4096, True)])
    time.sleep(1.0)
    after = _status(rx.pid, "VmRSS")
    rx.stop()
    return {"key_frame_bytes": len(key), "rss_after_one_stream_mib": round(before, 1),
            "rss_after_64_closed_streams_mib": round(after, 1)}  # fmt: skip


def skip_flood(seconds: float = 10.0) -> dict:
    units = h264_units(1920, 1088, 400)
    out = {"inter_frame_bytes": int(np.median([len(u) for u in units[1:]]))}
    for label, args in (
        ("default budget", ()),
        ("budget lifted", ("--max-pixel-rate", "1e10", "--max-total-pixel-rate", "1e10")),
    ):
        rx = Receiver(*args)
        cpu0, t0, sent, ok = _cpu_s(rx.pid), time.monotonic(), 0, 0
        seq, number = 0, 0
        while time.monotonic() - t0 < seconds:
            frames = []
            for i in range(40):
                seq += 1
                frames.append(video_frame(seq, units[number % len(units)] if i or number else units[0], number,
                                          1088, 1920, number == 0))  # fmt: skip
                number += 1
                if number == len(units):
                    number = 0
            acks = send_all(rx.port, frames)
            sent += len(frames)
            ok += sum(a.ok for a in acks)
        wall = time.monotonic() - t0
        out[label] = {"frames_sent": sent, "frames_decoded": ok, "seconds": round(wall, 2),
                      "receiver_cpu_s_per_s": round((_cpu_s(rx.pid) - cpu0) / wall, 3)}  # fmt: skip
        rx.stop()
    return out


def replay_memory(tmp: Path) -> dict:
    from latentcomm.wire.replay import REPLAY_WINDOW, ReplayMemory, new_stream_id

    memory = ReplayMemory(tmp / "sealed-streams.json")
    key_id, ids = b"k" * 8, [new_stream_id() for _ in range(4096)]
    for sid in ids:
        for c in range(0, REPLAY_WINDOW, 1):
            memory.record(key_id, sid, c) if c in (0, REPLAY_WINDOW - 1) else None
        memory._streams[key_id + sid].seen = (1 << REPLAY_WINDOW) - 1  # every counter of the window seen
    memory._snapshot()
    t0 = time.perf_counter()
    n = 2000
    for i in range(n):
        memory.check(key_id, ids[i % 4096], REPLAY_WINDOW + i)
        memory.record(key_id, ids[i % 4096], REPLAY_WINDOW + i)
    per_frame = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(5):
        memory._snapshot()  # the whole memory rewritten, as every frame did before
    rewrite = (time.perf_counter() - t0) / 5
    t0 = time.perf_counter()
    ReplayMemory(tmp / "sealed-streams.json").close()
    start = time.perf_counter() - t0
    return {"streams": 4096, "window": REPLAY_WINDOW, "ms_per_frame": round(1000 * per_frame, 4),
            "ms_per_whole_rewrite": round(1000 * rewrite, 2), "start_s": round(start, 3),
            "snapshot_bytes": (tmp / "sealed-streams.json").stat().st_size}  # fmt: skip


def live_events(frames: int = 600) -> dict:
    from urllib.parse import urlparse

    units = h264_units(64, 64, frames)
    out = {}
    for clients in (0, 300):
        rx = Receiver("--dashboard", "0", "--max-pixel-rate", "1e10", "--max-total-pixel-rate", "1e10")
        url = urlparse(rx.dashboard)
        held, served = [], 0
        for _ in range(clients):
            s = socket.create_connection((url.hostname, url.port), timeout=30)
            s.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{url.port}\r\n\r\n".encode())
            served += b" 200 " in s.recv(4096).split(b"\r\n", 1)[0]
            held.append(s)
        batch = [video_frame(i + 1, u, i, 64, 64, i == 0) for i, u in enumerate(units)]
        t0 = time.monotonic()
        acks = send_all(rx.port, batch)
        wall = time.monotonic() - t0
        out[f"{clients} clients"] = {"events_connections_served": served, "frames": len(acks),
                                     "frames_per_s": round(sum(a.ok for a in acks) / wall, 1)}  # fmt: skip
        for s in held:
            s.close()
        rx.stop()
    return out


def day_stream() -> dict:
    from latentcomm.ratecontrol import DelayBasedEstimator
    from latentcomm.stream import StreamTally

    tracemalloc.start()
    estimator, tally = DelayBasedEstimator(), StreamTally()
    t, sizes = 0.0, {}
    base = tracemalloc.get_traced_memory()[0]
    for hours in (1, 23):
        for _ in range(hours * 3600 * 10):
            t += 0.1
            estimator.on_ack(t - 0.05, t, 800)
            tally.acknowledged(0.05, int(t), 800)
        sizes["after 1 h" if hours == 1 else "after 24 h"] = round(
            (tracemalloc.get_traced_memory()[0] - base) / 2**20, 2
        )
    tracemalloc.stop()
    return {"fps": 10, "heap_mib": sizes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    p.add_argument("--only", action="append", help="run only these measurements (repeatable)")
    p.add_argument("--out", type=Path, default=RESULTS / "hardening.json", help="where the JSON goes")
    args = p.parse_args(argv)
    results: dict = {"meta": run_meta()}
    if args.only and args.out.exists():  # redo some rows: the others stay
        results = {**json.loads(args.out.read_text()), "meta": results["meta"]}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {
            "strangers": lambda: strangers(Path(tmp)),
            "closed_streams": closed_streams,
            "skip_flood": skip_flood,
            "replay_memory": lambda: replay_memory(Path(tmp)),
            "live_events": live_events,
            "day_stream": day_stream,
        }
        for name, job in jobs.items():
            if args.only and name not in args.only:
                continue
            print(f"{name} ...", file=sys.stderr, flush=True)
            results[name] = job()
            print(f"  {json.dumps(results[name])}", file=sys.stderr, flush=True)
    write_results(args.out, results)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
