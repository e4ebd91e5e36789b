"""sender_sdvae_metrics.py: measure reconstruction quality locally, then send the latent only."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from latentcomm.cli.common import (
    HelpFormatter,
    add_key_args,
    add_model_args,
    add_network_args,
    add_output_args,
    add_rate_args,
    check_rate_args,
    run,
    seconds,
    setup_logging,
)

DESCRIPTION = """\
Fit an image to 256x256 (centre crop, LANCZOS), encode it, decode it locally and print PSNR and
SSIM of the reconstruction (what the receiver will show, since the wire's float16 latent is what
is decoded here too), then send the latent only to receiver_sdvae.py and print the sender report.

With --codec learned it also reports MS-SSIM and SSIMULACRA2, and sends a v2 frame (the learned
codec has no legacy form); the reconstruction measured is a decode of the exact bitstream sent.
With --key the frame is a sealed v2 frame (any codec; docs/security.md).

examples:
  python sender_sdvae_metrics.py --image temp/apple.jpeg --json
  python sender_sdvae_metrics.py --image temp/apple.jpeg --codec learned --target-bytes 1500
"""


def build_parser(prog: str = "sender_sdvae_metrics.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--image", required=True, help="image file to measure and send")
    add_network_args(p, listening=False)
    add_model_args(p)
    add_output_args(p)
    add_rate_args(p)
    add_key_args(p, receiver=False)
    p.add_argument("--size", type=int, default=256, help="square size the image is centre-cropped to (multiple of 8)")
    p.add_argument("--timeout", type=seconds, default=30.0, help="seconds to wait for the connection and the send")
    p.add_argument("--json", action="store_true", help="print the metrics and report as one JSON object on stdout")
    return p


def main(argv: list[str] | None = None, prog: str = "sender_sdvae_metrics.py") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.size <= 0 or args.size % 8 or args.size > 4096:
        parser.error(f"--size must be a positive multiple of 8 up to 4096 (the receiver's limit), got {args.size}")
    check_rate_args(parser, args)
    setup_logging(args=args)
    if args.codec != "vae" or args.key:
        return _v2(args)
    from latentcomm.engine import Engine
    from latentcomm.images import load_image, tensor_to_pil
    from latentcomm.metrics import psnr, ssim
    from latentcomm.sender import build_frame, format_report, make_report, prepare
    from latentcomm.transports.tcp import send_frame
    from latentcomm.wire.encodings import FLAG_FLOAT16, decode_latent
    from latentcomm.wire.legacy import frame_to_bytes

    load_image(args.image)
    engine = Engine(args.model, args.device, args.precision)
    prepared = prepare(args.image, args.size, fit="crop")
    frame, facts = build_frame(engine, prepared, "f16", include_original=False)
    t0 = time.perf_counter()
    # Decode what the receiver will decode: the latent after the float16 round trip.
    wire_latent = decode_latent(FLAG_FLOAT16, engine.latent_channels, frame.height, frame.width, frame.payload)
    recon = tensor_to_pil(engine.decode(wire_latent))
    decode_s = time.perf_counter() - t0
    quality = {
        "psnr_db": round(psnr(prepared.image, recon), 3),
        "ssim": round(ssim(prepared.image, recon), 5),
        "local_decode_s": round(decode_s, 4),
    }
    data = frame_to_bytes(frame)
    report = make_report(engine.source, args.image, prepared, len(frame.payload), facts, "f16", len(data))
    report.extra.update(quality)
    if not args.json:
        print(f"PSNR: {quality['psnr_db']:.2f} dB   SSIM: {quality['ssim']:.4f}", flush=True)
    report.send_s = send_frame(args.host, args.port, data, timeout=args.timeout)
    report.extra["model_load_s"] = round(engine.loaded.load_seconds, 3)
    if args.json:
        print(json.dumps(report.as_dict()), flush=True)
    else:
        print(format_report(report), flush=True)
    return 0


def _v2(args) -> int:
    """The learned codec, or any codec with --key: encode, decode the exact bitstream locally, measure,
    send it in a v2 frame (latent only; sealed with --key)."""
    from latentcomm.codecs import load_codec
    from latentcomm.images import load_image, tensor_to_pil
    from latentcomm.metrics import ms_ssim, psnr, ssim, ssimulacra2
    from latentcomm.sender import REPORTED_FACTS, build_v2_frame, codec_label, format_report, make_report, prepare
    from latentcomm.transports.tcp import V2Client
    from latentcomm.wire.keys import load_key

    key = load_key(args.key) if args.key else None
    load_image(args.image)
    codec = load_codec(
        args.codec,
        args.model,
        args.device,
        args.precision,
        dtype="f16",
        compression="zstd",
        quality=args.quality,
        target_bytes=args.target_bytes,
        context=args.context,
        refine_steps=args.refine,
        postfilter=args.postfilter,
    )
    prepared = prepare(args.image, args.size, fit="crop")
    frame, facts = build_v2_frame(codec, prepared, 1, Path(args.image).name, include_original=False)
    t0 = time.perf_counter()
    recon = tensor_to_pil(
        codec.decode(frame.encoding, frame.compression, frame.shape, frame.payload, frame.params, frame.image_size)
    )
    decode_s = time.perf_counter() - t0
    quality = {
        "psnr_db": round(psnr(prepared.image, recon), 3),
        "ssim": round(ssim(prepared.image, recon), 5),
        "ms_ssim": round(ms_ssim(prepared.image, recon), 5),
        "ssimulacra2": round(ssimulacra2(prepared.image, recon), 3),
        "local_decode_s": round(decode_s, 4),
    }
    if not args.json:
        print(
            f"PSNR: {quality['psnr_db']:.2f} dB   SSIM: {quality['ssim']:.4f}   MS-SSIM: {quality['ms_ssim']:.4f}   "
            f"SSIMULACRA2: {quality['ssimulacra2']:.2f}",
            flush=True,
        )
    with V2Client(args.host, args.port, args.timeout, retries=1, key=key) as client:
        t0 = time.perf_counter()
        ack = client.send(frame)
        send_s = time.perf_counter() - t0
        frame_bytes = client.last_frame_bytes
    report = make_report(codec.source, args.image, prepared, len(frame.payload), facts, codec_label(codec), frame_bytes)
    report.model = frame.model
    report.send_s = round(send_s, 4)
    report.extra.update(quality)
    report.extra.update({k: facts[k] for k in REPORTED_FACTS if k in facts})
    report.extra.update(
        protocol="v2",
        codec=codec.kind,
        sealed=key is not None,
        acknowledged=ack.ok,
        ack_status=ack.status.name,
        ack_message=ack.message,
        payload_sha256=hashlib.sha256(frame.payload).hexdigest(),
    )
    report.extra["model_load_s"] = round(codec.load_seconds, 3)
    print(json.dumps(report.as_dict()) if args.json else format_report(report), flush=True)
    if not ack.ok:
        print(f"error: the receiver refused the image ({ack.status.name}: {ack.message})", file=sys.stderr)
        return 1
    return 0


def entry() -> None:
    sys.exit(run(main))
