"""The receiver's ``--out`` folder: numbered pictures that are never overwritten and stay in bounds.

Files are ``NNNN_recon.png`` (exact pixels) and ``NNNN_compare.png`` (side by side), numbered on
from the highest number already in the folder, so a restarted receiver continues where the last one
stopped instead of writing over its pictures (and ``images.jsonl`` never holds two records for one
file). Each file is created exclusively (``O_EXCL``): two receivers sharing a folder skip each
other's numbers rather than overwrite them.

``max_bytes`` (``--max-disk``) bounds the pictures' total size: past it the oldest pairs are
deleted, the newest always kept, and the first pruning is logged so an operator knows why old
files went. ``images.jsonl`` is the receiver's record and is not pruned (about 1 KB a picture).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from latentcomm.display import compare_image

log = logging.getLogger(__name__)

NAME = re.compile(r"^(\d{4,})_(recon|compare)\.png$")


class OutputStore:
    """Numbered picture pairs in one folder, continued across restarts, pruned to ``max_bytes``."""

    def __init__(self, folder: Path, max_bytes: int | None = None) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._files: OrderedDict[int, list[tuple[Path, int]]] = OrderedDict()
        self.total_bytes = 0
        self._pruning_logged = False
        found: dict[int, list[tuple[Path, int]]] = {}
        if folder.is_dir():
            for path in folder.iterdir():
                m = NAME.match(path.name)
                if m and path.is_file():
                    found.setdefault(int(m.group(1)), []).append((path, path.stat().st_size))
        for index in sorted(found):
            self._files[index] = found[index]
            self.total_bytes += sum(size for _, size in found[index])
        #: The number the next picture gets (one past the highest in the folder).
        self.next_index = (max(found) if found else 0) + 1
        if found:
            log.info("%s holds pictures up to %04d: numbering continues at %04d", folder, max(found), self.next_index)
        self._prune()

    def save(self, original: Image.Image | None, recon: Image.Image) -> tuple[int, Path, Path]:
        """Write a pair under the next free number; (number, recon path, compare path). OSError if it
        can't be written (that number is then spent, so one bad path never blocks the next picture)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(10_000):
            index = self.next_index
            self.next_index += 1
            recon_path = self.folder / f"{index:04d}_recon.png"
            compare_path = self.folder / f"{index:04d}_compare.png"
            if recon_path.is_file() or compare_path.is_file():
                continue  # another receiver on this folder took the number
            written: list[tuple[Path, int]] = []
            try:
                written.append((recon_path, _write_new(recon_path, recon)))
                if original is not None:  # without an original the comparison is the reconstruction: not twice
                    written.append((compare_path, _write_new(compare_path, compare_image(original, recon))))
            except FileExistsError as exc:
                for path, _ in written:  # ours, just written: the pair goes under another number
                    path.unlink(missing_ok=True)
                if not Path(exc.filename or recon_path).is_file():
                    raise  # a folder or a link where the file should go: this picture fails
                continue  # another receiver created it between our check and our write
            self._files[index] = written
            self.total_bytes += sum(size for _, size in written)
            self._prune()
            return index, recon_path, compare_path if original is not None else recon_path
        raise OSError(f"no free picture number in {self.folder}")

    def _prune(self) -> None:
        if self.max_bytes is None:
            return
        while self.total_bytes > self.max_bytes and len(self._files) > 1:
            index, files = self._files.popitem(last=False)
            if not self._pruning_logged:
                log.warning(
                    "%s holds %d bytes of pictures, over --max-disk %d: deleting the oldest pairs from now on "
                    "(first: %04d)",
                    self.folder, self.total_bytes, self.max_bytes, index,
                )  # fmt: skip
                self._pruning_logged = True
            for path, size in files:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.error("could not delete %s: %s", path, exc.strerror or exc)
                self.total_bytes -= size


def _write_new(path: Path, image: Image.Image) -> int:
    """Save a PNG to a path that must not exist yet; its size in bytes.

    zlib level 1: a 640x352 picture takes 20 ms instead of 150 ms at Pillow's default (measured),
    which is what lets a receiver keep up with a 10 fps video stream; the pixels are the same.
    """
    with path.open("xb") as fh:
        image.save(fh, format="PNG", compress_level=1)
        return fh.tell()
