"""Parameters, FLOPs (multiply-accumulates, the references' "FLOPs") and CPU forward time of every detector config.

One real KITTI scan (000001, 120,268 points), batch 1, eval mode, no grad. Forward time = voxelise + network
(+ post-processing, reported separately), median of --runs after warm-up. Usage:
    python bench/bench_models.py [--threads 2] [--runs 5] [--configs pointpillars_tiny pointpillars ...] [--device cpu]
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
from clean_ros.models.detector_config import load_detector_config  # noqa: E402
from clean_ros.models.detector import build_detector  # noqa: E402
from clean_ros.models.flops import count_flops  # noqa: E402
from clean_ros.inference.postprocess import postprocess  # noqa: E402
from clean_ros.inference.voxelize import voxelize  # noqa: E402
from training.config_paths import find_config  # noqa: E402
from suite import device_sync, synthetic_scan  # noqa: E402  (bench/suite.py, beside this script)

FRAME = Path(__file__).resolve().parents[2] / "shared/data/kitti_sample/training/velodyne/000001.bin"
CONFIGS = ["pointpillars_tiny", "centerpoint_pillar_tiny", "pointpillars", "centerpoint_pillar"]


def load_points() -> tuple[torch.Tensor, str]:
    if FRAME.is_file():
        return torch.from_numpy(np.fromfile(FRAME, dtype=np.float32).reshape(-1, 4)), FRAME.name
    return torch.from_numpy(synthetic_scan()), "synthetic"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--configs", nargs="*", default=CONFIGS)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = device_sync(device)
    points, source = load_points()
    points = points.to(device)
    print(f"frame {source}: {len(points)} points; device {device}; threads {args.threads}; runs {args.runs}")
    print(f"{'config':26s} {'params':>10s} {'GFLOPs':>7s} {'pillars':>8s} {'vox ms':>7s} {'net ms':>8s} "
          f"{'post ms':>8s} {'dets':>5s}")
    for name in args.configs:
        cfg = load_detector_config(find_config(name))
        model = build_detector(cfg).to(device).eval()

        def voxels():
            return voxelize(points, cfg.point_cloud_range, cfg.voxel_size, cfg.max_points_per_voxel,
                            cfg.max_voxels_test)

        v = voxels()
        report = count_flops(model, v, 1)
        times = {"vox": [], "net": [], "post": []}
        with torch.no_grad():
            for i in range(args.warmup + args.runs):
                sync()
                t0 = time.perf_counter()
                v = voxels()
                sync()
                t1 = time.perf_counter()
                out = model(v, 1)
                sync()
                t2 = time.perf_counter()
                dets = postprocess(out, cfg)
                t3 = time.perf_counter()
                if i >= args.warmup:
                    times["vox"].append(t1 - t0)
                    times["net"].append(t2 - t1)
                    times["post"].append(t3 - t2)
        med = {k: 1000 * statistics.median(v) for k, v in times.items()}
        print(f"{name:26s} {report.params:10,d} {report.gflops:7.2f} {len(v.features):8d} {med['vox']:7.1f} "
              f"{med['net']:8.1f} {med['post']:8.1f} {len(dets[0]):5d}", flush=True)


if __name__ == "__main__":
    main()
