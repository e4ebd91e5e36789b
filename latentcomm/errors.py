"""Typed exceptions, split by whose fault a failure is.

Scripts catch ``LatentcommError`` and print its message as one line; anything else is a bug and
keeps its traceback. Protocol errors are split like h11's: ``RemoteProtocolError`` means the peer
sent something invalid (log it, drop or answer that peer, keep serving), ``LocalProtocolError``
means this process tried to build an invalid frame (a bug or misuse on our side).
"""

from __future__ import annotations

import importlib
from types import ModuleType


class LatentcommError(Exception):
    """Base of every error a user can cause; its message is one line meant for the user."""


class ImageError(LatentcommError):
    """An input image is missing, unreadable or not an image."""


class ModelLoadError(LatentcommError):
    """The autoencoder could not be loaded (offline, not cached, bad path, wrong class)."""


class DeviceError(LatentcommError):
    """The requested compute device or precision is not available."""


class ProtocolError(LatentcommError):
    """A frame could not be built or parsed."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame (its fault: drop it, keep serving)."""


class LocalProtocolError(ProtocolError):
    """We were asked to build a frame the protocol cannot express (our fault)."""


class TransportError(LatentcommError):
    """A network operation failed: refused connection, port in use, timeout, peer hung up."""


class MissingExtra(LatentcommError):
    """A feature whose packages this install left out (pyproject.toml's extras: a video-only device
    installs the core, without torch, the dashboard's web server or Foxglove's SDK)."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """``module``, imported, or :class:`MissingExtra` saying which extra brings it: the one line a user
    of a light install gets instead of a traceback when a flag needs more than the core."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise MissingExtra(
            f"{feature} needs {exc.name or module!r}, which this install lacks: "
            f"pip install 'latentcomm[{extra}]' (or -r requirements.txt)"
        ) from None
