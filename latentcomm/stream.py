"""Streams: frame-rate sources (video files, cameras, image folders) sent live within a bandwidth.

A stream is live: frame ``i`` exists at ``t0 + pts_i`` (a camera delivers it then; a video file is
played at its timestamps), and the sender always takes the *newest* frame that exists when it is
ready for one. Older frames are dropped, never queued, so latency stays bounded when encoding or
the link is slower than the source.

``--bandwidth`` (``sender.send_stream``): the client writes no faster than the rate, each frame is
sized to what the link carries in one frame interval, and encoding overlaps sending;
``latentcomm.transports.throttle`` is a slow link to try it on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from latentcomm.errors import ImageError, require
from latentcomm.images import load_image

log = logging.getLogger(__name__)


#: A sender's stream name (``--name``): its frames are named ``NAME/...``. A receiver takes a name
#: prefix as the stream's only when it is one of these (a peer's arbitrary text never becomes a card).
STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def stream_of(frame_name: str) -> str | None:
    """The stream name a frame's name carries (``NAME/...``), or None."""
    head, sep, _ = frame_name.partition("/")
    return head if sep and STREAM_NAME.fullmatch(head) else None


@dataclass
class SourceFrame:
    index: int  # position in the source (before any --fps subsampling)
    pts: float  # seconds from the start of the source
    image: Image.Image
    name: str
    #: What happened to the source before this frame, for the receiver's people (a URL source that
    #: dropped and was reopened): it travels as the frame's text, so the dashboard and images.jsonl show it.
    note: str | None = None


def parse_rate(text: str) -> float:
    """'64k', '1M', '256000', '1.5m' -> bits per second (k = 1000)."""
    t = text.strip().lower().removesuffix("bit/s").removesuffix("bps").removesuffix("b")
    mult = {"k": 1e3, "m": 1e6, "g": 1e9}.get(t[-1:], 1.0)
    try:
        value = float(t[:-1] if t[-1:] in "kmg" else t) * mult
    except ValueError:
        raise ValueError(f"not a rate: {text!r} (examples: 64k, 256k, 1M)") from None
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"rate must be positive and finite, got {text!r}")
    if not MIN_RATE <= value <= MAX_RATE:
        raise ValueError(f"rate {text!r} is outside {MIN_RATE / 1e3:g} kbit/s to {MAX_RATE / 1e9:g} Gbit/s")
    return value


#: The rates a link flag takes (a slower link can't carry one frame's overhead in a minute).
MIN_RATE = 1_000.0
MAX_RATE = 100e9


#: How long a URL source (``--video rtsp://...``) is reopened after it drops before the sender gives
#: up, by default (``--reconnect``).
RECONNECT_S = 30.0
#: How long opening or reading a URL source may block (FFmpeg's own default is to wait for ever).
URL_TIMEOUT_S = 10.0


def is_url(source: str | Path) -> bool:
    """Is ``source`` a URL PyAV opens as given (``rtsp://``, ``http(s)://``, ``udp://``, ``tcp://``, ...)?"""
    return isinstance(source, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source) is not None


def url_stem(url: str) -> str:
    """A frame-name stem for a URL source: its host and last path part, letters, digits and ._- only."""
    rest = url.split("://", 1)[1].split("?", 1)[0]
    host, _, path = rest.partition("/")
    host = host.rpartition("@")[2]  # never a user name or password in a frame's name
    last = path.rstrip("/").rpartition("/")[2]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{host}-{last}" if last else host).strip("-") or "stream"


