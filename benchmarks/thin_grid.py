"""The same frame at a thin link from plain pipes and from ours, side by side (docs/video.md).

    python -m benchmarks.thin_grid                       # the held-out camera clip, 640x352, 64 kbit/s
    python -m benchmarks.thin_grid --scene clip_01 --frame 60

Ours (``--codec auto``, sealed, the real sender and receiver over the throttle) runs first; each
plain pipe is then given ours' bits on the wire (one run at that rate: its rate control lands near
it, and the label says what it spent): x264 medium, SVT-AV1 preset 8, x264 medium at half size with
bicubic upscaling. The grid (source, then each system, with its PSNR on that frame and over the
clip) goes to ``benchmarks/results/thin_grid.png``, its numbers to ``thin_grid.json``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmarks.harness import RESULTS, run_meta, write_results
from benchmarks.operating_points import scene_path
from benchmarks.stream import RATES, SIZES, anchor, live_run, psnr, source_frames

REPO = Path(__file__).resolve().parents[1]
PLAIN = (
    ("plain x264 medium", "libx264", "medium", 1.0),
    ("plain SVT-AV1 preset 8", "libsvtav1", "8", 1.0),
    ("plain x264 medium, half size + bicubic", "libx264", "medium", 0.5),
)


def label(picture: np.ndarray, text: str) -> Image.Image:
    image = Image.fromarray(picture)
    band = Image.new("RGB", (image.width, 22), (0, 0, 0))
    ImageDraw.Draw(band).text((6, 5), text, fill=(255, 255, 255))
    out = Image.new("RGB", (image.width, image.height + band.height))
    out.paste(band, (0, 0))
    out.paste(image, (0, band.height))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", default="one-by-one-person-detection", help="station, clip_01..03 or a camera clip")
    p.add_argument("--size", default="640x352", choices=list(SIZES), help="stream size")
    p.add_argument("--rate", default="64k", choices=list(RATES), help="link rate")
    p.add_argument("--frame", type=int, default=None, help="the source index shown (default: the 80th frame taken)")
    p.add_argument("--out", type=Path, default=RESULTS / "thin_grid.png", help="where to write the grid")
    args = p.parse_args(argv)
    from latentcomm.wire.keys import generate_key

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = scene_path(args.scene, tmp)
        source = source_frames(video, SIZES[args.size])
        index = args.frame if args.frame is not None else sorted(source)[min(79, len(source) - 1)]
        if index not in source:
            raise SystemExit(f"error: frame {index} is not among the frames taken ({min(source)}..{max(source)})")
        key = tmp / "grid.key"
        generate_key(key)
        kept: dict = {}
        ours = live_run("auto", video, args.size, args.rate, key, source, tmp, keep=kept)
        panels = [label(source[index], f"source, frame {index}")]
        rows = [{"system": "ours (--codec auto), sealed", **ours}]

        def shown_at(shown: dict) -> np.ndarray:
            before = [i for i in shown if i <= index]
            return shown[max(before)] if before else np.full_like(source[index], 128)

        pictures = [shown_at(kept["shown"])]
        bits = ours["bits_per_second"]
        for name, lib, preset, scale in PLAIN:
            keep: dict = {}
            row = anchor(lib, video, SIZES[args.size], round(bits), source, preset, scale, "bicubic", keep=keep)
            rows.append({"system": name, **row})
            pictures.append(shown_at(keep["shown"]))
        for row, picture in zip(rows, pictures, strict=True):
            row["frame_psnr_db"] = psnr(source[index], picture)
            panels.append(
                label(picture, f"{row['system']}: {row['bits_per_second'] / 1000:.0f} kbit/s, "
                               f"{row['frame_psnr_db']:.1f} dB here, {row['viewer_psnr_db']:.1f} dB clip")
            )  # fmt: skip
    w, h = panels[0].size
    cols = 2 if len(panels) > 3 else len(panels)
    grid = Image.new("RGB", (cols * w, -(-len(panels) // cols) * h), (255, 255, 255))
    for i, panel in enumerate(panels):
        grid.paste(panel, ((i % cols) * w, (i // cols) * h))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, optimize=True)
    for row in rows:
        print(f"{row['system']:<42} {row['bits_per_second'] / 1000:6.1f} kbit/s  frame {row['frame_psnr_db']:.2f} dB  "
              f"clip {row['viewer_psnr_db']:.2f} dB")  # fmt: skip
    write_results(
        args.out.with_suffix(".json"),
        {**run_meta(), "scene": args.scene, "size": args.size, "rate": args.rate, "frame": index, "rows": rows},
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
