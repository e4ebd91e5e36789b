"""The VAE codec: an AutoencoderKL latent (the SD VAE or the embedded model) quantized to one of the
v2 encodings (f16, bf16, i8, u8) and compressed with zstd/gzip. What latentcomm always sent."""

from __future__ import annotations

import logging
import time

import torch

from latentcomm.codecs.base import CodecOptions, Encoded, ImageCodec
from latentcomm.engine import Engine
from latentcomm.errors import RemoteProtocolError
from latentcomm.images import crop_to, pad_to_multiple
from latentcomm.wire.encodings import (
    COMPRESSIONS,
    ENC_LEARNED,
    V2_ENCODINGS,
    bounded_decompress,
    compress,
    v2_dequantize,
    v2_quantize,
    v2_raw_size,
)

log = logging.getLogger(__name__)


class VaeCodec(ImageCodec):
    """An AutoencoderKL latent in one of the v2 encodings (f16, bf16, i8, u8) plus zstd/gzip."""

    kind = "vae"
    decodes_legacy_frames = True

    @classmethod
    def from_options(cls, name: str, options: CodecOptions) -> VaeCodec:

        return cls(Engine(options.model, options.device, options.precision), options.dtype, options.compression)

    def __init__(self, engine, dtype: str = "f16", compression: str = "zstd") -> None:

        self.engine = engine
        self.dtype = self.label = dtype
        self.encoding = V2_ENCODINGS[dtype]
        self.compression_label = compression
        self.compression = COMPRESSIONS[compression]
        self.model_id = engine.model_id
        self.source = engine.source
        self.load_seconds = engine.loaded.load_seconds

    def encode(self, image: torch.Tensor) -> Encoded:

        t0 = time.perf_counter()
        padded, _ = pad_to_multiple(image)
        latent = self.engine.encode(padded)
        t1 = time.perf_counter()
        raw, params = v2_quantize(latent, self.encoding)
        payload = compress(raw, self.compression)
        clipped = float((latent.abs() > 1).float().mean()) if self.dtype == "i8" else 0.0
        facts = {
            "encode_s": t1 - t0,
            "compress_s": time.perf_counter() - t1,
            "clipped_fraction": clipped,
            "latent_shape": list(latent.shape),
        }
        return Encoded(self.encoding, self.compression, tuple(latent.shape[1:]), payload, tuple(params), facts)

    def decode(self, encoding, compression, shape, payload, params, image_size) -> torch.Tensor:

        c, h, w = shape
        oh, ow = image_size
        if encoding == ENC_LEARNED:
            raise RemoteProtocolError("frame holds a learned-codec bitstream but names a VAE model")
        if c != self.engine.latent_channels:
            raise RemoteProtocolError(f"latent has {c} channels, the model needs {self.engine.latent_channels}")
        s = self.engine.stride
        if not (h * s - s < oh <= h * s and w * s - s < ow <= w * s):
            raise RemoteProtocolError(f"image size {ow}x{oh} does not match a {w}x{h} latent")
        raw = bounded_decompress(payload, compression, v2_raw_size(encoding, c, h, w))
        latent = v2_dequantize(raw, encoding, shape, list(params))
        return crop_to(self.engine.decode(latent), image_size)


# --- the learned codec ------------------------------------------------------------------------------
