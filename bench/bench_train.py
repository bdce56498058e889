#!/usr/bin/env python3
"""Training throughput of the *_tiny configs on this machine, and DDP with 1 vs 2 processes.

    python bench/bench_train.py [--iters 8] [--frames 8] [--configs pointpillars_tiny centerpoint_pillar_tiny]

Each measurement is a real `training/train.py` run (data loading, voxelisation, forward, targets, losses,
backward, optimiser) on a simulated KITTI-format dataset generated into a temporary folder; the first 2
iterations are warm-up. Seconds per iteration come from the run's losses.csv (logged every iteration).
Prints s/iteration and samples/s (global batch / s per iteration).
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WARMUP = 2
sys.path.insert(0, str(REPO / "bench"))
from suite import emit, figure  # noqa: E402  (machine-readable lines for run_all.py only)


def run(cmd: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")


def seconds_per_iteration(run_dir: Path) -> float:
    rows = list(csv.DictReader((run_dir / "losses.csv").open()))[WARMUP:]
    return statistics.median(float(r["s_per_it"]) for r in rows)


def train_cmd(config: Path, out: Path, data: Path, batch: int, iters: int, extra: list[str]) -> list[str]:
    return [str(REPO / "training" / "train.py"), "--no-tensorboard", "--no-progress", "--config", str(config),
            "--out", str(out), "--set", f"data.root={data}", "--set", f"batch_size={batch}",
            "--set", f"max_iterations={iters + WARMUP}", "--set", "eval_interval=0", "--set", "log_interval=1",
            "--set", "augment.gt_sampling=false", "--set", "workers=1", "--set", "epochs=100", *extra]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=8, help="timed iterations per measurement (after 2 warm-up)")
    ap.add_argument("--frames", type=int, default=8, help="simulated frames (full HDL-64E resolution)")
    ap.add_argument("--configs", nargs="+", default=["pointpillars_tiny", "centerpoint_pillar_tiny"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of a single process (1: OpenMP spin-waiting on a shared machine costs more "
                         "than a second thread gains)")
    args = ap.parse_args()

    from training.sim.sim_config import config_from_dict
    from training.simulate import simulate_dataset

    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        data = tmp / "sim"
        simulate_dataset(config_from_dict({"dataset": {"val_fraction": 0.0}}), data, n_frames=args.frames, seed=0,
                         workers=1, progress=False)
        print(f"# training throughput, {args.frames} simulated frames (HDL-64E), {args.iters} timed iterations, "
              f"{os.cpu_count()} CPU cores, {args.threads} torch threads per single process")
        print(f"{'config':<26}{'processes':>10}{'batch/proc':>12}{'s/iter':>10}{'samples/s':>11}")
        for name in args.configs:
            config = REPO / "config" / "train" / f"{name}.yaml"
            for batch in (1, 2):
                out = tmp / f"{name}_b{batch}"
                run([py, *train_cmd(config, out, data, batch, args.iters, [])], args.threads)
                spi = seconds_per_iteration(out)
                print(f"{name:<26}{1:>10}{batch:>12}{spi:>10.2f}{batch / spi:>11.2f}", flush=True)
                emit(figure("train", f"{name} 1 process batch {batch}", batch / spi, "samples/s", s_per_iter=spi))
        # DDP: 2 processes x batch 1 vs 1 process x batch 2 (same global batch, --threads threads per process)
        name = args.configs[0]
        config = REPO / "config" / "train" / f"{name}.yaml"
        out = tmp / "ddp2"
        run([py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             *train_cmd(config, out, data, 1, args.iters, [])], args.threads)
        spi = seconds_per_iteration(out)
        print(f"{name + ' (DDP, gloo)':<26}{2:>10}{1:>12}{spi:>10.2f}{2 / spi:>11.2f}", flush=True)
        emit(figure("train", f"{name} DDP 2 processes x batch 1", 2 / spi, "samples/s", s_per_iter=spi))
        ddp2 = 2 / spi
        out = tmp / "ddp1"
        run([py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
             *train_cmd(config, out, data, 2, args.iters, [])], args.threads)
        spi = seconds_per_iteration(out)
        print(f"{name + ' (torchrun)':<26}{1:>10}{2:>12}{spi:>10.2f}{2 / spi:>11.2f}", flush=True)
        emit(figure("train", f"{name} DDP 1 process x batch 2", 2 / spi, "samples/s", s_per_iter=spi))
        emit(figure("train", f"{name} DDP speed-up 2 vs 1 processes", ddp2 / (2 / spi), "x"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
