"""Sensor variation: which laser row a point came from, and transforms that emulate another sensor or mounting.

Pure numpy functions (no state, no randomness except where a generator is passed), usable by the Augmentor on
simulated frames and on real frames to emulate a different LiDAR:

    rows = elevation_rows(points)                       # laser row of each point, from its elevation angle
    points = keep_rows(points, rows.row, keep_every=2)   # 64 -> 32 beams
    points = drop_points(points, keep_fraction=0.7, rng=rng)
    points = scale_intensity(points, scale=0.8, gamma=1.2)
    points, boxes = change_mounting(points, boxes, height_shift=0.2, pitch=0.01, roll=-0.01)  # radians

Rows. A KITTI .bin has no ring field. `elevation_rows` finds rows as peaks of the elevation-angle histogram: exact
for the simulator, whose rays all start at the sensor origin. Real HDL-64 lasers sit ~0.1-0.2 m above that origin,
so a real laser's apparent elevation drifts with range (about 12 deg*m / range for the upper block); rows of real
scans are better read from the storage order (`scan_order_rows`): KITTI stores each laser's revolution as one run
of increasing azimuth (so does the simulator, whose `realistic` preset also offsets the lasers). `sensor_rows` uses
the storage order when the cloud has it, elevation peaks otherwise.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.ndimage import gaussian_filter1d, maximum_filter1d

from clean_ros.cloud.transforms import transform_boxes, transform_points
from clean_ros.inference.sensor_mount import TRAINING_SENSOR_HEIGHT_M, SensorMount


class Rows(NamedTuple):
    """Laser row of every point: row (N,) int64, 0 = lowest elevation; elevation_deg (R,) row centres, ascending."""

    row: np.ndarray
    elevation_deg: np.ndarray

    @property
    def count(self) -> int:
        return len(self.elevation_deg)


def horizontal_range(points: np.ndarray) -> np.ndarray:
    """(N,) distance from the sensor axis in the x-y plane (float64)."""
    return np.hypot(points[:, 0].astype(np.float64), points[:, 1].astype(np.float64))


def elevation_deg(points: np.ndarray, origin_height: float = 0.0) -> np.ndarray:
    """(N,) elevation angle in degrees seen from (0, 0, origin_height)."""
    return np.degrees(np.arctan2(points[:, 2].astype(np.float64) - origin_height, horizontal_range(points)))


def elevation_rows(points: np.ndarray, origin_height: float = 0.0, bin_deg: float = 0.02,
                   min_separation_deg: float = 0.2, min_row_fraction: float = 0.001) -> Rows:
    """Rows as peaks of the elevation histogram; each point goes to the nearest peak.

    A peak is the maximum of the lightly smoothed histogram within +-min_separation_deg / 2 holding at least
    min_row_fraction of the points. Row boundaries are the midpoints between neighbouring peaks.
    """
    if len(points) == 0:
        return Rows(np.zeros(0, np.int64), np.zeros(0))
    el = elevation_deg(points, origin_height)
    low = el.min() - 3 * bin_deg
    bins = np.floor((el - low) / bin_deg).astype(np.int64)
    counts = np.bincount(bins, minlength=bins.max() + 4).astype(np.float64)
    smooth = gaussian_filter1d(counts, 1.0, mode="constant")
    half = max(1, int(round(min_separation_deg / 2 / bin_deg)))
    is_peak = (smooth == maximum_filter1d(smooth, 2 * half + 1, mode="constant"))
    is_peak &= smooth >= max(min_row_fraction * len(el) * 0.5, 1e-9)  # smoothing spreads a sharp row over ~2 bins
    peaks = np.flatnonzero(is_peak)
    peaks = peaks[np.r_[True, np.diff(peaks) > half]]  # a flat top counts once
    centres = low + (peaks + 0.5) * bin_deg
    return Rows(assign_rows(points, centres, origin_height), centres)


def assign_rows(points: np.ndarray, centres_deg: np.ndarray, origin_height: float = 0.0) -> np.ndarray:
    """(N,) index of the row centre (ascending elevations, degrees) nearest to each point's elevation."""
    el = elevation_deg(points, origin_height)
    return np.searchsorted((centres_deg[1:] + centres_deg[:-1]) / 2, el).astype(np.int64)


