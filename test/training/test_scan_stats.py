"""Scan statistics on tiny synthetic clouds with known answers, and the sim-vs-real comparison end to end."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from training.data.sensor_variation import elevation_rows, scan_order_rows
from training.scan_stats import (AZIMUTH_CELLS, GROUND_RING_EDGES, INTENSITY_EDGES, NEAR_SECTORS, SURFACES,
                                 ScanStatistics, fit_ground, near_range, row_dropout, row_spread_deg,
                                 scan_statistics)
from training.sim_real_stats import (compare, folder_statistics, format_table, main, points_vs_range_fit,
                                     summary_figures)


def ground_grid(z_of_xy, spacing=0.5, extent=69.0, min_range=3.0, intensity=0.1):
    """(N, 4) points on a grid over the ground z = z_of_xy(x, y), between min_range and extent."""
    g = np.arange(-extent, extent + 1e-9, spacing)
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    r = np.hypot(x, y)
    x, y = x[(r >= min_range) & (r < extent)], y[(r >= min_range) & (r < extent)]
    return np.stack([x, y, z_of_xy(x, y), np.full(len(x), intensity)], 1).astype(np.float32)


def ring_cloud(elevations_deg, n_azimuth=360, ranges=(5.0, 40.0), seed=0, ordered=False):
    """Points on rays of the given elevations: one row per elevation, n_azimuth columns, random ranges."""
    rng = np.random.default_rng(seed)
    el = np.deg2rad(np.repeat(elevations_deg, n_azimuth))
    az = np.tile(-np.pi + (np.arange(n_azimuth) + 0.5) * 2 * np.pi / n_azimuth, len(elevations_deg))
    r = rng.uniform(*ranges, len(el))
    points = np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el),
                       np.full(len(el), 0.3)], 1).astype(np.float32)
    truth = np.repeat(np.argsort(np.argsort(elevations_deg)), n_azimuth)
    if ordered:
        return points, truth
    perm = rng.permutation(len(points))
    return points[perm], truth[perm]


# --------------------------------------------------------------------------- ground
def test_flat_ground_height_slope_and_flags():
    ground = ground_grid(lambda x, y: np.full_like(x, -1.73))
    above = ground[::50].copy()
    above[:, 2] += 1.0  # clutter 1 m up
    fit = fit_ground(np.concatenate([ground, above]))
    np.testing.assert_allclose(fit.height, -1.73, atol=1e-4)
    np.testing.assert_allclose(fit.slope_deg, 0.0, atol=1e-3)
    np.testing.assert_allclose(fit.unevenness, 0.0, atol=1e-4)
    assert fit.is_ground[:len(ground)].all() and not fit.is_ground[len(ground):].any()
    np.testing.assert_allclose(fit.height_above[len(ground):], 1.0, atol=1e-4)


def test_sloped_ground_slope_per_ring():
    fit = fit_ground(ground_grid(lambda x, y: -1.73 + 0.05 * x))
    np.testing.assert_allclose(fit.slope_deg, math.degrees(math.atan(0.05)), atol=0.01)
    # sector heights around a ring follow 0.05 * x: ring 10-20 m spans about +-0.75 m
    assert 0.3 < fit.unevenness[1] < 1.2
    np.testing.assert_allclose(fit.height_above, 0.0, atol=1e-3)


def test_patch_without_visible_ground_is_left_unfitted():
    def in_patch(p, margin=0.0):  # ring 30-45 m, sector 4 = azimuth [0, 45) deg
        r, az = np.hypot(p[:, 0], p[:, 1]), np.arctan2(p[:, 1], p[:, 0])
        return (r >= 30 + margin) & (r < 45 - margin) & (az >= margin / 30) & (az < np.pi / 4 - margin / 30)
    ground = ground_grid(lambda x, y: np.full_like(x, -1.73))
    ground = ground[~in_patch(ground)]
    roof = ground_grid(lambda x, y: np.full_like(x, 1.3))  # roofs 3 m up hide the ground there
    roof = roof[in_patch(roof, margin=0.1)]
    fit = fit_ground(np.concatenate([ground, roof]))
    assert np.isnan(fit.height_above[len(ground):]).all()
    np.testing.assert_allclose(fit.height[3], -1.73, atol=1e-4)  # the ring's other sectors still count


# --------------------------------------------------------------------------- rows, dropout, near range
def test_elevation_rows_recover_rows_of_a_shuffled_cloud():
    elevations = np.array([-24.9, -20.0, -15.5, -8.33, -5.0, -2.0, 0.0, 2.0])
    points, truth = ring_cloud(elevations)
    rows = elevation_rows(points)
    assert rows.count == 8
    np.testing.assert_allclose(rows.elevation_deg, elevations, atol=0.02)
    np.testing.assert_array_equal(rows.row, truth)
    assert scan_order_rows(points) is None  # shuffled: no storage order


def test_scan_order_rows_rank_runs_by_elevation():
    elevations = np.array([-2.0, -20.0, 1.0, -8.0, -12.0, -4.0, 0.5, -24.0])  # laser order != elevation order
    points, truth = ring_cloud(elevations, n_azimuth=200, ordered=True)
    rows = scan_order_rows(points)
    assert rows is not None and rows.count == 8
    np.testing.assert_array_equal(rows.row, truth)
    np.testing.assert_allclose(rows.elevation_deg, np.sort(elevations), atol=1e-4)


def test_row_dropout_and_spread():
    points, _ = ring_cloud(np.array([-10.0, -5.0]), n_azimuth=AZIMUTH_CELLS, ordered=True)
    points = points[np.r_[np.arange(AZIMUTH_CELLS), AZIMUTH_CELLS + np.arange(0, AZIMUTH_CELLS, 4)]]
    rows = elevation_rows(points)
    azimuth = np.arctan2(points[:, 1], points[:, 0]).astype(np.float64)
    np.testing.assert_allclose(row_dropout(azimuth, rows), [0.0, 0.75], atol=1e-9)
    el = np.array([1.0, 1.2, 0.8, 1.0, 5.0, 5.0])
    from training.data.sensor_variation import Rows
    spread = row_spread_deg(el, Rows(np.array([0, 0, 0, 0, 1, 1]), np.array([1.0, 5.0])))
    np.testing.assert_allclose(spread, [0.1, 0.0])


def test_near_range_per_sector():
    az = -np.pi + (np.arange(NEAR_SECTORS) + 0.5) * 2 * np.pi / NEAR_SECTORS
    points = np.stack([5 * np.cos(az), 5 * np.sin(az), np.zeros_like(az), np.zeros_like(az)], 1)
    points = np.concatenate([points, [[-2.0 * np.cos(0.01), -2.0 * np.sin(0.01), 0, 0]]])  # behind, 2 m
    nearest = near_range(points.astype(np.float32))
    expected = np.full(NEAR_SECTORS, 5.0)
    expected[0] = 2.0  # azimuth just above -pi
    np.testing.assert_allclose(nearest, expected, atol=1e-5)
    assert np.isinf(near_range(points[:10].astype(np.float32))[-1])


# --------------------------------------------------------------------------- one scan
def synthetic_scan():
    ground = ground_grid(lambda x, y: np.full_like(x, -1.73), spacing=1.0, intensity=0.12)
    car = np.array([[15.0, 0.0, -0.9, 4.0, 2.0, 1.5, 0.0]])  # bottom 8 cm above the road
    ped = np.array([[8.0, 5.0, -0.8, 0.8, 0.8, 1.7, 0.0]])
    rng = np.random.default_rng(3)
    car_pts = np.c_[rng.uniform([13.5, -0.8, -1.5], [16.5, 0.8, -0.4], (10, 3)), np.full(10, 0.62)]
    ped_pts = np.c_[rng.uniform([7.8, 4.8, -1.5], [8.2, 5.2, -0.2], (3, 3)), np.full(3, 0.47)]
    wall = np.c_[np.full(5, 25.0), np.linspace(-2, 2, 5), np.full(5, -1.73 + 1.5), np.full(5, 0.9)]
    hidden = np.c_[np.full(4, 26.0), np.zeros(4), np.full(4, -1.73 + 1.5), np.full(4, 0.9)]  # outside the labels
    points = np.concatenate([ground, car_pts, ped_pts, wall, hidden]).astype(np.float32)
    labelled = np.ones(len(points), bool)
    labelled[-4:] = False
    return points, np.concatenate([car, ped]), np.array(["Car", "Pedestrian"]), labelled, len(ground)


def test_scan_statistics_known_answers():
    points, boxes, names, labelled, n_ground = synthetic_scan()
    s = scan_statistics(points, boxes, names, labelled)
    assert s.num_points == len(points)
    np.testing.assert_array_equal(s.object_points, [10, 3])
    np.testing.assert_allclose(s.object_ranges, [15.0, math.hypot(8, 5)])
    hist = s.intensity_by_surface
    bin_of = lambda v: int(np.digitize(v, INTENSITY_EDGES) - 1)  # noqa: E731
    assert hist["ground"][bin_of(0.12)] == n_ground and hist["ground"].sum() == n_ground
    assert hist["Car"][bin_of(0.62)] == 10 and hist["Pedestrian"][bin_of(0.47)] == 3
    assert hist["rest"].sum() == 5  # the wall; the unlabelled points are not counted per surface
    assert s.intensity_all.sum() == len(points)
    expected_clutter = np.zeros_like(s.clutter)
    expected_clutter[1, 2] = 5  # 1.5 m above ground, 25 m away: band 1-2 m, range band 20-30 m
    np.testing.assert_array_equal(s.clutter, expected_clutter)
    assert s.range_histogram.sum() == len(points)
    assert s.range_histogram[7] == np.sum((np.hypot(points[:, 0], points[:, 1]) >= 14) &
                                          (np.hypot(points[:, 0], points[:, 1]) < 16))
    np.testing.assert_allclose(s.ground.height, -1.73, atol=1e-4)
    assert len(s.ground.height) == len(GROUND_RING_EDGES) - 1
    assert set(hist) == set(SURFACES)


def test_scan_statistics_rejects_bad_shapes():
    with pytest.raises(ValueError, match="points must be"):
        scan_statistics(np.zeros((5, 3), np.float32), np.zeros((0, 7)), [])
    with pytest.raises(ValueError, match="2 boxes but 1 names"):
        scan_statistics(np.zeros((5, 4), np.float32), np.zeros((2, 7)), ["Car"])


# --------------------------------------------------------------------------- folders and the comparison
def test_points_vs_range_fit_recovers_a_power_law():
    ranges = np.array([5.0, 10.0, 20.0, 25.0])  # 1e5 / r**2 is a whole number of points at each
    s = ScanStatistics(0, np.zeros(1), np.array(["Car"] * 4), ranges, np.round(1000 * ranges ** -2.0 * 100).astype(int),
                       np.zeros(1), {}, None, 0.0, np.zeros((1, 1)), np.zeros(0), np.zeros(0), np.zeros(0),
                       np.zeros(0), np.zeros(0))
    a, b, n = points_vs_range_fit([s], "Car")
    assert n == 4 and b == pytest.approx(-2.0, abs=1e-3) and math.exp(a) == pytest.approx(1e5, rel=1e-3)


@pytest.fixture(scope="module")
def two_real_frames(kitti_sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("real2")
    for sub, ext in (("velodyne", "bin"), ("calib", "txt"), ("label_2", "txt")):
        (root / sub).mkdir()
        for frame in ("000003", "000004"):
            shutil.copy(kitti_sample / "training" / sub / f"{frame}.{ext}", root / sub / f"{frame}.{ext}")
    return root


def test_compare_a_folder_with_itself_has_no_gap(two_real_frames):
    comparison = compare(two_real_frames, two_real_frames)
    assert len(comparison.real) == len(comparison.sim) == 2
    finite = [r for r in comparison.rows if math.isfinite(r.gap) and "sim fit" not in r.name]
    assert len(finite) > 25 and all(r.gap == pytest.approx(0.0, abs=1e-9) for r in finite)
    per_object = next(r for r in comparison.rows if r.name.startswith("Car: real points / sim fit"))
    assert "(3 real objects)" in per_object.name and 0.8 < per_object.real < 1.25  # the cars against their own fit
    figures = summary_figures(comparison.real)
    # storage-order rows of a real HDL-64 scan: 64 lasers (+1 split run), real laser rows are smeared
    assert 63 <= figures["rows per scan"] <= 66 and figures["row elevation spread (deg)"] > 0.1
    assert 110_000 < figures["points per scan"] < 130_000
    assert -1.8 < figures["ground height 0-10 m (m)"] < -1.6  # KITTI's sensor is 1.73 m above the road
    table = format_table(comparison)
    assert "| 1 |" in table and "Car | real |" in table


def test_real_frames_statistics_count_points_on_the_labelled_car(two_real_frames):
    first = folder_statistics(two_real_frames, max_frames=1)
    assert len(first) == 1
    np.testing.assert_array_equal(first[0].object_names, ["Car"])
    assert 500 < first[0].object_points[0] < 900  # the car at 13.5 m in frame 000003


def test_cli_writes_table_and_plots(two_real_frames, tmp_path, capsys):
    assert main(["--real", str(two_real_frames), "--sim", str(two_real_frames), "--frames", "1",
                 "--plots", str(tmp_path / "plots"), "--table", str(tmp_path / "t" / "table.md")]) == 0
    assert (tmp_path / "t" / "table.md").read_text().startswith("Real:")
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert len(pngs) == 7 and all((tmp_path / "plots" / p).stat().st_size > 5000 for p in pngs)


def test_cli_bad_folder_is_one_line(tmp_path, capsys):
    assert main(["--real", str(tmp_path / "nope"), "--sim", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope/velodyne: not found" in err


def test_cli_corrupt_scan_is_one_line(two_real_frames, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(two_real_frames, bad)
    (bad / "velodyne" / "000004.bin").write_bytes(b"\0" * 10)  # not a multiple of 16 bytes
    assert main(["--real", str(two_real_frames), "--sim", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "000004.bin" in err and "multiple of 16 bytes" in err
