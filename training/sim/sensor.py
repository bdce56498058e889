"""Velodyne HDL-64E model: beam layout, ray directions, range noise, dropout and reflectance."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from training.sim.sim_config import SensorConfig
from training.sim.shapes import MATERIAL_DROPOUT, MATERIAL_RANGE_NOISE


class RayGrid(NamedTuple):
    """Rays of one revolution, beam-major: ray index = beam * n_columns + column; beams sorted by ascending elevation."""

    elevation: np.ndarray  # (B,) radians, ascending
    azimuth: np.ndarray  # (C,) radians, column centres in [-pi, pi)
    directions: np.ndarray  # (B * C, 3) unit vectors

    @property
    def n_columns(self) -> int:
        return len(self.azimuth)


def beam_elevations(cfg: SensorConfig) -> np.ndarray:
    """(64,) elevations in radians, ascending: the denser upper block and the sparser lower block."""
    upper = np.linspace(*cfg.upper_block_deg, cfg.beams_per_block)
    lower = np.linspace(*cfg.lower_block_deg, cfg.beams_per_block)
    return np.sort(np.deg2rad(np.concatenate([upper, lower])))


def ray_grid(cfg: SensorConfig) -> RayGrid:
    elevation = beam_elevations(cfg)
    n_columns = int(round(360.0 / cfg.azimuth_resolution_deg))
    azimuth = -np.pi + (np.arange(n_columns) + 0.5) * (2 * np.pi / n_columns)
    ce, se = np.cos(elevation)[:, None], np.sin(elevation)[:, None]
    directions = np.stack([ce * np.cos(azimuth), ce * np.sin(azimuth), np.broadcast_to(se, (len(elevation), n_columns))],
                          -1).reshape(-1, 3)
    return RayGrid(elevation, azimuth, directions)


def laser_origin_heights(grid: RayGrid, cfg: SensorConfig) -> np.ndarray | None:
    """(R,) height of each ray's laser above the sensor origin (SensorConfig.laser_heights), None when all are 0."""
    upper, lower = cfg.laser_heights
    if upper == 0 and lower == 0:
        return None
    boundary = np.deg2rad((min(cfg.upper_block_deg) + max(cfg.lower_block_deg)) / 2)
    return np.repeat(np.where(grid.elevation > boundary, upper, lower), grid.n_columns)


def ego_body_boxes(rng: np.random.Generator, mount_height: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo (K, 3), hi (K, 3)) axis-aligned boxes of the carrying car around the sensor: its roof (0.25-0.45 m below
    the lasers, the sensor off its centre), its body below and a rig mast beside the sensor. Random per frame, so
    a detector learns the blind pattern of no particular car."""
    roof_z = -rng.uniform(0.2, 0.4)
    dy = rng.uniform(-0.25, 0.25)  # the sensor sits off the car's centre line
    roof_front, roof_back, roof_half_w = rng.uniform(0.6, 1.3), rng.uniform(0.8, 1.8), rng.uniform(0.6, 0.8)
    # bonnet / boot 0.6-0.9 m below the origin, ending 1.6-2.2 m ahead and 1.6-2.4 m behind: on KITTI's car the rows
    # below about -21 deg lose the road ahead, the rows from -20 deg up keep it
    body_front, body_back, body_half_w = rng.uniform(1.6, 2.2), rng.uniform(1.6, 2.4), rng.uniform(0.85, 0.95)
    body_top = min(-rng.uniform(0.6, 0.9), roof_z - 0.2)
    ground = -mount_height
    mast_az, mast_d = rng.uniform(-np.pi, np.pi), rng.uniform(0.3, 0.9)
    mast = np.array([mast_d * np.cos(mast_az), mast_d * np.sin(mast_az)])
    mast_r, mast_top = rng.uniform(0.02, 0.05), -rng.uniform(0.05, 0.3)
    lo = np.array([[-roof_back, -dy - roof_half_w, body_top], [-body_back, -dy - body_half_w, ground + 0.25],
                   [mast[0] - mast_r, mast[1] - mast_r, roof_z]])
    hi = np.array([[roof_front, -dy + roof_half_w, roof_z], [body_front, -dy + body_half_w, body_top],
                   [mast[0] + mast_r, mast[1] + mast_r, mast_top]])
    return lo, hi


def ego_blocked(directions: np.ndarray, origin_z: np.ndarray | None, boxes: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(R,) True for rays that hit the carrying car (no return: the scanner discards its own body)."""
    return np.isfinite(ego_hit_distance(directions, origin_z, boxes))


