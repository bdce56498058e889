"""KITTI object-detection dataset: reads the official layout and yields Sample values in the LiDAR frame.

Layout under DataConfig.root:
    training/{velodyne,label_2,calib}/<id>.{bin,txt,txt}   (image_2/<id>.png optional: only its size is read)
    testing/{velodyne,calib}/
    ImageSets/<split>.txt   (one frame id per line; when absent the split is every frame of its directory, sorted)
The test split (DataConfig.test_split) reads testing/, every other split reads training/.

Per frame (__getitem__): load -> [camera field-of-view crop] -> augmentation (training only) -> range crop of points
(half-open, as the voxeliser) and of boxes (BEV centre inside the range).
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from clean_ros.cloud.kitti import (DEFAULT_IMAGE_SHAPE, Calibration, KittiFormatError, KittiObjects,
                                   boxes_camera_to_lidar, difficulty_levels, frames_without, read_labels,
                                   read_velodyne, split_frame_ids)
from training.data.data_config import DataConfig
from training.data.sample import Sample, class_indices

DONT_CARE = "DontCare"


class KittiLayoutError(KittiFormatError):
    """The directory does not have the KITTI object layout (missing folder, missing frame, empty split)."""


# --------------------------------------------------------------------------- file readers
def read_png_shape(path: str | Path) -> tuple[int, int] | None:
    """(height, width) from a PNG header, or None if the file is absent or not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(height), int(width)


# --------------------------------------------------------------------------- crops
def camera_fov_mask(points: np.ndarray, calib: Calibration, image_shape: tuple[int, int]) -> np.ndarray:
    """(N,) True for points in front of the camera that project inside the image (what KITTI labels cover)."""
    lidar_to_rect = np.eye(4)
    lidar_to_rect[:3, :3] = calib.R0
    lidar_to_rect = lidar_to_rect @ np.vstack([calib.V2C, [0.0, 0.0, 0.0, 1.0]])
    # one 3x4 LiDAR -> image matrix, applied in float32: a mask does not need float64 and the scan is 120k points
    m = (calib.P2 @ lidar_to_rect).astype(np.float32)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    # Element-wise, not a matmul: multi-threaded OpenBLAS stalls for tens of ms on a busy machine.
    proj_u, proj_v, proj_w = (m[i, 0] * x + m[i, 1] * y + m[i, 2] * z + m[i, 3] for i in range(3))
    depth = proj_w - np.float32(calib.P2[2, 3])  # rect z: P2's last row is (0, 0, 1, p23)
    height, width = image_shape
    with np.errstate(invalid="ignore", divide="ignore"):
        u = proj_u / proj_w
        v = proj_v / proj_w
        return (depth > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)


