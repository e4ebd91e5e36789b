"""The receiver's ``--out`` folder: numbered pictures that are never overwritten and stay in bounds.

Files are ``NNNN_recon.png`` (exact pixels), ``NNNN_compare.png`` (side by side) and, for live video,
``NNNN_video-STREAM.mkv`` (the stream's access units as they arrived, :mod:`latentcomm.videofile`;
PNGs of video frames only when asked), numbered on
from the highest number already in the folder, so a restarted receiver continues where the last one
stopped instead of writing over its pictures (and ``images.jsonl`` never holds two records for one
file). Each file is created exclusively (``O_EXCL``): two receivers sharing a folder skip each
other's numbers rather than overwrite them.

``max_bytes`` (``--max-disk``) bounds the pictures' and videos' total size: past it the oldest
files are deleted (never a video still being written), the newest always kept, and the first
pruning is logged so an operator knows why old files went. ``images.jsonl`` is the receiver's
record and is not pruned (about 1 KB a picture).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from latentcomm.display import compare_image
from latentcomm.videofile import VideoFileError, VideoSegment

log = logging.getLogger(__name__)

NAME = re.compile(r"^(\d{4,})_(recon\.png|compare\.png|video-[\w.-]+\.mkv)$")
#: What of a stream's name goes into its video file's name.
UNSAFE = re.compile(r"[^\w.-]+")


class OutputStore:
    """Numbered picture pairs in one folder, continued across restarts, pruned to ``max_bytes``."""

    def __init__(self, folder: Path, max_bytes: int | None = None) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._files: OrderedDict[int, list[tuple[Path, int]]] = OrderedDict()
        self.total_bytes = 0
        self._pruning_logged = False
        #: Each live video stream's open file: (its number, the segment).
        self._videos: dict[object, tuple[int, VideoSegment]] = {}
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

    def save_video(
        self, stream: object, label: str, codec: str, unit: bytes, key: bool, size: tuple[int, int], when: float
    ) -> tuple[Path, int] | None:
        """One access unit of the video stream ``stream`` (any hashable key; ``label`` names its files),
        appended to its open file, or to a new one at a key frame (the first, a new codec or coded size,
        or one past the segment bounds); (file, frame number in it). None for an inter frame with no
        file open (one that could not be started: said once, in the log). OSError if it can't be written."""
        current = self._videos.get(stream)
        if key and current is not None and (current[1].codec != codec or current[1].size != size or current[1].due()):
            self.end_video(stream)
            current = None
        if current is None:
            if not key:
                return None
            self.folder.mkdir(parents=True, exist_ok=True)
            name = UNSAFE.sub("_", label).strip("._") or "stream"
            for _ in range(10_000):
                index = self.next_index
                self.next_index += 1
                path = self.folder / f"{index:04d}_video-{name}.mkv"
                try:
                    segment = VideoSegment(path, codec, unit, size)
                except FileExistsError:
                    continue  # another receiver on this folder took the number
                except VideoFileError as exc:
                    log.error("video of %s not recorded until its next key frame: %s", label, exc)
                    return None
                break
            else:
                raise OSError(f"no free file number in {self.folder}")
            current = self._videos[stream] = (index, segment)
            self._files[index] = [(path, 0)]
            log.info("recording %s video of %s to %s", codec, label, path)
        index, segment = current
        frame = segment.write(unit, key, when)
        self._files[index] = [(segment.path, segment.bytes)]
        self.total_bytes += len(unit)
        self._prune()
        return segment.path, frame

    def end_video(self, stream: object) -> None:
        """Close a stream's video file (its stream ended, changed size, or the receiver stops)."""
        current = self._videos.pop(stream, None)
        if current is None:
            return
        index, segment = current
        try:
            size = segment.close()
        except Exception as exc:  # noqa: BLE001 - FFmpeg's errors at a file's end: the frames are in it already
            log.error("closing %s: %s", segment.path, exc)
            size = segment.bytes
        if index in self._files:
            self.total_bytes += size - segment.bytes
            self._files[index] = [(segment.path, size)]
        log.info("recorded %d frame(s) of video to %s", segment.frames, segment.path)
        self._prune()

    def close(self) -> None:
        """Finish every open video file."""
        for stream in list(self._videos):
            self.end_video(stream)

    def _prune(self) -> None:
        if self.max_bytes is None:
            return
        writing = {index for index, _ in self._videos.values()}
        while self.total_bytes > self.max_bytes and len(self._files) > 1:
            index = next((i for i in self._files if i not in writing), None)
            if index is None or index == next(reversed(self._files)):
                return  # only files being written, or the newest: kept
            files = self._files.pop(index)
            if not self._pruning_logged:
                log.warning(
                    "%s holds %d bytes of pictures and video, over --max-disk %d: deleting the oldest files "
                    "from now on (first: %04d)",
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
