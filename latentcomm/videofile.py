"""A video stream kept as video: the access units a receiver took, as they arrived, in a Matroska file.

No re-encoding: each H.264, AV1 or VP9 access unit goes into the file as it came off the wire (what
``ffmpeg -c copy`` does), so the recording is the stream's own bits, a fraction of the PNGs it used
to become (a 320x176 stream at 256 kbit/s: about 32 KB a second of video against several hundred of
PNGs), and plays in any player (mpv, VLC, ffplay) or opens in PyAV.

The file's codec parameters (avcC for H.264, av1C for AV1) are those of the stream's first key frame,
read by FFmpeg's own parser from the in-band parameter sets, as a ``-c copy`` would take them from an
input file. A new file starts at a key frame whose codec or coded size differs (a sender following a
thin link codes smaller; Matroska holds one size per track) and when a file has grown past
``SEGMENT_BYTES`` or ``SEGMENT_S``. Matroska rather than MP4: a file cut short (a receiver killed,
a full disk) still plays up to its last cluster; an MP4 without its index does not.

Timestamps are the receive times (milliseconds from the file's first frame), so the file plays at
the pace the pictures were shown, gaps included.
"""

from __future__ import annotations

import io
import logging
import time
from fractions import Fraction
from pathlib import Path

from latentcomm.errors import LatentcommError

log = logging.getLogger(__name__)

#: A file is closed at the next key frame past either bound (a player seeks within a file; a
#: retention policy deletes whole files).
SEGMENT_BYTES = 256 * 1024 * 1024
SEGMENT_S = 3600.0
#: FFmpeg's raw formats that parse a lone key frame into codec parameters (VP9 needs none in Matroska).
RAW_FORMATS = {"h264": "h264", "av1": "obu"}
MS = Fraction(1, 1000)


class VideoFileError(LatentcommError):
    """A key frame whose codec parameters FFmpeg could not read, or a file that could not be written."""


class VideoSegment:
    """One Matroska file of one stream, at one codec and coded size, opened at a key frame."""

    def __init__(self, path: Path, codec: str, key_unit: bytes, size: tuple[int, int]) -> None:
        import av

        self.path, self.codec, self.size = path, codec, size
        self.opened = time.monotonic()
        self.frames = 0
        self.bytes = 0
        self._last_pts = -1
        self._t0: float | None = None
        template = None
        try:
            if codec in RAW_FORMATS:  # the parameters as FFmpeg parses them from the key frame itself
                template = av.open(io.BytesIO(key_unit), format=RAW_FORMATS[codec])
                if not template.streams.video:
                    raise VideoFileError(f"{codec} key frame holds no video stream FFmpeg can read")
            self._fh = path.open("xb")  # never over another file
            try:
                self._out = av.open(self._fh, "w", format="matroska")
                if template is not None:
                    self._stream = self._out.add_stream_from_template(template.streams.video[0], opaque=True)
                else:
                    self._stream = self._out.add_stream(codec)
                    self._stream.height, self._stream.width = size
                self._stream.time_base = MS
            except Exception:
                self._fh.close()
                path.unlink(missing_ok=True)
                raise
        except (av.error.FFmpegError, ValueError) as exc:
            raise VideoFileError(f"cannot start {path.name}: {exc}") from None
        finally:
            if template is not None:
                template.close()

    def write(self, unit: bytes, key: bool, when: float) -> int:
        """Append one access unit received at ``when`` (seconds); its frame number in this file."""
        import av

        if self._t0 is None:
            self._t0 = when
        pts = max(self._last_pts + 1, round(1000 * (when - self._t0)))
        packet = av.Packet(unit)
        packet.pts = packet.dts = pts
        packet.time_base = MS
        packet.stream = self._stream
        packet.is_keyframe = key
        try:
            self._out.mux(packet)
        except av.error.FFmpegError as exc:  # a full disk, mostly: the frame is not kept (the caller says so)
            raise OSError(f"writing {self.path.name}: {exc}") from None
        self._last_pts = pts
        self.frames += 1
        self.bytes += len(unit)
        return self.frames - 1

    def due(self) -> bool:
        """Past its size or age bound: the stream's next key frame starts a new file."""
        return self.bytes >= SEGMENT_BYTES or time.monotonic() - self.opened >= SEGMENT_S

    def close(self) -> int:
        """Finish the file (its index and duration); its size on disk."""
        try:
            self._out.close()
        finally:
            self._fh.close()
        try:
            return self.path.stat().st_size
        except OSError:
            return 0
