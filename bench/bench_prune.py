"""Filter-importance scoring speed (vectorised replicas + cached BEV prefix vs one full forward per zeroed
filter) and surgery time, on one real KITTI scan with pointpillars_tiny (or --config).

    python bench/bench_prune.py [--config pointpillars_tiny] [--threads 1] [--layers 3] [--per-pass 1 8]

Scores the last --layers prunable layers plus every deblock (all layers: --layers 0), prints ms per filter for
each filters_per_pass value and for the naive baseline (weights really zeroed, full forward, measured on 8
filters), then the surgery time and parameter counts at keep ratio 0.45. Prints the load average: the machine
is shared.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clean_ros.models.detector_config import load_detector_config  # noqa: E402
from clean_ros.models.detector import build_detector  # noqa: E402
from clean_ros.inference.voxelize import voxelize_batch  # noqa: E402
from training.config_paths import find_config  # noqa: E402
from training.prune import PruneConfig, build_graph, prune_detector, score_filters  # noqa: E402

FRAME = Path(__file__).resolve().parents[2] / "shared/data/kitti_sample/training/velodyne/000001.bin"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="pointpillars_tiny")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=3, help="score the last N non-deblock layers + deblocks; 0 = all")
    ap.add_argument("--per-pass", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_detector_config(find_config(args.config))
    detector = build_detector(cfg).eval()
    if FRAME.is_file():
        points, source = np.fromfile(FRAME, dtype=np.float32).reshape(-1, 4), f"KITTI {FRAME.name}"
    else:
        rng = np.random.default_rng(0)
        r = np.asarray(cfg.point_cloud_range)
        points = np.concatenate([rng.uniform(r[:3], r[3:], (20000, 3)), rng.uniform(0, 1, (20000, 1))], 1)
        points, source = points.astype(np.float32), "random cloud (KITTI sample absent)"
    voxels, _ = voxelize_batch([torch.from_numpy(points)], cfg.point_cloud_range, cfg.voxel_size,
                               cfg.max_points_per_voxel, cfg.max_voxels_test)
    batch = types.SimpleNamespace(voxels=voxels, batch_size=1)
    graph = build_graph(detector)
    if args.layers:
        body = [layer for layer in graph if "deblocks" not in layer.name]
        layers = body[-args.layers:] + [layer for layer in graph if "deblocks" in layer.name]
    else:
        layers = graph
    filters = sum(layer.width for layer in layers)
    print(f"{args.config}, {source}, {voxels.coords.shape[0]} pillars/voxels, threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}; scoring {len(layers)} layers / {filters} filters")
    for per_pass in args.per_pass:
        start = time.perf_counter()
        score_filters(detector, [batch], PruneConfig(filters_per_pass=per_pass), layers=layers)
        elapsed = time.perf_counter() - start
        print(f"  vectorised, filters_per_pass={per_pass:3d}: {elapsed:7.2f} s  "
              f"{1000 * elapsed / filters:7.1f} ms/filter")
    layer = layers[0]
    start = time.perf_counter()
    weight = detector.get_submodule(layer.name).weight
    with torch.no_grad():
        for f in range(8):
            saved = weight[f].clone()
            weight[f].zero_()
            detector(batch.voxels, 1)
            weight[f].copy_(saved)
    elapsed = time.perf_counter() - start
    print(f"  naive (zero weights, full forward), 8 filters of {layer.name}: {1000 * elapsed / 8:7.1f} ms/filter")
    scores = score_filters(detector, [batch], PruneConfig(filters_per_pass=8), layers=graph) if not args.layers \
        else None
    if scores is None:  # surgery needs every layer scored: random scores are enough to time it
        from training.prune import ImportanceScores
        g = torch.Generator().manual_seed(0)
        scores = ImportanceScores(graph, {l.name: torch.rand(l.width, generator=g) for l in graph}, "masked")
    start = time.perf_counter()
    _, _, report = prune_detector(detector, scores, 0.45)
    print(f"  surgery (keep 0.45): {1000 * (time.perf_counter() - start):.0f} ms, parameters "
          f"{report.params_before:,} -> {report.params_after:,}, filters {report.filters_before} -> "
          f"{report.filters_after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
