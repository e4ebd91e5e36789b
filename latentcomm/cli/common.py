"""What the three scripts share: model/device flags, logging set-up and user-error handling."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import signal
import sys
import threading
import warnings
from collections.abc import Callable

from latentcomm.data import MODELS_ROOT
from latentcomm.errors import LatentcommError, LocalProtocolError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 65432


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks."""


def stream_name(text: str) -> str:
    """argparse type of ``--name`` (latentcomm.stream.STREAM_NAME: letters, digits, ``._-``)."""
    from latentcomm.stream import STREAM_NAME

    if not STREAM_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return text


def add_network_args(p: argparse.ArgumentParser, listening: bool) -> None:
    verb = "listen on" if listening else "send to"
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to {verb}")
    p.add_argument("--port", type=port_type, default=DEFAULT_PORT, help=f"TCP port to {verb}")


def add_key_args(p: argparse.ArgumentParser, receiver: bool) -> None:
    """--key (and, on the receiver, --insecure): sealed frames, docs/security.md."""
    if receiver:
        p.add_argument(
            "--key",
            action="append",
            default=[],
            metavar="PATH",
            help="accept only sealed frames, authenticated and decrypted with this key file (python -m latentcomm "
            "keygen PATH); repeat for several senders or fleets (each frame names its key by id). Plaintext v2 and "
            "legacy frames are then refused",
        )
        p.add_argument(
            "--insecure",
            action="store_true",
            help="allow listening beyond loopback without --key (frames travel in clear and anyone who reaches "
            "the port can send images); logged",
        )
    else:
        p.add_argument(
            "--key",
            metavar="PATH",
            help="seal every frame with this key file (authenticated encryption, v2 only; the receiver needs the "
            "same key). Create one with: python -m latentcomm keygen PATH",
        )


def check_broker_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Parser errors for broker flags that can't apply: the TLS flags are for mqtts:// and zenohs://,
    the password MQTT's."""
    scheme = (args.broker or "").partition("://")[0]
    if getattr(args, "broker_password_file", None) and scheme not in ("mqtt", "mqtts"):
        parser.error("--broker-password-file is for an MQTT broker (--broker mqtts://USER@HOST:PORT)")
    tls = [f for f in ("broker_ca", "broker_cert", "broker_key") if getattr(args, f, None)]
    if tls and scheme not in ("mqtts", "zenohs"):
        parser.error(f"--{tls[0].replace('_', '-')} needs TLS: --broker mqtts://HOST:PORT or zenohs://HOST:PORT")
    if bool(args.broker_cert) != bool(args.broker_key):
        parser.error("--broker-cert and --broker-key go together")


