"""A sealed broker receiver's replay memory: which counters of which stream it has opened, kept across
restarts at a constant cost per frame, bounded in size, and strict about what it reads back.

Why not one JSON rewritten per frame (the first design): with 4,096 streams that took 5 s a frame on
the MQTT network thread. Here each opened frame appends one line to a journal (``FILE.journal``,
about 60 bytes, flushed before the frame is passed on); the snapshot (``FILE``) is rewritten
atomically only when the journal has grown past a few times the snapshot's size, so the cost of a
frame does not grow with the number of streams.

Windows are stored compactly: the newest counter and a bit per counter of the 4,096 before it, cut to
the bits in use; a stream idle for an hour collapses to its newest counter (every older counter counts
as seen: a frame an hour late is worth nothing to a live receiver).

Streams age out without reopening replay. A sender's stream id begins with the second it was drawn
(:func:`new_stream_id`); a stream idle for ``max_age`` is retired, and the memory keeps only a
horizon: the newest start time among retired streams. A stream it doesn't know whose id starts before
the horizon is refused (a retired stream replayed, or a sender that has run since before it: a
restart gives it a new id). Stream ids without a plausible start time (senders from before this
change) are never retired, so their replay protection holds; they stay until ``max_streams`` forces
the least recently used out, which raises the horizon the same way.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import time
from collections import OrderedDict
from pathlib import Path

from latentcomm.errors import LatentcommError

log = logging.getLogger(__name__)

#: Counters remembered per stream behind the newest (older ones are refused outright).
REPLAY_WINDOW = 4096
STREAM_ID_BYTES = 16
#: A stream's window collapses to its newest counter after this long idle.
COLLAPSE_AFTER_S = 3600.0
#: Streams retire after this long idle (``--replay-max-age``).
DEFAULT_MAX_AGE_S = 30 * 86400.0
#: Streams kept at most; past it the least recently used retire early.
DEFAULT_MAX_STREAMS = 65536
#: Start times before this (2026-01-01) or more than a day ahead are not start times: an old sender's
#: random id.
_EPOCH_MIN = 1_767_225_600
_SNAPSHOT_VERSION = 2


def new_stream_id(now: float | None = None) -> bytes:
    """A sender's stream id: the second it was drawn (u64) and 8 random bytes."""
    return int(time.time() if now is None else now).to_bytes(8, "big") + secrets.token_bytes(8)


def stream_started(stream_id: bytes, now: float) -> int | None:
    """The start time in a stream id, or None for an id without a plausible one."""
    t = int.from_bytes(stream_id[:8], "big")
    return t if _EPOCH_MIN <= t <= now + 86400 else None


class ReplayError(Exception):
    """A counter (or a whole stream) this memory refuses."""


