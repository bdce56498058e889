"""Frame and drop accounting of the detector node, without a node."""
from __future__ import annotations

from types import SimpleNamespace

from clean_ros.ros.frame_accounting import FrameAccounting


def _header(seconds: float, frame_id: str = "lidar"):
    sec = int(seconds)
    return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=int(round((seconds - sec) * 1e9))),
                           frame_id=frame_id)


def test_drops_from_sequence_numbers_and_stamp_gaps():
    accounting = FrameAccounting(expected_rate_hz=10.0, stale_timeout_s=2.0, latency_window=10)
    gid = {"data": [1, 2, 3]}
    for seq, stamp in ((1, 100.0), (2, 100.1), (5, 100.4), (6, 100.5)):      # sequence 3, 4 and two stamps missing
        accounting.arrive(_header(stamp), {"publisher_gid": gid, "publication_sequence_number": seq}, 0)
    assert accounting.frames_received == 4
    assert accounting.sequence_gaps.dropped == 2 and accounting.stamp_gaps.dropped == 2
    assert accounting.dropped == 2
    accounting.arrive(_header(110.0), None, 0)        # a 9.5 s gap > stale_timeout_s: an interruption, not drops
    assert accounting.stamp_gaps.dropped == 2


def test_input_age_frame_id_and_stale_drops():
    accounting = FrameAccounting(10.0, 2.0, 10)
    first = accounting.arrive(_header(100.0), None, now_ns=100_250_000_000)
    assert abs(first.age_s - 0.25) < 1e-6 and first.frame_id_changed and first.previous_frame_id is None
    assert not accounting.too_old(first, 0.5) and accounting.too_old(first, 0.2)
    assert accounting.dropped_stale == 1 and accounting.events.count("stale_frame_dropped") == 1
    moved = accounting.arrive(_header(100.1, "other"), None, now_ns=100_200_000_000)
    assert moved.frame_id_changed and moved.previous_frame_id == "lidar"
    assert accounting.events.count("frame_id_changed") == 1
    back = accounting.arrive(_header(50.0, "other"), None, now_ns=100_300_000_000)
    assert back.stamp_backwards and not back.frame_id_changed
    far = accounting.arrive(_header(5000.0, "other"), None, now_ns=10_000_000_000_000)   # another clock
    assert far.age_s is None and accounting.clock_offset_s is not None


def test_published_frames_enter_statistics_only_when_the_model_ran():
    accounting = FrameAccounting(10.0, 2.0, 10)
    arrival = accounting.arrive(_header(1.0), None, now_ns=1_100_000_000)
    accounting.published({"total": 10.0}, ran=False, arrival=arrival)
    assert accounting.stage_stats.summary() == {} and accounting.frames_published == 1
    accounting.processed()
    accounting.published({"total": 30.0}, ran=True, arrival=arrival)
    assert accounting.stage_stats.summary()["total"].p50 == 30.0
    assert abs(accounting.age_stats.percentiles("input_age").p50 - 100.0) < 1e-3
    accounting.boxes_removed(5, 2)
    accounting.boxes_removed(1, 0)
    assert (accounting.points_outside_crop, accounting.points_outside_crop_total,
            accounting.points_excluded_total) == (1, 6, 2)
    assert accounting.summary_line() == "1 frames received, 2 answered, 1 through the model, 0 dropped"
