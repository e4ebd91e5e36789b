"""Entropy coding of the learned codec's integer latents into real bytes (constriction's ANS coder).

The probability tables are what sender and receiver must share exactly, so they are built once per
model, in float64, from fixed inputs (CompressAI's ``update()``):

- 64 tables for the latent ``y``, one per scale of :func:`latentcomm.learned.scale_table`, each a
  zero-mean quantized Gaussian over the symbols -Y_RANGE..Y_RANGE; an element is coded with the table
  its scale *index* names, and the index comes from integers only (see ``entropy_parameters``).
- one table per hyper-latent channel, from the learned factorized density.

constriction turns each float table into a fixed-point categorical model with its own integer
arithmetic (``perfect=False``), which is deterministic for identical float input; every symbol in
range keeps a non-zero probability, so any clipped symbol stays encodable.

Stream order: the decoder needs ``z`` first (it decides the tables of ``y``), then ``y`` grouped by
table. ANS is a stack, so the encoder pushes ``y`` groups in reverse, then ``z`` in reverse.
"""

from __future__ import annotations

import functools
import logging

import constriction
import numpy as np

from latentcomm.codecs.learned.model import SCALE_LEVELS, Y_RANGE, Z_RANGE, scale_table
from latentcomm.errors import RemoteProtocolError

log = logging.getLogger(__name__)

_Categorical = constriction.stream.model.Categorical


@functools.lru_cache(maxsize=1)
def gaussian_tables() -> np.ndarray:
    """(64, 2*Y_RANGE+1) float64 probabilities of quantized zero-mean Gaussians, tails folded in."""
    from scipy.special import ndtr

    k = np.arange(-Y_RANGE, Y_RANGE + 1, dtype=np.float64)
    out = np.empty((SCALE_LEVELS, k.size))
    for i, s in enumerate(scale_table()):
        upper = ndtr((k + 0.5) / s)
        lower = ndtr((k - 0.5) / s)
        upper[-1], lower[0] = 1.0, 0.0
        out[i] = np.maximum(upper - lower, 0.0)
    return out / out.sum(axis=1, keepdims=True)


def _groups(y_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Element order grouped by table (stable, so both sides agree) and each table's element count."""
    idx = y_index.astype(np.int64).ravel()
    return np.argsort(idx, kind="stable"), np.bincount(idx, minlength=SCALE_LEVELS)


class EntropyCoder:
    """Codes (z symbols, y symbols, y scale indexes) to bytes and back for one model's tables."""

    def __init__(self, z_tables: np.ndarray) -> None:
        self.y_models = [_Categorical(p, perfect=False) for p in gaussian_tables()]
        self.z_models = [_Categorical(np.asarray(p, np.float64), perfect=False) for p in z_tables]

    def encode(self, z: np.ndarray, y: np.ndarray, y_index: np.ndarray) -> bytes:
        """z: (Cz, h, w) ints in [-Z_RANGE, Z_RANGE]; y, y_index: (Cy, H, W) ints. Returns the bitstream."""
        return self.encode_segments(z, [(y, y_index)])

    def encode_segments(self, z: np.ndarray, segments: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
        """z, then each (y symbols, y scale indexes) segment in the order the decoder will ask for them.

        With a context model each pass of the decoder is one segment: it learns the next segment's
        scale indexes only from the symbols of the segments before it.
        """
        if z.shape[0] != len(self.z_models):
            raise ValueError(f"z has {z.shape[0]} channels, the tables {len(self.z_models)}")
        coder = constriction.stream.stack.AnsCoder()
        for y, y_index in reversed(segments):
            ys = (np.clip(y, -Y_RANGE, Y_RANGE) + Y_RANGE).astype(np.int32).ravel()
            order, counts = _groups(y_index)
            bounds = np.concatenate([[0], np.cumsum(counts)])
            sorted_syms = ys[order]
            for i in reversed(range(SCALE_LEVELS)):
                if counts[i]:
                    coder.encode_reverse(sorted_syms[bounds[i] : bounds[i + 1]], self.y_models[i])
        zs = (np.clip(z, -Z_RANGE, Z_RANGE) + Z_RANGE).astype(np.int32).reshape(z.shape[0], -1)
        for c in reversed(range(zs.shape[0])):
            coder.encode_reverse(zs[c], self.z_models[c])
        return coder.get_compressed().astype("<u4").tobytes()

    def _coder(self, data: bytes):
        if len(data) % 4:
            raise RemoteProtocolError(f"learned bitstream of {len(data)} bytes is not a whole number of 32-bit words")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        try:
            return constriction.stream.stack.AnsCoder(words)
        except ValueError as exc:
            raise RemoteProtocolError(f"learned bitstream is invalid: {exc}") from None

    def decode_z(self, data: bytes, shape: tuple[int, int, int]):
        """First half of decoding: the hyper-latent (C, h, w) as int32, and the coder to go on with."""
        coder = self._coder(data)
        c, h, w = shape
        if c != len(self.z_models):
            raise RemoteProtocolError(f"hyper-latent has {c} channels, the model {len(self.z_models)}")
        z = np.empty((c, h * w), np.int32)
        for ch in range(c):
            z[ch] = coder.decode(self.z_models[ch], h * w)
        return (z - Z_RANGE).reshape(c, h, w), coder

    def decode_y(self, coder, y_index: np.ndarray) -> np.ndarray:
        """Second half: the latent symbols, given the scale indexes computed from ``z`` (or one
        segment's, called once per segment)."""
        order, counts = _groups(y_index)
        out = np.empty(order.size, np.int32)
        pos = 0
        for i in range(SCALE_LEVELS):
            if counts[i]:
                out[order[pos : pos + counts[i]]] = coder.decode(self.y_models[i], int(counts[i]))
                pos += counts[i]
        return (out - Y_RANGE).reshape(y_index.shape)
