"""latentcomm: pictures and live video across thin links.

The public API, by job (each name loads its module on first use, so ``import latentcomm`` and the
command line's ``--help`` stay fast and a sender of H.264 never loads torch's model code):

- codecs (:mod:`latentcomm.codecs`): :func:`load_codec` by ``--codec`` name, the :class:`ImageCodec`
  interface, :class:`LearnedCodec`, :class:`VaeCodec`, :class:`VideoCodec`.
- the wire, sans-I/O (:mod:`latentcomm.wire`): v2 :class:`ImageFrame`, :class:`Ack`,
  :class:`Connection`; keys (:func:`generate_key`, :func:`load_key`, :class:`Keyring`).
- transports (:mod:`latentcomm.transports`): the :class:`FrameSender`, :class:`FramePipeline` and
  :class:`FrameSource` protocols; TCP (:class:`V2Client`, :class:`Pipeline`, :class:`FrameServer`)
  and a broker (:class:`MqttSender`, :class:`BrokerPipeline`, :class:`MqttServer`).
- models: :func:`load_autoencoder` (the SD VAE or the embedded model).
- errors: :class:`LatentcommError` and its kinds.
"""

from __future__ import annotations

import importlib

from latentcomm import _moved
from latentcomm.errors import (
    DeviceError,
    ImageError,
    LatentcommError,
    LocalProtocolError,
    ModelLoadError,
    ProtocolError,
    RemoteProtocolError,
    TransportError,
)

_moved.install()

#: The package's version (pyproject.toml says the same; a test checks it).
__version__ = "0.2.0"

#: Public name -> the module that defines it.
_LAZY = {
    "load_codec": "latentcomm.codecs.base",
    "CodecOptions": "latentcomm.codecs.base",
    "Encoded": "latentcomm.codecs.base",
    "ImageCodec": "latentcomm.codecs.base",
    "LearnedCodec": "latentcomm.codecs.learned.codec",
    "LEARNED_MODEL_DIR": "latentcomm.codecs.learned.codec",
    "VaeCodec": "latentcomm.codecs.vae",
    "VideoCodec": "latentcomm.codecs.video",
    "ImageFrame": "latentcomm.wire.v2",
    "Ack": "latentcomm.wire.v2",
    "Connection": "latentcomm.wire.v2",
    "Key": "latentcomm.wire.keys",
    "Keyring": "latentcomm.wire.keys",
    "generate_key": "latentcomm.wire.keys",
    "load_key": "latentcomm.wire.keys",
    "FrameSender": "latentcomm.transports.base",
    "FramePipeline": "latentcomm.transports.base",
    "FrameSource": "latentcomm.transports.base",
    "V2Client": "latentcomm.transports.tcp",
    "Pipeline": "latentcomm.transports.tcp",
    "FrameServer": "latentcomm.transports.tcp",
    "MqttSender": "latentcomm.transports.mqtt",
    "BrokerPipeline": "latentcomm.transports.mqtt",
    "MqttServer": "latentcomm.transports.mqtt",
    "load_autoencoder": "latentcomm.models",
}

__all__ = [
    "Ack",
    "BrokerPipeline",
    "CodecOptions",
    "Connection",
    "DeviceError",
    "Encoded",
    "FramePipeline",
    "FrameSender",
    "FrameServer",
    "FrameSource",
    "ImageCodec",
    "ImageError",
    "ImageFrame",
    "Key",
    "Keyring",
    "LEARNED_MODEL_DIR",
    "LatentcommError",
    "LearnedCodec",
    "LocalProtocolError",
    "ModelLoadError",
    "MqttSender",
    "MqttServer",
    "Pipeline",
    "ProtocolError",
    "RemoteProtocolError",
    "TransportError",
    "V2Client",
    "VaeCodec",
    "VideoCodec",
    "generate_key",
    "load_autoencoder",
    "load_codec",
    "load_key",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'latentcomm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
