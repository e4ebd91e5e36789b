"""What the learned-codec objectives share: :class:`FrozenCodecObjective`, the base of the three that
train one part of a trained codec with the rest frozen (context, decoder, postnet), the model-folder
export, crop checks and the held-out photos."""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from latentcomm import data
from latentcomm.codecs.learned.model import LearnedCodecModel
from latentcomm.errors import ModelLoadError
from latentcomm.images import center_crop_square, load_image
from latentcomm.training.datasets import add_data_args
from latentcomm.training.loop import Objective, TrainingError, write_model_folder

log = logging.getLogger(__name__)

__all__ = [
    "EVAL_QUALITIES",
    "FrozenCodecObjective",
    "crop_error",
    "export",
    "heldout_squares",
    "parse_groups",
    "read_training_state",
]


def read_training_state(folder: Path) -> dict:
    """A model folder's training record ({} when it has none)."""
    path = folder / "training_state.json"
    return json.loads(path.read_text()) if path.exists() else {}


#: SSIMULACRA2's weights at its sixth scale are negligible, but the first five should all be scored:
#: the fifth (1/16 size) needs 8 pixels.
MIN_S2_CROP = 128


#: pytorch_msssim's five scales with its 11-pixel window need more than 160 pixels a side.
MSSSIM_MIN_SIDE = 161


#: The smallest training crop (a multiple of 64) that MS-SSIM can score.
MIN_MSSSIM_CROP = 192


def crop_error(crop: int, msssim_weight: float, s2_weight: float = 0.0) -> str | None:
    """What is wrong with a training ``--crop`` (the codec and decoder objectives), or None."""
    if crop < 64 or crop % 64:
        return "--crop must be a multiple of 64"
    if msssim_weight and crop < MIN_MSSSIM_CROP:
        return f"MS-SSIM needs --crop {MIN_MSSSIM_CROP} or more (or --msssim-weight 0)"
    if s2_weight and crop < MIN_S2_CROP:
        return f"SSIMULACRA2 needs --crop {MIN_S2_CROP} or more (or --s2-weight 0)"
    return None


def export(model: LearnedCodecModel, folder: Path, meta: dict) -> None:
    """Write a learned codec as a model folder: float16 safetensors, config and training record."""
    write_model_folder(folder, meta, lambda tmp: copy.deepcopy(model).cpu().save_pretrained(tmp, half_precision=True))


#: Qualities the held-out evaluation reports.
EVAL_QUALITIES = (1, 3, 5, 7, 9, 11)


def parse_groups(text: str, m: int) -> list[int]:
    """``--groups`` / ``--context-groups``: channel groups adding up to the latent's ``m`` channels."""
    try:
        groups = [int(g) for g in text.split(",")]
    except ValueError:
        raise ValueError(f"--groups must be comma-separated integers, got {text!r}") from None
    if sum(groups) != m or min(groups) <= 0:
        raise ValueError(f"--groups {text} must be positive and add up to the latent's {m} channels")
    return groups


def heldout_squares(folder: Path, size: int = 512) -> list[torch.Tensor]:
    """The held-out photos' centre ``size`` squares, (1, 3, size, size) in [0, 1]."""
    return [
        torch.from_numpy(np.asarray(center_crop_square(load_image(p), size)).copy()).permute(2, 0, 1)[None] / 255.0
        for p in data.heldout_photos(folder)
    ]


class FrozenCodecObjective(Objective):
    """One part of a trained codec (``--init-from``) trained with the rest frozen.

    Each run counts its own steps (``--steps`` is this run's); the export is the base model with the
    trained part replaced, its training record (``training_state.json``) keeping the base's and adding
    a record under its :attr:`name`: the steps and CPU seconds in all (a base that was itself trained this way is
    continued, each step counted once) and ``base``, the model the part was first trained on.
    Subclasses build :attr:`model` from :attr:`base` and say what the checkpoint keeps of it.
    """

    #: The help of ``--init-from``.
    init_help: ClassVar[str] = "trained codec whose other parts stay frozen"
    #: Whether training starts with a held-out evaluation of the base (``heldout_before``).
    scores_before: ClassVar[bool] = True

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--init-from", type=Path, default=data.MODELS_ROOT / "latentcomm-lic", help=cls.init_help)
        add_data_args(p)

    def setup(self) -> None:
        args = self.args
        try:
            self.base = LearnedCodecModel.from_pretrained(args.init_from)
            self.model = self.build(self.base)
        except (ModelLoadError, ValueError) as exc:
            raise TrainingError(str(exc)) from None
        self.generator = torch.Generator().manual_seed(args.seed)
        # The training of this part the base model already had (a run continues it), counted once. A
        # resumed run takes it from its checkpoint, whatever the base folder holds now (it may be this
        # run's own export, shipped).
        base_meta = read_training_state(args.init_from).get(self.name, {}) if self.continues_base() else {}
        self.carried = {"steps": base_meta.get("steps", 0), "cpu_seconds": base_meta.get("cpu_seconds", 0)}
        self.origin = base_meta.get("base") or f"{args.init_from.resolve().name}@{self.base.fingerprint()}"
        self.before: dict[str, float] | None = None
        self.load_data()

    def build(self, base: LearnedCodecModel) -> LearnedCodecModel:
        """The model to train, from the base (ValueError or ModelLoadError if it can't be)."""
        raise NotImplementedError

    def continues_base(self) -> bool:
        """Whether the trained part is the base's own, trained on (so its record carries over)."""
        return True

    def load_data(self) -> None:
        """Load the training and held-out data (after the model is built)."""

    def trained_state(self) -> dict[str, Any]:
        """The trained part's weights, under the checkpoint keys this objective has always used."""
        raise NotImplementedError

    def load_trained(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def record_fields(self) -> dict[str, Any]:
        """What this objective's record says of the training besides steps, seconds and evaluations."""
        return {}

    def state(self) -> dict[str, Any]:
        return {**self.trained_state(), "before": self.before, "carried": self.carried, "origin": self.origin}

    def load_state(self, state: dict[str, Any]) -> None:
        self.load_trained(state)
        self.before = state.get("before")
        # Checkpoints from before this field existed started from a fresh part.
        self.carried = state.get("carried", {"steps": 0, "cpu_seconds": 0})
        self.origin = state.get("origin", self.origin)

    def begin(self) -> None:
        if self.scores_before and self.before is None:
            self.before = self.evaluate()
            log.info("held-out before: %s", {k: round(v, 4) for k, v in self.before.items()})

    def export(self, step: int, seconds: float, evals: dict[str, float] | None) -> None:
        meta = read_training_state(self.args.init_from)
        meta[self.name] = {
            **self.record_fields(),
            "base": self.origin,
            "steps": self.carried["steps"] + step,
            "cpu_seconds": round(self.carried["cpu_seconds"] + seconds),
            **({"heldout_before": self.before} if self.scores_before else {}),
            "heldout": evals,
        }
        export(self.model, self.args.export, meta)
