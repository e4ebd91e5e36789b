"""Write the README's and the model cards' figures from the benchmark JSON files.

Every number the documentation quotes from a benchmark lives between markers

    <!-- report:NAME -->
    ...generated...
    <!-- /report:NAME -->

and is rendered here from `benchmarks/results/*.json` (and the shipped models' `training_state.json`),
so a figure can't drift from the run that measured it. After a benchmark run:

    python -m benchmarks.report            # rewrite the blocks in place
    python -m benchmarks.report --check    # exit 1 and name the stale blocks (the test suite runs this)
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import RESULTS
from benchmarks.quality import compact_table

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    REPO / "README.md",
    REPO / "docs" / "benchmarks.md",
    REPO / "docs" / "streams.md",
    REPO / "docs" / "video.md",
    REPO / "docs" / "install.md",
    *(REPO / "models" / m / "README.md" for m in ("latentcomm-lic", "latentcomm-kl-f8")),
]
BLOCK = re.compile(r"(<!-- report:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /report:(?P=name) -->)", re.S)
PIXEL_NAMES = {"avif": "AVIF", "webp": "WebP", "jxl": "JPEG XL", "jpeg": "optimized JPEG"}


class Results:
    """The JSON files a block may read, loaded once."""

    def __init__(self, results: Path, models: Path) -> None:
        self.dir = results
        self.models = models
        self._cache: dict[str, dict] = {}

    def __getitem__(self, name: str) -> dict:
        if name not in self._cache:
            self._cache[name] = json.loads((self.dir / f"{name}.json").read_text())
        return self._cache[name]

    def training(self, model: str) -> dict:
        return json.loads((self.models / model / "training_state.json").read_text())


# -- helpers on quality.json ------------------------------------------------------------------------


def run_line(d: dict) -> str:
    """'2026-11-26, AMD EPYC (AVX512-BF16, no AMX), 2 cores' from a result file's metadata."""
    cpu = d.get("cpu") or "CPU not recorded"
    if d.get("cpu_features"):
        cpu += f" ({d['cpu_features']})"
    parts = [d.get("date") or "date not recorded", cpu]
    if d.get("cores"):
        parts.append(f"{d['cores']} core{'s' if d['cores'] > 1 else ''}")
    return ", ".join(parts)


def at_bpp(curve: list[dict], bpp: float, metric: str = "psnr-rgb") -> float | None:
    """A codec's metric at a rate, interpolated linearly in log(bpp) on its sweep; None outside it."""
    pts = sorted(curve, key=lambda p: p["bpp"])
    if len(pts) < 2 or not pts[0]["bpp"] <= bpp <= pts[-1]["bpp"]:
        return None
    for a, b in zip(pts, pts[1:], strict=False):
        if a["bpp"] <= bpp <= b["bpp"]:
            t = (math.log(bpp) - math.log(a["bpp"])) / (math.log(b["bpp"]) - math.log(a["bpp"]) or 1.0)
            return a[metric] + t * (b[metric] - a[metric])
    return None


def bpp_at(curve: list[dict], value: float, metric: str = "psnr-rgb") -> float | None:
    """The rate at which a (monotonic) curve reaches a metric value, log-interpolated; None if never."""
    pts = sorted(curve, key=lambda p: p["bpp"])
    for a, b in zip(pts, pts[1:], strict=False):
        if a[metric] <= value <= b[metric]:
            t = (value - a[metric]) / ((b[metric] - a[metric]) or 1.0)
            return math.exp(math.log(a["bpp"]) + t * (math.log(b["bpp"]) - math.log(a["bpp"])))
    return None


def equal(summary: dict, ds: str, codec: str, budget: float) -> dict | None:
    return next((e for e in summary[ds]["equal_bytes"] if e["codec"] == codec and e["budget_bpp"] == budget), None)


def gaps(summary: dict, ds: str, codec: str, budgets: tuple[float, ...]) -> tuple[float, float]:
    """(min, max) PSNR of codec minus the learned codec's, at equal bytes over the budgets."""
    d = [equal(summary, ds, codec, b)["psnr-rgb"] - equal(summary, ds, "learned", b)["psnr-rgb"] for b in budgets]
    return min(d), max(d)


def dbr(lo: float, hi: float) -> str:
    return f"{lo:+.1f} dB" if abs(hi - lo) < 0.05 else f"{lo:+.1f} to {hi:+.1f} dB"


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} hours"


def training_time(t: dict) -> str:
    """Where the shipped weights' training time went: CPU hours and, when one was lent, GPU minutes."""
    if "gpu_seconds" in t:
        return f"{hours(t['cpu_seconds'])} of CPU and {t['gpu_seconds'] / 60:.0f} minutes of {gpu_names(t)}"
    return f"{hours(t['train_seconds'])} of CPU"


def gpu_names(t: dict) -> str:
    """The GPUs the phases ran on, by name, in order ("one H100, then one H200 GPU")."""
    names: list[str] = []
    for ph in t.get("phases", []):
        dev = ph["device"]
        if dev.startswith("cuda"):
            name = dev.split("NVIDIA ")[-1].split()[0].rstrip(")")
            if name not in names:
                names.append(name)
    return "one " + ", then one ".join(names) + " GPU" if names else "a GPU"


# -- the blocks ---------------------------------------------------------------------------------------


def refined_gain(s: dict, ds: str = "photos", budgets: tuple[float, ...] = (0.1, 0.15)) -> list[tuple]:
    """(budget, PSNR gain, SSIMULACRA2 gain, refined row) of ``learned-refined`` over ``learned`` at
    equal bytes, for the budgets both were run at (empty when the benchmark has no refined rows)."""
    out = []
    for b in budgets:
        plain, ref = equal(s, ds, "learned", b), equal(s, ds, "learned-refined", b)
        if plain and ref:
            out.append((b, ref["psnr-rgb"] - plain["psnr-rgb"], ref["ssimulacra2"] - plain["ssimulacra2"], ref))
    return out


def refine_steps(q: dict) -> int | None:
    return next((r.get("refine_steps") for r in q["rows"] if r["codec"] == "learned-refined"), None)


