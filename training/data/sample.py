"""Typed values of the data pipeline: one frame (Sample) and a collated mini-batch (Batch)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from clean_ros.cloud.kitti import Calibration, KittiObjects
from clean_ros.inference.voxelize import Voxels, VoxelStats


def class_indices(names: np.ndarray, class_names: tuple[str, ...]) -> np.ndarray:
    """Index of each name in class_names, -1 where absent (int64)."""
    match = np.asarray(names).astype(str).reshape(-1, 1) == np.asarray(class_names, dtype=str).reshape(1, -1)
    return np.where(match.any(1), match.argmax(1), -1).astype(np.int64)


@dataclass
class Sample:
    """One frame, LiDAR frame, numpy.

    gt_boxes (M, 7) float32 x, y, z centre, l, w, h, yaw: the training targets (DontCare excluded; classes outside
    class_names kept with label -1 so that they are known obstacles, but not trained on). gt_labels (M,) int64,
    gt_names (M,) str, gt_difficulty (M,) int64 (KITTI 0/1/2, -1 none; sampled objects keep their own).
    annotations: every label row of the file (camera frame, incl. DontCare), untouched by augmentation: for evaluation.
    """

    frame_id: str
    points: np.ndarray  # (N, F) float32, x y z reflectance
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_names: np.ndarray
    gt_difficulty: np.ndarray
    calib: Calibration | None = None
    annotations: KittiObjects | None = None

    def __post_init__(self) -> None:
        m = len(self.gt_boxes)
        if self.gt_boxes.shape != (m, 7) or not (len(self.gt_labels) == len(self.gt_names) == len(self.gt_difficulty) == m):
            raise ValueError(f"{self.frame_id}: inconsistent ground truth: boxes {self.gt_boxes.shape}, labels "
                             f"{len(self.gt_labels)}, names {len(self.gt_names)}, difficulty {len(self.gt_difficulty)}")

    @property
    def num_boxes(self) -> int:
        return len(self.gt_boxes)

    def with_points_and_boxes(self, points: np.ndarray, gt_boxes: np.ndarray) -> "Sample":
        """A copy with new points and boxes (same objects: labels, names and difficulty unchanged)."""
        return replace(self, points=points, gt_boxes=gt_boxes)

    def select_boxes(self, mask: np.ndarray) -> "Sample":
        return replace(self, gt_boxes=self.gt_boxes[mask], gt_labels=self.gt_labels[mask], gt_names=self.gt_names[mask],
                       gt_difficulty=self.gt_difficulty[mask])


@dataclass
class Batch:
    """A collated mini-batch: voxels of all frames (coords[:, 0] = batch index) and padded targets.

    gt_boxes (B, Mmax, 7) float32 zero-padded; gt_labels (B, Mmax) int64, -1 for padding and untrained classes.
    extra_voxels: the same clouds voxelised with other models' settings (name -> Voxels), e.g. "teacher": a
    distillation teacher voxelises the raw points itself, never the student's voxels (whose caps drop points).
    """

    voxels: Voxels
    gt_boxes: torch.Tensor
    gt_labels: torch.Tensor
    frame_ids: list[str]
    batch_size: int
    voxel_stats: VoxelStats | None = None
    calibs: list[Calibration | None] = field(default_factory=list)
    annotations: list[KittiObjects | None] = field(default_factory=list)
    extra_voxels: dict[str, Voxels] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        def move(v: Voxels) -> Voxels:
            return Voxels(*(t.to(device, non_blocking=non_blocking) for t in v))
        return replace(self, voxels=move(self.voxels), gt_boxes=self.gt_boxes.to(device, non_blocking=non_blocking),
                       gt_labels=self.gt_labels.to(device, non_blocking=non_blocking),
                       extra_voxels={name: move(v) for name, v in self.extra_voxels.items()})

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True)
        def pin(v: Voxels) -> Voxels:
            return Voxels(*(t.pin_memory() for t in v))
        return replace(self, voxels=pin(self.voxels), gt_boxes=self.gt_boxes.pin_memory(),
                       gt_labels=self.gt_labels.pin_memory(),
                       extra_voxels={name: pin(v) for name, v in self.extra_voxels.items()})

    @property
    def num_gt(self) -> torch.Tensor:
        """(B,) number of real (non-padding) boxes per frame, counting untrained classes."""
        return (self.gt_boxes[..., 3:6] > 0).all(-1).sum(1)
