"""Quality guard for faster arithmetic: how far each fast path's reconstruction is from fp32's.

    python -m benchmarks.precision_guard                 # embedded model, held-out photos, 256x256
    python -m benchmarks.precision_guard --model DIR --json out.json

The speed issue's rule: a fast path must stay >= 40 dB PSNR from the fp32 reconstruction of the same
image (invisible). This measures, with real trained weights, on held-out photos:

- ``bf16``: what the scripts run on CPUs with AMX (``--precision auto``), through the real Engine;
- ``int8-weights``: every convolution's weights rounded to int8 per output channel;
- ``int8-static``: int8 weights and int8 activations (per-tensor scales calibrated on training
  photos), i.e. the numerics of a static int8 (AMX-INT8 / VNNI) deployment;
- ``int8-static-mixed``: the same with the convolutions next to pixels and latent kept in float.

The int8 rows are a numerical simulation (fake quantization in fp32), not a fast path: they answer
whether building an int8 path could pass the guard at all before anyone spends days on kernels.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.harness import RESULTS, run_meta, write_results
from latentcomm import data
from latentcomm.engine import Engine
from latentcomm.images import center_crop_square, load_image, pil_to_tensor, tensor_to_pil
from latentcomm.metrics import psnr
from latentcomm.models import EMBEDDED_MODEL_DIR, load_autoencoder

GUARD_DB = 40.0


def roundtrip(vae, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return vae.decode(vae.encode(x).latent_dist.mean).sample


#: The layers next to pixels and latent, which mixed-precision int8 deployments usually keep in float.
EDGE_LAYERS = (
    "encoder.conv_in",
    "encoder.conv_out",
    "quant_conv",
    "post_quant_conv",
    "decoder.conv_in",
    "decoder.conv_out",
)


def quantize_convs(vae, calibration: list[torch.Tensor], activations: bool, keep_float: tuple[str, ...] = ()) -> None:
    """Fake-quantize the model in place: int8 conv weights (per output channel), optionally int8
    conv inputs with a per-tensor scale from the largest magnitude seen on the calibration images.
    Convolutions named in ``keep_float`` stay untouched."""
    convs = [(n, m) for n, m in vae.named_modules() if isinstance(m, torch.nn.Conv2d) and n not in keep_float]
    amax: dict[str, float] = {}
    if activations:

        def observer(name: str):
            def hook(_mod, inp):
                amax[name] = max(amax.get(name, 0.0), float(inp[0].abs().max()))

            return hook

        handles = [m.register_forward_pre_hook(observer(n)) for n, m in convs]
        for x in calibration:
            roundtrip(vae, x)
        for h in handles:
            h.remove()
    for name, conv in convs:
        w = conv.weight.data
        scale = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) / 127
        conv.weight.data = (w / scale).round().clamp(-127, 127) * scale
        if activations:
            s = max(amax[name], 1e-12) / 127
            conv.register_forward_pre_hook(lambda _m, inp, s=s: ((inp[0] / s).round().clamp(-127, 127) * s,))


def run(args: argparse.Namespace) -> dict:
    heldout = data.heldout_photos()[: args.limit or None]
    calib_paths = data.training_photos()[: args.calibration]
    if not heldout or not calib_paths:
        raise SystemExit(f"error: no photos under {data.PHOTOS_DIR}")
    prep = [pil_to_tensor(center_crop_square(load_image(p), args.size)) for p in heldout]
    calib = [pil_to_tensor(center_crop_square(load_image(p), args.size)) for p in calib_paths]

    fp32 = load_autoencoder(args.model, torch.device("cpu"), torch.float32).vae
    reference = [tensor_to_pil(roundtrip(fp32, x)) for x in tqdm(prep, desc="fp32")]
    originals = [tensor_to_pil(x) for x in prep]
    vs_fp32: dict[str, list[float]] = {}
    vs_original = {"fp32": [psnr(a, r) for a, r in zip(originals, reference, strict=True)]}

    fast = Engine(args.model, "cpu", "bf16", warmup=False)
    vs_fp32["bf16"] = [
        psnr(r, tensor_to_pil(fast.decode(fast.encode(x)))) for r, x in zip(reference, prep, strict=True)
    ]
    variants = (("int8-weights", False, ()), ("int8-static", True, ()), ("int8-static-mixed", True, EDGE_LAYERS))
    for label, acts, keep in variants:
        vae = copy.deepcopy(fp32)  # quantized in place; the fp32 model stays the reference
        quantize_convs(vae, calib, acts, keep)
        outs = [tensor_to_pil(roundtrip(vae, x)) for x in tqdm(prep, desc=label)]
        vs_fp32[label] = [psnr(r, o) for r, o in zip(reference, outs, strict=True)]
        vs_original[label] = [psnr(a, o) for a, o in zip(originals, outs, strict=True)]
    return {
        "model": args.model,
        "size": args.size,
        "images": [p.name for p in heldout],
        "guard_db": GUARD_DB,
        "psnr_vs_fp32_db": {k: statistics.mean(v) for k, v in vs_fp32.items()},
        "min_psnr_vs_fp32_db": {k: min(v) for k, v in vs_fp32.items()},
        "psnr_vs_original_db": {k: statistics.mean(v) for k, v in vs_original.items()},
    }


def print_table(res: dict) -> None:
    print(f"\nPSNR against the fp32 reconstruction ({len(res['images'])} held-out photos, {res['size']}x{res['size']})")
    print(f"{'path':<18} {'mean dB':>8} {'min dB':>8}  guard {res['guard_db']:.0f} dB")
    for k, v in res["psnr_vs_fp32_db"].items():
        verdict = "pass" if res["min_psnr_vs_fp32_db"][k] >= res["guard_db"] else "FAIL"
        print(f"{k:<18} {v:>8.2f} {res['min_psnr_vs_fp32_db'][k]:>8.2f}  {verdict}")
    print(
        "PSNR against the original image: " + ", ".join(f"{k} {v:.2f}" for k, v in res["psnr_vs_original_db"].items())
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=str(EMBEDDED_MODEL_DIR), help="AutoencoderKL with trained weights (folder or id)")
    p.add_argument("--size", type=int, default=256, help="square centre crop, pixels (multiple of 8)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N held-out photos (0 = all 6)")
    p.add_argument("--calibration", type=int, default=8, help="training photos used to calibrate int8 activations")
    p.add_argument("--json", type=Path, default=RESULTS / "precision_guard.json", help="where to write the results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    res = {**run_meta(), **run(args)}
    write_results(args.json, res, indent=2)
    print_table(res)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
