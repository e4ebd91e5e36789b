"""sender_sdvae.py: encode images with the autoencoder and send their latents to a receiver."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import re
import sys
from typing import TYPE_CHECKING

from latentcomm.cli.common import (
    HelpFormatter,
    add_broker_args,
    add_key_args,
    add_model_args,
    add_network_args,
    add_output_args,
    add_rate_args,
    bandwidth_arg,
    check_broker_args,
    check_rate_args,
    number,
    run,
    seconds,
    seconds_or_zero,
    setup_logging,
    stream_name,
)

if TYPE_CHECKING:
    from latentcomm.transports.base import FramePipeline

DESCRIPTION = """\
Encode images (the learned codec, or a diffusers AutoencoderKL's latent as the original scripts
did) or live video (H.264, AV1, VP9) and send them over TCP, a broker or Zenoh to receiver_sdvae.py.

One image goes out in the legacy wire format by default (byte-compatible with the original
scripts). Several images (--image given more than once, or a folder), or --protocol v2, use the
versioned format: one connection, every image acknowledged by the receiver, reconnect and resend
on a dropped connection, and a frame that names its model.

examples:
  python sender_sdvae.py                              # temp/apple.jpeg -> 127.0.0.1:65432
  python sender_sdvae.py --image photo.png --size 0   # native size (padded to x8, cropped back)
  python sender_sdvae.py --image shots/ --json        # a folder, v2, one JSON line per image
  python sender_sdvae.py --codec learned --quality 6  # the learned codec (v2), far fewer bytes
  python sender_sdvae.py --codec learned --target-bytes 2000 --size 0   # fit each image into 2,000 bytes
