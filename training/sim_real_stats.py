#!/usr/bin/env python3
"""Compare simulated and real LiDAR scans on the statistics a detector is sensitive to (the sim-to-real gap).

    python training/sim_real_stats.py --real ../shared/data/kitti_sample/training --sim /work/tmp_sim/training \
        [--frames 30] [--plots docs/sim_to_real] [--table docs/sim_to_real/table.md]

Both folders have the KITTI layout (velodyne/, calib/, label_2/). Labels are used only to measure (points inside
boxes, the labelled region = the camera's view). Prints one markdown table, ranked by gap (largest first).

From Python (e.g. to check a simulator change):

    comparison = compare(real_folder, sim_folder)        # -> Comparison (rows ranked by gap)
    print(format_table(comparison))
    stats = folder_statistics(folder)                     # -> list[ScanStatistics], one per frame
    figures = summary_figures(stats)                      # -> {name: value}

Gap score of a row (so that different units rank together): for a positive quantity |ln(sim / real)| / ln(1.25)
(1.0 = 25 % off); for a signed one |sim - real| / tolerance (the row's unit of concern); for a histogram the total
variation distance / 0.1.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from clean_ros.atomic import atomic_write_text  # noqa: E402
from clean_ros.cloud.kitti import DEFAULT_IMAGE_SHAPE, Calibration, KittiFormatError, read_labels  # noqa: E402
from training.data.kitti_dataset import (camera_fov_mask, ground_truth_from_annotations,  # noqa: E402
                                         read_velodyne)
from training.scan_stats import (CLASSES, GROUND_RING_EDGES, HEIGHT_BAND_EDGES, INTENSITY_EDGES,  # noqa: E402
                                 RANGE_BAND_EDGES, RANGE_HISTOGRAM_EDGES, SURFACES, ScanStatistics,
                                 scan_statistics)

RATIO_UNIT = math.log(1.25)
HISTOGRAM_UNIT = 0.1
REFERENCE_RANGES = {"Car": 20.0, "Pedestrian": 15.0, "Cyclist": 15.0}  # m, where points-per-object is compared
GROUND_FACING_DEG = -10.0  # rows below this elevation always hit the road nearby: their empty cells are dropout


class SimRealError(ValueError):
    """A folder that cannot be measured; the message names it."""


# --------------------------------------------------------------------------- reading folders
def frame_ids(folder: Path) -> list[str]:
    velodyne = folder / "velodyne"
    if not velodyne.is_dir():
        raise SimRealError(f"{velodyne}: not found; expected a KITTI-layout folder with velodyne/, calib/, label_2/")
    ids = sorted(p.stem for p in velodyne.glob("*.bin"))
    if not ids:
        raise SimRealError(f"{velodyne}: no .bin scans")
    return ids


def frame_statistics(folder: str | Path, frame_id: str) -> ScanStatistics:
    """Statistics of one KITTI-layout frame; the labelled region is the camera's view."""
    folder = Path(folder)
    points = read_velodyne(folder / "velodyne" / f"{frame_id}.bin")
    calib = Calibration.from_file(folder / "calib" / f"{frame_id}.txt")
    annotations = read_labels(folder / "label_2" / f"{frame_id}.txt")
    boxes, _, names, _ = ground_truth_from_annotations(annotations, calib, CLASSES)
    return scan_statistics(points, boxes, names, labelled=camera_fov_mask(points, calib, DEFAULT_IMAGE_SHAPE))


def folder_statistics(folder: str | Path, max_frames: int | None = None) -> list[ScanStatistics]:
    """ScanStatistics of the first max_frames frames (sorted ids) of a KITTI-layout folder."""
    folder = Path(folder)
    ids = frame_ids(folder)[:max_frames]
    try:
        return [frame_statistics(folder, i) for i in ids]
    except KittiFormatError as exc:
        raise SimRealError(str(exc)) from None


