"""training/evaluate_task.predict_annotations: detections become KITTI rows in camera coordinates, and only what the
camera sees is kept (as KITTI label files and clean_ros.tools.infer hold): a 360-degree model's boxes behind the car
would otherwise reach the devkit as zero-width boxes and count as false positives."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clean_ros.models.detector_config import load_detector_config
from clean_ros.types import Detections
from training.data.data_config import DataConfig
from training.data.kitti_dataset import KittiDataset
from training.evaluate_task import predict_annotations

REPO = Path(__file__).resolve().parents[2]


class _FixedDetector:
    """A task double: the same two boxes for every frame, one 15 m ahead, one 15 m behind the sensor."""

    def __init__(self, cfg):
        self.cfg = cfg

    def predict(self, batch):
        boxes = np.array([[15.0, 0.0, -0.9, 4.0, 1.7, 1.5, 0.0], [-15.0, 0.0, -0.9, 4.0, 1.7, 1.5, 0.0]],
                         dtype=np.float32)
        return [Detections(boxes, np.array([0.9, 0.8], np.float32), np.zeros(2, np.int64), ("Car", "Pedestrian",
                                                                                              "Cyclist"))
                for _ in range(batch.batch_size)]


def test_predictions_keep_only_boxes_in_the_camera_view(kitti_sample):
    cfg = load_detector_config(REPO / "config" / "pointpillars_tiny.yaml")
    dataset = KittiDataset(DataConfig(root=str(kitti_sample), fov_crop=False, class_names=tuple(cfg.class_names),
                                      point_cloud_range=tuple(cfg.point_cloud_range)), "train")
    gt, dt, ids = predict_annotations(_FixedDetector(cfg), dataset, 2, 0, torch.device("cpu"), max_frames=2)
    assert len(gt) == len(dt) == len(ids) == 2
    for rows in dt:
        assert len(rows) == 1  # the box behind the sensor is gone
        assert rows.location[0, 2] > 10.0  # camera z (forward) of the box ahead
        assert rows.bbox[0, 2] > rows.bbox[0, 0]
