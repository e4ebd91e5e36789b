"""Speed of the latentcomm pipeline against the original scripts' way, side by side in one run.

    python -m benchmarks.speed                 # full SD VAE architecture, 256 and 512, stream of 50
    python -m benchmarks.speed --quick         # tiny settings, to check the harness

The model is the full SD VAE architecture (stabilityai/sd-vae-ft-ema's config) with random weights
saved to a temp dir and loaded with from_pretrained: compute does not depend on the weight values,
and nothing is downloaded. Measured, on the same image and model files:

- original: fp32, no channels_last, model loaded from disk for the image on both sides, no warm-up;
- ours cold: a new process (imports, load, warm-up, one image), wall clock from spawn to exit;
- ours warm: model loaded once; per stage (load, preprocess, encode, quantize+compress, send over
  loopback, decompress, decode, postprocess), end-to-end latency, and stream throughput;
- the model's FLOPs (torch.utils.flop_counter) / time, next to a measured matmul peak.

Prints a table and writes JSON (``--json``). Ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.harness import RESULTS, run_meta, write_results
from latentcomm.engine import Engine
from latentcomm.images import tensor_to_pil
from latentcomm.sender import prepare
from latentcomm.transports.tcp import FrameServer, send_frame
from latentcomm.wire.encodings import FLAG_FLOAT16, decode_latent, encode_latent
from latentcomm.wire.legacy import LegacyFrame, frame_to_bytes

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "temp" / "apple.jpeg"

#: stabilityai/sd-vae-ft-ema's architecture (its config.json), written here so nothing is downloaded.
SD_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    sample_size=256,
    scaling_factor=0.18215,
)
TINY_CONFIG = dict(SD_VAE_CONFIG, block_out_channels=[16, 16, 32, 32], norm_num_groups=8, layers_per_block=1)


def make_model(folder: Path, config: dict) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**config).save_pretrained(folder)
    return folder


def median(xs: list[float]) -> float:
    return statistics.median(xs)


class Loopback:
    """A real TCP receiver on 127.0.0.1 (our FrameServer) to time the send over loopback."""

    def __init__(self) -> None:
        self.server = FrameServer("127.0.0.1", 0, read_timeout=5).start()

    def transfer(self, data: bytes) -> tuple[LegacyFrame, float]:
        t0 = time.perf_counter()
        send_frame(*self.server.address, data)
        item = self.server.frames.get(timeout=30)
        return item.frame, time.perf_counter() - t0

    def close(self) -> None:
        self.server.stop_accepting()


def original_way(model_dir: Path, size: int, link: Loopback) -> dict:
    """One image the way the original scripts do it: fp32, load on each side, no warm-up."""
    from diffusers import AutoencoderKL

    s: dict[str, float] = {}
    t = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(model_dir).eval()
    s["load_sender"] = time.perf_counter() - t
    t = time.perf_counter()
    prep = prepare(IMAGE, size)
    s["preprocess"] = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():
        z = vae.encode(prep.tensor).latent_dist.mean
    s["encode"] = time.perf_counter() - t
    t = time.perf_counter()
    payload = gzip.compress(z.numpy().astype("float16").tobytes())
    s["quantize_compress"] = time.perf_counter() - t
    original = ((prep.tensor[0].numpy() + 1) / 2).astype("float32").tobytes()
    frame = LegacyFrame(FLAG_FLOAT16, z.shape[2], z.shape[3], payload, original)
    got, s["send"] = link.transfer(frame_to_bytes(frame))
    t = time.perf_counter()
    vae_rx = AutoencoderKL.from_pretrained(model_dir).eval()
    s["load_receiver"] = time.perf_counter() - t
    t = time.perf_counter()
    zr = decode_latent(got.flag, 4, got.height, got.width, got.payload)
    s["decompress"] = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():
        x = vae_rx.decode(zr).sample
    s["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    tensor_to_pil(x)
    s["postprocess"] = time.perf_counter() - t
    s["end_to_end"] = sum(s.values())
    return s


def ours_warm(engine: Engine, size: int, link: Loopback) -> dict:
    s: dict[str, float] = {}
    t = time.perf_counter()
    prep = prepare(IMAGE, size)
    s["preprocess"] = time.perf_counter() - t
    t = time.perf_counter()
    z = engine.encode(prep.tensor)
    s["encode"] = time.perf_counter() - t
    t = time.perf_counter()
    enc = encode_latent(z, FLAG_FLOAT16)
    s["quantize_compress"] = time.perf_counter() - t
    original = ((prep.tensor[0].numpy() + 1) / 2).astype("float32").tobytes()
    frame = LegacyFrame(enc.flag, enc.height, enc.width, enc.payload, original)
    got, s["send"] = link.transfer(frame_to_bytes(frame))
    t = time.perf_counter()
    zr = decode_latent(got.flag, 4, got.height, got.width, got.payload)
    s["decompress"] = time.perf_counter() - t
    t = time.perf_counter()
    x = engine.decode(zr)
    s["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    tensor_to_pil(x)
    s["postprocess"] = time.perf_counter() - t
    s["end_to_end"] = sum(s.values())
    return s


COLD_SCRIPT = r"""
import sys, time, json
t0 = time.perf_counter()
from latentcomm.engine import Engine
from latentcomm.wire.encodings import encode_latent, decode_latent
from latentcomm.images import tensor_to_pil
from latentcomm.sender import prepare
t1 = time.perf_counter()
e = Engine({model!r}, "cpu", {precision!r})
t2 = time.perf_counter()
p = prepare({image!r}, {size})
enc = encode_latent(e.encode(p.tensor))
tensor_to_pil(e.decode(decode_latent(enc.flag, 4, enc.height, enc.width, enc.payload)))
t3 = time.perf_counter()
print(json.dumps(dict(imports=t1 - t0, load_and_warmup=t2 - t1, first_image=t3 - t2)))
"""


def ours_cold(model_dir: Path, size: int, precision: str) -> dict:
    code = COLD_SCRIPT.format(repo=str(REPO), model=str(model_dir), precision=precision, image=str(IMAGE), size=size)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    return {"process_wall": wall, **json.loads(out.stdout.strip().splitlines()[-1])}


LARGE_SCRIPT = r"""
import sys, time, json, resource
from PIL import Image
from latentcomm.engine import Engine
from latentcomm.wire.encodings import encode_latent, decode_latent
from latentcomm.images import tensor_to_pil
from latentcomm.sender import prepare
Image.open({image!r}).convert("RGB").resize(({size}, {size}), Image.Resampling.LANCZOS).save({path!r})
e = Engine({model!r}, "cpu", {precision!r})
t = time.perf_counter()
p = prepare({path!r}, 0)
z = e.encode(p.tensor)
t1 = time.perf_counter()
enc = encode_latent(z)
out = tensor_to_pil(e.decode_image(decode_latent(enc.flag, 4, enc.height, enc.width, enc.payload), p.size))
t2 = time.perf_counter()
assert out.size == ({size}, {size})
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps(dict(encode_s=t1 - t, decode_s=t2 - t1, peak_rss_gib=rss)))
"""


def large_image(model_dir: Path, size: int, precision: str, tmp: Path) -> dict:
    """--size 0 on a size x size image in a fresh process: time and peak resident memory (tiled path)."""
    code = LARGE_SCRIPT.format(
        repo=str(REPO),
        model=str(model_dir),
        precision=precision,
        image=str(IMAGE),
        size=size,
        path=str(tmp / "large.png"),
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {"size": size, **json.loads(out.stdout.strip().splitlines()[-1])}


def flops(engine: Engine, size: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size)
    with FlopCounterMode(display=False) as fc:
        z = engine.encode(x)
    enc = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        engine.decode(z)
    return {"encode_flops": enc, "decode_flops": fc.get_total_flops()}


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def quality_guard(model_dir: Path, fast: Engine, size: int = 256) -> float:
    """PSNR (dB) of the fast path's reconstruction against the fp32 reconstruction of the same image."""
    from latentcomm.metrics import psnr

    ref = Engine(str(model_dir), "cpu", "fp32", warmup=False)
    x = prepare(IMAGE, size).tensor
    return psnr(tensor_to_pil(ref.decode(ref.encode(x))), tensor_to_pil(fast.decode(fast.encode(x))))