def which_codec(r: Results) -> str:
    q = r["quality"]
    s = q["summary"]
    photos = s["photos"]["curves"]
    vae = photos["vae-u8-zstd"][0]
    same = bpp_at(photos["learned"], vae["psnr-rgb"])
    if same is not None:
        vs_vae = (
            f"{100 * (1 - same / vae['bpp']):.0f}% fewer bytes than the VAE latent for the same PSNR (held-out "
            f"photos: {vae['psnr-rgb']:.1f} dB at {same:.2f} bpp against the VAE's {vae['bpp']:.2f} bpp)"
        )
    else:
        low = min(photos["learned"], key=lambda pt: pt["bpp"])
        vs_vae = (
            f"{100 * (1 - low['bpp'] / vae['bpp']):.0f}% fewer bytes than the VAE latent for a better picture even at "
            f"its lowest quality (held-out photos: {low['psnr-rgb']:.1f} dB at {low['bpp']:.2f} bpp against the VAE's "
            f"{vae['psnr-rgb']:.1f} dB at {vae['bpp']:.2f} bpp)"
        )
    budgets = tuple(q["budgets_bpp"])
    beats_thumb = all(
        equal(s, ds, "learned", b)["psnr-rgb"] > equal(s, ds, "thumbnail", b)["psnr-rgb"] for ds in s for b in budgets
    )
    thumb = "better than a thumbnail at every budget" if beats_thumb else "not better than a thumbnail at every budget"
    steps = r.training("latentcomm-lic")
    mid = tuple(b for b in budgets if b >= 0.1)
    ahead = ", ".join(f"{PIXEL_NAMES[c]} {dbr(*gaps(s, 'photos', c, mid))}" for c in ("avif", "webp", "jxl", "jpeg"))
    gain = refined_gain(s)
    refine_row = ""
    if gain:
        cost = [r["encoding_time"] for r in q["rows"] if r["codec"] == "learned-refined" and r["dataset"] == "photos"]
        refine_row = (
            f"| the best picture latentcomm can send in a byte budget, when the sender has seconds per image | "
            f"`--codec learned --target-bytes N --refine {refine_steps(q)}` | encode-time refinement of the latent: at "
            "equal bytes on the held-out photos, "
            + ", ".join(f"{dp:+.2f} dB / {ds2:+.1f} SSIMULACRA2 at {b} bpp" for b, dp, ds2, _ in gain)
            + f"; about {statistics.median(cost):.0f} s per encode of a held-out photo (about a megapixel) on 2 cores; "
            "the receiver needs nothing new |\n"
        )
    video_row = ""
    groups = _live_rows(r["stream"])
    h264, learned = (
        groups.get(("320x176", "256k", "ours h264, sealed")),
        groups.get(("320x176", "256k", "ours learned, sealed")),
    )
    if h264:
        versus = f" against {_mean(learned, 'viewer_psnr_db'):.1f} dB with the learned codec" if learned else ""
        video_row = (
            "| live video from a camera or a video file (robots, monitoring) | `--codec h264 --bandwidth RATE` or "
            "`--bandwidth auto` | a real motion-compensated video codec, acknowledged and sealed: at 256 kbit/s and "
            f"320x176, 10 fps, a viewer sees {_mean(h264, 'viewer_psnr_db'):.1f} dB{versus} (mean of four scenes, "
            "docs/video.md) |\n"
        )
    return (
        "| you want | use | why |\n"
        "|---|---|---|\n"
        f"{video_row}"
        f"| the fewest bytes for a picture people look at, among what latentcomm sends | `--codec learned` | {vs_vae}; "
        f"{thumb}; a byte budget per image; no SD VAE needed |\n"
        "| a byte budget per frame (a metered or thin link) | `--codec learned --target-bytes N` | each image gets "
        "the best quality that fits N bytes |\n"
        f"{refine_row}"
        "| the latent itself, to feed a generative model (Stable Diffusion img2img, inpainting, latent-space "
        "processing at the receiver) | `--codec vae` with the SD VAE | the learned codec's latent means nothing to a "
        "diffusion model; the SD VAE's 4-channel latent is its native input |\n"
        "| to talk to the original scripts | `--codec vae` (the default), one image | the legacy frame is byte for "
        "byte the original's |\n"
        "| the best picture per byte today, whatever the transport | AVIF or JPEG XL | the shipped learned model is "
        f"an early one ({steps['step']:,} steps, {training_time(steps)} training): at equal bytes "
        f"on the held-out photos ({mid[0]}-{mid[-1]} bpp), PSNR minus the learned codec's: {ahead}; "
        "see docs/benchmarks.md |\n"
    )


