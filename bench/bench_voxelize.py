"""Voxelisation time for one real KITTI scan (~120k points) with the SECOND voxel and PointPillars settings.

Prints the median (and min / p90) wall time of many runs after warm-up. Usage:
    python bench/bench_voxelize.py [--threads 2] [--runs 100] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clean_ros.inference.voxelize import voxelize_with_stats  # noqa: E402
from suite import sample_call, synthetic_scan  # noqa: E402  (bench/suite.py, beside this script)

FRAME = Path(__file__).resolve().parents[2] / "shared/data/kitti_sample/training/velodyne/000000.bin"
SETTINGS = {  # name: (point_cloud_range, voxel_size, max_points_per_voxel, max_voxels)
    "voxel  (0.05,0.05,0.1) T=5  max 16000": ((0, -40, -3, 70.4, 40, 1), (0.05, 0.05, 0.1), 5, 16000),
    "voxel  (0.05,0.05,0.1) T=5  max 40000": ((0, -40, -3, 70.4, 40, 1), (0.05, 0.05, 0.1), 5, 40000),
    "pillar (0.16,0.16,4)   T=32 max 16000": ((0, -39.68, -3, 69.12, 39.68, 1), (0.16, 0.16, 4), 32, 16000),
    "pillar (0.16,0.16,4)   T=32 max 40000": ((0, -39.68, -3, 69.12, 39.68, 1), (0.16, 0.16, 4), 32, 40000),
}


def load_points(num_synthetic: int = 120_000) -> tuple[torch.Tensor, str]:
    if FRAME.is_file():
        return torch.from_numpy(np.fromfile(FRAME, dtype=np.float32).reshape(-1, 4)), str(FRAME)
    return torch.from_numpy(synthetic_scan(num_synthetic)), "synthetic"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    points, source = load_points()
    points = points.to(args.device)
    print(f"points: {len(points)} from {source}; device {args.device}; torch threads {torch.get_num_threads()}; "
          f"CPU cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} (busy machine => slower, noisier)")
    for name, (pc_range, voxel_size, t, max_voxels) in SETTINGS.items():
        times, (voxels, stats) = sample_call(
            lambda: voxelize_with_stats(points, pc_range, voxel_size, t, max_voxels),  # noqa: B023 - called here
            args.runs, args.warmup, points.device)
        times.sort()
        print(f"{name}: median {statistics.median(times):6.2f} ms  min {times[0]:6.2f}  p90 "
              f"{times[int(0.9 * len(times))]:6.2f}  | voxels {len(voxels.coords)} (occupied "
              f"{stats.num_occupied_voxels}), points in range {stats.num_input_points - stats.num_dropped_points}")


if __name__ == "__main__":
    main()
