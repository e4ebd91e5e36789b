"""How fast the link is, estimated from acknowledgements alone: ``--bandwidth auto[:MAX]``.

A delay-based estimator in the spirit of WebRTC's congestion control (GCC), reduced to what a
sender sees here: for every frame, when its last byte was handed to the socket and when its
acknowledgement came back. While the estimate is below what the link carries, frames cross it as
fast as they are written and the time from write to acknowledgement stays at its floor (the link's
propagation plus the receiver's decode). Once the sender writes faster than the link, the excess
waits in a queue somewhere on the path (a modem's buffer, the kernel's, ``latentcomm.transports.throttle``)
and that time grows. So:

- **queueing delay** = write-to-acknowledgement time minus its minimum over the last 10 s
  (the floor; re-learnt as the path changes);
- **overuse** (delay above 120 ms and still growing, or above 400 ms at all): the estimate drops to
  85% of the rate acknowledgements actually came back at over the last second (what the link
  delivered), at most once per 400 ms, so one queue isn't counted twice;
- **underuse / normal** (delay under 60 ms): the estimate grows by 80% per second, multiplicatively
  (a link four times faster is found in under 3 s), but never beyond twice what was delivered in the
  last second, so a stream that doesn't fill its budget doesn't inflate it, nor above ``MAX``;
- in between, it holds.

The sender encodes at the estimate (less its frames' own overhead) and paces its writes at 1.5x
the estimate, so the encoder's rate, not the pacer, is what meets the link.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from latentcomm.stream import parse_rate


@dataclass(frozen=True)
class Bandwidth:
    """``--bandwidth``, parsed once (by argparse, :func:`bandwidth_arg`): a fixed rate in bits/s, or
    ``auto`` estimated from the acknowledgements up to ``auto_max_bps``. The learned codec takes a
    fixed rate as its byte budget per frame; a video codec takes either as its encoder's target."""

    fixed_bps: float | None = None
    auto_max_bps: float | None = None

    @property
    def auto(self) -> bool:
        return self.auto_max_bps is not None


def parse_bandwidth(text: str) -> tuple[float | None, float | None]:
    """'256k' -> (256000, None): a fixed rate; 'auto' / 'auto:1M' -> (None, max): estimated."""
    t = text.strip().lower()
    if t == "auto":
        return None, DEFAULT_AUTO_MAX
    if t.startswith("auto:"):
        return None, parse_rate(t[5:])
    return parse_rate(text), None


#: The ceiling of ``--bandwidth auto`` without ``:MAX``.
DEFAULT_AUTO_MAX = 2_000_000.0
#: Estimator samples kept (an hour at 10 fps).
HISTORY_SAMPLES = 36_000
#: Where ``auto`` starts: low enough for a thin link's first second, found upwards from there.
START_BPS = 128_000.0
MIN_BPS = 16_000.0
#: How fast the estimate grows while the delay stays at its floor (a factor per second).
GROWTH_PER_S = 1.8


@dataclass
class RateSample:
    time: float
    estimate_bps: float
    delivered_bps: float
    queue_delay_s: float


class DelayBasedEstimator:
    """The estimate of what the link carries, in bits/s; fed one call per acknowledged frame."""

    def __init__(self, max_bps: float = DEFAULT_AUTO_MAX, start_bps: float | None = None) -> None:
        self.max_bps = max_bps
        self.estimate = min(max_bps, start_bps or START_BPS)
        self._floor: deque[tuple[float, float]] = deque()  # (time, write-to-ack seconds)
        self._acked: deque[tuple[float, int]] = deque()  # (time, bytes)
        self._last_delay = 0.0
        self._last_change = time.monotonic()
        self._last_drop = 0.0
        #: The newest samples, one per acknowledged frame (bounded: a sender runs for days).
        self.history: deque[RateSample] = deque(maxlen=HISTORY_SAMPLES)

    def delivered_bps(self, now: float) -> float:
        while self._acked and self._acked[0][0] < now - 1.0:
            self._acked.popleft()
        return 8 * sum(n for _, n in self._acked) / 1.0

    def on_ack(self, written: float, acked: float, nbytes: int) -> float:
        """One frame: when its last byte was written, when its acknowledgement came, its size.
        Returns the new estimate."""
        rtt = max(0.0, acked - written)
        self._floor.append((acked, rtt))
        while self._floor and self._floor[0][0] < acked - 10.0:
            self._floor.popleft()
        floor = min(v for _, v in self._floor)
        delay = rtt - floor
        self._acked.append((acked, nbytes))
        delivered = self.delivered_bps(acked)
        dt = max(0.0, acked - self._last_change)
        self._last_change = acked
        growing = delay > self._last_delay
        self._last_delay = delay
        if (delay > 0.12 and growing) or delay > 0.4:
            if acked - self._last_drop > 0.4 and delivered > 0:
                self.estimate = max(MIN_BPS, min(self.estimate, 0.85 * delivered))
                self._last_drop = acked
        elif delay < 0.06:
            grown = self.estimate * GROWTH_PER_S ** min(dt, 1.0)
            cap = max(2 * delivered, START_BPS)
            self.estimate = max(self.estimate, min(grown, cap, self.max_bps))
        self.history.append(RateSample(acked, self.estimate, delivered, delay))
        return self.estimate
