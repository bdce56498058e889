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
    # Options of the realistic preset (0 = off, today's behaviour; see PRESETS):
    beam_gain_spread: float = 0.0  # relative std of each laser's intensity gain (HDL-64E lasers differ: ring stripes)
    beam_dropout_spread: float = 0.0  # each laser loses up to this much more of its returns (uniform per laser)
    min_signal: float = 0.0  # a return is lost when albedo * cos(incidence) * (20 m / range)^2 falls below this
    vegetation_porosity: float = 0.0  # probability that a ray passes through a vegetation primitive
    vegetation_depth: float = 0.0  # m, mean depth at which a ray is returned inside foliage (exponential)
    glass_porosity: float = 0.0  # probability that a ray passes through a window (to the seats behind it)
    # weak far echoes read reflectance 0: the chance rises linearly from 0 at the first range to 1 at the second
    # (m, for a surface of albedo 0.3; darker ones sooner, retroreflectors later). (0, 0) = off. Real KITTI scans:
    # ~25 % zeros at 30-40 m, ~50 % at 40-50 m, ~80 % beyond 50 m.
    weak_echo_range: tuple[float, float] = (0.0, 0.0)
    # height of the lasers above the sensor origin (upper block, lower block), m: a real HDL-64's lasers sit above
    # the origin of its cloud, so a row's apparent elevation drifts with range (measured on KITTI: ~0.22 / ~0.12 m)
    laser_heights: tuple[float, float] = (0.0, 0.0)
    ego_vehicle: bool = False  # the carrying car's roof and a rig mast hide the lowest lasers in some directions
    ego_return_fraction: float = 0.0  # of the rays that hit the carrying car, this share returns (KITTI keeps a few)


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
    # Options of the realistic preset (0 / False = off, today's behaviour; see PRESETS and training/sim/roadside.py):
    max_camber: float = 0.0  # road cross-fall from the crown to the kerbs (dz/du), drawn uniformly up to this
    ground_roughness: float = 0.0  # m, amplitude of two short (4-15 m) ground waves
    intersection_probability: float = 0.0  # a crossing street (no kerb, cross traffic, free corners)
    extra_radius: float = 0.0  # m; > 0: the extra objects (outside the front region) lie within this range, so a
    # 360-degree model sees objects behind and beside the car about as densely as in front
    car_families: bool = False  # sedan / hatchback / estate / SUV / van shapes, number plates and lamps
    dark_car_fraction: float = 0.0  # of the cars, painted black or dark grey (few, weak returns at range)
    # with car_families: the bonnet falls this much (m, drawn uniformly) from the windscreen to the nose, so the front
    # of a car is lower than its tail as on real cars; (0, 0) = off (car_families.family_parts)
    bonnet_drop: tuple[float, float] = (0.0, 0.0)
    pedestrian_variety: bool = False  # children, standing / walking / bag-carrying poses
    # with pedestrian_variety: a walking person's stride spans the length drawn from KITTI's labels (its tight box as
    # long as KITTI's), not a random 50-100 % of it (people.pedestrian_variant); off = the released data's walkers
    full_stride: bool = False
    group_probability: float = 0.0  # a pedestrian comes with 1-3 companions walking together
    parked_row_probability: float = 0.0  # per kerb side: a row of parked cars, nose to tail
    riderless_bicycles: tuple[int, int] = (0, 0)  # parked bicycles (not labelled: KITTI labels ridden bikes only)
    # bicycle wheels as tyre and hub, open between (spoked wheels) instead of solid discs (shapes.bicycle_frame)
    spoked_wheels: bool = False
    hedges_per_100m: float = 0.0  # per side: hedges / bush clusters of porous foliage along the pavement
    fences_per_100m: float = 0.0  # per side: post-and-rail fences, guard rails
    street_furniture: tuple[int, int] = (0, 0)  # signs, bus shelters, hydrants, cones, planters, benches
    # upright person-sized things (saplings, shrubs, traffic lights, sign posts, kiosks, pillars, random stacks):
    # roadside.narrow_parts; tried as negatives for the real frames' narrow Pedestrian / Cyclist false positives, but
    # the shipped model already ignores them (docs/SIMULATOR.md)
    narrow_objects: tuple[int, int] = (0, 0)
    # cyclist- and small-car-sized things that are no labelled class (parked scooters, bin rows, containers, crowd
    # barriers, wall stubs, hedge pieces): roadside.lookalike_parts; the shipped model fires on some of them, but
    # training on them changed nothing on the real frames (docs/results/release_lookalikes)
    lookalikes: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class LabelConfig:
    min_points: int = 1  # an object needs this many returns (inside the camera image) to be labelled
    # blocked-ray fraction thresholds for KITTI occlusion 1, 2 and 3
    occlusion_thresholds: tuple[float, float, float] = (0.1, 0.5, 0.85)
    box_padding: float = 0.02  # m added to l, w, h so 2-decimal rounding keeps every point inside
    # grow a pedestrian's tight box along its heading to the KITTI-statistics length it was drawn with, as an
    # annotator's box (KITTI pedestrians: l 0.84 +- 0.23 m; the simulator's tight boxes: 0.56 +- 0.21)
    annotated_length: bool = False
    # also write label_all/: every object with returns all around the sensor (same KITTI text format, camera
    # coordinates), for training 360-degree models; label_2 stays the camera-visible objects KITTI evaluation scores
    write_all_around: bool = False


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


