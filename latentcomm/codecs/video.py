"""Live video through the field's video codecs: H.264 (libx264), AV1 (SVT-AV1) and VP9 (libvpx), via PyAV.

Why: motion-compensated video coding beats per-frame image coding by 6-13 dB at the same bits per
second on real footage, at a hundredth of the CPU (issue "Live video"). latentcomm does not
reimplement any of it; it brings what a plain pipe lacks around it: frames acknowledged, sealed,
with text, key frames on request, pictures saved and shown like images.

One coded access unit (what the encoder emits for one picture) rides in one v2 IMAGE frame:

    model     "h264" | "av1" | "vp9"         (the codec, where image frames name their model)
    encoding  ENC_VIDEO (5), compression none, shape (3, coded height, coded width)
    payload   VIDEO_HEADER "!BBHIIIH": version 1, flags (bit 0: key frame), reserved 0, the encoder's
              frame number (u32, +1 per coded picture), the picture's index in its source (u32), the
              sender's link rate in bits/s (fixed or estimated; 0 unknown), its last measured
              capture-to-acknowledgement latency in ms (0 unknown) | the access unit. The last two
              are what the dashboard charts.
    name      the source frame's name (``STEM-NNNNNN``, NNNNNN its index in the source) on key
              frames; inter frames of such a source leave it empty (20-30 bytes a frame, a twentieth
              of a 64 kbit/s link at 10 fps) and the receiver names them from the key frame's stem
              and their source index.

Every key frame carries the parameter sets a decoder needs to start (libx264 and SVT-AV1 repeat
them in-band when there is no global header; a VP9 key frame is self-contained), so a receiver that
joins late starts at the next key frame. A decoder's state belongs to one stream: the receiver keeps
one :class:`VideoCodec` per stream (``new_stream``) and refuses, with ``KEY_FRAME_NEEDED``, any
inter frame whose reference it lacks (a gap in the frame numbers: a refused, lost or undecodable
frame, a restart), so it never shows a picture built on a missing one; the sender answers with a
key frame. H.265 was tried (libx265): it ignored forced key frames and a late decoder got nothing,
so it is not offered.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from latentcomm.codecs.base import CodecOptions, Encoded, ImageCodec
from latentcomm.errors import LocalProtocolError, RemoteProtocolError
from latentcomm.wire.encodings import COMP_NONE, ENC_VIDEO

if TYPE_CHECKING:  # only the tensor interface (benchmarks, stills): live video is pixels, no torch
    import torch

log = logging.getLogger(__name__)

VIDEO_HEADER = struct.Struct("!BBHIIIH")
VIDEO_VERSION = 1
FLAG_KEY = 0x01
#: The largest picture a video frame may claim (both sides even, as 4:2:0 needs).
MAX_SIDE = 4096
#: A frame coded smaller than its picture (latentcomm.operating) is shown at most this much larger per side.
MAX_UPSCALE = 4
UPSCALE_FILTER = Image.Resampling.LANCZOS
#: x264's VBV cap over the rate it was opened at, for ``--bandwidth auto`` streams.
VBV_HEADROOM = 1.3
#: x264's VBV buffer in seconds of the rate: no frame, a key frame included, takes longer than this
#: on the link.
VBV_SECONDS = 0.5
#: Under a fixed rate x264 runs capped CRF at this (near-lossless) quality: the VBV cap, not the
#: quality, sets every frame's size, so the stream fills the link. Measured against ABR with the same
#: cap (which undershoots it by 5-20% on a still scene): +0.1 to +2.1 dB, mean +0.5 dB over the four
#: benchmark scenes, both sizes and the three rates (docs/video.md).
CRF_FILL = 4
#: libx264 presets from slowest to fastest, and the pixel rates (pixels per second, one encoder
#: thread) up to which each kept the encoder under a fifth of a core on the 2-core benchmark machine
#: (medium: 10-28 ms a frame at 640x352, +0.3 to +0.9 dB over veryfast at equal bits).
X264_PRESETS = ("medium", "faster", "veryfast", "superfast", "ultrafast")
X264_AUTO_PRESET = ((2_500_000, "medium"), (6_000_000, "faster"), (30_000_000, "veryfast"), (90_000_000, "superfast"))


#: SVT-AV1's presets offered (its real-time mode, ``rtc=1``, takes 7 and up), slowest first, and the
#: pixel rates up to which each kept the encoder under a fifth of a core (one thread, 2-core Xeon,
#: Tears of Steel at 256 kbit/s): 640x352 costs 11.8 ms a frame at preset 8 (p95 26 ms), 7.9 at 10,
#: 6.6 at 11; 1280x704 24.0 ms at 8, 17.6 at 10, 13.6 at 12. Preset 8 over 10 at 64 kbit/s, 640x352:
#: +0.4 dB on the real camera clips (docs/video.md).
SVTAV1_PRESETS = ("7", "8", "9", "10", "11", "12", "13")
SVTAV1_AUTO_PRESET = ((3_000_000, "8"), (6_000_000, "10"), (12_000_000, "12"))


def auto_preset(width: int, height: int, fps: float, codec: str = "h264") -> str | None:
    """The slowest (best) preset of ``codec``'s encoder that the picture's pixel rate leaves room for
    (None: the codec has no preset ladder)."""
    spec = VIDEO_CODECS[codec]
    if not spec.presets:
        return None
    rate = width * height * fps
    return next((preset for limit, preset in spec.auto_presets if rate <= limit), spec.presets[-1])


@dataclass(frozen=True)
class VideoSpec:
    """One codec: its PyAV encoder and decoder names and the low-latency options that measured best."""

    name: str
    encoder: str
    decoder: str
    options: dict = field(default_factory=dict)
    #: Can the running encoder take a new bit rate without a key frame (x264's reconfigure)?
    live_bitrate: bool = False
    #: Share of a fixed link's rate (less the frames' own bytes) the encoder aims at: the rest absorbs its
    #: own overshoot, which a queue on the link would otherwise keep (x264's VBV cap holds the rate
    #: within a frame; SVT-AV1's CBR ran 2-8% over its target at 56-64 kbit/s, and takes no new rate
    #: without a key frame).
    rate_margin: float = 0.96
    #: The encoder's presets, slowest (best) first, that ``--preset`` may name ...
    presets: tuple[str, ...] = ()
    #: ... and (pixels per second, preset): the slowest preset up to each pixel rate (:func:`auto_preset`).
    auto_presets: tuple[tuple[int, str], ...] = ()


VIDEO_CODECS: dict[str, VideoSpec] = {
    "h264": VideoSpec(
        "h264",
        "libx264",
        "h264",
        # No B-frames, no lookahead (zerolatency), one slice, every forced key frame an IDR with the
        # SPS/PPS in front (repeat-headers is libx264's default without a global header). The preset
        # and the rate control are chosen when the encoder opens (VideoCodec._open_encoder).
        {"tune": "zerolatency", "x264-params": "forced-idr=1:scenecut=0:sliced-threads=0"},
        live_bitrate=True,
        presets=X264_PRESETS,
        auto_presets=X264_AUTO_PRESET,
    ),
    "av1": VideoSpec(
        "av1",
        "libsvtav1",
        "libdav1d",
        # The real-time mode (rtc=1: SVT-AV1 4's tools and rate control for conferencing), low-delay
        # prediction (no frame reordering), which needs CBR (rc=2), and a flat structure
        # (hierarchical-levels=0): every inter frame predicted from the last, none made a large
        # "base layer" one. Measured at 640x352, preset 8: rtc against the first setting (preset 10
        # without it) halved a still camera scene's key frame (14.4 -> 7.2 KB) for +0.6 dB at 64 kbit/s;
        # the flat structure, against rtc's 4-frame layers, cut the largest inter frame of the car park
        # clip from 5.9 to 2.3 KB (+0.5 dB) and held Tears of Steel at 64 kbit/s to 1.06x its target
        # instead of 1.34x (same PSNR), +0.6 and +1.1 dB at 256 kbit/s. The preset comes from the pixel
        # rate (SVTAV1_AUTO_PRESET). The rate control's buffer, as x264's VBV: a quarter second of the
        # link to start with (a key frame's share), at most half a second: key frames at 56 kbit/s
        # 7.4 -> 3.3 KB (Tears of Steel), 18.4 -> 5.0 KB (the station scene), for -0.1 dB.
        {
            "svtav1-params": "rtc=1:pred-struct=1:rc=2:hierarchical-levels=0:buf-sz=500:buf-initial-sz=250:"
            "buf-optimal-sz=400"
        },
        rate_margin=0.9,
        presets=SVTAV1_PRESETS,
        auto_presets=SVTAV1_AUTO_PRESET,
    ),
    "vp9": VideoSpec(
        "vp9",
        "libvpx-vp9",
        "vp9",
        {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "error-resilient": "1"},
    ),
}


def is_video_codec(name: str) -> bool:
    return name in VIDEO_CODECS


def _check_available(spec: VideoSpec) -> None:
    import av

    for which, lib, mode in (("encoder", spec.encoder, "w"), ("decoder", spec.decoder, "r")):
        try:
            av.codec.Codec(lib, mode)
        except Exception:  # noqa: BLE001 - PyAV raises its own UnknownCodecError
            raise LocalProtocolError(f"this PyAV build has no {lib} {which} for --codec {spec.name}") from None


def even_size(width: int, height: int) -> tuple[int, int]:
    """The coded size: 4:2:0 needs even sides (an odd picture is cropped by one pixel)."""
    return max(2, width - width % 2), max(2, height - height % 2)


@dataclass
class VideoFacts:
    frame_number: int
    key: bool
    source_index: int = 0
    link_bps: int = 0
    latency_ms: int = 0
    #: The source's frame rate (0: not told; the field was reserved in the first video senders).
    fps: float = 0.0


def parse_payload(payload: bytes) -> tuple[VideoFacts, bytes]:
    """(header facts, access unit) of a video payload; RemoteProtocolError if it isn't one."""
    if len(payload) < VIDEO_HEADER.size + 1:
        raise RemoteProtocolError("video payload shorter than its header")
    version, flags, fps_centi, number, index, link, latency = VIDEO_HEADER.unpack_from(payload)
    if version != VIDEO_VERSION:
        raise RemoteProtocolError(f"unsupported video payload version {version}")
    facts = VideoFacts(number, bool(flags & FLAG_KEY), index, link, latency, fps_centi / 100)
    return facts, payload[VIDEO_HEADER.size :]


