"""Random street scenes: road with kerbs and pavements, buildings, poles, trees, clutter, and road users.

Objects are placed by rejection sampling in road coordinates (along s, lateral u) with an oriented-footprint
overlap test; their sizes follow KITTI's class statistics.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import numpy as np

from clean_ros.cloud.kitti import normalize_yaw_np
from training.sim.sim_config import SceneConfig, SensorConfig
from training.sim.ground import Ground
from training.sim import shapes
from training.sim.car_families import family_parts, sample_family
from training.sim.people import pedestrian_variant
from training.sim.roadside import add_roadside_extras
from training.sim.shapes import Material, PartList, Primitives, local_bounds, rot_z, transform

# KITTI class size statistics: mean and std of (h, w, l), with clipping bounds.
SIZE_STATS = {
    "Car": ((1.53, 1.63, 3.88), (0.14, 0.10, 0.43), (1.3, 1.4, 3.0), (2.0, 2.0, 5.2)),
    "Van": ((2.21, 1.90, 5.08), (0.30, 0.13, 0.50), (1.8, 1.7, 4.2), (2.8, 2.3, 6.2)),
    "Truck": ((3.25, 2.59, 10.1), (0.45, 0.19, 2.5), (2.6, 2.2, 6.0), (4.0, 2.9, 16.0)),
    "Pedestrian": ((1.76, 0.66, 0.84), (0.11, 0.14, 0.23), (1.45, 0.45, 0.35), (2.0, 0.95, 1.2)),
    "Cyclist": ((1.74, 0.60, 1.76), (0.09, 0.12, 0.18), (1.5, 0.45, 1.4), (1.95, 0.85, 2.1)),
    "Misc": ((1.6, 1.6, 3.0), (0.4, 0.3, 0.8), (1.0, 1.0, 1.5), (2.6, 2.4, 5.0)),
}


class Scene(NamedTuple):
    ground: Ground | None
    prims: Primitives  # world (LiDAR) frame; owner indexes names/boxes
    names: np.ndarray  # (M,) KITTI class of each object
    boxes: np.ndarray  # (M, 7) tight LiDAR boxes (x, y, z centre, l, w, h, yaw)
    annotated_length: np.ndarray | None = None  # (M,) an annotator's box length per object, 0 = none (PartList)


def sample_size(name: str, rng: np.random.Generator) -> tuple[float, float, float]:
    mean, std, low, high = (np.array(v) for v in SIZE_STATS[name])
    h, w, l = np.clip(rng.normal(mean, std), low, high)
    return float(l), float(w), float(h)


def model_parts(name: str, rng: np.random.Generator, cfg: SceneConfig | None = None) -> PartList:
    """Parts of one object of KITTI class `name`; cfg's realistic options choose car families / pedestrian variety."""
    if cfg is not None and cfg.car_families and name in ("Car", "Van"):
        return family_parts(sample_family(name, rng), rng, cfg.dark_car_fraction, cfg.bonnet_drop)
    if cfg is not None and cfg.pedestrian_variety and name == "Pedestrian":
        return pedestrian_variant(sample_size(name, rng), rng, full_stride=cfg.full_stride)[0]
    l, w, h = sample_size(name, rng)
    if name == "Car":
        return shapes.car_parts(l, w, h, rng)
    if name == "Van":
        return shapes.car_parts(l, w, h, rng, van=True)
    if name == "Truck":
        return shapes.truck_parts(l, w, h, rng)
    if name == "Pedestrian":
        phase = rng.choice([-1, 1]) * (rng.uniform(0.6, 1.0) if rng.random() < 0.8 else rng.uniform(0.0, 0.3))
        return shapes.pedestrian_parts(l, w, h, rng, phase=phase)
    if name == "Cyclist":
        return shapes.cyclist_parts(l, w, h, rng, spoked=cfg is not None and cfg.spoked_wheels)
    if name == "Misc":
        return shapes.trailer_parts(l, w, h, rng)
    raise ValueError(f"no model for class {name!r}")


