"""Receiver throughput: images/s and p50/p95 latency for 1, 4 and 16 concurrent v2 senders.

    python -m benchmarks.server                     # small model, 64x64 images, 1/4/16 senders
    python -m benchmarks.server --size 256 --images 20 --model models/latentcomm-kl-f8

Starts the real receiver_sdvae.py process on a free port (--no-show, results to a temp --out unless
--no-out), then runs N sender threads, each sending its share of pre-encoded v2 frames over its own
connection and timing send -> acknowledgement. Latency therefore includes queueing behind other
senders: it is what a sender sees. Every level runs twice, side by side: in clear, and sealed
(--key, docs/security.md) against a second receiver holding the key, so the cost of sealing is
measured in the same run. Prints JSON and a table.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import RESULTS, run_meta, write_results
from latentcomm.engine import Engine
from latentcomm.transports.tcp import V2Client
from latentcomm.wire import v2
from latentcomm.wire.encodings import COMP_ZSTD, ENC_FLOAT16, compress, v2_quantize
from latentcomm.wire.keys import Key, generate_key

REPO = Path(__file__).resolve().parents[1]


def small_model(folder: Path) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=[16, 16, 32, 32],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        norm_num_groups=8,
        layers_per_block=1,
        mid_block_add_attention=False,
    ).save_pretrained(folder)
    return folder


def start_receiver(model: str, out: Path | None, key: Path | None = None) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, str(REPO / "receiver_sdvae.py"), "--port", "0", "--no-show", "--model", model]
    cmd += ["--out", str(out)] if out else []
    cmd += ["--key", str(key)] if key else []
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"},
    )
    for line in proc.stderr:
        m = re.search(r"Receiver listening on [^ ]+:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(m.group(1))
    raise RuntimeError("receiver did not start")


def frames_for(engine: Engine, n: int, size: int) -> list[v2.ImageFrame]:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32))
    latent = engine.encode(x)
    raw, params = v2_quantize(latent, ENC_FLOAT16)
    payload = compress(raw, COMP_ZSTD)
    return [
        v2.ImageFrame(
            i + 1,
            engine.model_id,
            ENC_FLOAT16,
            COMP_ZSTD,
            tuple(latent.shape[1:]),
            (size, size),
            payload,
            f"img{i}",
            tuple(params),
        )
        for i in range(n)
    ]


def run_level(port: int, frames: list[v2.ImageFrame], senders: int, key: Key | None = None) -> dict:
    share = [frames[i::senders] for i in range(senders)]
    latencies: list[float] = []
    lock = threading.Lock()

    def send(chunk: list[v2.ImageFrame]) -> int:
        ok = 0
        with V2Client("127.0.0.1", port, timeout=300, key=key) as client:
            for f in chunk:
                t = time.perf_counter()
                ok += client.send(f).ok
                with lock:
                    latencies.append(time.perf_counter() - t)
        return ok

    t0 = time.perf_counter()
    with ThreadPoolExecutor(senders) as pool:
        ok = sum(pool.map(send, share))
    wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return {
        "senders": senders,
        "images": len(frames),
        "acknowledged": ok,
        "seconds": wall,
        "images_per_s": len(frames) / wall,
        "p50_latency_s": float(np.percentile(lat, 50)),
        "p95_latency_s": float(np.percentile(lat, 95)),
    }


def sealed_frame_bytes(frame: v2.ImageFrame, key: Key) -> bytes:
    """One frame as a sealed connection sends it (after a handshake done in memory)."""
    from latentcomm.wire.keys import Keyring
    from latentcomm.wire.sealed import SecureConnection

    tx = SecureConnection(v2.Role.SENDER, key=key)
    rx = SecureConnection(v2.Role.RECEIVER, keyring=Keyring([key]))
    rx.receive_data(tx.hello())
    tx.receive_data(rx.next_event().reply)
    tx.next_event()
    return tx.send(frame)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="receiver/sender model (default: a small random AutoencoderKL)")
    p.add_argument("--size", type=int, default=64, help="square image size of the frames")
    p.add_argument("--images", type=int, default=64, help="images per concurrency level")
    p.add_argument("--levels", default="1,4,16", help="comma list of concurrent sender counts")
    p.add_argument("--no-out", action="store_true", help="don't write PNGs at the receiver (decode only)")
    p.add_argument("--json", type=Path, default=RESULTS / "server.json", help="where to write the results")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(small_model(Path(tmp) / "vae"))
        engine = Engine(model, "cpu", "auto")
        frames = frames_for(engine, args.images, args.size)
        key = generate_key(Path(tmp) / "bench.key")
        procs = []
        try:
            proc, port = start_receiver(model, None if args.no_out else Path(tmp) / "out")
            procs.append(proc)
            proc, sealed_port = start_receiver(
                model, None if args.no_out else Path(tmp) / "out-sealed", Path(tmp) / "bench.key"
            )
            procs.append(proc)
            run_level(port, frames[:4], 1)  # warm-up
            run_level(sealed_port, frames[:4], 1, key)
            levels, sealed = [], []
            for n in args.levels.split(","):
                levels.append(run_level(port, frames, int(n)))
                sealed.append(run_level(sealed_port, frames, int(n), key))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    result = {
        **run_meta(),
        "model": model if args.model else "small random AutoencoderKL",
        "size": args.size,
        "writes_png": not args.no_out,
        "levels": levels,
        "levels_sealed": sealed,
        "sealed_overhead_bytes_per_frame": len(sealed_frame_bytes(frames[0], key)) - len(v2.encode_image(frames[0])),
    }
    print(f"{'senders':>7} {'sealed':>6} {'images':>6} {'ok':>4} {'img/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for plain_r, sealed_r in zip(levels, sealed, strict=True):
        for label, r in (("no", plain_r), ("yes", sealed_r)):
            print(
                f"{r['senders']:>7} {label:>6} {r['images']:>6} {r['acknowledged']:>4} {r['images_per_s']:>8.1f} "
                f"{1000 * r['p50_latency_s']:>8.1f} {1000 * r['p95_latency_s']:>8.1f}"
            )
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
