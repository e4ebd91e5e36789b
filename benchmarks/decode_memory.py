"""Peak memory of a learned-codec decode by picture size: what a frame claiming a large picture costs
the receiver (issue "Hardening II", item 3).

    python -m benchmarks.decode_memory                   # 1, 4 and 16 Mpx, tiled and in one pass
    python -m benchmarks.decode_memory --sizes 1024 --json /tmp/m.json

Each payload is a real learned-codec frame (quality 7, the shipped model) of a held-out photo
scaled to the size. Each decode runs in a fresh process, as a receiver would: the model is loaded,
then ``LearnedCodec.decode`` runs once; the process's peak resident set (``VmHWM``) and its
peak after loading the model are reported. ``one pass`` decodes with tiling turned off
(the decoder before tiling); ``tiled`` is today's decoder. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from benchmarks.harness import RESULTS, run_meta, write_results
from latentcomm import data
from latentcomm.codecs import load_codec

CHILD = r"""
import sys, time, torch

def peak_kb():  # this process's own high-water mark (ru_maxrss would include the parent's, from fork)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

import latentcomm.codecs.learned.codec as learned
from latentcomm.codecs import load_codec
from latentcomm.wire.encodings import COMP_NONE, ENC_LEARNED
if sys.argv[2] == "one-pass":
    learned.SYNTHESIS_TILE = 10**6
codec = load_codec("learned", "auto", "cpu", "fp32")
side = int(sys.argv[3])
payload = open(sys.argv[1], "rb").read()
loaded = peak_kb()
t0 = time.perf_counter()
shape = (codec.model.config.M, 4 * -(-side // 64), 4 * -(-side // 64))
img = codec.decode(ENC_LEARNED, COMP_NONE, shape, payload, (), (side, side))
seconds = time.perf_counter() - t0
print(loaded, peak_kb(), seconds, tuple(img.shape))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="square picture sides")
    p.add_argument("--json", type=Path, default=RESULTS / "decode_memory.json", help="where to write the results")
    p.add_argument("--no-one-pass", action="store_true", help="skip the untiled decodes (they need 7 GB at 16 Mpx)")
    args = p.parse_args(argv)

    from latentcomm.images import load_image, pil_to_tensor

    codec = load_codec("learned", "auto", "cpu", "fp32", quality=7, postfilter=False)
    photo = load_image(data.heldout_photos()[0])
    rows = []
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    modes = ["tiled"] if args.no_one_pass else ["tiled", "one-pass"]
    with tempfile.TemporaryDirectory() as tmp:
        for side in tqdm(args.sizes, desc="sizes"):
            enc = codec.encode(pil_to_tensor(photo.resize((side, side))))
            path = Path(tmp) / f"{side}.bin"
            path.write_bytes(enc.payload)
            for mode in modes:
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(path), mode, str(side)],
                    capture_output=True, text=True, check=True, env=env,
                )  # fmt: skip
                loaded_kb, peak_kb, seconds, _shape = out.stdout.strip().split(" ", 3)
                rows.append({
                    "side": side, "megapixels": round(side * side / 1e6, 1), "mode": mode,
                    "payload_bytes": len(enc.payload), "rss_after_load_mb": round(int(loaded_kb) / 1024),
                    "peak_rss_mb": round(int(peak_kb) / 1024), "decode_s": round(float(seconds), 2),
                })  # fmt: skip
    result = {**run_meta(), "rows": rows}
    write_results(args.json, result)
    print("| picture | decoder | payload | RSS after loading | peak RSS | decode |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['side']}x{r['side']} ({r['megapixels']} Mpx) | {r['mode']} | {r['payload_bytes']:,} B | "
              f"{r['rss_after_load_mb']:,} MB | {r['peak_rss_mb']:,} MB | {r['decode_s']} s |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
