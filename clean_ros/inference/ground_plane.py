"""Where the ground is, measured from the scans: the sensor's height and tilt without being told.

A model is trained with its sensor at one height above a level road (the bundle's `sensor_height`, KITTI's 1.73 m).
`SensorMount` tells the Pipeline where another sensor is; this module measures it, for two uses:

- a **mount check**: the node compares the ground it sees, in the model's frame, with the training scans' ground
  (`bundle.ground_height`) and says in /diagnostics when they disagree (a sensor mounted elsewhere and not declared,
  a wrong TF);
- an **automatic mount** (`auto_sensor_mount`): the running estimate is applied as the sensor mount.

One scan's fit (`fit_ground_plane`): the returns 3-15 m away horizontally, on every STRIDE-th point, are gridded in
CELL_M cells and each cell keeps its lowest return (the ground where a cell holds any, an object's underside where
the ground is hidden). RANSAC over those minima (RANSAC_PLANES candidates, MSAC-scored) finds the plane they lie on
(planes tilted more than MAX_TILT from the sensor's z axis are walls, not ground, and are skipped), then a
least-squares fit on its inliers. The band and the scoring were chosen on real KITTI scans moved to known mounts,
before any detection figure (docs/results/ground_mount/): 3-25 m missed by up to 14 cm on a cambered road.
A fit needs MIN_INLIERS cells; a scan without that much visible ground gives none. `GroundTracker` keeps the fits of
the last `window` scans and reports their medians (a sensor's mount belongs to the sensor, not to one scan: a scan on a
ramp or beside a bus does not move it). The ground is assumed flat around the vehicle; on a hill the estimate is the
road's plane near the sensor, which is what the model's level-ground assumption needs anyway.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from clean_ros.cloud.transforms import Transform, euler_to_matrix
from clean_ros.inference.ground_gate import lowest_per_cell
from clean_ros.inference.sensor_mount import SensorMount

# horizontal distance of the returns fitted: past the ego vehicle, near enough for the road to be one plane
BAND_M = (3.0, 15.0)
CELL_M = 1.0
STRIDE = 4  # every 4th point: the cells' minima barely change, the cost quarters
MAX_TILT_RAD = math.radians(45.0)  # as SensorMount: steeper planes are walls
INLIER_M = 0.1  # a cell minimum within this of the plane agrees with it
MIN_INLIERS = 40  # cells (40 m2 of ground) for a fit
RANSAC_PLANES = 128  # candidate planes per scan (a seeded generator: the same scan gives the same fit)
DEFAULT_WINDOW = 30  # fits in the running median
GROUND_EVERY = 5  # fit every 5th scan once WARM_FITS fits are in (a mount does not move; ~1-2 ms per fit)
WARM_FITS = 5  # until then, every scan
# The mount check's tolerances: the default bundle was trained with its sensor moved by up to +-0.3 m and tilted by
# up to +-0.035 rad (augment.sensor); the check speaks a little inside that.
HEIGHT_TOLERANCE_M = 0.2
TILT_TOLERANCE_RAD = 0.03


@dataclass(frozen=True)
class GroundFit:
    """The ground plane in some frame: unit normal (pointing up, away from the ground) and height, the distance of
    the frame's origin above the plane; pitch / roll are the frame's tilt with SensorMount's convention."""

    normal: tuple[float, float, float]
    height: float
    inliers: int = 0  # grid cells that agree (0 for a derived estimate)

    @property
    def pitch(self) -> float:
        """Radians about y, positive = nose down (the ground ahead is higher in this frame)."""
        return float(-math.asin(max(-1.0, min(1.0, self.normal[0]))))

    @property
    def roll(self) -> float:
        """Radians about x, positive = left side up."""
        return float(math.atan2(self.normal[1], self.normal[2]))

    def transformed(self, transform: Transform) -> "GroundFit":
        """The same plane seen from another frame: T(new <- this frame)."""
        normal = transform.rotation @ np.asarray(self.normal, np.float64)
        # a ground point p (normal . p = -height) maps to R p + t: normal' . p' = -height + normal' . t
        height = self.height - float(normal @ transform.translation)
        return GroundFit(tuple(float(v) for v in normal), float(height), self.inliers)

    def describe(self) -> str:
        return (f"ground {self.height:.2f} m below, pitch {self.pitch:+.3f} rad, roll {self.roll:+.3f} rad")


