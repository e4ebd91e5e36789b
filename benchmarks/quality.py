"""Rate-distortion of every codec latentcomm can send, against JPEG, WebP, AVIF and JPEG XL.

    python -m benchmarks.quality                         # held-out photos + aerial, native size
    python -m benchmarks.quality --codecs learned --merge benchmarks/results/quality.json
    python -m benchmarks.quality --quick --json /tmp/q.json --plots /tmp/q   # smoke test

For every evaluation image (the 6 held-out photos and the 12 aerial images, never trained on), at
native size, one harness runs every codec and measures what a receiver would show:

- ``learned``: the learned codec at every trained quality (1-11 for the shipped model), the real entropy-coded payload;
- ``learned-refined``: the same codec and decoder with encode-time latent refinement (``--refine``,
  :mod:`latentcomm.codecs.learned.refine`; ``--refine-steps`` here, 10 by default), at the equal-bytes budgets only
  (it costs about 30 s per photo per encode, so no quality sweep and no BD-rate);
- ``vae-u8-zstd`` / ``vae-f16``: the embedded AutoencoderKL's latent as v2 frames carry it;
- ``jpeg`` / ``webp`` / ``avif`` / ``jxl`` (Pillow, pillow-jxl-plugin): a quality sweep, each with
  its best ordinary settings (optimized Huffman tables for JPEG, method 6 for WebP, the encoders'
  defaults for AVIF and JPEG XL);
- ``thumbnail``: the trivial baseline every codec must beat: the image downscaled to a few percent
  of its size, lossless WebP, upscaled back with Lanczos;
- equal bytes: at 0.05, 0.1, 0.15, 0.25 and 0.5 bpp every codec gets the image's byte budget
  (the learned codec through ``--target-bytes``'s search, pixel codecs by bisection on their
  quality). A codec whose smallest output is over the budget is marked ``over_budget``.

Bytes are what the wire needs for the picture: the whole file for pixel codecs, the whole payload for
latentcomm's codecs (the learned codec's 7-byte header, the VAE's uint8 scales included); the v2
frame's own header (about 100 bytes with the model id) is the same for every codec that rides in it.
Every row has the same keys (CompressAI style): bytes, bpp, psnr-rgb, ms-ssim-rgb, ssimulacra2,
encoding_time, decoding_time. BD-rate against AVIF (PSNR and SSIMULACRA2) is computed over
0.05-0.5 bpp on the mean curves. Writes JSON, a markdown table, RD plots and a picture grid.
``--merge`` keeps another run's rows for the codecs not re-run here (the pixel codecs don't change
when the learned codec is retrained).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, features
from tqdm import tqdm

from benchmarks.harness import RESULTS, run_meta, write_results
from latentcomm import data
from latentcomm.codecs import LEARNED_MODEL_DIR, ImageCodec, LearnedCodec, VaeCodec
from latentcomm.images import center_crop_square, load_image, pil_to_tensor, tensor_to_pil
from latentcomm.metrics import ms_ssim, psnr, ssimulacra2
from latentcomm.models import EMBEDDED_MODEL_DIR

BUDGETS_BPP = (0.05, 0.1, 0.15, 0.25, 0.5)
BD_RANGE = (0.05, 0.5)
PIXEL_SWEEPS = {
    "jpeg": ("JPEG", (5, 15, 30, 50, 70, 85)),
    "webp": ("WEBP", (5, 20, 40, 60, 75, 90)),
    "avif": ("AVIF", (10, 25, 40, 55, 70, 85)),
    "jxl": ("JXL", (5, 20, 40, 60, 75, 90)),
    # The trivial baseline: a thumbnail at "quality" percent of the size, lossless WebP, upscaled back.
    "thumbnail": ("THUMB", (5, 8, 12, 17, 25, 35)),
}
#: Each pixel codec's best ordinary settings (what a careful user would pass; no exotic tuning).
SAVE_OPTIONS = {"JPEG": {"optimize": True}, "WEBP": {"method": 6}, "AVIF": {}, "JXL": {}}
ALL_CODECS = ("learned", "learned-refined", "vae", *PIXEL_SWEEPS)
METRICS = ("psnr-rgb", "ms-ssim-rgb", "ssimulacra2")


def available_pixel_codecs() -> list[str]:
    out = []
    for name, (fmt, _) in PIXEL_SWEEPS.items():
        if fmt == "THUMB":
            if not features.check("webp"):
                continue
        elif fmt == "JXL":
            try:
                import pillow_jxl  # noqa: F401
            except ImportError:
                continue
        elif fmt != "JPEG" and not features.check(fmt.lower()):
            continue
        out.append(name)
    return out


def pixel_encode(img: Image.Image, fmt: str, quality: int) -> tuple[bytes, Image.Image, float, float]:
    t0 = time.perf_counter()
    buf = io.BytesIO()
    if fmt == "THUMB":
        size = (max(1, round(img.width * quality / 100)), max(1, round(img.height * quality / 100)))
        img.resize(size, Image.Resampling.LANCZOS).save(buf, format="WEBP", lossless=True, method=6)
    else:
        img.save(buf, format=fmt, quality=quality, **SAVE_OPTIONS[fmt])
    t1 = time.perf_counter()
    out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if fmt == "THUMB":
        out = out.resize(img.size, Image.Resampling.LANCZOS)
    out.load()
    return buf.getvalue(), out, t1 - t0, time.perf_counter() - t1


def pixel_fit(img: Image.Image, fmt: str, budget: int, known: dict[int, int] | None = None) -> tuple[int, tuple]:
    """Highest quality (1-100) whose file fits ``budget`` bytes (quality 1 if none does).

    ``known`` (quality -> bytes from the sweep) narrows the bisection to the bracketing sweep
    qualities, which halves the encodes (AVIF takes about a second per megapixel here).
    """
    lo, hi, best = 1, 100, None
    for q, n in sorted((known or {}).items()):
        if n <= budget:
            lo = max(lo, q)
        else:
            hi = min(hi, q - 1)
            break
    while lo <= hi:
        q = (lo + hi) // 2
        res = pixel_encode(img, fmt, q)
        if len(res[0]) <= budget:
            best, lo = (q, res), q + 1
        else:
            hi = q - 1
    return best if best is not None else (1, pixel_encode(img, fmt, 1))


def measure(img: Image.Image, recon: Image.Image, nbytes: int, enc_s: float, dec_s: float, **extra) -> dict:
    return {
        "width": img.width,
        "height": img.height,
        "bytes": nbytes,
        "bpp": 8 * nbytes / (img.width * img.height),
        "psnr-rgb": psnr(img, recon),
        "ms-ssim-rgb": ms_ssim(img, recon),
        "ssimulacra2": ssimulacra2(img, recon),
        "encoding_time": enc_s,
        "decoding_time": dec_s,
        **extra,
    }


def run_codec(codec: ImageCodec, img: Image.Image, **kw) -> tuple[Image.Image, int, float, float, dict]:
    """Encode with a latentcomm codec, decode the exact payload, time both (model loaded)."""
    x = pil_to_tensor(img)
    t0 = time.perf_counter()
    enc = codec.encode(x, **kw)
    enc_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = codec.decode(enc.encoding, enc.compression, enc.shape, enc.payload, enc.params, (img.height, img.width))
    recon = tensor_to_pil(out)
    # uint8 VAE latents also need their per-channel (scale, offset) floats on the wire.
    nbytes = len(enc.payload) + 8 * len(enc.params)
    return recon, nbytes, enc_s, time.perf_counter() - t1, enc.facts


def evaluate(
    images: list[tuple[str, Path]],
    codecs: list[str],
    learned: LearnedCodec | None,
    vae: dict[str, VaeCodec],
    size: str,
    qualities: list[float],
    refine_steps: int = 0,
) -> list[dict]:
    """Rows for every image and codec. ``learned`` serves both learned rows: its sweep and budget rows
    when ``"learned"`` is in ``codecs``, the refined budget rows when ``refine_steps`` > 0."""
    rows: list[dict] = []
    for ds, path in tqdm(images, desc="images", unit="img"):
        img = load_image(path)
        if size != "native":
            img = center_crop_square(img, int(size))
        base = {"dataset": ds, "image": path.name, "size": size}
        pixels = img.width * img.height
        swept: dict[str, dict[int, int]] = {}
        if learned is not None and "learned" in codecs:
            for q in qualities:
                recon, n, e, d, facts = run_codec(learned, img, quality=q)
                rows.append({**base, "codec": "learned", "mode": "sweep", "quality": q, **measure(img, recon, n, e, d)})
        for name, vc in vae.items():
            recon, n, e, d, _ = run_codec(vc, img)
            rows.append({**base, "codec": name, "mode": "sweep", "quality": None, **measure(img, recon, n, e, d)})
        for name in codecs:
            if name not in PIXEL_SWEEPS:
                continue
            fmt, sweep = PIXEL_SWEEPS[name]
            for q in sweep:
                blob, recon, e, d = pixel_encode(img, fmt, q)
                swept.setdefault(name, {})[q] = len(blob)
                rows.append(
                    {**base, "codec": name, "mode": "sweep", "quality": q, **measure(img, recon, len(blob), e, d)}
                )
        for bpp in BUDGETS_BPP:
            budget = int(bpp * pixels / 8)
            runs = [("learned", 0)] if "learned" in codecs else []
            runs += [("learned-refined", refine_steps)] if refine_steps else []
            for name, steps in runs:  # main() loads ``learned`` whenever either is asked for
                recon, n, e, d, facts = run_codec(learned, img, target_bytes=budget, refine_steps=steps)
                extra = {"refine_steps": steps} if steps else {}
                rows.append(
                    {
                        **base,
                        "codec": name,
                        "mode": "budget",
                        "budget_bpp": bpp,
                        "budget": budget,
                        "quality": facts["quality"],
                        "over_budget": n > budget,
                        **measure(img, recon, n, e, d, **extra),
                    }
                )
            for name in codecs:
                if name not in PIXEL_SWEEPS:
                    continue
                q, (blob, recon, e, d) = pixel_fit(img, PIXEL_SWEEPS[name][0], budget, swept.get(name))
                rows.append(
                    {
                        **base,
                        "codec": name,
                        "mode": "budget",
                        "budget_bpp": bpp,
                        "budget": budget,
                        "quality": q,
                        "over_budget": len(blob) > budget,
                        **measure(img, recon, len(blob), e, d),
                    }
                )
    return rows


def curves(rows: list[dict], dataset: str) -> dict[str, list[dict]]:
    """Mean RD curve per codec (sweep rows averaged over images at each quality setting)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["dataset"] == dataset and r["mode"] == "sweep":
            groups.setdefault((r["codec"], r["quality"]), []).append(r)
    out: dict[str, list[dict]] = {}
    for (codec, q), rs in groups.items():
        point = {"quality": q, "images": len(rs)}
        for k in ("bpp", *METRICS, "encoding_time", "decoding_time"):
            point[k] = statistics.fmean(r[k] for r in rs)
        out.setdefault(codec, []).append(point)
    for pts in out.values():
        pts.sort(key=lambda p: p["bpp"])
    return out


