"""Latent codec: quantize a latent tensor and compress it, and the exact inverse.

This module knows the legacy latent encodings of the original scripts:
- flag 2: float16, little-endian (numpy's native order on every machine the scripts ran on);
- flag 0: int8 with value = clip(round(latent * 127), -127, 127), decoded as int8 / 127. It can
  only carry latents in [-1, 1]: raw SD VAE latents spread several units wide, so most of their
  energy is clipped away. ``clipped_fraction`` reports how much, so users see the damage.

The payload is gzip of the quantized values' bytes. Decompression is bounded by the size the header
promises, so a tiny "gzip bomb" cannot make the receiver allocate more than that.
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from latentcomm.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:  # torch only where a latent is handled: video frames use this module's ids without it
    import torch

FLAG_INT8 = 0
FLAG_FLOAT16 = 2
#: ``--dtype`` names -> legacy header flags.
DTYPE_FLAGS = {"f16": FLAG_FLOAT16, "i8": FLAG_INT8}
_NUMPY_DTYPES = {FLAG_FLOAT16: np.dtype("<f2"), FLAG_INT8: np.dtype("i1")}


@dataclass(frozen=True)
class EncodedLatent:
    """A latent ready for the wire: header flag, latent geometry and gzip payload."""

    flag: int
    channels: int
    height: int
    width: int
    payload: bytes
    clipped_fraction: float = 0.0  # int8 only: share of values outside [-1, 1]


def raw_latent_size(flag: int, channels: int, height: int, width: int) -> int:
    """Bytes of the uncompressed latent for a given flag and shape."""
    if flag not in _NUMPY_DTYPES:
        raise RemoteProtocolError(f"unknown latent flag {flag} (expected 0 = int8 or 2 = float16)")
    return channels * height * width * _NUMPY_DTYPES[flag].itemsize


def quantize(latent: torch.Tensor, flag: int) -> tuple[np.ndarray, float]:
    """Latent tensor -> numpy array in the flag's wire dtype, and the fraction clipped (int8)."""
    z = latent.detach().float().cpu().numpy()
    if flag == FLAG_FLOAT16:
        if not np.isfinite(z).all():
            raise LocalProtocolError("latent contains NaN or inf; refusing to send it")
        return z.astype("<f2"), float((np.abs(z) > 65504).mean())
    if flag == FLAG_INT8:
        clipped = float((np.abs(z) > 1.0).mean())
        return np.clip(np.round(z * 127.0), -127, 127).astype(np.int8), clipped
    raise LocalProtocolError(f"unknown latent flag {flag}")


def encode_latent(latent: torch.Tensor, flag: int = FLAG_FLOAT16, level: int = 9) -> EncodedLatent:
    """Quantize a (1, C, h, w) latent and gzip it, exactly as the original sender does."""
    if latent.dim() != 4 or latent.shape[0] != 1:
        raise LocalProtocolError(f"legacy frames carry one latent shaped (1, C, h, w), got {tuple(latent.shape)}")
    _, c, h, w = latent.shape
    if not (0 < h < 65536 and 0 < w < 65536):
        raise LocalProtocolError(f"latent {h}x{w} does not fit the legacy header's 16-bit sizes")
    q, clipped = quantize(latent, flag)
    payload = gzip.compress(q.tobytes(), compresslevel=level, mtime=0)
    return EncodedLatent(flag, c, h, w, payload, clipped)


def bounded_gunzip(payload: bytes, expected: int) -> bytes:
    """Gunzip ``payload`` producing exactly ``expected`` bytes, never allocating more than that.

    Raises RemoteProtocolError for corrupt data or a size different from the header's promise.
    """
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(payload, expected + 1)
    except zlib.error as exc:
        raise RemoteProtocolError(f"payload is not valid gzip data: {exc}") from None
    if len(out) > expected:
        raise RemoteProtocolError(f"payload inflates past the {expected} bytes the header promises")
    if not d.eof:
        raise RemoteProtocolError("payload is truncated gzip data")
    if len(out) != expected:
        raise RemoteProtocolError(f"payload holds {len(out)} bytes but the header's latent needs {expected}")
    return out


def decode_latent(flag: int, channels: int, height: int, width: int, payload: bytes) -> torch.Tensor:
    """gzip payload -> float32 latent (1, C, h, w); the inverse of ``encode_latent``."""
    import torch

    expected = raw_latent_size(flag, channels, height, width)
    raw = bounded_gunzip(payload, expected)
    arr = np.frombuffer(raw, dtype=_NUMPY_DTYPES[flag]).astype(np.float32)
    if flag == FLAG_INT8:
        arr = arr / 127.0
    elif not np.isfinite(arr).all():
        raise RemoteProtocolError("latent contains NaN or inf values")
    return torch.from_numpy(arr.reshape(1, channels, height, width))


# --- Versioned (v2) latent encodings and compressions ---------------------------------------------

ENC_FLOAT16 = 0
ENC_BFLOAT16 = 1
ENC_INT8_LEGACY = 2
ENC_UINT8_AFFINE = 3
#: The learned codec's entropy-coded bitstream (latentcomm.codecs.LearnedCodec); no raw size.
ENC_LEARNED = 4
#: One coded video access unit (latentcomm.codecs.video: H.264, AV1, VP9 through PyAV); no raw size.
ENC_VIDEO = 5
#: ``--dtype`` names for v2 frames -> encoding codes.
V2_ENCODINGS = {"f16": ENC_FLOAT16, "bf16": ENC_BFLOAT16, "i8": ENC_INT8_LEGACY, "u8": ENC_UINT8_AFFINE}
_V2_ITEMSIZE = {ENC_FLOAT16: 2, ENC_BFLOAT16: 2, ENC_INT8_LEGACY: 1, ENC_UINT8_AFFINE: 1}