def run(args: argparse.Namespace) -> dict:
    result: dict = {**run_meta(), "threads": torch.get_num_threads(), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp) / "vae", TINY_CONFIG if args.quick else SD_VAE_CONFIG)
        link = Loopback()
        t = time.perf_counter()
        engine = Engine(str(model_dir), "cpu", args.precision)
        result["ours_load_and_warmup_s"] = time.perf_counter() - t
        result["precision"] = str(engine.dtype)
        for size in args.sizes:
            r: dict = {}
            orig = [
                original_way(model_dir, size, link) for _ in tqdm(range(args.original_reps), desc=f"original {size}")
            ]
            warm = [ours_warm(engine, size, link) for _ in tqdm(range(args.reps), desc=f"ours warm {size}")]
            r["original"] = {k: median([o[k] for o in orig]) for k in orig[0]}
            r["ours_warm"] = {k: median([w[k] for w in warm]) for k in warm[0]}
            r["ours_cold"] = ours_cold(model_dir, size, args.precision)
            # Stream: the original pays both loads per image; ours amortizes them.
            n = args.stream
            t = time.perf_counter()
            for _ in tqdm(range(n), desc=f"ours stream {size}"):
                ours_warm(engine, size, link)
            r["ours_stream_images_per_s"] = n / (time.perf_counter() - t)
            r["original_stream_images_per_s"] = 1 / r["original"]["end_to_end"]
            r["stream_images"] = n
            f = flops(engine, size)
            f["encode_tflops_achieved"] = f["encode_flops"] / r["ours_warm"]["encode"] / 1e12
            f["decode_tflops_achieved"] = f["decode_flops"] / r["ours_warm"]["decode"] / 1e12
            f["original_encode_tflops"] = f["encode_flops"] / r["original"]["encode"] / 1e12
            f["original_decode_tflops"] = f["decode_flops"] / r["original"]["decode"] / 1e12
            r["flops"] = f
            r["speedup_end_to_end_warm"] = r["original"]["end_to_end"] / r["ours_warm"]["end_to_end"]
            r["speedup_stream"] = r["ours_stream_images_per_s"] / r["original_stream_images_per_s"]
            r["speedup_encode"] = r["original"]["encode"] / r["ours_warm"]["encode"]
            r["speedup_decode"] = r["original"]["decode"] / r["ours_warm"]["decode"]
            result["sizes"][str(size)] = r
        link.close()
        if args.large:
            result["large_image"] = large_image(model_dir, args.large, args.precision, Path(tmp))
        result["quality_guard_psnr_db"] = {"random_weights_sd_vae_arch": quality_guard(model_dir, engine)}
    from latentcomm.models import EMBEDDED_MODEL_DIR

    if (EMBEDDED_MODEL_DIR / "config.json").exists():
        fast = Engine(str(EMBEDDED_MODEL_DIR), "cpu", args.precision, warmup=False)
        result["quality_guard_psnr_db"]["embedded_model_real_weights"] = quality_guard(EMBEDDED_MODEL_DIR, fast)
    result["matmul_peak_tflops"] = {
        # --quick: a small product; without AMX a 2048^3 bf16 matmul takes ~20 s here (emulated).
        "fp32": matmul_peak(torch.float32, n=256 if args.quick else 2048) / 1e12,
        "bf16": matmul_peak(torch.bfloat16, n=256 if args.quick else 2048) / 1e12,
    }
    return result


