"""Write the held-out photos' 512x512 centre crops (what training evaluates on) to a folder.

A GPU machine gets only the checkout, not ../shared: ``tools/train_codec_gpu.sh`` carries these
crops (3 MB, where the full photos are 11 MB) and passes their folder as ``--data``.
Usage: ``python tools/heldout_crops.py runs/gpu-heldout``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latentcomm import data
from latentcomm.images import center_crop_square, load_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="folder to write 007.png, 014.png, ... into")
    p.add_argument("--photos", type=Path, default=data.PHOTOS_DIR, help="the shared photos folder")
    p.add_argument("--size", type=int, default=512, help="crop side (training's --eval-size)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in data.heldout_photos(args.photos):
        center_crop_square(load_image(path), args.size).save(args.out / path.name)
        print(args.out / path.name)


if __name__ == "__main__":
    main()
