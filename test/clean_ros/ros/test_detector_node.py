"""The detector node end to end: a real node SUBPROCESS started exactly as the launch file starts it
(`python -m clean_ros.detector_node --ros-args --params-file config/detector.yaml -p ...`), the real Pipeline and
bundle, real rclpy/Fast DDS between the processes. The node is started once for the module and reused.

The model is the embedded default bundle (models/default) when present, otherwise a randomly initialised
pointpillars_tiny bundle written by clean_ros.inference.bundle.save_bundle (the tests check plumbing, headers,
parameters and robustness, not accuracy).
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402
from vision_msgs.msg import Detection3DArray  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from clean_ros.defaults import NODE_NAME  # noqa: E402
from clean_ros.ros.messages import parse_stage_timing  # noqa: E402
from clean_ros.ros.node_diagnostics import STATUS_NAME, parse_diagnostic_values  # noqa: E402
from clean_ros.ros.node_process import (DriverNode, NodeProcess, launch_command, random_domain_id,  # noqa: E402
                                        run_node_once)
from clean_ros.ros.pointcloud_msg import make_pointcloud2  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
DEFAULT_BUNDLE = REPO / "models" / "default"
NS = "/node_test"
SENSOR_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
ANSWER_TIMEOUT_S = 60.0   # a loaded 2-core machine can take seconds per frame

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    if (DEFAULT_BUNDLE / "manifest.json").is_file():
        return DEFAULT_BUNDLE
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    script = ("import sys, torch; torch.manual_seed(0)\n"
              "from clean_ros.yaml_config import load_config\n"
              "from clean_ros.models.detector_config import DetectorConfig\n"
              "from clean_ros.models.detector import build_detector\n"
              "from clean_ros.inference.bundle import save_bundle\n"
              "cfg = load_config(DetectorConfig, 'config/pointpillars_tiny.yaml')\n"
              "save_bundle(sys.argv[1], build_detector(cfg).eval(), cfg, "
              "provenance={'method': 'random init (node tests)'})\n")
    subprocess.run([sys.executable, "-c", script, str(out)], cwd=REPO, check=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return out


class Harness(DriverNode):
    """The test side: one rclpy context/node publishing clouds and collecting the node's outputs."""

    def __init__(self, domain_id: int):
        super().__init__("node_test_harness", domain_id, spin_period_s=0.05)
        self.detections: list[Detection3DArray] = []
        self.timings: list[DiagnosticArray] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.markers: list[MarkerArray] = []
        self.cloud_pub = self.node.create_publisher(PointCloud2, f"{NS}/points", SENSOR_QOS)
        self.node.create_subscription(Detection3DArray, f"{NS}/detections", self.detections.append, 50)
        self.node.create_subscription(DiagnosticArray, f"/{NODE_NAME}/stage_latency", self.timings.append, 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)

    def answer(self, stamp_sec: int, stamp_nsec: int = 0):
        for msg in self.detections:
            if msg.header.stamp.sec == stamp_sec and msg.header.stamp.nanosec == stamp_nsec:
                return msg
        return None

    def send_and_wait(self, msg: PointCloud2, timeout: float = ANSWER_TIMEOUT_S, resend_s: float = 5.0):
        """Publish (best effort: again every resend_s while unanswered) until the answer with msg's stamp."""
        stamp = msg.header.stamp
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.cloud_pub.publish(msg)
            if self.spin_until(lambda: self.answer(stamp.sec, stamp.nanosec) is not None,
                               min(resend_s, max(deadline - time.monotonic(), 0.0))):
                return self.answer(stamp.sec, stamp.nanosec)
        raise AssertionError(f"no Detection3DArray with stamp {stamp.sec}.{stamp.nanosec:09d} within {timeout} s")

    def set_parameters(self, **values):
        request = SetParameters.Request()
        for name, value in values.items():
            parameter = Parameter(name=name)
            if isinstance(value, bool):
                parameter.value = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
            elif isinstance(value, float):
                parameter.value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
            elif isinstance(value, int):
                parameter.value = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
            elif isinstance(value, str):
                parameter.value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
            else:
                parameter.value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE_ARRAY,
                                                 double_array_value=[float(v) for v in value])
            request.parameters.append(parameter)
        return self.call(SetParameters, f"/{NODE_NAME}/set_parameters", request).results


