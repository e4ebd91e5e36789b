"""The sending side: image file -> model input -> latent -> legacy frame -> socket, with a report."""

from __future__ import annotations

import hashlib
import json
import logging
import queue as queue_mod
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from latentcomm.codecs.base import ImageCodec
from latentcomm.errors import ImageError
from latentcomm.images import center_crop_square, encode_png, load_image, pad_to_multiple, pil_to_tensor, resize_square
from latentcomm.stream import StreamTally
from latentcomm.transports.base import FrameSender
from latentcomm.transports.tcp import send_frame
from latentcomm.wire import v2
from latentcomm.wire.encodings import DTYPE_FLAGS, FLAG_INT8, encode_latent
from latentcomm.wire.legacy import LegacyFrame, frame_to_bytes

if TYPE_CHECKING:  # the VAE path's; a video-only install has no torch
    from latentcomm.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class SendReport:
    """What one image cost; the same keys are printed by ``--json``."""

    image: str
    model: str
    image_size: list[int]  # [H, W] the receiver reconstructs
    latent_shape: list[int]
    dtype: str
    original_file_bytes: int
    payload_bytes: int
    frame_bytes: int
    compression_ratio: float  # original file bytes / payload bytes
    raw_compression_ratio: float  # 8-bit RGB pixel bytes / payload bytes
    bpp: float  # payload bits per pixel
    preprocess_s: float
    encode_s: float
    compress_s: float
    send_s: float | None = None
    clipped_fraction: float | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


@dataclass(frozen=True)
class Prepared:
    image: Image.Image  # the picture as the receiver should see it (resized/cropped)
    tensor: object  # (1, 3, H', W') in [-1, 1], padded to a multiple of 8
    size: tuple[int, int]  # (H, W) before padding
    seconds: float


#: The codec's facts about an encode that the sender's report carries (where the codec has them).
REPORTED_FACTS = (
    "quality",
    "entropy_model",
    "postfilter",
    "filter_gain_db",
    "target_bytes",
    "fits_target",
    "rate_probes",
    "refine_steps",
    "refine_s",
)


def prepare(path: str | Path | Image.Image, size: int, fit: str = "resize") -> Prepared:
    """Load an image (or take a decoded one, e.g. a video frame) and shape it for the model.

    ``size`` > 0: square size x size, by plain resize (the original sender: the legacy path) or centre
    crop (``fit="crop"``, the metrics script); ``fit="aspect"`` (v2 frames): the longer side ``size``,
    the aspect ratio kept. ``size`` 0: native size, padded to a multiple of 8.
    """
    t0 = time.perf_counter()
    img = path if isinstance(path, Image.Image) else load_image(path)
    if size > 0:
        if fit == "aspect":
            scale = size / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.LANCZOS)  # fmt: skip
        elif fit == "resize":
            img = resize_square(img, size)
        else:
            img = center_crop_square(img, size)
    tensor, hw = pad_to_multiple(pil_to_tensor(img))
    return Prepared(img, tensor, hw, time.perf_counter() - t0)


def build_frame(
    engine: Engine, prepared: Prepared, dtype: str = "f16", include_original: bool = True
) -> tuple[LegacyFrame, dict]:
    """Encode, quantize and compress; return the frame and timing/size facts."""
    t0 = time.perf_counter()
    latent = engine.encode(prepared.tensor)
    t1 = time.perf_counter()
    enc = encode_latent(latent, DTYPE_FLAGS[dtype])
    original = None
    if include_original:
        # float32 [0, 1], (3, 8h, 8w): the padded picture, as the original sender lays it out.
        original = np.ascontiguousarray((prepared.tensor[0].numpy() + 1.0) / 2.0, dtype=np.float32).tobytes()
    padded_hw = tuple(prepared.tensor.shape[-2:])
    frame = LegacyFrame(
        enc.flag, enc.height, enc.width, enc.payload, original, prepared.size if padded_hw != prepared.size else None
    )
    t2 = time.perf_counter()
    if enc.flag == FLAG_INT8 and enc.clipped_fraction > 0:
        log.warning("int8 legacy latent: %.1f%% of values were outside [-1, 1] and clipped", 100 * enc.clipped_fraction)
    return frame, {
        "latent": latent,
        "latent_shape": list(latent.shape),
        "encode_s": t1 - t0,
        "compress_s": t2 - t1,
        "clipped_fraction": enc.clipped_fraction,
    }