@dataclass
class PlacedObject:
    prims: Primitives  # world frame
    box: np.ndarray  # (7,) tight box
    annotated_length: float = 0.0  # PartList.annotated_length


def place(parts: PartList, x: float, y: float, ground_z: float, yaw: float, rng: np.random.Generator,
          owner: int = -1) -> PlacedObject:
    local = parts.build(rng, owner)
    lo, hi = local_bounds(local)
    rotation = rot_z(yaw)
    translation = np.array([x, y, ground_z])
    centre = rotation @ ((lo + hi) / 2) + translation
    size = hi - lo
    return PlacedObject(transform(local, rotation, translation), np.array([*centre, *size, normalize_yaw_np(yaw)]),
                        float(parts.annotated_length))


def footprints_overlap(box: np.ndarray, others: np.ndarray, margin: float = 0.3) -> bool:
    """Separating-axis test of one BEV rectangle (x, y, l, w, yaw) against K others, vectorised."""
    if len(others) == 0:
        return False
    boxes = np.vstack([box[None], others])
    c, s = np.cos(boxes[:, 4]), np.sin(boxes[:, 4])
    axes = np.stack([np.stack([c, s], 1), np.stack([-s, c], 1)], 1)  # (K+1, 2, 2) unit axes
    half = (boxes[:, 2:4] + margin) / 2
    delta = others[:, :2] - box[:2]
    candidate_axes = np.concatenate([np.broadcast_to(axes[0], (len(others), 2, 2)), axes[1:]], 1)  # (K, 4, 2)
    proj_a = np.abs(np.einsum("kad,bd->kab", candidate_axes, axes[0])) @ half[0]
    proj_b = np.abs(np.einsum("kad,kbd->kab", candidate_axes, axes[1:])) @ half[1:][..., None]
    dist = np.abs(np.einsum("kad,kd->ka", candidate_axes, delta))
    separated = (dist > proj_a + proj_b[..., 0]).any(1)
    return bool((~separated).any())


class SceneBuilder:
    """Accumulates background primitives, labelled objects and their footprints."""

    def __init__(self, ground: Ground | None, rng: np.random.Generator) -> None:
        self.ground = ground
        self.rng = rng
        self.background: list[Primitives] = []
        self.objects: list[PlacedObject] = []
        self.names: list[str] = []
        self.footprints = np.zeros((0, 5))
        self.object_footprints = np.zeros((0, 5))  # labelled objects (and the ego car) only

    def ground_z(self, x: float, y: float) -> float:
        return float(self.ground.height(np.float64(x), np.float64(y))) if self.ground is not None else -1.73

    def try_add(self, parts: PartList, x: float, y: float, yaw: float, name: str | None, margin: float = 0.3,
                objects_only: bool = False) -> bool:
        """Place parts unless their footprint overlaps another's; objects_only: test only against labelled objects
        (foliage may grow into trees, poles and walls, never into a car or a person)."""
        placed = place(parts, x, y, self.ground_z(x, y), yaw, self.rng, owner=len(self.objects) if name else -1)
        footprint = placed.box[[0, 1, 3, 4, 6]]
        if footprints_overlap(footprint, self.object_footprints if objects_only else self.footprints, margin):
            return False
        self.footprints = np.vstack([self.footprints, footprint])
        if name:
            self.object_footprints = np.vstack([self.object_footprints, footprint])
            self.objects.append(placed)
            self.names.append(name)
        else:
            self.background.append(placed.prims)
        return True

    def add_background(self, prims: Primitives, footprint: np.ndarray | None = None) -> None:
        self.background.append(prims)
        if footprint is not None:
            self.footprints = np.vstack([self.footprints, footprint])

    def build(self) -> Scene:
        prims = Primitives.concat(self.background + [o.prims for o in self.objects])
        boxes = np.array([o.box for o in self.objects]).reshape(-1, 7)
        return Scene(self.ground, prims, np.array(self.names, dtype="<U16"), boxes,
                     np.array([o.annotated_length for o in self.objects], dtype=np.float64))