@pytest.fixture(scope="module")
def running(tmp_path_factory, kitti_sample, bundle_path):
    """(harness, node process, KITTI points): the node subprocess, started once for this module."""
    # The driver sets the Fast DDS large-data profile for this (publishing) process too (docs/NODE.md).
    log_path = tmp_path_factory.mktemp("node") / "node.log"
    with NodeProcess({"bundle_path": str(bundle_path), "input_topic": f"{NS}/points",
                      "output_topic": f"{NS}/detections", "num_threads": 1, "warmup_iterations": 1,
                      "expected_rate_hz": 10.0, "diagnostics_period_s": 0.5,
                      # the intensity as given: the contract test below needs a 0-255 cloud to be reported
                      # (automatic intensity: test_node_auto_intensity.py)
                      "auto_intensity": False},
                     params_file=REPO / "config" / "detector.yaml", log_path=log_path, cwd=REPO) as node_process:
        process = node_process.process
        harness = Harness(node_process.domain_id)
        points = np.fromfile(kitti_sample / "training/velodyne/000000.bin", dtype=np.float32).reshape(-1, 4)
        try:
            if not node_process.wait_ready(harness, lambda: harness.cloud_pub.get_subscription_count() > 0, 120.0):
                raise AssertionError(f"node did not come up (exit {process.poll()}):\n{node_process.log_tail()}")
            yield harness, process, points, log_path
        finally:
            harness.close()


def _cloud(points, sec, frame="velodyne", nsec=0, **kwargs) -> PointCloud2:
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    header = Header(stamp=Time(sec=sec, nanosec=nsec), frame_id=frame)
    return make_pointcloud2(points, ("x", "y", "z", "intensity"), header, **kwargs)


def _raw_cloud(sec, fields, point_step, width, data: bytes, frame="velodyne") -> PointCloud2:
    msg = PointCloud2()
    msg.header.stamp.sec, msg.header.frame_id = sec, frame
    msg.height, msg.width = 1, width
    msg.fields = [PointField(name=n, offset=o, datatype=t, count=1) for n, o, t in fields]
    msg.point_step, msg.row_step = point_step, point_step * width
    msg.data = data
    return msg


