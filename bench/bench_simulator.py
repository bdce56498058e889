#!/usr/bin/env python3
"""Simulator throughput: frames/s and points/frame, in memory and end to end (files written), 1 and N workers.

    python bench/bench_simulator.py [--frames 20] [--workers 2] [--config sim.yaml]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from training.sim.sim_config import load_config  # noqa: E402
from training.sim.generate import frame_rngs, scan_scene  # noqa: E402
from training.sim.scene import sample_scene  # noqa: E402
from training.simulate import simulate_dataset  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--config", type=Path, default=None)
    args = ap.parse_args()
    cfg = load_config(args.config)

    # stage timings, one process
    t_scene, t_scan, points, labels = [], [], [], []
    for i in range(args.frames):
        scene_rng, sensor_rng = frame_rngs(1, i)
        t0 = time.perf_counter()
        scene = sample_scene(cfg.scene, cfg.sensor, scene_rng)
        t1 = time.perf_counter()
        frame = scan_scene(scene, cfg, sensor_rng)
        t2 = time.perf_counter()
        t_scene.append(t1 - t0)
        t_scan.append(t2 - t1)
        points.append(len(frame.points))
        labels.append(len(frame.labels.objects))
    per_frame = np.array(t_scene) + np.array(t_scan)
    print(f"in memory, 1 process: {1 / per_frame.mean():.2f} frames/s (scene {np.mean(t_scene) * 1e3:.0f} ms + "
          f"ray casting/labels {np.mean(t_scan) * 1e3:.0f} ms per frame)")
    print(f"points/frame: mean {np.mean(points):.0f}, min {np.min(points)}, max {np.max(points)}; "
          f"labels/frame: mean {np.mean(labels):.1f}")

    for workers in sorted({1, args.workers}):
        with tempfile.TemporaryDirectory() as tmp:
            stats = simulate_dataset(cfg, Path(tmp) / "sim", args.frames, seed=1, workers=workers, progress=False)
        print(f"end to end (files written), {workers} worker(s): {stats['frames_per_s']:.2f} frames/s -> "
              f"500 frames in {500 / stats['frames_per_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
