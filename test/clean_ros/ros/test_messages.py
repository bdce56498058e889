"""Detections <-> ROS messages: header propagation, box/yaw encoding, markers, stage-timing message; everything is
checked after a real rclpy serialise/deserialise round trip."""
import math

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from vision_msgs.msg import Detection3DArray  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from clean_ros.ros.messages import (  # noqa: E402
    STAGE_TIMING_NAME, from_detection3d_array, parse_stage_timing, quaternion_to_yaw, stage_timing_message,
    to_detection3d_array, to_marker_array, yaw_to_quaternion)
from clean_ros.types import Detections  # noqa: E402

CLASSES = ("Car", "Pedestrian", "Cyclist")


def _header(sec=1700000000, nanosec=123456789, frame="velodyne_top") -> Header:
    header = Header(frame_id=frame)
    header.stamp.sec, header.stamp.nanosec = sec, nanosec
    return header


def _detections(n: int, seed: int = 0) -> Detections:
    rng = np.random.default_rng(seed)
    boxes = np.column_stack([
        rng.uniform(0, 70, n), rng.uniform(-40, 40, n), rng.uniform(-2, 0, n),
        rng.uniform(0.5, 5, n), rng.uniform(0.5, 2.5, n), rng.uniform(1, 2, n),
        rng.uniform(-math.pi, math.pi, n)]).astype(np.float32)
    return Detections(boxes, rng.uniform(0.1, 1, n).astype(np.float32), rng.integers(0, 3, n), CLASSES)


def _round_trip(msg):
    return deserialize_message(serialize_message(msg), type(msg))


def test_detection3d_array_fields_and_header():
    dets = _detections(7)
    msg = _round_trip(to_detection3d_array(dets, _header()))
    assert msg.header.stamp.sec == 1700000000 and msg.header.stamp.nanosec == 123456789
    assert msg.header.frame_id == "velodyne_top" and len(msg.detections) == 7
    for i, det in enumerate(msg.detections):
        x, y, z, length, width, height, yaw = dets.boxes[i].astype(np.float64)
        assert det.header.frame_id == "velodyne_top" and det.header.stamp.sec == 1700000000
        assert det.header.stamp.nanosec == 123456789 and det.id == str(i)
        centre, size = det.bbox.center, det.bbox.size
        assert (centre.position.x, centre.position.y, centre.position.z) == (x, y, z)
        assert (size.x, size.y, size.z) == (length, width, height)
        assert (centre.orientation.x, centre.orientation.y) == (0.0, 0.0)
        assert centre.orientation.z == pytest.approx(math.sin(yaw / 2), abs=1e-12)
        assert centre.orientation.w == pytest.approx(math.cos(yaw / 2), abs=1e-12)
        assert len(det.results) == 1
        hypothesis = det.results[0]
        assert hypothesis.hypothesis.class_id == CLASSES[dets.labels[i]]
        assert hypothesis.hypothesis.score == pytest.approx(float(dets.scores[i]), abs=1e-7)
        assert hypothesis.pose.pose == centre


def test_round_trip_boxes_scores_names():
    dets = _detections(50, seed=3)
    boxes, scores, names = from_detection3d_array(_round_trip(to_detection3d_array(dets, _header())))
    np.testing.assert_array_equal(boxes[:, :6], dets.boxes[:, :6])
    np.testing.assert_allclose(boxes[:, 6], dets.boxes[:, 6], atol=1e-6)
    np.testing.assert_array_equal(scores, dets.scores)
    assert names == [CLASSES[label] for label in dets.labels]
    assert boxes.dtype == np.float32 and scores.dtype == np.float32


def test_yaw_quaternion_yaw_round_trip_covers_minus_pi_to_pi():
    yaws = np.concatenate([np.linspace(-math.pi, math.pi, 2001, endpoint=False),
                           [-math.pi, -math.pi / 2, 0.0, math.pi / 2, math.pi - 1e-9]])
    z, w = yaw_to_quaternion(yaws)
    np.testing.assert_allclose(z * z + w * w, 1.0, atol=1e-12)
    back = quaternion_to_yaw(np.zeros_like(z), np.zeros_like(z), z, w)
    assert back.min() >= -math.pi and back.max() < math.pi
    np.testing.assert_allclose(back, yaws, atol=1e-9)
    # +pi is the same heading as -pi and comes back in the house range
    assert quaternion_to_yaw(0.0, 0.0, *yaw_to_quaternion(math.pi)) == pytest.approx(-math.pi)