XYZI = [("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32), ("z", 8, PointField.FLOAT32),
        ("intensity", 12, PointField.FLOAT32)]


def test_kitti_frame_gives_detections_with_the_input_header(running):
    harness, _, points, _ = running
    answer = harness.send_and_wait(_cloud(points, 1000, nsec=123456789))
    assert answer.header.frame_id == "velodyne"
    assert (answer.header.stamp.sec, answer.header.stamp.nanosec) == (1000, 123456789)
    for det in answer.detections:
        assert det.header.frame_id == "velodyne" and det.header.stamp.nanosec == 123456789
        assert det.results[0].hypothesis.class_id in ("Car", "Pedestrian", "Cyclist")
        assert det.bbox.size.x > 0 and math.isfinite(det.bbox.center.position.x)
    # the per-frame stage record carries the same header and every stage
    assert harness.spin_until(lambda: any(t.header.stamp.sec == 1000 for t in harness.timings), 10.0)
    record = next(t for t in harness.timings if t.header.stamp.sec == 1000)
    stages = parse_stage_timing(record)
    # + "ground" on the scans the mount check fits (ground_check, on by default: the first 5 scans, then every 5th)
    assert set(stages) == {"decode", "preprocess", "inference", "postprocess", "publish", "total", "ground"}
    assert stages["total"] >= stages["inference"] > 0 and stages["decode"] > 0 and stages["ground"] > 0
    values = {kv.key: kv.value for kv in record.status[0].values}
    assert int(values["num_points"]) == len(points) and values["processed"] == "true"
    assert int(values["num_detections"]) == len(answer.detections)


def test_markers_reach_a_subscriber_with_the_input_header(running):
    harness, _, points, _ = running
    sub = harness.node.create_subscription(MarkerArray, f"{NS}/detections/markers", harness.markers.append, 10)
    try:
        harness.send_and_wait(_cloud(points, 1100))
        assert harness.spin_until(lambda: any(m.markers and m.markers[0].header.stamp.sec >= 1100
                                              for m in harness.markers), 30.0)
        marker_array = next(m for m in harness.markers if m.markers[0].header.stamp.sec >= 1100)
        assert marker_array.markers[0].action == marker_array.markers[0].DELETEALL
        assert all(m.header.frame_id == "velodyne" for m in marker_array.markers)
    finally:
        harness.node.destroy_subscription(sub)


MALFORMED = {
    # name: (message builder taking the stamp, whether the frame is answered with an empty array)
    "empty_cloud": lambda sec: _raw_cloud(sec, XYZI, 16, 0, b""),
    "no_xyz_fields": lambda sec: _raw_cloud(sec, [("a", 0, PointField.FLOAT32), ("b", 4, PointField.FLOAT32)],
                                            8, 100, bytes(800)),
    "unknown_datatype": lambda sec: _raw_cloud(sec, [("x", 0, 99), ("y", 4, 7), ("z", 8, 7)], 12, 10, bytes(120)),
    "point_step_smaller_than_fields": lambda sec: _raw_cloud(sec, XYZI, 8, 100, bytes(800)),
    "data_shorter_than_declared": lambda sec: _raw_cloud(sec, XYZI, 16, 1000, bytes(1600)),
    "nan_and_inf_everywhere": lambda sec: _cloud(np.tile(np.array([[np.nan, np.inf, -np.inf, np.nan]], np.float32),
                                                         (5000, 1)), sec),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_input_is_answered_empty_and_the_node_keeps_working(running, case):
    harness, process, points, _ = running
    base = 2000 + 10 * list(MALFORMED).index(case)
    bad = harness.send_and_wait(MALFORMED[case](base))
    assert bad.header.frame_id == "velodyne" and len(bad.detections) == 0     # header in = header out, empty
    good = harness.send_and_wait(_cloud(points, base + 1))
    assert good.header.stamp.sec == base + 1
    assert process.poll() is None


def test_two_million_points_frame_id_change_and_backward_stamps(running):
    harness, process, points, _ = running
    rng = np.random.default_rng(0)
    # 2 M points as uint8 fields (4 bytes a point: 8 MB, inside the profile's shared-memory segment).
    huge = np.column_stack([rng.integers(0, 60, 2_000_000), rng.integers(0, 255, 2_000_000),
                            rng.integers(0, 3, 2_000_000), rng.integers(0, 255, 2_000_000)]).astype(np.float32)
    msg = make_pointcloud2(huge, ("x", "y", "z", "intensity"), (3000.0, "velodyne"),
                           dtypes={name: "u1" for name in ("x", "y", "z", "intensity")})
    assert msg.width == 2_000_000
    answer = harness.send_and_wait(msg, timeout=120.0, resend_s=30.0)
    assert answer.header.stamp.sec == 3000
    # frame_id change mid-stream: answered in the new frame
    moved = harness.send_and_wait(_cloud(points, 3001, frame="lidar_top"))
    assert moved.header.frame_id == "lidar_top" and all(d.header.frame_id == "lidar_top" for d in moved.detections)
    # stamps jumping backwards: still answered
    back = harness.send_and_wait(_cloud(points, 50))
    assert back.header.stamp.sec == 50 and back.header.frame_id == "velodyne"
    assert process.poll() is None


def test_burst_at_50_hz_is_dropped_not_queued(running):
    harness, process, points, _ = running
    # 1) a 50 Hz burst of real-size clouds: the node stays alive and answers the next good frame
    harness.detections.clear()
    for i in range(25):
        harness.cloud_pub.publish(_cloud(points, 4000, nsec=i * 20_000_000))
        harness.spin_until(lambda: False, 0.02)
    good = harness.send_and_wait(_cloud(points, 4001))
    assert good.header.stamp.sec == 4001 and process.poll() is None
    # 2) no queue: clouds published back to back (far faster than any model here runs) are dropped, not queued —
    #    a 50 Hz burst alone cannot show it once the model is fast enough to keep up with 50 Hz
    harness.detections.clear()
    sent = 25
    for i in range(sent):
        harness.cloud_pub.publish(_cloud(points, 4002, nsec=i * 1_000_000))
    harness.spin_until(lambda: False, 3.0)
    answered = [m for m in harness.detections if m.header.stamp.sec == 4002]
    assert 1 <= len(answered) < sent        # processed in the callback with depth 1: no queue of 25 frames
    good = harness.send_and_wait(_cloud(points, 4003))
    assert good.header.stamp.sec == 4003 and process.poll() is None
    # the frames that never reached the callback are counted from DDS sequence numbers and reported
    missed = sent - len(answered)
    assert harness.spin_until(lambda: _latest_status(harness, lambda v: int(v["dropped_sequence_gaps"]) >= missed
                                                     and int(v["dropped_frames"]) >= missed) is not None, 10.0), \
        (missed, {k: v for k, v in _latest_status(harness)[1].items() if "drop" in k or "frames" in k})


def _latest_status(harness, condition=lambda values: True):
    for array in reversed(harness.diagnostics):
        for status in array.status:
            if status.name == STATUS_NAME:
                values = parse_diagnostic_values(status)
                if condition(values):
                    return status, values
    return None


def test_diagnostics_carry_rates_drops_and_stage_percentiles(running):
    harness, _, points, _ = running
    harness.send_and_wait(_cloud(points, 5000))
    found = harness.spin_until(lambda: _latest_status(harness, lambda v: int(v["frames_processed"]) >= 1
                                                      and "total_ms_p50" in v) is not None, 10.0)
    assert found, "no /diagnostics status with stage percentiles"
    status, values = _latest_status(harness, lambda v: "total_ms_p50" in v)
    for stage in ("decode", "preprocess", "inference", "postprocess", "publish", "total"):
        p50, p95, p99 = (float(values[f"{stage}_ms_p{q}"]) for q in (50, 95, 99))
        assert 0 <= p50 <= p95 <= p99
    assert float(values["total_ms_p50"]) >= float(values["inference_ms_p50"]) > 0
    assert int(values["frames_received"]) >= int(values["frames_processed"]) >= 1
    assert values["backend"] in ("torch", "onnxruntime", "tensorrt")
    assert status.hardware_id and "received_rate_hz" in values and "undecodable_input_count" in values
    assert int(values["undecodable_input_count"]) >= 1 or "empty_input_count" in values


def test_input_contract_mismatch_is_reported(running):
    """0-255 intensity on a [0, 1] model: the classic "runs but detects nothing" cause, named on /diagnostics."""
    harness, _, points, log_path = running
    scaled = points.copy()
    scaled[:, 3] *= 255.0
    def finding():
        return _latest_status(harness, lambda v: "value_scale" in v["contract"])

    # new frame_id: contract re-checked, at most once a second (a check just before may defer it to the next frame)
    for i in range(30):
        harness.send_and_wait(_cloud(scaled, 5400 + i, frame="velodyne_255"))
        if harness.spin_until(lambda: finding() is not None, 0.5):
            break
    assert finding() is not None
    status, _ = finding()
    assert status.level == b"\x01" and "intensity_scale" in status.message
    assert "input contract (value_scale)" in log_path.read_text()
    # back to a good sensor frame: the contract is checked again (at most once a second) and found OK
    for i in range(30):
        harness.send_and_wait(_cloud(points, 5501 + i))
        if harness.spin_until(lambda: _latest_status(harness, lambda v: v["contract"] == "ok") is not None, 0.5):
            break
    assert _latest_status(harness, lambda v: v["contract"] == "ok") is not None


def test_runtime_parameters_take_effect_and_invalid_values_are_rejected(running):
    harness, _, points, _ = running
    results = harness.set_parameters(score_thresholds=[0.0, 0.0, 0.0], nms_post_max=50)
    assert all(r.successful for r in results), [r.reason for r in results]
    loose = harness.send_and_wait(_cloud(points, 6000))
    assert 0 < len(loose.detections) <= 50                 # threshold 0: every NMS survivor up to post max
    [result] = harness.set_parameters(score_thresholds=[0.99, 0.99, 0.99])
    assert result.successful, result.reason
    strict = harness.send_and_wait(_cloud(points, 6001))
    assert len(strict.detections) < len(loose.detections)
    assert all(d.results[0].hypothesis.score >= 0.99 for d in strict.detections)

    rejected = {
        "score_thresholds": ([1.5, 0.1, 0.1], "score_thresholds"),
        "nms_iou": (2.0, "nms_iou"),
        "nms_post_max": (100000, "nms_post_max"),
        "bundle_path": ("/elsewhere", "read-only"),
    }
    for name, (value, expected) in rejected.items():
        [result] = harness.set_parameters(**{name: value})
        assert not result.successful, f"{name}={value} was accepted"
        assert expected in result.reason, (name, result.reason)
    [result] = harness.set_parameters(score_thresholds=[0.5])
    assert not result.successful and "3 values" in result.reason
    # the rejected changes left the accepted settings in force
    again = harness.send_and_wait(_cloud(points, 6002))
    assert all(d.results[0].hypothesis.score >= 0.99 for d in again.detections)
    results = harness.set_parameters(score_thresholds=[0.1, 0.1, 0.1], nms_post_max=500)
    assert all(r.successful for r in results), [r.reason for r in results]


def _record(harness, sec):
    assert harness.spin_until(lambda: any(t.header.stamp.sec == sec for t in harness.timings), 10.0)
    record = next(t for t in harness.timings if t.header.stamp.sec == sec)
    return {kv.key: kv.value for kv in record.status[0].values}


def test_crop_and_exclusion_boxes_at_runtime(running):
    """crop_box / exclusion_box set with `ros2 param set` (SetParameters): the model sees exactly the points inside
    the crop box and outside the exclusion box; the removed points are counted; a bad box is refused with why."""
    harness, _, points, _ = running
    crop, ego = [0.0, -10.0, -3.0, 20.0, 10.0, 1.0], [0.0, -2.0, -3.0, 6.0, 2.0, 1.0]
    xyz = points[:, :3]
    in_crop = np.all((xyz >= crop[:3]) & (xyz <= crop[3:]), axis=1)
    in_ego = np.all((xyz >= ego[:3]) & (xyz <= ego[3:]), axis=1)
    try:
        results = harness.set_parameters(crop_box=crop, crop_box_enabled=True, exclusion_box=ego,
                                         exclusion_box_enabled=True)
        assert all(r.successful for r in results), [r.reason for r in results]
        answer = harness.send_and_wait(_cloud(points, 6500))
        values = _record(harness, 6500)
        assert int(values["num_points"]) == int((in_crop & ~in_ego).sum())
        assert int(values["points_outside_crop"]) == int((~in_crop).sum())
        assert int(values["points_excluded"]) == int((in_crop & in_ego).sum()) > 0
        for det in answer.detections:          # nothing is detected far from the points the model saw
            assert -3.0 < det.bbox.center.position.x < 23.0 and abs(det.bbox.center.position.y) < 13.0
        # an exclusion box around everything: an empty cloud, answered empty, reported with the reason
        [result] = harness.set_parameters(exclusion_box=[-100.0, -100.0, -10.0, 100.0, 100.0, 10.0])
        assert result.successful, result.reason
        empty = harness.send_and_wait(_cloud(points, 6501))
        assert len(empty.detections) == 0 and _record(harness, 6501)["processed"] == "false"
        first_frame = int((in_crop & in_ego).sum())

        def both_frames_counted(values):
            return int(values.get("points_excluded_total", "0")) > first_frame

        assert harness.spin_until(lambda: _latest_status(harness, both_frames_counted) is not None, 10.0)
        status, values = _latest_status(harness, both_frames_counted)
        assert values["crop_box"] == "0 -10 -3 20 10 1" and values["exclusion_box"] == "-100 -100 -10 100 100 10"
        assert int(values["points_excluded_total"]) == first_frame + int(in_crop.sum())
        assert f"{int((~in_crop).sum())} outside crop_box, {int(in_crop.sum())} inside exclusion_box" in status.message
        # refused: min above max, wrong length; the accepted boxes stay in force
        for bad, reason in (([0.0, 5.0, 0.0, 1.0, 1.0, 1.0], "min must be below max"), ([1.0, 2.0], "6 values")):
            [result] = harness.set_parameters(crop_box=bad)
            assert not result.successful and reason in result.reason, result.reason
    finally:
        results = harness.set_parameters(crop_box_enabled=False, exclusion_box_enabled=False)
        assert all(r.successful for r in results)
    assert int(_record(harness, harness.send_and_wait(_cloud(points, 6502)).header.stamp.sec)["num_points"]) == \
        len(points)


def test_range_dependent_thresholds_at_runtime(running):
    """Beyond 8 m a box needs score 1.0 (none has it); nearer ones keep the per-class threshold.

    The table filters candidates before NMS, as the per-class thresholds do, so a far box can no longer suppress a
    near one: the expectation "the near boxes of the unfiltered answer" holds where no near box overlaps a far one,
    which a per-class threshold of 0.25 gives on this scene with the shipped model (at 0.05 it did not)."""
    harness, _, points, _ = running

    def distances(answer):
        return sorted(round(math.hypot(d.bbox.center.position.x, d.bbox.center.position.y), 4)
                      for d in answer.detections)

    try:
        [result] = harness.set_parameters(score_thresholds=[0.25, 0.25, 0.25])
        assert result.successful, result.reason
        before = distances(harness.send_and_wait(_cloud(points, 6600)))
        near = [d for d in before if d < 8.0]
        assert near and len(near) < len(before), before        # the scene has boxes on both sides of 8 m
        # while disabled the lists can be changed one at a time (here: 1 breakpoint -> 2 bands x 3 classes)
        for values in ({"range_breakpoints": [8.0]}, {"range_score_thresholds": [0.0, 1.0] * 3},
                       {"range_thresholds_enabled": True}):
            [result] = harness.set_parameters(**values)
            assert result.successful, (values, result.reason)
        assert distances(harness.send_and_wait(_cloud(points, 6601))) == near
        # enabled: a table that does not fit the breakpoints is refused with the reason, the old one stays
        [result] = harness.set_parameters(range_breakpoints=[8.0, 40.0])
        assert not result.successful and "range_score_thresholds needs 9 values" in result.reason
        [result] = harness.set_parameters(range_score_thresholds=[0.0, 1.5] * 3)
        assert not result.successful and "range_score_thresholds[1]" in result.reason
        assert distances(harness.send_and_wait(_cloud(points, 6602))) == near
        [result] = harness.set_parameters(range_thresholds_enabled=False)
        assert result.successful, result.reason
        assert distances(harness.send_and_wait(_cloud(points, 6603))) == before   # off again: the far boxes are back
    finally:
        results = harness.set_parameters(range_thresholds_enabled=False, score_thresholds=[0.1, 0.1, 0.1])
        assert all(r.successful for r in results), [r.reason for r in results]


def test_node_stops_cleanly_on_sigint(running):
    """Last test of the module: SIGINT ends the node with status 0 and a summary line."""
    _, process, _, log_path = running
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    log = log_path.read_text()
    assert "stopping:" in log and "frames received" in log
    assert "Traceback" not in log, log[-3000:]


def test_use_sim_time_input_age_follows_clock(kitti_sample, bundle_path):
    """With use_sim_time the input age is /clock - header.stamp (a bag replayed with --clock), and the 1 Hz
    diagnostics run on a steady clock, so they appear even before any /clock message."""
    from rosgraph_msgs.msg import Clock

    node_process = NodeProcess({"bundle_path": str(bundle_path), "input_topic": f"{NS}/points",
                                "output_topic": f"{NS}/detections", "num_threads": 1, "warmup_iterations": 0,
                                "use_sim_time": True, "diagnostics_period_s": 0.5},
                               params_file=REPO / "config" / "detector.yaml", cwd=REPO)
    harness = Harness(node_process.domain_id)
    try:
        assert harness.spin_until(lambda: _latest_status(harness) is not None, 120.0), "no diagnostics without /clock"
        clock_pub = harness.node.create_publisher(Clock, "/clock", 10)
        assert harness.spin_until(lambda: clock_pub.get_subscription_count() > 0, 30.0)
        clock = Clock()
        clock.clock.sec = 500
        for _ in range(3):
            clock_pub.publish(clock)
            harness.spin_until(lambda: False, 0.1)
        points = np.fromfile(kitti_sample / "training/velodyne/000000.bin", dtype=np.float32).reshape(-1, 4)
        harness.send_and_wait(_cloud(points, 499, nsec=750_000_000))
        assert harness.spin_until(lambda: any(t.header.stamp.sec == 499 for t in harness.timings), 10.0)
        record = next(t for t in harness.timings if t.header.stamp.sec == 499)
        values = {kv.key: kv.value for kv in record.status[0].values}
        assert float(values["input_age_ms"]) == pytest.approx(250.0, abs=1.0)
    finally:
        harness.close()
        node_process.stop()


def test_int8_parameter_runs_the_bundles_int8_dense_part(kitti_sample, bundle_path, tmp_path):
    """int8: true runs model.int8.onnx on onnxruntime: the start-up line and /diagnostics say so, and a KITTI scan
    gets detections (the embedded default ships one; docs/BUNDLE.md "int8 dense part")."""
    from clean_ros.inference.bundle import load_bundle

    if load_bundle(bundle_path).int8_onnx_path is None:
        pytest.skip(f"{bundle_path} has no model.int8.onnx")
    log_path = tmp_path / "node.log"
    node_process = NodeProcess({"bundle_path": str(bundle_path), "input_topic": f"{NS}/points", "int8": True,
                                "output_topic": f"{NS}/detections", "num_threads": 1, "warmup_iterations": 1,
                                "diagnostics_period_s": 0.5},
                               params_file=REPO / "config" / "detector.yaml", log_path=log_path, cwd=REPO)
    harness = Harness(node_process.domain_id)
    try:
        assert node_process.wait_ready(harness, lambda: harness.cloud_pub.get_subscription_count() > 0, 120.0), \
            node_process.log_tail()
        points = np.fromfile(kitti_sample / "training/velodyne/000000.bin", dtype=np.float32).reshape(-1, 4)
        answer = harness.send_and_wait(_cloud(points, 700))
        assert len(answer.detections) >= 3
        assert harness.spin_until(lambda: _latest_status(harness, lambda v: v.get("int8") == "true") is not None,
                                  10.0), "no /diagnostics with int8 true"
        _, values = _latest_status(harness, lambda v: v.get("int8") == "true")
        assert values["backend"] == "onnxruntime" and values["backend_requested"] == "auto"
    finally:
        harness.close()
        node_process.stop()
    assert "ready: backend 'onnxruntime' with the int8 dense part" in log_path.read_text()


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers of the node (no node, no test double needed)

def test_ros_parameters_map_onto_the_one_postprocess_validator():
    """The node has no validator of its own: ROS values become Pipeline keywords, which postprocess_settings checks."""
    import array

    from clean_ros.inference.postprocess_settings import PostProcessConfig, updated_postprocess
    from clean_ros.ros.node_parameters import postprocess_values, to_pipeline_changes

    changes = to_pipeline_changes({"score_thresholds": array.array("d", [0.5, 0.4, 0.3]), "nms_pre_max": 7})
    assert changes == {"score_thresholds": [0.5, 0.4, 0.3], "nms_pre_max": 7}
    assert type(changes["score_thresholds"]) is list
    current = postprocess_values(PostProcessConfig())
    assert current["range_thresholds_enabled"] is False and current["range_breakpoints"] == [30.0, 50.0]
    assert current["range_score_thresholds"] == [0.1] * 9            # neutral table: the class thresholds
    # disabled: the lists are edited one at a time (no consistency check), the pipeline keeps the table off
    assert to_pipeline_changes({"range_breakpoints": [20.0]}, current) == {"range_breakpoints": [],
                                                                          "range_score_thresholds": []}
    with pytest.raises(ValueError, match="strictly ascending"):
        to_pipeline_changes({"range_breakpoints": [20.0, 10.0]}, current)
    # enabled: both lists go to the validator, which checks that they fit together
    enabled = to_pipeline_changes({"range_thresholds_enabled": True}, current)
    assert enabled == {"range_breakpoints": [30.0, 50.0], "range_score_thresholds": [0.1] * 9}
    with pytest.raises(ValueError, match="range_score_thresholds needs 6 values"):
        updated_postprocess(PostProcessConfig(), to_pipeline_changes({"range_thresholds_enabled": True,
                                                                      "range_breakpoints": [40.0]}, current),
                            ("Car", "Pedestrian", "Cyclist"), iou_branch=False)
    with pytest.raises(ValueError, match=r"nms_post_max \(101\) must not exceed nms_pre_max \(100\)"):
        updated_postprocess(PostProcessConfig(), to_pipeline_changes({"nms_pre_max": 100, "nms_post_max": 101}),
                            ("Car", "Pedestrian", "Cyclist"), iou_branch=False)


def test_launch_command_formats_parameters_for_ros_args():
    command = launch_command("cfg.yaml", {"bundle_path": "", "num_threads": 1, "intensity_scale": 1.0,
                                          "publish_markers": False, "score_thresholds": [0.5, 0.25]}, "debug", "PY")
    assert command == ["PY", "-m", "clean_ros.detector_node", "--ros-args", "--params-file", "cfg.yaml",
                       "-p", "bundle_path:=''", "-p", "num_threads:=1", "-p", "intensity_scale:=1.0",
                       "-p", "publish_markers:=false", "-p", "score_thresholds:=[0.5, 0.25]",
                       "--log-level", "debug"]


@pytest.mark.parametrize("parameters, expected", [
    ({"bundle_path": "/nonexistent/bundle"}, "cannot load the model bundle '/nonexistent/bundle'"),
    ({"voxel_size": [0.1, 0.1, 0.2]}, "model geometry, classes and feature layout come from the model bundle"),
    ({"qos_reliability": "sometimes"}, "use best_effort or reliable"),
    ({"intensity_scale": 1}, "parameter 'intensity_scale'"),
    ({"int8": True, "backend": "torch"},
     "int8 runs on onnxruntime (the bundle's model.int8.onnx), not on backend 'torch'"),
])
def test_unusable_configuration_stops_with_one_clear_line(parameters, expected):
    code, output = run_node_once(parameters, params_file=REPO / "config" / "detector.yaml", cwd=REPO)
    assert code == 2, output[-2000:]
    assert "FATAL" in output and expected in output, output[-2000:]
    assert "Traceback" not in output, output[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# Unit test of the node's failure handling, in process. TEST DOUBLE: `FailingPipeline` stands in for the Pipeline
# only here, because a real backend cannot be made to fail on demand; every other test uses the real Pipeline.

class FailingPipeline:
    """TEST DOUBLE of clean_ros.inference.pipeline.Pipeline: fails on 13-point clouds, reports a voxel overflow
    otherwise."""

    backend_name = "torch"
    class_names = ("Car", "Pedestrian", "Cyclist")
    point_features = ("x", "y", "z", "intensity")
    bundle = None
    frames = None  # the Pipeline's sensor-mount transforms: none set

    def __init__(self):
        from clean_ros.models.detector_config import PostProcessConfig

        self.postprocess_settings = PostProcessConfig()

    def update_postprocess(self, **changes):
        raise ValueError("not used")

    def set_auto_intensity(self, enabled, window=None, strict=False):
        return "this test double records no intensity level"  # as a bundle without one: the node warns, runs on

    def set_ground_watch(self, enabled, window=None, every=None):
        pass  # measures no ground: the report's ground key stays "off"

    def input_contract(self):
        from clean_ros.cloud.pointcloud import InputContract

        return InputContract(point_features=("x", "y", "z", "intensity"), point_cloud_range=(-1e9,) * 3 + (1e9,) * 3)

    def warmup(self, iterations=3):
        pass

    def __call__(self, points):
        from clean_ros.inference.pipeline import PipelineResult
        from clean_ros.types import Detections
        from clean_ros.inference.voxelize import VoxelStats

        if len(points) == 13:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return PipelineResult(Detections.empty(self.class_names),
                              {"preprocess": 1.0, "inference": 2.0, "postprocess": 0.5},
                              VoxelStats(len(points), 0, 40012, 12, 30))


def test_backend_failure_and_voxel_overflow_are_answered_and_reported_in_process():
    from rclpy.parameter import Parameter as RclpyParameter

    from clean_ros.ros.detector_node import DetectorNode
    from clean_ros.ros.node_diagnostics import ERROR, assess

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=random_domain_id())
    try:
        node = DetectorNode(pipeline_factory=lambda path, backend, device: FailingPipeline(), context=context,
                            parameter_overrides=[RclpyParameter("warmup_iterations", value=0)])
        published = []
        node.detections_pub.publish = published.append
        rng = np.random.default_rng(0)
        node._on_cloud(_cloud(rng.uniform(0, 10, (13, 4)).astype(np.float32), 7000), None)
        assert published[-1].header.stamp.sec == 7000 and len(published[-1].detections) == 0
        assert node.accounting.events.count("backend_error") == 1 and node.accounting.frames_processed == 0
        level, message, _ = assess(node.health_snapshot())
        assert level == ERROR and "illegal memory access" in message
        node._on_cloud(_cloud(rng.uniform(0, 10, (100, 4)).astype(np.float32), 7001), None)
        assert published[-1].header.stamp.sec == 7001 and node.accounting.frames_processed == 1
        assert node.accounting.events.count("voxel_overflow") == 1
        _, message, items = assess(node.health_snapshot())
        assert "12 of 40012 voxels and 30 points dropped" in message
        assert items["inference_ms_p50"] == "2.000" and items["backend_error_count"] == "1"
        # every parameter the node declares is documented in config/detector.yaml (set, or commented out)
        import re

        text = (REPO / "config" / "detector.yaml").read_text()
        declared = set(node._parameters) - {"use_sim_time", "start_type_description_service"}
        undocumented = [name for name in sorted(declared)
                        if not re.search(rf"^\s*#?\s*{name}:[^#\n]*#\s*\S", text, re.M)]
        assert not undocumented, f"parameters missing from config/detector.yaml: {undocumented}"
        assert len(declared) >= 25
        node.close()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_crop_box_applies_in_the_model_frame_in_process():
    """With a sensor mount (points reach the model 1.5 m higher), crop_box z in [1, 2] keeps the sensor's z = 0
    layer: the node tests the boxes on model-frame coordinates and hands the Pipeline input-frame points."""
    from rclpy.parameter import Parameter as RclpyParameter

    from clean_ros.cloud.transforms import Transform
    from clean_ros.inference.sensor_mount import ModelFrames
    from clean_ros.ros.detector_node import DetectorNode

    class RecordingPipeline(FailingPipeline):
        def __init__(self):
            super().__init__()
            self.frames = ModelFrames(Transform.from_euler(translation=(0.0, 0.0, 1.5)), Transform.identity())
            self.inputs = []

        def __call__(self, points):
            self.inputs.append(np.array(points))
            return super().__call__(points)

    pipeline = RecordingPipeline()
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=random_domain_id())
    try:
        node = DetectorNode(pipeline_factory=lambda path, backend, device: pipeline, context=context,
                            parameter_overrides=[RclpyParameter("warmup_iterations", value=0),
                                                 RclpyParameter("crop_box_enabled", value=True),
                                                 RclpyParameter("crop_box", value=[-100.0, -100.0, 1.0, 100.0,
                                                                                   100.0, 2.0])])
        node.detections_pub.publish = lambda msg: None
        layers = np.repeat(np.array([-1.0, 0.0, 1.0], np.float32), 20)
        cloud = np.column_stack([np.arange(60, dtype=np.float32), np.zeros(60, np.float32), layers,
                                 np.zeros(60, np.float32)])
        node._on_cloud(_cloud(cloud, 7100), None)
        [given] = pipeline.inputs
        assert len(given) == 20 and np.all(given[:, 2] == 0.0)           # input frame, the z = 0 layer
        assert node.accounting.points_outside_crop == 40
        node.close()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