"""


#: Largest --size: a receiver with default limits accepts images up to 4096x4096 pixels.
MAX_SIZE = 4096


def build_parser(prog: str = "sender_sdvae.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument(
        "--image",
        action="append",
        metavar="PATH",
        help="image file or folder of images to send; repeat for several (default: temp/apple.jpeg). Any format "
        "Pillow reads; grayscale, RGBA and 16-bit images are converted to 8-bit RGB",
    )
    stream = p.add_argument_group("streams (v2)")
    src = stream.add_mutually_exclusive_group()
    src.add_argument(
        "--video",
        metavar="PATH_OR_URL",
        help="send a video file's frames, or a stream's (any URL this PyAV opens: rtsp://, http(s)://, udp://, "
        "tcp://, srt:// where built in; given to FFmpeg as written), as a live stream",
    )
    src.add_argument(
        "--camera",
        metavar="N_OR_PATH",
        help="send a V4L2 camera's frames as a live stream: a number N (/dev/videoN) or a device path "
        "(/dev/v4l/by-id/...)",
    )
    stream.add_argument(
        "--camera-size", metavar="WxH", help="--camera: ask the camera for this picture size (e.g. 1280x720)"
    )
    stream.add_argument(
        "--camera-format", metavar="NAME", help="--camera: ask for this V4L2 pixel format (e.g. mjpeg, yuyv422)"
    )
    stream.add_argument(
        "--video-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an FFmpeg protocol or demuxer option for --video (repeatable), e.g. rtsp_transport=tcp, "
        "stimeout=5000000, fflags=nobuffer",
    )
    stream.add_argument(
        "--mcap-topic",
        metavar="TOPIC",
        help="--video FILE.mcap: replay this topic's camera frames (foxglove.CompressedVideo or CompressedImage, "
        "protobuf) as a live source, in their recorded timing (default: the first such topic)",
    )
    stream.add_argument(
        "--reconnect",
        type=number(0, 86400),
        default=30.0,
        metavar="S",
        help="--video URL: when the stream drops, reopen it for up to S seconds before giving up, frame "
        "numbers going on (default: 30; 0: give up at once)",
    )
    stream.add_argument(
        "--fps",
        type=number(0.001, 1000),
        metavar="N",
        help="frames per second taken from the source (default: the video's own rate; required to stream a folder)",
    )
    stream.add_argument(
        "--max-frames", type=number(1, 2**31, integer=True), metavar="N", help="stop after N frames from the source"
    )
    stream.add_argument(
        "--key-interval",
        type=number(1, 10**6, integer=True),
        metavar="N",
        help="learned codec: a key frame every N frames, inter frames (only the changed blocks) between them; "
        "1 = key frames only (default: 30; 1 with --broker, whose receivers don't share references). Video "
        "codecs: a key frame at the start, when the receiver asks for one, and every N frames (default: 10 s of "
        "frames)",
    )
    stream.add_argument(
        "--bandwidth",
        metavar="RATE",
        type=bandwidth_arg,
        help="fit the stream into RATE bits/s (e.g. 64k, 256k, 1M): each frame gets the best quality the budget "
        "allows, frames are dropped rather than queued when the link can't keep up (--codec learned, or a video "
        "codec). Video codecs also take 'auto' or 'auto:MAX': the rate is estimated from the acknowledgements' "
        "timing (delay-based, like WebRTC's congestion control) and follows the link, up to MAX (default 2M)",
    )
    stream.add_argument(
        "--resolution",
        metavar="WxH",
        help="video codecs: the stream's picture size (even sides, e.g. 640x352): scaled to cover, centre-cropped "
        "(default: the source's size)",
    )
    stream.add_argument(
        "--window",
        type=number(1, 64, integer=True),
        metavar="N",
        help="video codecs: frames in flight before the first is acknowledged (pipelining; 1 = stop-and-wait; "
        "default: 4)",
    )
    stream.add_argument(
        "--preset",
        metavar="NAME",
        help="the video encoder's preset (slower: more picture per bit, more CPU). --codec h264: x264's, of medium, "
        "faster, veryfast, superfast, ultrafast; --codec av1: SVT-AV1's, 7 to 13. Default: the slowest the "
        "stream's pixel rate leaves room for (h264: medium up to 2.5 Mpx/s, e.g. 640x352 at 10 fps, faster up to 6, "
        "veryfast up to 30, superfast up to 90; av1: 8 up to 3 Mpx/s, 10 up to 6, 12 up to 12, then 13)",
    )
    p.add_argument(
        "--name",
        type=stream_name,
        metavar="NAME",
        help="this sender's stream name (letters, digits, ._-): its frames are named NAME/..., and the receiver "
        "keeps it apart from other streams of the same host or key (dashboard card, images.jsonl's 'stream'). "
        "v2 frames",
    )
    add_network_args(p, listening=False)
    add_model_args(p, auto=True)
    add_output_args(p)
    add_rate_args(p)
    add_key_args(p, receiver=False)
    add_broker_args(p, receiver=False)
    p.add_argument(
        "--size",
        type=int,
        default=256,
        help="v2 frames: scale the longer side to SIZE before encoding, keeping the aspect ratio; legacy frames (the "
        "original scripts' path): resize to SIZE x SIZE, as the original sender does. A multiple of 8; 0 keeps the "
        "native size, padded to a multiple of 8 and cropped back after decoding",
    )
    p.add_argument(
        "--protocol",
        choices=["auto", "legacy", "v2"],
        default="auto",
        help="wire format: legacy (the original scripts', one image per connection, no acknowledgement) or v2 "
        "(acknowledged, see docs/protocol.md); auto = legacy for one VAE image, v2 for several or --codec learned",
    )
    p.add_argument(
        "--dtype",
        choices=["f16", "i8", "bf16", "u8"],
        default="f16",
        help="latent precision on the wire: f16 (recommended); i8 = legacy int8, clips the latent to [-1, 1] (the "
        "report says how much was clipped); v2 only: bf16, u8 (8 bits with per-channel scale/offset: adapts to any "
        "latent range)",
    )
    p.add_argument(
        "--compression",
        choices=["zstd", "gzip", "none"],
        default="zstd",
        help="v2 only: payload compression (legacy frames are always gzip)",
    )
    original = p.add_mutually_exclusive_group()
    original.add_argument(
        "--no-original",
        action="store_true",
        help="legacy frames (the original scripts' path): send the latent only, not the original image (the "
        "receiver then shows the reconstruction alone). v2 frames leave the original out by default",
    )
    original.add_argument(
        "--send-original",
        action="store_true",
        help="v2 frames: send the original image (PNG) beside the latent, for the receiver's side-by-side and the "
        "dashboard's PSNR/SSIM. Off by default: on a thin link it costs tens of times the latent (the quick "
        "start's picture: 2,819 bytes of latent, 114,501 with the original)",
    )
    text = p.add_mutually_exclusive_group()
    text.add_argument(
        "--text",
        metavar="TEXT",
        help="v2: a UTF-8 text sent with every image (a caption, a sensor reading as JSON); the receiver saves, "
        "shows and prints it (its limit: --max-text, 64 KiB by default)",
    )
    text.add_argument(
        "--text-file",
        metavar="PATH",
        help="v2: the text from a file; a .jsonl file maps image names to texts, one "
        '{"image": NAME, "text": TEXT} per line',
    )
    p.add_argument("--timeout", type=seconds, default=30.0, help="seconds to wait for a connection, a send or an ack")
    p.add_argument(
        "--retries",
        type=number(0, 1000, integer=True),
        default=3,
        help="v2: reconnect and resend this many times per image",
    )
    p.add_argument(
        "--wait-for-receiver",
        type=seconds_or_zero,
        default=0.0,
        metavar="S",
        help="if the receiver refuses the connection, keep retrying for S seconds (start both together)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON: one object per image")
    return p


def main(argv: list[str] | None = None, prog: str = "sender_sdvae.py") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    bad = [o for o in args.video_option if "=" not in o or not o.split("=", 1)[0]]
    if bad:
        parser.error(f"--video-option {bad[0]!r}: give KEY=VALUE (e.g. rtsp_transport=tcp)")
    if args.video_option and args.video is None:
        parser.error("--video-option is for --video")
    if args.mcap_topic and not (args.video or "").lower().endswith(".mcap"):
        parser.error("--mcap-topic is for --video FILE.mcap")
    if (args.camera_size or args.camera_format) and args.camera is None:
        parser.error("--camera-size and --camera-format are for --camera")
    if args.camera_size and not re.fullmatch(r"[1-9]\d{0,4}x[1-9]\d{0,4}", args.camera_size.lower()):
        parser.error(f"--camera-size {args.camera_size!r}: give WIDTHxHEIGHT (e.g. 1280x720)")
    if args.codec is None:  # streams from a video or a camera default to the video codec this machine affords
        args.codec = "auto" if args.video is not None or args.camera is not None else "vae"
    if args.size < 0 or args.size % 8:
        parser.error(f"--size must be 0 or a positive multiple of 8, got {args.size}")
    if args.size > MAX_SIZE:
        parser.error(f"--size {args.size} is over {MAX_SIZE}, the receiver's default limit (4096x4096 pixels)")
    if args.retries < 0 or args.timeout <= 0:
        parser.error("--retries must be >= 0 and --timeout positive")
    check_rate_args(parser, args)
    streaming = args.video is not None or args.camera is not None or args.fps is not None
    from latentcomm.codecs.video import VIDEO_CODECS, is_video_codec

    if args.preset is not None and args.codec == "auto":
        parser.error("--preset needs a named video codec (--codec h264 or av1): auto chooses its own")
    if args.preset is not None:
        presets = VIDEO_CODECS[args.codec].presets if is_video_codec(args.codec) else ()
        if args.preset not in presets:
            takes = f"one of {', '.join(presets)}" if presets else "no --preset"
            parser.error(f"--preset {args.preset}: --codec {args.codec} takes {takes}")
    if is_video_codec(args.codec) or args.codec == "auto":
        return _send_video(parser, args)
    for flag, value in (("--resolution", args.resolution), ("--window", args.window)):
        if value:
            parser.error(f"{flag} is for the video codecs (--codec h264, av1 or vp9)")
    bandwidth = None
    if args.bandwidth is not None:
        if args.bandwidth.auto:
            parser.error("--bandwidth auto follows the link with a video codec (--codec h264, av1, vp9 or auto); "
                         "the learned codec takes a fixed RATE")  # fmt: skip
        bandwidth = args.bandwidth.fixed_bps
        if args.codec != "learned":
            parser.error("--bandwidth picks each frame's quality with the learned codec: add --codec learned")
        if args.quality is not None or args.target_bytes is not None:
            parser.error("--bandwidth sets each frame's size; drop --quality / --target-bytes")
        streaming = True
    if streaming and args.refine:
        parser.error("--refine is for single images: it costs seconds per frame, which a stream can't spend")
    if (args.fps is not None and args.fps <= 0) or (args.max_frames is not None and args.max_frames <= 0):
        parser.error("--fps and --max-frames must be positive")
    if args.key_interval is not None and args.key_interval <= 0:
        parser.error("--key-interval must be positive")
    if streaming and args.protocol == "legacy":
        parser.error("streams travel in v2 frames")
    check_broker_args(parser, args)
    if args.broker and args.protocol == "legacy":
        parser.error("a broker carries v2 frames only")
    if args.codec == "learned" and args.protocol == "legacy":
        parser.error("the learned codec travels in v2 frames only (the legacy format carries a VAE latent)")
    if (args.text is not None or args.text_file) and args.protocol == "legacy":
        parser.error("legacy frames can't carry a text; use v2")
    if args.name and args.protocol == "legacy":
        parser.error("--name travels in v2 frames (legacy frames carry no name)")
    if args.key and args.protocol == "legacy":
        parser.error("legacy frames can't be sealed (the format has no room for an authentication tag); use v2")
    setup_logging(args=args)
    from latentcomm.wire.keys import load_key

    key = load_key(args.key) if args.key else None
    from latentcomm.sender import text_source

    texts = text_source(args.text, args.text_file)
    from latentcomm.images import load_image
    from latentcomm.sender import expand_images

    if streaming:
        return _send_stream(parser, args, key, bandwidth, texts)
    images = expand_images(args.image or ["temp/apple.jpeg"])
    protocol = args.protocol
    if protocol == "auto":
        protocol = (
            "v2" if len(images) > 1 or args.codec != "vae" or key or texts or args.broker or args.name else "legacy"
        )  # only the VAE codec speaks the original scripts' frame
    if protocol == "legacy":
        if len(images) > 1:
            parser.error(
                "the legacy format carries one image per connection without acknowledgement; use --protocol v2"
            )
        if args.dtype not in ("f16", "i8"):
            parser.error(f"--dtype {args.dtype} needs --protocol v2 (legacy frames carry f16 or i8)")
        load_image(images[0])  # fail on a bad image before spending seconds on the model
    from latentcomm.codecs import load_codec

    codec = load_codec(
        args.codec,
        args.model,
        args.device,
        args.precision,
        dtype=args.dtype,
        compression=args.compression,
        quality=args.quality,
        target_bytes=args.target_bytes,
        context=args.context,
        refine_steps=args.refine,
        postfilter=args.postfilter,
    )
    if protocol == "legacy":
        return _send_legacy(codec.engine, args, images[0])
    return _send_v2(codec, args, images, key, texts)


def _client(args, key, pace_bps=None):
    """The transport: a TCP connection to the receiver, or the --broker's (MQTT, Zenoh)."""
    if args.broker:
        from latentcomm.transports import broker_transport

        transport = broker_transport(args.broker)
        auth = {"auth": transport.auth_from_args(args)} if hasattr(transport, "auth_from_args") else {}
        return transport.Sender(
            args.broker, args.topic, args.timeout, args.retries, args.wait_for_receiver, ack_timeout=args.ack_timeout,
            key=key, **auth,
        )  # fmt: skip
    from latentcomm.transports.tcp import V2Client

    return V2Client(
        args.host, args.port, args.timeout, args.retries, args.wait_for_receiver, key=key, pace_bps=pace_bps
    )