class _Stream:
    __slots__ = ("high", "seen", "used")

    def __init__(self, high: int = -1, seen: int = 0, used: float = 0.0) -> None:
        self.high = high  # the newest counter opened (-1: none yet)
        self.seen = seen  # bit i: counter high - i was opened (bit 0 is high itself)
        self.used = used  # wall time of the last frame

    def check(self, counter: int) -> None:
        if counter > self.high:
            return
        back = self.high - counter
        if back >= REPLAY_WINDOW or self.seen >> back & 1:
            raise ReplayError(f"sealed frame {counter} of this stream was seen before (replayed)")

    def mark(self, counter: int, now: float) -> None:
        if counter > self.high:
            shift = counter - self.high
            self.seen = ((self.seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) if shift < REPLAY_WINDOW else 1
            self.high = counter
        else:
            self.seen |= 1 << (self.high - counter)
        self.used = max(self.used, now)

    def collapse(self) -> None:
        """Every counter up to the newest counts as seen: the window's bits are dropped."""
        self.seen = (1 << min(self.high + 1, REPLAY_WINDOW)) - 1


class ReplayMemory:
    """Per (key id, stream id): the counters opened. ``path`` None keeps it in memory only.

    :meth:`check` before authenticating nothing (it reads no secret), :meth:`record` once a frame
    opened: the journal line is written and flushed before ``record`` returns. ``clock`` (wall time) is
    injectable for tests that run a month in a moment.
    """

    def __init__(
        self,
        path: Path | None = None,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_streams: int = DEFAULT_MAX_STREAMS,
        clock=time.time,
    ) -> None:
        self.path = path
        self.max_age_s, self.max_streams, self.clock = max_age_s, max_streams, clock
        self._streams: OrderedDict[bytes, _Stream] = OrderedDict()  # key id + stream id, least recent first
        self.horizon = 0  # streams unknown here that started before this are refused
        self.retired = 0
        self._journal = None
        self._journal_lines = 0
        self._last_sweep = 0.0
        if path is not None:
            self._load()
            self._snapshot()  # the journal folded in: start from one file

    def __len__(self) -> int:
        return len(self._streams)

    # -- the per-frame path -----------------------------------------------------------------------------

    def check(self, key_id: bytes, stream_id: bytes, counter: int) -> None:
        """ReplayError for a counter seen before, or a stream that is too old to be new."""
        state = self._streams.get(key_id + stream_id)
        if state is not None:
            state.check(counter)
            return
        started = stream_started(stream_id, self.clock())
        if started is not None and started < self.horizon:
            raise ReplayError(
                "a sealed stream that started before streams this receiver has retired (a retired stream "
                "replayed, or a sender running since then: restart it)"
            )

    def record(self, key_id: bytes, stream_id: bytes, counter: int) -> None:
        """Remember an opened counter (after :meth:`check` and authentication)."""
        now = self.clock()
        k = key_id + stream_id
        state = self._streams.get(k)
        if state is None:
            state = self._streams[k] = _Stream()
        state.mark(counter, now)
        self._streams.move_to_end(k)
        if self._journal is not None:
            try:
                self._journal.write(f"{k.hex()} {counter} {now:.0f}\n")
                self._journal.flush()
            except OSError as exc:
                log.error("could not write the replay memory's journal: %s", exc.strerror or exc)
            self._journal_lines += 1
        if len(self._streams) > self.max_streams or now - self._last_sweep > 60:
            self.sweep(now)
        if self._journal is not None and self._journal_lines > 1024 + 4 * len(self._streams):
            self._snapshot()

    def sweep(self, now: float | None = None) -> int:
        """Collapse idle windows, retire old streams (and the least recent past ``max_streams``); how
        many retired."""
        now = self.clock() if now is None else now
        self._last_sweep = now
        before = self.retired
        for k, state in list(self._streams.items()):  # least recently used first
            idle = now - state.used
            over = len(self._streams) > self.max_streams
            if idle < COLLAPSE_AFTER_S and not over:
                break  # the rest were used more recently still
            started = stream_started(k[8:], now)
            if over or (idle > self.max_age_s and started is not None):
                if started is None:
                    started = int(now)  # no start time to compare: every unknown stream older than now
                self.horizon = max(self.horizon, started + 1)
                del self._streams[k]
                self.retired += 1
            elif idle >= COLLAPSE_AFTER_S:
                state.collapse()
        if self.retired > before:
            log.info("replay memory: %d stream(s) retired (idle past %.0f days, or past %d streams)",
                     self.retired - before, self.max_age_s / 86400, self.max_streams)  # fmt: skip
        return self.retired - before

    # -- on disk ----------------------------------------------------------------------------------------

    @property
    def journal_path(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.name + ".journal")

    def _malformed(self, where: Path, what: str) -> LatentcommError:
        return LatentcommError(f"replay memory {where} is malformed ({what}); move it away to start anew")

    def _load(self) -> None:
        assert self.path is not None
        try:
            saved = json.loads(self.path.read_text())
        except FileNotFoundError:
            saved = None
        except (OSError, ValueError) as exc:
            raise LatentcommError(
                f"replay memory {self.path} is unreadable ({exc}); move it away to start anew"
            ) from None
        if saved is not None:
            self._read_snapshot(saved)
        try:
            lines = self.journal_path.read_text().split("\n")
        except FileNotFoundError:
            lines = []
        except (OSError, ValueError) as exc:
            raise LatentcommError(
                f"replay memory {self.journal_path} is unreadable ({exc}); move it away to start anew"
            ) from None
        for i, line in enumerate(lines):
            if not line:
                continue
            try:
                k_hex, counter_text, used_text = line.split(" ")
                k = bytes.fromhex(k_hex)
                counter, used = int(counter_text), float(used_text)
                if len(k) != 8 + STREAM_ID_BYTES or not 0 <= counter < 2**64 or not 0 <= used < 2**40:
                    raise ValueError
            except ValueError:
                if i == len(lines) - 1:  # a line torn by a crash mid-write: it was never acknowledged
                    log.warning("replay memory: a torn last journal line ignored")
                    continue
                raise self._malformed(self.journal_path, f"line {i + 1}") from None
            state = self._streams.setdefault(k, _Stream())
            state.mark(counter, used)
            self._streams.move_to_end(k)
        if self._streams:
            log.info("replay memory of %d sealed stream(s) restored from %s", len(self._streams), self.path)

    def _read_snapshot(self, saved) -> None:
        assert self.path is not None
        if isinstance(saved, dict) and saved.get("version") == 1:
            self._read_v1(saved)
            return
        if not isinstance(saved, dict) or saved.get("version") != _SNAPSHOT_VERSION:
            raise self._malformed(self.path, f"not a version-{_SNAPSHOT_VERSION} replay memory")
        horizon, streams = saved.get("horizon"), saved.get("streams")
        if type(horizon) is not int or horizon < 0 or not isinstance(streams, list):
            raise self._malformed(self.path, "no horizon or stream list")
        self.horizon = horizon
        for i, entry in enumerate(streams):
            try:
                k = bytes.fromhex(entry["id"])
                high, used = entry["high"], entry["used"]
                seen = int.from_bytes(base64.b64decode(entry["seen"], validate=True), "big")
                if (len(k) != 8 + STREAM_ID_BYTES or type(high) is not int or not -1 <= high < 2**64
                        or type(used) not in (int, float) or not 0 <= used < 2**40
                        or seen >> REPLAY_WINDOW):  # fmt: skip
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                raise self._malformed(self.path, f"stream entry {i}") from None
            self._streams[k] = _Stream(high, seen, float(used))

    def _read_v1(self, saved: dict) -> None:
        """The first design's file (one JSON rewritten per frame), read as strictly as the new one."""
        assert self.path is not None
        streams = saved.get("streams")
        if not isinstance(streams, list):
            raise self._malformed(self.path, "no stream list")
        now = self.clock()
        for i, entry in enumerate(streams):
            try:
                k = bytes.fromhex(entry["key_id"]) + bytes.fromhex(entry["stream_id"])
                high = entry["high"]
                bits = int.from_bytes(base64.b64decode(entry["seen"], validate=True), "big")
                if len(k) != 8 + STREAM_ID_BYTES or type(high) is not int or not 0 <= high < 2**64 \
                        or bits >> REPLAY_WINDOW:  # fmt: skip
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                raise self._malformed(self.path, f"stream entry {i}") from None
            self._streams[k] = _Stream(high, bits, now)

    def _snapshot(self) -> None:
        """Rewrite the snapshot atomically, then empty the journal it folds in."""
        assert self.path is not None
        self.sweep()
        streams = [
            {"id": k.hex(), "high": s.high, "used": round(s.used),
             "seen": base64.b64encode(s.seen.to_bytes((s.seen.bit_length() + 7) // 8, "big")).decode()}
            for k, s in self._streams.items()
        ]  # fmt: skip
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"version": _SNAPSHOT_VERSION, "horizon": self.horizon, "streams": streams}))
            os.replace(tmp, self.path)
            if self._journal is not None:
                self._journal.close()
            self._journal = self.journal_path.open("w")
            self._journal_lines = 0
        except OSError as exc:
            log.error("could not save the replay memory to %s: %s", self.path, exc.strerror or exc)
            if self._journal is None:
                try:
                    self._journal = self.journal_path.open("a")
                except OSError:
                    pass

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
