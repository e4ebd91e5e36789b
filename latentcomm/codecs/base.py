"""Image codecs behind one small interface: an image in, the bytes and frame parameters out, and back.

Implementations, each one module registered in :data:`REGISTRY`:

- ``vae`` (:mod:`latentcomm.codecs.vae`): an AutoencoderKL latent (the SD VAE or the embedded model)
  quantized to one of the v2 encodings and compressed with zstd/gzip. What latentcomm always sent.
- ``learned`` (:mod:`latentcomm.codecs.learned.codec`): the learned image codec, a latent trained for
  rate and entropy-coded, with a continuous quality and a byte-budget search.
- ``h264``, ``av1``, ``vp9`` (:mod:`latentcomm.codecs.video`): the field's video codecs through PyAV,
  for live streams.

The sender, the receiver, the metrics script and the benchmarks use them the same way; what differs
between them is said by class attributes (``kind``, ``inter_coded``, ``compression_label``), never
by ``isinstance``; what must be known before the class is imported (the extra that installs it,
whether receivers always decode it) is said by its :data:`REGISTRY` line. A new codec is one module
with a class that has ``from_options`` plus that one line. The legacy frame (original scripts) keeps its own encoder in
:mod:`latentcomm.wire.encodings`: its layout is frozen and has no room for another codec.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentcomm.errors import LocalProtocolError, MissingExtra, require

if TYPE_CHECKING:  # the interface names tensors; a video-only install (no torch) never builds one
    import numpy as np
    import torch

@dataclass(frozen=True)
class Registered:
    """A codec as :data:`REGISTRY` declares it: where its class is, and what a program must know
    before importing it (an import may cost torch, a second and a gigabyte)."""

    #: ``module:Class``, imported on first use.
    target: str
    #: The pyproject.toml extra that brings its dependencies ("core": none beyond the core).
    extra: str = "core"
    #: A receiver decodes its streams whatever ``--codec`` names (a decoder costs nothing until a
    #: stream uses it): the video codecs.
    always_decoded: bool = False


#: ``--codec`` name -> its class and what it needs. Classes load on first use, so a sender of H.264
#: never loads the learned codec's model code, and the video codecs' PyAV stays out of an image
#: sender. A new codec is one module and one line here.
REGISTRY: dict[str, Registered] = {
    "vae": Registered("latentcomm.codecs.vae:VaeCodec", extra="vae"),
    "learned": Registered("latentcomm.codecs.learned.codec:LearnedCodec", extra="learned"),
    "h264": Registered("latentcomm.codecs.video:VideoCodec", always_decoded=True),
    "av1": Registered("latentcomm.codecs.video:VideoCodec", always_decoded=True),
    "vp9": Registered("latentcomm.codecs.video:VideoCodec", always_decoded=True),
}


@dataclass(frozen=True)
class CodecOptions:
    """What the command line says about a codec; each codec takes the options that concern it."""

    model: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    dtype: str = "f16"
    compression: str = "zstd"
    quality: float | None = None
    target_bytes: int | None = None
    context: bool = True
    refine_steps: int = 0
    postfilter: bool = True


@dataclass(frozen=True)
class Encoded:
    """What a codec hands the frame builder: encoding code, compression, latent shape, payload, params."""

    encoding: int
    compression: int
    shape: tuple[int, int, int]
    payload: bytes = field(repr=False)
    params: tuple[tuple[float, float], ...] = ()
    #: Facts for reports: timings, the quality chosen, clipped fraction...
    facts: dict = field(default_factory=dict, repr=False)


class ImageCodec(ABC):
    """Images are (1, 3, H, W) float tensors in [-1, 1] (what ``images.pil_to_tensor`` gives)."""

    #: The family, as reports name it: "vae", "learned" or "video".
    kind: str
    #: One instance per stream: frames depend on earlier ones (a receiver keeps one per stream, a lost
    #: frame needs a key frame, and a broker assigns the whole stream to one receiver).
    stateful: bool = False
    #: Decodes the original scripts' frames (a 4-channel AutoencoderKL latent): the VAE codec.
    decodes_legacy_frames: bool = False
    #: In a stream of stills, codes frames against its own earlier ones to a byte budget
    #: (:meth:`encode_in_stream`): the learned codec.
    inter_frames: bool = False
    #: How the payload is compressed, for reports ("zstd", "entropy-coded", "h264"...).
    compression_label: str = ""
    #: What reports call the payload's form (the ``dtype`` field): a VAE latent's precision, "learned",
    #: a video codec's name.
    label: str = ""
    #: Names the exact model in v2 frames: ``<name>@<weight fingerprint>``.
    model_id: str
    #: Where the model came from (Hub id or folder), for reports.
    source: str
    load_seconds: float = 0.0

    @classmethod
    @abstractmethod
    def from_options(cls, name: str, options: CodecOptions) -> ImageCodec:
        """The codec ``--codec name`` with these options (what :func:`load_codec` calls)."""

    @abstractmethod
    def encode(self, image: torch.Tensor) -> Encoded:
        """Encode one image of any size (the codec pads as it needs; the frame carries the size)."""

    def encode_in_stream(self, image: torch.Tensor, target_bytes: int | None, reference: Any = None) -> Encoded:
        """One frame of a stream of stills, within ``target_bytes`` where the codec can aim (None: no
        budget), against ``reference`` (the ``facts["reference"]`` of the last frame the receiver took)
        where it codes inter frames. By default: the image alone, as :meth:`encode` codes it."""
        return self.encode(image)

    def payload_facts(self, payload: bytes) -> dict:
        """What a receiver's report can say about a payload it decoded (the learned codec: its quality)."""
        return {}

    def new_stream(self) -> ImageCodec:
        """A stateful codec's fresh instance for another stream; a stateless one is shared."""
        return self

    def drop_reference(self) -> None:
        """A stateful codec forgets what its next frame would be coded against (a frame of its stream
        was refused undecoded), so the stream goes on from a key frame. Nothing for stateless codecs."""
        return None

    def set_enhancer(self, enhancer) -> None:
        """A receiver's picture enhancer (``--enhance``): the codecs it was trained for take it."""
        return None

    def frame_name(self, name: str, payload: bytes) -> str:
        """The name a decoded frame is reported under: the one it carries (a video stream's inter
        frames may leave it out and carry only their index in the source)."""
        return name

    @abstractmethod
    def decode(self, encoding: int, compression: int, shape, payload: bytes, params, image_size) -> torch.Tensor:
        """The inverse: frame fields -> image (1, 3, H, W) in [-1, 1], cropped to ``image_size``.

        Raises RemoteProtocolError (with a one-line reason) for anything that does not decode.
        """

    def decode_pixels(self, encoding: int, compression: int, shape, payload: bytes, params, image_size) -> np.ndarray:
        """:meth:`decode` as what a viewer sees: an (H, W, 3) uint8 array, what the receiver shows, saves
        and records. Video codecs decode to pixels directly and never touch torch (a video-only install
        has none); the tensor codecs go through :meth:`decode`."""
        from latentcomm.images import tensor_to_uint8

        return tensor_to_uint8(self.decode(encoding, compression, shape, payload, params, image_size))


