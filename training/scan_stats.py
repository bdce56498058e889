"""Statistics of one LiDAR scan that a detector is sensitive to (to compare simulated and real scans).

    stats = scan_statistics(points, boxes, names, labelled=camera_fov_mask(...))

points (N, 4) x y z intensity in the LiDAR frame; boxes (M, 7) labelled objects (LiDAR frame, any class);
names (M,) their class names; labelled (N,) the points the labels cover (KITTI labels only the camera's view), so
"outside every box" means unlabelled there, not merely behind the car. Sensor-level figures (rows, dropout,
near-range gaps, range histogram, points per scan) use the whole scan.

Conventions: "range" is the horizontal distance from the sensor axis; heights are relative to the fitted ground;
fixed bin edges (module constants) so scans and folders add up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from training.data.augment import first_box_of_point
from training.data.sensor_variation import Rows, elevation_deg, horizontal_range, sensor_rows

RANGE_HISTOGRAM_EDGES = np.arange(0.0, 122.0, 2.0)
RANGE_BAND_EDGES = np.array([0.0, 10.0, 20.0, 30.0, 40.0, 60.0, np.inf])  # objects and clutter
INTENSITY_EDGES = np.linspace(0.0, 1.0, 21)
GROUND_RING_EDGES = np.array([0.0, 10.0, 20.0, 30.0, 45.0, 70.0])
HEIGHT_BAND_EDGES = np.array([0.3, 1.0, 2.0, 4.0, np.inf])  # above ground: low clutter, body height, walls, high
GROUND_TOLERANCE = 0.2  # m: a point within this of the fitted plane is ground
GROUND_SECTORS = 8  # azimuth sectors per ring: real terrain is not one plane all around the car
AZIMUTH_CELLS = 2000  # 0.18 deg, the HDL-64's column spacing at 10 Hz: a row's empty cells are its missing returns
NEAR_SECTORS = 72  # 5 deg sectors for the near-range gap (ego-vehicle shadow)
CLASSES = ("Car", "Pedestrian", "Cyclist")
SURFACES = ("ground",) + CLASSES + ("other objects", "rest")


class GroundFit(NamedTuple):
    """Ground per range ring (GROUND_RING_EDGES), from one plane per (ring, azimuth sector): height (median over
    sectors of the median z of their ground points, m), slope (median over sectors, deg), unevenness (spread of the
    sectors' ground heights around the ring, IQR, m); nan where a ring has no fitted sector. Per point: height above
    its sector's plane (nan where unfitted) and the ground flag."""

    height: np.ndarray
    slope_deg: np.ndarray
    unevenness: np.ndarray
    height_above: np.ndarray
    is_ground: np.ndarray


def fit_plane(xyz: np.ndarray) -> np.ndarray:
    """Least-squares z = a x + b y + c over (K, 3) points -> (a, b, c)."""
    design = np.stack([xyz[:, 0], xyz[:, 1], np.ones(len(xyz))], 1)
    return np.linalg.lstsq(design, xyz[:, 2], rcond=None)[0]


def lowest_per_cell(xyz: np.ndarray, cell: float) -> np.ndarray:
    """Indices of the lowest point of each occupied (cell x cell) BEV cell."""
    key = np.floor(xyz[:, :2] / cell).astype(np.int64)
    order = np.lexsort((xyz[:, 2], key[:, 1], key[:, 0]))
    sorted_key = key[order]
    first = np.r_[True, (np.diff(sorted_key, axis=0) != 0).any(1)]
    return order[first]


def robust_ground_plane(seeds: np.ndarray, tolerance: float) -> np.ndarray:
    """Plane (a, b, c) through ground seeds, trimming seeds far above the lowest ones (roofs, walls with no
    ground below) by refitting with a shrinking inlier band (1.0, 0.5, 0.3 m, then `tolerance`)."""
    inliers = seeds[seeds[:, 2] <= np.percentile(seeds[:, 2], 30) + 1.0]
    for band in (1.0, 0.5, 0.3, tolerance):
        coef = fit_plane(inliers)
        residual = seeds[:, 2] - seeds[:, :2] @ coef[:2] - coef[2]
        if (np.abs(residual) <= band).sum() < 3:
            break
        inliers = seeds[np.abs(residual) <= band]
    return fit_plane(inliers)


def fit_ground(points: np.ndarray, ring_edges: np.ndarray = GROUND_RING_EDGES, sectors: int = GROUND_SECTORS,
               cell: float = 1.0, tolerance: float = GROUND_TOLERANCE, min_cells: int = 6, max_slope_deg: float = 10.0,
               max_grade: float = 0.06) -> GroundFit:
    """A robust plane per (range ring, azimuth sector), fitted to the lowest point of each BEV cell.

    A patch is left unfitted (nan) when its plane is steeper than max_slope_deg or its ground lies further than
    max_grade * range from the nearest ring's ground height: no ground is visible there.
    """
    xyz = points[:, :3].astype(np.float64)
    n_rings = len(ring_edges) - 1
    ring = np.digitize(horizontal_range(points), ring_edges) - 1
    sector = np.clip(((np.arctan2(xyz[:, 1], xyz[:, 0]) + np.pi) / (2 * np.pi) * sectors).astype(np.int64), 0,
                     sectors - 1)
    group = np.where((ring >= 0) & (ring < n_rings), ring * sectors + sector, -1)
    height_above = np.full(len(points), np.nan)
    sector_height = np.full((n_rings, sectors), np.nan)
    sector_slope = np.full((n_rings, sectors), np.nan)
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(n_rings * sectors + 1))
    ring_mid = (ring_edges[1:] + ring_edges[:-1]) / 2
    reference = None  # ground height near the car: the nearest ring's median, once fitted
    for g in range(n_rings * sectors):  # a few dozen patches in ring order; everything inside is vectorised
        members = order[bounds[g]:bounds[g + 1]]
        seeds = xyz[members[lowest_per_cell(xyz[members], cell)]] if len(members) else xyz[:0]
        r = g // sectors
        if r > 0 and reference is None and np.isfinite(sector_height[0]).any():
            reference = float(np.nanmedian(sector_height[0]))
        if len(seeds) < min_cells:
            continue
        coef = robust_ground_plane(seeds, tolerance)
        offset = xyz[members, 2] - xyz[members, :2] @ coef[:2] - coef[2]
        ground = members[np.abs(offset) <= tolerance]
        if not len(ground):
            continue
        level, slope = np.median(xyz[ground, 2]), np.degrees(np.arctan(np.hypot(coef[0], coef[1])))
        # no ground seen (a wall, hedge or roofs all across the patch): a plane there would not be the ground
        if slope > max_slope_deg or (reference is not None and abs(level - reference) > max_grade * ring_mid[r]):
            continue
        height_above[members] = offset
        sector_height.flat[g], sector_slope.flat[g] = level, slope
    with np.errstate(invalid="ignore"):
        is_ground = np.abs(height_above) <= tolerance
    fitted = np.isfinite(sector_height).any(1)
    height, slope, unevenness = (np.full(n_rings, np.nan) for _ in range(3))
    height[fitted] = np.nanmedian(sector_height[fitted], 1)
    slope[fitted] = np.nanmedian(sector_slope[fitted], 1)
    q75, q25 = np.nanpercentile(sector_height[fitted], [75, 25], axis=1)
    unevenness[fitted] = q75 - q25
    return GroundFit(height, slope, unevenness, height_above, is_ground)


