"""Cost of the automatic intensity level per scan (clean_ros/inference/intensity_level.py), what the Pipeline adds to
the node's preprocess stage when auto_intensity is on.

Prints the median (and min / p90) wall time, after warm-up, of what Pipeline.preprocess does for it on one real KITTI
scan (~115k points): AutoIntensity.update on the scan, then AutoIntensity.scale_ on the intensity column of the
points the voxeliser keeps (here every point: the voxeliser's copy is made outside the timed part, as it is made
anyway). Usage:
    python bench/bench_intensity_level.py [--runs 100] [--warmup 10]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clean_ros.inference.intensity_level import AutoIntensity  # noqa: E402
from suite import synthetic_scan  # noqa: E402  (bench/suite.py, beside this script)

FRAME = Path(__file__).resolve().parents[2] / "shared/data/kitti_sample/training/velodyne/000000.bin"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    if FRAME.is_file():
        points, source = np.fromfile(FRAME, dtype=np.float32).reshape(-1, 4), str(FRAME)
    else:
        points, source = synthetic_scan(120_000), "synthetic"
    auto = AutoIntensity(0.29, clip=(0.0, 1.0))
    template = torch.from_numpy(points)
    kept = template.clone()  # stands for the voxeliser's own copy of the kept points
    times = []
    for i in range(args.warmup + args.runs):
        kept.copy_(template)
        start = time.perf_counter()
        auto.update(points)
        auto.scale_(kept[:, 3])
        if i >= args.warmup:
            times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    print(f"automatic intensity on {len(points)} points ({source}): median {statistics.median(times):.2f} ms, "
          f"min {times[0]:.2f}, p90 {times[int(0.9 * (len(times) - 1))]:.2f} ms over {args.runs} runs; "
          f"factor {auto.factor:.3f}")


if __name__ == "__main__":
    main()