# --------------------------------------------------------------------------- street scene
def sample_ground(cfg: SceneConfig, sensor: SensorConfig, rng: np.random.Generator) -> Ground:
    n_lanes = int(rng.integers(cfg.lanes[0], cfg.lanes[1] + 1))
    ego_lane = int(rng.integers(0, n_lanes))
    u_ego = -n_lanes * cfg.lane_width / 2 + (ego_lane + 0.5) * cfg.lane_width
    n_waves = 2
    wavelength = rng.uniform(30.0, 90.0, n_waves)
    direction = rng.uniform(0, 2 * np.pi, n_waves)
    k = 2 * np.pi / wavelength
    undulation = np.stack([rng.uniform(0, cfg.max_undulation, n_waves) / n_waves, k * np.cos(direction),
                           k * np.sin(direction), rng.uniform(0, 2 * np.pi, n_waves)], 1)
    ground = Ground(base=-sensor.mount_height,
                    slope=tuple(rng.uniform(-cfg.max_ground_slope, cfg.max_ground_slope, 2)),
                    undulation=undulation,
                    road_heading=float(np.deg2rad(rng.uniform(-cfg.max_road_heading_deg, cfg.max_road_heading_deg))),
                    road_centre=-u_ego, n_lanes=n_lanes, lane_width=cfg.lane_width,
                    kerb_height=float(rng.uniform(0.10, 0.18)), pavement_width=float(rng.uniform(2.0, 5.0)))
    if cfg.max_camber > 0 or cfg.ground_roughness > 0 or cfg.intersection_probability > 0:
        # realistic preset: drawn after the default's numbers
        n_short = 2 if cfg.ground_roughness > 0 else 0
        k = 2 * np.pi / rng.uniform(4.0, 15.0, n_short)
        direction = rng.uniform(0, 2 * np.pi, n_short)
        short = np.stack([rng.uniform(0, cfg.ground_roughness, n_short) / 2, k * np.cos(direction),
                          k * np.sin(direction), rng.uniform(0, 2 * np.pi, n_short)], 1)
        ground = replace(ground, undulation=np.concatenate([ground.undulation, short]),
                         camber=float(rng.uniform(0.0, cfg.max_camber)))
        if rng.random() < cfg.intersection_probability:
            ground = replace(ground, cross_centre=float(rng.uniform(-20.0, 60.0)),
                             cross_half_width=float(rng.integers(2, 4) * cfg.lane_width / 2))
    return ground


