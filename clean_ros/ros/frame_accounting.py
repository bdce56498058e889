"""Frame and drop accounting of the detector node: what arrived, what was answered, what was missed and how old the
input was. Pure bookkeeping (no rclpy): the node calls it and does the logging.

- Received / processed rates over RATE_WINDOW_S; rolling stage and input-age percentiles over ``latency_window``.
- Drops: exact from DDS publication sequence numbers (rclpy >= Jazzy passes MessageInfo), and from header-stamp gaps
  against ``expected_rate_hz`` (a gap longer than ``stale_timeout_s`` is an interruption of the stream, not drops);
  frames older than ``max_input_age_s`` are dropped on purpose and counted apart.
- Input age = node clock - header stamp, only when the two are comparable (a bag played without --clock is not).
- Points removed by the crop / exclusion boxes (last frame and totals).
Every container is bounded.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from clean_ros.metrics.latency import EventLog, RateMeter, RollingStageStats, SequenceGapCounter, StampGapCounter

RATE_WINDOW_S = 5.0          # received / processed rates are measured over this window
CLOCK_COMPARABLE_S = 3600.0  # |now - stamp| beyond this: the stamp is from another clock (bag without --clock)


def stamp_seconds(stamp) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


@dataclass(frozen=True)
class Arrival:
    """What accounting saw in one frame's header."""

    time: float                     # time.monotonic() at arrival
    age_s: float | None             # node clock - stamp, None when not comparable
    stamp_backwards: bool           # the stamp is earlier than the previous one (drop counting restarts)
    frame_id_changed: bool          # a different frame_id than the previous frame (also True for the first frame)
    previous_frame_id: str | None   # None for the first frame


class FrameAccounting:
    def __init__(self, expected_rate_hz: float, stale_timeout_s: float, latency_window: int):
        self.stage_stats = RollingStageStats(latency_window)
        self.age_stats = RollingStageStats(latency_window)
        self.received_rate = RateMeter(RATE_WINDOW_S)
        self.processed_rate = RateMeter(RATE_WINDOW_S)
        self.sequence_gaps = SequenceGapCounter()
        self.stamp_gaps = StampGapCounter(expected_rate_hz, max_gap_s=stale_timeout_s)
        self.events = EventLog()
        self.expected_rate_hz = float(expected_rate_hz)
        self.stale_timeout_s = float(stale_timeout_s)
        self.frames_received = self.frames_processed = self.frames_published = self.dropped_stale = 0
        self.last_input_time: float | None = None
        self.started = time.monotonic()
        self.clock_offset_s: float | None = None
        self.frame_id: str | None = None
        self.points_outside_crop = self.points_excluded = 0               # last processed frame
        self.points_outside_crop_total = self.points_excluded_total = 0

    # ---------------------------------------------------------------------------------------------- settings
    def set_expected_rate(self, rate_hz: float) -> None:
        self.expected_rate_hz = float(rate_hz)
        self.stamp_gaps.expected_rate_hz = self.expected_rate_hz

    def set_stale_timeout(self, timeout_s: float) -> None:
        self.stale_timeout_s = float(timeout_s)
        self.stamp_gaps.max_gap_s = self.stale_timeout_s

    # ---------------------------------------------------------------------------------------------- per frame
    def arrive(self, header, info, now_ns: int) -> Arrival:
        """Count a frame: rates, sequence and stamp gaps, input age, frame_id. info: rclpy MessageInfo or None;
        now_ns: the node clock (ROS time, sim time with use_sim_time)."""
        arrival = time.monotonic()
        self.frames_received += 1
        self.received_rate.add(arrival)
        self.last_input_time = arrival
        if info is not None:
            try:
                gid = info.get("publisher_gid")
                key = bytes(gid["data"]) if isinstance(gid, dict) and "data" in gid else repr(gid)
                self.sequence_gaps.add(key, info.get("publication_sequence_number"))
            except Exception:  # noqa: BLE001 - middleware without sequence numbers
                pass
        backwards_before = self.stamp_gaps.backward_jumps
        stamp = stamp_seconds(header.stamp)
        self.stamp_gaps.add(stamp)
        backwards = self.stamp_gaps.backward_jumps != backwards_before
        if backwards:
            self.events.record("stamp_backwards", arrival, "a header stamp earlier than the previous one")
        age_s = self._input_age(now_ns, stamp)
        previous = self.frame_id
        changed = header.frame_id != previous
        if changed:
            if previous is not None:
                self.events.record("frame_id_changed", arrival, f"'{previous}' -> '{header.frame_id}'")
            self.frame_id = header.frame_id
        return Arrival(arrival, age_s, backwards, changed, previous)

    def _input_age(self, now_ns: int, stamp_s: float) -> float | None:
        """now - stamp in seconds when comparable, else None (the offset is kept for the diagnostics hint)."""
        age = 1e-9 * now_ns - stamp_s
        if now_ns > 0 and abs(age) < CLOCK_COMPARABLE_S:
            self.clock_offset_s = None
            return age
        self.clock_offset_s = age
        return None

    def too_old(self, arrival: Arrival, max_input_age_s: float) -> bool:
        """Drop (and count) a frame older than max_input_age_s (> 0, comparable clocks only)."""
        if max_input_age_s > 0 and arrival.age_s is not None and arrival.age_s > max_input_age_s:
            self.dropped_stale += 1
            self.events.record("stale_frame_dropped", arrival.time,
                               f"age {arrival.age_s:.3f} s > {max_input_age_s:g} s")
            return True
        return False

    def boxes_removed(self, outside_crop: int, excluded: int) -> None:
        self.points_outside_crop, self.points_excluded = int(outside_crop), int(excluded)
        self.points_outside_crop_total += int(outside_crop)
        self.points_excluded_total += int(excluded)

    def processed(self) -> None:
        """A frame went through the model."""
        self.frames_processed += 1

    def published(self, stage_ms: dict[str, float], ran: bool, arrival: Arrival) -> None:
        """A frame was answered; its stage times enter the statistics only when the model ran."""
        self.frames_published += 1
        self.processed_rate.add(time.monotonic())
        if ran:
            self.stage_stats.add(stage_ms)
            if arrival.age_s is not None:
                self.age_stats.add({"input_age": 1e3 * arrival.age_s})

    # ---------------------------------------------------------------------------------------------- summaries
    @property
    def dropped(self) -> int:
        return max(self.sequence_gaps.dropped, self.stamp_gaps.dropped) + self.dropped_stale

    def summary_line(self) -> str:
        return (f"{self.frames_received} frames received, {self.frames_published} answered, "
                f"{self.frames_processed} through the model, {self.dropped} dropped")

    def rates(self) -> tuple[float, float]:
        now = time.monotonic()
        return self.received_rate.rate(now), self.processed_rate.rate(now)


__all__ = ["Arrival", "CLOCK_COMPARABLE_S", "FrameAccounting", "RATE_WINDOW_S", "stamp_seconds"]