def _source(args):
    """The stream's frames: --video, --camera, or the --image files/folder at --fps."""
    from latentcomm.sender import expand_images
    from latentcomm.stream import camera_frames, image_frames, mcap_frames, video_frames

    if args.video is not None and args.video.lower().endswith(".mcap"):  # a recording: its camera topic
        frames = mcap_frames(args.video, args.mcap_topic, args.fps, args.max_frames)
    elif args.video is not None:
        frames = video_frames(args.video, args.fps, args.max_frames, _video_options(args), args.reconnect)
    elif args.camera is not None:
        size = tuple(int(v) for v in args.camera_size.lower().split("x")) if args.camera_size else None
        frames = camera_frames(args.camera, args.fps, args.max_frames, size, args.camera_format)
    else:
        frames = image_frames(expand_images(args.image or ["temp/apple.jpeg"]), args.fps, args.max_frames)
    if args.name:  # --name: every frame's name carries the stream's, NAME/...
        return (dataclasses.replace(f, name=f"{args.name}/{f.name}") for f in frames)
    return frames


def _latency_text(r: dict) -> str:
    """', latency p50 ... s, p95 ... s' of a stream summary (empty before any acknowledgement)."""
    p50, p95 = r["latency_p50_s"], r["latency_p95_s"]
    return f", latency p50 {p50:.3f} s, p95 {p95:.3f} s" if p50 is not None else ""