def equal_bytes(rows: list[dict], dataset: str) -> list[dict]:
    """Per budget and codec: mean metrics, and how many images went over the budget."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["dataset"] == dataset and r["mode"] == "budget":
            groups.setdefault((r["budget_bpp"], r["codec"]), []).append(r)
    out = []
    for (bpp, codec), rs in sorted(groups.items()):
        s = {"budget_bpp": bpp, "codec": codec, "images": len(rs), "over_budget": sum(r["over_budget"] for r in rs)}
        for k in ("bpp", *METRICS):
            s[k] = statistics.fmean(r[k] for r in rs)
        out.append(s)
    return out


def bd_rate(anchor: list[dict], test: list[dict], metric: str, rate_range=BD_RANGE) -> float | None:
    """Bjontegaard delta rate (%) of ``test`` against ``anchor``: cubic fits of log-rate over the metric,
    integrated over the metric interval both curves cover with points inside ``rate_range`` (widened by
    one neighbouring point each side so the fit spans the range). Negative = fewer bytes than the anchor."""

    def clip(pts):
        pts = sorted(pts, key=lambda p: p["bpp"])
        idx = [i for i, p in enumerate(pts) if rate_range[0] <= p["bpp"] <= rate_range[1]]
        if not idx:
            return []
        lo, hi = max(0, idx[0] - 1), min(len(pts), idx[-1] + 2)
        return pts[lo:hi]

    a, t = clip(anchor), clip(test)
    if len(a) < 2 or len(t) < 2:
        return None
    # Cubic fits as Bjontegaard's, lower degree where a sweep has fewer points in the range.
    deg = min(3, len(a) - 1, len(t) - 1)
    ra, da = np.log([p["bpp"] for p in a]), np.array([p[metric] for p in a])
    rt, dt = np.log([p["bpp"] for p in t]), np.array([p[metric] for p in t])
    lo, hi = max(da.min(), dt.min()), min(da.max(), dt.max())
    if hi <= lo:
        return None
    pa, pt = np.polyfit(da, ra, deg), np.polyfit(dt, rt, deg)
    ia = np.polyval(np.polyint(pa), hi) - np.polyval(np.polyint(pa), lo)
    it = np.polyval(np.polyint(pt), hi) - np.polyval(np.polyint(pt), lo)
    return float((np.exp((it - ia) / (hi - lo)) - 1) * 100)


def summarize(rows: list[dict]) -> dict:
    out = {}
    for ds in sorted({r["dataset"] for r in rows}):
        cv = curves(rows, ds)
        bd = {}
        if "avif" in cv:
            for codec in cv:
                if codec != "avif":
                    bd[codec] = {m: bd_rate(cv["avif"], cv[codec], m) for m in ("psnr-rgb", "ssimulacra2")}
        out[ds] = {"curves": cv, "equal_bytes": equal_bytes(rows, ds), "bd_rate_vs_avif_percent": bd}
    return out


def compact_table(summary: dict) -> str:
    """Equal bytes at a glance (the README's table): PSNR dB / SSIMULACRA2 per budget and codec."""
    order = ["learned", "learned-refined", "avif", "jxl", "webp", "jpeg", "thumbnail"]
    lines = []
    for ds, s in summary.items():
        codecs = [c for c in order if any(e["codec"] == c for e in s["equal_bytes"])]
        lines.append(f"| {ds}: bpp budget | " + " | ".join(codecs) + " |")
        lines.append("|---" * (len(codecs) + 1) + "|")
        for bpp in BUDGETS_BPP:
            cells = []
            for c in codecs:
                e = next((e for e in s["equal_bytes"] if e["codec"] == c and e["budget_bpp"] == bpp), None)
                if e is None:
                    cells.append("")
                    continue
                over = f" ({e['over_budget']}/{e['images']} over)" if e["over_budget"] else ""
                cells.append(f"{e['psnr-rgb']:.2f} / {e['ssimulacra2']:.1f}{over}")
            lines.append(f"| {bpp} | " + " | ".join(cells) + " |")
        vae = s["curves"].get("vae-u8-zstd")
        if vae:
            p = vae[0]
            lines.append(
                f"| VAE u8+zstd, its only point | {p['bpp']:.3f} bpp: {p['psnr-rgb']:.2f} / {p['ssimulacra2']:.1f} |"
            )
        bd = s["bd_rate_vs_avif_percent"].get("learned")
        if bd:
            cells = [f"{bd[m]:+.0f}%" if bd[m] is not None else "n/a" for m in ("psnr-rgb", "ssimulacra2")]
            lines.append(f"| learned: BD-rate vs AVIF | PSNR {cells[0]}, SSIMULACRA2 {cells[1]} |")
        lines.append("")
    return "\n".join(lines)


def table(summary: dict) -> str:
    lines = ["## Equal bytes at a glance: PSNR dB / SSIMULACRA2 (mean over images)\n", compact_table(summary)]
    for ds, s in summary.items():
        lines.append(
            f"\n### {ds}: equal bytes (mean over images; 'over' = images whose smallest file exceeds the budget)\n"
        )
        lines.append("| budget bpp | codec | bpp | PSNR dB | MS-SSIM | SSIMULACRA2 | over |")
        lines.append("|---|---|---|---|---|---|---|")
        for e in s["equal_bytes"]:
            lines.append(
                f"| {e['budget_bpp']} | {e['codec']} | {e['bpp']:.3f} | {e['psnr-rgb']:.2f} | {e['ms-ssim-rgb']:.4f} | "
                f"{e['ssimulacra2']:.1f} | {e['over_budget']}/{e['images']} |"
            )
        lines.append(
            f"\n### {ds}: BD-rate against AVIF over {BD_RANGE[0]}-{BD_RANGE[1]} bpp (negative = fewer bytes)\n"
        )
        lines.append("| codec | PSNR | SSIMULACRA2 |")
        lines.append("|---|---|---|")
        for codec, v in s["bd_rate_vs_avif_percent"].items():
            cells = [
                f"{v[m]:+.1f}%" if v[m] is not None else "n/a (curves don't overlap)"
                for m in ("psnr-rgb", "ssimulacra2")
            ]
            lines.append(f"| {codec} | {cells[0]} | {cells[1]} |")
        lines.append(f"\n### {ds}: every curve point (mean over images; times with the model loaded)\n")
        lines.append("| codec | setting | bpp | PSNR dB | MS-SSIM | SSIMULACRA2 | enc s | dec s |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for codec, pts in s["curves"].items():
            for p in pts:
                lines.append(
                    f"| {codec} | {p['quality']} | {p['bpp']:.3f} | {p['psnr-rgb']:.2f} | {p['ms-ssim-rgb']:.4f} | "
                    f"{p['ssimulacra2']:.1f} | {p['encoding_time']:.3f} | {p['decoding_time']:.3f} |"
                )
    return "\n".join(lines) + "\n"


COLORS = {
    "learned": "tab:red",
    "vae-u8-zstd": "tab:orange",
    "vae-f16": "tab:brown",
    "jpeg": "tab:blue",
    "webp": "tab:green",
    "avif": "tab:purple",
    "jxl": "tab:gray",
    "thumbnail": "tab:olive",
}


def plot_rd(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(summary)
    fig, axes = plt.subplots(len(sets), 3, figsize=(15, 4.2 * len(sets)), squeeze=False)
    for row, ds in zip(axes, sets, strict=True):
        for ax, metric in zip(row, METRICS, strict=True):
            for codec, pts in summary[ds]["curves"].items():
                marker = "o-" if len(pts) > 1 else "D"
                ax.plot([p["bpp"] for p in pts], [p[metric] for p in pts], marker, color=COLORS.get(codec), label=codec,
                        markersize=4)  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel("bits per pixel (log)")
            ax.set_ylabel(metric)
            ax.set_title(f"{ds}, native size: {metric}")
            ax.grid(alpha=0.3, which="both")
            ax.axvspan(*BD_RANGE, color="k", alpha=0.04)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def picture_grid(path: Path, learned: LearnedCodec, codecs: list[str], bpp: float, out: Path) -> dict:
    """One held-out photo, every codec at the same byte budget, a 1:1 crop side by side with bytes.

    Returns what the grid shows (image, budget, bytes per codec), so the README's caption is written
    from the run rather than by hand.
    """
    img = load_image(path)
    budget = int(bpp * img.width * img.height / 8)
    tiles = [("original", img, None)]
    recon, n, *_ = run_codec(learned, img, target_bytes=budget)
    tiles.append(("learned", recon, n))
    for name in codecs:
        if name in PIXEL_SWEEPS:
            _, (blob, rec, *_rest) = pixel_fit(img, PIXEL_SWEEPS[name][0], budget)
            tiles.append((name, rec, len(blob)))
    cw, ch = 360, 300
    left, top = (img.width - cw) // 2, (img.height - ch) // 2
    cols = 4
    rows_n = (len(tiles) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cw, rows_n * (ch + 22)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (name, im, nbytes) in enumerate(tiles):
        x, y = (i % cols) * cw, (i // cols) * (ch + 22)
        grid.paste(im.crop((left, top, left + cw, top + ch)), (x, y + 22))
        caption = name if nbytes is None else f"{name}: {nbytes:,} B ({8 * nbytes / (img.width * img.height):.3f} bpp)"
        if nbytes is not None and nbytes > budget:
            caption += " OVER"
        draw.text((x + 4, y + 5), caption, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return {
        "image": path.name,
        "learned_model": learned.model_id,
        "bpp": bpp,
        "budget_bytes": budget,
        "bytes": {name: nbytes for name, _, nbytes in tiles if nbytes is not None},
    }


def kept_grid(merged: list[dict], model_id: str | None) -> dict:
    """``{"grid": ...}`` from the first merged run that has one, if it shows the same learned weights
    as this run's rows (``--no-grid`` keeps the picture the README shows); {} otherwise, with a note
    when a grid was dropped for showing other weights."""
    m = next((m for m in merged if m.get("grid")), None)
    if m is None:
        return {}
    # Grids written before they named their weights show the weights of their run's rows.
    if m["grid"].get("learned_model", m.get("learned_model")) == model_id:
        return {"grid": {**m["grid"], "learned_model": model_id}}
    print("note: the merged picture grid shows other learned weights: dropped (re-run with --grid)", file=sys.stderr)
    return {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--learned-model", default=str(LEARNED_MODEL_DIR), help="learned codec folder")
    p.add_argument("--vae-model", default=str(EMBEDDED_MODEL_DIR), help="AutoencoderKL for the vae rows")
    p.add_argument("--codecs", default=",".join(ALL_CODECS), help=f"comma list of {', '.join(ALL_CODECS)}")
    p.add_argument("--sets", default="photos,aerial", help="comma list: photos (held-out), aerial")
    p.add_argument("--size", default="native", help="'native' or a square centre-crop size")
    p.add_argument("--limit", type=int, default=0, help="first N images of each set (0 = all)")
    p.add_argument(
        "--quick", action="store_true", help="smoke test: 1 image per set, 128x128, the lowest and highest quality"
    )
    p.add_argument(
        "--merge",
        type=Path,
        action="append",
        default=[],
        help="keep this JSON's rows for codecs (and sets) not run now; repeatable. With --codecs none, only "
        "merges, summarizes and plots, and the date and CPU stay the first merged run's",
    )
    p.add_argument(
        "--grid",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the picture grid (--no-grid keeps a merged run's grid if it shows the same learned weights)",
    )
    p.add_argument("--grid-image", default="014.png", help="held-out photo shown in the picture grid")
    p.add_argument("--grid-bpp", type=float, default=0.25, help="byte budget of the picture grid, in bpp")
    p.add_argument("--json", type=Path, default=RESULTS / "quality.json", help="rows + summary (JSON)")
    p.add_argument("--plots", type=Path, default=RESULTS / "quality", help="prefix of the PNGs and the table (.md)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument(
        "--refine-steps",
        type=int,
        default=10,
        help="encode-time refinement steps of the learned-refined rows "
        "(latentcomm.codecs.learned.refine; the sender's --refine)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip() and c.strip() != "none"]
    unknown = set(codecs) - set(ALL_CODECS)
    if unknown:
        p.error(f"unknown codecs: {', '.join(sorted(unknown))}")
    pixel = available_pixel_codecs()
    missing = [c for c in codecs if c in PIXEL_SWEEPS and c not in pixel]
    if missing:
        print(f"note: not available here, skipped: {', '.join(missing)}", file=sys.stderr)
    codecs = [c for c in codecs if c not in missing]
    limit, size = (1, "128") if args.quick else (args.limit, args.size)
    sets = {"photos": data.heldout_photos(), "aerial": data.aerial_images()}
    images = [(ds, path) for ds in args.sets.split(",") for path in (sets[ds][:limit] if limit else sets[ds])]
    if not images:
        print(f"error: no evaluation images under {data.DATA_ROOT}", file=sys.stderr)
        return 1
    wants_learned = "learned" in codecs or "learned-refined" in codecs or args.grid
    learned = LearnedCodec(args.learned_model, "cpu", "fp32") if wants_learned else None
    levels = learned.levels if learned is not None else 0
    # Every trained level of the learned codec (quick: the two ends).
    qualities = [1.0, float(levels)] if args.quick else [float(q) for q in range(1, levels + 1)]
    vae: dict[str, VaeCodec] = {}
    if "vae" in codecs:
        from latentcomm.engine import Engine

        engine = Engine(args.vae_model, "cpu", "auto")
        vae = {"vae-u8-zstd": VaeCodec(engine, "u8", "zstd"), "vae-f16": VaeCodec(engine, "f16", "zstd")}
    refine = args.refine_steps if "learned-refined" in codecs else 0
    rows = evaluate(images, codecs, learned, vae, size, qualities, refine) if codecs else []
    ran = {(c, ds) for c in codecs for ds in args.sets.split(",")}
    ran |= {(c, ds) for c in ("vae-u8-zstd", "vae-f16") for ds in args.sets.split(",") if "vae" in codecs}
    merged = [json.loads(path.read_text()) for path in args.merge]
    kept = []
    for m in merged:
        kept += [r for r in m["rows"] if (r["codec"], r["dataset"]) not in ran]
    rows = kept + rows
    summary = summarize(rows)
    md = table(summary)
    print(md)
    if codecs or not merged:
        meta = {**run_meta(), "torch_threads": torch.get_num_threads()}
        model_id = learned.model_id if learned else None
    else:
        # Nothing measured now (``--codecs none``): every row, and so the date and CPU that the
        # README's caption gives them, is the merged run's.
        meta = {k: merged[0][k] for k in (*run_meta(), "torch_threads") if k in merged[0]}
        model_id = merged[0].get("learned_model")
        if learned is not None and model_id and model_id != learned.model_id:
            p.error(f"the merged rows are {model_id}'s; the grid would show {learned.model_id} (--learned-model)")
    result = {
        **meta,
        "learned_model": model_id,
        "size": size,
        "budgets_bpp": BUDGETS_BPP,
        "summary": summary,
        "rows": rows,
    }
    if learned is not None and args.grid and data.heldout_photos() and not args.quick:
        photo = next(p for p in data.heldout_photos() if p.name == args.grid_image)
        result["grid"] = picture_grid(photo, learned, pixel, args.grid_bpp, Path(f"{args.plots}_grid.png"))
    else:
        result.update(kept_grid(merged, model_id))
    write_results(args.json, result)
    args.plots.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.plots}_table.md").write_text(md)
    plot_rd(summary, Path(f"{args.plots}_rd.png"))
    print(f"wrote {args.json}, {args.plots}_rd.png, {args.plots}_table.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