def _cell_minima(points: np.ndarray) -> np.ndarray:
    """(M, 3) the lowest return of each occupied CELL_M cell in the band (its own x, y: a cell centre's would bias a
    tilted ground by half a cell times the slope)."""
    pts = points[::STRIDE]
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    squared = x * x + y * y
    keep = (squared >= BAND_M[0] ** 2) & (squared < BAND_M[1] ** 2) & np.isfinite(z)  # NaN fails the comparisons
    if not keep.any():
        return np.zeros((0, 3))
    x, y, z = x[keep], y[keep], z[keep].astype(np.float64)
    side = int(2 * BAND_M[1] / CELL_M) + 1
    ix = ((x + BAND_M[1]) / CELL_M).astype(np.int64)
    iy = ((y + BAND_M[1]) / CELL_M).astype(np.int64)
    cell = ix * side + iy
    lowest = lowest_per_cell(cell, z, side * side).numpy()
    at_min = np.flatnonzero(z == lowest[cell])  # the lowest return(s) of each cell (a tie keeps both)
    return np.stack([x[at_min], y[at_min], z[at_min]], axis=1).astype(np.float64)


def _plane_through(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Planes through (K, 3, 3) triples: unit normals (K, 3) with z >= 0 and offsets d (K,), normal . x + d = 0."""
    normal = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    normal *= np.where(normal[:, 2:3] < 0, -1.0, 1.0)
    length = np.linalg.norm(normal, axis=1, keepdims=True)
    normal = normal / np.maximum(length, 1e-12)
    return normal, -(normal * p[:, 0]).sum(1)


def _least_squares(cells: np.ndarray) -> tuple[np.ndarray, float]:
    """The plane closest to the points (smallest singular vector of the centred points), normal up."""
    centre = cells.mean(0)
    normal = np.linalg.svd(cells - centre, full_matrices=False)[2][-1]
    if normal[2] < 0:
        normal = -normal
    return normal, float(-normal @ centre)


def fit_ground_plane(points: np.ndarray, seed: int = 0) -> GroundFit | None:
    """The ground plane of one scan, in the scan's frame ((N, >= 3) points); None when too little ground is seen
    (see the module docstring)."""
    if not isinstance(points, np.ndarray) or points.ndim != 2 or points.shape[1] < 3 or len(points) == 0:
        return None
    cells = _cell_minima(points)
    if len(cells) < MIN_INLIERS:
        return None
    rng = np.random.default_rng(seed)
    triples = cells[rng.integers(0, len(cells), size=(RANSAC_PLANES, 3))]
    normal, offset = _plane_through(triples)
    upright = (normal[:, 2] >= math.cos(MAX_TILT_RAD)) & (offset > 0)  # ground below the sensor, not a wall
    if not upright.any():
        return None
    normal, offset = normal[upright], offset[upright]
    residual = np.abs(cells @ normal.T + offset)  # (M, K)
    # MSAC: the plane with the least truncated squared residual (more agreeing cells, and closer ones, win; a plain
    # inlier count ties between a road and a plane a kerb height above it too often); ties: the lowest plane
    cost = np.minimum(residual, INLIER_M) ** 2
    best = np.lexsort((-offset, cost.sum(0)))[0]
    inliers = cells[residual[:, best] < INLIER_M]
    for _ in range(2):  # refine, re-reading the inliers against the refined plane
        if len(inliers) < MIN_INLIERS:
            return None
        fitted, d = _least_squares(inliers)
        inliers = cells[np.abs(cells @ fitted + d) < INLIER_M]
    if len(inliers) < MIN_INLIERS or d <= 0 or fitted[2] < math.cos(MAX_TILT_RAD):
        return None
    return GroundFit(tuple(float(v) for v in fitted), d, int(len(inliers)))


_warm = False


def _warm_up() -> None:
    """One fit of a small synthetic plane per process: the first fit pays numpy's start-up of the routines it uses
    (measured 14.5 ms against 2 ms after), which belongs to the set-up, not to a scan's latency."""
    global _warm
    if not _warm:
        xy = np.random.default_rng(0).uniform(-BAND_M[1], BAND_M[1], (4000, 2))
        fit_ground_plane(np.column_stack([xy, np.full(len(xy), -1.7)]).astype(np.float32))
        _warm = True


class GroundTracker:
    """Running ground estimate over the last `window` fits (medians of height, pitch and roll), fitting every scan
    until WARM_FITS fits are in and every `every`-th scan after."""

    def __init__(self, window: int = DEFAULT_WINDOW, every: int = GROUND_EVERY):
        for name, value in (("window", window), ("every", every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ground estimate {name} must be an integer >= 1 scan, got {value!r}")
        self.fits: deque[GroundFit] = deque(maxlen=window)
        self.every = every
        self.scans = 0  # scans observed
        _warm_up()

    def update(self, points: np.ndarray) -> GroundFit | None:
        """Fit this scan (in the frame the points are in) and record it; returns the fit (None: this scan gave none)."""
        fit = fit_ground_plane(points)
        if fit is not None:
            self.fits.append(fit)
        return fit

    def observe(self, points: np.ndarray) -> bool:
        """Count a scan and fit it when due (see the class docstring); True when it was fitted."""
        due = len(self.fits) < WARM_FITS or self.scans % self.every == 0
        self.scans += 1
        if due:
            self.update(points)
        return due

    @property
    def estimate(self) -> GroundFit | None:
        """Median height, pitch and roll of the recorded fits as one plane; None before any scan gave a fit."""
        if not self.fits:
            return None
        height = float(np.median([f.height for f in self.fits]))
        pitch = float(np.median([f.pitch for f in self.fits]))
        roll = float(np.median([f.roll for f in self.fits]))
        return ground_from_tilt(height, pitch, roll, inliers=int(np.median([f.inliers for f in self.fits])))

    def reset(self) -> None:
        self.fits.clear()
        self.scans = 0


def ground_from_tilt(height: float, pitch: float, roll: float, inliers: int = 0) -> GroundFit:
    """The ground plane seen from a sensor `height` above it, tilted by pitch / roll (SensorMount's convention): its
    normal is the level frame's z axis in the sensor's frame: the last row of T(level <- sensor)'s rotation
    (SensorMount.level_from_sensor)."""
    normal = euler_to_matrix(roll=roll, pitch=pitch)[2]
    return GroundFit(tuple(float(v) for v in normal), float(height), inliers)


def dataset_ground_height(scans) -> float:
    """The training scans' ground: the median height of the per-scan fits of an iterable of (N, >= 3) scans
    (ValueError if none gives a fit). Recorded in a bundle as `ground_height`."""
    heights = [fit.height for fit in (fit_ground_plane(points) for points in scans) if fit is not None]
    if not heights:
        raise ValueError(f"no scan shows {MIN_INLIERS} m2 of ground {BAND_M[0]:g}-{BAND_M[1]:g} m away: cannot "
                         "measure the ground height")
    return float(np.median(heights))


def mount_for(estimate: GroundFit, reference: float, training_height: float) -> SensorMount | None:
    """The SensorMount that puts a sensor-frame ground estimate where the training scans' ground is (`reference`,
    as this module measured it on them): the model frame is the sensor levelled and moved by height -
    training_height (clean_ros.inference.sensor_mount), so height = estimate - reference + training_height. None
    when that is no valid mount (the estimate far below any training height)."""
    try:
        return SensorMount(float(estimate.height - reference + training_height), estimate.pitch, estimate.roll)
    except ValueError:
        return None


@dataclass(frozen=True)
class MountCheck:
    """The running ground estimate in the model's frame against the training scans' ground."""

    measured: GroundFit  # in the model's frame
    reference: float  # the training scans' ground below the sensor (bundle.ground_height)
    suggested: SensorMount | None  # the sensor_height / pitch / roll that would put the ground there
    fits: int  # scans in the estimate

    @property
    def height_error(self) -> float:
        return float(self.measured.height - self.reference)

    @property
    def tilt(self) -> float:
        """Radians between the measured ground's normal and the model frame's z axis."""
        return float(math.acos(max(-1.0, min(1.0, self.measured.normal[2]))))

    @property
    def ok(self) -> bool:
        return abs(self.height_error) <= HEIGHT_TOLERANCE_M and self.tilt <= TILT_TOLERANCE_RAD

    def describe(self) -> str:
        text = (f"ground {self.measured.height:.2f} m below the model's sensor (training scans: {self.reference:.2f}),"
                f" tilted {self.tilt:.3f} rad, over {self.fits} scans")
        if self.ok:
            return text + ": as trained"
        advice = ("; the sensor is not where the model expects it: set sensor_height "
                  f"{self.suggested.height:.2f}, sensor_pitch {self.suggested.pitch:.3f}, sensor_roll "
                  f"{self.suggested.roll:.3f} (or auto_sensor_mount), or check the TF to model_frame"
                  if self.suggested is not None else "; the ground is not where any mount would put it")
        return text + advice


def check_mount(estimate: GroundFit, model_from_input: Transform | None, reference: float,
                training_height: float, fits: int) -> MountCheck:
    """A sensor-frame estimate judged in the model's frame (model_from_input: the frames in force, None = the
    sensor frame is the model's)."""
    measured = estimate if model_from_input is None else estimate.transformed(model_from_input)
    return MountCheck(measured, float(reference), mount_for(estimate, reference, training_height), int(fits))


__all__ = ["GroundFit", "GroundTracker", "MountCheck", "check_mount", "dataset_ground_height", "fit_ground_plane", "ground_from_tilt",
           "mount_for", "BAND_M", "CELL_M", "DEFAULT_WINDOW", "GROUND_EVERY", "HEIGHT_TOLERANCE_M", "INLIER_M",
           "MIN_INLIERS", "TILT_TOLERANCE_RAD", "WARM_FITS"]
