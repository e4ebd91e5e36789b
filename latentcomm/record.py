"""The receiver's Foxglove outputs: ``--record FILE.mcap`` (every stream into one MCAP file, as
Foxglove reads it) and ``--foxglove [HOST:]PORT`` (the same messages live on a Foxglove WebSocket
server, for the Foxglove app to connect to).

Why: robotics teams look at camera data in Foxglove and keep it in MCAP. A video stream is recorded
as it arrived, without re-encoding: each access unit becomes a ``foxglove.CompressedVideo`` message
(H.264 Annex B, AV1 OBUs, VP9 frames; the key frames carry their parameter sets, so a player starts
at any key frame). Stills (a learned or VAE latent, which no player decodes) are recorded as their
decoded picture, a PNG ``foxglove.CompressedImage``; texts as ``foxglove.Log`` messages. Topics are
per stream: ``/NAME/video``, ``/NAME/image``, ``/NAME/log`` and ``/NAME/stats`` (the figures, JSON),
NAME the sender's ``--name``, else its
key id or address (letters, digits and ``_``). Written with the Foxglove SDK (``foxglove-sdk``);
read back with the ``mcap`` package (tests/test_record.py decodes every frame with PyAV). Both
outputs share one SDK context, so a frame is encoded into messages once.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from pathlib import Path

from PIL import Image

from latentcomm.errors import LatentcommError, require

log = logging.getLogger(__name__)

#: The figures each frame adds on ``/NAME/stats`` (JSON): what the dashboard charts.
STATS_SCHEMA = {
    "type": "object",
    "properties": {
        "frame_bytes": {"type": "integer", "description": "bytes on the wire"},
        "payload_bytes": {"type": "integer", "description": "the coded picture's bytes"},
        "link_bps": {"type": "integer", "description": "the sender's link rate, bits/s (fixed or estimated)"},
        "sender_latency_ms": {"type": "integer", "description": "the sender's last capture-to-acknowledgement"},
        "decode_s": {"type": "number", "description": "this receiver's decode time"},
        "frame_type": {"type": "string", "description": "key or inter (video)"},
        "image_size": {"type": "array", "items": {"type": "integer"}, "description": "shown [height, width]"},
        "coded_size": {"type": "array", "items": {"type": "integer"},
                       "description": "coded [height, width] (video: smaller than shown on a thin link)"},
    },
}


def topic_name(report: dict) -> str:
    """The stream's topic prefix: its --name, else its key id or address, as a topic segment."""
    name = report.get("stream") or report.get("key_id") or str(report.get("peer", "unknown")).rsplit(":", 1)[0]
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "unknown"


class FoxgloveSink:
    """Every stream the receiver decodes, as Foxglove messages: into an MCAP file (``record``) and/or
    live on a Foxglove WebSocket server (``serve``: (host, port); port 0 picks one). See the module."""

    def __init__(self, record: Path | None = None, serve: tuple[str, int] | None = None) -> None:
        foxglove = require("foxglove", "foxglove", "--record and --foxglove")
        if record is not None and record.exists():
            raise LatentcommError(f"--record {record}: the file exists (a recording is never overwritten)")
        self.path = record
        self._context = foxglove.Context()
        self._writer = self.server = None
        try:
            if record is not None:
                self._writer = foxglove.open_mcap(str(record), context=self._context)
            if serve is not None:
                self.server = foxglove.start_server(name="latentcomm", host=serve[0], port=serve[1],
                                                    context=self._context)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the SDK's own error types: a missing folder, a port in use
            what = f"--record {record}" if self._writer is None and record is not None else "--foxglove"
            raise LatentcommError(f"{what}: {exc}") from None
        self._channels: dict[str, object] = {}
        self.messages = 0

    @property
    def port(self) -> int | None:
        """The WebSocket server's port (None without one)."""
        return self.server.port if self.server is not None else None

    def _channel(self, topic: str, kind: str):
        import foxglove
        from foxglove.channels import CompressedImageChannel, CompressedVideoChannel, LogChannel

        if topic not in self._channels:
            if kind == "stats":  # JSON, its schema below: Foxglove's plot panel charts its fields
                schema = foxglove.Schema(name="latentcomm.StreamFigures", encoding="jsonschema",
                                         data=json.dumps(STATS_SCHEMA).encode())  # fmt: skip
                self._channels[topic] = foxglove.Channel(topic, schema=schema, message_encoding="json",
                                                         context=self._context)  # fmt: skip
            else:
                cls = {"video": CompressedVideoChannel, "image": CompressedImageChannel, "log": LogChannel}[kind]
                self._channels[topic] = cls(topic, context=self._context)
        return self._channels[topic]

    def on_frame(self, report: dict, payload: bytes, recon: Image.Image) -> None:
        """One decoded frame: its report (the receiver's), its payload as it arrived, its picture."""
        from foxglove.messages import CompressedImage, CompressedVideo, Log, LogLevel, Timestamp

        now = time.time_ns()
        stamp = Timestamp(sec=now // 1_000_000_000, nsec=now % 1_000_000_000)
        prefix = f"/{topic_name(report)}"
        frame_id = prefix.strip("/")
        if report.get("codec") == "video":
            from latentcomm.codecs.video import parse_payload

            _, unit = parse_payload(payload)  # the access unit, without our header
            self._channel(f"{prefix}/video", "video").log(
                CompressedVideo(timestamp=stamp, frame_id=frame_id, data=unit, format=report["model"]), log_time=now
            )
        else:
            buf = io.BytesIO()
            recon.save(buf, format="PNG")
            self._channel(f"{prefix}/image", "image").log(
                CompressedImage(timestamp=stamp, frame_id=frame_id, data=buf.getvalue(), format="png"), log_time=now
            )
        figures = {k: report[k] for k in STATS_SCHEMA["properties"] if report.get(k) is not None}
        self._channel(f"{prefix}/stats", "stats").log(json.dumps(figures).encode(), log_time=now)
        if report.get("text") is not None:
            self._channel(f"{prefix}/log", "log").log(
                Log(timestamp=stamp, level=LogLevel.Info, message=report["text"], name=frame_id), log_time=now
            )
        self.messages += 1

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self._writer is not None:
            self._writer.close()
            log.info("recorded %d frame(s) to %s", self.messages, self.path)
