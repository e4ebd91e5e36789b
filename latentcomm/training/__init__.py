"""Training: ``python -m latentcomm.training --objective NAME`` (``latentcomm.train`` still works).

Every objective runs through the one loop in :mod:`~latentcomm.training.loop` (resume, checkpoints,
metrics, deadline, learning-rate schedule, evaluation, progress, export); an objective is one module
with an :class:`~latentcomm.training.loop.Objective` subclass (its flags, model and data, the loss
on a batch, the held-out evaluation, its checkpoint state and export), registered on one line here.
Data (photo pyramids, packs, crop samplers) lives in :mod:`~latentcomm.training.datasets`; what the
learned-codec objectives share, in :mod:`~latentcomm.training.common`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from latentcomm.training.loop import Objective, train
from latentcomm.training.loop import parse_args as _parse_args

#: ``--objective`` -> the objective's class, ``module:Class`` (imported when chosen).
OBJECTIVES: dict[str, str] = {
    "reconstruction": "latentcomm.training.autoencoder:Reconstruction",  # the embedded AutoencoderKL
    "codec": "latentcomm.training.codec:Codec",  # the learned codec, rate + lambda * distortion
    "context": "latentcomm.training.context:Context",  # a context model on a codec's frozen transforms
    "decoder": "latentcomm.training.decoder:Decoder",  # a codec's decoder on its frozen bitstream
    "postnet": "latentcomm.training.postnet:Postnet",  # a post-network after a codec's frozen decoder
    "enhance": "latentcomm.training.enhance:Enhance",  # the receiver's video enhancer
}


def objective_class(name: str) -> type[Objective]:
    """The class registered as ``name`` (KeyError if none is)."""
    module, _, cls = OBJECTIVES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def _split(argv: list[str] | None) -> tuple[type[Objective], list[str]]:
    pre = argparse.ArgumentParser(prog="python -m latentcomm.training", add_help=False)
    pre.add_argument("--objective", choices=list(OBJECTIVES), default="reconstruction")
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    return objective_class(known.objective), list(sys.argv[1:] if argv is None else argv)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of the objective ``--objective`` names (reconstruction by default)."""
    cls, rest = _split(argv)
    return _parse_args(cls, rest, OBJECTIVES)


def main(argv: list[str] | None = None) -> int:
    """Train the objective ``--objective`` names (reconstruction by default) with the other flags."""
    cls, rest = _split(argv)
    return train(cls, rest, OBJECTIVES)
