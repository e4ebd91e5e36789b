"""The learned image codec as an :class:`~latentcomm.codecs.base.ImageCodec`: a latent trained for
rate (``latentcomm.codecs.learned.model``), entropy-coded with constriction, with a continuous quality,
a byte-budget search, inter frames for streams, a coded post-filter and optional refinement."""

from __future__ import annotations

import hashlib
import logging
import math
import struct
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from latentcomm.codecs.base import CodecOptions, Encoded, ImageCodec
from latentcomm.codecs.learned import postfilter
from latentcomm.codecs.learned.entropy import EntropyCoder
from latentcomm.codecs.learned.model import Y_RANGE, Z_RANGE, LearnedCodecModel
from latentcomm.codecs.learned.postfilter import FILTER_BYTES
from latentcomm.codecs.learned.refine import MAX_REFINE_STEPS, refine_latent
from latentcomm.data import MODELS_ROOT
from latentcomm.device import configure_threads, resolve_device, resolve_precision
from latentcomm.errors import LocalProtocolError, ModelLoadError, RemoteProtocolError
from latentcomm.images import tensor_to_uint8
from latentcomm.wire.encodings import (
    COMP_NONE,
    ENC_LEARNED,
)

log = logging.getLogger(__name__)

#: The learned codec shipped with the repository.
LEARNED_MODEL_DIR = MODELS_ROOT / "latentcomm-lic"


#: Payload prefix of a learned-codec frame: format version, quality in thousandths, CRC-32 of the
#: integer latent (z then y, int16 little-endian). The ANS words (uint32 LE) follow.
LEARNED_HEADER = struct.Struct("!BHI")
LEARNED_VERSION = 1
#: Inter frames (streams): version 2, quality, CRC of (z, block mask, coded y), reference tag.
INTER_HEADER = struct.Struct("!BHI8s")
INTER_VERSION = 2
#: A key frame whose latent is coded with the model's context model (version 1: the hyperprior alone).
CONTEXT_VERSION = 3
#: A context-coded key frame followed by a post-filter (:mod:`latentcomm.codecs.learned.postfilter`): the header,
#: the filter's coefficients, then the ANS words. Its CRC-32 covers the coefficients and the symbols.
FILTERED_VERSION = 4
#: Side of a block of latent positions that an inter frame codes or copies (32x32 pixels).
INTER_BLOCK = 2
#: An inter frame codes a block when copying it would add more than this fraction of the
#: quantization noise's power. Measured on generated 256x256 streams at lambda 0.0018 (quality 3
#: of the 8-level model, 6 now): 0.1 keeps PSNR within 0.05 dB of key frames (static scene: 602
#: bytes a frame instead of 1,661; panning: 1,293 instead of 1,387); 0.25 saves more (421 / 1,174)
#: but costs the panning scene 1.1 dB.
INTER_THRESHOLD = 0.1
#: Above this fraction of coded blocks an inter frame is sent as a key frame (a scene change).
SCENE_CHANGE = 0.6
#: Decoded frames a receiver keeps as possible references.
MAX_REFERENCES = 8
#: ``--target-bytes`` resolution in quality, and a hard bound on probes (the search needs about 6).
SEARCH_STEP = 0.01
MAX_RATE_PROBES = 14


def reference_tag(payload: bytes) -> bytes:
    """Names a decoded learned frame (any version) as a reference: BLAKE2b-64 of its payload."""
    return hashlib.blake2b(payload, digest_size=8).digest()


@dataclass
class Reference:
    """A decoded frame a later inter frame may copy blocks from: its tag and its un-gained
    reconstructed latent ``(y_symbols + mean) / gain``, float64 (1, M, H, W)."""

    tag: bytes
    latent: torch.Tensor = field(repr=False)


