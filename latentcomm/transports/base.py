"""What every transport offers, as ``typing.Protocol`` classes: the sender, the receiver and the live
pipeline are written against these, so TCP (:mod:`~latentcomm.transports.tcp`) and a broker
(:mod:`~latentcomm.transports.mqtt`) are interchangeable, and a new transport is one module whose
classes have these members (checked by ``isinstance`` in the tests: the protocols are runtime-checkable).

- :class:`FrameSender`: one v2 frame at a time, each answered by the receiver's acknowledgement
  (``V2Client``, ``MqttSender``).
- :class:`FramePipeline`: several frames in flight over a :class:`FrameSender`, acknowledgements as a
  window (``Pipeline``, ``BrokerPipeline``): live video.
- :class:`FrameSource`: the receiving end, producing :class:`ReceivedFrame` objects on a bounded queue
  (``FrameServer``, ``MqttServer``).
"""

from __future__ import annotations

import queue
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from latentcomm.wire import v2
from latentcomm.wire.legacy import LegacyFrame

#: How long a stopping server still waits for frames in flight.
SHUTDOWN_GRACE_S = 5.0


@dataclass(frozen=True)
class ReceivedFrame:
    """A complete frame, who sent it, transport-level facts, and (v2) where the verdict goes."""

    frame: LegacyFrame | v2.ImageFrame
    peer: str
    frame_bytes: int
    receive_seconds: float
    reply: Future | None = None  # v2: set_result(Ack) to acknowledge
    key_id: str | None = None  # sealed frames: the id of the key that authenticated them

    @property
    def protocol(self) -> str:
        return "v2" if isinstance(self.frame, v2.ImageFrame) else "legacy"


@dataclass
class ServerStats:
    connections: int = 0
    frames: int = 0
    rejected: int = 0
    bytes_received: int = 0


@runtime_checkable
class FrameSender(Protocol):
    """Sends v2 frames and returns each one's acknowledgement; raises TransportError when it can't."""

    #: Bytes sealing adds to each message (the video sender's rate accounts for them).
    seal_overhead: int
    #: Seconds to wait for an acknowledgement before the frame counts as lost.
    timeout: float
    #: Write no faster than this many bytes/s (None: as fast as the link takes them).
    pace: float | None
    #: Times the link was re-opened, for reports.
    reconnects: int
    #: Wire size of the frame last sent.
    last_frame_bytes: int

    def send(self, frame: v2.ImageFrame) -> v2.Ack: ...

    def close(self) -> None: ...

    def __enter__(self) -> FrameSender: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class FramePipeline(Protocol):
    """Several frames in flight over ``client``; ``(seq, Ack, arrival time)`` tuples arrive on ``acks``
    (a lost link or a lost frame answers KEY_FRAME_NEEDED, so a video sender starts over)."""

    client: FrameSender
    acks: queue.Queue[tuple[int, v2.Ack, float]]
    #: Hold new frames while this many bytes are unacknowledged (None: only the window counts).
    max_bytes: float | None

    @property
    def in_flight(self) -> int: ...

    @property
    def reconnects(self) -> int: ...

    def submit(self, frame: v2.ImageFrame) -> None: ...

    def drain(self, timeout: float) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class FrameSource(Protocol):
    """The receiving end: complete frames on ``frames``; each v2 frame's verdict goes to its ``reply``."""

    frames: queue.Queue[ReceivedFrame]
    stats: ServerStats
    #: Called ``(peer, reason)`` for every frame the transport itself refused (the dashboard).
    on_reject: list
    #: Called ``(peer)`` when a stream's connection ends (or, through a broker, this receiver's lease on
    #: it): the receiver frees its decoder (from any thread).
    on_stream_end: list

    @property
    def active_connections(self) -> int: ...

    def start(self) -> FrameSource: ...

    def stop_accepting(self) -> None: ...