def send_image(
    engine: Engine,
    path: str | Path,
    host: str,
    port: int,
    size: int = 256,
    dtype: str = "f16",
    include_original: bool = True,
    fit: str = "resize",
    timeout: float = 30.0,
    wait_for: float = 0.0,
) -> SendReport:
    """The whole sender job for one image; raises LatentcommError subclasses on user errors."""
    prepared = prepare(path, size, fit)
    frame, facts = build_frame(engine, prepared, dtype, include_original)
    data = frame_to_bytes(frame)
    report = make_report(engine.source, path, prepared, len(frame.payload), facts, dtype, len(data))
    report.send_s = send_frame(host, port, data, timeout=timeout, wait_for=wait_for)
    return report


def make_report(
    source: str, path: str | Path, prepared: Prepared, payload: int, facts: dict, dtype: str, frame_bytes: int
) -> SendReport:
    """The report's sizes and timings, the same for legacy and v2 frames and for every codec."""
    h, w = prepared.size
    file_bytes = Path(path).stat().st_size
    return SendReport(
        image=str(path),
        model=source,
        image_size=[h, w],
        latent_shape=list(facts["latent_shape"]),
        dtype=dtype,
        original_file_bytes=file_bytes,
        payload_bytes=payload,
        frame_bytes=frame_bytes,
        compression_ratio=round(file_bytes / payload, 3),
        raw_compression_ratio=round(3 * h * w / payload, 3),
        bpp=round(8 * payload / (h * w), 4),
        preprocess_s=round(prepared.seconds, 4),
        encode_s=round(facts["encode_s"], 4),
        compress_s=round(facts["compress_s"], 4),
        clipped_fraction=round(facts["clipped_fraction"], 6) if dtype == "i8" else None,
    )


def format_report(r: SendReport) -> str:
    """The human-readable report the original sender printed, plus a few extra lines."""
    lines = [
        f"Image:                 {r.image} -> {r.image_size[1]}x{r.image_size[0]}",
        f"Model:                 {r.model}",
        f"Original file size:    {r.original_file_bytes:,} bytes",
        f"Latent payload size:   {r.payload_bytes:,} bytes "
        f"({r.dtype}, latent {tuple(r.latent_shape)}, {r.bpp:.3f} bpp)",
        *([f"Quality:               {r.extra['quality']:g}"] if "quality" in r.extra else []),
        f"Compression ratio:     {r.compression_ratio:.2f}x vs file, {r.raw_compression_ratio:.2f}x vs raw RGB",
        f"Encoding time:         {r.encode_s:.3f} s",
    ]
    if r.send_s is not None:
        lines.append(f"Transmission time:     {r.send_s:.4f} s ({r.frame_bytes:,} bytes on the wire)")
        lines.append("Delivery:              unconfirmed (legacy frames get no acknowledgement; --protocol v2 does)")
    if r.clipped_fraction is not None:
        lines.append(f"int8 clipped values:   {100 * r.clipped_fraction:.2f}% (legacy int8 only carries [-1, 1])")
    for k, v in r.extra.items():
        if k == "quality":
            continue
        lines.append(f"{k + ':':<22} {v}")
    return "\n".join(lines)


