"""The README's quick-start picture: the same image through the learned codec and the VAE path.

    python -m benchmarks.pictures            # temp/apple.jpeg at 256x256 -> docs/quickstart_compare.png

Columns: the original, the learned codec at the byte size of a few qualities, and the embedded
VAE's float16 latent as the default (legacy) sender sends it; each caption gives the payload bytes
and PSNR. Everything goes through the same ImageCodec calls as the scripts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from latentcomm.codecs import LEARNED_MODEL_DIR, LearnedCodec
from latentcomm.data import REPO_ROOT
from latentcomm.engine import Engine
from latentcomm.images import load_image, pil_to_tensor, resize_square, tensor_to_pil
from latentcomm.metrics import psnr
from latentcomm.models import EMBEDDED_MODEL_DIR
from latentcomm.wire.encodings import FLAG_FLOAT16, decode_latent, encode_latent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=str(REPO_ROOT / "temp" / "apple.jpeg"), help="input image")
    p.add_argument("--size", type=int, default=256, help="square size, as the sender's default --size")
    p.add_argument("--qualities", default="1,4,7,11", help="learned codec qualities to show")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "quickstart_compare.png", help="output PNG")
    args = p.parse_args(argv)
    img = resize_square(load_image(args.image), args.size)
    x = pil_to_tensor(img)
    tiles = [("original", img)]
    learned = LearnedCodec(LEARNED_MODEL_DIR, "cpu", "fp32")
    for q in (float(v) for v in args.qualities.split(",")):
        enc = learned.encode(x, quality=q)
        rec = tensor_to_pil(learned.decode(enc.encoding, enc.compression, enc.shape, enc.payload, (), img.size[::-1]))
        tiles.append((f"learned q{q:g}: {len(enc.payload):,} B, {psnr(img, rec):.1f} dB", rec))
    engine = Engine(str(EMBEDDED_MODEL_DIR), "cpu", "auto")
    latent = engine.encode(x)
    legacy = encode_latent(latent, FLAG_FLOAT16)
    z = decode_latent(FLAG_FLOAT16, legacy.channels, legacy.height, legacy.width, legacy.payload)
    rec = tensor_to_pil(engine.decode(z))
    tiles.append((f"VAE f16 (default): {len(legacy.payload):,} B, {psnr(img, rec):.1f} dB", rec))
    s = args.size
    grid = Image.new("RGB", (len(tiles) * s, s + 20), "white")
    draw = ImageDraw.Draw(grid)
    for i, (caption, tile) in enumerate(tiles):
        grid.paste(tile, (i * s, 20))
        draw.text((i * s + 3, 4), caption, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
