"""receiver_sdvae.py: receive latents, decode them and show original and reconstruction."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from latentcomm.cli.common import (
    HelpFormatter,
    add_broker_args,
    add_key_args,
    add_model_args,
    add_network_args,
    add_output_args,
    byte_size,
    check_broker_args,
    host_port,
    is_loopback,
    number,
    port_type,
    run,
    seconds,
    setup_logging,
    stop_on_signals,
)

log = logging.getLogger("latentcomm.receiver")

#: In --out: the sealed broker streams' replay memory (docs/security.md), kept across restarts.
REPLAY_STATE_FILE = "sealed-streams.json"

DESCRIPTION = """\
Listen for latents from sender_sdvae.py / sender_sdvae_metrics.py (or the original scripts),
decode each with the same AutoencoderKL and show "Original" and "Reconstructed" side by side.
Keeps serving until Ctrl-C (or SIGTERM); a bad frame is logged and the server keeps running.

examples:
  python receiver_sdvae.py                           # show each image in a window
  python receiver_sdvae.py --no-show --out received --json
  python receiver_sdvae.py --once                    # exit after the first image, like the original
  python receiver_sdvae.py --codec learned           # the learned codec (no SD VAE needed)
"""


def build_parser(prog: str = "receiver_sdvae.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=HelpFormatter)
    add_network_args(p, listening=True)
    add_model_args(p, default=None)
    add_output_args(p)
    add_key_args(p, receiver=True)
    add_broker_args(p, receiver=True)
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="save NNNN_recon.png (exact pixels) for every image, and NNNN_compare.png (side by side) when the "
        "original came with it",
    )
    p.add_argument(
        "--save-frames",
        action="store_true",
        help="with --out, also save every video frame as a PNG (NNNN_recon.png). Without it a video stream is "
        "kept as video only: NNNN_video-STREAM.mkv in --out, the access units as they arrived (no re-encoding; "
        "a new file when the stream's codec or coded size changes), each frame's file and number in images.jsonl",
    )
    p.add_argument(
        "--max-disk",
        type=byte_size,
        metavar="SIZE",
        help="keep the pictures and video files in --out under SIZE (e.g. 500M, 2G): past it the oldest files "
        "are deleted, never a video file still being written, with a log line when pruning starts (default: no "
        "bound). The newest file is always kept, so one larger than SIZE leaves --out above it. Numbering always "
        "continues from what --out holds, so a restarted receiver never overwrites a picture or a video",
    )
    p.add_argument(
        "--no-show",
        action="store_true",
        help="don't open a window (without a display, images are saved to --out, or ./received, instead)",
    )
    p.add_argument("--once", action="store_true", help="exit after the first image (waits for its window to close)")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per image on stdout, and a summary object at exit"
    )
    p.add_argument(
        "--max-payload", type=int, default=64 * 1024 * 1024, metavar="BYTES", help="largest compressed latent accepted"
    )
    p.add_argument(
        "--max-latent",
        type=int,
        default=4 * 512 * 512,
        metavar="ELEMENTS",
        help="largest latent accepted, in elements (default: a 4096x4096 image)",
    )
    p.add_argument(
        "--read-timeout", type=seconds, default=10.0, metavar="S", help="drop a peer that sends nothing for this long"
    )
    p.add_argument(
        "--frame-timeout",
        type=seconds,
        default=120.0,
        metavar="S",
        help="drop a peer whose frame is not complete after this long (a client trickling bytes)",
    )
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="largest image (v2 frames) accepted, in pixels")
    p.add_argument(
        "--max-video-pixels",
        type=number(0, above=True, integer=True),
        default=1920 * 1088,
        metavar="PIXELS",
        help="largest live video picture decoded (default: 1080p, 2,088,960); a larger one is refused with TOO_LARGE",
    )
    p.add_argument(
        "--max-pixel-rate",
        type=number(0, above=True),
        default=1920 * 1088 * 10,
        metavar="PIXELS_PER_S",
        help="pixels a second one video stream may have decoded (default: 1080p at 10 fps); frames past it are "
        "refused undecoded with TOO_LARGE and the stream goes on from a key frame",
    )
    p.add_argument(
        "--max-total-pixel-rate",
        type=number(0, above=True),
        default=2 * 1920 * 1088 * 10,
        metavar="PIXELS_PER_S",
        help="pixels a second all video streams together may have decoded (default: twice --max-pixel-rate's)",
    )
    p.add_argument("--max-connections", type=int, default=64, help="connections handled at once; more are refused")
    p.add_argument(
        "--max-text",
        type=int,
        default=64 * 1024,
        metavar="BYTES",
        help="largest text (UTF-8) accepted beside an image; a frame with more is refused and the sender told why",
    )
    p.add_argument(
        "--dashboard",
        metavar="[HOST:]PORT",
        help="serve a live web dashboard (latest images per sender, figures, bytes per second, rejected frames) on "
        "this port, 127.0.0.1 unless HOST is given; beyond loopback it needs --dashboard-token",
    )
    token = p.add_mutually_exclusive_group()
    token.add_argument(
        "--dashboard-token",
        metavar="TOKEN",
        help="require this token on every dashboard request (open http://HOST:PORT/?token=TOKEN). On a shared "
        "machine prefer --dashboard-token-file or the LATENTCOMM_DASHBOARD_TOKEN environment variable: a command "
        "line shows in ps",
    )
    token.add_argument(
        "--dashboard-token-file",
        metavar="PATH",
        type=Path,
        help="read the dashboard token from this file (its first line)",
    )
    p.add_argument(
        "--record",
        type=Path,
        metavar="FILE.mcap",
        help="record every stream into this MCAP file, as Foxglove reads it: video access units as they arrived "
        "(foxglove.CompressedVideo, no re-encoding), stills as their decoded PNG, texts as logs; one topic set "
        "per stream (/NAME/video, ...). Never overwrites a file",
    )
    p.add_argument(
        "--foxglove",
        nargs="?",
        const="8765",
        type=host_port,
        metavar="[HOST:]PORT",
        help="serve every stream live to the Foxglove app (a Foxglove WebSocket server; default 127.0.0.1:8765): "
        "the same topics as --record. Beyond loopback it is in clear: put it behind an SSH tunnel or a VPN",
    )
    p.add_argument(
        "--enhance",
        nargs="?",
        const="auto",
        choices=("auto", "always"),
        help="run decoded H.264 pictures through the video enhancer (models/latentcomm-enhance-h264): a small "
        "network told the decoder's quantizer map; the same bits, a better picture, at this receiver's CPU cost "
        "(docs/video.md). auto (the default): a stream whose pictures this machine can't enhance in half the time "
        "between its frames is shown as decoded; always: every picture, however late (recording, not watching)",
    )
    p.add_argument(
        "--extra-model",
        action="append",
        default=[],
        metavar="ID_OR_DIR",
        help="also accept v2 frames made with this model (repeatable): an AutoencoderKL or a learned codec "
        "folder; by default a frame for any model but --model is refused with an error the sender sees",
    )
    return p


def main(argv: list[str] | None = None, prog: str = "receiver_sdvae.py") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    setup_logging(args=args)
    from latentcomm.codecs import load_codec
    from latentcomm.codecs.base import CodecUnavailable
    from latentcomm.errors import LatentcommError
    from latentcomm.receiver import Receiver, ReceiverOptions
    from latentcomm.transports.tcp import FrameServer
    from latentcomm.wire import v2
    from latentcomm.wire.legacy import Limits

    if (
        args.max_payload <= 0
        or args.max_latent <= 0
        or args.max_pixels <= 0
        or args.read_timeout <= 0
        or args.frame_timeout <= 0
        or args.max_connections <= 0
        or args.max_text < 0
    ):
        parser.error("limits must be positive")
    check_broker_args(parser, args)
    if args.viewer and not args.broker:
        parser.error("--viewer watches streams through a --broker")
    if args.broker and not 0 <= args.session_expiry <= 0xFFFFFFFF:
        parser.error(f"--session-expiry {args.session_expiry}: give 0 to 4294967295 seconds")
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise LatentcommError(f"--out {args.out} exists and is not a directory") from None
        except OSError as exc:
            raise LatentcommError(f"--out {args.out} can't be created: {exc.strerror or exc}") from None
        if not os.access(args.out, os.W_OK | os.X_OK):
            raise LatentcommError(f"--out {args.out} is not writable")
    from latentcomm.wire.keys import Keyring, load_key

    if args.foxglove is not None and not is_loopback(args.foxglove[0]) and not args.insecure:
        parser.error(f"--foxglove {args.foxglove[0]}: the Foxglove server has no authentication; serve it on loopback "
                     "(and tunnel it), or add --insecure to accept that")  # fmt: skip
    dash_host, dash_port = None, None
    token = _dashboard_token(parser, args)
    if args.dashboard is not None:
        dash_host, _, port_text = args.dashboard.rpartition(":")
        dash_host = dash_host.strip("[]") or "127.0.0.1"
        try:
            dash_port = port_type(port_text)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"--dashboard: {exc}")
        if not is_loopback(dash_host) and not token:
            raise LatentcommError(
                f"refusing to serve the dashboard on {dash_host} without --dashboard-token: anyone who reaches it "
                "would see the pictures"
            )

    keyring = Keyring([load_key(k) for k in args.key]) if args.key else None
    if not args.broker and not is_loopback(args.host) and keyring is None:
        if not args.insecure:
            raise LatentcommError(
                f"refusing to listen on {args.host} without --key: anyone who reaches the port could read and send "
                "images. Give --key PATH (python -m latentcomm keygen PATH), or --insecure to accept that"
            )
        log.warning("--insecure: listening on %s with frames in clear and unauthenticated", args.host)
    # Bind first: a port conflict should fail in a second, not after loading the model.
    v2_limits = v2.Limits(args.max_payload, args.max_latent, args.max_pixels, max_text_bytes=args.max_text)
    if args.broker:
        from latentcomm.transports import broker_transport

        transport = broker_transport(args.broker)
        replay_state = None
        if keyring is not None:
            if args.out is not None:
                replay_state = args.out / REPLAY_STATE_FILE
            else:
                log.warning(
                    "sealed broker frames without --out: the replay memory is not kept across restarts (give --out "
                    "to keep it in %s there)", REPLAY_STATE_FILE,
                )  # fmt: skip
        server = transport.Source.from_args(args, v2_limits, keyring, replay_state)
    else:
        server = FrameServer(
            args.host,
            args.port,
            Limits(args.max_payload, args.max_latent),
            args.read_timeout,
            frame_timeout=args.frame_timeout,
            max_connections=args.max_connections,
            v2_limits=v2_limits,
            keyring=keyring,
        )
    try:
        codecs = [load_codec(args.codec or "vae", args.model, args.device, args.precision)]
    except CodecUnavailable as exc:
        if args.codec is not None:
            raise
        # A video-only install (no torch): the default still codec can't load, video streams still can.
        codecs = []
        print(f"receiving video only: {exc}", file=sys.stderr, flush=True)
    codecs += [load_codec("vae", m, args.device, args.precision) for m in args.extra_model]
    dashboard = None
    state = None
    if dash_port is not None:
        from latentcomm.dashboard import Dashboard, DashboardState

        state = DashboardState()
        dashboard = Dashboard(state, dash_host, dash_port, token)
        shown = f"[{dashboard.address[0]}]" if ":" in dashboard.address[0] else dashboard.address[0]
        print(f"Dashboard on http://{shown}:{dashboard.address[1]}/", file=sys.stderr, flush=True)
    enhancer = None
    if args.enhance:
        from latentcomm.errors import require

        require("torch", "learned", "--enhance")
        from latentcomm.enhance import ENHANCER_DIR, VideoEnhancer

        enhancer = VideoEnhancer.from_pretrained(ENHANCER_DIR)
        enhancer.keep_up = args.enhance == "auto"
    options = ReceiverOptions(
        args.out, not args.no_show, args.once, args.json, args.max_disk, int(args.max_video_pixels),
        args.max_pixel_rate, args.max_total_pixel_rate, every_frame=args.verbose, save_frames=args.save_frames,
    )  # fmt: skip
    outputs = []
    if args.record is not None or args.foxglove is not None:
        from latentcomm.record import FoxgloveSink

        sink = FoxgloveSink(args.record, args.foxglove)
        if sink.port is not None:
            print(f"Foxglove WebSocket server on ws://{args.foxglove[0]}:{sink.port}/", file=sys.stderr, flush=True)
        outputs.append(sink)
    receiver = Receiver(codecs, options, dashboard=state, enhancer=enhancer, outputs=outputs)
    server.start()
    host, port = server.address
    models = f"model {', '.join(c.model_id for c in codecs)}" if codecs else "video only"
    sealing = f"sealed frames only, key id(s) {', '.join(k.hex() for k in keyring.keys)}" if keyring else "in clear"
    if (args.broker or "").startswith(("mqtts://", "zenohs://")):
        sealing += ", over TLS" if keyring else " over TLS (frames not sealed: --key)"
    print(
        f"Receiver listening on {host}:{port} ({models}; {sealing}); Ctrl-C to stop", file=sys.stderr, flush=True
    )
    try:
        summary = receiver.serve(server, stop_on_signals())
    finally:
        for output in outputs:
            output.close()
        if dashboard is not None:
            dashboard.stop()
        if args.broker:
            server.close()
    final = {
        "summary": True,
        "images_ok": summary.images_ok,
        "rejected": summary.rejected,
        "bytes_received": summary.bytes_received,
    }
    if args.json:
        print(json.dumps(final), flush=True)
    else:
        print(
            f"Stopped: {summary.images_ok} image(s) ok, {summary.rejected} rejected, "
            f"{summary.bytes_received:,} bytes received",
            file=sys.stderr,
        )
    return 0


def _dashboard_token(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The token from --dashboard-token, --dashboard-token-file or LATENTCOMM_DASHBOARD_TOKEN (in that
    order), checked: printable ASCII, else exit 2 with the reason."""
    from latentcomm.dashboard import check_token

    token, where = args.dashboard_token, "--dashboard-token"
    if args.dashboard_token_file is not None:
        where = f"--dashboard-token-file {args.dashboard_token_file}"
        try:
            token = args.dashboard_token_file.read_text(encoding="utf-8").strip().splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            parser.error(f"{where}: can't read a token from it ({getattr(exc, 'strerror', None) or exc})")
    elif token is None and os.environ.get("LATENTCOMM_DASHBOARD_TOKEN"):
        token, where = os.environ["LATENTCOMM_DASHBOARD_TOKEN"], "LATENTCOMM_DASHBOARD_TOKEN"
    if token is None:
        return None
    try:
        return check_token(token)
    except ValueError as exc:
        parser.error(f"{where}: {exc}")


def entry() -> None:
    sys.exit(run(main))
