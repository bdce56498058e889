"""Rolling per-stage latency statistics, input rates and dropped-frame accounting for the detector node, and the
per-stage summary of a whole run (latency_summary, for replay reports).

Pure Python + numpy, no ROS: the node feeds it times (seconds, from whichever clock it trusts) and reads snapshots.
Every container is bounded (deques with maxlen, a capped publisher table), so a node running for weeks, or flooded
with frames, keeps constant memory.

Drops are counted two ways, both cheap per frame:
- ``SequenceGapCounter``: the DDS publication sequence number of each publisher (rclpy's MessageInfo) increases by
  one per published message, so a jump of k means k - 1 messages never reached our callback (lost in DDS or
  overwritten in the depth-1 queue while we were busy). Exact where the middleware provides the numbers.
- ``StampGapCounter``: header stamps more than 1.5 expected periods apart mean frames were missing upstream or in
  transit (the only evidence when sequence numbers are unavailable, e.g. a bag replay through another publisher).
  Stamps going backwards (a looping bag, a restarted driver) are counted separately and restart the count.
"""
from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Mapping

import numpy as np

PERCENTILES = (50.0, 95.0, 99.0)


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p95: float
    p99: float
    count: int

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_p50": self.p50, f"{prefix}_p95": self.p95, f"{prefix}_p99": self.p99}


class RollingStageStats:
    """The last ``window`` values of each named stage (milliseconds), with percentiles on demand.

    ``add`` is O(1) (a deque append); percentiles cost one numpy call per stage and are meant for the 1 Hz
    diagnostics, not for every frame. Stages appear in the order they were first added.
    """

    def __init__(self, window: int = 300):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = int(window)
        self._values: dict[str, deque] = {}

    def add(self, stage_ms: Mapping[str, float]) -> None:
        for stage, value in stage_ms.items():
            value = float(value)
            if not math.isfinite(value):
                continue
            values = self._values.get(stage)
            if values is None:
                values = self._values[stage] = deque(maxlen=self.window)
            values.append(value)

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self._values)

    def count(self, stage: str) -> int:
        return len(self._values.get(stage, ()))

    def percentiles(self, stage: str) -> Percentiles | None:
        values = self._values.get(stage)
        if not values:
            return None
        p50, p95, p99 = np.percentile(np.fromiter(values, np.float64, len(values)), PERCENTILES)
        return Percentiles(float(p50), float(p95), float(p99), len(values))

    def summary(self) -> dict[str, Percentiles]:
        out = {}
        for stage in self._values:
            p = self.percentiles(stage)
            if p is not None:
                out[stage] = p
        return out

    def clear(self) -> None:
        self._values.clear()


class RateMeter:
    """Events per second over the last ``window_s`` seconds (event times from a monotonic-enough clock).

    Holds at most ``max_events`` times, so a flood cannot grow it (the rate is then taken over the span the kept
    events cover). A stream younger than the window is rated over its own age, so a fresh stream is not
    under-reported; a stream that stops decays to 0 as its events leave the window.
    """

    def __init__(self, window_s: float = 5.0, max_events: int = 1000):
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self._times: deque = deque(maxlen=max(int(max_events), 2))
        self._start: float | None = None
        self.total = 0

    def add(self, t: float) -> None:
        t = float(t)
        if self._times and t < self._times[-1]:  # the clock went back (sim time restarted): start over
            self.clear()
        if self._start is None:
            self._start = t
        self._times.append(t)
        self.total += 1

    def rate(self, now: float) -> float:
        times = self._times
        while times and times[0] <= now - self.window_s:
            times.popleft()
        n = len(times)
        if n == 0 or self._start is None:
            return 0.0
        if n == times.maxlen:                          # saturated: rate over the kept events
            span = now - times[0]
            return (n - 1) / span if span > 0 else 0.0
        if now - self._start >= self.window_s:         # a full window of history
            return n / self.window_s
        span = now - self._start                       # young stream: its first event opens the window
        return (n - 1) / span if n >= 2 and span > 0 else 0.0

    def last(self) -> float | None:
        return self._times[-1] if self._times else None

    def clear(self) -> None:
        self._times.clear()
        self._start = None


class SequenceGapCounter:
    """Messages missing between consecutive publication sequence numbers, per publisher.

    Publishers are identified by any hashable key (the publisher GID); the table keeps the ``max_publishers``
    most recently seen, so a long-lived node with restarting drivers stays bounded.
    """

    def __init__(self, max_publishers: int = 16):
        self.max_publishers = int(max_publishers)
        self._last: OrderedDict[Hashable, int] = OrderedDict()
        self.dropped = 0
        self.resets = 0   # sequence went backwards (publisher restarted with the same GID): not a drop

    def add(self, publisher: Hashable, sequence: int | None) -> int:
        """Record one received message; returns how many messages of this publisher were missed just before it."""
        if sequence is None:
            return 0
        sequence = int(sequence)
        last = self._last.get(publisher)
        self._last[publisher] = sequence
        self._last.move_to_end(publisher)
        while len(self._last) > self.max_publishers:
            self._last.popitem(last=False)
        if last is None:
            return 0
        if sequence <= last:
            self.resets += 1
            return 0
        missed = sequence - last - 1
        self.dropped += missed
        return missed


