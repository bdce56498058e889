"""Dataclass configs of the data pipeline; defaults are the KITTI reference values (docs METHOD.md section 1).

Plain dataclasses: the YAML loader fills them. Voxel settings belong to the model config; VoxelConfig is its
data-side view (what the collate needs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

VOXEL_POINT_CLOUD_RANGE = (0.0, -40.0, -3.0, 70.4, 40.0, 1.0)
PILLAR_POINT_CLOUD_RANGE = (0.0, -39.68, -3.0, 69.12, 39.68, 1.0)
KITTI_CLASSES = ("Car", "Pedestrian", "Cyclist")


@dataclass
class DataConfig:
    root: str = "data/kitti"  # KITTI object layout: training/{velodyne,label_2,calib}, testing/, ImageSets/
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"  # the split read from testing/ (no labels); every other split reads training/
    class_names: tuple[str, ...] = KITTI_CLASSES
    point_cloud_range: tuple[float, ...] = VOXEL_POINT_CLOUD_RANGE
    fov_crop: bool = True  # keep only points seen by the front camera (KITTI labels and evaluation cover only those)
    num_point_features: int = 4  # x, y, z, reflectance

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        self.point_cloud_range = tuple(float(v) for v in self.point_cloud_range)
        if len(self.point_cloud_range) != 6 or any(
                self.point_cloud_range[i] >= self.point_cloud_range[i + 3] for i in range(3)):
            raise ValueError(f"point_cloud_range must be [xmin, ymin, zmin, xmax, ymax, zmax], got {self.point_cloud_range}")
        if self.num_point_features < 3:
            raise ValueError(f"num_point_features must be >= 3, got {self.num_point_features}")


@dataclass
class GTSamplingConfig:
    database_path: str = "data/kitti/gt_database_train.npz"
    # "fill up to N objects of the class in the scene" (existing objects count)
    sample_counts: dict[str, int] = field(default_factory=lambda: {"Car": 15, "Pedestrian": 15, "Cyclist": 15})
    min_points: dict[str, int] = field(default_factory=lambda: {"Car": 5, "Pedestrian": 5, "Cyclist": 5})
    excluded_difficulties: tuple[int, ...] = (-1,)  # database objects of these KITTI difficulty levels are not pasted


@dataclass
class AugmentConfig:
    gt_sampling: bool = True
    gt_sampling_config: GTSamplingConfig = field(default_factory=GTSamplingConfig)
    random_flip_x: bool = True  # mirror about the x axis: y -> -y, yaw -> -yaw, with probability 0.5
    global_rotation: bool = True
    rotation_range: tuple[float, float] = (-math.pi / 4, math.pi / 4)
    global_scaling: bool = True
    scaling_range: tuple[float, float] = (0.95, 1.05)
    object_noise: bool = False  # per-object translation / rotation (SECOND); off in the KITTI reference configs
    object_translation_std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    object_rotation_range: tuple[float, float] = (-math.pi / 20, math.pi / 20)
    object_noise_attempts: int = 10  # noise draws tried per object; the first collision-free one is used
    shuffle_points: bool = True  # training: random point order, so max_voxels drops a random subset of voxels

    def __post_init__(self) -> None:
        if isinstance(self.gt_sampling_config, dict):
            self.gt_sampling_config = GTSamplingConfig(**self.gt_sampling_config)
        lo, hi = self.scaling_range
        if not 0 < lo <= hi:
            raise ValueError(f"scaling_range must satisfy 0 < low <= high, got {self.scaling_range}")
        if self.rotation_range[0] > self.rotation_range[1]:
            raise ValueError(f"rotation_range low > high: {self.rotation_range}")


@dataclass
class VoxelConfig:
    voxel_size: tuple[float, float, float] = (0.05, 0.05, 0.1)
    max_points_per_voxel: int = 5
    max_voxels_train: int = 16000
    max_voxels_test: int = 40000

    @classmethod
    def second(cls) -> "VoxelConfig":
        return cls()

    @classmethod
    def pointpillars(cls) -> "VoxelConfig":
        return cls(voxel_size=(0.16, 0.16, 4.0), max_points_per_voxel=32, max_voxels_train=16000, max_voxels_test=40000)

    def max_voxels(self, training: bool) -> int:
        return self.max_voxels_train if training else self.max_voxels_test
