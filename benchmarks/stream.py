"""Live video over thin links, temporal redundancy, and decode throughput through a broker.

    python -m benchmarks.stream            # ~25 minutes; writes benchmarks/results/stream.json
    python -m benchmarks.stream --quick    # a minute: the harness only

1. Live video (issue "Live video"): a fixed-camera scene built here (a held-out photo as the hall,
   people-sized patches of another photo crossing it, sensor noise) and the three shared movie
   clips, each at 320x176 and 640x352, 10 fps, 10 s, over ``latentcomm.transports.throttle`` at 64k, 256k and
   1M bit/s, through the real sender and receiver processes, sealed (``--key``): ours with
   ``--codec h264``, ``--codec av1`` and (320x176 only: it codes about two frames a second) the
   learned codec under ``--bandwidth``. The anchors are plain PyAV pipes at the same rate with every
   frame delivered and no framing at all: libx264 (veryfast, zerolatency, no B-frames) and SVT-AV1
   (preset 10, low delay, CBR). For each run, what a viewer sees: at every source frame, the newest
   decoded frame whose source index is not later than it (mid-grey before the first), its PSNR and
   (every 10th frame) SSIMULACRA2 against the source frame; frames shown; latency from capture to
   acknowledgement p50 / p95; sender and receiver CPU seconds per frame (the receiver's excludes its
   start-up; it writes two PNGs per frame, as --out does).
2. Temporal redundancy of the learned codec: a static scene with a small moving patch and a panning
   scene, 256x256, quality 6, key frames only vs inter frames (key every 10): bytes per frame and PSNR.
3. Broker: 4 sender threads x N pre-encoded 256x256 frames (quality 7) through Mosquitto to 1 and
   to 2 receiver processes in one group: frames decoded and acknowledged per second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks.harness import RESULTS, run_meta, write_results
from latentcomm.enhance import ENHANCER_DIR
from latentcomm.scenes import station_scene
from latentcomm.transports.throttle import Throttle
from tests.conftest import PYTHON, ReceiverProcess, script_env
from tests.videos import make_video

REPO = Path(__file__).resolve().parents[1]
SIZES = {"320x176": (320, 176), "640x352": (640, 352)}
RATES = {"64k": 64_000, "128k": 128_000, "256k": 256_000, "1M": 1_000_000}
FPS = 10
#: Every scene's first 10 s (the camera clips run longer).
MAX_FRAMES = 100


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def source_frames(video: Path, size: tuple[int, int]) -> dict[int, np.ndarray]:
    """The frames the sender takes (10 fps), by source index, fitted to the stream's size."""
    from latentcomm.codecs.video import fit_picture
    from latentcomm.stream import video_frames

    return {f.index: np.asarray(fit_picture(f.image, size)) for f in video_frames(video, FPS, MAX_FRAMES)}


def viewer(source: dict[int, np.ndarray], shown: dict[int, np.ndarray], every: int = 10) -> dict:
    """What a viewer sees at every source frame: the newest decoded frame not later than it."""
    from latentcomm.metrics import ssimulacra2

    grey = np.full_like(next(iter(source.values())), 128)
    psnrs, s2 = [], []
    current = grey
    for n, index in enumerate(sorted(source)):
        if index in shown:
            current = shown[index]
        psnrs.append(psnr(source[index], current))
        if n % every == 0:
            s2.append(ssimulacra2(source[index], current))
    return {"viewer_psnr_db": statistics.fmean(psnrs), "viewer_ssimulacra2": statistics.fmean(s2)}


