"""The receiving side: frames from the server queue -> decoded image -> window / PNGs / report."""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
from PIL import Image

from latentcomm.codecs.base import REGISTRY, ImageCodec, load_codec
from latentcomm.codecs.video import KeyFrameNeeded, parse_payload
from latentcomm.display import Viewer, display_available
from latentcomm.errors import ImageError, LatentcommError, RemoteProtocolError
from latentcomm.images import decode_image_bytes, unit_float_to_image
from latentcomm.operating import CAPABILITY as SCALED_CAPABILITY
from latentcomm.store import OutputStore
from latentcomm.stream import stream_of
from latentcomm.transports.base import SHUTDOWN_GRACE_S, FrameSource, ReceivedFrame
from latentcomm.wire import v2
from latentcomm.wire.legacy import LATENT_CHANNELS, LegacyFrame

if TYPE_CHECKING:
    from latentcomm.dashboard import DashboardState
    from latentcomm.engine import Engine

log = logging.getLogger(__name__)

DEFAULT_HEADLESS_OUT = Path("received")
#: Video streams whose decoder state a receiver keeps (the least recently used is dropped: that
#: stream's next inter frame asks for a key frame).
MAX_STREAMS = 64
#: The pictures the live video decoders of all streams may hold at once, in pixels (about 2.4 bytes a
#: pixel of decoder state measured for H.264: ~150 MiB). Past it the least recently used streams'
#: decoders are freed (their next inter frame asks for a key frame).
MAX_DECODER_PIXELS = 64 * 1024 * 1024
#: The largest live video picture a receiver decodes by default (1080p; --max-video-pixels).
DEFAULT_MAX_VIDEO_PIXELS = 1920 * 1088
#: Pixels a second one video stream may make a receiver decode (1080p at 10 fps; --max-pixel-rate),
#: and all streams together (--max-total-pixel-rate): a 13-byte all-skip inter frame costs the full
#: picture to build, so the budget is in pixels, not bytes.
DEFAULT_PIXEL_RATE = 1920 * 1088 * 10
DEFAULT_TOTAL_PIXEL_RATE = 2 * DEFAULT_PIXEL_RATE
#: A video stream whose frames stopped this long ago has its decoder freed.
STREAM_IDLE_S = 60.0


@dataclass
class ReceiverOptions:
    out_dir: Path | None = None
    show: bool = True
    once: bool = False
    json_lines: bool = False
    max_disk_bytes: int | None = None  # --max-disk: the pictures in out_dir, oldest pruned past it
    max_video_pixels: int = DEFAULT_MAX_VIDEO_PIXELS
    max_pixel_rate: float = DEFAULT_PIXEL_RATE
    max_total_pixel_rate: float = DEFAULT_TOTAL_PIXEL_RATE
    #: Human output (not --json): a video stream's frames as one line a second per stream; True
    #: (--verbose): every frame's lines, as for stills.
    every_frame: bool = False
    #: --save-frames: a video frame is also written as a PNG in out_dir (video is always kept as video).
    save_frames: bool = False


#: Seconds between a video stream's summary lines on stdout (without --json or --verbose).
STREAM_LINE_S = 1.0


