"""The receiving side: frames from the server queue -> decoded image -> window / PNGs / report."""

from __future__ import annotations

import json
import logging
import queue
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from latentcomm.codec import decode_latent
from latentcomm.display import Viewer, display_available, save_outputs
from latentcomm.engine import Engine
from latentcomm.errors import LatentcommError
from latentcomm.images import crop_to, tensor_to_pil, unit_float_to_image
from latentcomm.protocol import LATENT_CHANNELS
from latentcomm.transport import FrameServer, ReceivedFrame

log = logging.getLogger(__name__)

DEFAULT_HEADLESS_OUT = Path("received")


@dataclass
class ReceiverOptions:
    out_dir: Path | None = None
    show: bool = True
    once: bool = False
    json_lines: bool = False


@dataclass
class Summary:
    images_ok: int = 0
    rejected: int = 0
    bytes_received: int = 0
    reports: list[dict] = field(default_factory=list)


class Receiver:
    """Decodes frames one at a time on the calling thread with a model loaded once."""

    def __init__(self, engine: Engine, options: ReceiverOptions, stdout: TextIO = sys.stdout) -> None:
        if engine.latent_channels != LATENT_CHANNELS:
            raise LatentcommError(
                f"legacy frames carry 4-channel latents; model {engine.source} has {engine.latent_channels}"
            )
        self.engine = engine
        self.opts = options
        self.stdout = stdout
        self.summary = Summary()
        self.viewer: Viewer | None = None
        if options.show:
            if display_available():
                self.viewer = Viewer()
            else:
                if self.opts.out_dir is None:
                    self.opts.out_dir = DEFAULT_HEADLESS_OUT
                log.warning(
                    "no display available; saving images to %s instead of showing them", self.opts.out_dir.resolve()
                )

    def handle(self, item: ReceivedFrame) -> dict | None:
        """Decode, show/save and report one frame; a bad frame is logged and skipped."""
        f = item.frame
        t0 = time.perf_counter()
        try:
            latent = decode_latent(f.flag, LATENT_CHANNELS, f.height, f.width, f.payload)
            original_arr = f.original_array()
        except LatentcommError as exc:
            self.summary.rejected += 1
            log.warning("rejected frame from %s: %s", item.peer, exc)
            return None
        t1 = time.perf_counter()
        recon_t = crop_to(self.engine.decode(latent), f.image_size)
        recon = tensor_to_pil(recon_t)
        decode_s = time.perf_counter() - t0
        original = None
        if original_arr is not None:
            original = unit_float_to_image(original_arr).crop((0, 0, f.image_size[1], f.image_size[0]))
        index = self.summary.images_ok + 1
        report = {
            "index": index,
            "peer": item.peer,
            "model": self.engine.source,
            "flag": f.flag,
            "dtype": "f16" if f.flag == 2 else "i8",
            "latent_shape": [1, LATENT_CHANNELS, f.height, f.width],
            "image_size": list(f.image_size),
            "payload_bytes": len(f.payload),
            "frame_bytes": item.frame_bytes,
            "has_original": original is not None,
            "receive_s": round(item.receive_seconds, 4),
            "decompress_s": round(t1 - t0, 4),
            "decode_s": round(decode_s, 4),
        }
        if self.opts.out_dir is not None:
            recon_path, compare_path = save_outputs(self.opts.out_dir, index, original, recon)
            report.update(recon_path=str(recon_path), compare_path=str(compare_path))
        if self.viewer is not None:
            self.viewer.show(
                original, recon, f"#{index} from {item.peer}: {len(f.payload):,} byte latent", block=self.opts.once
            )
        report["decode_display_s"] = round(time.perf_counter() - t0, 4)
        self.summary.images_ok += 1
        self._print(report)
        return report

    def _print(self, r: dict) -> None:
        if self.opts.json_lines:
            print(json.dumps(r), file=self.stdout, flush=True)
            return
        lines = [
            f"Image #{r['index']} from {r['peer']}: {r['image_size'][1]}x{r['image_size'][0]}"
            + ("" if r["has_original"] else " (latent only)"),
            f"  Payload size:            {r['payload_bytes']:,} bytes ({r['dtype']}, {r['frame_bytes']:,} on the wire)",
            f"  Decode time:             {r['decode_s']:.3f} s",
            f"  Decode + display time:   {r['decode_display_s']:.3f} s",
        ]
        if "recon_path" in r:
            lines.append(f"  Saved:                   {r['compare_path']}, {r['recon_path']}")
        print("\n".join(lines), file=self.stdout, flush=True)

    def serve(self, server: FrameServer) -> Summary:
        """Process frames until Ctrl-C (or the first image with ``once``)."""
        try:
            while True:
                try:
                    item = server.frames.get(timeout=0.1)
                except queue.Empty:
                    if self.viewer is not None:
                        self.viewer.pump()
                    continue
                if self.handle(item) is not None and self.opts.once:
                    break
        except KeyboardInterrupt:
            log.info("interrupted; shutting down")
        finally:
            server.stop()
            self.summary.rejected += server.stats.rejected
            self.summary.bytes_received = server.stats.bytes_received
        return self.summary
