"""Replay with --sensor-height / --sensor-pitch (fast mode): a bag recorded by a sensor mounted higher and pitched
gives the boxes the model gives the same scene at its training height, in the bag's own sensor frame (up to boxes at their
score threshold, which the float round-off of the transform may flip: shared_helpers.assert_same_detections)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

from clean_ros.cloud.transforms import transform_boxes, transform_points  # noqa: E402
from clean_ros.inference.sensor_mount import SensorMount  # noqa: E402
from clean_ros.ros.replay import main  # noqa: E402
from shared_helpers import assert_same_detections, read_velodyne  # noqa: E402

pytestmark = pytest.mark.ros
BUNDLE = Path(__file__).resolve().parents[3] / "models" / "default"


def test_fast_replay_applies_the_sensor_mount(kitti_sample, tmp_path, capsys):
    if not (BUNDLE / "manifest.json").is_file():
        pytest.skip("embedded default bundle models/default is absent")
    import torch
    from vision_msgs.msg import Detection3DArray

    from clean_ros.inference.pipeline import Pipeline
    from clean_ros.ros.bag import POINTS_TYPE, BagReader, BagWriter
    from clean_ros.ros.messages import from_detection3d_array
    from clean_ros.ros.pointcloud_msg import make_pointcloud2

    points = read_velodyne(kitti_sample / "training" / "velodyne" / "000000.bin")
    kitti_from_high = SensorMount(2.4, pitch=0.04).model_from_sensor(1.73)
    bag = tmp_path / "high"
    with BagWriter(bag) as writer:
        writer.add_topic("/points", POINTS_TYPE, best_effort=True)
        writer.write("/points", 1_000_000_000, make_pointcloud2(transform_points(points, kitti_from_high.inverse()),
                                                                ("x", "y", "z", "intensity"), (1.0, "lidar")))
    record = tmp_path / "dets"
    assert main([str(bag), "--bundle", str(BUNDLE), "--backend", "torch", "--num-threads", "1", "--warmup", "0",
                 "--sensor-height", "2.4", "--sensor-pitch", "0.04", "--no-auto-intensity",   # as the reference
                 "--record", str(record)]) == 0
    with BagReader(record) as reader:
        (_, msg), = list(reader.messages("/detections", Detection3DArray))
    boxes, scores, names = from_detection3d_array(msg)
    torch.set_num_threads(1)
    pipeline = Pipeline.from_bundle(BUNDLE, backend="torch")
    reference = pipeline(points).detections   # KITTI frame, 1.73 m
    back = transform_boxes(np.asarray(boxes, np.float64), kitti_from_high)
    # the same boxes, up to the float round-off of moving the points there and back (boxes at their class's score
    # threshold may be on one side only)
    threshold = dict(zip(reference.class_names, pipeline.postprocess_settings.score_thresholds))
    assert len(reference) > 0
    assert_same_detections((back, scores, np.asarray(names)),
                           (reference.boxes, reference.scores, np.asarray(reference.names)), threshold)
    # a bad mount is one error line
    assert main([str(bag), "--bundle", str(BUNDLE), "--sensor-height", "0", "--sensor-pitch", "0.1"]) == 2
    assert "sensor_height is 0" in capsys.readouterr().err
