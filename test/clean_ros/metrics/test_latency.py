"""Rolling latency statistics, rates, drop counting and the node's health assessment (pure, no ROS)."""
import numpy as np
import pytest

from clean_ros.metrics.latency import (EventLog, RateMeter, RollingStageStats, SequenceGapCounter, StampGapCounter,
                                       format_latency, latency_summary, percentile_items)
from clean_ros.ros.node_diagnostics import ERROR, FASTDDS_HINT, OK, WARN, HealthSnapshot, assess


def test_percentiles_match_numpy_over_the_window_only():
    stats = RollingStageStats(window=100)
    values = np.arange(1, 251, dtype=float)          # 1..250; the window keeps 151..250
    for v in values:
        stats.add({"total": v, "decode": v / 10})
    p = stats.percentiles("total")
    kept = values[-100:]
    assert p.count == 100
    assert p.p50 == pytest.approx(np.percentile(kept, 50))
    assert p.p95 == pytest.approx(np.percentile(kept, 95))
    assert p.p99 == pytest.approx(np.percentile(kept, 99))
    assert stats.percentiles("decode").p50 == pytest.approx(np.percentile(kept, 50) / 10)
    assert stats.stages == ("total", "decode")
    assert stats.percentiles("inference") is None
    items = percentile_items(stats.summary())
    assert items["total_ms_p50"] == f"{np.percentile(kept, 50):.3f}"
    assert set(items) == {f"{s}_ms_p{q}" for s in ("total", "decode") for q in (50, 95, 99)}


def test_percentiles_ignore_non_finite_values_and_memory_is_bounded():
    stats = RollingStageStats(window=10)
    for i in range(10_000):
        stats.add({"total": float(i), "bad": float("nan")})
    assert stats.count("total") == 10 and stats.count("bad") == 0
    assert stats.percentiles("total").p50 == pytest.approx(9994.5)
    with pytest.raises(ValueError):
        RollingStageStats(window=0)


def test_rate_meter_steady_stream_young_stream_and_silence():
    meter = RateMeter(window_s=5.0)
    for i in range(101):                              # 10 Hz for 10 s
        meter.add(i * 0.1)
    assert meter.rate(10.0) == pytest.approx(10.0, rel=0.03)
    young = RateMeter(window_s=5.0)
    for i in range(6):                                # 10 Hz for 0.5 s
        young.add(i * 0.1)
    assert young.rate(0.5) == pytest.approx(10.0, rel=0.01)
    assert meter.rate(30.0) == 0.0                    # stream stopped: everything left the window
    single = RateMeter()
    single.add(1.0)
    assert single.rate(1.0) == 0.0


def test_rate_meter_flood_is_bounded_and_clock_reset_restarts():
    meter = RateMeter(window_s=5.0, max_events=50)
    for i in range(1000):                             # 1 kHz flood
        meter.add(i * 0.001)
    assert len(meter._times) == 50
    assert meter.rate(0.999) == pytest.approx(1000.0, rel=0.05)
    meter.add(0.0)                                    # clock went back (sim time restarted)
    assert meter.rate(0.0) == 0.0 and meter.total == 1001


def test_sequence_gaps_are_exact_per_publisher_and_bounded():
    gaps = SequenceGapCounter(max_publishers=2)
    assert [gaps.add("a", s) for s in (1, 2, 5, 6, 10)] == [0, 0, 2, 0, 3]
    assert gaps.add("b", 100) == 0 and gaps.add("b", 102) == 1
    assert gaps.dropped == 6
    assert gaps.add("a", 3) == 0 and gaps.resets == 1  # restarted publisher: not a drop
    assert gaps.add("a", None) == 0
    gaps.add("c", 1)                                   # a third publisher evicts the least recently seen ("b")
    assert "b" not in gaps._last and len(gaps._last) == 2


def test_stamp_gaps_count_missing_frames_backward_jumps_and_repeats():
    gaps = StampGapCounter(expected_rate_hz=10.0)
    stamps = [0.0, 0.1, 0.2, 0.5, 0.6, 0.61, 1.0]      # 0.2 -> 0.5 misses 2; 0.61 -> 1.0 misses 3 (round(3.9) - 1)
    missed = [gaps.add(s) for s in stamps]
    assert missed == [0, 0, 0, 2, 0, 0, 3]
    assert gaps.dropped == 5
    assert gaps.add(0.3) == 0 and gaps.backward_jumps == 1
    assert gaps.add(0.3) == 0 and gaps.repeated == 1
    assert gaps.add(0.4) == 0                          # counting restarted from the backward stamp
    assert gaps.add(5000.0) == 0 and gaps.large_gaps == 1  # a new recording, not 50k drops
    unknown = StampGapCounter(expected_rate_hz=0.0)
    unknown.add(0.0)
    assert unknown.add(10.0) == 0 and unknown.dropped == 0


