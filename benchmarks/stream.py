"""Streams over thin links, temporal redundancy, and decode throughput through a broker.

    python benchmarks/stream.py            # ~3 minutes; writes benchmarks/results/stream.json
    python benchmarks/stream.py --quick    # seconds: the harness only

1. Bandwidth: a generated panning 256x256 video at 10 fps goes through the real sender
   (--bandwidth, learned codec) and a rate-limited TCP proxy (latentcomm.throttle) at 64k, 256k and
   1M bit/s to the real receiver: achieved fps, bits/s on the link (max over 5-second windows),
   mean PSNR of what arrived (the receiver's PNGs against the source frames), latency p50/p95,
   frames dropped.
2. Temporal redundancy: a static scene with a small moving patch and a panning scene, 256x256,
   quality 6, key frames only vs inter frames (key every 10): bytes per frame and PSNR.
3. Broker: 4 sender threads x N pre-encoded 256x256 frames (quality 7) through Mosquitto to 1 and
   to 2 receiver processes in one group: frames decoded and acknowledged per second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.meta import run_meta  # noqa: E402
from latentcomm.throttle import Throttle  # noqa: E402
from tests.conftest import PYTHON, ReceiverProcess, script_env  # noqa: E402
from tests.videos import make_video  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def bandwidth_run(video: Path, rate: str, tmp: Path) -> dict:
    from latentcomm.stream import parse_rate, video_frames

    out = tmp / f"out-{rate}"
    rx = ReceiverProcess("--codec", "learned", "--no-show", "--json", "--out", str(out))
    try:
        rx.wait_listening()
        link = Throttle(("127.0.0.1", rx.port), parse_rate(rate))
        res = subprocess.run(
            [PYTHON, str(REPO / "sender_sdvae.py"), "--codec", "learned", "--port", str(link.port), "--video",
             str(video), "--bandwidth", rate, "--json"],
            cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(res.stderr)
        rows = [json.loads(line) for line in res.stdout.splitlines()]
        summary = next(r for r in rows if r.get("summary"))
        sent = [r for r in rows if "bytes" in r and not r.get("summary")]
        windows = link.bytes_per_second(5.0)
        link.close()
    finally:
        rx.stop()
    source = {f.name: np.asarray(f.image) for f in video_frames(video)}
    reports = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    quality = [psnr(source[r["name"]], np.asarray(Image.open(r["recon_path"]).convert("RGB"))) for r in reports]
    return {
        "rate": rate,
        "rate_bps": parse_rate(rate),
        "frames_from_source": summary["frames_from_source"],
        "frames_sent": summary["frames_sent"],
        "frames_dropped": summary["frames_dropped"],
        "achieved_fps": summary["achieved_fps"],
        "bits_per_second": summary["bits_per_second"],
        "max_5s_window_bps": 8 * max(windows) if windows else None,
        "mean_psnr_db": statistics.fmean(quality) if quality else None,
        "mean_quality": statistics.fmean(r["quality"] for r in sent) if sent else None,
        "inter_frames": sum(r.get("frame_type") == "inter" for r in sent),
        "latency_p50_s": summary["latency_p50_s"],
        "latency_p95_s": summary["latency_p95_s"],
    }


def temporal(tmp: Path, frames: int) -> list[dict]:
    from latentcomm.codecs import LEARNED_MODEL_DIR, LearnedCodec
    from latentcomm.images import pil_to_tensor, tensor_to_uint8
    from latentcomm.stream import video_frames

    tx = LearnedCodec(LEARNED_MODEL_DIR, "cpu", "fp32")
    rx = LearnedCodec(LEARNED_MODEL_DIR, "cpu", "fp32")
    out = []
    for motion in ("static", "pan"):
        video = make_video(tmp / f"{motion}.mp4", frames=frames, fps=10, motion=motion)
        source = list(video_frames(video))
        for mode, interval in (("key frames only", 1), ("inter frames, key every 10", 10)):
            sizes, quality, ref = [], [], None
            for i, f in enumerate(source):
                enc = tx.encode(
                    pil_to_tensor(f.image), quality=6.0, reference=ref if i % interval else None, context=False
                )
                ref = enc.facts["reference"]
                recon = tensor_to_uint8(rx.decode(enc.encoding, 0, enc.shape, enc.payload, (), (256, 256)))
                sizes.append(len(enc.payload))
                quality.append(psnr(np.asarray(f.image), recon))
            out.append({
                "scene": motion, "mode": mode, "frames": len(source),
                "bytes_per_frame": statistics.fmean(sizes), "mean_psnr_db": statistics.fmean(quality),
                "min_psnr_db": min(quality),
            })  # fmt: skip
    return out


def broker_run(tmp: Path, receivers: int, per_sender: int) -> dict | None:
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if mosquitto is None:
        return None
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp / f"broker{receivers}"
    folder.mkdir()
    (folder / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen(
        [mosquitto, "-c", str(folder / "m.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)
    url = f"mqtt://127.0.0.1:{port}"
    rxs = []
    # Receivers side by side on one host split its cores, as configure_threads() asks of a fleet:
    # two processes with a thread per core each oversubscribe them and decode 2-5x slower (measured).
    threads = str(max(1, len(os.sched_getaffinity(0)) // receivers))
    try:
        for i in range(receivers):
            rx = ReceiverProcess("--codec", "learned", "--no-show", "--json", "--broker", url, "--topic", "bench",
                                 "--client-id", f"bench-rx{i}", env=script_env(OMP_NUM_THREADS=threads))  # fmt: skip
            rx.wait_listening()
            rxs.append(rx)
        from concurrent.futures import ThreadPoolExecutor

        from latentcomm import protocol_v2 as v2
        from latentcomm.codecs import LEARNED_MODEL_DIR, LearnedCodec
        from latentcomm.images import pil_to_tensor
        from latentcomm.mqtt import MqttSender

        codec = LearnedCodec(LEARNED_MODEL_DIR, "cpu", "fp32")
        src = Image.open(REPO / "temp" / "apple.jpeg").convert("RGB").resize((256, 256))
        encoded = [codec.encode(pil_to_tensor(src.rotate(90 * k)), quality=7.0) for k in range(4)]

        def send(k: int) -> int:
            e = encoded[k]
            with MqttSender(url, "bench", timeout=120, ack_timeout=60) as client:
                return sum(
                    client.send(
                        v2.ImageFrame(
                            i + 1, codec.model_id, e.encoding, 0, e.shape, (256, 256), e.payload, f"s{k}_{i:02d}"
                        )
                    ).ok  # fmt: skip
                    for i in range(per_sender)
                )

        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            acked = sum(pool.map(send, range(4)))
        wall = time.perf_counter() - t0
        decoded = []
        for rx in rxs:
            rx.stop()
            n = 0
            while not rx.stdout_lines.empty():
                n += '"seq"' in rx.stdout_lines.get()
            decoded.append(n)
    finally:
        for rx in rxs:
            if rx.proc.poll() is None:
                rx.proc.kill()
        broker.terminate()
        broker.wait(10)
    return {
        "receivers": receivers,
        "senders": 4,
        "frames": 4 * per_sender,
        "acknowledged": acked,
        "decoded_per_receiver": decoded,
        "seconds": wall,
        "frames_per_s": 4 * per_sender / wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="64k,256k,1M", help="comma list of link rates")
    p.add_argument("--seconds", type=float, default=12.0, help="length of the bandwidth test video")
    p.add_argument("--quick", action="store_true", help="harness check: one short rate run, tiny sets")
    p.add_argument("--json", type=Path, default=RESULTS / "stream.json", help="where to write the results")
    args = p.parse_args(argv)
    rates = args.rates.split(",")
    seconds, temporal_frames, per_sender = args.seconds, 20, 10
    if args.quick:
        rates, seconds, temporal_frames, per_sender = ["1M"], 2.0, 3, 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = make_video(tmp / "pan.mp4", frames=int(seconds * 10), fps=10, motion="pan")
        bandwidth = [bandwidth_run(video, r, tmp) for r in rates]
        redundancy = temporal(tmp, temporal_frames)
        broker = [b for b in (broker_run(tmp, n, per_sender) for n in (1, 2)) if b is not None]
    result = {**run_meta(), "video": "generated panning 256x256, 10 fps", "bandwidth": bandwidth,
              "temporal": redundancy, "broker": broker}  # fmt: skip
    print(f"{'rate':>6} {'fps':>6} {'kbit/s':>8} {'max5s':>8} {'PSNR':>6} {'p50 s':>6} {'p95 s':>6} {'dropped':>8}")
    for r in bandwidth:
        print(f"{r['rate']:>6} {r['achieved_fps']:>6.2f} {r['bits_per_second'] / 1000:>8.1f} "
              f"{(r['max_5s_window_bps'] or 0) / 1000:>8.1f} {r['mean_psnr_db'] or 0:>6.2f} "
              f"{r['latency_p50_s'] or 0:>6.3f} {r['latency_p95_s'] or 0:>6.3f} {r['frames_dropped']:>8}")  # fmt: skip
    for t in redundancy:
        print(f"{t['scene']:>6} {t['mode']:<28} {t['bytes_per_frame']:>8.0f} B/frame  {t['mean_psnr_db']:.2f} dB")
    for b in broker:
        print(f"broker, {b['receivers']} receiver(s): {b['frames_per_s']:.2f} frames/s ({b['decoded_per_receiver']})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
