"""Voxelisation of point clouds (voxels and pillars), vectorised torch, CPU and CUDA.

One implementation shared by the runtime pipeline and the training collate.

Rules (deterministic, documented because the detector's input depends on them):
- A point belongs to voxel floor((p - range_min) / voxel_size) per axis. Points whose voxel index falls outside
  the grid (outside ``point_cloud_range``, half-open [min, max)) and points with any non-finite feature are dropped.
- A voxel keeps its first ``max_points_per_voxel`` points in input order; unused slots are zero.
- When there are more than ``max_voxels`` occupied voxels, the voxels kept are the first ``max_voxels`` in order of
  their first point's position in the input.
- Output voxels are sorted by their linear index (z, y, x) ascending: a canonical order, independent of input order.
- ``coords`` are (batch, z, y, x) int32, ``num_points`` int32, ``features`` float32 (V, T, F).

Pillars are voxels with a single z bin (voxel_size z = range height).
Output sizes are bounded by (max_voxels, max_points_per_voxel, F): buffers (e.g. for a static-shape engine) can be
sized once from the config. voxelize_with_stats also reports what was dropped (VoxelStats), for diagnostics.
voxelize_points_with_stats gives the same voxels without the padded grid (PointVoxels: each kept point once, voxel
after voxel): the per-point pillar encoder reads that directly, and building and filling the grid was a third of the
runtime's voxelisation on the 360-degree grid.
No Python loop over points; one stable sort of int32 keys (int64 for grids above 2^31 cells) does the grouping.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch


class Voxels(NamedTuple):
    features: torch.Tensor  # (V, T, F) float32, zero padded
    num_points: torch.Tensor  # (V,) int32, 1..T
    coords: torch.Tensor  # (V, 4) int32 [batch, z, y, x]


class PointVoxels(NamedTuple):
    """The voxels of Voxels without the padding: every kept point once, voxel after voxel in output order, input order
    inside a voxel (so point j of voxel v is slot j of Voxels.features[v]). padded() gives the Voxels."""

    points: torch.Tensor  # (M, F) float32
    voxel: torch.Tensor  # (M,) int64: the voxel (row of coords / num_points) of each point, ascending
    num_points: torch.Tensor  # (V,) int32, 1..T
    coords: torch.Tensor  # (V, 4) int32 [batch, z, y, x]
    max_points_per_voxel: int

    def padded(self) -> Voxels:
        counts = self.num_points.long()
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(self.voxel.numel(), device=self.voxel.device) - starts.index_select(0, self.voxel)
        return _padded(self, slot)


def as_padded(voxels: "Voxels | PointVoxels") -> Voxels:
    """Voxels for consumers of the padded grid (ONNX / TensorRT encoders, sparse backbones), from either layout."""
    return voxels.padded() if isinstance(voxels, PointVoxels) else voxels


def _padded(voxels: PointVoxels, slot: torch.Tensor) -> Voxels:
    t = voxels.max_points_per_voxel
    num_voxels, num_features = voxels.num_points.numel(), voxels.points.shape[1]
    features = torch.zeros((num_voxels * t, num_features), dtype=torch.float32, device=voxels.points.device)
    features.index_copy_(0, voxels.voxel * t + slot, voxels.points)
    return Voxels(features.view(num_voxels, t, num_features), voxels.num_points, voxels.coords)


class VoxelStats(NamedTuple):
    """What was lost while voxelising: the node raises a diagnostic on overflow."""

    num_input_points: int
    num_dropped_points: int  # out of range or non-finite
    num_occupied_voxels: int  # before the max_voxels cap
    num_overflow_voxels: int  # occupied voxels dropped by the max_voxels cap
    num_overflow_points: int  # in-range points dropped (voxel full, or voxel dropped by the cap)

    @property
    def overflowed(self) -> bool:
        return self.num_overflow_voxels > 0

    def __add__(self, other: "VoxelStats") -> "VoxelStats":  # type: ignore[override]
        return VoxelStats(*(a + b for a, b in zip(self, other)))


def grid_size(point_cloud_range: Sequence[float], voxel_size: Sequence[float]) -> tuple[int, int, int]:
    """Number of voxels (nx, ny, nz) covering the range; the range must be a whole number of voxels."""
    if len(point_cloud_range) != 6 or len(voxel_size) != 3:
        raise ValueError(f"point_cloud_range needs 6 values and voxel_size 3, got {list(point_cloud_range)} "
                         f"and {list(voxel_size)}")
    sizes = []
    for axis in range(3):
        extent = float(point_cloud_range[axis + 3]) - float(point_cloud_range[axis])
        size = float(voxel_size[axis])
        if size <= 0 or extent <= 0:
            raise ValueError(f"axis {'xyz'[axis]}: range extent {extent} and voxel size {size} must be positive")
        n = extent / size
        if abs(n - round(n)) > 1e-4 * max(1.0, n):
            raise ValueError(f"axis {'xyz'[axis]}: range extent {extent} is not a multiple of voxel size {size}")
        sizes.append(int(round(n)))
    return sizes[0], sizes[1], sizes[2]


def _empty_point_voxels(max_points_per_voxel: int, num_features: int, device: torch.device) -> PointVoxels:
    return PointVoxels(torch.zeros((0, num_features), dtype=torch.float32, device=device),
                       torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, dtype=torch.int32, device=device),
                       torch.zeros((0, 4), dtype=torch.int32, device=device), max_points_per_voxel)


def flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices of True entries of a 1-D bool tensor, ascending. numpy's is ~8x faster than torch's on CPU."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


def take_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values.index_select(0, index) as a new tensor. numpy's take gathers (M, 4) float rows twice as fast as
    index_select on CPU (0.19 against 0.39 ms for 98k rows, one thread)."""
    if values.device.type == "cpu" and not values.requires_grad:
        return torch.from_numpy(np.take(values.numpy(), index.numpy(), axis=0))
    return values.index_select(0, index)