def _snapshot(**changes) -> HealthSnapshot:
    stats = RollingStageStats()
    for v in (10.0, 20.0, 30.0):
        stats.add({"decode": v / 10, "total": v})
    values = dict(now=100.0, started=0.0, input_topic="/points", expected_rate_hz=10.0, received_rate_hz=10.0,
                  processed_rate_hz=9.5, frames_received=1000, frames_processed=990, frames_published=1000,
                  dropped_sequence=3, dropped_stamp_gaps=2, dropped_stale=0, last_input_time=99.95,
                  stale_timeout_s=2.0, rate_window_s=5.0, events=EventLog(), problem_hold_s=5.0,
                  stage_percentiles=stats.summary(), input_age=None, clock_offset_s=None,
                  backend_requested="auto", backend_name="torch", device="cpu", bundle="models/default",
                  num_threads=2)
    values.update(changes)
    return HealthSnapshot(**values)


def test_assess_healthy_stream_reports_ok_with_percentiles_and_counts():
    level, message, items = assess(_snapshot())
    assert level == OK and message.startswith("OK: 10.0 Hz in")
    assert "total p50 20.0 ms" in message
    assert items["total_ms_p50"] == "20.000" and items["decode_ms_p95"] == f"{np.percentile([1, 2, 3], 95):.3f}"
    assert items["dropped_frames"] == "3" and items["dropped_sequence_gaps"] == "3"
    assert items["stale_input"] == "false" and items["backend"] == "torch" and items["contract"] == "ok"


def test_assess_low_rate_points_to_the_fastdds_profile():
    level, message, items = assess(_snapshot(received_rate_hz=2.0))
    assert level == WARN and "input rate 2.0 Hz below the expected 10 Hz" in message and FASTDDS_HINT in message
    assert "node cannot keep up" not in message and items["utilization"] == "0.04"   # 2 Hz x 20 ms
    # a node that spends its whole time processing is the bottleneck: say so instead of blaming DDS
    slow = RollingStageStats()
    slow.add({"total": 480.0})
    level, message, items = assess(_snapshot(received_rate_hz=2.0, stage_percentiles=slow.summary()))
    assert level == WARN and "node cannot keep up: processing takes 480 ms" in message
    assert FASTDDS_HINT not in message and items["utilization"] == "0.96"
    # not judged during the first rate window after start-up
    level, _, _ = assess(_snapshot(received_rate_hz=2.0, now=3.0, started=0.0, last_input_time=2.9))
    assert level == OK


def test_assess_stale_input_problems_fallback_and_contract():
    level, message, items = assess(_snapshot(last_input_time=90.0))
    assert level == WARN and "stale input: no input for 10.0 s on /points" in message
    assert items["stale_input"] == "true"
    level, message, _ = assess(_snapshot(last_input_time=None, frames_received=0))
    assert "no input received yet" in message

    events = EventLog()
    events.record("voxel_overflow", 98.0, "12 of 40012 voxels and 30 points dropped")
    events.record("empty_input", 50.0)                  # too old: not reported any more
    level, message, items = assess(_snapshot(events=events))
    assert level == WARN and "voxel overflow" in message and "12 of 40012 voxels" in message
    assert "empty input" not in message and items["empty_input_count"] == "1"
    events.record("backend_error", 99.0, "RuntimeError('boom')")
    level, message, _ = assess(_snapshot(events=events))
    assert level == ERROR and "boom" in message

    level, message, _ = assess(_snapshot(backend_requested="tensorrt", backend_name="onnxruntime"))
    assert level == WARN and "backend fallback: 'tensorrt' requested, 'onnxruntime' running" in message
    level, message, _ = assess(_snapshot(backend_requested="auto", backend_name="onnxruntime",
                                         backend_reason="auto: gpu; tensorrt failed: engine build error"))
    assert level == WARN and "backend fallback: 'onnxruntime' running" in message and "engine build" in message
    level, message, items = assess(_snapshot(contract_findings=[("value_scale", "looks 0-255 scaled")]))
    assert level == WARN and "input contract (value_scale)" in message and items["contract"] == "value_scale"
    level, message, _ = assess(_snapshot(clock_offset_s=-3.2e5))
    assert level == WARN and "--clock" in message


def test_latency_summary_of_a_run_per_stage_over_the_frames_that_have_it():
    frames = [{"total": float(v), "inference": float(v) / 2} for v in range(1, 101)] + [{"total": 1000.0}]
    summary = latency_summary(frames)
    totals = np.array([*range(1, 101), 1000.0])
    assert list(summary) == ["total", "inference"]
    assert summary["total"]["n"] == 101 and summary["inference"]["n"] == 100
    assert summary["total"]["mean"] == pytest.approx(totals.mean())
    for p in (50, 90, 95, 99):
        assert summary["total"][f"p{p}"] == pytest.approx(np.percentile(totals, p))
    assert summary["total"]["max"] == 1000.0 and summary["inference"]["max"] == 50.0
    table = format_latency(summary).splitlines()
    assert table[0].split() == ["stage", "(ms)", "n", "p50", "p90", "p95", "p99", "max"]
    assert table[1].split()[:2] == ["total", "101"] and table[1].split()[-1] == "1000.0"
    assert latency_summary([]) == {}