def _send_stream(parser, args, key, bandwidth, texts=None) -> int:
    """--video / --camera / a folder with --fps: a live stream, optionally within --bandwidth."""
    from latentcomm.codecs import load_codec
    from latentcomm.sender import send_stream
    from latentcomm.stream import LiveSource

    frames = _source(args)
    codec = load_codec(
        args.codec, args.model, args.device, args.precision, dtype=args.dtype, compression=args.compression,
        quality=args.quality, target_bytes=args.target_bytes,
    )  # fmt: skip
    first = next(frames)  # fail on a bad source before connecting

    live = LiveSource(itertools.chain([first], frames))
    failed = 0
    with _client(args, key, bandwidth) as client:
        interval = args.key_interval or (1 if args.broker else 30)
        for r in send_stream(codec, live, client, args.size, bandwidth, include_original=args.send_original
                             and bandwidth is None, key_interval=interval, texts=texts):  # fmt: skip
            failed += r.get("acknowledged") is False
            if args.json:
                print(json.dumps(r), flush=True)
            elif r.get("summary"):
                print(
                    f"stream: {r['frames_sent']} of {r['frames_from_source']} frames sent, {r['frames_dropped']} "
                    f"dropped ({r['dropped_for_bandwidth']} for the bandwidth, {r['dropped_stale']} superseded), "
                    f"{r['achieved_fps']:.2f} fps, {r['bits_per_second'] / 1000:.1f} kbit/s"
                    + (f" of {bandwidth / 1000:.0f}" if bandwidth else "")
                    + _latency_text(r),
                    flush=True,
                )
            elif "dropped" in r:
                print(f"[{r['seq']}] {r['frame']}: dropped ({r['bytes_needed']:,} bytes needed, "
                      f"{r['tokens']:,} in the budget)", flush=True)  # fmt: skip
            else:
                q = f", quality {r['quality']:g}" if r.get("quality") else ""
                if r.get("frame_type") == "inter":
                    q += f", inter ({100 * r['coded_blocks']:.0f}% of blocks)"
                verdict = "ok" if r["acknowledged"] else f"REFUSED ({r['ack_status']})"
                print(f"[{r['seq']}] {r['frame']}: {r['bytes']:,} bytes{q}, latency {r['latency_s']:.3f} s, "
                      f"{r['dropped_so_far']} dropped so far: {verdict}", flush=True)  # fmt: skip
    if failed:
        print(f"error: {failed} frame(s) were not acknowledged (see above)", file=sys.stderr)
        return 1
    return 0