def ego_hit_distance(directions: np.ndarray, origin_z: np.ndarray | None,
                     boxes: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(R,) distance along each ray to the carrying car's nearest box, inf for rays that miss it."""
    lo, hi = boxes
    origin = np.zeros((len(directions), 3))
    if origin_z is not None:
        origin[:, 2] = origin_z
    nearest = np.full(len(directions), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / directions
        for box_lo, box_hi in zip(lo, hi):  # a handful of boxes; each test is vectorised over all rays
            t1, t2 = (box_lo - origin) * inv, (box_hi - origin) * inv
            t_near, t_far = np.nan_to_num(np.minimum(t1, t2), nan=-np.inf).max(1), \
                np.nan_to_num(np.maximum(t1, t2), nan=np.inf).min(1)
            hit = (t_near <= t_far) & (t_far > 0)
            nearest = np.where(hit, np.minimum(nearest, np.maximum(t_near, 0.0)), nearest)
    return nearest


def measure(ranges: np.ndarray, directions: np.ndarray, cos_incidence: np.ndarray, albedo: np.ndarray,
            material: np.ndarray, cfg: SensorConfig, rng: np.random.Generator,
            beam: np.ndarray | None = None, origin_z: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Turn exact hits into returns: noisy range, material/range dependent dropout, reflectance in [0, 1].

    beam: (N,) laser index of each hit, needed by the per-laser options (beam_gain_spread, beam_dropout_spread).
    origin_z: (N,) height of each hit's laser above the sensor origin (ranges are measured from there), or None.
    Returns (N, 4) float32 points (x, y, z, reflectance) and the (N,) bool mask of hits kept.
    """
    n = len(ranges)
    noise = rng.normal(0.0, 1.0, n) * np.hypot(cfg.range_noise_std, MATERIAL_RANGE_NOISE[material])
    noisy = ranges + noise
    p_drop = cfg.dropout + MATERIAL_DROPOUT[material] + cfg.far_dropout * (ranges / cfg.max_range) ** 2
    keep = (rng.random(n) >= p_drop) & (noisy > cfg.min_range) & (noisy < cfg.max_range)
    # KITTI's reflectance is nearly flat over incidence until grazing angles, where it falls to 0 (far road)
    grazing = np.clip((cos_incidence - 0.04) / 0.10, 0.0, 1.0) ** 0.7
    intensity = 1.2 * albedo * grazing * (1.0 + cfg.intensity_noise * rng.normal(0.0, 1.0, n))
    # the realistic preset's effects draw after the ones above, so the default stream of random numbers is unchanged
    keep, intensity = _laser_effects(ranges, cos_incidence, albedo, keep, intensity, cfg, rng, beam)
    # KITTI stores reflectance with two decimals
    intensity = np.round(np.clip(intensity, 0.0, 1.0), 2)
    xyz = directions * noisy[:, None]
    if origin_z is not None:
        xyz[:, 2] += origin_z
    points = np.concatenate([xyz, intensity[:, None]], 1).astype(np.float32)
    return points[keep], keep


def _laser_effects(ranges, cos_incidence, albedo, keep, intensity, cfg: SensorConfig, rng: np.random.Generator,
                   beam: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-laser gain and dropout (each of the 64 lasers has its own calibration) and the loss of weak echoes:
    a dark or steeply inclined surface far away returns too little light (black cars at 40 m+, far road)."""
    n = len(ranges)
    if (cfg.beam_gain_spread > 0 or cfg.beam_dropout_spread > 0) and beam is None:
        raise ValueError("measure: the per-laser options need each hit's beam index")
    if cfg.beam_gain_spread > 0:
        n_beams = int(beam.max()) + 1 if n else 1
        gain = np.clip(rng.normal(1.0, cfg.beam_gain_spread, n_beams), 0.5, 1.6)
        intensity = intensity * gain[beam]
    if cfg.beam_dropout_spread > 0:
        n_beams = int(beam.max()) + 1 if n else 1
        keep = keep & (rng.random(n) >= rng.uniform(0.0, cfg.beam_dropout_spread, n_beams)[beam])
    if cfg.min_signal > 0:
        signal = albedo * cos_incidence * (20.0 / np.maximum(ranges, 1e-3)) ** 2
        # soft threshold: the echo survives with probability signal / min_signal below it
        keep = keep & (rng.random(n) * cfg.min_signal < signal)
    start, end = cfg.weak_echo_range
    if end > 0:
        effective = ranges * (0.3 / np.maximum(albedo, 0.05)) ** 0.25
        intensity = np.where(rng.random(n) < np.clip((effective - start) / (end - start), 0.0, 1.0), 0.0, intensity)
    return keep, intensity