def video_frames(
    path: str | Path,
    fps: float | None = None,
    max_frames: int | None = None,
    options: dict[str, str] | None = None,
    reconnect_s: float = RECONNECT_S,
) -> Iterator[SourceFrame]:
    """Decoded frames of a video file or URL (PyAV), subsampled to ``fps`` by their timestamps.

    A URL goes to FFmpeg exactly as given (``Path`` would fold ``rtsp://host`` into ``rtsp:/host``),
    with ``options`` (FFmpeg's protocol and demuxer options: ``rtsp_transport=tcp``, ...) and a read
    timeout; when it drops (an error, or the end of a live stream) it is reopened with a backoff for up
    to ``reconnect_s`` seconds (0: not at all), frame numbers going on from where they were, each drop
    logged. A file is read once."""
    import av

    if not is_url(path):
        path = Path(path)
        try:
            container = av.open(str(path), options=options or {})
        except (av.error.FFmpegError, OSError) as exc:
            raise ImageError(f"cannot open video {path}: {exc}") from None
        yield from _frames(container, path.stem, fps, max_frames)
        return
    url, stem = str(path), url_stem(str(path))
    shown = _redact(url)
    first, start, sent, t_offset = True, 0, 0, 0.0
    note, dropped_at = None, 0.0
    while True:
        deadline = time.monotonic() + (reconnect_s if not first else 0.0)
        wait = 0.5
        while True:
            try:
                container = av.open(url, options=options or {}, timeout=URL_TIMEOUT_S)
                break
            except (av.error.FFmpegError, OSError) as exc:
                if time.monotonic() + wait > deadline:
                    what = "cannot open" if first else f"lost and could not reopen within {reconnect_s:g} s"
                    raise ImageError(f"{what} video {shown}: {exc}") from None
                time.sleep(wait)
                wait = min(5.0, 2 * wait)
        if not first:
            note = f"source reconnected after {time.monotonic() - dropped_at:.1f} s ({note})"
            log.warning("video source %s: %s", shown, note)
        first = False
        last = {"index": start - 1, "pts": t_offset, "sent": sent}
        try:
            for f in _frames(container, stem, fps, max_frames and max_frames - sent, start, t_offset):
                last.update(index=f.index, pts=f.pts)
                last["sent"] += 1
                if note is not None:  # the first frame after a reconnect says so
                    f, note = dataclasses.replace(f, note=note), None
                yield f
            dropped = None if max_frames and last["sent"] >= max_frames else "the stream ended"
        except ImageError as exc:
            dropped = str(exc)
        sent = last["sent"]
        if dropped is None or reconnect_s <= 0:
            if dropped is not None and sent == 0:
                raise ImageError(f"video {shown}: {dropped}")
            return
        log.warning("video source %s dropped (%s): reconnecting for up to %g s", shown, dropped, reconnect_s)
        note, dropped_at = f"dropped: {dropped}", time.monotonic()
        start, t_offset = last["index"] + 1, last["pts"] + (1.0 / fps if fps else 0.04)


#: Foxglove's picture messages a recording can hold, and what codes their data.
MCAP_PICTURE_SCHEMAS = ("foxglove.CompressedVideo", "foxglove.CompressedImage")
#: foxglove.CompressedVideo formats -> PyAV decoders.
MCAP_VIDEO_DECODERS = {"h264": "h264", "h265": "hevc", "av1": "libdav1d", "vp9": "vp9"}