def _stable_sort(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.sort(key, stable=True) of non-negative integer keys. On CPU each key is packed with its position into one
    int64 (key << bits | position): the values are then unique, so any sort gives the stable order, and numpy's sort
    (SIMD where the CPU has it) took 0.8 ms for 110k keys against torch's stable sort's 1.9 on one thread."""
    n = key.numel()
    bits = max(int(n - 1).bit_length(), 1)
    if key.device.type != "cpu" or n == 0 or int(key.max()) >= 1 << (63 - bits):
        return torch.sort(key, stable=True)
    packed = np.sort((key.numpy().astype(np.int64) << bits) | np.arange(n, dtype=np.int64))
    order = torch.from_numpy(packed & ((1 << bits) - 1))
    return torch.from_numpy(packed >> bits).to(key.dtype), order


def voxelize_with_stats(points: torch.Tensor, point_cloud_range: Sequence[float], voxel_size: Sequence[float],
                        max_points_per_voxel: int, max_voxels: int, batch_index: int = 0) -> tuple[Voxels, VoxelStats]:
    """Voxelise one cloud (N, F>=3) -> (Voxels, VoxelStats). See the module docstring for the rules."""
    voxels, slot, stats = _group(points, point_cloud_range, voxel_size, max_points_per_voxel, max_voxels, batch_index,
                                 with_slot=True)
    return _padded(voxels, slot), stats


def voxelize_points_with_stats(points: torch.Tensor, point_cloud_range: Sequence[float],
                               voxel_size: Sequence[float], max_points_per_voxel: int, max_voxels: int,
                               batch_index: int = 0) -> tuple[PointVoxels, VoxelStats]:
    """voxelize_with_stats's voxels without the padded grid (PointVoxels; .padded() gives the same Voxels)."""
    voxels, _, stats = _group(points, point_cloud_range, voxel_size, max_points_per_voxel, max_voxels, batch_index,
                              with_slot=False)
    return voxels, stats


def _group(points: torch.Tensor, point_cloud_range: Sequence[float], voxel_size: Sequence[float],
           max_points_per_voxel: int, max_voxels: int, batch_index: int, with_slot: bool
           ) -> tuple[PointVoxels, torch.Tensor | None, VoxelStats]:
    """The voxels as PointVoxels, each kept point's slot in its voxel (with_slot, else None), and the stats."""
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be (N, F>=3), got shape {tuple(points.shape)}")
    if max_points_per_voxel < 1 or max_voxels < 1:
        raise ValueError(f"max_points_per_voxel ({max_points_per_voxel}) and max_voxels ({max_voxels}) must be >= 1")
    nx, ny, nz = grid_size(point_cloud_range, voxel_size)
    device = points.device
    if points.dtype != torch.float32:
        points = points.float()
    num_input, num_features = points.shape
    t = max_points_per_voxel

    lower = torch.tensor(point_cloud_range[:3], dtype=torch.float32, device=device)
    size = torch.tensor(voxel_size, dtype=torch.float32, device=device)
    grid = torch.tensor((nx, ny, nz), dtype=torch.float32, device=device)
    cell = (points[:, :3] - lower).div_(size).floor_()  # (N, 3) integer-valued floats
    # 0 <= cell < n  <=>  floor(cell / n) == 0. Summing |.| over the axes gives one cheap validity test per point;
    # NaN and inf survive the sum, and 0 * (non-finite extra feature) is NaN, so those points are dropped too.
    outside = (cell / grid).floor_().abs_()
    badness = outside[:, 0] + outside[:, 1] + outside[:, 2]
    for f in range(3, num_features):
        badness += points[:, f] * 0.0
    kept = flat_nonzero(badness == 0)  # ascending: input order is preserved
    num_valid = kept.numel()
    if num_valid == 0:
        return (_empty_point_voxels(t, num_features, device), torch.zeros(0, dtype=torch.int64, device=device),
                VoxelStats(num_input, num_input, 0, 0, 0))

    if nx * ny * nz <= 2**24:
        # float32 holds every key exactly: one key per point, then keep the valid ones (0.5 ms less per 120k points
        # than selecting the (N, 3) cells and converting them first)
        key = (cell[:, 2] * ny + cell[:, 1]).mul_(nx).add_(cell[:, 0]).index_select(0, kept).to(torch.int32)
    else:
        key_dtype = torch.int32 if nx * ny * nz < 2**31 else torch.int64
        cell = cell.index_select(0, kept).to(key_dtype)
        key = (cell[:, 2] * ny + cell[:, 1]) * nx + cell[:, 0]
    # Stable sort groups each voxel's points while keeping them in input order inside the group.
    sorted_key, order = _stable_sort(key)
    is_first = torch.empty(num_valid, dtype=torch.bool, device=device)
    is_first[0] = True
    torch.ne(sorted_key[1:], sorted_key[:-1], out=is_first[1:])
    group = torch.cumsum(is_first, 0) - 1  # voxel group of each sorted point
    starts = flat_nonzero(is_first)  # (U,) first sorted position of each group
    num_occupied = starts.numel()
    counts = torch.diff(starts, append=torch.tensor([num_valid], device=device))
    group_key = sorted_key.index_select(0, starts)  # (U,) ascending
    # A sorted point is among its voxel's first t iff the point t places before it lies in another voxel (each
    # voxel's points are contiguous): one shifted comparison instead of every point's rank in its voxel.
    take = torch.ones(num_valid, dtype=torch.bool, device=device)
    if num_valid > t:
        torch.ne(sorted_key[t:], sorted_key[:-t], out=take[t:])

    num_voxels = min(num_occupied, max_voxels)
    if num_occupied > max_voxels:
        # Keep the voxels whose first point comes earliest in the input: rank the groups by first appearance by
        # marking each group's first point in input order and counting.
        first_point = order.index_select(0, starts)
        marks = torch.zeros(num_valid, dtype=torch.int64, device=device)
        marks.index_fill_(0, first_point, 1)
        appearance_rank = (torch.cumsum(marks, 0) - 1).index_select(0, first_point)
        keep_group = appearance_rank < max_voxels
        group_slot = torch.cumsum(keep_group, 0) - 1
        group_slot.masked_fill_(~keep_group, num_voxels)  # a slot past the end: dropped below
        point_slot = group_slot.index_select(0, group)
        take &= point_slot < num_voxels
        kept_groups = flat_nonzero(keep_group)
        counts = counts.index_select(0, kept_groups)
        group_key = group_key.index_select(0, kept_groups)
    else:
        point_slot = group
    take_idx = flat_nonzero(take)  # ascending: voxel after voxel, input order inside each
    source = kept.to(device).index_select(0, order.index_select(0, take_idx))
    num_points = counts.clamp(max=t).to(torch.int32)
    coords = torch.empty((num_voxels, 4), dtype=torch.int32, device=device)
    coords[:, 0] = batch_index
    coords[:, 1] = group_key // (nx * ny)
    coords[:, 2] = (group_key // nx) % ny
    coords[:, 3] = group_key % nx

    stats = VoxelStats(num_input_points=num_input, num_dropped_points=num_input - num_valid,
                       num_occupied_voxels=num_occupied, num_overflow_voxels=num_occupied - num_voxels,
                       num_overflow_points=num_valid - take_idx.numel())
    slot = None
    if with_slot:  # each taken point's place in its voxel (the padded grid's column)
        slot = take_idx - starts.index_select(0, group.index_select(0, take_idx))
    voxels = PointVoxels(take_rows(points, source), point_slot.index_select(0, take_idx), num_points,
                         coords, t)
    return voxels, slot, stats


def voxelize(points: torch.Tensor, point_cloud_range: Sequence[float], voxel_size: Sequence[float],
             max_points_per_voxel: int, max_voxels: int, batch_index: int = 0) -> Voxels:
    """Voxelise one cloud (N, F>=3). Use voxelize_with_stats to learn about dropped points and voxels."""
    return voxelize_with_stats(points, point_cloud_range, voxel_size, max_points_per_voxel, max_voxels, batch_index)[0]


def concat_voxels(parts: Sequence[Voxels]) -> Voxels:
    return Voxels(torch.cat([p.features for p in parts]), torch.cat([p.num_points for p in parts]),
                  torch.cat([p.coords for p in parts]))


def voxelize_batch(clouds: Sequence[torch.Tensor], point_cloud_range: Sequence[float], voxel_size: Sequence[float],
                   max_points_per_voxel: int, max_voxels: int) -> tuple[Voxels, VoxelStats]:
    """Voxelise each cloud (max_voxels applies per cloud) with its list position as batch index; concatenate."""
    if len(clouds) == 0:
        raise ValueError("voxelize_batch needs at least one cloud")
    results = [voxelize_with_stats(c, point_cloud_range, voxel_size, max_points_per_voxel, max_voxels, b)
               for b, c in enumerate(clouds)]
    stats = results[0][1]
    for _, s in results[1:]:
        stats = stats + s
    return concat_voxels([v for v, _ in results]), stats


class Voxelizer:
    """The settings of one model's voxelisation, as a small picklable callable."""

    def __init__(self, point_cloud_range: Sequence[float], voxel_size: Sequence[float], max_points_per_voxel: int,
                 max_voxels: int):
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.max_points_per_voxel = int(max_points_per_voxel)
        self.max_voxels = int(max_voxels)
        self.grid_size = grid_size(self.point_cloud_range, self.voxel_size)  # validates early

    def __call__(self, points: torch.Tensor, batch_index: int = 0) -> tuple[Voxels, VoxelStats]:
        return voxelize_with_stats(points, self.point_cloud_range, self.voxel_size, self.max_points_per_voxel,
                                   self.max_voxels, batch_index)

    def batch(self, clouds: Sequence[torch.Tensor]) -> tuple[Voxels, VoxelStats]:
        return voxelize_batch(clouds, self.point_cloud_range, self.voxel_size, self.max_points_per_voxel,
                              self.max_voxels)

    def __repr__(self) -> str:
        return (f"Voxelizer(range={self.point_cloud_range}, voxel_size={self.voxel_size}, "
                f"T={self.max_points_per_voxel}, max_voxels={self.max_voxels})")
