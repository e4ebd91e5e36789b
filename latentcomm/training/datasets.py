"""DOC"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from latentcomm import data
from latentcomm.images import load_image

#: Scales of the training pyramid for the 43 photos (about 1.1 MP at 1.0) and, relative to a
#: 1600-pixel long side, for the large Unsplash photos.
PHOTO_SCALES = (1.0, 0.6)


UNSPLASH_LONG_SIDES = (1600, 900)


def training_sources(photos: Path, unsplash: Path | None) -> list[tuple[Image.Image, list[tuple[int, int]]]]:
    """The largest copy of each training image and the (width, height) of its smaller copies.

    Held-out photos and aerial images are never included. Photos train at native size and at 0.6x;
    the large Unsplash photos at a 1600 and a 900 pixel long side.
    """
    out: list[tuple[Image.Image, list[tuple[int, int]]]] = []
    for p in tqdm(data.training_photos(photos), desc="loading photos", unit="img"):
        img = load_image(p)
        sizes = [(round(img.width * s), round(img.height * s)) for s in PHOTO_SCALES if s != 1.0]
        out.append((img, sizes))
    if unsplash is not None and unsplash.is_dir():
        files = sorted(p for p in unsplash.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for p in tqdm(files, desc="loading unsplash", unit="img"):
            img = load_image(p)
            top, *rest = UNSPLASH_LONG_SIDES
            s = top / max(img.size)
            img = img.resize((round(img.width * s), round(img.height * s)), Image.LANCZOS)
            sizes = [(round(img.width * side / top), round(img.height * side / top)) for side in rest]
            out.append((img, sizes))
    return out


def expand(sources: list[tuple[Image.Image, list[tuple[int, int]]]]) -> list[np.ndarray]:
    """The training pyramid as uint8 HxWx3 arrays: each source, then its smaller copies."""
    out: list[np.ndarray] = []
    for img, sizes in sources:
        out.append(np.asarray(img).copy())
        out.extend(np.asarray(img.resize(size, Image.LANCZOS)).copy() for size in sizes)
    return out


def load_training_images(photos: Path, unsplash: Path | None) -> list[np.ndarray]:
    """Training pyramid as uint8 HxWx3 arrays (held-out photos and aerial images never included)."""
    return expand(training_sources(photos, unsplash))


def write_pack(sources: list[tuple[Image.Image, list[tuple[int, int]]]], path: Path, quality: int = 90) -> None:
    """The training images in one .npz: JPEG bytes of each source (no chroma subsampling) and the
    sizes of its smaller copies, which :func:`read_pack` rebuilds.

    Small enough to travel with the checkout to a GPU machine (about 40 MB at quality 90, where the
    raw pyramid would be 600 MB; the checkout may carry 64 MiB in all). The JPEG error at quality 90
    4:4:4 is about 40 dB PSNR, well above what the codec reconstructs at the rates it targets.
    """

    path.parent.mkdir(parents=True, exist_ok=True)
    blobs = {}
    for i, (img, sizes) in enumerate(sources):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality, subsampling=0)
        blobs[f"img{i:04d}"] = np.frombuffer(buf.getvalue(), dtype=np.uint8)
        blobs[f"siz{i:04d}"] = np.asarray(sizes, dtype=np.int32).reshape(-1, 2)
    np.savez(path, **blobs)


def read_pack(path: Path) -> list[np.ndarray]:
    """The training pyramid from a pack written by :func:`write_pack`."""

    with np.load(path) as pack:
        names = sorted(k for k in pack.files if k.startswith("img"))
        sources = []
        for k in names:
            img = Image.open(io.BytesIO(pack[k].tobytes())).convert("RGB")
            sizes = pack.get("siz" + k[3:], np.zeros((0, 2), np.int32))
            sources.append((img, [(int(w), int(h)) for w, h in sizes]))
    return expand(sources)


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The flags :func:`training_set` reads, shared by every learned-codec objective."""
    p.add_argument("--data", type=Path, default=data.PHOTOS_DIR, help="folder of photos (held-out ones are skipped)")
    p.add_argument("--extra-data", type=Path, default=data.UNSPLASH_DIR, help="folder of large training-only photos")
    p.add_argument("--data-pack", type=Path, default=None, help="train from this .npz pack instead of the folders")


def training_set(args: argparse.Namespace) -> list[np.ndarray]:
    """The training pyramid from ``--data-pack`` or the photo folders; ValueError says what is missing."""
    if args.data_pack is not None:
        if not args.data_pack.is_file():
            raise ValueError(f"--data-pack {args.data_pack} does not exist")
        images = read_pack(args.data_pack)
    else:
        images = load_training_images(args.data, args.extra_data)
    if not images:
        raise ValueError(f"no training photos in {args.data}")
    return images


class Crops:
    """Random crops with horizontal flips, drawn from a seeded generator (reproducible on resume)."""

    def __init__(self, images: list[np.ndarray], crop: int, gen: torch.Generator) -> None:
        self.images = [torch.from_numpy(a).permute(2, 0, 1) for a in images if min(a.shape[:2]) >= crop]
        if not self.images:
            raise ValueError(f"no training image is at least {crop}x{crop}")
        self.crop, self.gen = crop, gen

    def batch(self, n: int) -> torch.Tensor:
        c = self.crop
        out = torch.empty(n, 3, c, c)
        for i in range(n):
            img = self.images[int(torch.randint(len(self.images), (1,), generator=self.gen))]
            y = int(torch.randint(img.shape[1] - c + 1, (1,), generator=self.gen))
            x = int(torch.randint(img.shape[2] - c + 1, (1,), generator=self.gen))
            patch = img[:, y : y + c, x : x + c].float() / 255.0
            out[i] = patch.flip(-1) if bool(torch.rand(1, generator=self.gen) < 0.5) else patch
        return out


#: Multi-scale pyramid: evaluation happens at native size and at 256x256 (about 0.3x), so the
#: model sees both fine and dense detail.
SCALES = (1.0, 0.6, 0.35)


class CropSampler:
    """Random crops + horizontal flips from an in-memory multi-scale pyramid of the photos."""

    def __init__(self, paths: list[Path], crop: int, generator: torch.Generator) -> None:
        self.crop = crop
        self.gen = generator
        self.images: list[torch.Tensor] = []
        for p in tqdm(paths, desc="loading photos", unit="img"):
            img = load_image(p)
            for s in SCALES:
                w, h = max(crop, round(img.width * s)), max(crop, round(img.height * s))
                scaled = img if s == 1.0 else img.resize((w, h), Image.Resampling.LANCZOS)
                self.images.append(torch.from_numpy(np.asarray(scaled).copy()).permute(2, 0, 1))

    def batch(self, n: int) -> torch.Tensor:
        out = torch.empty(n, 3, self.crop, self.crop)
        c = self.crop
        for i in range(n):
            idx = int(torch.randint(len(self.images), (1,), generator=self.gen))
            img = self.images[idx]
            y = int(torch.randint(img.shape[1] - c + 1, (1,), generator=self.gen))
            x = int(torch.randint(img.shape[2] - c + 1, (1,), generator=self.gen))
            patch = img[:, y : y + c, x : x + c].float() / 127.5 - 1.0
            if bool(torch.rand(1, generator=self.gen) < 0.5):
                patch = patch.flip(-1)
            out[i] = patch
        return out
