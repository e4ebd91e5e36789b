"""sender_sdvae.py: encode an image with the autoencoder and send its latent to a receiver."""

from __future__ import annotations

import argparse
import json
import sys

from latentcomm.cli.common import HelpFormatter, add_model_args, add_network_args, run, setup_logging

DESCRIPTION = """\
Encode an image with a diffusers AutoencoderKL, gzip its latent and send it over TCP to
receiver_sdvae.py (legacy wire format, byte-compatible with the original scripts).

examples:
  python sender_sdvae.py                              # temp/apple.jpeg -> 127.0.0.1:65432
  python sender_sdvae.py --image photo.png --size 0   # native size (padded to x8, cropped back)
  python sender_sdvae.py --model models/latentcomm-kl-f8 --json
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sender_sdvae.py", description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument(
        "--image",
        default="temp/apple.jpeg",
        help="image file to send (any format Pillow reads; "
        "grayscale, RGBA and 16-bit images are converted to 8-bit RGB)",
    )
    add_network_args(p, listening=False)
    add_model_args(p)
    p.add_argument(
        "--size",
        type=int,
        default=256,
        help="resize to SIZE x SIZE before encoding (multiple of 8); "
        "0 keeps the native size, padded to a multiple of 8 and cropped back after decoding",
    )
    p.add_argument(
        "--dtype",
        choices=["f16", "i8"],
        default="f16",
        help="latent precision on the wire: f16 (flag 2, recommended) or i8 (flag 0: clips the latent "
        "to [-1, 1]; the report says how much was clipped)",
    )
    p.add_argument(
        "--no-original",
        action="store_true",
        help="send the latent only, not the original image (the receiver then shows the reconstruction alone)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the connection and the send")
    p.add_argument(
        "--wait-for-receiver",
        type=float,
        default=0.0,
        metavar="S",
        help="if the receiver refuses the connection, keep retrying for S seconds (start both together)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.size < 0 or args.size % 8:
        build_parser().error(f"--size must be 0 or a positive multiple of 8, got {args.size}")
    setup_logging()
    from latentcomm.engine import Engine
    from latentcomm.images import load_image
    from latentcomm.sender import format_report, send_image

    load_image(args.image)  # fail on a bad image before spending seconds on the model
    engine = Engine(args.model, args.device, args.precision)
    report = send_image(
        engine,
        args.image,
        args.host,
        args.port,
        size=args.size,
        dtype=args.dtype,
        include_original=not args.no_original,
        timeout=args.timeout,
        wait_for=args.wait_for_receiver,
    )
    report.extra["model_load_s"] = round(engine.loaded.load_seconds, 3)
    if args.json:
        print(json.dumps(report.as_dict()), flush=True)
    else:
        print(format_report(report), flush=True)
    return 0


def entry() -> None:
    sys.exit(run(main))