#: Decoders for the plain pipes' encoders.
DECODERS = {"libx264": "h264", "libsvtav1": "libdav1d", "libx265": "hevc"}
#: Upscaling filters for the plain pipes coded at half size.
FILTERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def anchor(
    lib: str,
    video: Path,
    size: tuple[int, int],
    rate: int,
    source: dict[int, np.ndarray],
    preset: str = "veryfast",
    scale: float = 1.0,
    upscale: str = "bicubic",
    keep: dict | None = None,
) -> dict:
    """A plain PyAV pipe: every frame encoded at ``rate`` and delivered, no framing, no loss. libx264
    (zerolatency, no B-frames), libx265 (zerolatency) or SVT-AV1 (low delay, CBR) at ``preset``;
    ``scale`` < 1 codes the picture that much smaller (Lanczos down) and shows it upscaled with
    ``upscale`` at the source's size, as a user who codes small on a thin link would. ``keep``: gets the
    pictures shown (source index -> pixels) under "shown"."""
    import av

    if lib == "libsvtav1":  # the anchor without a preset: 10, low delay, CBR
        options = {"preset": preset or "10", "svtav1-params": "pred-struct=1:rc=2"}
    elif lib == "libx265":
        options = {"preset": preset, "tune": "zerolatency", "x265-params": "log-level=error"}
    else:
        options = {"preset": preset, "tune": "zerolatency"}
    os.environ.setdefault("SVT_LOG", "1")
    w, h = size
    cw, ch = (w, h) if scale == 1 else (round(w * scale / 2) * 2, round(h * scale / 2) * 2)
    enc = av.CodecContext.create(lib, "w")
    enc.width, enc.height = cw, ch
    enc.pix_fmt, enc.time_base, enc.framerate = "yuv420p", Fraction(1, FPS), Fraction(FPS)
    enc.bit_rate, enc.max_b_frames, enc.thread_count, enc.gop_size = rate, 0, 1, 250
    enc.options = options
    enc.open()
    dec = av.CodecContext.create(DECODERS[lib], "r")
    shown: dict[int, np.ndarray] = {}
    nbytes, cpu0 = 0, time.process_time()
    indexes = sorted(source)

    def show(picture) -> None:
        if scale == 1:
            pixels = picture.to_ndarray(format="rgb24")
        else:
            pixels = np.asarray(picture.to_image().resize((w, h), FILTERS[upscale]))
        shown[indexes[len(shown)]] = pixels

    for pts, index in enumerate(indexes):
        image = Image.fromarray(source[index])
        if scale != 1:
            image = image.resize((cw, ch), Image.Resampling.LANCZOS)
        frame = av.VideoFrame.from_image(image).reformat(format="yuv420p")
        frame.pts = pts
        for packet in enc.encode(frame):
            nbytes += packet.size
            for picture in dec.decode(packet):
                show(picture)
    for packet in [*enc.encode(), None]:  # the encoder's flush, then the decoder's
        nbytes += packet.size if packet is not None else 0
        for picture in dec.decode(packet):
            show(picture)
    cpu = time.process_time() - cpu0
    if keep is not None:
        keep["shown"] = shown
    return {
        "frames_shown": len(shown), "bits_per_second": 8 * nbytes * FPS / len(indexes),
        "cpu_s_per_frame_both": cpu / len(indexes), **viewer(source, shown),
    }  # fmt: skip


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def live_run(
    codec: str,
    video: Path,
    size: str,
    rate: str,
    key: Path,
    source: dict,
    tmp: Path,
    enhance: bool = False,
    keep: dict | None = None,
) -> dict:
    """Ours: the real sender and receiver, sealed, over the throttle at ``rate``. ``keep``: as anchor()'s."""
    out = tmp / f"out-{codec}-{video.stem}-{size}-{rate}-{int(enhance)}"
    extra = ("--enhance",) if enhance else ()
    # --save-frames: the pictures as shown (enhanced, upscaled), which PSNR is measured on.
    rx = ReceiverProcess("--codec", "learned", "--no-show", "--json", "--out", str(out), "--save-frames", "--key",
                         str(key), *extra)  # fmt: skip
    try:
        rx.wait_listening()
        rx_cpu0 = _cpu_seconds(rx.proc.pid)
        link = Throttle(("127.0.0.1", rx.port), RATES[rate])
        args = ["--codec", codec, "--port", str(link.port), "--video", str(video), "--fps", str(FPS),
                "--bandwidth", rate, "--key", str(key), "--json", "--max-frames", str(MAX_FRAMES)]  # fmt: skip
        if codec == "learned":
            w, h = SIZES[size]
            frames = tmp / f"frames-{video.stem}-{size}"
            if not frames.exists():  # the learned stream path takes square or native pictures: give it these
                frames.mkdir()
                for index, pixels in source.items():
                    Image.fromarray(pixels).save(frames / f"{video.stem}-{index:06d}.png")
            args = ["--codec", "learned", "--port", str(link.port), "--image", str(frames), "--fps", str(FPS),
                    "--size", "0", "--bandwidth", rate, "--key", str(key), "--json"]  # fmt: skip
        else:
            args += ["--resolution", size]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        res = subprocess.run([PYTHON, str(REPO / "sender_sdvae.py"), *args], cwd=REPO, env=script_env(),
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode not in (0, 1):
            raise RuntimeError(res.stderr[-3000:])
        time.sleep(0.3)
        rx_cpu = _cpu_seconds(rx.proc.pid) - rx_cpu0
        link.close()
    finally:
        rx.stop()
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    summary = next(r for r in rows if r.get("summary"))
    reports = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    shown = {}
    for r in reports:
        index = int(r["name"].rsplit("-", 1)[1].split(".")[0])
        shown[index] = np.asarray(Image.open(r["recon_path"]).convert("RGB"))
    sent_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    n = max(1, len(reports))
    sent = summary.get("frames_sent", summary.get("frames_acknowledged", 0))
    # The video sender measures its own CPU from the stream's start (its imports and start-up are not a
    # per-frame cost); the learned path's summary has no such figure: the whole process, start-up included.
    sender_cpu = summary.get("cpu_s_per_frame", sent_cpu / max(1, sent))
    shutil.rmtree(out, ignore_errors=True)
    if keep is not None:
        keep["shown"] = shown
    return {
        "frames_from_source": len(source),
        "frames_shown": len(reports),
        "bits_per_second": summary["bits_per_second"],
        "latency_p50_s": summary["latency_p50_s"],
        "latency_p95_s": summary["latency_p95_s"],
        "sender_cpu_s_per_frame": sender_cpu,
        "receiver_cpu_s_per_frame": rx_cpu / n,
        **viewer(source, shown),
    }


#: The systems a run can do (``--systems``): the anchors, then ours; "thin": what a user could afford
#: on 2 cores in real time, each at ours' bits (THIN_ANCHORS).
SYSTEMS = ("x264", "x264-preset", "x264-equal", "svtav1", "h264", "av1", "auto", "learned", "enhance", "thin")
#: The plain pipes a user could assemble and afford in real time on 2 cores ("thin links" issue): each at
#: full size and at half size upscaled with bicubic and with Lanczos. (label, encoder, preset).
THIN_ANCHORS = (
    ("x264 medium", "libx264", "medium"),
    ("x265 fast", "libx265", "fast"),
    ("SVT-AV1 preset 8", "libsvtav1", "8"),
    ("SVT-AV1 preset 6", "libsvtav1", "6"),
)
#: Ours whose bits the thin-link anchors are given (the first present at that point).
THIN_OURS = ("ours auto, sealed", "ours av1, sealed", "ours h264, sealed")
EQUAL_BITS = "plain x264 at ours' bits"


def equal_bits_anchor(
    video: Path, size: tuple[int, int], bits: float, source: dict[int, np.ndarray], lib: str = "libx264", **how
) -> dict:
    """A plain pipe (by default x264 veryfast, the issue's anchor) at exactly the bits ours spent on the
    wire: two runs, the second at the rate the first's overshoot or undershoot calls for, and PSNR /
    SSIMULACRA2 interpolated linearly in log-bits between them (as BD-rate does). ``how``: anchor()'s
    preset, scale and upscale."""
    a = anchor(lib, video, size, round(bits), source, **how)
    b = anchor(lib, video, size, round(bits * bits / a["bits_per_second"]), source, **how)
    span = math.log(b["bits_per_second"]) - math.log(a["bits_per_second"])
    t = (math.log(bits) - math.log(a["bits_per_second"])) / span if abs(span) > 1e-9 else 0.0
    mix = {k: a[k] + t * (b[k] - a[k]) for k in ("viewer_psnr_db", "viewer_ssimulacra2")}
    return {**a, **mix, "bits_per_second": bits, "runs_bits_per_second": [a["bits_per_second"], b["bits_per_second"]]}


def live_video(
    tmp: Path, scenes: list[Path], sizes: list[str], rates: list[str], systems: set[str], previous: list[dict] = ()
) -> list[dict]:
    """The grid: for every scene, size and rate, the anchors and ours (``systems`` of :data:`SYSTEMS`).
    ``previous``: rows of an earlier run, where the equal-bits anchor finds ours' bits if ours isn't re-run."""
    from latentcomm.codecs.video import auto_preset
    from latentcomm.wire.keys import generate_key

    key = tmp / "bench.key"
    generate_key(key)
    rows = []
    jobs = [(v, s, r) for v in scenes for s in sizes for r in rates]
    for video, size, rate in tqdm(jobs, desc="live video"):
        source = source_frames(video, SIZES[size])
        base = {"scene": video.stem, "size": size, "rate": rate}
        preset = auto_preset(*SIZES[size], FPS)
        anchors = [("x264", "libx264", "plain x264", "veryfast"), ("svtav1", "libsvtav1", "plain SVT-AV1", "")]
        if preset != "veryfast":  # the same pipe with the preset ours picks here: where ours' gain comes from
            anchors.insert(1, ("x264-preset", "libx264", f"plain x264 {preset}", preset))
        for system, lib, name, lib_preset in anchors:
            if system in systems:
                rows.append({**base, "system": name,
                             **anchor(lib, video, SIZES[size], RATES[rate], source, lib_preset)})  # fmt: skip
        for codec in ("h264", "av1", "auto") + (("learned",) if size == "320x176" else ()):
            if codec in systems:
                rows.append({**base, "system": f"ours {codec}, sealed",
                             **live_run(codec, video, size, rate, key, source, tmp)})  # fmt: skip
        if "x264-equal" in systems:
            ours = [r for r in (*previous, *rows) if r | base == r and r["system"] == "ours h264, sealed"]
            if ours:
                rows.append({**base, "system": EQUAL_BITS,
                             **equal_bits_anchor(video, SIZES[size], ours[-1]["bits_per_second"], source)})  # fmt: skip
        if "thin" in systems:
            ours = [r for r in (*previous, *rows) if r | base == r and r["system"] in THIN_OURS]
            ours.sort(key=lambda r: THIN_OURS.index(r["system"]))
            if ours:
                bits = ours[0]["bits_per_second"]
                for label, lib, lib_preset in THIN_ANCHORS:
                    for scale, up in ((1.0, "bicubic"), (0.5, "bicubic"), (0.5, "lanczos")):
                        name = f"plain {label}" + ("" if scale == 1 else f", half size + {up}") + " at ours' bits"
                        rows.append({**base, "system": name, "bits_of": ours[0]["system"],
                                     **equal_bits_anchor(video, SIZES[size], bits, source, lib,
                                                         preset=lib_preset, scale=scale, upscale=up)})  # fmt: skip
        if "enhance" in systems:
            rows.append({**base, "system": "ours h264 + enhance, sealed",
                         **live_run("h264", video, size, rate, key, source, tmp, enhance=True)})  # fmt: skip
    return rows


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

        from latentcomm.codecs import LEARNED_MODEL_DIR, LearnedCodec
        from latentcomm.images import pil_to_tensor
        from latentcomm.transports.mqtt import MqttSender
        from latentcomm.wire import v2

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
    p.add_argument("--rates", default="64k,256k,1M", help="comma list of link rates (of 64k, 256k, 1M)")
    p.add_argument("--sizes", default="320x176,640x352", help="comma list of stream sizes")
    p.add_argument("--scenes", default="station,clip_01,clip_02,clip_03", help="the station scene and shared clips")
    p.add_argument("--no-learned", action="store_true", help="skip the learned-codec stream rows")
    p.add_argument("--no-enhance", action="store_true", help="skip the rows with the receiver's --enhance")
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma list of the systems to run, of {', '.join(SYSTEMS)} (x264-preset: plain x264 with the preset "
        "ours picks at that size; with --merge, redo some rows only)",
    )
    p.add_argument("--quick", action="store_true", help="harness check: one short scene and rate, tiny sets")
    p.add_argument("--json", type=Path, default=RESULTS / "stream.json", help="where to write the results")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the live-video rows of --json that this run doesn't redo (same scene, size, rate and system "
        "replaced), and its temporal and broker parts unless re-run; the run's date and CPU become this one's",
    )
    p.add_argument("--video-only", action="store_true", help="run the live-video part only")
    args = p.parse_args(argv)
    rates, sizes = args.rates.split(","), args.sizes.split(",")
    temporal_frames, per_sender = 20, 10
    clips = sorted((REPO.parent / "shared" / "data" / "videos").glob("clip_*.mp4"))
    # Real fixed cameras (CC BY 4.0, ../shared/data/videos-camera): their first 10 s, as a live source sends them.
    cameras = sorted((REPO.parent / "shared" / "data" / "videos-camera").glob("*.mp4"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scenes = []
        for name in args.scenes.split(","):
            if name == "station":
                scenes.append(station_scene(tmp / "station.mkv", 2.0 if args.quick else 10.0))
            else:
                scenes += [c for c in (*clips, *cameras) if c.name.startswith(name)]
        if args.quick:
            scenes, rates, sizes, temporal_frames, per_sender = scenes[:1], ["1M"], ["320x176"], 3, 2
        systems = set(args.systems.split(","))
        systems -= {"learned"} if args.no_learned else set()
        systems -= {"enhance"} if args.no_enhance else set()
        if unknown := systems - set(SYSTEMS):
            p.error(f"unknown systems: {', '.join(sorted(unknown))}")
        if not (ENHANCER_DIR / "config.json").exists():
            systems.discard("enhance")
        previous = json.loads(args.json.read_text()).get("live_video", []) if args.json.exists() else []
        video = live_video(tmp, scenes, sizes, rates, systems, previous)
        redundancy = [] if args.video_only else temporal(tmp, temporal_frames)
        broker = [] if args.video_only else [b for b in (broker_run(tmp, n, per_sender) for n in (1, 2)) if b]
    if args.merge and args.json.exists():
        old = json.loads(args.json.read_text())
        redone = {(r["scene"], r["size"], r["rate"], r["system"]) for r in video}
        kept = [r for r in old.get("live_video", []) if (r["scene"], r["size"], r["rate"], r["system"]) not in redone]
        video = kept + video
        redundancy = redundancy or old.get("temporal", [])
        broker = broker or old.get("broker", [])
    result = {**run_meta(), "fps": FPS, "live_video": video, "temporal": redundancy, "broker": broker}
    print(f"{'scene':<24} {'size':>8} {'rate':>5} {'system':<24} {'PSNR':>6} {'SSIM2':>6} {'shown':>6} "
          f"{'kbit/s':>7} {'p50':>6} {'p95':>6}")  # fmt: skip
    for r in video:
        lat = (f"{r['latency_p50_s']:>6.3f} {r['latency_p95_s']:>6.3f}" if r.get("latency_p50_s") is not None
               else f"{'-':>6} {'-':>6}")  # fmt: skip
        print(f"{r['scene']:<24} {r['size']:>8} {r['rate']:>5} {r['system']:<24} {r['viewer_psnr_db']:>6.2f} "
              f"{r['viewer_ssimulacra2']:>6.1f} {r['frames_shown']:>6} {r['bits_per_second'] / 1000:>7.1f} "
              f"{lat}")  # fmt: skip
    for t in redundancy:
        print(f"{t['scene']:>6} {t['mode']:<28} {t['bytes_per_frame']:>8.0f} B/frame  {t['mean_psnr_db']:.2f} dB")
    for b in broker:
        print(f"broker, {b['receivers']} receiver(s): {b['frames_per_s']:.2f} frames/s ({b['decoded_per_receiver']})")
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
