"""Operating points: which coded size (and frame rate) gives the best picture for a link's bits per pixel.

    python -m benchmarks.operating_points           # ~15 minutes; writes the table the sender uses
    python -m benchmarks.operating_points --quick   # a minute: the harness only, writes nothing shipped

For each codec (ours: ``latentcomm.codecs.video.VideoCodec``, the very encoder settings and rate
control a live stream uses, and its decoder showing the picture at the source's size), each rung of
``latentcomm.operating.LADDER`` (full size, 3/4, 1/2, 1/2 at half the frame rate), each scene, each
stream size (320x176, 640x352 at 10 fps) and each link rate (64k, 128k, 256k, 1M): 10 s coded at the
rate, what a viewer sees at every source frame (the newest decoded picture, upscaled with Lanczos),
PSNR at the source's size and the bits the encoder really spent.

The table: at every measured source bits per pixel (rate / (width x height x fps)), the rung with the
best mean PSNR over the training scenes among full size and the rungs that lose no training scene more
than 0.3 dB against it (a mean gain bought with one scene's picture is no gain to that scene's user),
made monotone (a thinner link never gets a larger picture), and each rung's threshold set between the
lowest bits per pixel it won at and the next lower point. Written to
``latentcomm/operating_points.json`` (shipped; ``latentcomm.operating`` reads it) and, with every
row, to ``benchmarks/results/operating_points.json``. The held-out scene (a real
camera clip the table never saw) is measured and reported beside: what the table's choice gives there
against full size.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.harness import RESULTS, run_meta, write_results
from benchmarks.stream import psnr
from latentcomm.operating import LADDER, TABLE_PATH, rung_for

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SIZES = {"320x176": (320, 176), "640x352": (640, 352)}
RATES = {"64k": 64_000, "128k": 128_000, "256k": 256_000, "1M": 1_000_000}
FPS = 10
FRAMES = 100
#: Scenes the table is made from, and the real camera clip held out from it.
TRAIN = ("station", "clip_01", "clip_02", "clip_03", "bottle-detection", "car-detection")
HELD_OUT = ("one-by-one-person-detection",)
#: A rung is a candidate at a bits-per-pixel point only if no training scene loses more than this
#: against full size there. (Content the encoder can't hold at full size, whose frames overshoot the
#: link, is the sender's business at run time: latentcomm.operating steps such a stream down.)
MAX_SCENE_LOSS_DB = 0.3
#: Bytes a sealed video frame costs besides its access unit (measured: 90-110).
FRAME_OVERHEAD = 100


def scene_path(name: str, tmp: Path) -> Path:
    from latentcomm.scenes import station_scene

    if name == "station":
        return station_scene(tmp / "station.mkv", FRAMES / FPS)
    for folder in ("videos", "videos-camera"):
        found = sorted((SHARED / folder).glob(f"{name}*.mp4"))
        if found:
            return found[0]
    raise SystemExit(f"no scene {name} under {SHARED}")


def source_frames(video: Path, size: tuple[int, int], frames: int) -> list[np.ndarray]:
    from latentcomm.codecs.video import fit_picture
    from latentcomm.stream import video_frames

    return [np.asarray(fit_picture(f.image, size)) for f in video_frames(video, FPS, max_frames=frames)]


def code(codec: str, source: list[np.ndarray], rate: int, rung_index: int) -> dict:
    """One rung: the stream coded as a live sender codes it, decoded and shown at the source's size."""
    from PIL import Image

    from latentcomm.codecs.video import VIDEO_CODECS, VideoCodec

    rung = LADDER[rung_index]
    h, w = source[0].shape[:2]
    cw, ch = rung.size(w, h)
    fps = FPS / rung.stride
    # The target a live sender gives its encoder at this link rate (latentcomm.live: a margin, and the
    # frames' own bytes, about 100 sealed, set aside).
    target = VIDEO_CODECS[codec].rate_margin * rate - 8 * FRAME_OVERHEAD * fps
    tx = VideoCodec(codec, target, fps, key_interval=10_000)
    rx = tx.new_stream()
    shown, nbytes, current, t_enc = [], 0, None, 0.0
    for i, pixels in enumerate(source):
        if i % rung.stride == 0:
            picture = Image.fromarray(pixels)
            if (cw, ch) != (w, h):
                picture = picture.resize((cw, ch), Image.Resampling.LANCZOS)
            t0 = time.process_time()
            enc = tx.encode_picture(picture, captured=i / FPS, source_index=i)
            t_enc += time.process_time() - t0
            nbytes += len(enc.payload)
            current = rx.decode_picture(enc.shape, enc.payload, (h, w))
        shown.append(psnr(pixels, current))
    tx.close()
    coded = math.ceil(len(source) / rung.stride)
    return {
        "psnr_db": statistics.fmean(shown),
        "bits_per_second": 8 * nbytes * FPS / len(source),
        "target_bps": target,
        "coded_size": f"{cw}x{ch}",
        "encode_cpu_ms_per_frame": 1000 * t_enc / coded,
    }