def sample_scene(cfg: SceneConfig, sensor: SensorConfig, rng: np.random.Generator) -> Scene:
    ground = sample_ground(cfg, sensor, rng)
    b = SceneBuilder(ground, rng)
    b.footprints = b.object_footprints = np.array([[-0.3, 0.0, 5.0, 2.2, 0.0]])  # the ego car
    hw, pw, heading = ground.road_half_width, ground.pavement_width, ground.road_heading
    s_range = (-90.0, 130.0)
    lot = None
    if rng.random() < cfg.parking_lot_probability:
        start = rng.uniform(0.0, 45.0)
        lot = (int(rng.choice([-1, 1])), start, start + rng.uniform(20.0, 40.0), rng.uniform(12.0, 30.0))
    if ground.cross_half_width > 0:
        _add_cross_street(b, ground, cfg)
    _add_kerbs(b, ground, s_range)
    _add_roadside(b, ground, cfg, s_range, lot)

    front_x_max, front_y_max, front_x_min = cfg.front_region

    def in_front(x, y):  # the evaluated region, inside the camera's field of view (KITTI labels only that)
        return front_x_min < x < front_x_max and abs(y) < front_y_max and abs(y) < x * np.tan(np.deg2rad(cfg.front_fov_deg))

    def populate(name_choice: Callable[[], str], slot: Callable[[str], tuple[float, float, float]], count: int,
                 front: bool):
        for _ in range(count):
            name = name_choice()
            parts = model_parts(name, rng, cfg)
            for _attempt in range(40):
                s, u, yaw = slot(name)
                x, y = ground.to_world(s, u)
                if in_front(x, y) == front and (front or not cfg.extra_radius or np.hypot(x, y) < cfg.extra_radius) \
                        and b.try_add(parts, float(x), float(y), yaw, name):
                    if name == "Pedestrian" and cfg.group_probability > 0 and rng.random() < cfg.group_probability:
                        _add_companions(b, cfg, float(x), float(y), yaw)
                    break

    def vehicle_name():
        r = rng.random()
        return "Truck" if r < cfg.truck_fraction else "Van" if r < cfg.truck_fraction + cfg.van_fraction else "Car"

    def vehicle_slot(name):
        s = rng.uniform(*s_range)
        r = rng.random()
        if lot is not None and name == "Car" and r < 0.3:
            side, s0, s1, depth = lot
            s = rng.uniform(s0, s1)
            u = side * (hw + pw + rng.uniform(2.5, depth))
            yaw = heading + rng.choice([np.pi / 2, -np.pi / 2, 0.0, np.pi]) + rng.normal(0, 0.1)
            return s, u, yaw
        if r < 0.65:  # moving in a lane; right-hand traffic: lanes right of the centre line go +s
            lane = int(rng.integers(0, ground.n_lanes))
            u = -hw + (lane + 0.5) * ground.lane_width + rng.normal(0, 0.2)
            return s, u, heading + (0.0 if u < 0 else np.pi) + rng.normal(0, 0.04)
        side = rng.choice([-1, 1])  # parked at the kerb, mostly facing the traffic of that side
        facing = (0.0 if side < 0 else np.pi) + (np.pi if rng.random() < 0.3 else 0.0)
        return s, side * (hw - 1.1), heading + facing + rng.normal(0, 0.05)

    def pedestrian_slot(_name):
        s, side = rng.uniform(*s_range), rng.choice([-1, 1])
        r = rng.random()
        if r < 0.2:  # crossing the road
            return s, rng.uniform(-hw, hw), heading + rng.choice([np.pi / 2, -np.pi / 2]) + rng.normal(0, 0.2)
        if r < 0.3 and lot is not None:
            side_l, s0, s1, depth = lot
            return rng.uniform(s0, s1), side_l * (hw + pw + rng.uniform(1.0, depth)), rng.uniform(-np.pi, np.pi)
        u = side * rng.uniform(hw + 0.4, hw + pw - 0.3)
        yaw = heading + rng.choice([0.0, np.pi]) + rng.normal(0, 0.15) if rng.random() < 0.7 else rng.uniform(-np.pi, np.pi)
        return s, u, yaw

    def cyclist_slot(_name):
        s, side = rng.uniform(*s_range), rng.choice([-1, 1])
        r = rng.random()
        if r < 0.6:
            u = side * (hw - 0.8)
        elif r < 0.85:
            u = side * rng.uniform(hw + 0.5, hw + pw - 0.4)
        else:
            return s, rng.uniform(-hw, hw), heading + rng.choice([np.pi / 2, -np.pi / 2]) + rng.normal(0, 0.2)
        return s, u, heading + (0.0 if u < 0 else np.pi) * (rng.random() < 0.85) + rng.normal(0, 0.08)

    def misc_slot(_name):
        side = rng.choice([-1, 1])
        return rng.uniform(*s_range), side * (hw - 1.0), heading + rng.choice([0.0, np.pi])

    count = lambda lo_hi: int(rng.integers(lo_hi[0], lo_hi[1] + 1))  # noqa: E731
    if cfg.parked_row_probability > 0:
        _add_parked_rows(b, ground, cfg, s_range)
    populate(vehicle_name, vehicle_slot, count(cfg.cars), front=True)
    populate(lambda: "Pedestrian", pedestrian_slot, count(cfg.pedestrians), front=True)
    populate(lambda: "Cyclist", cyclist_slot, count(cfg.cyclists), front=True)
    populate(lambda: "Misc", misc_slot, count(cfg.misc), front=True)
    extra = lambda: rng.choice(["Car", "Car", "Pedestrian", "Cyclist", "Van"])  # noqa: E731
    slots = {"Car": vehicle_slot, "Van": vehicle_slot, "Pedestrian": pedestrian_slot, "Cyclist": cyclist_slot}
    populate(extra, lambda n: slots[n](n), count(cfg.extra_objects), front=False)
    _add_clutter(b, ground, cfg, s_range)
    if (cfg.hedges_per_100m or cfg.fences_per_100m or cfg.street_furniture[1] or cfg.riderless_bicycles[1]
            or cfg.narrow_objects[1] or cfg.lookalikes[1]):
        add_roadside_extras(b, ground, cfg, s_range)
    return b.build()