def codec_speed_line(r: Results) -> str:
    d = r["codec_speed"]
    c = d["codecs"]
    learned = {k: v for k, v in c.items() if k.startswith("learned") and "--refine" not in k and "--no-" not in k}
    refined = next(((k, v) for k, v in c.items() if "--refine" in k), None)
    plain = next((v for k, v in c.items() if "--no-postfilter" in k), None)
    # The middle row is the default quality (quality 4 of the 8-level model, 7 of the 11-level one).
    swept = [k for k in learned if k.split()[1].startswith("q")]
    mid_key = swept[len(swept) // 2]
    default = learned[mid_key]
    mid_q = mid_key.split()[1].removeprefix("q")
    vae = next(v for k, v in c.items() if k.startswith("vae"))
    enc = [v["encode_s"] for v in learned.values()]
    dec = [v["decode_s"] for v in learned.values()]
    return (
        f"Speed ({d['image']}, model loaded, `benchmarks/codec_speed.py`, {run_line(d)}): the learned codec encodes "
        f"in {default['encode_s']:.2f} s and decodes in {default['decode_s']:.2f} s at quality {mid_q} "
        f"({min(enc):.2f}-{max(enc):.2f} s "
        f"and {min(dec):.2f}-{max(dec):.2f} s over qualities and the byte-budget search); the embedded VAE path "
        f"(u8+zstd, at the precision `--precision auto` picks on that CPU) takes {vae['encode_s']:.2f} s and "
        f"{vae['decode_s']:.2f} s"
        + (
            f"; without the post-filter (`--no-postfilter`) the learned codec takes {plain['encode_s']:.2f} s and "
            f"{plain['decode_s']:.2f} s at quality {mid_q}"
            if plain
            else ""
        )
        + (
            f"; with encode-time refinement (`{refined[0].removeprefix('learned ')}`) the learned encode takes "
            f"{refined[1]['encode_s']:.1f} s (the decode doesn't change).\n"
            if refined
            else ".\n"
        )
    )


def speed(r: Results) -> str:
    d = r["speed"]
    out = [
        f"`python -m benchmarks.speed` ({run_line(d)}, torch {d['torch']}, {d['precision']} on the fast path, the "
        "full SD VAE architecture with random weights, `temp/apple.jpeg`; medians, seconds; original = fp32, model "
        "loaded from disk for the image on both sides, no warm-up):\n"
    ]
    for size, s in d["sizes"].items():
        o, w, c = s["original"], s["ours_warm"], s.get("ours_cold")
        n = s["stream_images"]
        out.append(f"| {size}x{size} | original | ours, warm | speedup |\n|---|---|---|---|")
        if "load_sender" in o:
            load = o["load_sender"] + o["load_receiver"]
            out.append(f"| model load (sender + receiver) | {load:.3f} | - (once per process) | |")
        out.append(f"| encode | {o['encode']:.3f} | {w['encode']:.3f} | {s['speedup_encode']:.1f}x |")
        out.append(f"| decode | {o['decode']:.3f} | {w['decode']:.3f} | {s['speedup_decode']:.1f}x |")
        wire_o = o["quantize_compress"] + o["send"] + o["decompress"]
        wire_w = w["quantize_compress"] + w["send"] + w["decompress"]
        out.append(f"| quantize+compress / send over loopback / decompress | {wire_o:.3f} | {wire_w:.3f} | |")
        out.append(
            f"| **end to end, one image** | **{o['end_to_end']:.3f}** | **{w['end_to_end']:.3f}** | "
            f"**{s['speedup_end_to_end_warm']:.1f}x** |"
        )
        out.append(
            f"| stream of {n} images | {s['original_stream_images_per_s']:.3f} img/s (derived: 1 / one image) | "
            f"{s['ours_stream_images_per_s']:.2f} img/s (measured) | {s['speedup_stream']:.1f}x |"
        )
        if c:
            out.append(
                f"| ours cold (new process: imports {c['imports']:.2f}, load + warm-up {c['load_and_warmup']:.2f}, "
                f"first image {c['first_image']:.2f}) | | {c['process_wall']:.2f} s | |"
            )
        out.append("")
    s0 = next(iter(d["sizes"].values()))
    f = s0["flops"]
    peak = d["matmul_peak_tflops"]
    size0 = next(iter(d["sizes"]))
    total = (f["encode_flops"] + f["decode_flops"]) / 1e9
    cap = peak["bf16"] / max(f["original_encode_tflops"], f["original_decode_tflops"])
    at_peak = total / 1e3 / peak["bf16"]
    out.append(
        f"How close to the hardware: the SD VAE costs {f['encode_flops'] / 1e9:.0f} GFLOP to encode and "
        f"{f['decode_flops'] / 1e9:.0f} GFLOP to decode a {size0}x{size0} image (`torch.utils.flop_counter`). "
        "Ours runs "
        f"them at {f['encode_tflops_achieved']:.2f} and {f['decode_tflops_achieved']:.2f} TFLOP/s against a measured "
        f"{d['precision'].removeprefix('torch.')} matmul peak of {peak['bf16']:.2f} TFLOP/s "
        f"({100 * max(f['encode_tflops_achieved'], f['decode_tflops_achieved']) / peak['bf16']:.0f}%); the original's "
        f"fp32 runs at {f['original_encode_tflops']:.2f}-{f['original_decode_tflops']:.2f} TFLOP/s against an fp32 "
        f"peak of {peak['fp32']:.2f}. Compute alone therefore caps the gain near {cap:.1f}x on that CPU (even at 100% "
        f"of the bf16 peak, the {total:.0f} GFLOP of one image take {at_peak:.2f} s: "
        f"{s0['original']['end_to_end'] / at_peak:.1f}x faster than the original's "
        f"{s0['original']['end_to_end']:.2f} s)."
    )
    if "large_image" in d:
        li = d["large_image"]
        out.append(
            f"\nA {li['size']}x{li['size']} image (tiled) encodes in {li['encode_s']:.1f} s and decodes in "
            f"{li['decode_s']:.1f} s with a peak of {li['peak_rss_gib']:.1f} GiB of memory."
        )
    return "\n".join(out) + "\n"


GUARD_ROWS = {
    "bf16": ("bf16 (what `--precision auto` runs on AMX CPUs)", ""),
    "int8-weights": ("int8 weights only (per output channel)", "buys no compute: activations stay bf16"),
    "int8-static": ("int8 weights + activations (static, per-tensor, calibrated on training photos)", ""),
    "int8-static-mixed": ("the same, convolutions next to pixels and latent kept in float", ""),
}


def precision_guard(r: Results) -> str:
    d = r["precision_guard"]
    g = d["guard_db"]
    out = [
        f"Run of {run_line(d)}: the embedded model's trained weights, {len(d['images'])} held-out photos at "
        f"{d['size']}x{d['size']}; target >= {g:.0f} dB. `speed.py` also reports it with random SD VAE weights "
        f"({r['speed']['quality_guard_psnr_db']['random_weights_sd_vae_arch']:.1f} dB).\n",
        "| path | PSNR vs fp32, mean / worst | verdict |",
        "|---|---|---|",
    ]
    for k, (label, note) in GUARD_ROWS.items():
        mean, worst = d["psnr_vs_fp32_db"][k], d["min_psnr_vs_fp32_db"][k]
        verdict = f"pass, by {worst - g:.1f} dB" if worst >= g else f"fail, by {g - mean:.2f} dB (mean)"
        if worst < g:
            verdict += f" / {g - worst:.2f} (worst)"
        if note:
            verdict += f"; {note}"
        out.append(f"| {label} | {mean:.1f} / {worst:.1f} dB | {verdict} |")
    return "\n".join(out) + "\n"


def server(r: Results) -> str:
    d = r["server"]
    out = [
        f"Run of {run_line(d)}; {d['model']}, {d['size']}x{d['size']} images, PNGs "
        f"{'written' if d['writes_png'] else 'not written'}; every level in clear and sealed (`--key`), side by "
        "side:\n",
        "| concurrent senders | sealed | images/s | p50 latency | p95 latency | acknowledged |",
        "|---|---|---|---|---|---|",
    ]
    sealed = d.get("levels_sealed") or [None] * len(d["levels"])
    for plain, seal in zip(d["levels"], sealed, strict=True):
        for label, lv in (("no", plain), ("yes", seal)):
            if lv is None:
                continue
            out.append(
                f"| {lv['senders']} | {label} | {lv['images_per_s']:.1f} | {1000 * lv['p50_latency_s']:.1f} ms | "
                f"{1000 * lv['p95_latency_s']:.1f} ms | {lv['acknowledged']}/{lv['images']} |"
            )
    if "sealed_overhead_bytes_per_frame" in d:
        out.append(
            f"\nSealing adds {d['sealed_overhead_bytes_per_frame']} bytes to every frame (and one handshake of "
            "three short messages per connection)."
        )
    return "\n".join(out) + "\n"


def codec_speed(r: Results) -> str:
    d = r["codec_speed"]
    out = [f"| codec ({d['image']}) | encode s | decode s | bytes | rate probes |", "|---|---|---|---|---|"]
    for name, v in d["codecs"].items():
        out.append(
            f"| {name} | {v['encode_s']:.3f} | {v['decode_s']:.3f} | {v['payload_bytes']:,} | {v['rate_probes']} |"
        )
    out.append(f"\n({run_line(d)}, {d['torch_threads']} torch threads; medians of {d['repeats']} after a warm-up.)")
    return "\n".join(out) + "\n"


def quality(r: Results) -> str:
    q = r["quality"]
    g = q.get("grid")
    out = [
        f"Run of {run_line(q)}; learned codec weights `{q['learned_model']}`; sizes at {q['size']} resolution; cells "
        "are PSNR dB / SSIMULACRA2, '(n/m over)' = images whose smallest output exceeds the budget, averaged in "
        "anyway:\n",
        compact_table(q["summary"]),
        "![rate-distortion curves](benchmarks/results/quality_rd.png)\n",
    ]
    if g:
        caps = ", ".join(f"{k} {v:,}" for k, v in g["bytes"].items())
        out.append(
            f"Held-out photo {g['image']} at {g['bpp']} bpp (a budget of {g['budget_bytes']:,} bytes), every codec "
            f"at the same budget, 1:1 crops (bytes: {caps}):\n"
        )
        out.append("![the same bytes through every codec](benchmarks/results/quality_grid.png)")
    return "\n".join(out) + "\n"


def lic_status(r: Results) -> str:
    t = r.training("latentcomm-lic")
    if "gpu_seconds" in t:
        gpu_steps = sum(ph["steps"][1] - ph["steps"][0] for ph in t["phases"] if ph["device"].startswith("cuda"))
        where = (
            f"It was trained for {training_time(t)} ({t['step']:,} steps: the first "
            f"{t['phases'][0]['steps'][1]:,} on the CPU with batches of 8 128x128 crops, {gpu_steps:,} on the GPU "
            "with batches of 16 256x256 crops, 8 times the pixels per step)"
        )
    else:
        where = (
            f"It was trained for {hours(t['train_seconds'])} on one or two cores of a CPU (no GPU was lent to "
            f"this project), {t['step']:,} steps"
        )
    ctx = t.get("context")
    if ctx:
        groups = ", ".join(map(str, ctx["groups"]))
        where += (
            f". Its context model (channel groups {groups}) was trained on the frozen transforms of step "
            f"{ctx['joint_steps'][0]:,} for {ctx['cpu_seconds'] / 60:.0f} minutes of CPU ({ctx['steps']:,} steps, rate "
            f"only), then jointly with the transforms (steps {ctx['joint_steps'][0]:,}-{ctx['joint_steps'][1]:,})"
            if "joint_steps" in ctx
            else f". Its context model (channel groups {groups}) was then trained on those frozen transforms for "
            f"{ctx['cpu_seconds'] / 60:.0f} minutes of CPU ({ctx['steps']:,} steps, rate only)"
        )
    phases: list[dict] = []
    for ph in t.get("phases", []):  # consecutive time boxes of one blend read as one phase
        key = (
            ph.get("msssim_weight"),
            ph.get("s2_weight"),
            ph.get("batch"),
            ph.get("crop"),
            ph.get("qualities"),
            ph.get("qualities_share"),
        )
        last = phases[-1] if phases else None
        if last and key == last["key"] and last["steps"][1] == ph["steps"][0] and (key[0] or key[1]):
            last["steps"] = [last["steps"][0], ph["steps"][1]]
            last["seconds"] += ph["seconds"]
        else:
            phases.append({**ph, "key": key})
    for ph in phases:
        blend = [f"`--msssim-weight {ph['msssim_weight']:g}`"] if ph.get("msssim_weight") else []
        blend += [f"`--s2-weight {ph['s2_weight']:g}`"] if ph.get("s2_weight") else []
        if blend:
            what = "MS-SSIM and SSIMULACRA2" if len(blend) == 2 else "SSIMULACRA2" if ph.get("s2_weight") else "MS-SSIM"
            on = gpu_names({"phases": [ph]}) if ph["device"].startswith("cuda") else "CPU"
            where += (
                f". Steps {ph['steps'][0]:,}-{ph['steps'][1]:,} ({ph['seconds'] / 60:.0f} minutes of {on}, batches of "
                f"{ph['batch']} {ph['crop']}x{ph['crop']} crops) blended {what} into the distortion "
                f"({', '.join(blend)})"
            )
            share = ph.get("qualities_share", 1)
            if ph.get("qualities") and share < 1:  # a mixture: some crops at those levels, the rest at any
                where += (
                    f", {share:.0%} of the crops at qualities {ph['qualities']} and the rest at any level "
                    f"(`--qualities {ph['qualities']} --qualities-share {share:g}`)"
                )
            elif ph.get("qualities"):  # recorded only for a phase that trained some of the levels
                where += f", training only qualities {ph['qualities']} (`--qualities {ph['qualities']}`)"
    soup = t.get("soup")
    if soup:  # the shipped tensors are a weighted mean of the last export and an earlier one
        where += (
            f". Last, every weight was averaged {1 - soup['weight']:g}:{soup['weight']:g} with the step-"
            f"{soup['with_step']:,} weights it was fine-tuned from (a model soup: it kept most of the fine-tuning's "
            "gains at higher rates without its loss of PSNR at the lowest)"
        )
    dec = t.get("decoder")
    if dec:
        where += (
            f". Last, its decoder was fine-tuned on the frozen bitstream (every image codes to the same bytes) "
            f"for {dec['cpu_seconds'] / 60:.0f} minutes of CPU ({dec['steps']:,} steps, {dec['objective']})"
        )
    post = t.get("postnet")
    if post:
        where += (
            f". After that, a residual post-network (width {post['width']}) was added after its synthesis and "
            f"trained on the frozen codec's decoded pictures of {post['pairs']:,} training crops (every image codes to "
            f"the same bytes) for {post['cpu_seconds'] / 60:.0f} minutes of CPU ({post['steps']:,} steps)"
        )
    return (
        f"**Status: an early model.** {where}; models of this kind converge over 10^5-10^6 steps. "
        "Training resumes where it stopped (`python -m latentcomm.training --objective codec`, or "
        "`tools/train_codec_gpu.sh` on a GPU); on a machine without that run's checkpoint, add "
        "`--init-from models/latentcomm-lic` to start from these weights.\n"
    )


def lic_measured(r: Results) -> str:
    q = r["quality"]
    s = q["summary"]
    ph, ae = s["photos"]["curves"]["learned"], s["aerial"]["curves"]["learned"]
    out = [
        f"From `benchmarks/quality.py` ({run_line(q)}, weights `{q['learned_model']}`), {q['size']} size, "
        "every quality through the real bitstream (payload bytes, not estimates; the sender's default encode, "
        "the post-filter included where it pays), the same harness as the pixel codecs:\n",
        "| quality | photos bpp | PSNR dB | MS-SSIM | SSIMULACRA2 | aerial bpp | PSNR dB | MS-SSIM | SSIMULACRA2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a, b in zip(ph, ae, strict=True):
        out.append(
            f"| {a['quality']:g} | {a['bpp']:.3f} | {a['psnr-rgb']:.2f} | {a['ms-ssim-rgb']:.4f} "
            f"| {a['ssimulacra2']:.1f} "
            f"| {b['bpp']:.3f} | {b['psnr-rgb']:.2f} | {b['ms-ssim-rgb']:.4f} | {b['ssimulacra2']:.1f} |"
        )
    out.append("\nAt equal bytes on the held-out photos (PSNR dB):\n")
    cols = ["learned", "avif", "jxl", "webp", "jpeg", "thumbnail"]
    out.append("| budget | " + " | ".join(cols) + " |")
    out.append("|---" * (len(cols) + 1) + "|")
    for b in q["budgets_bpp"]:
        cells = []
        for c in cols:
            e = equal(s, "photos", c, b)
            cells.append("" if e is None else f"{e['psnr-rgb']:.2f}" + (" (over)" if e["over_budget"] else ""))
        out.append(f"| {b} bpp | " + " | ".join(cells) + " |")
    floor = []
    for ds in ("photos", "aerial"):
        for b in (0.1, 0.15):
            lrn, avif = equal(s, ds, "learned", b), equal(s, ds, "avif", b)
            floor.append(
                f"{ds} {b} bpp: {lrn['psnr-rgb'] - avif['psnr-rgb']:+.2f} dB, "
                f"{lrn['ssimulacra2'] - avif['ssimulacra2']:+.1f} SSIMULACRA2"
            )
    met = all(
        equal(s, ds, "learned", b)["psnr-rgb"] >= equal(s, ds, "avif", b)["psnr-rgb"]
        and equal(s, ds, "learned", b)["ssimulacra2"] >= equal(s, ds, "avif", b)["ssimulacra2"]
        for ds in ("photos",)
        for b in (0.1, 0.15)
    )
    bd = {ds: s[ds]["bd_rate_vs_avif_percent"]["learned"] for ds in s}
    refined = []
    for ds in ("photos", "aerial"):
        for b, dp, ds2, ref in refined_gain(s, ds):
            avif = equal(s, ds, "avif", b)
            refined.append(
                f"{ds} {b} bpp: {dp:+.2f} dB and {ds2:+.1f} SSIMULACRA2 over the plain encode, "
                f"{ref['psnr-rgb'] - avif['psnr-rgb']:+.2f} dB and {ref['ssimulacra2'] - avif['ssimulacra2']:+.1f} "
                "against AVIF"
            )

    def pct(v: float | None) -> str:
        return "n/a (curves don't overlap)" if v is None else f"{v:+.0f}%"

    vae = s["photos"]["curves"]["vae-u8-zstd"][0]
    same = bpp_at(ph, vae["psnr-rgb"])
    out.append("")
    out.append(
        f"- Against the issue's floor (PSNR and SSIMULACRA2 at least AVIF's at 0.1 and 0.15 bpp on the photos): "
        f"**{'met' if met else 'not met'}**; learned minus AVIF at equal bytes: " + "; ".join(floor) + "."
    )
    if refined:
        out.append(
            f"- With encode-time refinement (`--refine {refine_steps(q)}`, same decoder, same bitstream format; "
            "the `learned-refined` rows): " + "; ".join(refined) + "."
        )
    out.append(
        "- BD-rate against AVIF over 0.05-0.5 bpp (negative = fewer bytes than AVIF): "
        + "; ".join(f"{ds} {pct(v['psnr-rgb'])} (PSNR), {pct(v['ssimulacra2'])} (SSIMULACRA2)" for ds, v in bd.items())
        + "."
    )
    if same is not None:
        out.append(
            f"- Against what latentcomm sent before: the embedded VAE's u8+zstd latent gives {vae['psnr-rgb']:.2f} dB "
            f"at {vae['bpp']:.3f} bpp; the learned codec reaches that PSNR at {same:.3f} bpp "
            f"({100 * (1 - same / vae['bpp']):.0f}% fewer bytes)."
        )
    else:
        out.append(
            f"- Against what latentcomm sent before: the embedded VAE's u8+zstd latent gives {vae['psnr-rgb']:.2f} dB "
            f"at {vae['bpp']:.3f} bpp; the learned codec's lowest quality already gives {ph[0]['psnr-rgb']:.2f} dB at "
            f"{ph[0]['bpp']:.3f} bpp ({100 * (1 - ph[0]['bpp'] / vae['bpp']):.0f}% fewer bytes for a better picture)."
        )
    low_b = min(q["budgets_bpp"])
    over = [
        f"{c} ({e['over_budget']}/{e['images']})"
        for c in cols
        if (e := equal(s, "photos", c, low_b)) is not None and e["over_budget"]
    ]
    out.append(
        f"- Its lowest quality averages {ph[0]['bpp']:.3f} bpp on the photos ({ph[0]['psnr-rgb']:.2f} dB, SSIMULACRA2 "
        f"{ph[0]['ssimulacra2']:.1f}) and {ae[0]['bpp']:.3f} on the aerial set ({ae[0]['psnr-rgb']:.2f} dB); smaller "
        "budgets are out of reach (the sender says so and sends quality 1). At the smallest budget, "
        f"{low_b} bpp, these can't fit some of the photos (their smallest setting is over it): "
        + (", ".join(over) if over else "none")
        + "."
    )
    t = r.training("latentcomm-lic")
    evals = t.get("heldout_evals", [])
    # Every 3,000 steps and the last: the line is for the curve's shape, training_state.json has all.
    evals = [e for i, e in enumerate(evals) if e["step"] % 3000 == 0 or i == len(evals) - 1]
    gpu_from = f"; on the GPU from step {t['phases'][1]['steps'][0]:,}" if "phases" in t else ""
    if "joint_steps" in t.get("context", {}):
        gpu_from += f"; the rate with the context model from step {t['context']['joint_steps'][0]:,}"
    if evals:
        out.append(
            "- Held-out progress during training (six 512x512 centre crops, estimated rate, lambda 0.0018: quality 3 "
            f"before the three lowest levels were added, quality 6 after{gpu_from}): "
            + ", ".join(
                # Exports before the low levels were added name lambda 0.0018 by its old quality, 3.
                f"{e.get('lambda0.0018_psnr', e.get('q3_psnr')):.2f} dB at "
                f"{e.get('lambda0.0018_bpp', e.get('q3_bpp')):.2f} bpp after {e['step']:,} steps"
                for e in evals
            )
            + "."
        )
    return "\n".join(out) + "\n"


def kl_quality(r: Results) -> str:
    q = r["quality"]
    s = q["summary"]
    g = r["precision_guard"]
    out = [
        f"From `python -m benchmarks.quality` ({run_line(q)}), this model, at {q['size']} size, means over images. "
        "Payload = the bytes on the wire for the latent. The pixel codecs' PSNR is read off their quality sweep "
        "at the latent's own rate (interpolated in log bpp).\n",
        "| set | latent | bpp | PSNR dB | MS-SSIM | SSIMULACRA2 | AVIF / WebP / JPEG XL / JPEG at that bpp, PSNR dB |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds, label in (("photos", "6 held-out photos"), ("aerial", "12 aerial")):
        cv = s[ds]["curves"]
        for enc in ("vae-f16", "vae-u8-zstd"):
            p = cv[enc][0]
            px = [at_bpp(cv[c], p["bpp"]) for c in ("avif", "webp", "jxl", "jpeg")]
            pxs = " / ".join("beyond sweep" if v is None else f"{v:.2f}" for v in px)
            out.append(
                f"| {label} | {enc.removeprefix('vae-')} | {p['bpp']:.3f} | {p['psnr-rgb']:.2f} | "
                f"{p['ms-ssim-rgb']:.4f} | {p['ssimulacra2']:.1f} | {pxs} |"
            )
    f16, u8 = s["photos"]["curves"]["vae-f16"][0], s["photos"]["curves"]["vae-u8-zstd"][0]
    behind = []
    for ds in s:
        point = s[ds]["curves"]["vae-u8-zstd"][0]
        for c in ("avif", "webp", "jxl", "jpeg"):
            v = at_bpp(s[ds]["curves"][c], point["bpp"])
            if v is not None:
                behind.append(v - point["psnr-rgb"])
    out.append(
        f"\n- **The latent survives the wire.** uint8 + zstd and float16 latents give the same PSNR to within "
        f"{max(abs(f16['psnr-rgb'] - u8['psnr-rgb']), 0.01):.2f} dB on the photos, and uint8 + zstd is "
        f"{100 * (1 - u8['bpp'] / f16['bpp']):.0f}% smaller."
    )
    out.append(
        f"- **It is below the aim.** {u8['psnr-rgb']:.1f} dB on held-out photos at native size and "
        f"{g['psnr_vs_original_db']['fp32']:.1f} dB at {g['size']}x{g['size']} (`benchmarks/precision_guard.py`, "
        "fp32), against the issue's aim of 25 dB."
    )
    out.append(
        f"- **At equal bytes, the pixel codecs beat it by {min(behind):.1f}-{max(behind):.1f} dB PSNR.** Choose the "
        "VAE path when the receiver needs the latent itself (for a diffusion model or other latent-space processing), "
        "not to save bytes."
    )
    out.append(
        f"- The bf16 fast path's reconstruction is within {min(g['min_psnr_vs_fp32_db']['bf16'], 99):.1f} dB PSNR "
        "(worst held-out photo) of the fp32 one (`benchmarks/precision_guard.py`), which is invisible; "
        "`tests/test_engine.py` checks >= 40 dB."
    )
    return "\n".join(out) + "\n"


LIVE_SYSTEMS = (
    "plain x264",
    "plain x264 medium",
    "plain x264 at ours' bits",
    "ours h264, sealed",
    "ours h264 + enhance, sealed",
    "plain SVT-AV1",
    "ours av1, sealed",
    "ours learned, sealed",
)


def _live_rows(d: dict) -> dict:
    """(size, rate, system) -> the live-video rows of every scene."""
    groups: dict = {}
    for row in d.get("live_video", []):
        groups.setdefault((row["size"], row["rate"], row["system"]), []).append(row)
    return groups


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [row[key] for row in rows if row.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def live_video(r: Results) -> str:
    """The live-video table: each system's mean over the scenes, per size and link rate."""
    d = r["stream"]
    groups = _live_rows(d)
    scenes = sorted({row["scene"] for row in d.get("live_video", [])})
    out = [
        f"Run of {run_line(d)} ({', '.join(scenes)}; {d.get('fps', 10)} fps, 10 s each; "
        "`python -m benchmarks.stream`). Mean over the scenes of what a viewer sees (at every source frame, the "
        "newest decoded frame); frames shown of those the source produced; latency from capture to "
        "acknowledgement; CPU per frame on the sender / receiver (the plain pipes: encode and decode together).\n",
        "| size | link | system | PSNR | SSIMULACRA2 | frames shown | latency p50 / p95 | CPU ms per frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in ("320x176", "640x352"):
        for rate in ("64k", "256k", "1M"):
            for system in LIVE_SYSTEMS:
                rows = groups.get((size, rate, system))
                if not rows:
                    continue
                shown = sum(row["frames_shown"] for row in rows) / max(
                    1, sum(row.get("frames_from_source", row["frames_shown"]) for row in rows)
                )
                if system.startswith("plain"):
                    lat, cpu = "every frame, no link", f"{1000 * _mean(rows, 'cpu_s_per_frame_both'):.1f}"
                else:
                    p50, p95 = _mean(rows, "latency_p50_s"), _mean(rows, "latency_p95_s")
                    lat = f"{1000 * p50:.0f} / {1000 * p95:.0f} ms" if p50 is not None else "-"
                    cpu = (
                        f"{1000 * _mean(rows, 'sender_cpu_s_per_frame'):.1f} / "
                        f"{1000 * _mean(rows, 'receiver_cpu_s_per_frame'):.1f}"
                    )
                out.append(
                    f"| {size} | {rate} | {system} | {_mean(rows, 'viewer_psnr_db'):.2f} dB | "
                    f"{_mean(rows, 'viewer_ssimulacra2'):.1f} | {100 * shown:.0f}% | {lat} | {cpu} |"
                )
    return "\n".join(out) + "\n"


def live_video_scenes(r: Results) -> str:
    """Per scene: ours h264 (sealed, with and without --enhance) against plain x264 at the link's rate
    (whose rate control may spend more than the link) and at exactly the bits ours spent."""
    d = r["stream"]
    rows = d.get("live_video", [])
    out = [
        "| scene | size | link | plain x264 | ours h264, sealed | ours - plain | plain x264 at ours' bits | ours - "
        "plain at equal bits | ours + enhance - plain at equal bits | ours: frames shown, latency p95 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    index = {(row["scene"], row["size"], row["rate"], row["system"]): row for row in rows}

    def cell(row: dict) -> str:
        return f"{row['viewer_psnr_db']:.2f} dB, {row['bits_per_second'] / 1000:.0f}k"

    def versus(row: dict | None, base: dict | None) -> str:
        return f"{row['viewer_psnr_db'] - base['viewer_psnr_db']:+.2f} dB" if row and base else "-"

    for (scene, size, rate, system), row in sorted(index.items()):
        if system != "plain x264" or (scene, size, rate, "ours h264, sealed") not in index:
            continue
        ours = index[(scene, size, rate, "ours h264, sealed")]
        equal = index.get((scene, size, rate, "plain x264 at ours' bits"))
        enhanced = index.get((scene, size, rate, "ours h264 + enhance, sealed"))
        out.append(
            f"| {scene} | {size} | {rate} | {cell(row)} | {cell(ours)} | {versus(ours, row)} | "
            f"{cell(equal) if equal else '-'} | {versus(ours, equal)} | {versus(enhanced, equal)} | "
            f"{ours['frames_shown']} of {ours['frames_from_source']}, {1000 * ours['latency_p95_s']:.0f} ms |"
        )
    return "\n".join(out) + "\n"


def thin_links(r: Results) -> str:
    """Issue "Thin links": ours against what a user could afford on 2 cores in real time (each plain pipe
    at ours' bits on the wire), per size and rate, mean over the scenes and on the real camera clip(s)."""
    d = r["thin_links"]
    rows = d.get("live_video", [])
    scenes = sorted({row["scene"] for row in rows})
    cameras = [s for s in scenes if s.endswith("-detection")]
    out = [
        f"Run of {run_line(d)} ({', '.join(scenes)}; {d.get('fps', 10)} fps, 10 s each; `python -m benchmarks.stream "
        "--systems auto,h264,thin --json benchmarks/results/thin_links.json`). Ours: the real sender and receiver, "
        "sealed, over the throttle. Each plain pipe (every frame coded and delivered, no framing) is given the "
        "bits ours spent on the wire (two runs, interpolated). PSNR at the source's size; the best plain pipe "
        "per row is the one with the best mean PSNR.\n",
        "| size | link | scenes | ours auto | ours h264 | best plain pipe at ours' bits | ours auto - best "
        "plain | ours auto: shown, latency p95, CPU ms/frame sender / receiver |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["size"], row["rate"]), []).append(row)
    order = {"64k": 0, "128k": 1, "256k": 2, "1M": 3}
    for (size, rate), group in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9))):
        for label, which in (("all", scenes), ("real cameras", cameras)):
            sel = [row for row in group if row["scene"] in which]
            if not sel or (label == "real cameras" and set(which) == set(scenes)):
                continue
            by: dict = {}
            for row in sel:
                by.setdefault(row["system"], []).append(row)

            def cell(system: str, by: dict = by) -> str:
                got = by.get(system)
                if not got:
                    return "-"
                return f"{_mean(got, 'viewer_psnr_db'):.2f} dB, {_mean(got, 'viewer_ssimulacra2'):.1f}"

            plain = {k: v for k, v in by.items() if k.startswith("plain") and k.endswith("at ours' bits")}
            best = max(plain, key=lambda k: _mean(plain[k], "viewer_psnr_db")) if plain else None
            ours = by.get("ours auto, sealed") or by.get("ours av1, sealed")
            gap = (
                f"{_mean(ours, 'viewer_psnr_db') - _mean(plain[best], 'viewer_psnr_db'):+.2f} dB, "
                f"{_mean(ours, 'viewer_ssimulacra2') - _mean(plain[best], 'viewer_ssimulacra2'):+.1f}"
                if ours and best
                else "-"
            )
            facts = "-"
            if ours:
                shown = sum(x["frames_shown"] for x in ours) / max(1, sum(x["frames_from_source"] for x in ours))
                facts = (
                    f"{100 * shown:.0f}%, {1000 * _mean(ours, 'latency_p95_s'):.0f} ms, "
                    f"{1000 * _mean(ours, 'sender_cpu_s_per_frame'):.1f} / "
                    f"{1000 * _mean(ours, 'receiver_cpu_s_per_frame'):.1f}"
                )
            best_cell = (
                f"{best.removeprefix('plain ').removesuffix(' at ours' + chr(39) + ' bits')}: {cell(best)}"
                if best
                else "-"
            )
            out.append(
                f"| {size} | {rate} | {label} | {cell('ours auto, sealed')} | {cell('ours h264, sealed')} | "
                f"{best_cell} | {gap} | {facts} |"
            )
    return "\n".join(out) + "\n"


def stream(r: Results) -> str:
    d = r["stream"]
    out = ["| scene | coding | bytes per frame | mean PSNR |", "|---|---|---|---|"]
    for t in d["temporal"]:
        out.append(f"| {t['scene']} | {t['mode']} | {t['bytes_per_frame']:,.0f} | {t['mean_psnr_db']:.2f} dB |")
    if d.get("broker"):
        out += ["", "| receivers in the group | frames decoded per second | split |", "|---|---|---|"]
        for b in d["broker"]:
            split = " + ".join(str(n) for n in b["decoded_per_receiver"])
            out.append(f"| {b['receivers']} | {b['frames_per_s']:.2f} | {split} of {b['frames']} |")
    return "\n".join(out) + "\n"


def hardening(r: Results) -> str:
    d = r["hardening"]
    rows = [f"Run of {run_line(d['meta'])}; real receiver processes on loopback, each figure beside its baseline:\n",
            "| what | measured |", "|---|---|"]  # fmt: skip
    if s := d.get("strangers"):
        rows.append(
            f"| 64 strangers with the key id: HELLO, then a 90 MiB SEALED body announced and pushed | RSS "
            f"{s['rss_before_mib']:.0f} MiB before, {s['rss_64_open_after_hello_mib']:.0f} MiB with all 64 open, "
            f"{s['rss_after_the_bodies_mib']:.0f} MiB after the bodies (peak {s['peak_rss_mib']:.0f} MiB) |"
        )
    if s := d.get("closed_streams"):
        rows.append(
            f"| 64 connections, each one 4096x4096 H.264 key frame ({s['key_frame_bytes']:,} bytes), then closed | "
            f"RSS {s['rss_after_one_stream_mib']:.0f} MiB after the first, {s['rss_after_64_closed_streams_mib']:.0f} "
            "MiB after all 64 |"
        )
    if s := d.get("skip_flood"):
        lifted, default = s["budget lifted"], s["default budget"]
        rows.append(
            f"| a flood of {s['inter_frame_bytes']}-byte all-skip inter frames at 1920x1088 | receiver CPU "
            f"{default['receiver_cpu_s_per_s']:.2f} s a second with the default budget ({default['frames_decoded']} "
            f"of {default['frames_sent']} decoded), {lifted['receiver_cpu_s_per_s']:.2f} s with it lifted "
            f"({lifted['frames_decoded']} of {lifted['frames_sent']}) |"
        )
    if s := d.get("replay_memory"):
        rows.append(
            f"| the sealed replay memory, {s['streams']:,} streams x {s['window']:,} counters | "
            f"{s['ms_per_frame']:.3f} ms a frame (rewriting the whole memory, as every frame did before: "
            f"{s['ms_per_whole_rewrite']:.0f} ms); start {s['start_s']:.2f} s; "
            f"snapshot {s['snapshot_bytes'] / 1e6:.1f} MB |"
        )
    if s := d.get("live_events"):
        none, many = s["0 clients"], s["300 clients"]
        rows.append(
            f"| frames a second a receiver handles, no page open / 300 `/events` connections tried "
            f"({many['events_connections_served']} served) | {none['frames_per_s']:.0f} / {many['frames_per_s']:.0f} |"
        )
    if s := d.get("day_stream"):
        h = s["heap_mib"]
        rows.append(
            f"| what a `--bandwidth auto` sender keeps, simulated at {s['fps']} fps | heap {h['after 1 h']:.1f} MiB "
            f"after an hour, {h['after 24 h']:.1f} MiB after a day |"
        )
    return "\n".join(rows) + "\n"


def install(r: Results) -> str:
    d = r["install"]
    out = [
        f"Run of {run_line(d)}, Python {d['python']}, pip against a {d['pip_index']} (`python -m "
        "benchmarks.install`): each a fresh virtual environment, the checkout installed with its extras; size is "
        "what the install added to site-packages.\n",
        "| install | command | size | distributions | torch | time |",
        "|---|---|---|---|---|---|",
    ]
    for row in d["rows"]:
        out.append(
            f"| {row['target']} | `{row['pip_install']}` | {row['mib']:,} MiB | {row['distributions']} | "
            f"{'yes' if row['torch'] else 'no'} | {row['seconds']:.0f} s |"
        )
    return "\n".join(out) + "\n"


RENDERERS: dict[str, Callable[[Results], str]] = {
    "install": install,
    "hardening": hardening,
    "which-codec": which_codec,
    "codec-speed-line": codec_speed_line,
    "speed": speed,
    "precision-guard": precision_guard,
    "quality": quality,
    "codec-speed": codec_speed,
    "server": server,
    "stream": stream,
    "live-video": live_video,
    "live-video-scenes": live_video_scenes,
    "thin-links": thin_links,
    "lic-status": lic_status,
    "lic-measured": lic_measured,
    "kl-quality": kl_quality,
}


def render(text: str, results: Results, up: str = "") -> tuple[str, list[str]]:
    """The document with every block re-rendered, and the names of the blocks that changed. ``up``:
    the way from the document's folder to the repository's root (``../`` for docs/), for the
    renderers' links, which are written from the root."""
    changed: list[str] = []

    def sub(m: re.Match) -> str:
        name = m["name"]
        if name not in RENDERERS:
            raise SystemExit(f"error: unknown report block '{name}'")
        body = RENDERERS[name](results).replace("](benchmarks/", f"]({up}benchmarks/")
        if body != m["body"]:
            changed.append(name)
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(sub, text), changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 naming the blocks that are stale")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the benchmark JSON files")
    p.add_argument("--models", type=Path, default=REPO / "models", help="folder of the shipped models")
    p.add_argument("docs", nargs="*", type=Path, default=DOCS, help="documents to render (default: README + cards)")
    args = p.parse_args(argv)
    results = Results(args.results, args.models)
    stale = []
    for doc in args.docs:
        text = doc.read_text()
        inside = doc.resolve().is_relative_to(REPO)
        up = "../" * len(doc.resolve().parent.relative_to(REPO).parts) if inside else ""
        new, changed = render(text, results, up)
        stale += [f"{doc.relative_to(REPO) if doc.is_relative_to(REPO) else doc}: {n}" for n in changed]
        if changed and not args.check:
            doc.write_text(new)
    if args.check and stale:
        print("stale figures (run python -m benchmarks.report): " + ", ".join(stale), file=sys.stderr)
        return 1
    print(("rewrote " + ", ".join(stale)) if stale else "all figures match benchmarks/results")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
