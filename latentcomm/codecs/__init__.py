"""Codecs behind one interface (:mod:`latentcomm.codecs.base`): the VAE latent, the learned image
codec and the video codecs, each one module registered in :data:`~latentcomm.codecs.base.REGISTRY`.

The implementations load on first use (``from latentcomm.codecs import LearnedCodec`` works as
ever), so a live H.264 sender, which imports ``latentcomm.codecs.video``, never loads the learned
codec's model, entropy coder and metrics.
"""

from __future__ import annotations

import importlib
from typing import Any

from latentcomm.codecs.base import REGISTRY, CodecOptions, Encoded, ImageCodec, codec_class, load_codec

#: Names this package hands out from the implementation modules, loaded when first asked for.
_LAZY = {
    "LEARNED_MODEL_DIR": "latentcomm.codecs.learned.codec",
    "LearnedCodec": "latentcomm.codecs.learned.codec",
    "VaeCodec": "latentcomm.codecs.vae",
    "VideoCodec": "latentcomm.codecs.video",
}

__all__ = [
    "LEARNED_MODEL_DIR",
    "REGISTRY",
    "CodecOptions",
    "Encoded",
    "ImageCodec",
    "LearnedCodec",
    "VaeCodec",
    "VideoCodec",
    "codec_class",
    "load_codec",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