def _add_cross_street(b: SceneBuilder, ground: Ground, cfg: SceneConfig) -> None:
    """An intersection: 1-4 vehicles on the crossing street, then its band beyond the main road is kept free of
    buildings, trees and clutter (footprints that only background placement tests against objects cannot see)."""
    rng = b.rng
    hw, centre, half = ground.road_half_width, ground.cross_centre, ground.cross_half_width
    for _ in range(int(rng.integers(1, 5))):
        side, lane = rng.choice([-1, 1]), rng.choice([-1, 1])
        s, u = centre + lane * half / 2 + rng.normal(0, 0.2), side * (hw + rng.uniform(3.0, 45.0))
        name = "Van" if rng.random() < cfg.van_fraction else "Car"
        x, y = ground.to_world(s, u)
        b.try_add(model_parts(name, rng, cfg), float(x), float(y), ground.road_heading + lane * np.pi / 2
                  + rng.normal(0, 0.04), name)
    for side in (-1, 1):
        x, y = ground.to_world(centre, side * (hw + 100.0))
        b.footprints = np.vstack([b.footprints, [x, y, 2 * half, 200.0, ground.road_heading]])


def _add_parked_rows(b: SceneBuilder, ground: Ground, cfg: SceneConfig, s_range) -> None:
    """Per kerb side, with probability parked_row_probability: cars parked nose to tail along 15-60 m."""
    rng = b.rng
    for side in (-1, 1):
        if rng.random() >= cfg.parked_row_probability:
            continue
        s = rng.uniform(s_range[0], s_range[1] - 20.0)
        end = s + rng.uniform(15.0, 60.0)
        while s < end:
            name = "Van" if rng.random() < cfg.van_fraction else "Car"
            facing = (0.0 if side < 0 else np.pi) + (np.pi if rng.random() < 0.2 else 0.0)
            centre = s + 2.4
            x, y = ground.to_world(centre, side * (ground.road_half_width - 1.1 + rng.normal(0, 0.08)))
            if b.try_add(model_parts(name, rng, cfg), float(x), float(y), ground.road_heading + facing
                         + rng.normal(0, 0.03), name, margin=0.2):
                s = centre + b.objects[-1].box[3] / 2 + rng.uniform(0.4, 2.0)
                if rng.random() < 0.1:  # a gap: a driveway, a missing car
                    s += rng.uniform(4.0, 10.0)
            else:
                s += 1.0


