"""The node's ground_check and auto_sensor_mount parameters (clean_ros.ros.node_model, clean_ros.ros.node_diagnostics,
clean_ros.ros.tf_frames), in process with the real Pipeline on the embedded default bundle.

The scene: KITTI scan 000000 moved so that its measured ground is level and where the bundle's training scans show
theirs (bundle.ground_height; the road under one KITTI scan is not exactly level in its sensor's frame, and
sensor_height levels the sensor where the automatic mount levels the road), then seen by a sensor 2.5 m up and
pitched 0.05 rad (as test_detector_node_tf.py builds its moved cloud).
- auto_sensor_mount: the first scan is measured and given to the model with the mount it shows (close to the true
  one), the boxes are those of the node told that mount with sensor_height / pitch / roll, and /diagnostics says the
  check is as trained and which mount is in use, "(auto)". (Not compared with the true mount's boxes: the estimate
  is a few mm / mrad off it, which moves far weak boxes by more than assert_same_detections' float round-off
  tolerance: measured on scan 000004, 6 mm and 0.2 mrad moved a box by 0.15 m.)
- ground_check (on by default) without a mount: a WARN whose message suggests sensor_height 2.x; the fit's time is
  the "ground" stage of ~/stage_latency. ground_check false: the key says off, nothing is measured.
- auto_sensor_mount with sensor_height or model_frame: refused at start, one line; with target_frame it runs and the
  boxes go to the target frame with the measured mount (from the scan after the first fit).
- model_frame through TF: the check judges the ground in the cloud's model frame (TF's), not the sensor's.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from shared_helpers import assert_same_detections, read_velodyne

rclpy = pytest.importorskip("rclpy")

from clean_ros.cloud.transforms import Transform, transform_boxes, transform_points  # noqa: E402
from clean_ros.inference.ground_plane import (HEIGHT_TOLERANCE_M, TILT_TOLERANCE_RAD, fit_ground_plane,  # noqa: E402
                                              mount_for)
from clean_ros.inference.sensor_mount import ModelFrames, SensorMount  # noqa: E402
from clean_ros.ros.messages import from_detection3d_array, parse_stage_timing  # noqa: E402
from clean_ros.ros.node_diagnostics import WARN, assess  # noqa: E402
from clean_ros.ros.node_parameters import StartupError  # noqa: E402
from clean_ros.ros.pointcloud_msg import make_pointcloud2  # noqa: E402
from clean_ros.ros.tf_buffer import transform_to_msg  # noqa: E402
from test_node_model import in_process_node  # noqa: E402

pytestmark = pytest.mark.ros
FIELDS = ("x", "y", "z", "intensity")
TRUTH = SensorMount(2.5, pitch=0.05)
TRAINING_HEIGHT = 1.73  # the default bundle's
LIDAR_ON_BASE = Transform.from_euler(0.0, 0.0, math.pi / 2, (1.2, 0.0, 0.4))


def _needs_tf() -> None:
    """The node's TF listener subscribes to tf2_msgs/TFMessage."""
    pytest.importorskip("tf2_msgs.msg",
                        reason="tf2_msgs interfaces not built (scripts/setup_env.sh builds ci/tf2_msgs)")


def seen_from_high(kitti_sample, bundle) -> np.ndarray:
    """The levelled KITTI scene as the 2.5 m, pitched sensor records it (see the module docstring)."""
    from clean_ros.inference.bundle import load_bundle

    reference = load_bundle(bundle).ground_height
    points = read_velodyne(kitti_sample / "training" / "velodyne" / "000000.bin")
    own = mount_for(fit_ground_plane(points), reference, TRAINING_HEIGHT)
    level = transform_points(points, own.model_from_sensor(TRAINING_HEIGHT))
    return transform_points(level, TRUTH.model_from_sensor(TRAINING_HEIGHT).inverse()).astype(np.float32)


@pytest.fixture(scope="module")
def high_scan(kitti_sample, default_bundle) -> np.ndarray:
    return seen_from_high(kitti_sample, default_bundle)


def _parameters(bundle, **overrides):
    # the automatic intensity is off: each node gets one scan, compared with another node's
    return {**dict(bundle_path=str(bundle), backend="torch", num_threads=1, warmup_iterations=0,
                   auto_intensity=False), **overrides}


def _detect(node, points: np.ndarray, sec: int, frame_id: str = "high_lidar"):
    """One cloud through the node's callback: (the Detection3DArray it published, its stage-latency record)."""
    published, timings = [], []
    node.detections_pub.publish = published.append
    node.timing_pub.publish = timings.append
    node._on_cloud(make_pointcloud2(points, FIELDS, (float(sec), frame_id)), None)
    [msg], [timing] = published, timings
    assert msg.header.stamp.sec == sec
    return msg, parse_stage_timing(timing)


def _detections(msg) -> tuple:
    boxes, scores, names = from_detection3d_array(msg)
    return boxes, scores, np.asarray(names)


def _thresholds(node) -> dict[str, float]:
    return dict(zip(node.pipeline.class_names, node.pipeline.postprocess_settings.score_thresholds))


