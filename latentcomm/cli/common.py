"""What the three scripts share: model/device flags, logging set-up and user-error handling."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 65432


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks."""


def add_network_args(p: argparse.ArgumentParser, listening: bool) -> None:
    verb = "listen on" if listening else "send to"
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to {verb}")
    p.add_argument("--port", type=port_type, default=DEFAULT_PORT, help=f"TCP port to {verb}")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="auto",
        metavar="ID_OR_DIR",
        help="AutoencoderKL to use: a Hugging Face Hub id (e.g. stabilityai/sd-vae-ft-ema) or a local "
        "diffusers folder. 'auto' uses stabilityai/sd-vae-ft-ema if cached or downloadable, else the "
        "embedded model in models/latentcomm-kl-f8. Sender and receiver must use the same model.",
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
        help="compute precision; auto = bf16 on CPUs with AMX/AVX512-BF16, fp16 on CUDA (with an fp32 "
        "retry if the output overflows), fp32 otherwise. The wire format does not depend on it.",
    )


def port_type(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def setup_logging(verbose: bool = False) -> None:
    """Library logs to stderr as one line each; INFO shows which model was chosen and load times."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import warnings

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
    from latentcomm.errors import LatentcommError

    try:
        return main()
    except LatentcommError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