class CodecUnavailable(MissingExtra):
    """A registered codec whose dependencies this install lacks (a video-only install and the learned
    or VAE codec): the message says which extra to install."""


def codec_class(name: str) -> type[ImageCodec]:
    """The class registered for ``--codec name``."""
    if name not in REGISTRY:
        raise LocalProtocolError(f"unknown codec {name!r}; choose one of {', '.join(REGISTRY)}")
    entry = REGISTRY[name]
    module, _, cls = entry.target.partition(":")
    try:  # an install without this codec's extra: one line, what to add
        loaded = require(module, "full" if entry.extra == "core" else entry.extra, f"codec {name!r}")
    except MissingExtra as exc:
        raise CodecUnavailable(str(exc)) from None
    return getattr(loaded, cls)


def is_learned_model(model: str | Path) -> bool:
    """Does this folder hold a learned codec (rather than an AutoencoderKL)?"""
    cfg = Path(model).expanduser() / "config.json"
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("_class_name") == "LearnedCodecModel"
    except (OSError, ValueError):
        return False


def load_codec(codec: str, model: str = "auto", device: str = "auto", precision: str = "auto", **options) -> ImageCodec:
    """The one way scripts get a codec: ``--codec`` plus ``--model`` (auto = the codec's default model)
    and the options of :class:`CodecOptions`. A ``vae`` codec named with a learned codec's folder is
    that learned codec (``--model`` says which model, whatever ``--codec`` defaulted to)."""
    if codec == "vae" and model != "auto" and is_learned_model(model):
        codec = "learned"
    options = CodecOptions(model=model, device=device, precision=precision, **options)
    return codec_class(codec).from_options(codec, options)
