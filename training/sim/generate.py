"""One simulated frame end to end: scene -> ray casting -> sensor effects -> labels. Deterministic per (seed, index)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from clean_ros.cloud.kitti import Calibration
from training.sim.calib import KITTI_IMAGE_SHAPE, kitti_calibration
from training.sim.sim_config import SimConfig
from training.sim.labels import FrameLabels, make_labels
from training.sim.raycast import NO_HIT, Foliage, Hits, cast
from training.sim.shapes import Material
from training.sim.scene import Scene, sample_scene
from training.sim.sensor import ego_body_boxes, ego_hit_distance, laser_origin_heights, measure, ray_grid

SPLITS = {"training": 0, "testing": 1}


class Frame(NamedTuple):
    points: np.ndarray  # (N, 4) float32 x, y, z, reflectance (LiDAR frame)
    point_owner: np.ndarray  # (N,) scene object of each return, -1 = background
    labels: FrameLabels
    scene: Scene
    labels_all: FrameLabels | None = None  # every object around the sensor (LabelConfig.write_all_around)


def frame_rngs(seed: int, index: int, split: str = "training") -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for the scene and the sensor, so a frame never depends on how frames are scheduled."""
    base = [int(seed), SPLITS[split], int(index)]
    return np.random.default_rng(base + [0]), np.random.default_rng(base + [1])


def scan_scene(scene: Scene, cfg: SimConfig, rng: np.random.Generator,
               calib: Calibration | None = None) -> Frame:
    """Cast the HDL-64E ray grid into a scene and label what the sensor saw."""
    calib = calib or kitti_calibration()
    grid = ray_grid(cfg.sensor)
    n_objects = len(scene.names)
    origin_z = laser_origin_heights(grid, cfg.sensor)
    hits = cast(scene.prims, scene.ground, grid, cfg.sensor.max_range, n_objects,
                foliage=Foliage(cfg.sensor.vegetation_porosity, cfg.sensor.vegetation_depth, rng,
                                cfg.sensor.glass_porosity), origin_z=origin_z)
    n_beams, n_cols = len(grid.elevation), grid.n_columns
    # top beam first, as the scanner reports them
    order = np.arange(n_beams * n_cols).reshape(n_beams, n_cols)[::-1].ravel()
    returned = np.isfinite(hits.range)
    if cfg.sensor.ego_vehicle:
        ego_t = ego_hit_distance(grid.directions, origin_z, ego_body_boxes(rng, cfg.sensor.mount_height))
        blocked = np.isfinite(ego_t)
        returned &= ~blocked
        if cfg.sensor.ego_return_fraction > 0:  # a few of those rays do come back, from the car's own edges
            own = np.flatnonzero(blocked)
            own = own[rng.random(len(own)) < cfg.sensor.ego_return_fraction]
            hits = _with_own_body_returns(hits, own, ego_t[own])
            returned[own] = True
    order = order[returned[order]]
    points, kept = measure(hits.range[order], grid.directions[order], hits.cos_incidence[order], hits.albedo[order],
                           hits.material[order], cfg.sensor, rng, beam=order // n_cols,
                           origin_z=None if origin_z is None else origin_z[order])
    owner = hits.owner[order][kept]
    label_args = (scene.prims, scene.names, scene.boxes, points, owner, hits.unobstructed_rays, hits.visible_rays,
                  calib, cfg.labels, KITTI_IMAGE_SHAPE)
    labels = make_labels(*label_args, annotated_length=scene.annotated_length)
    labels_all = make_labels(*label_args, all_around=True, annotated_length=scene.annotated_length) \
        if cfg.labels.write_all_around else None
    return Frame(points, owner, labels, scene, labels_all)


def _with_own_body_returns(hits: Hits, rays: np.ndarray, distance: np.ndarray) -> Hits:
    """Hits where `rays` return from the carrying car at `distance`: background, reflectance ~0 (as in KITTI)."""
    values = {name: getattr(hits, name).copy() for name in ("range", "cos_incidence", "hit_prim", "owner", "material",
                                                              "albedo")}
    values["range"][rays], values["cos_incidence"][rays], values["albedo"][rays] = distance, 1.0, 0.004
    values["hit_prim"][rays], values["owner"][rays], values["material"][rays] = NO_HIT, -1, Material.CAR_PAINT
    return hits._replace(**values)


def generate_frame(cfg: SimConfig, seed: int, index: int, split: str = "training") -> Frame:
    scene_rng, sensor_rng = frame_rngs(seed, index, split)
    scene = sample_scene(cfg.scene, cfg.sensor, scene_rng)
    return scan_scene(scene, cfg, sensor_rng)