STAGES = [
    "load_sender",
    "load_receiver",
    "preprocess",
    "encode",
    "quantize_compress",
    "send",
    "decompress",
    "decode",
    "postprocess",
    "end_to_end",
]


def print_table(res: dict) -> None:
    for size, r in res["sizes"].items():
        print(f"\n{size}x{size}  (seconds, medians; ours = {res['precision']}, model loaded once)")
        print(f"{'stage':<20} {'original':>10} {'ours warm':>10} {'speedup':>8}")
        for k in STAGES:
            o, w = r["original"].get(k), r["ours_warm"].get(k)
            if o is None and w is None:
                continue
            sp = f"{o / w:8.1f}x" if o and w else ""
            fmt = lambda v: f"{v:>10.4f}" if v is not None else f"{'-':>10}"  # noqa: E731
            print(f"{k:<20} {fmt(o)} {fmt(w)} {sp}")
        c = r["ours_cold"]
        print(
            f"ours cold (new process): {c['process_wall']:.2f} s wall (imports {c['imports']:.2f}, load+warm-up "
            f"{c['load_and_warmup']:.2f}, first image {c['first_image']:.2f})"
        )
        print(
            f"stream of {r['stream_images']}: ours {r['ours_stream_images_per_s']:.2f} img/s vs original "
            f"{r['original_stream_images_per_s']:.3f} img/s = {r['speedup_stream']:.1f}x; "
            f"warm end-to-end speedup {r['speedup_end_to_end_warm']:.1f}x"
        )
        f = r["flops"]
        print(
            f"model: encode {f['encode_flops'] / 1e9:.1f} GFLOP, decode {f['decode_flops'] / 1e9:.1f} GFLOP; "
            f"achieved encode {f['encode_tflops_achieved']:.2f} / decode {f['decode_tflops_achieved']:.2f} TFLOP/s "
            f"(original fp32 {f['original_encode_tflops']:.2f} / {f['original_decode_tflops']:.2f})"
        )
    if "large_image" in res:
        li = res["large_image"]
        print(
            f"{li['size']}x{li['size']} at native size (tiled): encode {li['encode_s']:.1f} s, decode "
            f"{li['decode_s']:.1f} s, peak memory {li['peak_rss_gib']:.2f} GiB"
        )
    p = res["matmul_peak_tflops"]
    for name, db in res["quality_guard_psnr_db"].items():
        print(f"quality guard, fast path vs fp32 ({name}): {db:.1f} dB (target >= 40)")
    print(f"\nmatmul peak on this machine: fp32 {p['fp32']:.2f} TFLOP/s, bf16 {p['bf16']:.2f} TFLOP/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[256, 512],
        help="comma list of square image sizes",
    )
    p.add_argument("--reps", type=int, default=5, help="warm repetitions per size (median reported)")
    p.add_argument("--original-reps", type=int, default=3, help="repetitions of the original way per size")
    p.add_argument("--stream", type=int, default=50, help="images in the throughput stream")
    p.add_argument("--precision", default="auto", help="our precision: auto|fp32|bf16")
    p.add_argument("--large", type=int, default=2048, help="also run --size 0 on an NxN image (tiled); 0 skips")
    p.add_argument("--quick", action="store_true", help="tiny model and counts: checks the harness only")
    p.add_argument("--json", type=Path, default=RESULTS / "speed.json", help="where to write the results")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.original_reps, args.stream, args.sizes, args.large = 2, 1, 3, [64], 1100
    res = run(args)
    print_table(res)
    write_results(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