def test_auto_sensor_mount_measures_the_mount_and_gives_the_declared_mounts_boxes(default_bundle, high_scan):
    with in_process_node(None, **_parameters(default_bundle, auto_sensor_mount=True)) as node:
        assert node.get_parameter("auto_sensor_mount").value is True and node.pipeline.auto_mount
        items = assess(node.health_snapshot())[2]
        assert items["sensor_mount"] == "measuring (auto)" and items["ground"].startswith("measuring (0 scans")
        msg, stages = _detect(node, high_scan, 100)
        mount = node.pipeline.sensor_mount      # measured on this scan, applied to it
        assert mount is not None and stages["ground"] > 0.0 and stages["frames"] > 0.0
        # the estimate is where the check would call a sensor declared at the true mount "as trained"
        assert abs(mount.height - TRUTH.height) <= HEIGHT_TOLERANCE_M
        assert abs(mount.pitch - TRUTH.pitch) <= TILT_TOLERANCE_RAD and abs(mount.roll) <= TILT_TOLERANCE_RAD
        level, message, items = assess(node.health_snapshot())
        assert items["sensor_mount"] == f"{mount.describe()} (auto)"
        assert items["ground"].endswith(": as trained") and "over 1 scans" in items["ground"]
        assert "mount check" not in message
        auto, thresholds = _detections(msg), _thresholds(node)
        assert msg.header.frame_id == "high_lidar"                        # boxes back in the sensor's frame
    declared = dict(sensor_height=mount.height, sensor_pitch=mount.pitch, sensor_roll=mount.roll)
    with in_process_node(None, **_parameters(default_bundle, **declared)) as node:
        msg, _ = _detect(node, high_scan, 100)
        assert assess(node.health_snapshot())[2]["sensor_mount"] == mount.describe()
    assert len(msg.detections) > 0
    assert_same_detections(auto, _detections(msg), thresholds)


def test_the_ground_check_warns_of_an_undeclared_mount_and_suggests_one(default_bundle, high_scan):
    with in_process_node(None, **_parameters(default_bundle, warmup_iterations=1)) as node:
        assert node.get_parameter("ground_check").value is True                 # the defaults
        assert node.get_parameter("auto_sensor_mount").value is False
        assert node.pipeline.ground is not None and node.pipeline.ground.scans == 0   # the warm-up is no scan
        items = assess(node.health_snapshot())[2]
        assert items["ground"].startswith("measuring (0 scans") and items["sensor_mount"] == "off"
        _, stages = _detect(node, high_scan, 200)
        assert 0.0 < stages["ground"] < 1000.0                                  # ~/stage_latency's ground_ms
        level, message, items = assess(node.health_snapshot())
        assert level == WARN and f"mount check: {items['ground']}" in message
        assert "sensor_height 2." in message and "sensor_pitch 0.0" in message
        assert node.pipeline.sensor_mount is None                              # it says so, it changes nothing
        assert "ground_ms_p50" in items


def test_ground_check_false_measures_nothing_and_says_off(default_bundle, high_scan):
    with in_process_node(None, **_parameters(default_bundle, ground_check=False)) as node:
        assert node.pipeline.ground is None
        _, stages = _detect(node, high_scan, 300)
        assert "ground" not in stages
        _, message, items = assess(node.health_snapshot())
        assert items["ground"] == "off" and "mount check" not in message
        node._free_model()
        assert assess(node.health_snapshot())[2]["ground"] == "off"


@pytest.mark.parametrize("overrides, given", [(dict(sensor_height=2.5), "sensor_height"),
                                              (dict(model_frame="level_lidar"), "model_frame")])
def test_auto_sensor_mount_with_another_mount_is_refused_at_start_in_one_line(default_bundle, overrides, given):
    with pytest.raises(StartupError) as refused:
        with in_process_node(None, **_parameters(default_bundle, auto_sensor_mount=True, **overrides)):
            pass
    text = str(refused.value)
    assert text.startswith(f"auto_sensor_mount and {given} are both set: say where the sensor is once")
    assert "\n" not in text


def test_auto_sensor_mount_with_target_frame_moves_the_boxes_there(default_bundle, high_scan):
    _needs_tf()
    with in_process_node(None, **_parameters(default_bundle, auto_sensor_mount=True, target_frame="base_link")) as node:
        try:
            node.tf.buffer.set_transform_static(transform_to_msg(LIDAR_ON_BASE, "base_link", "high_lidar"), "test")
            _detect(node, high_scan, 400)            # measured, but TF's frames were taken before: no mount yet
            mount = node.pipeline.sensor_mount
            assert mount is not None
            msg, _ = _detect(node, high_scan, 401)   # the same scan: the same estimate, now in use
            assert msg.header.frame_id == "base_link" and node.pipeline.sensor_mount == mount
            sensor = node.pipeline(high_scan, ModelFrames.from_mount(mount, TRAINING_HEIGHT)).detections
            thresholds = _thresholds(node)
        finally:
            node.close()
    boxes, scores, names = _detections(msg)
    assert len(boxes) > 0
    assert_same_detections((boxes, scores, names), (transform_boxes(sensor.boxes, LIDAR_ON_BASE), sensor.scores,
                                                    np.asarray(sensor.names)), thresholds)


def test_with_model_frame_the_check_judges_the_ground_in_the_clouds_model_frame(default_bundle, high_scan):
    _needs_tf()
    with in_process_node(None, **_parameters(default_bundle, model_frame="level_lidar")) as node:
        try:
            # TF says where the model's level sensor is: the true mount
            node.tf.buffer.set_transform_static(transform_to_msg(TRUTH.model_from_sensor(TRAINING_HEIGHT),
                                                                 "level_lidar", "high_lidar"), "test")
            _detect(node, high_scan, 500)
            level, message, items = assess(node.health_snapshot())
            assert items["ground"].endswith(": as trained") and "mount check" not in message
            # the same estimate judged in the sensor's own frame is 2.5 m below: what a wrong TF would show
            assert not node.pipeline.mount_check(None).ok
        finally:
            node.close()