class StampGapCounter:
    """Frames missing according to header stamps and the expected sensor period.

    A gap larger than ``tolerance`` periods counts round(gap / period) - 1 missing frames. Stamps that go
    backwards are counted in ``backward_jumps`` (and the gap count restarts from that stamp); identical stamps are
    counted in ``repeated``. Nothing is counted when the expected rate is 0 (unknown).
    """

    def __init__(self, expected_rate_hz: float, tolerance: float = 1.5, max_gap_s: float = 3600.0):
        self.expected_rate_hz = float(expected_rate_hz)
        self.tolerance = float(tolerance)
        self.max_gap_s = float(max_gap_s)
        self._last: float | None = None
        self.dropped = 0
        self.backward_jumps = 0
        self.repeated = 0
        self.large_gaps = 0   # gaps beyond max_gap_s: a new recording, not counted as drops

    def add(self, stamp_s: float) -> int:
        """Record one frame's stamp (seconds); returns how many frames are missing just before it."""
        last, self._last = self._last, float(stamp_s)
        if last is None:
            return 0
        gap = self._last - last
        if gap < 0:
            self.backward_jumps += 1
            return 0
        if gap == 0:
            self.repeated += 1
            return 0
        if self.expected_rate_hz <= 0:
            return 0
        if gap > self.max_gap_s:
            self.large_gaps += 1
            return 0
        period = 1.0 / self.expected_rate_hz
        if gap <= self.tolerance * period:
            return 0
        missed = max(int(round(gap / period)) - 1, 0)
        self.dropped += missed
        return missed

    def reset(self) -> None:
        self._last = None


@dataclass
class EventLog:
    """When each kind of problem last happened and how often (bounded: one entry per kind, a fixed set)."""

    counts: dict[str, int] = field(default_factory=dict)
    last_time: dict[str, float] = field(default_factory=dict)
    last_detail: dict[str, str] = field(default_factory=dict)

    def record(self, kind: str, now: float, detail: str = "") -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.last_time[kind] = float(now)
        if detail:
            self.last_detail[kind] = detail[:500]

    def recent(self, now: float, within_s: float) -> list[str]:
        """Kinds seen in the last within_s seconds, in first-recorded order."""
        return [kind for kind, t in self.last_time.items() if now - t <= within_s]

    def count(self, kind: str) -> int:
        return self.counts.get(kind, 0)


def format_ms(value: float) -> str:
    return f"{value:.3f}"


def percentile_items(summary: Mapping[str, Percentiles], stages: Iterable[str] | None = None) -> dict[str, str]:
    """{"<stage>_ms_p50": "1.234", ...} for the diagnostics key/values."""
    items: dict[str, str] = {}
    for stage in (stages if stages is not None else summary):
        p = summary.get(stage)
        if p is None:
            continue
        items[f"{stage}_ms_p50"] = format_ms(p.p50)
        items[f"{stage}_ms_p95"] = format_ms(p.p95)
        items[f"{stage}_ms_p99"] = format_ms(p.p99)
    return items


# ------------------------------------------------------------------------------------------- offline reports
REPORT_PERCENTILES = (50, 90, 95, 99)


def latency_summary(frame_timings: Iterable[Mapping[str, float]]) -> dict:
    """Per stage over a whole run (e.g. a replay; one {stage: ms} per frame): n, mean, p50/p90/p95/p99, max (ms)
    over the frames that have the stage."""
    stages: dict[str, list[float]] = {}
    for timings in frame_timings:
        for stage, ms in timings.items():
            stages.setdefault(stage, []).append(float(ms))
    out = {}
    for stage, values in stages.items():
        v = np.asarray(values)
        out[stage] = {"n": int(v.size), "mean": float(v.mean()), **{f"p{p}": float(np.percentile(v, p))
                                                                     for p in REPORT_PERCENTILES},
                      "max": float(v.max())}
    return out


def format_latency(summary: dict) -> str:
    """latency_summary as a table, one stage per row."""
    lines = [f"{'stage (ms)':<18} {'n':>5} " + " ".join(f"{'p' + str(p):>8}" for p in REPORT_PERCENTILES)
             + f" {'max':>8}"]
    for stage, s in summary.items():
        lines.append(f"{stage:<18} {s['n']:>5} " + " ".join(f"{s['p' + str(p)]:8.1f}" for p in REPORT_PERCENTILES)
                     + f" {s['max']:8.1f}")
    return "\n".join(lines)
