"""Automatic intensity scale: bring another sensor's intensity to the level the model was trained on.

LiDARs disagree on what "intensity" means: 0-255 or 0-1, and different reflectance calibrations. A model trained
on one scale sees clutter as objects on another (measured: the default bundle on the six real KITTI frames with
intensity x 0.7 gave 23 false positives against 20; on the 180 simulated holdout frames 1.58 per frame against 1.29,
docs/SIM_TO_REAL.md "Intensity level").

The *level* of a scan is the median intensity of its returns between LEVEL_RANGE_M (horizontal distance): near
returns are few and bright, far ones dark, so the band keeps the level about one of surfaces, not of distance.
Over the training scans it is steady (the release's simulated scans 0.285 ± 0.022, real KITTI 0.288 ± 0.022), so a
scaled sensor shows up as a scaled level. The bundle records its training level (manifest field `intensity_level`);
`AutoIntensity` multiplies each scan's intensity by training level / the median of the last `window` scans' levels
(a sensor's scale is a property of the sensor, not of one scan: the running median steadies it against one scan of
a bright wall), then clips to the feature's range, as training clipped its augmented intensity.

A scale factor, not a full re-mapping: a sensor whose intensity curve differs in shape (gamma) is brought only to
the right level.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

LEVEL_RANGE_M = (3.0, 40.0)  # horizontal distance band of the returns whose median intensity is the scan's level
MIN_RETURNS = 200  # fewer returns with a positive intensity in the band: the scan gives no level
DEFAULT_WINDOW = 30  # scans in the running median (3 s of a 10 Hz sensor)
# AutoIntensity measures each scan's level on every LEVEL_STRIDE-th point: the median of ~20k returns equals that of
# ~80k to the intensity's resolution (KITTI scans: the same 0.32), at a quarter of the cost (0.3 against 2.3 ms per
# 115k-point scan), which the node's decode + preprocess budget (10 ms) needs.
LEVEL_STRIDE = 4
MAX_FACTOR = 1e6  # a factor beyond this either way is not a scale difference but a broken intensity channel (16-bit sensors need ~1e-5)


def scan_intensity_level(points: np.ndarray, column: int = 3) -> float | None:
    """Median intensity of a scan's returns LEVEL_RANGE_M away (horizontally) with a finite, positive intensity;
    None when fewer than MIN_RETURNS such returns (the scan says nothing about the sensor's scale)."""
    if points.ndim != 2 or points.shape[1] <= column or not len(points):
        return None
    # squared distances against squared bounds: no square root per point (the node pays this on every scan)
    squared = points[:, 0] * points[:, 0] + points[:, 1] * points[:, 1]
    intensity = points[:, column]
    keep = ((squared >= LEVEL_RANGE_M[0] ** 2) & (squared < LEVEL_RANGE_M[1] ** 2) & np.isfinite(intensity)
            & (intensity > 0))
    if int(keep.sum()) < MIN_RETURNS:
        return None
    return _median(intensity[keep])


def _median(values: np.ndarray) -> float:
    """np.median(values.astype(np.float64)) by one partition: the same value, at a sixth of np.median's time on
    ~20k returns (0.05 against 0.3 ms)."""
    n = len(values)
    k = n // 2
    if n % 2:
        return float(np.partition(values, k)[k])
    low, high = np.partition(values, (k - 1, k))[k - 1:k + 1].astype(np.float64)
    return float((low + high) / 2)


class AutoIntensity:
    """Per-scan intensity factor towards a training level, from the running median of recent scans' levels."""

    def __init__(self, training_level: float, window: int = DEFAULT_WINDOW, column: int = 3,
                 clip: tuple[float, float] | None = None):
        if not (isinstance(training_level, (int, float)) and np.isfinite(training_level) and training_level > 0):
            raise ValueError(f"intensity training level must be a number > 0, got {training_level!r}")
        if int(window) < 1:
            raise ValueError(f"intensity level window must be >= 1 scan, got {window!r}")
        self.training_level = float(training_level)
        self.column, self.clip = column, clip
        self.levels: deque[float] = deque(maxlen=int(window))
        self.factor = 1.0  # the factor of the last scan (1 until a scan gives a level)

    def update(self, points: np.ndarray) -> float:
        """Record this scan's level (if it has one; measured on every LEVEL_STRIDE-th point) and return the factor
        for it."""
        level = scan_intensity_level(points[::LEVEL_STRIDE], self.column)
        if level is not None:
            self.levels.append(level)
        if self.levels:
            self.factor = float(np.clip(self.training_level / float(np.median(self.levels)),
                                        1.0 / MAX_FACTOR, MAX_FACTOR))
        return self.factor

    def scale_(self, values: torch.Tensor) -> torch.Tensor:
        """Multiply an intensity column (a view into the model's input) in place by the last scan's factor and clip
        it to `clip`, the feature's range as the model sees it, as training clipped its augmented intensity;
        returns it."""
        values.mul_(self.factor)
        if self.clip is not None:
            values.clamp_(self.clip[0], self.clip[1])
        return values


def dataset_intensity_level(scans) -> float:
    """The training level: median of the per-scan levels of an iterable of (N, >= 4) scans (ValueError if none
    has a level)."""
    levels = [level for level in (scan_intensity_level(points) for points in scans) if level is not None]
    if not levels:
        raise ValueError(f"no scan has {MIN_RETURNS} returns with a positive intensity {LEVEL_RANGE_M[0]:g}-"
                         f"{LEVEL_RANGE_M[1]:g} m away: cannot measure an intensity level")
    return float(np.median(levels))


__all__ = ["AutoIntensity", "scan_intensity_level", "dataset_intensity_level", "LEVEL_RANGE_M", "MIN_RETURNS",
           "DEFAULT_WINDOW", "LEVEL_STRIDE"]
