"""Operating points: the picture size and frame rate a video stream is coded at for its link rate.

Why: below some bits per pixel a video encoder can't use what it is given. At 64 kbit/s a 640x352
film clip at 10 fps gets 0.028 bits a pixel; x264 there shows blocks, and the same stream coded at
half size and upscaled shows more (measured +1.3 dB on Tears of Steel); SVT-AV1 at its top quantizer
still overshoots the rate by 30-60% on such content, so a live sender falls behind and supersedes
frames. WebRTC's encoders drop resolution under a thin link for this reason. The sender here codes a
smaller picture (and, lower still, fewer frames a second) and the receiver shows it at the source's
size (``latentcomm.codecs.video``: a frame's picture size is the source's, its coded shape smaller).

The choice, per codec, comes from :data:`TABLE_PATH`, written by ``python -m
benchmarks.operating_points`` from measured rate-distortion: for each rung of :data:`LADDER` the
source bits per pixel (link rate / (source width x height x fps)) from which it gave the best
picture at the source's size, over the benchmark's scenes. On top of the table the sender watches its
stream: when, over :data:`WINDOW_S`, the encoder spends more than :data:`OVERSHOOT` times its target
a frame (its quantizer is at the top: the content needs more than the rate) or the live source
supersedes more than :data:`MAX_DROPPED` of its frames (the stream doesn't fit the link, whatever the
cause: the encoder, key frames too large for the link), it steps one rung down and stays there for
:data:`HOLD_S`. Moves happen at key frames (a new size needs one) and at most every
:data:`MIN_DWELL_S`, with :data:`HYSTERESIS` around the thresholds, so a link estimate that wobbles
(``--bandwidth auto``) doesn't make the picture pump.

Only a receiver that says it shows smaller pictures at the source's size (its acknowledgement of a
key frame carries :data:`CAPABILITY`) gets them: an older receiver keeps getting the source's size.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: The word a receiver puts in its acknowledgement of a key frame when it shows a smaller coded
#: picture at the frame's (the source's) picture size.
CAPABILITY = "scaled"
#: The table written by benchmarks/operating_points.py (shipped inside the package).
TABLE_PATH = Path(__file__).with_name("operating_points.json")
#: Encoder output over its target, or the share of source frames superseded, sustained for WINDOW_S,
#: that steps the stream down a rung.
OVERSHOOT = 1.3
MAX_DROPPED = 0.2
WINDOW_S = 2.0
#: ... judged only while the encoder's target stayed within this ratio over the window: when the link's
#: estimate moves, frames overshoot and drop for a moment, and the rate, not the size, answers that.
STABLE_TARGET = 1.1
#: After an overshoot step-down, the stream stays at most at that rung this long.
HOLD_S = 10.0
#: The least time between two moves, and the margin around a threshold before a move.
MIN_DWELL_S = 4.0
HYSTERESIS = 1.15
#: The smallest side a coded picture gets (SVT-AV1 takes 64 and up; x264 16).
MIN_SIDE = 64


@dataclass(frozen=True)
class Rung:
    """One operating point: the coded picture is the source's times ``scale``, and every ``stride``-th
    source frame is coded."""

    scale: float
    stride: int = 1

    @property
    def label(self) -> str:
        part = "full size" if self.scale == 1 else f"{self.scale:g}x size"
        return part if self.stride == 1 else f"{part}, 1 frame in {self.stride}"

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The coded size for a source of ``width`` x ``height`` (even sides, at least MIN_SIDE)."""
        if self.scale == 1:
            return width - width % 2, height - height % 2
        w = max(MIN_SIDE, round(width * self.scale / 2) * 2)
        h = max(MIN_SIDE, round(height * self.scale / 2) * 2)
        return min(w, width - width % 2), min(h, height - height % 2)


#: The rungs, best picture per bit at high rates first.
LADDER = (Rung(1.0), Rung(0.75), Rung(0.5), Rung(0.5, 2))