class VideoCodec(ImageCodec):
    """One stream's video encoder (sender) or decoder (receiver) behind the image-codec interface.

    Stateful, unlike the image codecs: frames depend on the ones before, so a receiver makes one
    instance per stream with :meth:`new_stream`. ``bitrate_bps`` is the encoder's target (the
    sender's ``--bandwidth``, less the frames' own overhead); ``key_interval`` frames between
    periodic key frames; ``threads`` for the encoder (default: half the cores, leaving the rest to
    the sender's capture, sealing and sending).
    """

    kind = "video"
    #: One instance per stream (the receiver keeps a dict of them); image codecs are shared.
    stateful = True
    #: The sender changes the rate as it estimates the link (``--bandwidth auto``).
    adaptive = False

    @classmethod
    def from_options(cls, name: str, options: CodecOptions) -> VideoCodec:
        """A stream's encoder or decoder at the defaults; the sender sets the rate, frame rate and key
        interval when the stream starts (model, quality and the image options don't apply)."""
        return cls(name)

    def __init__(
        self,
        name: str = "h264",
        bitrate_bps: float = 256_000,
        fps: float = 10.0,
        key_interval: int = 100,
        threads: int | None = None,
        enhancer=None,
        preset: str | None = None,
    ) -> None:
        if name not in VIDEO_CODECS:
            raise LocalProtocolError(f"unknown video codec {name!r}; choose one of {', '.join(VIDEO_CODECS)}")
        import av

        self.spec = VIDEO_CODECS[name]
        if preset is not None and preset not in self.spec.presets:
            which = f"one of {', '.join(self.spec.presets)}" if self.spec.presets else "none"
            raise LocalProtocolError(f"--preset {preset!r}: --codec {name} takes {which}")
        #: The encoder's preset (None: :func:`auto_preset` from the picture's size and the frame rate).
        self.preset = preset
        _check_available(self.spec)
        self.model_id = self.label = self.compression_label = name
        self.source = f"{self.spec.encoder} / {self.spec.decoder} via PyAV {av.__version__}"
        self.bitrate_bps = float(bitrate_bps)
        self.fps = fps
        self.key_interval = key_interval
        self.threads = threads or max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2) // 2)
        self._enc = None
        self._enc_size: tuple[int, int] | None = None
        self._frame_number = 0
        self._since_key = 0
        self._force_key = True
        self._pending_bitrate: float | None = None
        self._opened_bps = self.bitrate_bps
        self.preset_used: str | None = None  # the encoder's preset, once it is open
        #: What the sender knows of its link, carried in every frame for the receiver's dashboard.
        self.link_bps = 0.0
        self.last_latency_s = 0.0
        self._t0: float | None = None
        # Receiver side. ``enhancer`` (latentcomm.enhance.VideoEnhancer, H.264 only): every decoded
        # picture goes through it, told the decoder's quantizer map (--enhance).
        self.enhancer = enhancer if name == "h264" else None
        self._enhance_s: list[float] = []  # the first frames' enhancement times (the trial)
        self._enhance_on = True
        self.last_enhanced: bool | None = None
        self._dec = None
        self._stem: str | None = None
        self._expect: int | None = None  # the frame number the decoder can take next (None: a key frame)

    def set_enhancer(self, enhancer) -> None:
        """Decode through ``enhancer`` (it applies to the codec it was trained for; others ignore it)."""
        self.enhancer = (
            enhancer
            if enhancer is not None and self.spec.name == getattr(getattr(enhancer, "config", None), "codec", "h264")
            else None
        )

    def new_stream(self) -> VideoCodec:
        """A fresh instance for another stream (its own encoder or decoder state)."""
        return VideoCodec(
            self.spec.name, self.bitrate_bps, self.fps, self.key_interval, self.threads, self.enhancer, self.preset
        )

    # -- sender ---------------------------------------------------------------------------------------

    def request_key_frame(self) -> None:
        """The next picture is coded as a key frame (a receiver asked for one, or a frame was lost)."""
        self._force_key = True

    def set_bitrate(self, bps: float) -> None:
        """A new target for the following frames. Under ``--bandwidth auto`` x264 (ABR) takes one
        between a quarter and ``VBV_HEADROOM`` times the rate it was opened at on the next frame (its
        VBV cap and buffer were sized at opening, and PyAV can't change them); a larger change, any
        change under a fixed rate (capped CRF: the cap is the rate) and any change of more than 20% for
        the other encoders reopen the encoder at a key frame."""
        if self._enc is None:  # not opened yet: it opens at this
            self.bitrate_bps = self._opened_bps = float(bps)
            return
        if abs(bps - self.bitrate_bps) < 0.02 * self.bitrate_bps:
            return
        live = self.spec.live_bitrate and self.adaptive
        if live and 0.25 <= bps / self._opened_bps <= VBV_HEADROOM:
            self.bitrate_bps = float(bps)
            self._enc.bit_rate = int(bps)
            return
        self._pending_bitrate = float(bps)
        if abs(bps - self.bitrate_bps) > 0.2 * self.bitrate_bps:
            self._force_key = True

    def close(self) -> None:
        """End the stream's encoder cleanly (SVT-AV1 complains on stderr about one dropped unflushed)."""
        enc, self._enc = self._enc, None
        if enc is not None:
            try:
                enc.encode(None)
            except Exception:  # noqa: BLE001 - a flush that fails frees the encoder all the same
                log.debug("flushing the %s encoder failed", self.spec.encoder, exc_info=True)

    def _open_encoder(self, width: int, height: int) -> None:
        import av

        self.close()  # a reopened encoder (new size or rate) ends the previous one cleanly

        if self.spec.encoder == "libsvtav1":
            os.environ.setdefault("SVT_LOG", "1")  # errors only: its banner is not the user's business
        ctx = av.CodecContext.create(self.spec.encoder, "w")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        # Timestamps in milliseconds of capture: the rate control sees the real spacing of the frames
        # a live source hands over (fewer than the nominal rate when some are superseded).
        ctx.time_base = Fraction(1, 1000)
        ctx.framerate = Fraction(self.fps).limit_denominator(1000)
        ctx.bit_rate = int(self.bitrate_bps)
        ctx.gop_size = self.key_interval
        ctx.max_b_frames = 0
        ctx.thread_count = self.threads
        options = dict(self.spec.options)
        if self.spec.presets:
            options["preset"] = self.preset or auto_preset(width, height, self.fps, self.spec.name)
            self.preset_used = options["preset"]
        if self.spec.encoder == "libx264":
            # The VBV buffer caps any frame, a key frame included, at VBV_SECONDS of the link. A fixed
            # rate runs capped CRF (the cap fills the link; PyAV can't change the cap of an open
            # encoder, so a new rate reopens it). Adaptive streams run ABR, whose target x264 takes
            # live, with headroom above the opening rate so the estimate can grow without a key frame
            # at every step.
            if self.adaptive:
                cap = self.bitrate_bps * VBV_HEADROOM
            else:
                cap, ctx.bit_rate = self.bitrate_bps, 0
                options["crf"] = str(CRF_FILL)
            options.update(maxrate=str(int(cap)), bufsize=str(int(self.bitrate_bps * VBV_SECONDS)))
        ctx.options = options
        ctx.open()
        self._enc = ctx
        self._enc_size = (width, height)
        self._opened_bps = self.bitrate_bps

    def encode_picture(
        self, picture: Image.Image, force_key: bool = False, captured: float | None = None, source_index: int = 0
    ) -> Encoded:
        """Code one picture (RGB) into one access unit; the stream's first frame is a key frame."""
        import av

        width, height = even_size(*picture.size)
        if (width, height) != picture.size:
            picture = picture.crop((0, 0, width, height))
        if self._enc is None or self._enc_size != (width, height):
            self._open_encoder(width, height)
            self._force_key = True
        key = force_key or self._force_key or self._since_key + 1 >= self.key_interval
        if key and self._pending_bitrate is not None:
            self.bitrate_bps, self._pending_bitrate = self._pending_bitrate, None
            self._open_encoder(width, height)
        now = time.monotonic() if captured is None else captured
        if self._t0 is None:
            self._t0 = now
        frame = av.VideoFrame.from_image(picture.convert("RGB")).reformat(format="yuv420p")
        frame.pts = int(round(1000 * (now - self._t0))) + self._frame_number  # strictly increasing
        if key:
            frame.pict_type = av.video.frame.PictureType.I
        t0 = time.perf_counter()
        packets = self._enc.encode(frame)
        if not packets:  # the low-latency settings give one packet per picture; this is a safety net
            raise LocalProtocolError(f"{self.spec.encoder} buffered a picture (not a low-latency setting)")
        unit = b"".join(bytes(p) for p in packets)
        is_key = any(p.is_keyframe for p in packets)
        self._frame_number = (self._frame_number + 1) & 0xFFFFFFFF
        self._since_key = 0 if is_key else self._since_key + 1
        self._force_key = False
        header = VIDEO_HEADER.pack(
            VIDEO_VERSION,
            FLAG_KEY if is_key else 0,
            min(0xFFFF, round(100 * self.fps)),
            self._frame_number,
            source_index & 0xFFFFFFFF,
            min(0xFFFFFFFF, int(self.link_bps)),
            min(0xFFFF, int(1000 * self.last_latency_s)),
        )
        facts = {
            "frame_type": "key" if is_key else "inter",
            "frame_number": self._frame_number,
            "bitrate_bps": round(self.bitrate_bps),
            "preset": self.preset_used,
            "encode_s": time.perf_counter() - t0,
            "compress_s": 0.0,
            "latent_shape": [1, 3, height, width],  # what the sender's report calls the coded shape
        }
        return Encoded(ENC_VIDEO, COMP_NONE, (3, height, width), header + unit, (), facts)

    def encode(self, image: torch.Tensor) -> Encoded:
        """The image-codec interface: a (1, 3, H, W) tensor in [-1, 1]."""
        from latentcomm.images import tensor_to_pil

        return self.encode_picture(tensor_to_pil(image))

    # -- receiver -------------------------------------------------------------------------------------

    def payload_facts(self, payload: bytes) -> dict:
        facts, _ = parse_payload(payload)
        out = {
            "frame_type": "key" if facts.key else "inter",
            "frame_number": facts.frame_number,
            "source_index": facts.source_index,
        }
        if facts.link_bps:
            out["link_bps"] = facts.link_bps
        if facts.latency_ms:
            out["sender_latency_ms"] = facts.latency_ms
        if self.last_enhanced is not None:
            out["enhanced"] = self.last_enhanced
        return out

    def frame_name(self, name: str, payload: bytes) -> str:
        """Key frames name the source (``STEM-NNNNNN``): remember its stem; an inter frame without a
        name is that stem and its own source index."""
        facts, _ = parse_payload(payload)
        if name:
            stem, _, number = name.rpartition("-")
            self._stem = stem if stem and number.isdigit() else None
            return name
        return f"{self._stem}-{facts.source_index:06d}" if self._stem else ""

    def decode_picture(self, shape, payload: bytes, image_size) -> np.ndarray:
        """One access unit -> the picture (H, W, 3 uint8). RemoteProtocolError for one that doesn't
        decode; :class:`KeyFrameNeeded` for an inter frame whose reference this decoder lacks."""
        import av

        c, h, w = shape
        if c != 3 or not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE) or h % 2 or w % 2:
            raise RemoteProtocolError(f"video frame shape {tuple(shape)} is not (3, even H, even W) within {MAX_SIDE}")
        shown = tuple(image_size)
        if shown != (h, w) and not (
            h <= shown[0] <= min(MAX_SIDE, MAX_UPSCALE * h) and w <= shown[1] <= min(MAX_SIDE, MAX_UPSCALE * w)
        ):
            raise RemoteProtocolError(
                f"video frame claims picture {shown} for a coded {(h, w)}: it may be shown at most "
                f"{MAX_UPSCALE}x larger per side, within {MAX_SIDE}, never smaller"
            )
        facts, unit = parse_payload(payload)
        if not facts.key and self._expect != facts.frame_number:
            why = "no key frame yet" if self._expect is None else f"frame {self._expect} is missing"
            self._expect = None
            raise KeyFrameNeeded(f"inter frame {facts.frame_number} refused: {why}; a key frame is needed")
        if facts.key or self._dec is None:
            self._dec = av.CodecContext.create(self.spec.decoder, "r")  # a clean state at every key frame
            self._dec.thread_count = 1
            # The decoder's own size limit is the frame's claimed picture (with the margin FFmpeg's
            # aligned buffers take: the exact product refuses a 160x96 stream): a sequence header
            # declaring more is refused before FFmpeg allocates a picture, not decoded and then compared.
            # err_detect: stop at an error FFmpeg detects rather than conceal it into a picture.
            options = {"max_pixels": str((w + 64) * (h + 64)), "err_detect": "careful+explode"}
            if self.enhancer is not None:
                options["export_side_data"] = "venc_params"  # the quantizer map it is told
            self._dec.options = options
        try:
            frames = self._dec.decode(av.Packet(unit))
        except (av.error.FFmpegError, ValueError) as exc:
            self._expect, self._dec = None, None
            hint = f" (or its sequence header declares more than the frame's {w}x{h})" if facts.key else ""
            raise KeyFrameNeeded(
                f"{self.spec.decoder} could not decode frame {facts.frame_number}{hint}: {exc}"
            ) from None
        if len(frames) != 1 or getattr(frames[0], "is_corrupt", False):
            self._expect, self._dec = None, None
            what = "a corrupt picture" if frames else "no picture"
            raise KeyFrameNeeded(f"frame {facts.frame_number} gave {what}; a key frame is needed")
        picture = frames[0]
        if (picture.height, picture.width) != (h, w):
            self._expect, self._dec = None, None
            raise KeyFrameNeeded(f"frame {facts.frame_number} decoded to {picture.width}x{picture.height}, not {w}x{h}")
        self._expect = (facts.frame_number + 1) & 0xFFFFFFFF
        pixels = picture.to_ndarray(format="rgb24")
        if self.enhancer is not None:
            pixels = self._enhance(pixels, picture, facts.fps)
        if shown != (h, w):  # coded smaller for a thin link (latentcomm.operating): shown at the source's size
            pixels = upscale(pixels, shown)
        return pixels

    def drop_reference(self) -> None:
        """Forget the decoder's state (a frame of this stream was refused undecoded): the next inter
        frame is refused with ``KEY_FRAME_NEEDED`` without being decoded."""
        self._expect, self._dec = None, None

    def _enhance(self, pixels: np.ndarray, picture, fps: float) -> np.ndarray:
        """The enhanced picture, while enhancing keeps up with the stream: when a picture of this size
        is predicted to take (from the enhancer's timing here), or the trial's pictures took, longer
        than ``ENHANCE_SHARE`` of the time between frames, this stream is shown unenhanced from then on
        (a late picture, or a frame the sender supersedes, costs more than enhancement gains)."""
        from latentcomm.enhance import ENHANCE_SHARE, ENHANCE_TRIAL, qp_map

        h, w = pixels.shape[:2]
        if not self.enhancer.keep_up:
            self.last_enhanced = True
            return self.enhancer.enhance(pixels, qp_map(picture, h, w))
        if not self._enhance_s and self._enhance_on and fps > 0:  # the stream's first picture: predict
            predicted = self.enhancer.seconds_per_pixel() * h * w
            if predicted > ENHANCE_SHARE / fps:
                self._enhance_on = False
                log.warning(
                    "--enhance would take about %.0f ms a %dx%d frame, more than %d%% of the %.0f ms between frames "
                    "at %g fps: this stream is shown unenhanced", 1000 * predicted, w, h, 100 * ENHANCE_SHARE,
                    1000 / fps, fps,
                )  # fmt: skip
        self.last_enhanced = self._enhance_on
        if not self._enhance_on:
            return pixels
        t0 = time.perf_counter()
        out = self.enhancer.enhance(pixels, qp_map(picture, h, w))
        if len(self._enhance_s) < ENHANCE_TRIAL:
            self._enhance_s.append(time.perf_counter() - t0)
            if len(self._enhance_s) == ENHANCE_TRIAL and fps > 0 and min(self._enhance_s) > ENHANCE_SHARE / fps:
                self._enhance_on = False
                log.warning(
                    "--enhance takes %.0f ms a %dx%d frame, more than %d%% of the %.0f ms between frames at %g fps: "
                    "this stream is shown unenhanced",
                    1000 * min(self._enhance_s), w, h, 100 * ENHANCE_SHARE, 1000 / fps, fps,
                )  # fmt: skip
        return out

    def decode_pixels(self, encoding, compression, shape, payload, params, image_size) -> np.ndarray:
        if encoding != ENC_VIDEO or compression != COMP_NONE or params:
            raise RemoteProtocolError("frame names a video codec but holds no video access unit")
        return self.decode_picture(shape, payload, image_size)

    def decode(self, encoding, compression, shape, payload, params, image_size) -> torch.Tensor:
        import torch

        pixels = self.decode_pixels(encoding, compression, shape, payload, params, image_size)
        return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1


