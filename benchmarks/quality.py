"""Rate-distortion of the latent codec against JPEG, WebP and AVIF at the same byte budget.

    python benchmarks/quality.py                        # embedded model, held-out photos + aerial
    python benchmarks/quality.py --model DIR --json out.json --plot rd.png

For every evaluation image (the held-out photos and the aerial set, never trained on), at 256x256
(centre crop) and at native size: the latent codec with float16 and int8 latents as the legacy frame
carries them (gzip), and 8-bit per-channel uint8 + zstd as v2 carries it (payload = what the wire
carries); and Pillow's JPEG / WebP / AVIF at the largest quality whose file fits the float16
latent's byte budget. Every codec reports the same keys (CompressAI style): bytes, bpp, psnr-rgb,
ssim-rgb, encoding and decoding time. Prints a table; writes JSON and a rate-distortion plot.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image, features  # noqa: E402
from tqdm import tqdm  # noqa: E402

from latentcomm import data  # noqa: E402
from latentcomm.codec import (  # noqa: E402
    COMP_ZSTD,
    ENC_UINT8_AFFINE,
    FLAG_FLOAT16,
    FLAG_INT8,
    bounded_decompress,
    compress,
    decode_latent,
    encode_latent,
    v2_dequantize,
    v2_quantize,
)
from latentcomm.engine import Engine  # noqa: E402
from latentcomm.images import center_crop_square, load_image, pil_to_tensor, tensor_to_pil  # noqa: E402
from latentcomm.metrics import psnr, ssim  # noqa: E402
from latentcomm.models import EMBEDDED_MODEL_DIR  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PIXEL_CODECS = [c for c in ("JPEG", "WEBP", "AVIF") if c == "JPEG" or features.check(c.lower())]
SWEEP = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90)


def pixel_codec(img: Image.Image, fmt: str, quality: int) -> tuple[bytes, Image.Image, float, float]:
    t0 = time.perf_counter()
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=quality)
    t1 = time.perf_counter()
    out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return buf.getvalue(), out, t1 - t0, time.perf_counter() - t1


def fit_budget(img: Image.Image, fmt: str, budget: int) -> tuple[int, bytes, Image.Image, float, float]:
    """Highest quality (1-100) whose file is <= budget bytes (quality 1 if none fits)."""
    lo, hi, best = 1, 100, None
    while lo <= hi:
        q = (lo + hi) // 2
        res = pixel_codec(img, fmt, q)
        if len(res[0]) <= budget:
            best, lo = (q, *res), q + 1
        else:
            hi = q - 1
    return best if best is not None else (1, *pixel_codec(img, fmt, 1))


def row(
    codec: str,
    dataset: str,
    size: str,
    name: str,
    img: Image.Image,
    nbytes: int,
    recon: Image.Image,
    enc_s: float,
    dec_s: float,
    **extra,
) -> dict:
    pixels = img.width * img.height
    return {
        "codec": codec,
        "dataset": dataset,
        "size": size,
        "image": name,
        "width": img.width,
        "height": img.height,
        "bytes": nbytes,
        "bpp": 8 * nbytes / pixels,
        "psnr-rgb": psnr(img, recon),
        "ssim-rgb": ssim(img, recon),
        "encoding_time": enc_s,
        "decoding_time": dec_s,
        **extra,
    }


def evaluate(engine: Engine, sets: dict[str, list[Path]], sizes: list[str], sweep: bool) -> list[dict]:
    rows: list[dict] = []
    jobs = [(ds, p, s) for ds, paths in sets.items() for p in paths for s in sizes]
    for ds, path, size in tqdm(jobs, desc="quality", unit="img"):
        img = load_image(path)
        if size != "native":
            img = center_crop_square(img, int(size))
        x = pil_to_tensor(img)
        t0 = time.perf_counter()
        latent, hw = engine.encode_image(x)
        enc_s = time.perf_counter() - t0
        budget = None
        t1 = time.perf_counter()
        raw, params = v2_quantize(latent, ENC_UINT8_AFFINE)
        payload = compress(raw, COMP_ZSTD)
        q_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        c, h, w = latent.shape[1:]
        z = v2_dequantize(bounded_decompress(payload, COMP_ZSTD, len(raw)), ENC_UINT8_AFFINE, (c, h, w), params)
        recon = tensor_to_pil(engine.decode_image(z, hw))
        rows.append(
            row("latent-u8-zstd", ds, size, path.name, img, len(payload), recon, enc_s + q_s, time.perf_counter() - t2)
        )
        for flag, codec in ((FLAG_FLOAT16, "latent-f16"), (FLAG_INT8, "latent-i8")):
            t1 = time.perf_counter()
            enc = encode_latent(latent, flag)
            q_s = time.perf_counter() - t1
            t2 = time.perf_counter()
            z = decode_latent(flag, enc.channels, enc.height, enc.width, enc.payload)
            recon = tensor_to_pil(engine.decode_image(z, hw))
            dec_s = time.perf_counter() - t2
            rows.append(
                row(
                    codec,
                    ds,
                    size,
                    path.name,
                    img,
                    len(enc.payload),
                    recon,
                    enc_s + q_s,
                    dec_s,
                    clipped_fraction=enc.clipped_fraction,
                )
            )
            budget = budget or len(enc.payload)
        for fmt in PIXEL_CODECS:
            q, blob, recon, e, d = fit_budget(img, fmt, budget)
            rows.append(
                row(
                    fmt.lower(),
                    ds,
                    size,
                    path.name,
                    img,
                    len(blob),
                    recon,
                    e,
                    d,
                    quality=q,
                    budget=budget,
                    over_budget=len(blob) > budget,
                )
            )
            if sweep:
                for q in SWEEP:
                    blob, recon, e, d = pixel_codec(img, fmt, q)
                    rows.append(
                        row(f"{fmt.lower()}-sweep", ds, size, path.name, img, len(blob), recon, e, d, quality=q)
                    )
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["dataset"], r["size"], r["codec"]) + ((r["quality"],) if r["codec"].endswith("sweep") else ())
        groups.setdefault(key, []).append(r)
    out = []
    for key, rs in groups.items():
        s = {"dataset": key[0], "size": key[1], "codec": key[2], "images": len(rs)}
        if len(key) == 4:
            s["quality"] = key[3]
        for k in ("bytes", "bpp", "psnr-rgb", "ssim-rgb", "encoding_time", "decoding_time"):
            s[k] = statistics.fmean(r[k] for r in rs)
        out.append(s)
    return out


def print_table(summary: list[dict]) -> None:
    print(
        f"{'dataset':<8} {'size':<7} {'codec':<14} {'n':>3} {'bytes':>9} {'bpp':>7} {'PSNR dB':>8} {'SSIM':>7} "
        f"{'enc s':>7} {'dec s':>7}"
    )
    for s in summary:
        if s["codec"].endswith("sweep"):
            continue
        print(
            f"{s['dataset']:<8} {s['size']:<7} {s['codec']:<14} {s['images']:>3} {s['bytes']:>9.0f} "
            f"{s['bpp']:>7.3f} {s['psnr-rgb']:>8.2f} {s['ssim-rgb']:>7.4f} {s['encoding_time']:>7.3f} "
            f"{s['decoding_time']:>7.3f}"
        )


def plot(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(s["dataset"], s["size"]) for s in summary})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    colors = {"jpeg": "tab:blue", "webp": "tab:green", "avif": "tab:purple"}
    for ax, (ds, size) in zip(axes[0], panels, strict=True):
        sel = [s for s in summary if s["dataset"] == ds and s["size"] == size]
        for fmt, color in colors.items():
            curve = sorted((s for s in sel if s["codec"] == f"{fmt}-sweep"), key=lambda s: s["bpp"])
            if curve:
                ax.plot(
                    [s["bpp"] for s in curve],
                    [s["psnr-rgb"] for s in curve],
                    "-",
                    color=color,
                    alpha=0.6,
                    label=f"{fmt.upper()} (quality sweep)",
                )
            at = [s for s in sel if s["codec"] == fmt]
            if at:
                ax.plot(at[0]["bpp"], at[0]["psnr-rgb"], "s", color=color, label=f"{fmt.upper()} at f16 budget")
        for codec, marker in (("latent-f16", "o"), ("latent-i8", "^"), ("latent-u8-zstd", "D")):
            at = [s for s in sel if s["codec"] == codec]
            if at:
                ax.plot(at[0]["bpp"], at[0]["psnr-rgb"], marker, color="tab:red", markersize=9, label=codec)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel("PSNR (dB, RGB)")
        ax.set_title(f"{ds}, {size}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(EMBEDDED_MODEL_DIR), help="AutoencoderKL: Hub id or diffusers folder")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    p.add_argument("--precision", default="auto", help="auto|fp32|bf16|fp16 (auto = what the scripts use)")
    p.add_argument("--sizes", default="256,native", help="comma list: square sizes and/or 'native'")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images of each set (0 = all)")
    p.add_argument("--no-sweep", action="store_true", help="skip the JPEG/WebP/AVIF quality sweep (plot curves)")
    p.add_argument("--json", type=Path, default=RESULTS / "quality.json", help="where to write all rows + summary")
    p.add_argument("--plot", type=Path, default=RESULTS / "quality_rd.png", help="rate-distortion plot (PNG)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    sets = {"photos": data.heldout_photos(), "aerial": data.aerial_images()}
    if args.limit:
        sets = {k: v[: args.limit] for k, v in sets.items()}
    if not any(sets.values()):
        print(f"error: no evaluation images under {data.DATA_ROOT}", file=sys.stderr)
        return 1
    engine = Engine(args.model, args.device, args.precision)
    rows = evaluate(engine, sets, [s.strip() for s in args.sizes.split(",")], sweep=not args.no_sweep)
    summary = summarize(rows)
    print_table(summary)
    result = {
        "model": engine.source,
        "device": str(engine.device),
        "precision": str(engine.dtype),
        "pixel_codecs": PIXEL_CODECS,
        "summary": summary,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    plot(summary, args.plot, f"{Path(engine.source).name} vs pixel codecs (held-out data)")
    print(f"wrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
