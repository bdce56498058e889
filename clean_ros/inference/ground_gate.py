"""Ground-contact gate: drop boxes that float above the local ground.

Cars, people and cyclists stand on the ground. On six real KITTI scans a fifth of the shipped model's detections all
around the car hang more than 0.5 m above it (tree crowns, hedge and wall tops: 15 of 71), against 0.3 % on simulated
scans, where the matched boxes stay within 0.52 m (docs/RELEASE.md "Floating boxes"). The gate measures each box's
gap and drops those above max_gap_m (the bundle's `ground_gate_m`, chosen on its simulated val split by
training/ground_gate.py; the node's `ground_gate_m`, 0 = off).

Local ground of a box: the lowest point of every CELL_M x CELL_M BEV cell; over the cells within half the box's BEV
diagonal + MARGIN_M of its centre (a square window), the QUANTILE of those minima (a quantile, not the minimum: a
stray return below the road must not lift every box). Gap = box bottom (z - h / 2) - local ground. A box with fewer
than MIN_CELLS occupied cells around it is kept: nothing to judge it by. Vectorised: one scatter-min of the points
near any box, one gather of boxes x window cells, no loop over points or boxes. Points and boxes are in the model's
frame (the sensor mount already applied), so a sensor mounted higher or tilted is judged the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from clean_ros.types import Detections

CELL_M = 0.5
MARGIN_M = 1.0
QUANTILE = 0.25
MIN_CELLS = 3
MAX_CELLS = 1 << 24  # the grid spans the boxes: 2 km x 2 km at 0.5 m; a model's boxes lie within its range


def check_max_gap(value) -> float:
    """ground_gate_m as a float (0 = off); ValueError with one line otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"ground_gate_m must be a number of metres >= 0 (0 = off), got {value!r}")
    return float(value)


def lowest_per_cell(cell: np.ndarray, z: np.ndarray, n_cells: int) -> torch.Tensor:
    """(n_cells,) the lowest z in each cell (inf where a cell holds no point), z's dtype; cell: (N,) int64 indices
    in [0, n_cells). One scatter-min, no loop over points (also the ground-plane fit's grid,
    clean_ros.inference.ground_plane)."""
    values = torch.from_numpy(np.ascontiguousarray(z))
    lowest = torch.full((n_cells,), math.inf, dtype=values.dtype)
    return lowest.scatter_reduce_(0, torch.from_numpy(cell), values, reduce="amin")


def box_ground_gaps(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(K,) float32 gap of each box (N, >=3 points; K, >=7 boxes x y z l w h yaw, one frame); NaN where fewer than
    MIN_CELLS cells around the box hold a point."""
    k = len(boxes)
    if k == 0:
        return np.zeros(0, np.float32)
    b = torch.as_tensor(np.asarray(boxes, np.float32)[:, :7])
    reach = 0.5 * torch.hypot(b[:, 3], b[:, 4]) + MARGIN_M  # (K,) window half-side
    lo = torch.stack([(b[:, 0] - reach).min(), (b[:, 1] - reach).min()])
    hi = torch.stack([(b[:, 0] + reach).max(), (b[:, 1] + reach).max()])
    if not bool(torch.isfinite(b).all()):
        raise ValueError("box_ground_gaps: boxes must be finite")
    nx, ny = (int(v) + 1 for v in torch.floor((hi - lo) / CELL_M))
    if nx * ny > MAX_CELLS:
        raise ValueError(f"box_ground_gaps: the boxes span {nx * CELL_M:g} x {ny * CELL_M:g} m, more than the "
                         f"{MAX_CELLS} cells of {CELL_M:g} m this gate grids (one frame's boxes lie within its range)")
    # numpy for the per-point arithmetic (cheaper than torch on one thread for these sizes): cell coordinates as
    # floats; out-of-window and non-finite points fail the comparisons (NaN compares False)
    pts = np.asarray(points)
    fx = (pts[:, 0] - np.float32(lo[0])) * np.float32(1.0 / CELL_M)
    fy = (pts[:, 1] - np.float32(lo[1])) * np.float32(1.0 / CELL_M)
    ok = (fx >= 0) & (fx < nx) & (fy >= 0) & (fy < ny)
    with np.errstate(invalid="ignore"):  # NaN -> int is garbage, replaced by the spare cell below
        cell = fx.astype(np.int32) * np.int32(ny) + fy.astype(np.int32)  # truncation = floor where ok
    cell = np.where(ok, cell, np.int32(nx * ny)).astype(np.int64)  # points outside: one spare cell, dropped
    cell_min = lowest_per_cell(cell, np.asarray(pts[:, 2], np.float32), nx * ny + 1)[:-1]
    half = int(math.ceil(float(reach.max()) / CELL_M))
    offsets = torch.arange(-half, half + 1)
    centre = torch.floor((b[:, :2] - lo) / CELL_M).long()  # (K, 2)
    ci = centre[:, 0, None, None] + offsets[None, :, None]  # (K, W, 1)
    cj = centre[:, 1, None, None] + offsets[None, None, :]  # (K, 1, W)
    inside = (ci >= 0) & (ci < nx) & (cj >= 0) & (cj < ny)
    within = (offsets[None, :, None].abs() * CELL_M <= reach[:, None, None]) & \
             (offsets[None, None, :].abs() * CELL_M <= reach[:, None, None])
    flat = (ci.clamp(0, nx - 1) * ny + cj.clamp(0, ny - 1))
    values = cell_min[flat]  # (K, W, W)
    values = torch.where(inside & within & torch.isfinite(values), values, torch.tensor(math.nan)).reshape(k, -1)
    occupied = (~torch.isnan(values)).sum(1)
    ground = torch.nanquantile(values, QUANTILE, dim=1)
    gaps = (b[:, 2] - 0.5 * b[:, 5]) - ground
    gaps[occupied < MIN_CELLS] = math.nan
    return gaps.numpy().astype(np.float32)


@dataclass(frozen=True)
class GroundGate:
    """Drops the boxes whose gap exceeds max_gap_m (> 0)."""

    max_gap_m: float

    def keep(self, points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(K,) bool: the boxes that touch the ground (or cannot be judged)."""
        gaps = box_ground_gaps(points, boxes)
        return ~(gaps > np.float32(self.max_gap_m))  # NaN compares False: kept

    def __call__(self, points: np.ndarray, detections: Detections) -> Detections:
        if not len(detections):
            return detections
        keep = self.keep(points, detections.boxes)
        if keep.all():
            return detections
        return replace(detections, boxes=detections.boxes[keep], scores=detections.scores[keep],
                       labels=detections.labels[keep])


__all__ = ["CELL_M", "MARGIN_M", "MIN_CELLS", "QUANTILE", "GroundGate", "box_ground_gaps", "check_max_gap",
           "lowest_per_cell"]