def row_dropout(azimuth_rad: np.ndarray, rows: Rows, cells: int = AZIMUTH_CELLS) -> np.ndarray:
    """(R,) fraction of the `cells` azimuth cells in which a row has no return."""
    cell = np.clip(((azimuth_rad + np.pi) / (2 * np.pi) * cells).astype(np.int64), 0, cells - 1)
    occupied = np.zeros(rows.count * cells, bool)
    occupied[rows.row * cells + cell] = True
    return 1.0 - occupied.reshape(rows.count, cells).mean(1)


def row_spread_deg(el: np.ndarray, rows: Rows) -> np.ndarray:
    """(R,) mean absolute deviation of elevation within each row (deg): 0 for rays from one origin."""
    n = np.bincount(rows.row, minlength=rows.count)
    mean = np.bincount(rows.row, weights=el, minlength=rows.count) / np.maximum(n, 1)
    return np.bincount(rows.row, weights=np.abs(el - mean[rows.row]), minlength=rows.count) / np.maximum(n, 1)


def near_range(points: np.ndarray, sectors: int = NEAR_SECTORS) -> np.ndarray:
    """(sectors,) smallest horizontal range in each azimuth sector (inf where empty), sector 0 starting at -pi."""
    azimuth = np.arctan2(points[:, 1], points[:, 0]).astype(np.float64)
    sector = np.clip(((azimuth + np.pi) / (2 * np.pi) * sectors).astype(np.int64), 0, sectors - 1)
    nearest = np.full(sectors, np.inf)
    np.minimum.at(nearest, sector, horizontal_range(points))
    return nearest