def mcap_frames(
    path: str | Path, topic: str | None = None, fps: float | None = None, max_frames: int | None = None
) -> Iterator[SourceFrame]:
    """A recording's camera frames as a live source: the protobuf ``foxglove.CompressedVideo`` (decoded
    with PyAV) or ``foxglove.CompressedImage`` (JPEG/PNG) messages on ``topic`` (default: the first
    topic holding either), timed by their log times, subsampled to ``fps``."""
    require("mcap", "foxglove", "replaying an MCAP recording")
    require("mcap_protobuf", "foxglove", "replaying an MCAP recording")
    import av
    from mcap.exceptions import McapError
    from mcap.reader import make_reader
    from mcap_protobuf.decoder import DecoderFactory

    path = Path(path)
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ImageError(f"cannot open recording {path}: {exc.strerror or exc}") from None
    with fh:
        try:
            reader = make_reader(fh, decoder_factories=[DecoderFactory()])
            summary = reader.get_summary()
        except (McapError, ValueError, EOFError) as exc:
            raise ImageError(f"{path}: not a readable MCAP file ({exc})") from None
        pictures = sorted(
            c.topic for c in (summary.channels.values() if summary else [])
            if summary.schemas.get(c.schema_id) is not None
            and summary.schemas[c.schema_id].name in MCAP_PICTURE_SCHEMAS
        )  # fmt: skip
        if topic is None:
            if not pictures:
                raise ImageError(f"{path}: no foxglove.CompressedVideo or CompressedImage topic")
            topic = pictures[0]
        elif topic not in pictures:
            raise ImageError(f"{path}: no picture topic {topic!r} (there: {', '.join(pictures) or 'none'})")
        # run.mcap, /gate/video: run-gate-video
        stem = re.sub(r"[^A-Za-z0-9._]+", "-", f"{path.stem}-{topic}").strip("-")
        decoder, t0, next_t, sent, step = None, None, 0.0, 0, (1.0 / fps if fps else 0.0)
        try:
            for i, (_schema, _channel, message, proto) in enumerate(reader.iter_decoded_messages(topics=[topic])):
                pts = (message.log_time - (t0 := message.log_time if t0 is None else t0)) / 1e9
                if _schema.name == "foxglove.CompressedVideo":
                    if decoder is None:
                        name = MCAP_VIDEO_DECODERS.get(proto.format)
                        if name is None:
                            raise ImageError(f"{path} {topic}: video format {proto.format!r} is not one of "
                                             f"{', '.join(MCAP_VIDEO_DECODERS)}")  # fmt: skip
                        decoder = av.CodecContext.create(name, "r")
                    try:
                        decoded = decoder.decode(av.Packet(bytes(proto.data)))
                    except av.error.InvalidDataError:
                        continue  # before the recording's first key frame
                    images = [d.to_image().convert("RGB") for d in decoded]
                else:
                    images = [load_image_bytes(bytes(proto.data))]
                for image in images:  # every picture decodes, so inter frames keep their references
                    if step and pts + 1e-6 < next_t:
                        continue
                    next_t = (next_t if step else pts) + step
                    yield SourceFrame(i, pts, image, f"{stem}-{i:06d}")
                    sent += 1
                    if max_frames and sent >= max_frames:
                        return
        except (McapError, av.error.FFmpegError) as exc:
            raise ImageError(f"{path}: replaying {topic} failed: {exc}") from None


def load_image_bytes(data: bytes):
    """A JPEG/PNG message's picture (RGB)."""
    import io

    from PIL import Image

    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises several kinds for a bad picture
        raise ImageError(f"a recorded picture does not decode: {exc}") from None


def _redact(url: str) -> str:
    """A URL for a log line or an error: without the password in ``user:password@host``."""
    return re.sub(r"://([^/@:]*):[^/@]*@", r"://\1:***@", url)


def camera_frames(
    device: int | str,
    fps: float | None = None,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    pixel_format: str | None = None,
) -> Iterator[SourceFrame]:
    """Frames of a V4L2 camera through PyAV: ``device`` a number N (/dev/videoN) or a device path;
    ``size`` (width, height) and ``pixel_format`` (V4L2's input format: mjpeg, yuyv422, ...) ask the
    camera for a mode, which it may refuse (a clear error) or round to its nearest."""
    import av

    dev = f"/dev/video{device}" if isinstance(device, int) or str(device).isdigit() else str(device)
    if not Path(dev).exists():
        raise ImageError(f"camera {device}: {dev} does not exist (no V4L2 camera there)")
    options = {"framerate": str(int(fps))} if fps else {}
    if size:
        options["video_size"] = f"{size[0]}x{size[1]}"
    if pixel_format:
        options["input_format"] = pixel_format
    try:
        container = av.open(dev, format="v4l2", options=options)
    except (av.error.FFmpegError, OSError) as exc:
        asked = ", ".join(f"{k}={v}" for k, v in options.items())
        raise ImageError(f"cannot open camera {dev} ({asked or 'its default mode'}): {exc}") from None
    yield from _frames(container, f"camera{device}" if str(device).isdigit() else Path(dev).name, fps, max_frames)