def scan_order_rows(points: np.ndarray, min_rows: int = 8, max_rows: int = 256, min_points_per_row: int = 100,
                    min_drop_rad: float = 0.5) -> Rows | None:
    """Rows from the storage order (one run of increasing azimuth per laser, as in KITTI .bin files), or None.

    A run ends where the azimuth steps back, against the scan's direction, by more than min_drop_rad: the wrap from
    +pi to -pi in a full scan, the jump back to the image's left edge in a camera-cropped one (whose ~45 runs are the
    lasers the camera sees). Gaps without returns step forward and do not split a run. Runs are ranked by their laser
    angle (laser_angles: the elevation at infinite range, free of the lasers' offset from the origin). None when the
    run count or length does not look like a scan (shuffled clouds).
    """
    n = len(points)
    if n < min_rows * min_points_per_row:
        return None
    azimuth = np.arctan2(points[:, 1].astype(np.float64), points[:, 0].astype(np.float64))
    step = np.diff(azimuth)
    direction = 1.0 if np.median(step) >= 0 else -1.0
    run = np.concatenate([[0], np.cumsum(direction * step < -min_drop_rad)])
    n_runs = int(run[-1]) + 1
    if not min_rows <= n_runs <= max_rows or n / n_runs < min_points_per_row:
        return None
    angle = laser_angles(elevation_deg(points), horizontal_range(points), run, n_runs)
    order = np.argsort(angle, kind="stable")
    rank = np.empty(n_runs, np.int64)
    rank[order] = np.arange(n_runs)
    return Rows(rank[run], angle[order])


def laser_angles(el: np.ndarray, rng_h: np.ndarray, run: np.ndarray, n_runs: int) -> np.ndarray:
    """(n_runs,) each run's laser angle in degrees: its elevation with the lasers' offset from the origin removed.

    Model: el = angle[run] + b / range, one b for the scan (a laser mounted above the sensor origin appears higher
    the nearer it looks), fitted by pooled within-run least squares. One shared b is well determined even for runs
    that see a narrow band of ranges (a per-run intercept is not), so the ranking holds whatever ranges a run saw:
    a camera-cropped scan ranks its lasers as the full revolution does.
    """
    x = 1.0 / np.maximum(rng_h, 0.5)
    n = np.maximum(np.bincount(run, minlength=n_runs), 1)
    mean_x, mean_y = np.bincount(run, x, n_runs) / n, np.bincount(run, el, n_runs) / n
    dx, dy = x - mean_x[run], el - mean_y[run]
    spread = float((dx * dx).sum())
    b = float((dx * dy).sum()) / spread if spread > 1e-12 else 0.0
    return mean_y - b * mean_x


def sensor_rows(points: np.ndarray) -> Rows:
    """Storage-order rows when the cloud keeps them (raw scans), elevation-histogram rows otherwise."""
    rows = scan_order_rows(points)
    return rows if rows is not None else elevation_rows(points)


# --------------------------------------------------------------------------- transforms
def keep_rows(points: np.ndarray, row: np.ndarray, keep_every: int = 2, phase: int = 0) -> np.ndarray:
    """Points of every `keep_every`-th row starting at `phase` (64 rows, keep_every=2 -> a 32-beam sensor)."""
    if keep_every < 1 or not 0 <= phase < keep_every:
        raise ValueError(f"keep_rows: need keep_every >= 1 and 0 <= phase < keep_every, got {keep_every}, {phase}")
    return points[row % keep_every == phase]


def drop_points(points: np.ndarray, keep_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random subset: each point kept with probability keep_fraction (point order kept)."""
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"drop_points: keep_fraction must be in [0, 1], got {keep_fraction}")
    return points[rng.random(len(points)) < keep_fraction]


def scale_intensity(points: np.ndarray, scale: float = 1.0, gamma: float = 1.0) -> np.ndarray:
    """Intensity (column 3, in [0, 1]) -> clip(scale * intensity ** gamma, 0, 1): another sensor's response curve."""
    if scale < 0 or gamma <= 0:
        raise ValueError(f"scale_intensity: need scale >= 0 and gamma > 0, got {scale}, {gamma}")
    points = points.copy()
    points[:, 3] = np.clip(scale * np.clip(points[:, 3], 0.0, 1.0) ** gamma, 0.0, 1.0)
    return points


def change_mounting(points: np.ndarray, boxes: np.ndarray, height_shift: float = 0.0, pitch: float = 0.0,
                    roll: float = 0.0, sensor_height: float = TRAINING_SENSOR_HEIGHT_M) -> tuple[np.ndarray, np.ndarray]:
    """The scene as recorded by the same sensor mounted `height_shift` m higher and tilted by (pitch, roll).

    Radians, the SensorMount convention (clean_ros/inference/sensor_mount.py): pitch positive = nose down, roll
    positive = left side up. It is the exact inverse of what the Pipeline applies for a sensor at
    sensor_height + height_shift with that tilt, so a model given that setting sees the original scene again.
    Points keep their features; boxes stay upright (the label convention; see clean_ros/cloud/transforms.py).
    """
    mount = SensorMount(sensor_height + height_shift, pitch, roll)
    sensor_from_level = mount.model_from_sensor(sensor_height).inverse()
    return transform_points(points, sensor_from_level), transform_boxes(boxes, sensor_from_level)