def make_table(rows: list[dict], codecs: list[str]) -> dict:
    """codec -> thresholds (see the module docstring) and the points they came from."""
    out = {}
    for codec in codecs:
        points: dict[float, dict[int, list[tuple[float, float]]]] = {}
        for r in rows:
            if r["codec"] == codec and r["scene"] in TRAIN:
                points.setdefault(round(r["bpp"], 4), {}).setdefault(r["rung"], []).append(
                    (r["psnr_db"], r["bits_per_second"] / r["target_bps"])
                )
        winners = {}
        for bpp, by_rung in sorted(points.items(), reverse=True):
            full = [p for p, _ in by_rung[0]]
            # Candidates: full size, and the rungs that lose no scene more than MAX_SCENE_LOSS_DB against it
            # (the bound for any scene): the table must not gamble a scene's picture on the mean.
            scores = {
                rung: statistics.fmean(p for p, _ in vals)
                for rung, vals in by_rung.items()
                if rung == 0 or min(p - f for (p, _), f in zip(vals, full, strict=True)) >= -MAX_SCENE_LOSS_DB
            }
            best = max(scores, key=scores.get)
            winners[bpp] = max(best, max(winners.values(), default=0))  # monotone: thinner, never larger
        order = sorted(winners, reverse=True)  # bpp descending
        thresholds = []
        for i in range(len(LADDER)):
            won = [b for b in order if winners[b] <= i]
            if not won:
                thresholds.append(float("inf"))
                continue
            lowest = min(won)
            lower = [b for b in order if b < lowest]
            thresholds.append(math.sqrt(lowest * max(lower)) if lower else 0.0)
        for i in range(1, len(thresholds)):  # a rung never won: it takes over nothing
            thresholds[i] = min(thresholds[i], thresholds[i - 1])
        thresholds[-1] = 0.0
        out[codec] = {
            "thresholds_bpp": [round(t, 5) if math.isfinite(t) else 1e9 for t in thresholds],
            "winners_by_bpp": {str(b): LADDER[winners[b]].label for b in sorted(winners)},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codecs", default="h264,av1", help="comma list of video codecs")
    p.add_argument("--quick", action="store_true", help="harness check: one scene, one size, two rates, 20 frames")
    p.add_argument("--json", type=Path, default=RESULTS / "operating_points.json", help="where to write all rows")
    p.add_argument("--table", type=Path, default=TABLE_PATH, help="where to write the table the sender reads")
    p.add_argument(
        "--from-json", action="store_true", help="code nothing: make the table again from the rows in --json"
    )
    args = p.parse_args(argv)
    codecs = args.codecs.split(",")
    scenes, sizes, rates, frames = (*TRAIN, *HELD_OUT), list(SIZES), list(RATES), FRAMES
    if args.quick:
        scenes, sizes, rates, frames = ("station", "car-detection"), ["320x176"], ["64k", "1M"], 20
    rows = json.loads(args.json.read_text())["rows"] if args.from_json else []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [] if args.from_json else list(itertools.product(scenes, sizes))
        for scene, size in tqdm(jobs, desc="operating points"):
            source = source_frames(scene_path(scene, Path(tmp)), SIZES[size], frames)
            w, h = SIZES[size]
            for codec, rate, rung in itertools.product(codecs, rates, range(len(LADDER))):
                row = code(codec, source, RATES[rate], rung)
                rows.append({"scene": scene, "size": size, "rate": rate, "rate_bps": RATES[rate], "codec": codec,
                             "rung": rung, "rung_label": LADDER[rung].label, "bpp": RATES[rate] / (w * h * FPS),
                             **row})  # fmt: skip
    table = make_table(rows, codecs)
    held = []
    for codec, scene, size, rate in itertools.product(codecs, HELD_OUT, sizes, rates):
        point = (codec, scene, size, rate)
        mine = {r["rung"]: r for r in rows if (r["codec"], r["scene"], r["size"], r["rate"]) == point}
        if not mine:
            continue
        chosen = rung_for(table[codec]["thresholds_bpp"], next(iter(mine.values()))["bpp"])
        held.append({"codec": codec, "scene": scene, "size": size, "rate": rate, "chosen": LADDER[chosen].label,
                     "chosen_psnr_db": mine[chosen]["psnr_db"], "full_size_psnr_db": mine[0]["psnr_db"],
                     "best_psnr_db": max(r["psnr_db"] for r in mine.values())})  # fmt: skip
    print(f"{'codec':<5} {'scene':<28} {'size':>8} {'rate':>5} " + " ".join(f"{r.label[:14]:>14}" for r in LADDER))
    for key, group in itertools.groupby(rows, key=lambda r: (r["codec"], r["scene"], r["size"], r["rate"])):
        cells = " ".join(f"{r['psnr_db']:6.2f} {r['bits_per_second'] / 1000:6.1f}k" for r in group)
        print(f"{key[0]:<5} {key[1]:<28} {key[2]:>8} {key[3]:>5} {cells}")
    for codec, entry in table.items():
        print(f"{codec}: thresholds (bits a pixel) {entry['thresholds_bpp']}")
    for r in held:
        print(f"held out {r['codec']} {r['scene']} {r['size']} {r['rate']}: {r['chosen']} {r['chosen_psnr_db']:.2f} dB "
              f"(full size {r['full_size_psnr_db']:.2f}, best rung {r['best_psnr_db']:.2f})")  # fmt: skip
    # Remade from stored rows: the run's date and CPU are the rows' own.
    meta = {k: v for k, v in json.loads(args.json.read_text()).items() if k in run_meta()} if args.from_json else {}
    result = {**run_meta(), **meta, "fps": FPS, "frames": frames, "train": list(TRAIN), "held_out": list(HELD_OUT),
              "table": table, "held_out_rows": held, "rows": rows}  # fmt: skip
    write_results(args.json, result)
    if not args.quick:
        shipped = {"source": "benchmarks/operating_points.py", "date": result.get("date"), "cpu": result.get("cpu"),
                   "codecs": {c: {"thresholds_bpp": e["thresholds_bpp"]} for c, e in table.items()}}  # fmt: skip
        args.table.write_text(json.dumps(shipped, indent=1) + "\n")
        print(f"wrote {args.table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