def _frames(
    container, stem: str, fps: float | None, max_frames: int | None, start: int = 0, t_offset: float = 0.0
) -> Iterator[SourceFrame]:
    """``start``, ``t_offset``: the first frame's number and time (a reopened URL source goes on)."""
    import av

    try:
        stream = container.streams.video[0]
    except IndexError:
        container.close()
        raise ImageError(f"{stem}: no video stream") from None
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    step = 1.0 / fps if fps else 0.0
    next_t, sent, t0 = t_offset, 0, None
    try:
        for n, frame in enumerate(container.decode(stream)):
            i = start + n
            pts = float(frame.time) if frame.time is not None else n / rate
            if start or t_offset:  # a reopened stream's clock starts anywhere: ours goes on from t_offset
                t0 = pts if t0 is None else t0
                pts = t_offset + pts - t0
            if step and pts + 1e-6 < next_t:
                continue
            next_t = (next_t if step else pts) + step
            yield SourceFrame(i, pts, frame.to_image().convert("RGB"), f"{stem}-{i:06d}")
            sent += 1
            if max_frames and sent >= max_frames:
                return
    except av.error.FFmpegError as exc:
        raise ImageError(f"{stem}: video decoding failed: {exc}") from None
    finally:
        container.close()


def image_frames(paths: list[Path], fps: float, max_frames: int | None = None) -> Iterator[SourceFrame]:
    """A folder of stills as a stream at ``fps``."""

    for i, p in enumerate(paths[:max_frames] if max_frames else paths):
        yield SourceFrame(i, i / fps, load_image(p), p.name)


class LiveSource:
    """Plays a source in real time on a thread and hands out only the newest frame.

    ``latest()`` blocks until a frame newer than the last one taken exists, returns it with its
    capture time (monotonic), and counts the frames that were superseded in between as dropped.
    """

    def __init__(self, frames: Iterator[SourceFrame], realtime: bool = True) -> None:
        self._frames = frames
        self._realtime = realtime
        self._cond = threading.Condition()
        self._slot: tuple[SourceFrame, float] | None = None
        self._done = False
        self._error: BaseException | None = None
        self.produced = 0
        self.dropped = 0
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="source", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for f in self._frames:
                if self._realtime:
                    delay = self.t0 + f.pts - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                with self._cond:
                    if self._slot is not None:
                        self.dropped += 1  # superseded before the sender took it
                        if self._slot[0].note and not f.note:  # its news is not: the next frame carries it
                            f = dataclasses.replace(f, note=self._slot[0].note)
                    self._slot = (f, time.monotonic())
                    self.produced += 1
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def latest(self) -> tuple[SourceFrame, float] | None:
        """The newest frame not yet taken (None when the source is exhausted)."""
        with self._cond:
            while self._slot is None and not self._done:
                self._cond.wait(0.5)
            if self._error is not None:
                raise self._error
            item, self._slot = self._slot, None
            return item


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


#: Frames whose latency a stream's summary percentiles are taken over (about 1.8 hours at 10 fps).
LATENCY_SAMPLES = 65_536
#: Seconds a stream summary's per-second series covers (the newest ones).
SERIES_S = 3_600


class StreamTally:
    """What a stream sender counts while it runs (latencies, bytes by second), in bounded memory.

    A sender runs for days: keeping every latency and every second's bytes grew without end (a day at
    10 fps: 864,000 latencies and 86,400 seconds). The percentiles are over the newest
    ``LATENCY_SAMPLES`` frames and the per-second series covers the newest ``SERIES_S`` seconds; a
    short stream (the tests', the benchmarks') is counted exactly as before.
    """

    def __init__(self, latency_samples: int = LATENCY_SAMPLES, series_s: int = SERIES_S) -> None:
        self.latencies: deque[float] = deque(maxlen=latency_samples)
        self.series_s = series_s
        self._per_second: dict[int, int] = {}
        self._newest = 0

    def acknowledged(self, latency: float, second: int, nbytes: int) -> None:
        """One acknowledged frame: its capture-to-acknowledgement latency, the stream second it was
        acknowledged in, its bytes on the wire."""
        self.latencies.append(latency)
        self._per_second[second] = self._per_second.get(second, 0) + nbytes
        if second > self._newest:
            self._newest = second
            if len(self._per_second) > self.series_s + 60:
                for old in [s for s in self._per_second if s <= second - self.series_s]:
                    del self._per_second[old]

    def percentile(self, q: float) -> float | None:
        return percentile(list(self.latencies), q)

    def bits_by_second(self, span: float) -> list[int]:
        """Bits sent in each of the stream's seconds up to ``span`` (the newest ``series_s`` of them)."""
        last = int(span)
        return [8 * self._per_second.get(s, 0) for s in range(max(0, last + 1 - self.series_s), last + 1)]