class PixelBudget:
    """Token buckets of decoded pixels, one per video stream and one for all: each refills at its rate
    and holds one second of it, so a stream may burst a key frame but not keep up more than its rate.
    ``clock`` is injectable for tests."""

    def __init__(self, per_stream: float, total: float, clock=time.monotonic) -> None:
        self.per_stream, self.total, self.clock = per_stream, total, clock
        self._streams: OrderedDict[object, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._all = (total, clock())

    @staticmethod
    def _refill(bucket: tuple[float, float], rate: float, now: float) -> float:
        tokens, at = bucket
        return min(rate, tokens + (now - at) * rate)

    def take(self, key: object, pixels: int) -> str | None:
        """None when ``pixels`` fit both budgets (and are taken), else which one they exceed."""
        now = self.clock()
        mine = self._refill(self._streams.get(key, (self.per_stream, now)), self.per_stream, now)
        everyone = self._refill(self._all, self.total, now)
        if pixels > mine:
            self._streams[key] = (mine, now)
            self._streams.move_to_end(key)
            return f"this stream's pixel-rate budget ({self.per_stream / 1e6:g} Mpx/s, --max-pixel-rate)"
        if pixels > everyone:
            self._all = (everyone, now)
            return (f"the receiver's pixel-rate budget for all streams ({self.total / 1e6:g} Mpx/s, "
                    "--max-total-pixel-rate)")  # fmt: skip
        self._streams[key] = (mine - pixels, now)
        self._streams.move_to_end(key)
        self._all = (everyone - pixels, now)
        while len(self._streams) > 4 * MAX_STREAMS:
            self._streams.popitem(last=False)
        return None

    def forget(self, key: object) -> None:
        self._streams.pop(key, None)


@dataclass
class Summary:
    images_ok: int = 0
    rejected: int = 0
    bytes_received: int = 0


def printable(text: str) -> str:
    """A peer's text for a terminal: printable characters as they are, every other one (newlines,
    ESC and the rest of C0/C1, bidi controls, lone surrogates) as a visible backslash escape, so a
    text can neither move the cursor, recolour the screen nor forge a report line."""
    out = []
    for c in text:
        if c.isprintable() and c != "\\":
            out.append(c)
        elif c == "\\":
            out.append("\\\\")
        else:
            code = ord(c)
            out.append(
                {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c)
                or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
            )
    return "".join(out)


class Rejected(LatentcommError):
    """A frame the receiver refuses, with the v2 status to answer."""

    def __init__(self, status: v2.Status, message: str) -> None:
        super().__init__(message)
        self.status = status


class Receiver:
    """Decodes frames one at a time on the calling thread with models loaded once.

    ``codecs`` maps v2 model ids to loaded codecs (``latentcomm.codecs``); legacy frames, which
    can't name their model, are decoded with the first VAE codec, and refused when there is none
    (a receiver started with ``--codec learned`` only).
    """

    def __init__(
        self,
        codecs: list[ImageCodec],
        options: ReceiverOptions,
        stdout: TextIO = sys.stdout,
        dashboard: DashboardState | None = None,
        enhancer=None,
        outputs: list | None = None,
    ) -> None:
        self.dashboard = dashboard
        #: Further outputs (``--record``: latentcomm.record.McapRecorder): each takes
        #: ``on_frame(report, payload, picture)`` for every decoded frame, before it is acknowledged.
        self.outputs = list(outputs or [])
        vae = [c for c in codecs if c.decodes_legacy_frames]
        self.default: Engine | None = vae[0].engine if vae else None
        if self.default is not None and self.default.latent_channels != LATENT_CHANNELS:
            raise LatentcommError(
                f"legacy frames carry 4-channel latents; model {self.default.source} has {self.default.latent_channels}"
            )
        self.codecs = {c.model_id: c for c in codecs}
        # The codecs REGISTRY declares always decoded (the video codecs) are accepted whatever --codec
        # said: a decoder costs nothing until a stream uses it, and each stream gets its own (inter
        # frames depend on the frames before them).
        for name, entry in REGISTRY.items():
            if entry.always_decoded and name not in self.codecs:
                try:
                    self.codecs[name] = load_codec(name)
                except LatentcommError as exc:
                    log.info("codec %s not available: %s", name, exc)
        # Every codec decodes through the enhancer it was trained for, the one --codec named included
        # (a receiver started with --codec h264 --enhance once enhanced nothing and said nothing).
        if enhancer is not None:
            for c in self.codecs.values():
                c.set_enhancer(enhancer)
        self._streams: OrderedDict[tuple[str, str, str], ImageCodec] = OrderedDict()
        self._stream_pixels: dict[tuple[str, str, str], int] = {}  # the picture size each decoder holds
        self._stream_seen: dict[tuple[str, str, str], float] = {}  # when each stream's last frame came
        self._ended: deque[str] = deque()  # peers whose connection or lease ended
        self.budget = PixelBudget(options.max_pixel_rate, options.max_total_pixel_rate)
        self.opts = options
        self.stdout = stdout
        self.summary = Summary()
        self._decoded = 0
        self._video_lines: dict[tuple[str, str, str], dict] = {}  # per stream, for one line a second
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
        self.store = OutputStore(self.opts.out_dir, options.max_disk_bytes) if self.opts.out_dir is not None else None

    # -- decoding ---------------------------------------------------------------------------------

    def _legacy(self, f: LegacyFrame) -> tuple[str, np.ndarray, Image.Image | None, dict]:
        if self.default is None:
            raise Rejected(
                v2.Status.UNKNOWN_MODEL,
                "legacy frame refused: this receiver runs no VAE (legacy frames carry a VAE latent; it runs "
                f"{', '.join(self.codecs)})",
            )
        from latentcomm.images import crop_to, tensor_to_uint8  # torch: the VAE path only
        from latentcomm.wire.encodings import decode_latent

        latent = decode_latent(f.flag, LATENT_CHANNELS, f.height, f.width, f.payload)
        arr = f.original_array()
        original = None
        if arr is not None:
            original = unit_float_to_image(arr).crop((0, 0, f.image_size[1], f.image_size[0]))
        info = {"dtype": "f16" if f.flag == 2 else "i8", "flag": f.flag, "latent_shape": list(latent.shape)}
        image = tensor_to_uint8(crop_to(self.default.decode(latent), f.image_size))
        return self.default.source, image, original, info

    def _stream_codec(self, codec: ImageCodec, item: ReceivedFrame, f: v2.ImageFrame) -> ImageCodec:
        """The decoder of the stream a frame belongs to (its connection, or its broker sender), within
        the video limits: the picture size, the pixel-rate budgets, and the pixels all decoders hold."""
        key = (item.key_id or "", item.peer, f.model)
        h, w = (f.shape[1], f.shape[2]) if len(f.shape) == 3 else (0, 0)
        # A picture coded smaller is shown (upscaled) at its picture size: that is what it costs here.
        h, w = max(h, f.image_size[0]), max(w, f.image_size[1])
        pixels = h * w
        if pixels > self.opts.max_video_pixels:
            raise Rejected(v2.Status.TOO_LARGE, f"video picture {w}x{h} exceeds this receiver's "
                           f"{self.opts.max_video_pixels} pixels (--max-video-pixels)")  # fmt: skip
        state = self._streams.get(key)
        if state is None:
            state = self._streams[key] = codec.new_stream()
            while len(self._streams) > MAX_STREAMS:
                self._free(next(iter(self._streams)))
        self._streams.move_to_end(key)
        self._stream_seen[key] = time.monotonic()
        over = self.budget.take(key, pixels)
        if over is not None:
            state.drop_reference()  # not decoded: the stream goes on from a key frame
            raise Rejected(v2.Status.TOO_LARGE, f"a {w}x{h} video frame refused: over {over}")
        # Decoder memory is bounded by pixels: the least recently used other streams give theirs up.
        self._stream_pixels[key] = pixels
        while sum(self._stream_pixels.values()) > MAX_DECODER_PIXELS and len(self._stream_pixels) > 1:
            oldest = next(k for k in self._streams if k != key and k in self._stream_pixels)
            log.info("freeing the video decoder of %s: the decoders hold more than %d pixels", oldest[1],
                     MAX_DECODER_PIXELS)  # fmt: skip
            self._free(oldest)
        return state

    def _free(self, key: tuple[str, str, str]) -> None:
        self._streams.pop(key, None)
        self._stream_pixels.pop(key, None)
        self._stream_seen.pop(key, None)
        self.budget.forget(key)

    def stream_ended(self, peer: str) -> None:
        """A transport's word that a stream's connection (or a broker stream's lease) ended: its
        decoder is freed by the decoding thread's next turn (this may be called from any thread)."""
        self._ended.append(peer)

    def reap(self, now: float | None = None) -> int:
        """Free the decoders of streams that ended or went idle (``STREAM_IDLE_S``); how many."""
        now = time.monotonic() if now is None else now
        gone = set()
        while self._ended:
            gone.add(self._ended.popleft())
        doomed = [k for k in self._streams if k[1] in gone or now - self._stream_seen.get(k, now) > STREAM_IDLE_S]
        for key in doomed:
            self._free(key)
            if self.store is not None:  # its video file is finished: it plays, with its index, from now on
                self.store.end_video(key)
        return len(doomed)

    @property
    def decoders(self) -> int:
        """Live stream decoders held (video streams and other stateful codecs)."""
        return len(self._streams)

    def _v2(self, f: v2.ImageFrame, item: ReceivedFrame) -> tuple[str, np.ndarray, Image.Image | None, dict]:
        codec = self.codecs.get(f.model)
        if codec is None:
            raise Rejected(
                v2.Status.UNKNOWN_MODEL,
                f"frame is for model {f.model!r}; this receiver runs {', '.join(self.codecs)}",
            )
        if codec.stateful:
            codec = self._stream_codec(codec, item, f)
        oh, ow = f.image_size
        original = None
        if f.reference_png is not None:
            original = decode_image_bytes(f.reference_png, max_pixels=oh * ow, formats=("PNG",))
            if original.size != (ow, oh):
                raise Rejected(v2.Status.MALFORMED, f"reference image is {original.size}, expected {(ow, oh)}")
        image = codec.decode_pixels(f.encoding, f.compression, f.shape, f.payload, f.params, f.image_size)
        info = {
            "seq": f.seq,
            "name": codec.frame_name(f.name, f.payload),
            "codec": codec.kind,
            "encoding": f.encoding,
            "compression": f.compression,
            "latent_shape": [1, *f.shape],
            **codec.payload_facts(f.payload),
        }
        if stream := stream_of(info["name"]):  # a sender's --name: frames named NAME/...
            info["stream"] = stream
        if codec.kind == "video":  # the size it was coded at; image_size is the size it is shown at
            info["coded_size"] = [f.shape[1], f.shape[2]]
        if f.text is not None:
            info["text"] = f.text
        return codec.model_id, image, original, info

    def handle(self, item: ReceivedFrame) -> dict | None:
        """Decode, show/save and report one frame; a bad frame is logged, answered (v2) and skipped."""
        f = item.frame
        t0 = time.perf_counter()
        try:
            if isinstance(f, v2.ImageFrame):
                model, image, original, info = self._v2(f, item)
            else:
                model, image, original, info = self._legacy(f)
        except (Rejected, RemoteProtocolError, ImageError) as exc:
            status = exc.status if isinstance(exc, Rejected) else v2.Status.DECODE_FAILED
            if isinstance(exc, KeyFrameNeeded):
                status = v2.Status.KEY_FRAME_NEEDED
            self.summary.rejected += 1
            log.warning("rejected frame from %s: %s", item.peer, exc)
            if self.dashboard is not None:
                self.dashboard.on_rejected(item.peer, str(exc))
            if item.reply is not None:
                item.reply.set_result(v2.Ack(f.seq, status, str(exc)))
            return None
        size = f.image_size
        recon = Image.fromarray(image)  # (H, W, 3) uint8: RGB
        decode_s = time.perf_counter() - t0
        self._decoded += 1
        video = info.get("codec") == "video"
        # The picture's number: with --out, the next file number (continued from what the folder holds);
        # a video frame kept only in its stream's video file is counted, not numbered.
        png = self.store is not None and (not video or self.opts.save_frames)
        index = self.store.next_index if png else self._decoded
        report = {
            "index": index,
            "peer": item.peer,
            "protocol": item.protocol,
            "key_id": item.key_id,
            "model": model,
            **info,
            "image_size": list(size),
            "payload_bytes": len(f.payload),
            "payload_sha256": hashlib.sha256(f.payload).hexdigest(),
            "frame_bytes": item.frame_bytes,
            "has_original": original is not None,
            "receive_s": round(item.receive_seconds, 4),
            "decode_s": round(decode_s, 4),
            "time": round(time.time(), 4),
        }
        if self.store is not None:
            try:
                if video:  # the access unit as it arrived, into the stream's video file
                    saved = self.store.save_video(
                        (item.key_id or "", item.peer, f.model), info.get("stream") or item.peer, f.model,
                        parse_payload(f.payload)[1], info["frame_type"] == "key", (f.shape[1], f.shape[2]),
                        report["time"],
                    )  # fmt: skip
                    if saved is not None:
                        report.update(video_path=str(saved[0]), video_frame=saved[1])
                if png:
                    index, recon_path, compare_path = self.store.save(original, recon)
                    report.update(index=index, recon_path=str(recon_path), compare_path=str(compare_path))
            except OSError as exc:  # a full disk, a file where the folder should be: this image fails, not the server
                reason = f"decoded but not saved to {self.opts.out_dir}: {exc.strerror or exc}"
                log.error("image from %s: %s", item.peer, reason)
                self.summary.rejected += 1
                if item.reply is not None:
                    item.reply.set_result(v2.Ack(f.seq, v2.Status.DECODE_FAILED, reason))
                self._print_error(item, reason)
                if self.dashboard is not None:
                    self.dashboard.on_rejected(item.peer, reason)
                return None
        if self.viewer is not None:
            title = f"#{index} from {item.peer}: {len(f.payload):,} byte latent"
            try:
                self.viewer.show(original, recon, title, block=self.opts.once, text=report.get("text"))
            except Exception:  # a window that fails never takes the server down: the image is decoded and saved
                log.exception("could not show image #%d from %s", index, item.peer)
        report["decode_display_s"] = round(time.perf_counter() - t0, 4)
        self.summary.images_ok += 1
        if self.opts.out_dir is not None:
            try:
                with (self.opts.out_dir / "images.jsonl").open("a") as fh:
                    fh.write(json.dumps(report) + "\n")
            except OSError as exc:
                log.error("could not append to %s: %s", self.opts.out_dir / "images.jsonl", exc.strerror or exc)
        if self.dashboard is not None:  # before the ack: what a sender was told arrived is on the page
            try:
                self.dashboard.on_image(report, recon, original)
            except Exception:  # the page's figures are never worth the receiver: log and go on
                log.exception("dashboard could not take image #%d from %s", index, item.peer)
        for output in self.outputs:  # a recording that fails is logged; the frame was decoded all the same
            try:
                output.on_frame(report, f.payload, recon)
            except Exception:
                log.exception("%s could not take image #%d from %s", type(output).__name__, index, item.peer)
        if item.reply is not None:
            # A video key frame's acknowledgement says this receiver shows pictures coded smaller than
            # their picture size (latentcomm.operating): the sender may then follow a thin link with its size.
            key = report.get("codec") == "video" and report.get("frame_type") == "key"
            # It also says this receiver reads INTER messages (a connection's inter frames in 20 bytes of
            # framing, docs/protocol.md): the sender's connection may then send them.
            item.reply.set_result(v2.Ack(f.seq, v2.Status.OK, f"{SCALED_CAPABILITY} {v2.COMPACT}" if key else ""))
        self._print(report)
        return report

    def _print_error(self, item: ReceivedFrame, reason: str) -> None:
        """A failed image in the same stream as the good ones (JSON with --json), so no report drops it."""
        if self.opts.json_lines:
            seq = getattr(item.frame, "seq", None)
            print(json.dumps({"peer": item.peer, "seq": seq, "error": reason}), file=self.stdout, flush=True)
        else:
            print(f"Image from {item.peer}: FAILED: {printable(reason)}", file=self.stdout, flush=True)

    def _print(self, r: dict) -> None:
        if self.opts.json_lines:
            print(json.dumps(r), file=self.stdout, flush=True)
            return
        if r.get("codec") == "video" and not self.opts.every_frame:
            self._tally_video(r)
            return
        name = f" {r['name']!r} (seq {r['seq']})" if r.get("name") or "seq" in r else ""
        lines = [
            f"Image #{r['index']}{name} from {r['peer']}: {r['image_size'][1]}x{r['image_size'][0]}"
            + ("" if r["has_original"] else " (latent only)"),
            f"  Payload size:            {r['payload_bytes']:,} bytes ({r['frame_bytes']:,} on the wire)",
            f"  Decode time:             {r['decode_s']:.3f} s",
            f"  Decode + display time:   {r['decode_display_s']:.3f} s",
        ]
        if "recon_path" in r:
            saved = r["recon_path"]
            if r["compare_path"] != saved:
                saved = f"{r['compare_path']}, {saved}"
            lines.append(f"  Saved:                   {saved}")
        if "text" in r:  # a peer's text, escaped: no escape sequence or newline reaches the terminal raw
            lines.append(f"  Text:                    {printable(r['text'])}")
        print("\n".join(lines), file=self.stdout, flush=True)

    def _tally_video(self, r: dict, flush: bool = False) -> None:
        """A video frame's report, summed per stream and printed as one line a second (``flush``: print
        what every stream holds now, as the receiver stops)."""
        now = time.monotonic()
        if r:
            key = (r["peer"], r.get("stream") or "", r["model"])
            t = self._video_lines.setdefault(key, {"since": now, "frames": 0, "bytes": 0, "keys": 0})
            t["frames"] += 1
            t["bytes"] += r["frame_bytes"]
            t["keys"] += r.get("frame_type") == "key"
            t["last"] = r
        for key, t in list(self._video_lines.items()):
            if not t["frames"] or (now - t["since"] < STREAM_LINE_S and not flush):
                continue
            last = t["last"]
            h, w = last["image_size"]
            coded = last.get("coded_size", [h, w])
            size = f"{w}x{h}" + (f" (coded {coded[1]}x{coded[0]})" if coded != [h, w] else "")
            span = max(now - t["since"], 1e-3)
            named = f" {key[1]}" if key[1] else ""  # a name stream_of() accepted: letters, digits, ._-
            name = printable(last.get("name", ""))
            print(
                f"Video{named} from {key[0]}, {key[2]}: {t['frames']} frame(s) ({t['keys']} key) in {span:.1f} s, "
                f"{8 * t['bytes'] / span / 1000:.1f} kbit/s, {size}, last #{last['index']} {name!r}",
                file=self.stdout, flush=True,
            )  # fmt: skip
            self._video_lines[key] = {"since": now, "frames": 0, "bytes": 0, "keys": 0}

    # -- serving ------------------------------------------------------------------------------------

    def serve(self, server: FrameSource, stop: threading.Event | None = None) -> Summary:
        """Process frames until ``stop`` is set (or the first image with ``once``), then drain.

        The scripts set ``stop`` from their SIGINT/SIGTERM handlers rather than letting a
        KeyboardInterrupt fly into the middle of queue or lock code, which can leave a lock held
        and hang the shutdown. On a stop request: stop accepting, finish the frames already
        received or arriving within a short grace period, answer anything left with
        SHUTTING_DOWN, and return the summary.
        """
        stop = stop or threading.Event()
        if self.dashboard is not None:
            server.on_reject.append(self.dashboard.on_rejected)
        getattr(server, "on_stream_end", []).append(self.stream_ended)
        try:
            while not stop.is_set():
                self.reap()
                try:
                    item = server.frames.get(timeout=0.1)
                except queue.Empty:
                    if self.viewer is not None:
                        self.viewer.pump()
                    if self._video_lines:  # a stream's second is up although its next frame hasn't come
                        self._tally_video({})
                    continue
                if self.handle(item) is not None and self.opts.once:
                    break
        except KeyboardInterrupt:  # a library user without signal handlers pressed Ctrl-C
            pass
        log.info("stopping: finishing frames in flight")
        server.stop_accepting()
        self._drain(server)
        self._tally_video({}, flush=True)
        if self.store is not None:
            self.store.close()
        self.summary.rejected += server.stats.rejected
        self.summary.bytes_received = server.stats.bytes_received
        return self.summary

    def _drain(self, server: FrameSource) -> None:
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while True:
            try:
                item = server.frames.get(timeout=0.1)
            except queue.Empty:
                if server.active_connections == 0 or time.monotonic() > deadline:
                    return
                continue
            except KeyboardInterrupt:  # a second Ctrl-C: stop now
                return
            if self.opts.once and self.summary.images_ok:
                if item.reply is not None:
                    item.reply.set_result(v2.Ack(item.frame.seq, v2.Status.SHUTTING_DOWN, "receiver exited"))
                continue
            self.handle(item)