@dataclass
class ScanStatistics:
    """Everything measured on one scan; histograms use the module's bin edges."""

    num_points: int
    range_histogram: np.ndarray  # (len(RANGE_HISTOGRAM_EDGES) - 1,) points per 2 m of range
    object_names: np.ndarray  # (M,) str
    object_ranges: np.ndarray  # (M,) horizontal range of the box centre
    object_points: np.ndarray  # (M,) points inside each box
    intensity_all: np.ndarray  # (20,) histogram over the whole scan
    intensity_by_surface: dict[str, np.ndarray]  # SURFACES -> (20,) histogram, labelled region only
    ground: GroundFit  # per ring; per-point arrays dropped by scan_statistics (see below)
    ground_fraction: float  # of the labelled region's points
    clutter: np.ndarray  # (height bands, range bands) points above ground outside every box, labelled region
    row_elevation_deg: np.ndarray  # (R,) row centres, ascending
    row_points: np.ndarray  # (R,)
    row_empty_fraction: np.ndarray  # (R,) empty azimuth cells
    row_spread_deg: np.ndarray  # (R,)
    near_min_range: np.ndarray  # (NEAR_SECTORS,)


def surface_of_points(owner: np.ndarray, names: np.ndarray, is_ground: np.ndarray) -> np.ndarray:
    """(N,) index into SURFACES: the class of the box a point is in (other labelled classes -> 'other objects'),
    else ground, else rest."""
    match = np.asarray(names, dtype=str).reshape(-1, 1) == np.asarray(SURFACES, dtype=str).reshape(1, -1)
    class_of_box = np.where(match.any(1) & (match.argmax(1) > 0), match.argmax(1), SURFACES.index("other objects"))
    return np.where(owner >= 0, class_of_box[np.maximum(owner, 0)] if len(names) else 0,
                    np.where(is_ground, SURFACES.index("ground"), SURFACES.index("rest")))


def scan_statistics(points: np.ndarray, boxes: np.ndarray, names, labelled: np.ndarray | None = None,
                    rows: Rows | None = None) -> ScanStatistics:
    """Measure one scan (see the module docstring). rows: laser rows if known, else sensor_rows(points)."""
    points = np.asarray(points)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    names = np.asarray(names, dtype=str).reshape(-1)
    if points.ndim != 2 or points.shape[1] < 4:
        raise ValueError(f"scan_statistics: points must be (N, >=4) x y z intensity, got shape {points.shape}")
    if len(names) != len(boxes):
        raise ValueError(f"scan_statistics: {len(boxes)} boxes but {len(names)} names")
    labelled = np.ones(len(points), bool) if labelled is None else np.asarray(labelled, bool)
    rng_h = horizontal_range(points)
    intensity = points[:, 3].astype(np.float64)

    owner = first_box_of_point(points, boxes)
    ground = fit_ground(points)
    surface = surface_of_points(owner, names, ground.is_ground)
    region = labelled
    by_surface = {name: np.histogram(intensity[region & (surface == i)], INTENSITY_EDGES)[0]
                  for i, name in enumerate(SURFACES)}
    with np.errstate(invalid="ignore"):
        above = region & (owner < 0) & (ground.height_above >= HEIGHT_BAND_EDGES[0])
    clutter = np.histogram2d(ground.height_above[above], rng_h[above], [HEIGHT_BAND_EDGES, RANGE_BAND_EDGES])[0]

    rows = sensor_rows(points) if rows is None else rows
    azimuth = np.arctan2(points[:, 1], points[:, 0]).astype(np.float64)
    return ScanStatistics(
        num_points=len(points),
        range_histogram=np.histogram(rng_h, RANGE_HISTOGRAM_EDGES)[0],
        object_names=names,
        object_ranges=np.hypot(boxes[:, 0], boxes[:, 1]),
        object_points=np.bincount(owner[owner >= 0], minlength=len(boxes)),  # a point counts for one box
        intensity_all=np.histogram(intensity, INTENSITY_EDGES)[0],
        intensity_by_surface=by_surface,
        ground=ground._replace(height_above=np.zeros(0), is_ground=np.zeros(0, bool)),
        ground_fraction=float((ground.is_ground & region).sum() / max(region.sum(), 1)),
        clutter=clutter.astype(np.int64),
        row_elevation_deg=rows.elevation_deg,
        row_points=np.bincount(rows.row, minlength=rows.count),
        row_empty_fraction=row_dropout(azimuth, rows),
        row_spread_deg=row_spread_deg(elevation_deg(points), rows),
        near_min_range=near_range(points),
    )
