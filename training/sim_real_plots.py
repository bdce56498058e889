"""Plots of a sim-vs-real Comparison (small PNGs, written atomically): one file per statistic family.

    paths = plot_comparison(compare(real_folder, sim_folder), "docs/sim_to_real")
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clean_ros.atomic import atomic_open  # noqa: E402
from training.scan_stats import (CLASSES, GROUND_RING_EDGES, HEIGHT_BAND_EDGES, INTENSITY_EDGES,  # noqa: E402
                                 NEAR_SECTORS, RANGE_BAND_EDGES, RANGE_HISTOGRAM_EDGES, ScanStatistics)
from training.sim_real_stats import Comparison, intensity_histograms, normalised, points_vs_range_fit  # noqa: E402

STYLE = {"real": dict(color="tab:red"), "sim": dict(color="tab:blue")}
DPI = 72


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    plt.close(fig)
    return path


def _sources(c: Comparison) -> list[tuple[str, list[ScanStatistics]]]:
    return [("real", c.real), ("sim", c.sim)]


def plot_points_vs_range(c: Comparison, path: Path) -> Path:
    fig, axes = plt.subplots(1, len(CLASSES), figsize=(10, 3.2))
    for ax, name in zip(axes, CLASSES):
        for source, scans in _sources(c):
            names = np.concatenate([s.object_names for s in scans])
            ranges = np.concatenate([s.object_ranges for s in scans])
            counts = np.concatenate([s.object_points for s in scans])
            use = (names == name) & (counts > 0)
            ax.scatter(ranges[use], counts[use], s=30 if source == "real" else 6, alpha=1.0 if source == "real" else 0.4,
                       label=f"{source} ({use.sum()})", **STYLE[source])
            a, b, _ = points_vs_range_fit(scans, name)
            if np.isfinite(b):
                r = np.linspace(3, 70, 50)
                ax.plot(r, np.exp(a) * r ** b, lw=1, **STYLE[source])
        ax.set(xscale="log", yscale="log", xlim=(2, 120), ylim=(0.8, 2e4), xlabel="range (m)", title=name)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("points in box")
    return _save(fig, path)


def plot_intensity(c: Comparison, path: Path) -> Path:
    names = ("all", "ground", "Car", "Pedestrian", "other objects", "rest")
    fig, axes = plt.subplots(1, len(names), figsize=(13, 2.8), sharex=True)
    centres = (INTENSITY_EDGES[1:] + INTENSITY_EDGES[:-1]) / 2
    for source, scans in _sources(c):
        hist = intensity_histograms(scans)
        for ax, name in zip(axes, names):
            ax.step(centres, normalised(hist[name]), where="mid", label=source, **STYLE[source])
            ax.set(title=name, xlabel="intensity")
    axes[0].set_ylabel("share of points")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_ground(c: Comparison, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    centres = (GROUND_RING_EDGES[1:] + GROUND_RING_EDGES[:-1]) / 2
    for source, scans in _sources(c):
        for ax, values in zip(axes, (np.array([s.ground.height for s in scans]),
                                     np.array([s.ground.slope_deg for s in scans]))):
            lo, mid, hi = np.nanpercentile(values, [25, 50, 75], axis=0)
            ax.plot(centres, mid, marker="o", label=source, **STYLE[source])
            ax.fill_between(centres, lo, hi, alpha=0.2, **STYLE[source])
    axes[0].set(xlabel="range ring (m)", ylabel="ground z (m)", title="ground height (median, IQR)")
    axes[1].set(xlabel="range ring (m)", ylabel="deg", title="ground slope per ring")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_clutter(c: Comparison, path: Path) -> Path:
    bands = len(HEIGHT_BAND_EDGES) - 2  # the open top band holds almost nothing
    fig, axes = plt.subplots(1, bands, figsize=(10, 2.8), sharey=True)
    x = np.arange(len(RANGE_BAND_EDGES) - 1)
    labels = [f"{lo:g}-{hi:g}" if np.isfinite(hi) else f"{lo:g}+" for lo, hi in zip(RANGE_BAND_EDGES[:-1],
                                                                                     RANGE_BAND_EDGES[1:])]
    for k, (source, scans) in enumerate(_sources(c)):
        clutter = np.mean([s.clutter for s in scans], 0)
        for i, ax in enumerate(axes):
            ax.bar(x + (k - 0.5) * 0.4, clutter[i], width=0.4, label=source, **STYLE[source])
            ax.set(title=f"{HEIGHT_BAND_EDGES[i]:g}-{HEIGHT_BAND_EDGES[i + 1]:g} m above ground",
                   xticks=x, xlabel="range (m)")
            ax.set_xticklabels(labels, fontsize=7)
    axes[0].set_ylabel("points / scan outside boxes")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_rows(c: Comparison, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
    for source, scans in _sources(c):
        elevation = np.concatenate([s.row_elevation_deg for s in scans])
        axes[0].scatter(elevation, np.concatenate([s.row_empty_fraction for s in scans]), s=5, label=source,
                        **STYLE[source])
        axes[1].scatter(elevation, np.concatenate([s.row_spread_deg for s in scans]), s=5, label=source,
                        **STYLE[source])
    axes[0].set(xlabel="row elevation (deg)", ylabel="empty azimuth cells", title="dropout per row (0.18 deg cells)")
    axes[1].set(xlabel="row elevation (deg)", ylabel="deg", title="elevation spread within a row")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_near_range(c: Comparison, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 2.8))
    azimuth = np.degrees(-np.pi + (np.arange(NEAR_SECTORS) + 0.5) * 2 * np.pi / NEAR_SECTORS)
    for source, scans in _sources(c):
        near = np.array([s.near_min_range for s in scans])
        ax.plot(azimuth, np.median(near, 0), label=source, **STYLE[source])
    ax.set(xlabel="azimuth (deg, 0 = forward, +90 = left)", ylabel="m", ylim=(0, None),
           title="nearest return per 5 deg sector (median over scans)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_range_histogram(c: Comparison, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 2.8))
    centres = (RANGE_HISTOGRAM_EDGES[1:] + RANGE_HISTOGRAM_EDGES[:-1]) / 2
    for source, scans in _sources(c):
        ax.step(centres, normalised(np.sum([s.range_histogram for s in scans], 0)), where="mid", label=source,
                **STYLE[source])
    ax.set(yscale="log", ylim=(1e-6, 1), xlabel="horizontal range (m)", ylabel="share of points", title="range histogram")
    ax.legend(fontsize=7)
    return _save(fig, path)


PLOTS = {"points_vs_range.png": plot_points_vs_range, "intensity.png": plot_intensity, "ground.png": plot_ground,
         "clutter.png": plot_clutter, "rows.png": plot_rows, "near_range.png": plot_near_range,
         "range_histogram.png": plot_range_histogram}


def plot_comparison(comparison: Comparison, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot(comparison, out_dir / name) for name, plot in PLOTS.items()]