COMP_NONE = 0
COMP_GZIP = 1
COMP_ZSTD = 2
COMPRESSIONS = {"none": COMP_NONE, "gzip": COMP_GZIP, "zstd": COMP_ZSTD}


def check_encoding(encoding: int) -> None:
    """RemoteProtocolError unless ``encoding`` is a v2 latent encoding this version knows."""
    if encoding not in _V2_ITEMSIZE and encoding not in (ENC_LEARNED, ENC_VIDEO):
        raise RemoteProtocolError(f"unknown latent encoding {encoding}")


def v2_raw_size(encoding: int, c: int, h: int, w: int) -> int:
    """Bytes of an uncompressed VAE latent in ``encoding`` (the learned codec has no raw form)."""
    if encoding not in _V2_ITEMSIZE:
        raise RemoteProtocolError(f"unknown latent encoding {encoding}")
    return c * h * w * _V2_ITEMSIZE[encoding]


def v2_quantize(latent: torch.Tensor, encoding: int) -> tuple[bytes, list[tuple[float, float]]]:
    """(1, C, h, w) latent -> raw bytes and, for uint8, per-channel (scale, offset).

    uint8 maps each channel's [min, max] onto 0..255, so it adapts to any model's latent range (the
    SD VAE's several-unit spread included) where the legacy int8 rule clips.
    """
    import torch

    z = latent.detach().float().cpu()
    if not torch.isfinite(z).all():
        raise LocalProtocolError("latent contains NaN or inf; refusing to send it")
    if encoding == ENC_FLOAT16:
        return z.numpy().astype("<f2").tobytes(), []
    if encoding == ENC_BFLOAT16:
        return z.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes(), []
    if encoding == ENC_INT8_LEGACY:
        return quantize(z, FLAG_INT8)[0].tobytes(), []
    if encoding == ENC_UINT8_AFFINE:
        flat = z[0].reshape(z.shape[1], -1)
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
        scale = torch.where(hi > lo, (hi - lo) / 255.0, torch.ones_like(hi))
        q = torch.round((flat - lo[:, None]) / scale[:, None]).clamp(0, 255).to(torch.uint8)
        return q.numpy().tobytes(), [(float(s), float(o)) for s, o in zip(scale, lo, strict=True)]
    raise LocalProtocolError(f"unknown latent encoding {encoding}")


def v2_dequantize(
    raw: bytes, encoding: int, shape: tuple[int, int, int], params: list[tuple[float, float]]
) -> torch.Tensor:
    import torch

    c, h, w = shape
    if encoding == ENC_FLOAT16:
        arr = np.frombuffer(raw, "<f2").astype(np.float32)
    elif encoding == ENC_BFLOAT16:
        arr = torch.from_numpy(np.frombuffer(raw, "<i2").copy()).view(torch.bfloat16).float().numpy()
    elif encoding == ENC_INT8_LEGACY:
        arr = np.frombuffer(raw, "i1").astype(np.float32) / 127.0
    elif encoding == ENC_UINT8_AFFINE:
        if len(params) != c:
            raise RemoteProtocolError(f"uint8 latent needs {c} channel parameters, got {len(params)}")
        p = np.asarray(params, dtype=np.float32)
        arr = np.frombuffer(raw, "u1").astype(np.float32).reshape(c, -1) * p[:, :1] + p[:, 1:]
    else:
        raise RemoteProtocolError(f"unknown latent encoding {encoding}")
    if not np.isfinite(arr).all():
        raise RemoteProtocolError("latent contains NaN or inf values")
    return torch.from_numpy(np.ascontiguousarray(arr).reshape(1, c, h, w))


def compress(raw: bytes, compression: int) -> bytes:
    if compression == COMP_NONE:
        return raw
    if compression == COMP_GZIP:
        return gzip.compress(raw, compresslevel=9, mtime=0)
    if compression == COMP_ZSTD:
        import zstandard

        return zstandard.ZstdCompressor(level=19).compress(raw)
    raise LocalProtocolError(f"unknown compression {compression}")


def bounded_decompress(payload: bytes, compression: int, expected: int) -> bytes:
    """Decompress to exactly ``expected`` bytes, never producing more (bomb-safe)."""
    if compression == COMP_NONE:
        out = payload
    elif compression == COMP_GZIP:
        return bounded_gunzip(payload, expected)
    elif compression == COMP_ZSTD:
        import zstandard

        try:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload)) as reader:
                out = reader.read(expected + 1)
        except zstandard.ZstdError as exc:
            raise RemoteProtocolError(f"payload is not valid zstd data: {exc}") from None
        if len(out) > expected:
            raise RemoteProtocolError(f"payload inflates past the {expected} bytes the header promises")
    else:
        raise RemoteProtocolError(f"unknown compression {compression}")
    if len(out) != expected:
        raise RemoteProtocolError(f"payload holds {len(out)} bytes but the header's latent needs {expected}")
    return out