def upscale(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A decoded picture (H, W, 3) at ``size`` (height, width): Lanczos, which measured above bicubic
    on every scene of benchmarks/operating_points.py."""
    h, w = size
    return np.asarray(Image.fromarray(pixels).resize((w, h), UPSCALE_FILTER))


class KeyFrameNeeded(RemoteProtocolError):
    """An inter frame this stream's decoder can't take: answered with ``KEY_FRAME_NEEDED``, so the
    sender codes its next picture as a key frame (what RTCP's picture loss indication does)."""


def fit_picture(picture: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """A stream's picture at ``size`` (width, height): scaled to cover it, centre-cropped (no bars, no
    distortion); None keeps the source size, cropped to even sides."""
    if size is None:
        w, h = even_size(*picture.size)
        return picture if (w, h) == picture.size else picture.crop((0, 0, w, h))
    w, h = size
    scale = max(w / picture.width, h / picture.height)
    sw, sh = max(w, round(picture.width * scale)), max(h, round(picture.height * scale))
    if (sw, sh) != picture.size:
        picture = picture.resize((sw, sh), Image.Resampling.BILINEAR)
    left, top = (sw - w) // 2, (sh - h) // 2
    return picture.crop((left, top, left + w, top + h))


def parse_resolution(text: str) -> tuple[int, int]:
    """'640x352' -> (640, 352); ValueError for anything else (even sides, 16 to 4096)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"not a resolution: {text!r} (example: 640x352)") from None
    if not (16 <= w <= MAX_SIDE and 16 <= h <= MAX_SIDE) or w % 2 or h % 2:
        raise ValueError(f"resolution {text!r}: even width and height from 16 to {MAX_SIDE}")
    return w, h
