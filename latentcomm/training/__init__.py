"""Training: ``python -m latentcomm.training --objective NAME`` (``latentcomm.train`` still works).

One module per objective, registered in :data:`OBJECTIVES`; what they share lives beside them:
:mod:`~latentcomm.training.common` (checkpoints, exports, the learning-rate schedule, the flags of a
time-boxed run on a frozen codec) and :mod:`~latentcomm.training.datasets` (photo pyramids, packed
training sets, crop samplers). Helpers that belong to a model (``hyperprior``, ``rounded_latent``)
live next to the model. A new objective is one module with a ``main(argv)`` plus one line here.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: ``--objective`` -> the module that trains it.
OBJECTIVES: dict[str, str] = {
    "reconstruction": "latentcomm.training.autoencoder",  # the embedded AutoencoderKL
    "codec": "latentcomm.training.codec",  # the learned codec, rate + lambda * distortion
    "context": "latentcomm.training.context",  # a context model on a codec's frozen transforms
    "decoder": "latentcomm.training.decoder",  # a codec's decoder on its frozen bitstream
    "postnet": "latentcomm.training.postnet",  # a post-network after a codec's frozen decoder
    "enhance": "latentcomm.training.enhance",  # the receiver's video enhancer
}


def main(argv: list[str] | None = None) -> int:
    """Run the objective ``--objective`` names (reconstruction by default) with the other flags."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--objective", choices=list(OBJECTIVES), default="reconstruction")
    known, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    return importlib.import_module(OBJECTIVES[known.objective]).main(rest)
