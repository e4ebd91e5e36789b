"""Encode and decode time of each codec for one 768x512 image, model loaded (the issue's speed target).

    python -m benchmarks.codec_speed                 # learned codec vs the embedded VAE path
    python -m benchmarks.codec_speed --repeats 3 --json /tmp/s.json

Both codecs run through the same ``ImageCodec`` calls the sender and receiver make: encode is
image tensor -> payload bytes (analysis, quantization, entropy coding or compression), decode is
payload -> image tensor (entropy decoding or decompression, synthesis). Medians of ``--repeats``
runs after one warm-up (two for the encode with ``--refine``, which takes seconds). The input is a
768x512 crop of a held-out photo (or a synthetic picture when the shared data isn't there). Prints
a table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.harness import RESULTS, run_meta, write_results
from latentcomm import data
from latentcomm.codecs import LEARNED_MODEL_DIR, ImageCodec, LearnedCodec, VaeCodec
from latentcomm.images import load_image, pil_to_tensor
from latentcomm.models import EMBEDDED_MODEL_DIR

#: Refinement steps of the timed refined encode (the quality benchmark's learned-refined rows use 10 too).
REFINE_STEPS = 10


def test_image(w: int, h: int) -> Image.Image:
    photos = data.heldout_photos()
    if photos:
        img = load_image(photos[0])
        left, top = (img.width - w) // 2, (img.height - h) // 2
        return img.crop((left, top, left + w, top + h))
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def time_codec(codec: ImageCodec, img: Image.Image, repeats: int, **kw) -> dict:
    x = pil_to_tensor(img)
    size = (img.height, img.width)
    enc_t, dec_t = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        enc = codec.encode(x, **kw)
        t1 = time.perf_counter()
        codec.decode(enc.encoding, enc.compression, enc.shape, enc.payload, enc.params, size)
        t2 = time.perf_counter()
        if i:  # the first run warms up oneDNN's kernels for this shape
            enc_t.append(t1 - t0)
            dec_t.append(t2 - t1)
    return {
        "encode_s": statistics.median(enc_t),
        "decode_s": statistics.median(dec_t),
        "payload_bytes": len(enc.payload),
        "bpp": 8 * len(enc.payload) / (img.width * img.height),
        # Passes of the hyper transforms and entropy coder the encode made (a byte budget searches).
        "rate_probes": enc.facts.get("rate_probes", 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--learned-model", default=str(LEARNED_MODEL_DIR), help="learned codec folder")
    p.add_argument("--vae-model", default=str(EMBEDDED_MODEL_DIR), help="AutoencoderKL for the vae path")
    p.add_argument("--size", default="768x512", help="WIDTHxHEIGHT of the test image")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per codec (median reported)")
    p.add_argument("--json", type=Path, default=RESULTS / "codec_speed.json", help="where to write the results")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    img = test_image(w, h)
    from latentcomm.engine import Engine

    rows = {}
    learned = LearnedCodec(args.learned_model, "cpu", "auto")
    for q in (1.0, 7.0, 11.0):
        rows[f"learned q{q:g} ({learned.dtype})"] = time_codec(learned, img, args.repeats, quality=q)
    # The post-filter's cost, side by side: the default quality without it.
    rows[f"learned q7 --no-postfilter ({learned.dtype})"] = time_codec(
        learned, img, args.repeats, quality=7.0, postfilter=False
    )
    rows["learned --target-bytes 0.1 bpp"] = time_codec(learned, img, args.repeats, target_bytes=w * h // 80)
    # Encode-time refinement costs seconds, not tenths: fewer repeats (the median of two).
    rows[f"learned --target-bytes 0.1 bpp --refine {REFINE_STEPS}"] = time_codec(
        learned, img, min(args.repeats, 2), target_bytes=w * h // 80, refine_steps=REFINE_STEPS
    )
    engine = Engine(args.vae_model, "cpu", "auto")
    rows[f"vae u8+zstd ({engine.dtype})"] = time_codec(VaeCodec(engine, "u8", "zstd"), img, args.repeats)
    print(f"{'codec':<46} {'encode s':>9} {'decode s':>9} {'bytes':>8} {'bpp':>6} {'probes':>6}")
    for name, r in rows.items():
        print(
            f"{name:<46} {r['encode_s']:>9.3f} {r['decode_s']:>9.3f} {r['payload_bytes']:>8} {r['bpp']:>6.3f} "
            f"{r['rate_probes']:>6}"
        )
    result = {
        **run_meta(),
        "image": f"{w}x{h}",
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "codecs": rows,
    }
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