# Named starting points: a config file or dict is applied on top of its preset (key `preset`, or --preset).
# "default" is today's simulator (the running experiments' data); "realistic" turns on the elements that close the
# measured gap to real HDL-64E KITTI scans (docs/SIMULATOR.md) and labels all around the sensor.
PRESETS: dict[str, dict] = {
    "default": {},
    "realistic": {
        "sensor": {"beam_gain_spread": 0.12, "beam_dropout_spread": 0.04, "min_signal": 0.001,
                   "vegetation_porosity": 0.35, "vegetation_depth": 0.5, "glass_porosity": 0.5, "weak_echo_range": [15.0, 70.0],
                   "lower_block_deg": [-8.83, -23.9], "laser_heights": [0.22, 0.12], "ego_vehicle": True,
                   "ego_return_fraction": 0.002, "min_range": 1.0},
        "scene": {"cars": [3, 14], "pedestrians": [0, 7], "cyclists": [0, 3], "extra_objects": [10, 24],
                  "extra_radius": 45.0,
                  "max_ground_slope": 0.015, "max_camber": 0.03, "ground_roughness": 0.06,
                  "intersection_probability": 0.3, "clutter": [12, 28], "trees_per_100m": 14.0,
                  "car_families": True, "dark_car_fraction": 0.25, "pedestrian_variety": True,
                  "group_probability": 0.25, "parked_row_probability": 0.5, "riderless_bicycles": [0, 4],
                  "hedges_per_100m": 20.0, "fences_per_100m": 3.0, "street_furniture": [6, 16]},
        "labels": {"write_all_around": True},
    },
}


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
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise SimConfigError(f"{key}: expected true or false, got {value!r}")
            kwargs[name] = value
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


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config_from_dict(values: dict | None, source: str = "<config>", preset: str | None = None) -> SimConfig:
    """A SimConfig from `values` applied on top of a preset (argument `preset`, else the key `preset`, else default)."""
    if values is not None and not isinstance(values, dict):
        raise SimConfigError(f"{source}: expected a mapping, got {type(values).__name__}")
    values = dict(values or {})
    name = values.pop("preset", None) if preset is None else preset
    values.pop("preset", None)
    name = "default" if name is None else name
    if name not in PRESETS:
        raise SimConfigError(f"{source}: unknown preset {name!r}; known: {sorted(PRESETS)}")
    cfg = _build(SimConfig, _merged(PRESETS[name], values), source)
    _validate(cfg, source)
    return cfg


def load_config(path: str | Path | None, preset: str | None = None) -> SimConfig:
    """The config of a YAML file (None: no file) on top of `preset` (None: the file's `preset` key, else default)."""
    if path is None:
        return config_from_dict({}, f"preset {preset or 'default'}", preset)
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SimConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SimConfigError(f"{path}: not valid YAML: {exc}") from None
    if values is not None and not isinstance(values, dict):
        raise SimConfigError(f"{path}: expected a mapping of sections, got {type(values).__name__}")
    return config_from_dict(values, str(path), preset)


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
    for name in ("beam_gain_spread", "beam_dropout_spread", "min_signal", "vegetation_depth"):
        checks.append((getattr(s, name) >= 0, f"sensor.{name} must be >= 0"))
    checks.append((0 <= s.vegetation_porosity < 1, "sensor.vegetation_porosity must be in [0, 1)"))
    checks.append((0 <= s.glass_porosity < 1, "sensor.glass_porosity must be in [0, 1)"))
    checks.append((0 <= s.ego_return_fraction <= 1, "sensor.ego_return_fraction must be a probability in [0, 1]"))
    checks.append((s.weak_echo_range == (0.0, 0.0) or 0 <= s.weak_echo_range[0] < s.weak_echo_range[1],
                   "sensor.weak_echo_range must be [start, end] with 0 <= start < end (or [0, 0]: off)"))
    sc = cfg.scene
    for name in ("dark_car_fraction", "group_probability", "parked_row_probability", "intersection_probability"):
        checks.append((0 <= getattr(sc, name) <= 1, f"scene.{name} must be a probability in [0, 1]"))
    lo, hi = cfg.scene.bonnet_drop
    checks.append((0 <= lo <= hi <= 0.5, "scene.bonnet_drop must be [low, high] m with 0 <= low <= high <= 0.5"))
    for name in ("hedges_per_100m", "fences_per_100m", "max_camber", "ground_roughness", "extra_radius"):
        checks.append((getattr(sc, name) >= 0, f"scene.{name} must be >= 0"))
    for name in ("cars", "pedestrians", "cyclists", "misc", "extra_objects", "lanes", "clutter", "riderless_bicycles",
                 "street_furniture", "narrow_objects", "lookalikes"):
        lo, hi = getattr(cfg.scene, name)
        checks.append((0 <= lo <= hi, f"scene.{name} must be [low, high] with 0 <= low <= high"))
    checks.append((cfg.scene.lanes[0] >= 1, "scene.lanes needs at least one lane"))
    checks.append((not sc.full_stride or sc.pedestrian_variety,
                   "scene.full_stride needs scene.pedestrian_variety (the walking poses it lengthens)"))
    for ok, message in checks:
        if not ok:
            raise SimConfigError(f"{source}: {message}")