# --------------------------------------------------------------------------- aggregating
def points_vs_range_fit(scans: list[ScanStatistics], class_name: str) -> tuple[float, float, int]:
    """(log-log intercept, exponent, objects used) of points = exp(a) * range ** b over objects with >= 1 point."""
    names = np.concatenate([s.object_names for s in scans])
    ranges = np.concatenate([s.object_ranges for s in scans])
    counts = np.concatenate([s.object_points for s in scans])
    use = (names == class_name) & (counts > 0) & (ranges > 2.0)
    if use.sum() < 2:
        return math.nan, math.nan, int(use.sum())
    slope, intercept = np.polyfit(np.log(ranges[use]), np.log(counts[use]), 1)
    return float(intercept), float(slope), int(use.sum())


def object_table(scans: list[ScanStatistics]) -> dict[str, list[tuple[int, float]]]:
    """Per class, per RANGE_BAND_EDGES band: (objects, median points inside the box)."""
    names = np.concatenate([s.object_names for s in scans])
    ranges = np.concatenate([s.object_ranges for s in scans])
    counts = np.concatenate([s.object_points for s in scans])
    band = np.digitize(ranges, RANGE_BAND_EDGES) - 1
    table = {}
    for name in CLASSES:
        cells = []
        for b in range(len(RANGE_BAND_EDGES) - 1):
            c = counts[(names == name) & (band == b)]
            cells.append((len(c), float(np.median(c)) if len(c) else math.nan))
        table[name] = cells
    return table


def normalised(histogram: np.ndarray) -> np.ndarray:
    total = histogram.sum()
    return histogram / total if total else np.zeros(len(histogram))


def intensity_histograms(scans: list[ScanStatistics]) -> dict[str, np.ndarray]:
    """'all' and every surface -> summed histogram over INTENSITY_EDGES."""
    out = {"all": np.sum([s.intensity_all for s in scans], 0)}
    out.update({name: np.sum([s.intensity_by_surface[name] for s in scans], 0) for name in SURFACES})
    return out


def mean_of_histogram(histogram: np.ndarray, edges: np.ndarray) -> float:
    total = histogram.sum()
    return float((histogram * (edges[1:] + edges[:-1]) / 2).sum() / total) if total else math.nan