def _add_companions(b: SceneBuilder, cfg: SceneConfig, x: float, y: float, yaw: float) -> None:
    """1-3 people walking beside / behind the pedestrian at (x, y) with heading yaw (a group)."""
    rng = b.rng
    c, s = np.cos(yaw), np.sin(yaw)
    for k in range(1, int(rng.integers(1, 4)) + 1):
        along, across = rng.normal(0, 0.3) - 0.9 * (k // 2), (0.7 + rng.uniform(0, 0.2)) * (1 if k % 2 else -1)
        cx, cy = x + c * along - s * across, y + s * along + c * across
        b.try_add(model_parts("Pedestrian", rng, cfg), float(cx), float(cy), yaw + rng.normal(0, 0.15), "Pedestrian",
                  margin=0.05)


def _segment_box(ground: Ground, s: float, u: float, length: float, width: float, z0: float, height: float,
                 material: Material, rng: np.random.Generator) -> tuple[Primitives, np.ndarray]:
    x, y = ground.to_world(s, u)
    parts = PartList().box((0.0, 0.0, z0 + height / 2), (length / 2, width / 2, height / 2), material)
    placed = place(parts, float(x), float(y), float(ground.road_height(x, y)), ground.road_heading, rng)
    return placed.prims, placed.box[[0, 1, 3, 4, 6]]


def _add_kerbs(b: SceneBuilder, ground: Ground, s_range: tuple[float, float]) -> None:
    hw, hk = ground.road_half_width, ground.kerb_height
    for side in (-1, 1):
        for s in np.arange(s_range[0], s_range[1], 8.0):
            if ground.crosses(s, s + 8.0):  # no kerb across an intersection
                continue
            prims, _ = _segment_box(ground, s + 4.0, side * (hw + 0.075), 8.0, 0.15, -0.15, hk + 0.15, Material.KERB,
                                    b.rng)
            b.add_background(prims)


def _add_roadside(b: SceneBuilder, ground: Ground, cfg: SceneConfig, s_range, lot) -> None:
    rng = b.rng
    hw, pw = ground.road_half_width, ground.pavement_width
    for side in (-1, 1):
        s = s_range[0]
        while s < s_range[1]:
            length = rng.uniform(8.0, 30.0)
            in_lot = (lot is not None and lot[0] == side and s + length > lot[1] - 5 and s < lot[2] + 5) or \
                ground.crosses(s - 2.0, s + length + 2.0)
            if not in_lot and rng.random() < cfg.building_probability:
                setback = rng.uniform(0.0, 4.0)
                depth = rng.uniform(8.0, 20.0)
                height = rng.uniform(4.0, 20.0)
                prims, fp = _segment_box(ground, s + length / 2, side * (hw + pw + setback + depth / 2), length - 1.0,
                                         depth, -0.5, height + 0.5, Material.BUILDING, rng)
                b.add_background(prims, fp)
            elif not in_lot and rng.random() < 0.35:  # wall or fence
                height = rng.uniform(0.8, 2.2)
                prims, fp = _segment_box(ground, s + length / 2, side * (hw + pw + rng.uniform(0.2, 2.0)), length,
                                         rng.uniform(0.1, 0.3), -0.2, height + 0.2,
                                         Material.BUILDING if rng.random() < 0.6 else Material.VEGETATION, rng)
                b.add_background(prims, fp)
            elif not in_lot:
                for _ in range(int(rng.integers(0, 4))):
                    sb, ub = s + rng.uniform(0, length), side * (hw + pw + rng.uniform(0.5, 10.0))
                    x, y = ground.to_world(sb, ub)
                    b.try_add(shapes.bush_parts(rng), float(x), float(y), rng.uniform(-np.pi, np.pi), None, margin=0.0)
            s += length
        span = s_range[1] - s_range[0]
        for _ in range(rng.poisson(cfg.trees_per_100m * span / 100.0)):
            sb = rng.uniform(*s_range)
            ub = side * (hw + pw - rng.uniform(0.4, 1.0) if rng.random() < 0.6 else hw + pw + rng.uniform(1.0, 12.0))
            x, y = ground.to_world(sb, ub)
            b.try_add(shapes.tree_parts(rng), float(x), float(y), 0.0, None, margin=0.2)
        for _ in range(rng.poisson(cfg.poles_per_100m * span / 100.0)):
            x, y = ground.to_world(rng.uniform(*s_range), side * (hw + rng.uniform(0.3, 0.6)))
            b.try_add(shapes.pole_parts(rng), float(x), float(y), ground.road_heading, None, margin=0.1)


def _add_clutter(b: SceneBuilder, ground: Ground, cfg: SceneConfig, s_range) -> None:
    rng = b.rng
    hw, pw = ground.road_half_width, ground.pavement_width
    for _ in range(int(rng.integers(cfg.clutter[0], cfg.clutter[1] + 1))):
        for _attempt in range(10):
            u = rng.choice([-1, 1]) * rng.uniform(hw + 0.3, hw + pw + 3.0)
            x, y = ground.to_world(rng.uniform(*s_range), u)
            if b.try_add(shapes.clutter_parts(rng), float(x), float(y), ground.road_heading + rng.normal(0, 0.3), None,
                         margin=0.1):
                break
