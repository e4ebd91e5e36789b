"""Sending live video: a video codec, frames pipelined over one connection, key frames on request,
and a rate fixed by ``--bandwidth RATE`` or estimated from the acknowledgements (``auto``).

Three threads: this generator's (take the newest source frame, fit it, encode it), the writer's
(``FramePipeline.submit``: paced writes, up to ``window`` frames unacknowledged) and the
pipeline's reader (acknowledgements). While one frame is being written the next is encoded; when
the window is full the writer waits, the encoder waits for the writer, and the live source
supersedes the frames that came meanwhile (counted as dropped, never queued), so latency stays
bounded on a link slower than the source.

An acknowledgement with ``KEY_FRAME_NEEDED`` (the receiver lacks a reference: a refused, lost or
undecodable frame, a restart, a late join, a lost connection) makes the next picture a key frame,
once per loss: refusals of frames sent before that key frame don't ask again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

from latentcomm.codecs.video import VIDEO_HEADER, VideoCodec, fit_picture
from latentcomm.operating import CAPABILITY, LADDER, OperatingPolicy
from latentcomm.ratecontrol import DelayBasedEstimator
from latentcomm.stream import SERIES_S, LiveSource, StreamTally
from latentcomm.transports.base import FramePipeline
from latentcomm.wire import v2
from latentcomm.wire.encodings import COMP_NONE, ENC_VIDEO

log = logging.getLogger(__name__)

#: The same under --bandwidth auto, whose estimate sits near the link's rate: the encoder's own
#: overshoot must not keep a queue standing.
ADAPTIVE_MARGIN = 0.85
#: Under a rate (fixed or estimated), the frames in flight hold at most this many seconds of it (and
#: always one frame): when the link slows down, what is already on the way is what waits.
IN_FLIGHT_S = 0.2


def send_video_stream(
    codec: VideoCodec,
    live: LiveSource,
    pipeline: FramePipeline,
    resolution: tuple[int, int] | None = None,
    bandwidth_bps: float | None = None,
    auto_max_bps: float | None = None,
    texts: Callable[[Path], str | None] | None = None,
    fps: float = 10.0,
    follow_link: bool = True,
) -> Iterator[dict]:
    """Stream ``live`` through ``codec`` into ``pipeline``; yield a report per acknowledged (or
    refused) frame, then a summary. ``bandwidth_bps`` fixes the rate; ``auto_max_bps`` estimates it.
    ``follow_link``: under a rate, code a smaller picture (fewer frames) when the link is thin for the
    source's size (latentcomm.operating), once the receiver says it shows them at the source's size."""
    estimator = DelayBasedEstimator(auto_max_bps) if auto_max_bps else None
    client = pipeline.client
    outbox: queue.Queue = queue.Queue(maxsize=1)
    errors: list[BaseException] = []
    metas: dict[int, dict] = {}
    meta_lock = threading.Lock()

    def writer() -> None:
        while (frame := outbox.get()) is not None:
            try:
                pipeline.submit(frame)
            except BaseException as exc:  # noqa: BLE001 - handed to the generator's thread
                errors.append(exc)
                return
            with meta_lock:  # (an acknowledgement that beat this to it leaves its frame out of the estimate)
                if frame.seq in metas:
                    metas[frame.seq]["written"] = time.monotonic()
                    if getattr(pipeline, "last_frame_bytes", None):  # as written: an INTER is smaller
                        metas[frame.seq]["bytes"] = pipeline.last_frame_bytes

    thread = threading.Thread(target=writer, name="stream-write", daemon=True)
    thread.start()
    cpu0 = time.process_time()  # this process's CPU (all threads) from here: capture, encode, seal, send

    stem: str | None = None  # the source's name stem, as the last key frame gave it
    overhead = 0  # bytes a frame costs besides its access unit (measured from the first frame)
    bare: v2.ImageFrame | None = None  # an inter frame without its access unit, which that is measured on
    compact = False  # the connection sends inter frames as INTER messages (the receiver reads them)

    # The share of the link the encoder aims at: the codec's own under a fixed --bandwidth (its rate
    # control's overshoot set aside), less under auto, whose estimate sits near the link's rate.
    margin = min(ADAPTIVE_MARGIN, codec.spec.rate_margin) if estimator else codec.spec.rate_margin

    def set_link(bps: float) -> None:
        """What the link's rate decides besides the encoder's target: the pacer, the in-flight bound,
        and the rate the frames report to the receiver's dashboard."""
        codec.link_bps = bps
        client.pace = (1.5 if estimator else 1.0) * bps / 8
        pipeline.max_bytes = IN_FLIGHT_S * bps / 8

    def apply_rate(bps: float) -> None:
        set_link(bps)
        codec.set_bitrate(max(8_000.0, margin * bps - 8 * overhead * fps))

    start = bandwidth_bps or (estimator.estimate if estimator else None)
    if start:  # the encoder's target is set before the first frame, once its overhead is known
        codec.adaptive = estimator is not None
        set_link(start)
    tally = StreamTally()
    policy: OperatingPolicy | None = None  # made at the first picture (it needs the source's size)
    scaled_ok = False  # the receiver said it shows scaled pictures (before the policy exists, too)
    taken = skipped = moves = 0
    seq = acked = refused = sent_bytes = keys = key_requests = 0
    key_from = 0  # refusals of frames from this seq on ask for a key frame (older ones were answered)

    def settle(item) -> dict | None:
        nonlocal acked, refused, sent_bytes, key_from, key_requests, scaled_ok, overhead, compact
        s, ack, t_ack = item
        if ack.ok and CAPABILITY in ack.message.split():
            scaled_ok = True
            if policy is not None:
                policy.enable()
        if ack.ok and not compact and bare is not None and getattr(pipeline, "compact", False):
            # The receiver reads INTER messages: an inter frame's framing shrinks, and the encoder
            # gets the bytes it saves.
            compact = True
            overhead = len(v2.encode_inter(bare)) + client.seal_overhead
            if bandwidth_bps:
                apply_rate(bandwidth_bps)
        with meta_lock:
            meta = metas.pop(s, None)
        if meta is None:
            if s == 0 and ack.status == v2.Status.KEY_FRAME_NEEDED:  # a viewer joined, an owner took over
                codec.request_key_frame()
                key_requests += 1
            return None
        nbytes = meta.get("bytes", 0)
        latency = t_ack - meta["captured"]
        if ack.ok:
            acked += 1
            sent_bytes += nbytes
            tally.acknowledged(latency, int(t_ack - live.t0), nbytes)
            codec.last_latency_s = latency
            if estimator is not None and "written" in meta:
                apply_rate(estimator.on_ack(meta["written"], t_ack, nbytes))
        else:
            refused += 1
            if ack.status == v2.Status.KEY_FRAME_NEEDED and s >= key_from:
                codec.request_key_frame()
                key_requests += 1
                key_from = seq + 1  # the next frame encoded answers it; older refusals don't ask again
        report = {k: v for k, v in meta.items() if k not in ("captured", "written")}
        if "written" in meta:  # capture to the last byte handed to the socket: encoding and pacing
            report["written_s"] = round(meta["written"] - meta["captured"], 4)
        report.update(
            bytes=nbytes,
            acknowledged=ack.ok,
            ack_status=ack.status.name,
            latency_s=round(latency, 4),
            dropped_so_far=live.dropped,
            time=time.time() - (time.monotonic() - t_ack),
        )
        if not ack.ok:
            report["ack_message"] = ack.message
        if estimator is not None:
            report["estimated_bps"] = round(estimator.estimate)
            if estimator.history:
                report["queue_delay_s"] = round(estimator.history[-1].queue_delay_s, 4)
        return report

    def ready() -> Iterator[dict]:
        while True:
            try:
                item = pipeline.acks.get_nowait()
            except queue.Empty:
                return
            if (r := settle(item)) is not None:
                yield r

    try:
        while True:
            yield from ready()
            if errors:
                raise errors[0]
            item = live.latest()
            if item is None:
                break
            f, captured = item
            t0 = time.monotonic()
            picture = fit_picture(f.image, resolution)
            shown_size = picture.size  # what the receiver shows, whatever size it is coded at
            if policy is None:
                policy = OperatingPolicy(codec.model_id, *shown_size, fps, adaptive=estimator is not None)
                if scaled_ok:
                    policy.enable()
            link_bps = bandwidth_bps or (estimator.estimate if estimator else 0.0)
            if follow_link and link_bps and policy.choose(link_bps):
                moves += 1
                codec.request_key_frame()
            rung = policy.rung if follow_link else LADDER[0]
            taken += 1
            if rung.stride > 1 and taken % rung.stride:
                skipped += 1  # a rung at a lower frame rate: this source frame is not coded
                continue
            coded_size = rung.size(*shown_size)
            if coded_size != shown_size:
                picture = picture.resize(coded_size, Image.Resampling.LANCZOS)
            seq += 1
            user_text = texts(Path(f.name)) if texts is not None else None
            text = user_text
            if f.note:  # the source's own news (a reconnect, --codec auto's choice) goes before the user's text
                text = f"[{f.note}]" + (f" {text}" if text else "")
            if not overhead:
                # What every inter frame costs besides its access unit (no name), sealing included,
                # known before the first frame so that the encoder opens at the rate left for video
                # (with the user's text, which every frame carries; not a one-off note).
                bare = v2.ImageFrame(
                    0, codec.model_id, ENC_VIDEO, COMP_NONE, (3, *picture.size[::-1]), picture.size[::-1],
                    bytes(VIDEO_HEADER.size), "", (), None, user_text,
                )  # fmt: skip
                overhead = len(v2.encode_image(bare)) + client.seal_overhead
                if start:
                    apply_rate(start)
            enc = codec.encode_picture(picture, captured=captured, source_index=f.index)
            policy.on_frame(
                len(enc.payload) - VIDEO_HEADER.size, codec.bitrate_bps, live.produced, live.dropped,
                enc.facts["frame_type"] == "key",
            )  # fmt: skip
            name = f.name
            if enc.facts["frame_type"] == "key":
                keys += 1
                key_from = seq
                stem = f.name.rpartition("-")[0] if f.name.endswith(f"-{f.index:06d}") else None
            elif stem is not None and f.name == f"{stem}-{f.index:06d}":
                name = ""  # the receiver names it from the key frame's stem and the source index
            frame = v2.ImageFrame(
                seq, codec.model_id, enc.encoding, enc.compression, enc.shape, shown_size[::-1], enc.payload, name,
                (), None, text,
            )  # fmt: skip
            with meta_lock:
                metas[seq] = {
                    "frame": f.name,
                    "seq": seq,
                    "source_index": f.index,
                    "pts": round(f.pts, 4),
                    "payload_bytes": len(enc.payload),
                    "frame_type": enc.facts["frame_type"],
                    "bitrate_bps": enc.facts["bitrate_bps"],
                    "coded_size": list(coded_size),
                    "encode_s": round(time.monotonic() - t0, 4),
                    "captured": captured,
                    "captured_time": time.time() - (time.monotonic() - captured),
                    "bytes": len(v2.encode_image(frame)) + client.seal_overhead,  # on the wire
                }
            while True:  # hand over, but keep answering acknowledgements while the writer is busy
                try:
                    outbox.put(frame, timeout=0.05)
                    break
                except queue.Full:
                    yield from ready()
                    if errors or not thread.is_alive():
                        break
    finally:
        # Tell the writer to finish, while it lives: one that died on an error (a receiver that isn't
        # there) takes nothing more, and waiting on its full outbox held the error back for --timeout.
        deadline = time.monotonic() + max(5.0, client.timeout)
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                outbox.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        thread.join(timeout=client.timeout)
        if not errors:
            pipeline.drain(timeout=client.timeout)
        codec.close()
    if errors:
        raise errors[0]
    yield from ready()
    span = (time.monotonic() - live.t0) or 1e-9
    summary = {
        "summary": True,
        "codec": codec.model_id,
        "frames_from_source": live.produced,
        "frames_sent": seq,
        "frames_acknowledged": acked,
        "frames_refused": refused,
        "frames_dropped": live.dropped,
        "key_frames": keys,
        "key_frame_requests": key_requests,
        "operating_point": policy.rung.label if policy is not None else None,
        "operating_point_reason": policy.reason if policy is not None else None,
        "operating_point_changes": moves,
        "frames_skipped_for_rate": skipped,
        "reconnects": pipeline.reconnects,
        "bytes": sent_bytes,
        "seconds": round(span, 3),
        "achieved_fps": round(acked / span, 3),
        "bits_per_second": round(8 * sent_bytes / span, 1),
        "bandwidth_bps": bandwidth_bps,
        "bits_per_second_by_second": tally.bits_by_second(span),
        "latency_p50_s": tally.percentile(50),
        "latency_p95_s": tally.percentile(95),
        "cpu_s_per_frame": round((time.process_time() - cpu0) / max(1, seq), 5),
    }
    if estimator is not None:
        summary["estimated_bps_by_second"] = _by_second(list(estimator.history), live.t0, span)[-SERIES_S:]
    yield summary


def _by_second(history, t0: float, span: float) -> list[float | None]:
    """The estimate at the end of each second of the stream (None before the first acknowledgement)."""
    out: list[float | None] = []
    i, last = 0, None
    for s in range(int(span) + 1):
        while i < len(history) and history[i].time - t0 < s + 1:
            last = round(history[i].estimate_bps)
            i += 1
        out.append(last)
    return out