def points_in_range_mask(points: np.ndarray, point_cloud_range) -> np.ndarray:
    """Half-open [min, max) per axis, like the voxeliser."""
    r = np.asarray(point_cloud_range, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        return ((points[:, :3] >= r[:3]) & (points[:, :3] < r[3:])).all(1)


def boxes_in_range_mask(boxes: np.ndarray, point_cloud_range) -> np.ndarray:
    """Boxes whose BEV centre lies inside the range (closed) are kept as training targets."""
    r = point_cloud_range
    return (boxes[:, 0] >= r[0]) & (boxes[:, 0] <= r[3]) & (boxes[:, 1] >= r[1]) & (boxes[:, 1] <= r[4])


def crop_to_range(sample: Sample, point_cloud_range) -> Sample:
    sample = sample.with_points_and_boxes(sample.points[points_in_range_mask(sample.points, point_cloud_range)],
                                          sample.gt_boxes)
    return sample.select_boxes(boxes_in_range_mask(sample.gt_boxes, point_cloud_range))


def ground_truth_from_annotations(annotations: KittiObjects, calib: Calibration,
                                  class_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (M,7) float32 LiDAR frame, labels, names, difficulty) of every non-DontCare row."""
    objects = annotations.select(annotations.names != DONT_CARE)
    boxes = boxes_camera_to_lidar(objects.location, objects.dimensions, objects.rotation_y, calib).astype(np.float32)
    return boxes, class_indices(objects.names, class_names), objects.names.astype(str), difficulty_levels(objects)


# --------------------------------------------------------------------------- dataset
class KittiDataset(torch.utils.data.Dataset):
    """Frames of one split as Sample values.

    augmentor: callable (Sample, np.random.Generator) -> Sample, applied when training. The generator of frame i is
    seeded by (seed, epoch, i): the same frame gets the same augmentation whatever the worker or batch order.
    """

    def __init__(self, config: DataConfig, split: str, training: bool = False,
                 augmentor: Callable[[Sample, np.random.Generator], Sample] | None = None, seed: int = 0):
        self.config = config
        self.split = split
        self.training = training
        self.augmentor = augmentor
        self.seed = int(seed)
        self.epoch = 0
        self.root = Path(config.root)
        if not self.root.is_dir():
            raise KittiLayoutError(f"{self.root}: KITTI root directory not found")
        self.split_dir = self.root / ("testing" if split == config.test_split else "training")
        # the train split may read all-around labels (DataConfig.train_labels); evaluation splits read label_2
        self.label_dir = config.train_labels if split == config.train_split else "label_2"
        self.has_labels = (self.split_dir / self.label_dir).is_dir()
        for sub in ("velodyne", "calib"):
            if not (self.split_dir / sub).is_dir():
                raise KittiLayoutError(f"{self.split_dir / sub}: missing; expected the KITTI object layout "
                                       f"<root>/{{training,testing}}/{{velodyne,calib,label_2}}")
        if self.split_dir.name == "training" and not self.has_labels:
            raise KittiLayoutError(f"{self.split_dir / self.label_dir}: missing; split {split!r} needs labels")
        self.frame_ids = self._read_frame_ids()

    def _read_frame_ids(self) -> list[str]:
        # ImageSets/<split>.txt when it exists, else every scan of the split folder
        try:
            _, frame_ids, source = split_frame_ids(self.split_dir, self.split, listing_required=False)
        except ValueError as exc:
            raise KittiLayoutError(f"{exc} (split {self.split!r})") from None
        missing = frames_without(self.split_dir, frame_ids)
        if missing:
            raise KittiLayoutError(f"{source}: {len(missing)} listed frame(s) have no scan in "
                                   f"{self.split_dir / 'velodyne'}, e.g. {missing[:3]}")
        return frame_ids

    def __len__(self) -> int:
        return len(self.frame_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def load_frame(self, frame_id: str) -> Sample:
        """One frame as stored (field-of-view crop if configured), no augmentation, no range crop."""
        d = self.split_dir
        points = read_velodyne(d / "velodyne" / f"{frame_id}.bin", self.config.num_point_features)
        calib = Calibration.from_file(d / "calib" / f"{frame_id}.txt")
        if self.config.fov_crop:
            shape = read_png_shape(d / "image_2" / f"{frame_id}.png") or DEFAULT_IMAGE_SHAPE
            points = points[camera_fov_mask(points, calib, shape)]
        if self.has_labels:
            annotations = read_labels(d / self.label_dir / f"{frame_id}.txt")
        else:
            annotations = KittiObjects.empty()
        boxes, labels, names, difficulty = ground_truth_from_annotations(annotations, calib, self.config.class_names)
        return Sample(frame_id=frame_id, points=points, gt_boxes=boxes, gt_labels=labels, gt_names=names,
                      gt_difficulty=difficulty, calib=calib, annotations=annotations)

    def __getitem__(self, index: int) -> Sample:
        sample = self.load_frame(self.frame_ids[index])
        if self.training and self.augmentor is not None:
            sample = self.augmentor(sample, np.random.default_rng((self.seed, self.epoch, int(index))))
        return crop_to_range(sample, self.config.point_cloud_range)