def add_broker_args(p: argparse.ArgumentParser, receiver: bool) -> None:
    """--broker / --topic (and the receiver's --group / --client-id): frames through MQTT or Zenoh."""
    g = p.add_argument_group("through an MQTT broker or Zenoh (instead of a TCP connection)")
    where = "listen for frames there" if receiver else "send frames there"
    g.add_argument(
        "--broker",
        metavar="URL",
        help="mqtt://HOST:PORT: publish/subscribe frames through this MQTT broker; mqtts://[USER@]HOST:PORT: the "
        "same over TLS (8883 by default), as a user (the password from --broker-password-file or "
        "LATENTCOMM_BROKER_PASSWORD, never the URL); zenoh://HOST:PORT: Zenoh, peer to peer ({where}); "
        "zenohs://HOST:PORT: the same over TLS".replace("{where}", where),
    )
    g.add_argument("--broker-ca", metavar="PEM", help="mqtts: the CA certificate(s) to verify the broker with "
                   "(default: the system's). zenohs: a sender verifies the receiver's certificate with it; a "
                   "receiver given it asks every sender for a certificate it signed (mutual TLS)")  # fmt: skip
    g.add_argument("--broker-cert", metavar="PEM", help="mqtts: this client's certificate (brokers that ask for one). "
                   "zenohs: the receiver's certificate (required there), or a sender's for mutual TLS")  # fmt: skip
    g.add_argument("--broker-key", metavar="PEM", help="the private key of --broker-cert")
    g.add_argument(
        "--broker-password-file",
        metavar="PATH",
        help="the broker user's password: the file's first line (or set LATENTCOMM_BROKER_PASSWORD)",
    )
    g.add_argument("--topic", default="default", metavar="NAME", help="stream name; senders and receivers must match")
    if not receiver:
        g.add_argument(
            "--ack-timeout",
            type=seconds,
            default=10.0,
            metavar="S",
            help="publish a frame again when no receiver acknowledged it within S seconds (a receiver died "
            "holding it, the broker restarted); --retries times at most",
        )
    if receiver:
        g.add_argument(
            "--group",
            default="receivers",
            help="shared-subscription group: receivers in one group share the frames (more receivers, more "
            "decode throughput)",
        )
        g.add_argument(
            "--client-id",
            metavar="ID",
            help="MQTT client id; give the same one after a restart to take back the frames the broker kept "
            "for this receiver (default: a new random id)",
        )
        g.add_argument(
            "--viewer",
            action="store_true",
            help="watch the topic's video streams without taking part in the group: decode every stream (asking "
            "its sender for a key frame on joining), acknowledge none. Any number of viewers may watch; the group's "
            "receivers each own whole streams",
        )
        g.add_argument(
            "--session-expiry",
            type=int,
            default=10,
            metavar="S",
            help="the broker keeps this receiver's session (its place in the group and the frames queued for it) "
            "S seconds after it disconnects; after that the group's frames go to the receivers still there, and "
            "senders publish again what it held",
        )


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def add_model_args(p: argparse.ArgumentParser, auto: bool = False, default: str | None = "vae") -> None:
    """--codec (its choices are the codec registry's; ``auto``: the sender's choice for streams), --model,
    --device, --precision. ``default=None`` lets a command tell an explicit --codec vae from the default
    (the receiver: without torch the default falls back to video only, an explicit one is an error)."""
    from latentcomm.codecs.base import REGISTRY

    p.add_argument(
        "--codec",
        choices=[*REGISTRY, *(["auto"] if auto else [])],
        default=None if auto else default,
        help="vae: an AutoencoderKL latent (the original scripts' path, the only one legacy frames carry); "
        "learned: the learned image codec in models/latentcomm-lic (a latent trained for rate, entropy-coded; "
        "far fewer bytes for the same picture, v2 frames only, needs no SD VAE); h264, av1, vp9: a real video "
        "codec (libx264, SVT-AV1, libvpx through PyAV) for streams (--video, --camera, a folder with --fps): "
        "motion-compensated, the best picture per bit for live video. Receivers always accept the video codecs"
        + (
            ". auto (the default for --video and --camera; vae otherwise): the video codec, preset and, under a "
            "rate, picture size this machine runs in real time, measured at start-up, said once on stderr"
            if auto
            else ""
        ),
    )
    p.add_argument(
        "--model",
        default="auto",
        metavar="ID_OR_DIR",
        help="model to use. --codec vae: a Hugging Face Hub id (e.g. stabilityai/sd-vae-ft-ema) or a local "
        "diffusers folder; 'auto' uses stabilityai/sd-vae-ft-ema if cached or downloadable, else the "
        "embedded model in models/latentcomm-kl-f8. --codec learned: a learned codec folder; 'auto' = "
        "models/latentcomm-lic. Sender and receiver must use the same model.",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        help="where the autoencoder runs; auto = cuda, else mps, else cpu",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="compute precision; auto = bf16 on CPUs with AMX, fp16 on CUDA (with an fp32 "
        "retry if the output overflows), fp32 otherwise. The wire format does not depend on it.",
    )


def add_rate_args(p: argparse.ArgumentParser) -> None:
    """--quality and --target-bytes: the learned codec's rate control."""
    p.add_argument(
        "--quality",
        type=number(1),
        default=None,
        metavar="Q",
        help="--codec learned: quality from 1 (fewest bytes) to the model's top level (11 for the shipped model: best "
        "picture); fractions allowed (default: the model's default_quality, 7 for the shipped model)",
    )
    p.add_argument(
        "--target-bytes",
        type=int,
        default=None,
        metavar="N",
        help="--codec learned: for each image, the best quality whose payload fits N bytes (quality 1 if none "
        "does; the report says so)",
    )
    p.add_argument(
        "--context",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--codec learned: code images with the model's context model (4-6%% fewer bytes, about 0.1 s more "
        "to encode and to decode at 768x512). --no-context sends hyperprior-only frames, for fleets whose "
        "receivers' decode rate is the bottleneck rather than the link; streams always code their key frames "
        "that way",
    )
    p.add_argument(
        "--postfilter",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--codec learned: fit a 3x3 linear filter from the decoded picture towards the original and send "
        "its 96 bytes in the frame where it pays for them (measured +0.08 dB at 0.1-0.15 bpp on the held-out "
        "photos; about one decode more to encode). --no-postfilter skips it; streams never send one",
    )
    p.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="STEPS",
        help="--codec learned: before coding each image, take STEPS gradient steps on its latent towards fewer "
        "bytes and less error (encode-time refinement; the receiver needs nothing new). 10 measured +0.1 dB at "
        "the same bytes for about 30 s per megapixel on 2 cores: for metered links where the sender has time. "
        "Single images only, not streams; 0 = off",
    )


