"""Voxelisation against a slow pure-Python reference, plus its rules: ranges, overflow, NaN, batching."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from clean_ros.inference.voxelize import (PointVoxels, Voxelizer, as_padded, grid_size, voxelize, voxelize_batch,
                                         voxelize_points_with_stats, voxelize_with_stats)


def reference_voxelize(points: np.ndarray, pc_range, voxel_size, max_points, max_voxels, batch_index=0):
    """One point at a time, in float32 like the implementation; returns arrays in (z, y, x) key order."""
    nx, ny, nz = grid_size(pc_range, voxel_size)
    lower = np.asarray(pc_range[:3], dtype=np.float32)
    size = np.asarray(voxel_size, dtype=np.float32)
    voxels: dict[tuple[int, int, int], list[np.ndarray]] = {}  # insertion order = first appearance
    for p in points.astype(np.float32):
        if not all(math.isfinite(float(v)) for v in p):
            continue
        idx = [int(np.floor((p[a] - lower[a]) / size[a])) for a in range(3)]
        if not (0 <= idx[0] < nx and 0 <= idx[1] < ny and 0 <= idx[2] < nz):
            continue
        key = (idx[2], idx[1], idx[0])
        if key not in voxels:
            if len(voxels) >= max_voxels:
                continue
            voxels[key] = []
        if len(voxels[key]) < max_points:
            voxels[key].append(p)
    keys = sorted(voxels)
    features = np.zeros((len(keys), max_points, points.shape[1]), np.float32)
    num_points = np.zeros(len(keys), np.int32)
    coords = np.zeros((len(keys), 4), np.int32)
    for v, key in enumerate(keys):
        rows = voxels[key]
        features[v, : len(rows)] = rows
        num_points[v] = len(rows)
        coords[v] = (batch_index, *key)
    return features, num_points, coords


def assert_matches_reference(points, pc_range, voxel_size, max_points, max_voxels, batch_index=0):
    got = voxelize(torch.from_numpy(points), pc_range, voxel_size, max_points, max_voxels, batch_index)
    features, num_points, coords = reference_voxelize(points, pc_range, voxel_size, max_points, max_voxels, batch_index)
    assert got.features.dtype == torch.float32 and got.num_points.dtype == torch.int32
    assert got.coords.dtype == torch.int32
    np.testing.assert_array_equal(got.coords.numpy(), coords)
    np.testing.assert_array_equal(got.num_points.numpy(), num_points)
    np.testing.assert_array_equal(got.features.numpy(), features)
    # The same voxels without the padded grid: each kept point once, voxel after voxel, input order inside.
    packed, stats = voxelize_points_with_stats(torch.from_numpy(points), pc_range, voxel_size, max_points, max_voxels,
                                               batch_index)
    assert stats == voxelize_with_stats(torch.from_numpy(points), pc_range, voxel_size, max_points, max_voxels,
                                        batch_index)[1]
    np.testing.assert_array_equal(packed.coords.numpy(), coords)
    np.testing.assert_array_equal(packed.num_points.numpy(), num_points)
    np.testing.assert_array_equal(packed.voxel.numpy(), np.repeat(np.arange(len(num_points)), num_points))
    rows = np.concatenate([features[v, :n] for v, n in enumerate(num_points)]) if len(num_points) else \
        np.zeros((0, points.shape[1]), np.float32)
    np.testing.assert_array_equal(packed.points.numpy(), rows)
    assert all(torch.equal(a, b) for a, b in zip(packed.padded(), got)) and as_padded(got) is got
    return got


def random_cloud(rng, n, low, high, num_features=4):
    pts = rng.uniform(low, high, size=(n, num_features)).astype(np.float32)
    return pts


def test_grid_size_of_kitti_settings():
    assert grid_size((0, -40, -3, 70.4, 40, 1), (0.05, 0.05, 0.1)) == (1408, 1600, 40)
    assert grid_size((0, -39.68, -3, 69.12, 39.68, 1), (0.16, 0.16, 4)) == (432, 496, 1)
    with pytest.raises(ValueError, match="not a multiple"):
        grid_size((0, 0, 0, 1, 1, 1), (0.3, 0.5, 0.5))


def test_matches_reference_with_point_overflow_negative_range_and_bad_points(rng):
    pc_range = (-2.0, -1.5, -1.0, 2.0, 1.5, 1.0)
    voxel_size = (0.5, 0.5, 0.5)  # 8 x 6 x 4 = 192 voxels: many points per voxel
    pts = random_cloud(rng, 3000, (-2.5, -2.0, -1.3, 0.0), (2.5, 2.0, 1.3, 1.0))
    pts[::37, 0] = np.nan
    pts[5::41, 2] = np.inf
    pts[7::53, 3] = np.nan  # a non-finite extra feature drops the point too
    pts[11::59, 1] = -np.inf
    got = assert_matches_reference(pts, pc_range, voxel_size, max_points=4, max_voxels=1000, batch_index=3)
    assert (got.coords[:, 0] == 3).all()
    assert (got.num_points == 4).sum() > 100  # the overflow case is really exercised


def test_matches_reference_with_voxel_count_overflow(rng):
    pc_range = (-3.0, -3.0, -2.0, 3.0, 3.0, 2.0)
    voxel_size = (0.25, 0.25, 0.5)
    pts = random_cloud(rng, 2000, (-3.5, -3.5, -2.5, 0, 0), (3.5, 3.5, 2.5, 1, 1), num_features=5)
    _, stats = voxelize_with_stats(torch.from_numpy(pts), pc_range, voxel_size, 3, 150)
    assert stats.num_occupied_voxels > 150 and stats.num_overflow_voxels == stats.num_occupied_voxels - 150
    assert stats.overflowed
    got = assert_matches_reference(pts, pc_range, voxel_size, max_points=3, max_voxels=150)
    assert len(got.coords) == 150


def test_matches_reference_on_grids_of_every_key_width(rng):
    """Keys are computed in float32 up to 2^24 cells (exact there), as int32 up to 2^31 and int64 beyond."""
    cases = [((0.0, 0.0, 0.0, 4096.0, 4096.0, 1.0), (1.0, 1.0, 1.0), (4000.0, 4000.0, 0.0), (4096.5, 4096.5, 1.2)),
             ((0.0, -40.0, -3.0, 70.4, 40.0, 1.0), (0.05, 0.05, 0.1), (-1.0, -41.0, -3.5), (71.0, 41.0, 1.5)),
             ((0.0, -200.0, -10.0, 400.0, 200.0, 10.0), (0.02, 0.02, 0.02), (-5.0, -205.0, -11.0), (405.0, 205.0, 11.0))]
    for pc_range, voxel_size, low, high in cases:
        pts = random_cloud(rng, 1500, (*low, 0.0), (*high, 1.0))
        pts[:3, :3] = np.asarray(pc_range[3:], np.float32) - np.asarray(voxel_size, np.float32) / 2  # the last cell
        got = assert_matches_reference(pts, pc_range, voxel_size, max_points=2, max_voxels=5000)
        nx, ny, nz = grid_size(pc_range, voxel_size)
        assert got.coords[-1, 1:].tolist() == [nz - 1, ny - 1, nx - 1] and len(got.coords) > 500


def test_matches_reference_for_pillars_on_a_real_frame_slice(kitti_sample):
    from shared_helpers import read_velodyne

    pts = read_velodyne(kitti_sample / "training/velodyne/000000.bin")[::40].copy()  # ~3k points
    pc_range = (0, -39.68, -3, 69.12, 39.68, 1)
    got = assert_matches_reference(pts, pc_range, (0.16, 0.16, 4), max_points=32, max_voxels=500)
    assert (got.coords[:, 1] == 0).all()  # a single z bin


def test_stats_count_every_point(rng):
    pts = random_cloud(rng, 1000, (-1, -1, -1, 0), (1, 1, 1, 1))
    pts[:10, 0] = np.nan
    vox, stats = voxelize_with_stats(torch.from_numpy(pts), (0, 0, 0, 1, 1, 1), (0.5, 0.5, 0.5), 2, 3)
    in_range = ((pts[:, :3] >= 0) & (pts[:, :3] < 1)).all(1)
    assert stats.num_input_points == 1000
    assert stats.num_dropped_points == 1000 - in_range.sum()
    assert stats.num_occupied_voxels == 8 and stats.num_overflow_voxels == 5
    assert stats.num_overflow_points == in_range.sum() - int(vox.num_points.sum())
    assert vox.num_points.tolist() == [2, 2, 2]


def test_range_is_half_open():
    pts = np.array([[0.0, 0.0, 0.0, 1], [1.0, 0.5, 0.5, 2], [0.999, 0.999, 0.999, 3], [-1e-6, 0.5, 0.5, 4]], np.float32)
    vox = voxelize(torch.from_numpy(pts), (0, 0, 0, 1, 1, 1), (0.5, 0.5, 0.5), 4, 10)
    assert vox.coords.tolist() == [[0, 0, 0, 0], [0, 1, 1, 1]]
    assert vox.features[:, 0, 3].tolist() == [1.0, 3.0]


def test_empty_and_all_outside_clouds():
    for pts in (torch.zeros((0, 4)), torch.full((5, 4), 100.0)):
        vox, stats = voxelize_with_stats(pts, (0, 0, 0, 1, 1, 1), (0.5, 0.5, 0.5), 4, 10)
        assert vox.features.shape == (0, 4, 4) and vox.coords.shape == (0, 4) and vox.num_points.shape == (0,)
        assert stats.num_dropped_points == len(pts)
        packed, _ = voxelize_points_with_stats(pts, (0, 0, 0, 1, 1, 1), (0.5, 0.5, 0.5), 4, 10)
        assert isinstance(packed, PointVoxels) and packed.points.shape == (0, 4) and packed.voxel.shape == (0,)
        assert packed.padded().features.shape == (0, 4, 4)


def test_output_does_not_depend_on_point_order_without_overflow(rng):
    pts = random_cloud(rng, 500, (0, 0, 0, 0), (2, 2, 2, 1))
    a = voxelize(torch.from_numpy(pts), (0, 0, 0, 2, 2, 2), (0.5, 0.5, 0.5), 100, 1000)
    b = voxelize(torch.from_numpy(pts[::-1].copy()), (0, 0, 0, 2, 2, 2), (0.5, 0.5, 0.5), 100, 1000)
    assert torch.equal(a.coords, b.coords) and torch.equal(a.num_points, b.num_points)
    # the same set of points per voxel, in the opposite order
    n = a.num_points.long()
    for v in (0, len(n) // 2, len(n) - 1):
        assert torch.equal(a.features[v, : n[v]], b.features[v, : n[v]].flip(0))


def test_float64_input_and_bad_shapes():
    pts = torch.tensor([[0.1, 0.1, 0.1, 0.5]], dtype=torch.float64)
    vox = voxelize(pts, (0, 0, 0, 1, 1, 1), (0.5, 0.5, 0.5), 4, 10)
    assert vox.features.dtype == torch.float32 and vox.features[0, 0].tolist() == pytest.approx([0.1, 0.1, 0.1, 0.5])
    with pytest.raises(ValueError, match=r"\(N, F>=3\)"):
        voxelize(torch.zeros(10), (0, 0, 0, 1, 1, 1), (0.5, 0.5, 0.5), 4, 10)
    with pytest.raises(ValueError, match="must be >= 1"):
        voxelize(pts, (0, 0, 0, 1, 1, 1), (0.5, 0.5, 0.5), 0, 10)


def test_batch_concatenates_with_batch_indices(rng):
    clouds = [torch.from_numpy(random_cloud(rng, n, (0, 0, 0, 0), (1, 1, 1, 1))) for n in (50, 0, 80)]
    settings = ((0, 0, 0, 1, 1, 1), (0.25, 0.25, 0.5), 3, 20)
    vox, stats = voxelize_batch(clouds, *settings)
    singles = [voxelize(c, *settings, batch_index=b) for b, c in enumerate(clouds)]
    assert torch.equal(vox.coords, torch.cat([s.coords for s in singles]))
    assert torch.equal(vox.features, torch.cat([s.features for s in singles]))
    assert stats.num_input_points == 130
    assert sorted(set(vox.coords[:, 0].tolist())) == [0, 2]

    voxelizer = pickle.loads(pickle.dumps(Voxelizer(*settings)))
    vox2, _ = voxelizer.batch(clouds)
    assert torch.equal(vox2.coords, vox.coords)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(rng):
    pts = random_cloud(rng, 20000, (-1, -41, -4, 0), (72, 41, 2, 1))
    pts[::100, 1] = np.nan
    settings = ((0, -40, -3, 70.4, 40, 1), (0.05, 0.05, 0.1), 5, 4000)
    cpu = voxelize(torch.from_numpy(pts), *settings)
    gpu = voxelize(torch.from_numpy(pts).cuda(), *settings)
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b.cpu())


@pytest.mark.parametrize("n, high", [(1, 5), (2000, 50), (100_000, 112_896), (3000, 2**62)])
def test_stable_sort_equals_torch_stable_sort(n, high):
    """The voxeliser groups points by a packed numpy sort (key << bits | position) on CPU; it must give torch's stable
    order exactly, ties in input order (few distinct keys: many ties), and fall back to torch for keys too large to
    pack (2**62)."""
    from clean_ros.inference.voxelize import _stable_sort

    gen = torch.Generator().manual_seed(n)
    dtype = torch.int64 if high > 2**31 else torch.int32
    key = torch.randint(0, high, (n,), generator=gen, dtype=torch.int64).to(dtype)
    sorted_key, order = _stable_sort(key)
    ref_key, ref_order = torch.sort(key, stable=True)
    assert sorted_key.dtype == key.dtype and order.dtype == torch.int64
    assert torch.equal(sorted_key, ref_key) and torch.equal(order, ref_order)