def _send_video(parser, args) -> int:
    """--codec h264 / av1 / vp9: a live stream through a real video codec (latentcomm.live)."""
    from latentcomm.codecs.video import parse_resolution

    if args.video is None and args.camera is None and args.fps is None:
        parser.error(f"--codec {args.codec} is for streams: give --video PATH, --camera N, or a folder with --fps")
    if args.protocol == "legacy":
        parser.error("streams travel in v2 frames")
    if args.refine or not args.context or not args.postfilter:
        parser.error("--refine, --no-context and --no-postfilter are for --codec learned")
    if args.send_original:
        parser.error("--send-original is for stills: video frames carry no original (it costs more than the video)")
    if args.quality is not None or args.target_bytes is not None:
        parser.error("--quality and --target-bytes need --codec learned; video codecs take --bandwidth")
    if args.dtype != "f16" or args.compression != "zstd":
        parser.error("--dtype and --compression are for --codec vae")
    fixed = auto_max = None
    if args.bandwidth is not None:
        fixed, auto_max = args.bandwidth.fixed_bps, args.bandwidth.auto_max_bps
    resolution = None
    if args.resolution is not None:
        try:
            resolution = parse_resolution(args.resolution)
        except ValueError as exc:
            parser.error(f"--resolution: {exc}")
    setup_logging(args=args)

    from latentcomm.codecs.video import VideoCodec
    from latentcomm.live import send_video_stream
    from latentcomm.sender import text_source
    from latentcomm.stream import LiveSource
    from latentcomm.transports.tcp import Pipeline
    from latentcomm.wire.keys import load_key

    key = load_key(args.key) if args.key else None
    texts = text_source(args.text, args.text_file)
    frames = _source(args)
    first = next(frames)  # fail on a bad source before connecting
    fps = args.fps or _source_fps(args)
    preset = args.preset
    if args.codec == "auto":
        from latentcomm.codecs.video import fit_picture
        from latentcomm.operating import choose_codec

        choice = choose_codec(fit_picture(first.image, resolution), fps, fixed or auto_max)
        args.codec, preset = choice.codec, choice.preset
        print(f"--codec auto: {choice.reason}", file=sys.stderr, flush=True)
        # ...and to the receiver's people: the first frame's text says it (dashboard, images.jsonl, MCAP log).
        first = dataclasses.replace(first, note=f"--codec auto: {choice.reason}")
    codec = VideoCodec(args.codec, fixed or 256_000, fps, args.key_interval or max(1, round(10 * fps)), preset=preset)
    client = _client(args, key)
    pipeline: FramePipeline
    if args.broker:  # MQTT: one receiver of the group owns the stream; viewers watch it (docs/video.md)
        pipeline = client.pipeline(args.window or 4, ack_timeout=min(args.ack_timeout, 2.0))
    else:
        pipeline = Pipeline(client, args.window or 4, reconnect_wait=args.timeout)
    live = LiveSource(itertools.chain([first], frames))
    try:
        for r in send_video_stream(codec, live, pipeline, resolution, fixed, auto_max, texts, fps):
            if args.json:
                print(json.dumps(r), flush=True)
            elif r.get("summary"):
                print(
                    f"stream: {r['frames_acknowledged']} of {r['frames_from_source']} frames shown at the receiver "
                    f"({r['frames_dropped']} superseded at the source, {r['frames_refused']} refused, "
                    f"{r['key_frames']} key frames, {r['key_frame_requests']} asked for), {r['achieved_fps']:.2f} fps, "
                    f"{r['bits_per_second'] / 1000:.1f} kbit/s"
                    + _latency_text(r)
                    + (
                        f"; ended at {r['operating_point']} ({r['operating_point_reason']})"
                        if r.get("operating_point_changes")
                        else ""
                    ),
                    flush=True,
                )
            else:
                verdict = "ok" if r["acknowledged"] else f"REFUSED ({r['ack_status']}: {r['ack_message']})"
                rate = f", estimate {r['estimated_bps'] / 1000:.0f} kbit/s" if "estimated_bps" in r else ""
                print(f"[{r['seq']}] {r['frame']}: {r['bytes']:,} bytes {r['frame_type']}, latency "
                      f"{r['latency_s']:.3f} s{rate}: {verdict}", flush=True)  # fmt: skip
    finally:
        pipeline.close()
    return 0