def shipped_learned_levels() -> int | None:
    """Quality levels of the shipped learned codec, read from its config.json (no torch import), so a
    flag mistake is a parser error before any model loads; None if the folder isn't readable."""

    try:
        return len(json.loads((MODELS_ROOT / "latentcomm-lic" / "config.json").read_text())["lambdas"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_rate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Parser errors for rate flags that can't apply (exit status 2, like any flag mistake)."""
    if args.codec != "learned" and (args.quality is not None or args.target_bytes is not None):
        parser.error("--quality and --target-bytes need --codec learned")
    if args.codec != "learned" and not args.context:
        parser.error("--no-context needs --codec learned")
    if args.codec != "learned" and not getattr(args, "postfilter", True):
        parser.error("--no-postfilter needs --codec learned")
    refine = getattr(args, "refine", 0)
    if refine and args.codec != "learned":
        parser.error("--refine needs --codec learned")
    if refine:
        from latentcomm.codecs import LearnedCodec  # torch, but only when refining anyway

        try:
            LearnedCodec.check_refine_steps(refine)
        except LocalProtocolError as e:
            parser.error(str(e))
    if args.quality is not None and args.target_bytes is not None:
        parser.error("give --quality or --target-bytes, not both")
    if args.quality is not None:
        top = shipped_learned_levels() if getattr(args, "model", "auto") == "auto" else None
        if not args.quality >= 1 or (top is not None and args.quality > top):
            # Another --model folder's top level is checked when the codec loads it (exit 1).
            parser.error(f"--quality must be between 1 and {top or 'the model top level'}, got {args.quality}")
    if args.target_bytes is not None and args.target_bytes <= 0:
        parser.error("--target-bytes must be positive")


def number(
    lo: float | None = None, hi: float | None = None, *, above: bool = False, integer: bool = False
) -> Callable[[str], float]:
    """An argparse type for a finite number in range: NaN, infinities and out-of-range values are a
    one-line parser error (exit 2), never a traceback or a silent never-ending timeout.

    ``above``: ``lo`` itself is excluded (a timeout must be > 0, a wait may be 0).
    """

    def convert(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {'whole ' if integer else ''}number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if lo is not None and (value <= lo if above else value < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {lo:g}, got {text!r}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi:g}, got {text!r}")
        return value

    convert.__name__ = "int" if integer else "number"
    return convert


#: Seconds: positive and finite (a day at most; longer is a typo, not a timeout).
seconds = number(0.001, 86400)
#: Seconds that may be 0 (a wait that is off).
seconds_or_zero = number(0, 86400)


def bandwidth_arg(text: str):
    """The argparse ``type`` of --bandwidth (:class:`latentcomm.ratecontrol.Bandwidth`): '256k', 'auto',
    'auto:1M' parsed once, here; a one-line error otherwise."""
    from latentcomm.ratecontrol import Bandwidth, parse_bandwidth

    try:
        return Bandwidth(*parse_bandwidth(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def byte_size(text: str) -> int:
    """'500M', '2G', '64k', '1000000' -> bytes (k, M, G: powers of 1024); positive and finite."""

    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in "kmgt" else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500M, 2G)") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive, finite size, got {text!r}")
    return int(value)


def port_type(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def host_port(value: str) -> tuple[str, int]:
    """'[HOST:]PORT' -> (host, port), 127.0.0.1 when no host is given (argparse type)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "127.0.0.1", port_type(port)


LOG_LEVELS = ("debug", "info", "warning", "error")


def add_output_args(p: argparse.ArgumentParser) -> None:
    """``--version`` and how much the library logs (``-v``, ``-q``, ``--log-level``)."""
    from latentcomm import __version__

    p.add_argument("--version", action="version", version=f"latentcomm {__version__}")
    level = p.add_mutually_exclusive_group()
    level.add_argument("-v", "--verbose", action="store_true", help="log debug lines too (same as --log-level debug)")
    level.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only (--log-level warning)")
    level.add_argument("--log-level", choices=LOG_LEVELS, help="the library's log level on stderr (default: info)")


def setup_logging(verbose: bool = False, args: argparse.Namespace | None = None) -> None:
    """Library logs to stderr as one line each; INFO shows which model was chosen and load times.
    ``args``: the flags of :func:`add_output_args`, when the command has them."""
    level = logging.DEBUG if verbose else logging.INFO
    if args is not None:
        if getattr(args, "log_level", None):
            level = getattr(logging, args.log_level.upper())
        elif getattr(args, "verbose", False):
            level = logging.DEBUG
        elif getattr(args, "quiet", False):
            level = logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    warnings.filterwarnings("ignore", message=".*should be kept in float32.*")


def stop_on_signals() -> threading.Event:
    """Make Ctrl-C and SIGTERM set an Event (a clean, drained stop) instead of raising.

    A second signal raises KeyboardInterrupt, for when the clean stop itself is stuck.
    """
    stop = threading.Event()

    def handler(signum, frame):  # noqa: ARG001
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def run(main: Callable[[], int]) -> int:
    """Run a script's main: user errors become one line on stderr and exit status 1, no traceback."""

    try:
        return main()
    except LatentcommError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