# --- v2: many images per connection, each acknowledged ---------------------------------------------

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def expand_images(items: list[str]) -> list[Path]:
    """Files as given, folders as their image files (sorted). Missing paths stay, to be reported."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ImageError(f"no image files in folder {p}")
            out.extend(files)
        else:
            out.append(p)
    return out


def text_source(text: str | None, text_file: str | Path | None) -> Callable[[Path], str | None] | None:
    """The text each image carries: ``--text`` for every image, or ``--text-file``.

    A ``.jsonl`` text file maps image names to texts, one ``{"image": NAME, "text": TEXT}`` per line
    (for folders and streams: images it doesn't name carry none); any other file is one text for every
    image. Raises ImageError (a user mistake, one line) for unreadable files, invalid UTF-8 or JSON.
    """
    if text is not None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ImageError("--text is not valid UTF-8") from None
        return lambda _path: text
    if text_file is None:
        return None
    path = Path(text_file)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"--text-file {path}: {exc.strerror or exc}") from None
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImageError(f"--text-file {path} is not valid UTF-8 (byte {exc.start})") from None
    if path.suffix != ".jsonl":
        return lambda _path: content

    mapping: dict[str, str] = {}
    for n, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            mapping[str(entry["image"])] = str(entry["text"])
        except (ValueError, KeyError, TypeError):
            raise ImageError(f'--text-file {path}, line {n}: expected {{"image": NAME, "text": TEXT}}') from None
    return lambda p: mapping.get(p.name, mapping.get(str(p)))


def build_v2_frame(
    codec: ImageCodec,
    prepared: Prepared,
    seq: int,
    name: str,
    include_original: bool = True,
    text: str | None = None,
) -> tuple[v2.ImageFrame, dict]:
    """Encode one prepared image into a v2 frame (the original rides along as PNG, never float32)."""
    enc = codec.encode(pil_to_tensor(prepared.image))
    ref = encode_png(prepared.image) if include_original else None
    frame = v2.ImageFrame(
        seq,
        codec.model_id,
        enc.encoding,
        enc.compression,
        enc.shape,
        prepared.size,
        enc.payload,
        name,
        enc.params,
        ref,
        text,
    )
    return frame, enc.facts


def codec_label(codec: ImageCodec) -> str:
    """What the report's ``dtype`` field says: the VAE latent's precision, "learned", or the video codec."""
    return codec.label


def send_images_v2(
    codec: ImageCodec,
    paths: list[Path],
    client: FrameSender,
    size: int = 256,
    include_original: bool = True,
    texts: Callable[[Path], str | None] | None = None,
    stream: str | None = None,
) -> Iterator[dict]:
    """Send each image over one v2 connection; yield one report dict per image, acknowledged or not.
    ``stream``: the sender's stream name (``--name``), carried as the frames' name prefix ``NAME/``.

    A bad image file is reported and skipped; a lost connection is retried by the client; a frame
    the receiver refuses is reported with its status, so nothing is silently lost.
    """
    for seq, path in enumerate(paths, start=1):
        try:
            prepared = prepare(path, size, fit="aspect")
        except ImageError as exc:
            yield {"image": str(path), "seq": seq, "acknowledged": False, "error": str(exc)}
            continue
        text = texts(path) if texts is not None else None
        name = f"{stream}/{path.name}" if stream else path.name
        frame, facts = build_v2_frame(codec, prepared, seq, name, include_original, text)
        t0 = time.perf_counter()
        ack = client.send(frame)
        report = make_report(
            codec.source, path, prepared, len(frame.payload), facts, codec_label(codec), client.last_frame_bytes
        )
        report.send_s = round(time.perf_counter() - t0, 4)  # includes waiting for the acknowledgement
        report.model = frame.model
        report.extra.update(
            name=path.name,
            seq=seq,
            protocol="v2",
            codec=codec.kind,
            compression=codec.compression_label,
            acknowledged=ack.ok,
            ack_status=ack.status.name,
            ack_message=ack.message,
            reconnects=client.reconnects,
            payload_sha256=hashlib.sha256(frame.payload).hexdigest(),
        )
        if text is not None:
            report.extra["text"] = text
        for key in REPORTED_FACTS:
            if key in facts:
                report.extra[key] = facts[key]
        yield report.as_dict()


def send_stream(
    codec: ImageCodec,
    live,
    client: FrameSender,
    size: int = 0,
    bandwidth_bps: float | None = None,
    include_original: bool = False,
    key_interval: int = 30,
    texts: Callable[[Path], str | None] | None = None,
) -> Iterator[dict]:
    """Send a live source (``stream.LiveSource``); yield a report per frame sent or dropped for the
    budget, then a summary with fps and latency percentiles (capture to acknowledgement).

    Encoding and sending overlap: while one frame is on the wire (a sender thread waits for its
    acknowledgement), the next is encoded, then waits for the wire; frames the source produced in
    between are dropped, never queued. With ``bandwidth_bps`` the bytes go out paced at that rate
    (the client writes no faster), and each frame is sized by the learned codec's rate control to
    what the link carries in one frame interval (the time the encoder takes, between 0.25 and 2 s),
    frame header included: the link stays busy and never over its budget. A frame whose smallest
    encoding needs more than 2 s of the link is dropped.

    Temporal redundancy (learned codec): between key frames, every ``key_interval`` frames, each
    frame is an inter frame that codes only the blocks that changed since the previous frame and
    copies the rest. A refused frame makes the next one encoded a key frame, so a loss never spoils
    more than the frames up to the next key frame; so does a scene change (most blocks changed).
    ``key_interval`` 1 sends key frames only.
    """

    rate = bandwidth_bps / 8 if bandwidth_bps else None
    outbox: queue_mod.Queue = queue_mod.Queue()
    results: queue_mod.Queue = queue_mod.Queue()
    refused = threading.Event()
    wire_free = threading.Semaphore(1)  # one frame on the wire, the next one being encoded

    def wire() -> None:
        while (job := outbox.get()) is not None:
            frame, meta = job
            try:
                ack = client.send(frame)
            except Exception as exc:  # noqa: BLE001 - handed to the generator's thread
                results.put(exc)
                wire_free.release()
                return
            if not ack.ok:
                refused.set()
            results.put((frame, meta, ack, time.monotonic(), client.last_frame_bytes))
            wire_free.release()

    thread = threading.Thread(target=wire, name="stream-send", daemon=True)
    thread.start()
    tally = StreamTally()
    sent = sent_bytes = failed = dropped_rate = 0
    seq = 0
    reference = None
    since_key = 0
    t_enc = 0.5  # running estimate of the seconds one frame takes to encode

    def report(res) -> dict:
        nonlocal sent, sent_bytes, failed
        if isinstance(res, Exception):
            raise res
        frame, meta, ack, done, nbytes = res
        latency = done - meta["captured"]
        if ack.ok:
            sent += 1
            sent_bytes += nbytes
            tally.acknowledged(latency, 0, nbytes)
        else:
            failed += 1
        return {
            **{k: v for k, v in meta.items() if k != "captured"},
            "bytes": nbytes,
            "acknowledged": ack.ok,
            "ack_status": ack.status.name,
            "latency_s": round(latency, 4),
            "dropped_so_far": live.dropped + dropped_rate,
            "time": done,
        }

    try:
        while True:
            while not results.empty():
                yield report(results.get())
            item = live.latest()
            if item is None:
                break
            f, captured = item
            seq += 1
            t0 = time.monotonic()
            prepared = prepare(f.image, size, fit="aspect")
            ref_png = encode_png(prepared.image) if include_original else None
            probe = v2.ImageFrame(seq, codec.model_id, 4, 0, (1, 1, 1), prepared.size, b"", f.name, (), ref_png)
            overhead = len(v2.encode_image(probe))
            target = None
            if rate is not None:
                target = max(1, int(rate * min(2.0, max(0.25, t_enc))) - overhead)
            x = pil_to_tensor(prepared.image)
            if refused.is_set():
                refused.clear()
                reference = None
            if codec.inter_frames:  # codes against its own references, to the byte target
                ref = reference if since_key + 1 < key_interval else None
                enc = codec.encode_in_stream(x, target, ref)  # a key frame after a scene change
                reference = enc.facts["reference"]
                since_key = 0 if enc.facts.get("frame_type") == "key" else since_key + 1
            else:
                enc = codec.encode(x)
            t_enc = 0.7 * t_enc + 0.3 * (time.monotonic() - t0)
            if target is not None and len(enc.payload) > target:
                dropped_rate += 1
                reference, since_key = None, 0
                yield {"frame": f.name, "seq": seq, "dropped": "bandwidth",
                       "bytes_needed": overhead + len(enc.payload), "tokens": target + overhead}  # fmt: skip
                continue
            text = texts(Path(f.name)) if texts is not None else None
            frame = v2.ImageFrame(
                seq, codec.model_id, enc.encoding, enc.compression, enc.shape, prepared.size, enc.payload, f.name,
                enc.params, ref_png, text,
            )  # fmt: skip
            meta = {
                "frame": f.name,
                "seq": seq,
                "source_index": f.index,
                "pts": round(f.pts, 4),
                "payload_bytes": len(enc.payload),
                "bpp": round(8 * len(enc.payload) / (prepared.size[0] * prepared.size[1]), 4),
                "quality": enc.facts.get("quality"),
                "frame_type": enc.facts.get("frame_type", "key"),
                "coded_blocks": enc.facts.get("coded_blocks"),
                "encode_s": round(time.monotonic() - t0, 4),
                "captured": captured,
            }
            wire_free.acquire()  # waits while the previous frame is still on the wire
            if not thread.is_alive():
                break
            outbox.put((frame, meta))
    finally:
        outbox.put(None)
        thread.join()
    while not results.empty():
        yield report(results.get())
    span = (time.monotonic() - live.t0) or 1e-9
    yield {
        "summary": True,
        "frames_from_source": live.produced,
        "frames_sent": sent,
        "frames_failed": failed,
        "frames_dropped": live.dropped + dropped_rate,
        "dropped_for_bandwidth": dropped_rate,
        "dropped_stale": live.dropped,
        "bytes": sent_bytes,
        "seconds": round(span, 3),
        "achieved_fps": round(sent / span, 3),
        "bits_per_second": round(8 * sent_bytes / span, 1),
        "bandwidth_bps": bandwidth_bps,
        "latency_p50_s": tally.percentile(50),
        "latency_p95_s": tally.percentile(95),
    }