def test_empty_detections_still_carry_the_header():
    msg = _round_trip(to_detection3d_array(Detections.empty(CLASSES), _header(sec=5, nanosec=7)))
    assert len(msg.detections) == 0 and msg.header.stamp.sec == 5 and msg.header.stamp.nanosec == 7
    assert msg.header.frame_id == "velodyne_top"
    boxes, scores, names = from_detection3d_array(msg)
    assert boxes.shape == (0, 7) and scores.shape == (0,) and names == []
    markers = _round_trip(to_marker_array(Detections.empty(CLASSES), _header()))
    assert len(markers.markers) == 1 and markers.markers[0].action == Marker.DELETEALL


def test_marker_array_deleteall_first_then_cube_and_label_per_detection():
    dets = _detections(12, seed=5)
    msg = _round_trip(to_marker_array(dets, _header(), lifetime_s=0.2, namespace="det"))
    markers = msg.markers
    assert len(markers) == 1 + 2 * 12
    assert markers[0].action == Marker.DELETEALL
    assert all(m.header.frame_id == "velodyne_top" and m.header.stamp.nanosec == 123456789 for m in markers)
    cubes, texts = markers[1::2], markers[2::2]
    assert all(m.type == Marker.CUBE and m.action == Marker.ADD and m.ns == "det" for m in cubes)
    assert all(m.type == Marker.TEXT_VIEW_FACING for m in texts)
    assert len({(m.ns, m.id) for m in markers[1:]}) == 24  # unique ids
    for i, (cube, text) in enumerate(zip(cubes, texts)):
        x, y, z, length, width, height, yaw = dets.boxes[i].astype(np.float64)
        assert (cube.pose.position.x, cube.pose.position.y, cube.pose.position.z) == (x, y, z)
        assert (cube.scale.x, cube.scale.y, cube.scale.z) == (length, width, height)
        assert quaternion_to_yaw(0, 0, cube.pose.orientation.z, cube.pose.orientation.w) == pytest.approx(yaw,
                                                                                                         abs=1e-6)
        assert text.text == f"{CLASSES[dets.labels[i]]} {dets.scores[i]:.2f}"
        assert text.pose.position.z > z + height / 2
        assert cube.lifetime.sec == 0 and cube.lifetime.nanosec == 200_000_000
        assert 0 < cube.color.a < 1 and text.color.a == 1.0
    # same class -> same colour, different class -> different colour
    colour = {}
    for cube, label in zip(cubes, dets.labels):
        colour.setdefault(int(label), set()).add((cube.color.r, cube.color.g, cube.color.b))
    assert all(len(c) == 1 for c in colour.values()) and len(set.union(*colour.values())) == len(colour)


def test_stage_timing_message_round_trips():
    stages = {"decode": 0.2134, "preprocess": 1.5, "inference": 12.25, "postprocess": 0.8, "publish": 0.31,
              "total": 15.0734}
    msg = _round_trip(stage_timing_message(stages, _header(), hardware_id="cpu", extra={"num_points": 120000}))
    assert isinstance(msg, DiagnosticArray)
    assert msg.header.stamp.sec == 1700000000 and msg.header.frame_id == "velodyne_top"
    status = msg.status[0]
    assert status.name == STAGE_TIMING_NAME and status.level == DiagnosticStatus.OK and status.hardware_id == "cpu"
    assert status.message == "total 15.07 ms"
    parsed = parse_stage_timing(msg)
    assert list(parsed) == list(stages)  # order kept
    for stage, ms in stages.items():
        assert parsed[stage] == pytest.approx(ms, abs=1e-4)
    assert {kv.key: kv.value for kv in status.values}["num_points"] == "120000"
    with pytest.raises(ValueError, match="no 'clean_ros: stage latency' status"):
        parse_stage_timing(DiagnosticArray())


def test_500_detections_build_in_reasonable_time():
    import time

    dets = _detections(500, seed=9)
    start = time.perf_counter()
    msg = to_detection3d_array(dets, _header())
    elapsed = time.perf_counter() - start
    assert len(msg.detections) == 500
    # generous bound for a loaded 2-core machine; bench/bench_decode.py prints the real figure
    assert elapsed < 1.0
    assert isinstance(_round_trip(msg), Detection3DArray)
    assert len(_round_trip(to_marker_array(dets, _header())).markers) == 1001
    assert isinstance(to_marker_array(dets, _header()), MarkerArray)
