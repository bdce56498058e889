#!/usr/bin/env python3
"""Generate a synthetic KITTI-format 3D object dataset (simulated Velodyne HDL-64E street scenes).

    python training/simulate.py --out data/sim --frames 500 --seed 0 [--preset realistic] [--config sim.yaml]
        [--workers 2]

Writes OUT/training/{velodyne,label_2,calib}, OUT/ImageSets/{train,val,trainval}.txt and, with
dataset.test_frames > 0, OUT/testing/{velodyne,calib} + ImageSets/test.txt; with labels.write_all_around (on in the
realistic preset) also OUT/training/label_all (every object around the sensor). --config values apply on top of
the preset (training/sim/sim_config.py PRESETS; docs/SIMULATOR.md). Every file is written atomically;
the same arguments always give byte-identical files.
"""
from __future__ import annotations

import argparse
import sys
import time
from multiprocessing import get_context
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.sim.sim_config import PRESETS, SimConfig, SimConfigError, load_config  # noqa: E402
from training.sim.generate import generate_frame  # noqa: E402
from training.sim.writer import write_frame, write_image_sets  # noqa: E402


def _make_one(job: tuple[SimConfig, Path, int, str, int]) -> tuple[int, int]:
    cfg, out, seed, split, index = job
    frame = generate_frame(cfg, seed, index, split)
    write_frame(out, split, index, frame)
    return len(frame.points), len(frame.labels.objects)


def simulate_dataset(cfg: SimConfig, out: Path, n_frames: int, seed: int, workers: int = 1,
                     progress: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, out, seed, "training", i) for i in range(n_frames)]
    jobs += [(cfg, out, seed, "testing", i) for i in range(cfg.dataset.test_frames)]
    start = time.perf_counter()
    n_points = n_labels = 0
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            results = pool.imap(_make_one, jobs, chunksize=1)
            for done, (points, labels) in enumerate(results, 1):
                n_points, n_labels = n_points + points, n_labels + labels
                _report(done, len(jobs), start, progress)
    else:
        for done, job in enumerate(jobs, 1):
            points, labels = _make_one(job)
            n_points, n_labels = n_points + points, n_labels + labels
            _report(done, len(jobs), start, progress)
    write_image_sets(out, n_frames, cfg.dataset.val_fraction, seed, cfg.dataset.test_frames)
    seconds = time.perf_counter() - start
    return {"frames": len(jobs), "seconds": seconds, "frames_per_s": len(jobs) / max(seconds, 1e-9),
            "points_per_frame": n_points / max(len(jobs), 1), "labels_per_frame": n_labels / max(n_frames, 1)}


def _report(done: int, total: int, start: float, progress: bool) -> None:
    if progress and (done == total or done % 10 == 0):
        rate = done / max(time.perf_counter() - start, 1e-9)
        print(f"\r{done}/{total} frames, {rate:.2f} frames/s", end="\n" if done == total else "", file=sys.stderr,
              flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate a synthetic KITTI-format LiDAR 3D object dataset.")
    ap.add_argument("--out", type=Path, required=True, help="dataset root to create (KITTI object layout)")
    ap.add_argument("--frames", type=int, required=True, help="number of labelled training frames")
    ap.add_argument("--seed", type=int, default=0, help="random seed; same seed and config -> identical files")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="starting point of the options (default: the config's `preset` key, else 'default')")
    ap.add_argument("--config", type=Path, default=None, help="YAML overriding sensor/scene/labels/dataset options")
    ap.add_argument("--workers", type=int, default=1, help="processes generating frames in parallel")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)
    if args.frames < 1:
        ap.error("--frames must be >= 1")
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    try:
        cfg = load_config(args.config, args.preset)
        stats = simulate_dataset(cfg, args.out, args.frames, args.seed, args.workers, progress=not args.quiet)
    except SimConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {exc.filename or args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {stats['frames']} frames to {args.out} in {stats['seconds']:.1f} s "
          f"({stats['frames_per_s']:.2f} frames/s, {stats['points_per_frame']:.0f} points/frame, "
          f"{stats['labels_per_frame']:.1f} labels/frame)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