def load_table(path: Path = TABLE_PATH) -> dict[str, list[float]]:
    """codec -> the source bits per pixel from which each rung of LADDER is used (rung 0's is 0 ...
    descending: ``[t0, t1, ...]`` with rung i for bpp >= t_i, the first that holds). Missing file or
    codec: full size always."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {codec: [float(t) for t in entry["thresholds_bpp"]] for codec, entry in data.get("codecs", {}).items()}


def rung_for(thresholds: list[float], bpp: float) -> int:
    """The table's rung for ``bpp``: the first whose threshold the bits per pixel reach."""
    for i, t in enumerate(thresholds[: len(LADDER)]):
        if bpp >= t:
            return i
    return min(len(thresholds), len(LADDER)) - 1 if thresholds else 0


class OperatingPolicy:
    """Which rung a stream codes at, from its link rate and its encoder's spending (see the module)."""

    def __init__(
        self, codec: str, width: int, height: int, fps: float, table: dict[str, list[float]] | None = None,
        clock=time.monotonic, adaptive: bool = False,
    ) -> None:  # fmt: skip
        self.codec = codec
        self.adaptive = adaptive  # the rate is estimated (--bandwidth auto)
        self.width, self.height, self.fps = width, height, fps
        self.thresholds = (load_table() if table is None else table).get(codec, [])
        self.clock = clock
        self.enabled = False  # until the receiver says it shows scaled pictures
        self.index = 0
        self.floor = 0  # the overshoot step-down's lowest-allowed index, while held
        self._hold_until = 0.0
        self._moved_at = -1e9
        # (time, bytes, target bps, source frames so far, superseded so far) per coded frame
        self._spent: deque[tuple[float, int, float, int, int]] = deque()
        self.reason = "full size until the receiver says it shows scaled pictures"

    @property
    def rung(self) -> Rung:
        return LADDER[self.index] if self.enabled else LADDER[0]

    def coded_size(self) -> tuple[int, int]:
        return self.rung.size(self.width, self.height)

    def enable(self) -> None:
        if not self.enabled:
            self.enabled = True
            self.reason = "receiver shows scaled pictures"
            log.info("the receiver shows scaled pictures: the stream's size follows the link")

    def bpp(self, link_bps: float) -> float:
        return link_bps / max(1.0, self.width * self.height * self.fps)

    def on_frame(self, nbytes: int, target_bps: float, produced: int = 0, dropped: int = 0, key: bool = False) -> None:
        """One coded frame's size, the encoder's target when it was coded, and the live source's
        counts so far (frames it produced, frames superseded before they were taken). A key frame
        starts the window afresh: it is large by nature, and the frames it holds up on the link are
        its cost, not a sign that the stream doesn't fit."""
        now = self.clock()
        if key:
            self._spent.clear()
            return
        self._spent.append((now, nbytes, target_bps, produced, dropped))
        while self._spent and now - self._spent[0][0] > WINDOW_S:
            self._spent.popleft()

    def overshooting(self) -> str | None:
        """Why the stream doesn't fit at this rung, over the last WINDOW_S (None: it does)."""
        if len(self._spent) < 3 or self._spent[-1][0] - self._spent[0][0] < 0.8 * WINDOW_S:
            return None
        frames = list(self._spent)
        targets = [f[2] for f in frames]
        if max(targets) > STABLE_TARGET * min(targets):
            return None  # the rate is moving (--bandwidth auto): the estimator's business, not the size's
        fps = self.fps / self.rung.stride
        per_frame = 8 * sum(f[1] for f in frames) / len(frames)
        target = sum(f[2] for f in frames) / len(frames)
        # Under --bandwidth auto x264 runs ABR, which spends past its target to make up an earlier
        # shortfall: only the link's verdict (frames superseded) counts there.
        if not self.adaptive and per_frame * fps > OVERSHOOT * target:
            return f"the encoder spent {per_frame * fps / target:.1f}x its target for {WINDOW_S:g} s"
        produced, dropped = frames[-1][3] - frames[0][3], frames[-1][4] - frames[0][4]
        if produced > 0 and dropped / produced > MAX_DROPPED:
            return f"the link took {100 * (1 - dropped / produced):.0f}% of the source's frames for {WINDOW_S:g} s"
        return None

    def choose(self, link_bps: float) -> bool:
        """Re-decide at ``link_bps``; True when the rung changed (the next frame is a key frame at the new size)."""
        if not self.enabled or not link_bps:
            return False
        now = self.clock()
        if now - self._moved_at < MIN_DWELL_S:
            return False
        bpp = self.bpp(link_bps)
        want = rung_for(self.thresholds, bpp) if self.thresholds else 0
        # Hysteresis: a move up needs the rate HYSTERESIS above the threshold that allows it.
        if want < self.index and self.thresholds and bpp < HYSTERESIS * self.thresholds[want]:
            want = self.index
        if now < self._hold_until:
            want = max(want, self.floor)
        why = f"{bpp:.3f} bits a pixel at {link_bps / 1000:.0f} kbit/s"
        if want <= self.index < len(LADDER) - 1 and (over := self.overshooting()):
            want = self.index + 1
            self.floor, self._hold_until = want, now + HOLD_S
            why = over
        if want == self.index:
            return False
        old = LADDER[self.index]
        self.index, self._moved_at = want, now
        self._spent.clear()
        self.reason = why
        w, h = self.coded_size()
        log.info("operating point %s -> %s (%dx%d): %s", old.label, self.rung.label, w, h, why)
        return True


