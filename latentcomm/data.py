"""Where the project's shared image data lives, and the fixed train / held-out split.

The split is part of the project's contract: the embedded model is never trained on the held-out
photos or on any aerial image, and the quality benchmark and real-weight tests evaluate on exactly
those. Changing it invalidates every published number, so it is a constant, not a flag.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def models_root() -> Path:
    """Where the shipped models are: $LATENTCOMM_MODELS, else the checkout's models/, else the copy
    that `pip install` puts inside the package (latentcomm/models_data)."""
    env = os.environ.get("LATENTCOMM_MODELS")
    if env:
        return Path(env)
    checkout = REPO_ROOT / "models"
    if checkout.is_dir():
        return checkout
    return Path(__file__).resolve().parent / "models_data"


MODELS_ROOT = models_root()

#: ``../shared/data`` beside the checkout; LATENTCOMM_DATA overrides it.
DATA_ROOT = Path(os.environ.get("LATENTCOMM_DATA", REPO_ROOT.parent / "shared" / "data"))
PHOTOS_DIR = DATA_ROOT / "photos"
AERIAL_DIR = DATA_ROOT / "aerial"
#: Large Unsplash photos: training material only, never evaluated on.
UNSPLASH_DIR = DATA_ROOT / "photos-unsplash"

#: Every seventh photo is held out for evaluation (6 of 49), spread over the whole collection.
HELDOUT_PHOTOS: tuple[str, ...] = ("007.png", "014.png", "021.png", "028.png", "035.png", "042.png")


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if p.is_file())


def training_photos(folder: Path = PHOTOS_DIR) -> list[Path]:
    """The photos the embedded model may be trained on (all but the held-out ones)."""
    return [p for p in _pngs(folder) if p.name not in HELDOUT_PHOTOS]


def heldout_photos(folder: Path = PHOTOS_DIR) -> list[Path]:
    """The held-out photos, for evaluation only."""
    return [p for p in _pngs(folder) if p.name in HELDOUT_PHOTOS]


def aerial_images(folder: Path = AERIAL_DIR) -> list[Path]:
    """The aerial set, for evaluation only (never trained on)."""
    return _pngs(folder)
