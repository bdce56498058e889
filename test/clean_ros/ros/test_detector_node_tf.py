"""Frames through TF in the detector node (a real node subprocess, started as the launch file starts it, with the TF
buffer this environment has: clean_ros.ros.tf_buffer; tf2_ros where installed).

The node runs with target_frame=base_link and model_frame=velodyne while the test publishes a static transform
base_link -> velodyne (rotated 90 degrees, lifted 1.9 m, 1.2 m forward) on /tf_static:
- a KITTI cloud in its sensor frame (velodyne) and the same scene given directly in the target frame (base_link) give
  the same boxes, published in base_link with the input stamps, equal to the offline Pipeline's boxes moved by the
  transform;
- a cloud in a frame TF does not know is skipped (no answer), reported on /diagnostics, and the node keeps working.
Without TF, a node with sensor_height / sensor_pitch turns a higher, pitched sensor's cloud into the KITTI-height boxes.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs interfaces not built (scripts/setup_env.sh builds ci/tf2_msgs)")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402
from vision_msgs.msg import Detection3DArray  # noqa: E402

from clean_ros.defaults import NODE_NAME  # noqa: E402
from clean_ros.cloud.transforms import Transform, transform_boxes, transform_points  # noqa: E402
from clean_ros.ros.messages import from_detection3d_array, parse_stage_timing  # noqa: E402
from clean_ros.ros.node_diagnostics import STATUS_NAME, parse_diagnostic_values  # noqa: E402
from clean_ros.ros.node_process import DriverNode, NodeProcess  # noqa: E402
from clean_ros.ros.pointcloud_msg import make_pointcloud2  # noqa: E402
from clean_ros.ros.tf_buffer import tf_static_qos, transform_to_msg  # noqa: E402
from shared_helpers import DEFAULT_BUNDLE, assert_same_detections, read_velodyne  # noqa: E402

pytestmark = pytest.mark.ros
NS = "/tf_test"
# Reliable input: large best-effort clouds need the Fast DDS profile in this (publishing) process, which an earlier
# test of the same pytest process may have created its participant without (docs/NODE.md "Large clouds").
CLOUD_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
VELODYNE_ON_BASE = Transform.from_euler(0.0, 0.0, math.pi / 2, (1.2, 0.0, 1.9))
FIELDS = ("x", "y", "z", "intensity")


class Harness(DriverNode):
    def __init__(self, domain_id: int, ns: str = NS):
        super().__init__("tf_test_harness", domain_id, spin_period_s=0.05)
        self.detections: list[Detection3DArray] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.timings: list[DiagnosticArray] = []
        self.cloud_pub = self.node.create_publisher(PointCloud2, f"{ns}/points", CLOUD_QOS)
        self.static_pub = self.node.create_publisher(TFMessage, "/tf_static", tf_static_qos())
        self.node.create_subscription(Detection3DArray, f"{ns}/detections", self.detections.append, 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)
        self.node.create_subscription(DiagnosticArray, f"/{NODE_NAME}/stage_latency", self.timings.append, 50)
        self.log_tail = lambda: ""

    def answer(self, stamp_sec: int):
        return next((m for m in self.detections if m.header.stamp.sec == stamp_sec), None)

    def send_and_wait(self, msg: PointCloud2, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.cloud_pub.publish(msg)   # again every 5 s while unanswered
            if self.spin_until(lambda: self.answer(msg.header.stamp.sec) is not None, 5.0):
                return self.answer(msg.header.stamp.sec)
        raise AssertionError(f"no answer to the cloud stamped {msg.header.stamp.sec} s within {timeout} s; node "
                             f"health: {self.health().get('message')}; node log: {self.log_tail()}")

    def health(self) -> dict[str, str]:
        for msg in reversed(self.diagnostics):
            for status in msg.status:
                if status.name == STATUS_NAME:
                    return {"message": status.message, **parse_diagnostic_values(status)}
        return {}


@pytest.fixture(scope="module")
def tf_node(tmp_path_factory):
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        pytest.skip("embedded default bundle models/default is absent")
    log = tmp_path_factory.mktemp("tf_node") / "node.log"
    parameters = {"bundle_path": str(DEFAULT_BUNDLE), "backend": "torch", "num_threads": 1, "warmup_iterations": 0,
                  "input_topic": f"{NS}/points", "output_topic": f"{NS}/detections", "publish_markers": False,
                  "qos_reliability": "reliable",
                  "target_frame": "base_link", "model_frame": "velodyne", "tf_timeout_s": 0.3,
                  "auto_intensity": False}   # the references are the Pipeline on the intensity as given
    with NodeProcess(parameters, log_path=log) as node:
        harness = Harness(node.domain_id)
        harness.log_tail = node.log_tail
        try:
            harness.static_pub.publish(TFMessage(transforms=[transform_to_msg(VELODYNE_ON_BASE, "base_link",
                                                                              "velodyne")]))
            ready = node.wait_ready(harness, lambda: harness.cloud_pub.get_subscription_count() > 0, 120.0)
            assert ready, node.log_tail()
            yield node, harness
        finally:
            harness.close()
        # SIGINT with the TF listener's thread running: a clean exit with the summary line
        assert node.stop() == 0 and "stopping:" in node.log_text(), node.log_tail()


def test_boxes_in_the_target_frame_match_the_scene_given_directly_in_it(tf_node, kitti_sample):
    node, harness = tf_node
    points = read_velodyne(kitti_sample / "training" / "velodyne" / "000000.bin")
    in_sensor = harness.send_and_wait(make_pointcloud2(points, FIELDS, (10.0, "velodyne")))
    in_base = harness.send_and_wait(make_pointcloud2(transform_points(points, VELODYNE_ON_BASE), FIELDS,
                                                     (11.0, "base_link")))
    for msg, stamp in ((in_sensor, 10), (in_base, 11)):
        assert msg.header.frame_id == "base_link" and msg.header.stamp.sec == stamp
        assert all(d.header.frame_id == "base_link" for d in msg.detections)
    boxes_a, scores_a, names_a = from_detection3d_array(in_sensor)
    boxes_b, scores_b, names_b = from_detection3d_array(in_base)

    import torch

    from clean_ros.inference.pipeline import Pipeline

    torch.set_num_threads(1)
    pipeline = Pipeline.from_bundle(DEFAULT_BUNDLE, backend="torch")
    reference = pipeline(points).detections
    expected = transform_boxes(reference.boxes, VELODYNE_ON_BASE)
    assert len(expected) > 0 and len(boxes_a) == len(expected)
    # the cloud in the sensor frame: the reference's boxes exactly, moved to base_link
    order, got = np.argsort(-reference.scores), np.argsort(-scores_a)
    assert [names_a[i] for i in got] == [str(n) for n in reference.names[order]]
    np.testing.assert_allclose(boxes_a[got, :6], expected[order, :6], atol=2e-2)
    np.testing.assert_allclose(np.angle(np.exp(1j * (boxes_a[got, 6] - expected[order, 6]))), 0.0, atol=2e-2)
    # the cloud given in base_link: its points moved there and back, so boxes at their score threshold may flip
    thresholds = dict(zip(reference.class_names, pipeline.postprocess_settings.score_thresholds))
    assert_same_detections((boxes_b, scores_b, np.asarray(names_b)),
                           (expected, reference.scores, np.asarray(reference.names)), thresholds)
    # the frame's TF work is timed as the 'frames' stage of its stage-latency record (header = the cloud's)
    assert harness.spin_until(lambda: any(t.header.stamp.sec == 11 for t in harness.timings), 10.0)
    record = next(t for t in harness.timings if t.header.stamp.sec == 11)
    assert record.header.frame_id == "base_link" and 0.0 < parse_stage_timing(record)["frames"] < 1000.0
    # not the sensor-frame boxes relabelled: the centres were lifted by 1.9 m
    np.testing.assert_allclose(np.sort(boxes_a[:, 2]), np.sort(reference.boxes[:, 2]) + 1.9, atol=2e-2)

def test_a_failed_lookup_skips_the_frame_reports_it_and_the_node_keeps_working(tf_node, kitti_sample):
    node, harness = tf_node
    points = read_velodyne(kitti_sample / "training" / "velodyne" / "000001.bin")
    harness.cloud_pub.publish(make_pointcloud2(points, FIELDS, (20.0, "mystery_lidar")))
    harness.spin_until(lambda: "tf_lookup_failed" in harness.health().get("message", "")
                       or harness.health().get("tf_lookup_failed_count", "0") != "0", 30.0)
    health = harness.health()
    assert int(health.get("tf_lookup_failed_count", "0")) >= 1, health
    assert "TF lookup failed" in health["message"] and "mystery_lidar" in health["message"], health["message"]
    assert harness.answer(20) is None                          # skipped: nothing published for that stamp
    assert node.process.poll() is None                         # alive
    answer = harness.send_and_wait(make_pointcloud2(points, FIELDS, (21.0, "velodyne")))
    assert answer.header.frame_id == "base_link"               # the next good frame is answered
    assert "mystery_lidar" in node.log_text() and "frame skipped" in node.log_text()   # the throttled warning


def test_sensor_height_parameter_gives_the_training_height_boxes_in_the_sensor_frame(kitti_sample, tmp_path):
    """Without TF: the node's sensor_height / sensor_pitch (the Pipeline's sensor mount) on a cloud from a sensor
    0.77 m higher and pitched give the KITTI-height boxes, published in the cloud's own frame."""
    from clean_ros.inference.sensor_mount import SensorMount

    points = read_velodyne(kitti_sample / "training" / "velodyne" / "000000.bin")
    kitti_from_high = SensorMount(2.5, pitch=0.05).model_from_sensor(1.73)
    parameters = {"bundle_path": str(DEFAULT_BUNDLE), "backend": "torch", "num_threads": 1, "warmup_iterations": 0,
                  "input_topic": f"{NS}_mount/points", "output_topic": f"{NS}_mount/detections",
                  "publish_markers": False, "qos_reliability": "reliable", "sensor_height": 2.5, "sensor_pitch": 0.05,
                  "auto_intensity": False}   # the reference is the Pipeline on the intensity as given
    with NodeProcess(parameters, log_path=tmp_path / "node.log") as node:   # its own topics: no cross-talk
        harness = Harness(node.domain_id, ns=f"{NS}_mount")
        harness.log_tail = node.log_tail
        try:
            assert node.wait_ready(harness, lambda: harness.cloud_pub.get_subscription_count() > 0, 120.0), \
                node.log_tail()
            msg = harness.send_and_wait(make_pointcloud2(transform_points(points, kitti_from_high.inverse()), FIELDS,
                                                         (30.0, "high_lidar")))
        finally:
            harness.close()
        assert "sensor 2.5 m above the ground, pitch 0.05 rad" in node.log_text()
    assert msg.header.frame_id == "high_lidar"
    boxes, scores, names = from_detection3d_array(msg)

    import torch

    from clean_ros.inference.pipeline import Pipeline

    torch.set_num_threads(1)
    pipeline = Pipeline.from_bundle(DEFAULT_BUNDLE, backend="torch")
    reference = pipeline(points).detections
    assert len(reference) > 0
    thresholds = dict(zip(reference.class_names, pipeline.postprocess_settings.score_thresholds))
    assert_same_detections((transform_boxes(boxes, kitti_from_high), scores, np.array(names)),
                           (reference.boxes, reference.scores, np.asarray(reference.names)), thresholds)
