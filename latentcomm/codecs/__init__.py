"""Codecs behind one interface (:mod:`latentcomm.codecs.base`): the VAE latent, the learned image
codec and the video codecs, each one module registered in :data:`~latentcomm.codecs.base.REGISTRY`."""

from latentcomm.codecs.base import REGISTRY, CodecOptions, Encoded, ImageCodec, codec_class, load_codec
from latentcomm.codecs.learned.codec import LEARNED_MODEL_DIR, LearnedCodec
from latentcomm.codecs.vae import VaeCodec
from latentcomm.codecs.video import VideoCodec

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