#: ``--codec auto`` tries these, best picture per bit first (SVT-AV1 over x264: +0.7 to +2.5 dB at 64
#: kbit/s on the real camera clips, benchmarks/operating_points.py), and takes the first this machine
#: can run in real time.
AUTO_CODECS = ("av1", "h264")
#: The share of one core the chosen encoder may take at the stream's frame rate: the rest of the
#: sender (capture, scaling, sealing) and, on a 2-core robot, a receiver or the robot's own work
#: need the others.
AUTO_CPU_SHARE = 0.3
#: Pictures coded in the start-up trial (the first is a key frame and not counted).
AUTO_TRIAL_FRAMES = 6


@dataclass(frozen=True)
class CodecChoice:
    codec: str
    preset: str | None
    reason: str


def choose_codec(picture, fps: float, link_bps: float | None, candidates: tuple[str, ...] = AUTO_CODECS) -> CodecChoice:
    """``--codec auto``: the first of ``candidates`` whose encoder, at its automatic preset, codes this
    stream's first picture (moved a little each time, as a camera's next frames are) within
    AUTO_CPU_SHARE of a core at ``fps``, measured here at start-up in this process's CPU time. The
    receivers decode every codec offered (dav1d decodes 640x352 AV1 in 2-3 ms a frame)."""
    from PIL import ImageChops

    from latentcomm.codecs.video import VideoCodec, auto_preset, even_size
    from latentcomm.errors import LatentcommError

    width, height = even_size(*picture.size)
    rate = link_bps or 256_000
    tried = []
    for name in candidates:
        try:
            codec = VideoCodec(name, rate, fps, key_interval=10_000, threads=1)
        except LatentcommError as exc:
            tried.append(f"{name}: {exc}")
            continue
        cpu = []
        for i in range(AUTO_TRIAL_FRAMES):
            moved = ImageChops.offset(picture, 3 * i, i)
            t0 = time.process_time()
            codec.encode_picture(moved, captured=i / fps)
            if i:
                cpu.append(time.process_time() - t0)
        codec.close()
        per_frame = sorted(cpu)[len(cpu) // 2]
        share = per_frame * fps
        preset = auto_preset(width, height, fps, name)
        what = f"{name}{f' preset {preset}' if preset else ''}: {1000 * per_frame:.1f} ms a {width}x{height} frame"
        if share <= AUTO_CPU_SHARE or name == candidates[-1]:
            why = f"{what}, {share:.2f} of a core at {fps:g} fps"
            if tried:
                why += f" ({'; '.join(tried)})"
            return CodecChoice(name, preset, why)
        tried.append(f"{what} would take {share:.2f} of a core at {fps:g} fps, over {AUTO_CPU_SHARE:g}")
    raise LatentcommError(f"--codec auto: no video codec available ({'; '.join(tried)})")
