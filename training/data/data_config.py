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
    # label folder (under training/) the train split reads: "label_all" = every object around the sensor (the
    # simulator's realistic preset writes it; for 360-degree models, with fov_crop false). Every other split reads
    # label_2, the camera-visible objects KITTI evaluation scores.
    train_labels: str = "label_2"

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        self.point_cloud_range = tuple(float(v) for v in self.point_cloud_range)
        if len(self.point_cloud_range) != 6 or any(
                self.point_cloud_range[i] >= self.point_cloud_range[i + 3] for i in range(3)):
            raise ValueError(f"point_cloud_range must be [xmin, ymin, zmin, xmax, ymax, zmax], got {self.point_cloud_range}")
        if self.num_point_features < 3:
            raise ValueError(f"num_point_features must be >= 3, got {self.num_point_features}")
        if not self.train_labels or "/" in self.train_labels or self.train_labels in (".", ".."):
            raise ValueError(f"train_labels must be a folder name under training/, e.g. label_all, got "
                             f"{self.train_labels!r}")
        if self.train_labels != "label_2" and self.fov_crop:
            raise ValueError(f"train_labels {self.train_labels!r} holds objects outside the camera's view: set "
                             f"fov_crop: false (the crop would leave their boxes without points)")


def camera_crop_for(point_cloud_range) -> bool:
    """Whether a model with this range is evaluated on camera-cropped points: yes for a front model (x_min >= 0),
    no for one that sees behind the car, which gets whole scans (evaluation then keeps the boxes the camera sees)."""
    return float(point_cloud_range[0]) >= 0.0


@dataclass
class GTSamplingConfig:
    database_path: str = "data/kitti/gt_database_train.npz"
    # "fill up to N objects of the class in the scene" (existing objects count)
    sample_counts: dict[str, int] = field(default_factory=lambda: {"Car": 15, "Pedestrian": 15, "Cyclist": 15})
    min_points: dict[str, int] = field(default_factory=lambda: {"Car": 5, "Pedestrian": 5, "Cyclist": 5})
    excluded_difficulties: tuple[int, ...] = (-1,)  # database objects of these KITTI difficulty levels are not pasted


@dataclass
class SensorVariationConfig:
    """Sensor-generalisation augmentations (issue 14; docs/SIM_TO_REAL.md "Sensor augmentations"), each off by
    default. Applied after GT sampling (pasted objects vary too): beam reduction -> density dropout -> intensity;
    the mounting change comes last, after the global transforms. Angles in radians (SensorMount convention:
    pitch positive = nose down, roll positive = left side up)."""

    beam_reduction: bool = False  # with beam_reduction_probability: keep every beam_keep_every-th laser row
    beam_reduction_probability: float = 0.5
    # 2: a 64-beam scan becomes a 32-beam one (random phase: even or odd rows); a list, e.g. [2, 4]: each reduced
    # frame draws one of them (32 or 16 rows), for sensors sparser than 32 rows
    beam_keep_every: int | list[int] = 2
    density_dropout: bool = False  # keep each point with a probability drawn per frame from density_keep_range
    density_keep_range: tuple[float, float] = (0.5, 1.0)
    intensity: bool = False  # intensity -> clip(scale * intensity ** gamma, 0, 1)
    intensity_scale_range: tuple[float, float] = (0.6, 1.4)
    intensity_gamma_range: tuple[float, float] = (0.7, 1.4)
    mounting_height: bool = False  # the sensor mounted higher (+) or lower (-) by a draw from height_shift_range (m)
    height_shift_range: tuple[float, float] = (-0.3, 0.3)
    mounting_tilt: bool = False  # pitch and roll drawn from their ranges
    pitch_range: tuple[float, float] = (-0.035, 0.035)
    roll_range: tuple[float, float] = (-0.035, 0.035)

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.beam_reduction_probability <= 1.0, "beam_reduction_probability must be in [0, 1]"),
            (len(self.beam_keep_choices) > 0 and all(isinstance(k, int) and k >= 1 for k in self.beam_keep_choices),
             "beam_keep_every must be an integer >= 1 or a non-empty list of them"),
            (0.0 <= self.density_keep_range[0] <= self.density_keep_range[1] <= 1.0,
             "density_keep_range must be [low, high] with 0 <= low <= high <= 1"),
            (0.0 <= self.intensity_scale_range[0] <= self.intensity_scale_range[1],
             "intensity_scale_range must be [low, high] with 0 <= low <= high"),
            (0.0 < self.intensity_gamma_range[0] <= self.intensity_gamma_range[1],
             "intensity_gamma_range must be [low, high] with 0 < low <= high"),
            (self.height_shift_range[0] <= self.height_shift_range[1], "height_shift_range low > high"),
        ]
        for name in ("pitch_range", "roll_range"):
            lo, hi = getattr(self, name)
            checks.append((-math.pi / 4 <= lo <= hi <= math.pi / 4, f"{name} must be [low, high] radians within +-pi/4"))
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def beam_keep_choices(self) -> tuple:
        """beam_keep_every as a tuple of the row steps a reduced frame draws from (one for an integer setting)."""
        keep = self.beam_keep_every
        return tuple(keep) if isinstance(keep, (list, tuple)) else (keep,)

    @property
    def any_enabled(self) -> bool:
        return self.beam_reduction or self.density_dropout or self.intensity or self.mounting_height or self.mounting_tilt


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
    sensor: SensorVariationConfig = field(default_factory=SensorVariationConfig)  # all off by default

    def __post_init__(self) -> None:
        if isinstance(self.gt_sampling_config, dict):
            self.gt_sampling_config = GTSamplingConfig(**self.gt_sampling_config)
        if isinstance(self.sensor, dict):
            self.sensor = SensorVariationConfig(**self.sensor)
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
