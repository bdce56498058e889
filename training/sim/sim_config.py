"""Simulator options: dataclasses with defaults, loadable from a YAML file with strict key checking."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class SimConfigError(ValueError):
    """A config file or value the simulator cannot use; the message names the file and key."""


@dataclass(frozen=True)
class SensorConfig:
    """Velodyne HDL-64E as mounted on the KITTI car."""

    mount_height: float = 1.73  # m above the ground under the sensor
    # Upper block: 32 lasers from +2.0 deg to -8.33 deg; lower block: 32 lasers from -8.83 deg to -24.9 deg.
    upper_block_deg: tuple[float, float] = (2.0, -8.33)
    lower_block_deg: tuple[float, float] = (-8.83, -24.9)
    beams_per_block: int = 32
    # 0.18 deg (2000 columns) reproduces KITTI's ~120k points/scan (real scans hold ~2000 returns per laser).
    azimuth_resolution_deg: float = 0.18
    max_range: float = 120.0
    min_range: float = 2.5
    range_noise_std: float = 0.02  # m, along the ray
    dropout: float = 0.03  # base probability that a return is lost
    far_dropout: float = 0.5  # extra loss probability at max range, growing with (range / max_range) ** 2
    intensity_noise: float = 0.08  # relative


@dataclass(frozen=True)
class SceneConfig:
    """Street scenes; counts are per frame inside the evaluated region (0 < x < 70 m, |y| < 40 m)."""

    front_region: tuple[float, float, float] = (70.0, 40.0, 0.0)  # x max, |y| max, x min
    front_fov_deg: float = 40.0  # and within this azimuth of +x (the camera sees about +-40 deg)
    cars: tuple[int, int] = (6, 20)
    pedestrians: tuple[int, int] = (2, 10)
    cyclists: tuple[int, int] = (1, 6)
    misc: tuple[int, int] = (0, 1)
    van_fraction: float = 0.10  # of the cars, replaced by vans
    truck_fraction: float = 0.04
    extra_objects: tuple[int, int] = (3, 12)  # cars/peds/cyclists outside the front region (behind, far)
    lanes: tuple[int, int] = (2, 4)
    lane_width: float = 3.5
    max_road_heading_deg: float = 10.0
    max_ground_slope: float = 0.01
    max_undulation: float = 0.08  # m amplitude
    parking_lot_probability: float = 0.4
    building_probability: float = 0.7  # per roadside segment
    trees_per_100m: float = 8.0
    poles_per_100m: float = 5.0
    clutter: tuple[int, int] = (4, 14)


@dataclass(frozen=True)
class LabelConfig:
    min_points: int = 1  # an object needs this many returns (inside the camera image) to be labelled
    # blocked-ray fraction thresholds for KITTI occlusion 1, 2 and 3
    occlusion_thresholds: tuple[float, float, float] = (0.1, 0.5, 0.85)
    box_padding: float = 0.02  # m added to l, w, h so 2-decimal rounding keeps every point inside


@dataclass(frozen=True)
class DatasetConfig:
    val_fraction: float = 0.2
    test_frames: int = 0  # unlabelled frames under testing/


@dataclass(frozen=True)
class SimConfig:
    sensor: SensorConfig = field(default_factory=SensorConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise SimConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SimConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    defaults = cls()
    for name, value in values.items():
        default = getattr(defaults, name)
        key = f"{where}.{name}"
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, key)
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise SimConfigError(f"{key}: expected a list of {len(default)} numbers, got {value!r}")
            kwargs[name] = tuple(_number(v, type(d), key) for v, d in zip(value, default))
        else:
            kwargs[name] = _number(value, type(default), key)
    return cls(**kwargs)


def _number(value, kind, key):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise SimConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return kind(value)


def config_from_dict(values: dict | None, source: str = "<config>") -> SimConfig:
    cfg = _build(SimConfig, values or {}, source)
    _validate(cfg, source)
    return cfg


def load_config(path: str | Path | None) -> SimConfig:
    if path is None:
        return SimConfig()
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SimConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SimConfigError(f"{path}: not valid YAML: {exc}") from None
    return config_from_dict(values, str(path))


def _validate(cfg: SimConfig, source: str) -> None:
    s = cfg.sensor
    checks = [
        (0.01 <= s.azimuth_resolution_deg <= 5.0, "sensor.azimuth_resolution_deg must be in [0.01, 5]"),
        (s.beams_per_block >= 1, "sensor.beams_per_block must be >= 1"),
        (0 < s.min_range < s.max_range, "sensor: need 0 < min_range < max_range"),
        (0 <= s.dropout < 1 and 0 <= s.far_dropout <= 1, "sensor.dropout / far_dropout must be probabilities"),
        (0 <= cfg.dataset.val_fraction < 1, "dataset.val_fraction must be in [0, 1)"),
        (cfg.dataset.test_frames >= 0, "dataset.test_frames must be >= 0"),
        (cfg.labels.min_points >= 1, "labels.min_points must be >= 1"),
    ]
    for name in ("cars", "pedestrians", "cyclists", "misc", "extra_objects", "lanes", "clutter"):
        lo, hi = getattr(cfg.scene, name)
        checks.append((0 <= lo <= hi, f"scene.{name} must be [low, high] with 0 <= low <= high"))
    checks.append((cfg.scene.lanes[0] >= 1, "scene.lanes needs at least one lane"))
    for ok, message in checks:
        if not ok:
            raise SimConfigError(f"{source}: {message}")