def _block_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Per-block booleans (bh, bw) -> per-position booleans (H, W)."""
    h, w = shape
    return np.repeat(np.repeat(mask, INTER_BLOCK, 0), INTER_BLOCK, 1)[:h, :w]


#: Learned latents are 16x smaller than the image and the hyper-latent 64x: images are padded to this.
LEARNED_PAD = 64
#: The learned synthesis runs in tiles of this many latent rows and columns (16 pixels each) on
#: pictures larger than one tile (1024x1024 pixels), with SYNTHESIS_MARGIN latent rows of overlap
#: on every side: the four transposed convolutions see under two latent positions around a pixel,
#: the post-network half of one. Peak memory then stays near one tile's, measured in
#: benchmarks/decode_memory.py.
SYNTHESIS_TILE = 64
SYNTHESIS_MARGIN = 4


def _symbols_crc(z: np.ndarray, y: np.ndarray) -> int:
    return zlib.crc32(y.astype("<i2").tobytes(), zlib.crc32(z.astype("<i2").tobytes())) & 0xFFFFFFFF


class LearnedCodec(ImageCodec):
    """The learned codec: ``encode(image, quality=...)`` or ``encode(image, target_bytes=...)``.

    Quality is continuous in [1, levels] (1 = smallest); it travels in thousandths, and the sender
    rounds to that grid before encoding so both sides use exactly the same gains. ``quality=None``
    takes the model's ``default_quality``.
    """

    kind = "learned"
    inter_frames = True
    compression_label = "entropy-coded"
    label = "learned"

    @classmethod
    def from_options(cls, name: str, options: CodecOptions) -> LearnedCodec:
        model = LEARNED_MODEL_DIR if options.model == "auto" else options.model
        return cls(
            model,
            options.device,
            options.precision,
            options.quality,
            options.target_bytes,
            options.context,
            options.refine_steps,
            options.postfilter,
        )

    def __init__(
        self,
        model: str | Path = LEARNED_MODEL_DIR,
        device: str = "auto",
        precision: str = "auto",
        quality: float | None = None,
        target_bytes: int | None = None,
        context: bool = True,
        refine_steps: int = 0,
        postfilter: bool = True,
    ) -> None:

        t0 = time.perf_counter()
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            configure_threads()
        self.dtype = _learned_precision(precision, self.device)
        path = Path(model).expanduser()
        if not path.exists():
            raise ModelLoadError(f"learned codec folder {path} does not exist")
        self.model = LearnedCodecModel.from_pretrained(path)
        self.model.to(self.device).eval().requires_grad_(False)  # a codec never trains its weights
        # channels_last: measured 20% faster synthesis on this CPU (oneDNN's preferred layout).
        self.model.g_a.to(memory_format=torch.channels_last)
        self.model.g_s.to(memory_format=torch.channels_last)
        self.coder = EntropyCoder(self.model.z_density.probability_tables())
        self.model_id = f"{path.resolve().name}@{self.model.fingerprint()}"
        self.source = str(path.resolve())
        self.levels = self.model.config.levels
        self.quality = self.check_quality(self.model.config.default_quality if quality is None else quality)
        self.target_bytes = target_bytes
        #: Key frames use the context model when the model has one, unless ``encode`` is told otherwise.
        self.context = context
        #: Encode-time refinement steps for key frames without a reference (0 = off; ``--refine``).
        self.refine_steps = self.check_refine_steps(refine_steps)
        #: Fit and send a post-filter with context-coded key frames where it pays for its bytes.
        self.postfilter = postfilter
        #: Decoded frames that inter frames may name (tag -> un-gained latent), oldest first.
        self._references: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.load_seconds = time.perf_counter() - t0
        log.info(
            "loaded learned codec %s in %.2f s (%s, %s)", self.model_id, self.load_seconds, self.device, self.dtype
        )

    def check_quality(self, q: float) -> float:
        if not (1.0 <= q <= self.levels) or not math.isfinite(q):
            raise LocalProtocolError(f"--quality must be between 1 and {self.levels}, got {q}")
        return round(q * 1000) / 1000

    @staticmethod
    def check_refine_steps(steps: int) -> int:
        """``steps`` if it is a step count ``--refine`` allows (the codec and the CLI share this check)."""

        if not 0 <= steps <= MAX_REFINE_STEPS:
            raise LocalProtocolError(f"--refine must be between 0 and {MAX_REFINE_STEPS} steps, got {steps}")
        return int(steps)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    # -- encoding ----------------------------------------------------------------------------------

    def analyse(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """[-1, 1] image -> the un-gained latent g_a(x) (float32), computed once per image."""
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise LocalProtocolError(f"expected one image shaped (1, 3, H, W), got {tuple(image.shape)}")
        h, w = image.shape[2:]
        with torch.inference_mode(), self._autocast():
            y = self.model.g_a(self._padded(image).contiguous(memory_format=torch.channels_last)).float()
        return y, (h, w)

    def _padded(self, image: torch.Tensor) -> torch.Tensor:
        """[-1, 1] image -> [0, 1] on the device, replicate-padded to the transforms' multiple."""
        h, w = image.shape[2:]
        x = (image.float() + 1) / 2
        return F.pad(x, (0, (-w) % LEARNED_PAD, 0, (-h) % LEARNED_PAD), mode="replicate").to(self.device)

    def _code(
        self,
        y_raw: torch.Tensor,
        quality: float,
        ref: Reference | None = None,
        threshold: float = INTER_THRESHOLD,
        context: bool = True,
    ) -> tuple[bytes, dict]:
        """One quality's bitstream: a key frame, or with ``ref`` an inter frame that codes only the
        blocks whose reconstruction moved more than ``threshold`` times the quantization noise from
        the reference's, and copies the others."""
        m = self.model
        with torch.inference_mode():
            g, gi = m.gains(quality)
            y = y_raw * g.to(y_raw.device)
            with self._autocast():
                z = m.h_a(y).float()
            z_sym = torch.round(z).clamp(-Z_RANGE, Z_RANGE).to(torch.int32).cpu()
        gi64 = gi.cpu().double()
        zs = z_sym[0].numpy()
        q_milli = round(quality * 1000)
        key = ref is None or ref.latent.shape[2:] != y.shape[2:]
        if key and context and m.context is not None:
            # Key frames use the context model; inter frames (below) code scattered blocks, which
            # its passes over the whole latent can't, and keep to the hyperprior.
            with torch.inference_mode():
                y_sym, mean, segments = self._contextual_encode(y.cpu().double(), z_sym)
            ys = y_sym[0].numpy()
            latent = (y_sym.double() + mean) * gi64
            words = self.coder.encode_segments(zs, segments)
            header = LEARNED_HEADER.pack(CONTEXT_VERSION, q_milli, _symbols_crc(zs, ys))
            return header + words, {"latent": latent, "frame_type": "key"}
        with torch.inference_mode():
            mean, idx = m.entropy_parameters(z_sym)
            y_sym = torch.round(y.cpu().double() - mean).clamp(-Y_RANGE, Y_RANGE).to(torch.int32)
        latent = (y_sym.double() + mean) * gi64  # what the receiver will reconstruct, un-gained
        ys, ix = y_sym[0].numpy(), idx[0].numpy()
        if key:
            words = self.coder.encode(zs, ys, ix)
            header = LEARNED_HEADER.pack(LEARNED_VERSION, q_milli, _symbols_crc(zs, ys))
            return header + words, {"latent": latent, "frame_type": "key"}
        h, w = ys.shape[1:]
        bh, bw = -(-h // INTER_BLOCK), -(-w // INTER_BLOCK)
        diff = ((latent - ref.latent) ** 2).mean(dim=1)[0].numpy()  # (H, W)
        noise = float((gi64**2).mean()) / 12  # uniform quantization noise, un-gained
        pad = np.pad(diff, ((0, bh * INTER_BLOCK - h), (0, bw * INTER_BLOCK - w)), mode="edge")
        block_err = pad.reshape(bh, INTER_BLOCK, bw, INTER_BLOCK).mean(axis=(1, 3))
        mask = block_err > threshold * noise
        pos = _block_mask(mask, (h, w))
        ys_c, ix_c = ys[:, pos], ix[:, pos]
        mask_bytes = np.packbits(mask.ravel()).tobytes()
        words = self.coder.encode(zs, ys_c, ix_c)
        crc = zlib.crc32(mask_bytes, _symbols_crc(zs, ys_c)) & 0xFFFFFFFF
        header = INTER_HEADER.pack(INTER_VERSION, q_milli, crc, ref.tag)
        merged = torch.where(torch.from_numpy(pos)[None, None], latent, ref.latent)
        return header + mask_bytes + words, {
            "latent": merged,
            "frame_type": "inter",
            "coded_blocks": round(float(mask.mean()), 4),
        }

    def _contextual_encode(
        self, y64: torch.Tensor, z_sym: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[np.ndarray, np.ndarray]]]:
        """Symbols, means and the coder's segments (one per context pass) of a gained latent."""
        offsets = self.model.context.offsets
        segments: list[tuple[np.ndarray, np.ndarray]] = []

        def fetch(k: int, positions: torch.Tensor, mu: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            sym = torch.round(y64[:, offsets[k] : offsets[k + 1]] - mu).clamp(-Y_RANGE, Y_RANGE).to(torch.int32)
            segments.append((sym[0][:, positions].numpy(), idx[0][:, positions].numpy()))
            return sym

        y_sym, mean = self.model.contextual_symbols(z_sym, fetch)
        return y_sym, mean, segments

    def _contextual_decode(self, coder, z: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """The decoder's side of :meth:`_contextual_encode`: each pass's symbols from the bitstream."""

        def fetch(_k: int, positions: torch.Tensor, _mu: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(idx.shape, dtype=torch.int32)
            out[0][:, positions] = torch.from_numpy(self.coder.decode_y(coder, idx[0][:, positions].numpy()))
            return out

        with torch.inference_mode():
            y_sym, mean = self.model.contextual_symbols(torch.from_numpy(z)[None], fetch)
        return y_sym[0].numpy(), mean

    def encode(
        self,
        image: torch.Tensor,
        quality: float | None = None,
        target_bytes: int | None = None,
        reference: Reference | None = None,
        context: bool | None = None,
        refine_steps: int | None = None,
        postfilter: bool | None = None,
    ) -> Encoded:
        """A key frame, or with ``reference`` (the last frame the receiver acknowledged) an inter frame.

        ``context=False`` codes a key frame with the hyperprior alone even when the model has a
        context model: streams do, because it is 3x faster per rate probe at 256x256 and because
        their inter frames, coded with the hyperprior, then copy blocks from like-quantized
        references (a context-coded reference differs in every block by the rounding offset).
        ``context=None`` follows the codec's own setting (``--context/--no-context``).
        ``refine_steps`` (None = the codec's ``--refine``): gradient steps on the latent before coding
        (:mod:`latentcomm.codecs.learned.refine`), for frames without a reference; with a byte target the search
        runs twice, once to find the quality to refine at and once on the refined latent.
        ``postfilter`` (None = the codec's setting): for a context-coded key frame, fit the
        :mod:`latentcomm.codecs.learned.postfilter` and send it where it pays for its bytes; a byte target then
        searches with the filter's bytes set aside, and again without them if the filter is dropped.
        The returned facts hold ``reference``: this frame as the next frame's reference.
        """
        context = self.context if context is None else context
        steps = self.refine_steps if refine_steps is None else self.check_refine_steps(refine_steps)
        t0 = time.perf_counter()
        y_raw, hw = self.analyse(image)
        t1 = time.perf_counter()
        target = target_bytes if target_bytes is not None else (self.target_bytes if quality is None else None)
        if target is None:
            quality = self.check_quality(self.quality if quality is None else quality)
        refine_s, start, first_probes = 0.0, None, 0
        if steps and reference is None:
            if target is not None:
                start, _, first_probes, _ = self._search(y_raw, target, None, context)
            else:
                start = quality
            t_r = time.perf_counter()
            uses_context = context and self.model.context is not None
            y_raw = refine_latent(self.model, self._padded(image), y_raw, start, steps, hw, uses_context)
            refine_s = time.perf_counter() - t_r
        filtering = (self.postfilter if postfilter is None else postfilter) and reference is None
        filtering = filtering and context and self.model.context is not None
        if target is not None:
            aim = target - FILTER_BYTES if filtering else target
            quality, payload, probes, info = self._search(y_raw, aim, reference, context, start)
        else:
            payload, info = self._code(y_raw, quality, reference, context=context)
            probes = 1
        filter_facts: dict = {}
        if filtering and payload[0] == CONTEXT_VERSION:
            t_f = time.perf_counter()
            filtered, filter_facts = self._filtered(image, payload, info["latent"], quality, hw)
            if filtered is not None and (target is None or len(filtered) <= target):
                payload = filtered
            elif target is not None:  # the bytes set aside go back to the latent
                quality, payload, more, info = self._search(y_raw, target, reference, context, quality)
                probes += more
            filter_facts["filter_s"] = time.perf_counter() - t_f
        facts = {
            "encode_s": t1 - t0,
            "compress_s": time.perf_counter() - t1,
            "quality": quality,
            "rate_probes": probes + first_probes,  # with --refine, both searches
            "latent_shape": [1, *y_raw.shape[1:]],
            "frame_type": info["frame_type"],
            # What predicts the latent's distribution: the context model (version 3) or the hyperprior.
            "entropy_model": "context" if payload[0] in (CONTEXT_VERSION, FILTERED_VERSION) else "hyperprior",
            "postfilter": payload[0] == FILTERED_VERSION,
            **filter_facts,
            "reference": Reference(reference_tag(payload), info["latent"]),
        }
        if "coded_blocks" in info:
            facts["coded_blocks"] = info["coded_blocks"]
        if refine_s:
            facts["refine_steps"], facts["refine_s"] = steps, refine_s
        if target is not None:
            facts["target_bytes"] = target
            facts["fits_target"] = len(payload) <= target
        return Encoded(ENC_LEARNED, COMP_NONE, tuple(y_raw.shape[1:]), payload, (), facts)

    def _filtered(
        self, image: torch.Tensor, payload: bytes, latent: torch.Tensor, quality: float, hw: tuple[int, int]
    ) -> tuple[bytes | None, dict]:
        """A context-coded key frame with its post-filter (version 4), or None where the filter
        doesn't pay for its bytes at ``quality``'s trade-off (lambda * MSE on 0..255 per pixel
        against its bits per pixel). Facts: the MSE the filter saves."""
        from skimage.metrics import mean_squared_error  # what latentcomm.metrics' PSNR is built on

        decoded = self._decoded_uint8(latent, hw, quality)
        original = tensor_to_uint8(image)
        coefficients = postfilter.fit(original, decoded)
        before = mean_squared_error(original, decoded)
        after = mean_squared_error(original, postfilter.apply(decoded, coefficients))
        gain_db = 10 * math.log10(before / after) if after > 0 and before > 0 else 0.0
        keep = self.model.lambda_at(quality) * (before - after) > 8 * FILTER_BYTES / (hw[0] * hw[1])
        facts = {"filter_gain_db": round(gain_db, 4)}
        if not keep:
            return None, facts
        _version, q_milli, crc = LEARNED_HEADER.unpack_from(payload)
        coded = postfilter.pack(coefficients)
        header = LEARNED_HEADER.pack(FILTERED_VERSION, q_milli, zlib.crc32(coded, crc) & 0xFFFFFFFF)
        return header + coded + payload[LEARNED_HEADER.size :], facts

    def _synthesis(self, latent: torch.Tensor, hw: tuple[int, int], quality: float) -> torch.Tensor:
        """The picture of an un-gained latent coded at ``quality``, cropped to ``hw``: (1, 3, H, W)
        float32 on the CPU, in [0, 1]. What every decode shows, and what a post-filter (either
        side's) starts from. The quality conditions the model's post-network, where it has one."""
        oh, ow = hw
        _, _, h, w = latent.shape
        if h * w <= SYNTHESIS_TILE**2:
            return self._synthesis_tile(latent, quality)[:, :, :oh, :ow]
        # Large pictures in tiles, so memory stays bounded whatever size a frame claims (a 4096x4096
        # picture in one pass took 6.9 GB). Each tile's latent carries SYNTHESIS_MARGIN extra rows
        # and columns, more than the synthesis and post-network see around a pixel, and only its
        # centre is kept: the seams fall where both neighbours computed the same pixels.
        out = torch.empty((1, 3, oh, ow), dtype=torch.float32)
        m, t, up = SYNTHESIS_MARGIN, SYNTHESIS_TILE, LEARNED_PAD // 4
        for y0 in range(0, h, t):
            for x0 in range(0, w, t):
                ys, xs = max(0, y0 - m), max(0, x0 - m)
                tile = self._synthesis_tile(latent[:, :, ys : min(h, y0 + t + m), xs : min(w, x0 + t + m)], quality)
                py, px = y0 * up, x0 * up
                ph, pw = min(oh, (y0 + t) * up) - py, min(ow, (x0 + t) * up) - px
                if ph > 0 and pw > 0:
                    oy, ox = (y0 - ys) * up, (x0 - xs) * up
                    out[:, :, py : py + ph, px : px + pw] = tile[:, :, oy : oy + ph, ox : ox + pw]
        return out

    def _synthesis_tile(self, latent: torch.Tensor, quality: float) -> torch.Tensor:
        """Synthesis and post-network of a whole (piece of a) latent: float32 on the CPU, in [0, 1]."""
        with torch.inference_mode(), self._autocast():
            x = self.model.g_s(latent.float().to(self.device).contiguous(memory_format=torch.channels_last))
            x = self.model.picture(x, quality)
        return x.float().clamp(0, 1).cpu()

    def _decoded_uint8(self, latent: torch.Tensor, hw: tuple[int, int], quality: float) -> np.ndarray:
        """:meth:`_synthesis` rounded to 8 bits (HxWx3): the post-filter's input."""
        return (self._synthesis(latent, hw, quality)[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

    def _search(
        self,
        y_raw: torch.Tensor,
        target: int,
        ref: Reference | None = None,
        context: bool = True,
        start: float | None = None,
    ) -> tuple[float, bytes, int, dict]:
        """The highest quality (to 1/100) whose payload fits ``target`` bytes.

        The analysis transform runs once; each probe costs the hyper transforms and the ANS coder.
        Bytes grow about exponentially with quality (the levels' lambdas are log-spaced), so the
        search is regula falsi on log(bytes) (the Illinois variant, which halves a stale end's weight
        so the bracket closes from both sides), starting from quality 1 and the default quality and
        aiming each probe just past the predicted crossing on the side the bracket still lacks
        (``start`` replaces the default quality as the second probe: a refined latent's search starts
        where the unrefined one ended).
        Measured on held-out photos and aerial images at 0.1-2 bpp: 6-7 probes on average where
        bisection took 12.
        If even quality 1 doesn't fit, quality 1 is sent and the report says it doesn't fit.
        "Highest" is to the bracket: the answer fits and a quality at most 0.01 above it does not. Sizes
        are not strictly monotonic between neighbouring qualities (a payload of a few hundred bytes can
        shrink by a word one step up), so a quality just above that bracket may fit again.
        """
        best, best_info = self._code(y_raw, 1.0, ref, context=context)
        probes, best_q = 1, 1.0
        if len(best) > target:
            return best_q, best, probes, best_info
        top = float(self.levels)
        lo, f_lo = 1.0, math.log(len(best) / target)
        hi, f_hi = math.inf, math.inf  # lowest quality known not to fit (none yet)
        prev, last_side = (lo, f_lo), 0  # prev: the fitting probe before lo, for extrapolation
        c = min(max(self.quality if start is None else start, 1.001), top)
        while probes < MAX_RATE_PROBES:
            payload, info = self._code(y_raw, c, ref, context=context)
            probes += 1
            f = math.log(len(payload) / target)
            if f <= 0:
                if last_side == -1 and hi < math.inf:
                    f_hi /= 2
                prev = (lo, f_lo)
                lo, f_lo, best_q, best, best_info, last_side = c, f, c, payload, info, -1
            else:
                if last_side == 1:
                    f_lo /= 2
                hi, f_hi, last_side = c, f, 1
            if lo >= top or hi - lo <= SEARCH_STEP + 1e-9:
                break
            if hi == math.inf:  # nothing too big yet: extrapolate through the last two that fit
                x1, g1 = prev
                root = lo - f_lo * (lo - x1) / (f_lo - g1) if f_lo > g1 else top
            else:
                root = lo + (hi - lo) * -f_lo / (f_hi - f_lo) if f_hi > f_lo else (lo + hi) / 2
            c = root + (0.4 if last_side == -1 else -0.4) * SEARCH_STEP
            c = round(min(max(c, lo + 0.001), hi - 0.001, top) * 1000) / 1000
        return best_q, best, probes, best_info

    # -- decoding ----------------------------------------------------------------------------------

    def _check_shape(self, shape, image_size) -> tuple[int, int, int]:
        """The latent shape a frame claims must be exactly what this model makes of its image size."""
        c, h, w = shape
        oh, ow = image_size
        if c != self.model.config.M:
            raise RemoteProtocolError(f"learned latent has {c} channels, this model {self.model.config.M}")
        if h != 4 * math.ceil(oh / LEARNED_PAD) or w != 4 * math.ceil(ow / LEARNED_PAD):
            raise RemoteProtocolError(f"image size {ow}x{oh} does not match a {w}x{h} learned latent")
        return c, h, w

    def decode_symbols(self, shape, payload: bytes, image_size) -> tuple[float, np.ndarray, np.ndarray, torch.Tensor]:
        """Parse and entropy-decode: (quality, z symbols, y symbols, y means). Checks the checksum."""
        m = self.model
        c, h, w = self._check_shape(shape, image_size)
        if len(payload) < LEARNED_HEADER.size:
            raise RemoteProtocolError("learned payload shorter than its header")
        version, q_milli, crc = LEARNED_HEADER.unpack_from(payload)
        body = payload[LEARNED_HEADER.size :]
        if version == INTER_VERSION:
            raise RemoteProtocolError("an inter frame needs its reference: decode it with decode()")
        if version not in (LEARNED_VERSION, CONTEXT_VERSION, FILTERED_VERSION):
            raise RemoteProtocolError(f"unsupported learned bitstream version {version}")
        coded_filter = b""
        if version == FILTERED_VERSION:
            if len(body) < FILTER_BYTES:
                raise RemoteProtocolError("learned payload shorter than its post-filter")
            coded_filter, body = body[:FILTER_BYTES], body[FILTER_BYTES:]
        if version in (CONTEXT_VERSION, FILTERED_VERSION) and m.context is None:
            raise RemoteProtocolError(
                "a context-coded learned frame needs a model with a context model; this one has none"
            )
        quality = q_milli / 1000
        if not 1.0 <= quality <= self.levels:
            raise RemoteProtocolError(f"quality {quality} outside this model's 1..{self.levels}")
        z, coder = self.coder.decode_z(body, (m.config.H, h // 4, w // 4))
        if version != LEARNED_VERSION:
            y, mean = self._contextual_decode(coder, z)
        else:
            mean, idx = m.entropy_parameters(torch.from_numpy(z)[None])
            y = self.coder.decode_y(coder, idx[0].numpy())
        if zlib.crc32(coded_filter, _symbols_crc(z, y)) & 0xFFFFFFFF != crc:
            raise RemoteProtocolError(
                "learned latent checksum mismatch: the bitstream decodes to other symbols than were sent "
                "(different weights or a corrupted payload)"
            )
        return quality, z, y, mean

    def encode_in_stream(self, image: torch.Tensor, target_bytes: int | None, reference: Any = None) -> Encoded:
        """A stream's frame: an inter frame against ``reference``, else a key frame coded with the
        hyperprior alone and unrefined (see :meth:`encode`: 3x faster per rate probe, and inter frames
        then copy blocks from like-quantized references). A scene change (more than ``SCENE_CHANGE``
        of the blocks coded anew) starts over with a key frame."""
        enc = self.encode(image, target_bytes=target_bytes, reference=reference, context=False, refine_steps=0)
        if reference is not None and enc.facts.get("coded_blocks", 0) > SCENE_CHANGE:
            enc = self.encode(image, target_bytes=target_bytes, context=False, refine_steps=0)
        return enc

    def payload_facts(self, payload: bytes) -> dict:
        version, q_milli = LEARNED_HEADER.unpack_from(payload)[:2]
        return {"quality": q_milli / 1000, "frame_type": "inter" if version == INTER_VERSION else "key"}

    def decode(self, encoding, compression, shape, payload, params, image_size) -> torch.Tensor:
        """Key frames decode alone; an inter frame needs the frame it names, decoded here before
        (kept: the last MAX_REFERENCES frames). Every decoded frame becomes a possible reference."""
        if encoding != ENC_LEARNED:
            raise RemoteProtocolError("frame names the learned codec's model but holds a VAE latent")
        if compression != COMP_NONE or params:
            raise RemoteProtocolError("learned-codec frames carry no compression and no channel parameters")
        if len(payload) >= 1 and payload[0] == INTER_VERSION:
            quality, latent = self._decode_inter(shape, payload, image_size)
        else:
            quality, _z, y, mean = self.decode_symbols(shape, payload, image_size)
            _, gi = self.model.gains(quality)
            latent = (torch.from_numpy(y)[None].double() + mean) * gi.cpu().double()
        self._remember(reference_tag(payload), latent)
        if payload[0] == FILTERED_VERSION:
            coefficients = postfilter.unpack(payload[LEARNED_HEADER.size : LEARNED_HEADER.size + FILTER_BYTES])
            pixels = postfilter.apply(self._decoded_uint8(latent, image_size, quality), coefficients)
            return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
        return (self._synthesis(latent, image_size, quality) * 2 - 1).clamp(-1, 1)

    def _remember(self, tag: bytes, latent: torch.Tensor) -> None:
        refs = self._references
        refs[tag] = latent
        refs.move_to_end(tag)
        while len(refs) > MAX_REFERENCES:
            refs.popitem(last=False)

    def _decode_inter(self, shape, payload: bytes, image_size) -> tuple[float, torch.Tensor]:
        m = self.model
        c, h, w = self._check_shape(shape, image_size)
        if len(payload) < INTER_HEADER.size:
            raise RemoteProtocolError("inter frame shorter than its header")
        _version, q_milli, crc, tag = INTER_HEADER.unpack_from(payload)
        quality = q_milli / 1000
        if not 1.0 <= quality <= self.levels:
            raise RemoteProtocolError(f"quality {quality} outside this model's 1..{self.levels}")
        ref = self._references.get(tag)
        if ref is None or ref.shape != (1, c, h, w):
            raise RemoteProtocolError(
                f"inter frame refers to frame {tag.hex()}, which this receiver does not hold (a frame was lost or "
                "went to another receiver); the sender goes back to a key frame"
            )
        bh, bw = -(-h // INTER_BLOCK), -(-w // INTER_BLOCK)
        nmask = (bh * bw + 7) // 8
        body = payload[INTER_HEADER.size :]
        if len(body) < nmask:
            raise RemoteProtocolError("inter frame shorter than its block mask")
        mask_bytes = body[:nmask]
        mask = np.unpackbits(np.frombuffer(mask_bytes, np.uint8))[: bh * bw].astype(bool).reshape(bh, bw)
        pos = _block_mask(mask, (h, w))
        z, coder = self.coder.decode_z(body[nmask:], (m.config.H, h // 4, w // 4))
        mean, idx = m.entropy_parameters(torch.from_numpy(z)[None])
        y_c = self.coder.decode_y(coder, idx[0].numpy()[:, pos])
        if zlib.crc32(mask_bytes, _symbols_crc(z, y_c)) & 0xFFFFFFFF != crc:
            raise RemoteProtocolError(
                "learned latent checksum mismatch: the inter frame decodes to other symbols than were sent"
            )
        _, gi = m.gains(quality)
        gi64 = gi.cpu().double()
        latent = ref.clone()
        pos_t = torch.from_numpy(pos)
        coded = (torch.from_numpy(y_c).double() + mean[0][:, pos_t]) * gi64[0, :, :, 0]
        latent[0][:, pos_t] = coded
        return quality, latent


def _learned_precision(precision: str, device: torch.device) -> torch.dtype:
    """fp32 on CPU unless asked: measured on an AVX512-BF16 (no AMX) CPU, bf16 convolutions and
    transposed convolutions of this model run 20-50x slower than fp32 in torch 2.13. The entropy
    path is float64 whatever this says, so the choice never changes the bitstream."""

    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return resolve_precision(precision, device)