def _video_options(args) -> dict[str, str]:
    """--video-option KEY=VALUE pairs (already checked by the parser)."""
    return dict(option.split("=", 1) for option in args.video_option)


def _source_fps(args) -> float:
    """The video file's own frame rate (a camera or a URL without --fps: 30; a URL is not opened twice,
    a server that takes one client would refuse the second)."""
    from latentcomm.stream import is_url

    if args.video is None or is_url(args.video):
        return 30.0
    if args.video.lower().endswith(".mcap"):
        return 10.0  # a recording's rate is its messages' timing; without --fps, pictures are taken at 10 a second
    import av

    with av.open(args.video, options=_video_options(args)) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate or stream.guessed_rate or 25)


def _send_legacy(engine, args, image) -> int:
    from latentcomm.sender import format_report, send_image

    report = send_image(
        engine,
        image,
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
        print(json.dumps({**report.as_dict(), "delivery": "unconfirmed"}), flush=True)
    else:
        print(format_report(report), flush=True)
    return 0


def _send_v2(codec, args, images, key=None, texts=None) -> int:
    from tqdm import tqdm

    from latentcomm.sender import send_images_v2

    ok = failed = 0
    # A folder's progress on stderr (a terminal only: tqdm's disable=None), beside the per-image lines.
    bar = tqdm(total=len(images), unit="image", desc="sending", disable=None if len(images) > 1 else True)
    with _client(args, key) as client, bar:
        for r in send_images_v2(codec, images, client, args.size, args.send_original, texts, args.name):
            bar.update(1)
            ok += bool(r["acknowledged"])
            failed += not r["acknowledged"]
            if args.json:
                print(json.dumps(r), flush=True)
            elif len(images) == 1 and "error" not in r:
                print(_single_report(r), flush=True)
            elif "error" in r:
                print(f"[{r['seq']}] {r['image']}: NOT SENT: {r['error']}", flush=True)
            else:
                verdict = "acknowledged" if r["acknowledged"] else f"REFUSED ({r['ack_status']}: {r['ack_message']})"
                how = (
                    f"{r['dtype']}/{r['compression']}" if r["codec"] == "vae" else f"learned, quality {r['quality']:g}"
                )
                if r.get("fits_target") is False:
                    how += f", DOES NOT FIT {r['target_bytes']:,} bytes even at quality 1"
                print(
                    f"[{r['seq']}] {r['image']}: {r['payload_bytes']:,} byte latent ({how}, "
                    f"{r['bpp']:.3f} bpp), encode {r['encode_s']:.3f} s, send+ack {r['send_s']:.3f} s: {verdict}",
                    flush=True,
                )
    summary = f"{ok} of {ok + failed} image(s) acknowledged"
    print(json.dumps({"summary": True, "acknowledged": ok, "failed": failed}) if args.json else summary, flush=True)
    if failed:
        print(f"error: {failed} image(s) were not acknowledged (see above)", file=sys.stderr)
        return 1
    return 0


def _single_report(r: dict) -> str:
    """One v2 image: the same report the legacy path prints, plus the codec's and the receiver's answer."""
    how = f"{r['dtype']}/{r['compression']}" if r["codec"] == "vae" else "learned, entropy-coded"
    if "entropy_model" in r:
        how += " with the " + {"context": "context model"}.get(r["entropy_model"], r["entropy_model"])
    if r.get("postfilter"):
        how += ", post-filtered"
    lines = [
        f"Image:                 {r['image']} -> {r['image_size'][1]}x{r['image_size'][0]}",
        f"Model:                 {r['model']}",
        f"Original file size:    {r['original_file_bytes']:,} bytes",
        f"Latent payload size:   {r['payload_bytes']:,} bytes ({how}, latent {tuple(r['latent_shape'])}, "
        f"{r['bpp']:.3f} bpp)",
    ]
    if "quality" in r:
        fit = ""
        if "target_bytes" in r:
            fit = (
                f" (best that fits {r['target_bytes']:,} bytes)"
                if r["fits_target"]
                else (f" (DOES NOT FIT {r['target_bytes']:,} bytes even at quality 1)")
            )
        lines.append(f"Quality:               {r['quality']:g}{fit}")
    lines += [
        f"Compression ratio:     {r['compression_ratio']:.2f}x vs file, {r['raw_compression_ratio']:.2f}x vs raw RGB",
        f"Encoding time:         {r['encode_s'] + r['compress_s']:.3f} s"
        + (f" ({r['refine_s']:.1f} s of it refining the latent, {r['refine_steps']} steps)" if "refine_s" in r else ""),
        f"Transmission time:     {r['send_s']:.4f} s including the acknowledgement ({r['frame_bytes']:,} bytes "
        "on the wire)",
        "Receiver:              "
        + ("acknowledged" if r["acknowledged"] else f"REFUSED ({r['ack_status']}: {r['ack_message']})"),
    ]
    return "\n".join(lines)


def entry() -> None:
    sys.exit(run(main))