def row_arrays(scans: list[ScanStatistics]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(elevation, empty fraction, spread) of every row of every scan, concatenated."""
    return (np.concatenate([s.row_elevation_deg for s in scans]), np.concatenate([s.row_empty_fraction for s in scans]),
            np.concatenate([s.row_spread_deg for s in scans]))


def summary_figures(scans: list[ScanStatistics]) -> dict[str, float]:
    """The scalar figures compared between folders (names as in the comparison table)."""
    if not scans:
        raise SimRealError("no scans to summarise")
    f: dict[str, float] = {}
    f["points per scan"] = float(np.mean([s.num_points for s in scans]))
    ranges = np.sum([s.range_histogram for s in scans], 0)
    beyond = RANGE_HISTOGRAM_EDGES[:-1] >= 40.0
    f["share of points beyond 40 m"] = float(ranges[beyond].sum() / max(ranges.sum(), 1))
    for name in CLASSES:
        a, b, n = points_vs_range_fit(scans, name)
        f[f"{name}: points at {REFERENCE_RANGES[name]:.0f} m (fit)"] = math.exp(a) * REFERENCE_RANGES[name] ** b
        f[f"{name}: points-vs-range exponent"] = b
    hist = intensity_histograms(scans)
    for name in ("all",) + SURFACES:
        f[f"mean intensity: {name}"] = mean_of_histogram(hist[name], INTENSITY_EDGES)
    f["share of intensity < 0.05"] = float(hist["all"][0] / max(hist["all"].sum(), 1))
    heights = np.array([s.ground.height for s in scans])
    slopes = np.array([s.ground.slope_deg for s in scans])
    f["ground height 0-10 m (m)"] = float(np.nanmedian(heights[:, 0]))
    f["ground height change 0-10 m -> 30-45 m (m)"] = float(np.nanmedian(heights[:, 3] - heights[:, 0]))
    f["ground slope 0-10 m (deg)"] = float(np.nanmedian(slopes[:, 0]))
    f[f"ground slope {GROUND_RING_EDGES[2]:.0f}-{GROUND_RING_EDGES[-1]:.0f} m (deg)"] = float(np.nanmedian(slopes[:, 2:]))
    f["ground unevenness around a ring, 10-45 m (m)"] = float(np.nanmedian(np.array(
        [s.ground.unevenness[1:4] for s in scans])))
    f["ground share of labelled-region points"] = float(np.mean([s.ground_fraction for s in scans]))
    clutter = np.mean([s.clutter for s in scans], 0)
    for i in range(len(HEIGHT_BAND_EDGES) - 2):
        lo, hi = HEIGHT_BAND_EDGES[i], HEIGHT_BAND_EDGES[i + 1]
        f[f"clutter {lo:g}-{hi:g} m above ground (points/scan)"] = float(clutter[i].sum())
    f["clutter beyond 20 m (points/scan)"] = float(clutter[:, 2:].sum())
    elevation, empty, spread = row_arrays(scans)
    f["rows per scan"] = float(np.mean([len(s.row_elevation_deg) for s in scans]))
    f[f"empty cells, rows below {GROUND_FACING_DEG:g} deg"] = float(empty[elevation < GROUND_FACING_DEG].mean())
    f["empty cells, rows above -2 deg"] = float(empty[elevation > -2.0].mean())
    f["row elevation spread (deg)"] = float(spread.mean())
    near = np.concatenate([s.near_min_range for s in scans])
    f["nearest return per 5 deg sector, median (m)"] = float(np.median(near))
    f["sectors with a return within 3 m"] = float(np.mean(near < 3.0))
    return f


# --------------------------------------------------------------------------- comparing
SIGNED = {  # figures that may be <= 0 or whose ratio means little: (unit of concern)
    "points-vs-range exponent": 0.3, "ground height 0-10 m (m)": 0.1, "ground height change": 0.2,
    "ground slope": 0.5, "ground unevenness": 0.1, "rows per scan": 2.0, "row elevation spread (deg)": 0.05,
    "sectors with a return within 3 m": 0.1,
}


@dataclass
class ComparisonRow:
    name: str
    real: float
    sim: float
    gap: float  # see the module docstring


@dataclass
class Comparison:
    real_folder: str
    sim_folder: str
    real: list[ScanStatistics]
    sim: list[ScanStatistics]
    rows: list[ComparisonRow] = field(default_factory=list)  # ranked, largest gap first


def gap_score(name: str, real: float, sim: float) -> float:
    if not (math.isfinite(real) and math.isfinite(sim)):
        return math.inf
    for key, unit in SIGNED.items():
        if key in name:
            return abs(sim - real) / unit
    return abs(math.log(max(sim, 1e-6) / max(real, 1e-6))) / RATIO_UNIT


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    return float(0.5 * np.abs(normalised(a) - normalised(b)).sum())


def per_object_rows(real: list[ScanStatistics], sim: list[ScanStatistics]) -> list[ComparisonRow]:
    """Per class: each real object's points against the simulated points-vs-range fit at that object's range.

    Robust with few real objects: the row's `real` is the median ratio real / sim-fit (1.0 = same density), `sim`
    is 1.0 by construction, and the number of real objects is in the name.
    """
    names = np.concatenate([s.object_names for s in real])
    ranges = np.concatenate([s.object_ranges for s in real])
    counts = np.concatenate([s.object_points for s in real])
    rows = []
    for name in CLASSES:
        a, b, _ = points_vs_range_fit(sim, name)
        use = (names == name) & (counts > 0) & (ranges > 2.0)
        ratio = float(np.median(counts[use] / (np.exp(a) * ranges[use] ** b))) if use.any() else math.nan
        rows.append(ComparisonRow(f"{name}: real points / sim fit at the same range ({int(use.sum())} real objects)",
                                  ratio, 1.0, gap_score("ratio", ratio, 1.0)))
    return rows


def compare_statistics(real: list[ScanStatistics], sim: list[ScanStatistics], real_folder: str = "real",
                       sim_folder: str = "sim") -> Comparison:
    fr, fs = summary_figures(real), summary_figures(sim)
    rows = [ComparisonRow(name, fr[name], fs[name], gap_score(name, fr[name], fs[name])) for name in fr]
    hr, hs = intensity_histograms(real), intensity_histograms(sim)
    rows += [ComparisonRow(f"intensity histogram distance: {name}", 0.0, total_variation(hr[name], hs[name]),
                           total_variation(hr[name], hs[name]) / HISTOGRAM_UNIT) for name in ("all", "ground", "rest")]
    rr, rs = np.sum([s.range_histogram for s in real], 0), np.sum([s.range_histogram for s in sim], 0)
    rows.append(ComparisonRow("range histogram distance", 0.0, total_variation(rr, rs),
                              total_variation(rr, rs) / HISTOGRAM_UNIT))
    rows += per_object_rows(real, sim)
    rows.sort(key=lambda r: -r.gap if math.isfinite(r.gap) else math.inf)  # figures one side lacks go last
    return Comparison(str(real_folder), str(sim_folder), real, sim, rows)


def compare(real_folder: str | Path, sim_folder: str | Path, max_frames: int | None = None) -> Comparison:
    """Measure both folders (sim: at most max_frames frames) and rank the figures by gap."""
    return compare_statistics(folder_statistics(real_folder), folder_statistics(sim_folder, max_frames),
                              str(real_folder), str(sim_folder))


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def format_table(comparison: Comparison) -> str:
    """Markdown: the ranked figures, then points per object by class and range band."""
    lines = [f"Real: `{comparison.real_folder}` ({len(comparison.real)} scans); simulated: "
             f"`{comparison.sim_folder}` ({len(comparison.sim)} scans).", "",
             "| rank | figure | real | simulated | gap |", "|---:|---|---:|---:|---:|"]
    for i, row in enumerate(comparison.rows, 1):
        real = "—" if row.name.endswith("distance") or "distance:" in row.name else _fmt(row.real)
        lines.append(f"| {i} | {row.name} | {real} | {_fmt(row.sim)} | {_fmt(row.gap)} |")
    bands = [f"{lo:g}-{hi:g} m" if math.isfinite(hi) else f"{lo:g}+ m"
             for lo, hi in zip(RANGE_BAND_EDGES[:-1], RANGE_BAND_EDGES[1:])]
    lines += ["", "Median points inside a labelled box (objects), by range of the box centre:", "",
              "| class | source | " + " | ".join(bands) + " |", "|---|---|" + "---:|" * len(bands)]
    for name in CLASSES:
        for source, scans in (("real", comparison.real), ("sim", comparison.sim)):
            cells = [f"{_fmt(m)} ({n})" if n else "—" for n, m in object_table(scans)[name]]
            lines.append(f"| {name} | {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", required=True, help="KITTI-layout folder of real scans (velodyne/, calib/, label_2/)")
    parser.add_argument("--sim", required=True, help="KITTI-layout folder of simulated scans")
    parser.add_argument("--frames", type=int, default=None, help="use at most this many simulated frames")
    parser.add_argument("--plots", default=None, help="folder for the PNG plots")
    parser.add_argument("--table", default=None, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        print("error: --frames must be >= 1", file=sys.stderr)
        return 2
    try:
        comparison = compare(args.real, args.sim, args.frames)
    except SimRealError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = format_table(comparison)
    print(table, end="")
    try:
        if args.table:
            Path(args.table).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.table, table)
        if args.plots:
            from training.sim_real_plots import plot_comparison
            for path in plot_comparison(comparison, args.plots):
                print(f"wrote {path}", file=sys.stderr)
    except OSError as exc:
        print(f"error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
