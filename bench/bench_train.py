#!/usr/bin/env python3
"""Training throughput of the *_tiny configs on this machine, and DDP with 1 vs 2 processes.

    python bench/bench_train.py [--iters 8] [--frames 8] [--configs pointpillars_tiny centerpoint_pillar_tiny]
                                [--repeats 1] [--no-ddp]

Each measurement is a real `training/train.py` run (data loading, voxelisation, forward, targets, losses,
backward, optimiser) on a simulated KITTI-format dataset generated into a temporary folder; the first epoch is
warm-up. Seconds per iteration: the mean over the following whole epochs of the run's losses.csv (logged every
iteration, so each epoch's wait for its restarted loader worker counts whatever the batch size; with the
per-part gradient norms off: they cost an extra backward per loss part, which a normal run pays on one step in
log_interval). Batch 1 and batch 2 runs alternate --repeats times (1, 2, 1, 2, ...) so both see the same load;
the figure is the median over the repeats. Prints s/iteration, samples/s (global batch / s per iteration) and
the load average after each run. The phases of one step: bench/bench_train_step.py.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "bench"))
from suite import emit, figure  # noqa: E402  (machine-readable lines for run_all.py only)


def load_now() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run(cmd: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")


def iterations_for(frames: int, global_batch: int, timed: int) -> int:
    """Iterations of a run: one warm-up epoch, then enough whole epochs for at least `timed` iterations."""
    per_epoch = math.ceil(frames / global_batch)
    return per_epoch * (1 + math.ceil(timed / per_epoch))


def seconds_per_iteration(run_dir: Path) -> float:
    """Mean seconds per iteration over the whole epochs after the first (warm-up) one. Whole epochs, and a mean
    rather than a median: each epoch starts its loader worker again and waits for its first batch, so with a few
    frames the epoch's first iteration is slow; a median over rows skips it for batch 1 (1 slow row in 8) but not
    for batch 2 (1 in 4), which made batch 2 look slower per sample than it trains."""
    rows = [r for r in csv.DictReader((run_dir / "losses.csv").open()) if int(r["epoch"]) >= 1]
    return statistics.fmean(float(r["s_per_it"]) for r in rows)


def train_cmd(config: Path, out: Path, data: Path, batch: int, iterations: int, extra: list[str]) -> list[str]:
    return [str(REPO / "training" / "train.py"), "--no-tensorboard", "--no-progress", "--config", str(config),
            "--out", str(out), "--set", f"data.root={data}", "--set", f"batch_size={batch}",
            "--set", f"max_iterations={iterations}", "--set", "eval_interval=0", "--set", "log_interval=1",
            "--set", "augment.gt_sampling=false", "--set", "workers=1", "--set", "epochs=100",
            "--set", "log_grad_norms=false", *extra]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=8,
                    help="at least this many timed iterations per measurement, in whole epochs after a warm-up epoch")
    ap.add_argument("--frames", type=int, default=8, help="simulated frames (full HDL-64E resolution)")
    ap.add_argument("--configs", nargs="+", default=["pointpillars_tiny", "centerpoint_pillar_tiny"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of a single process (1: OpenMP spin-waiting on a shared machine costs more "
                         "than a second thread gains)")
    ap.add_argument("--repeats", type=int, default=1, help="alternating batch 1 / batch 2 runs per config")
    ap.add_argument("--no-ddp", action="store_true", help="skip the DDP 2 vs 1 process runs")
    args = ap.parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")

    from training.sim.sim_config import config_from_dict
    from training.simulate import simulate_dataset

    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        data = tmp / "sim"
        simulate_dataset(config_from_dict({"dataset": {"val_fraction": 0.0}}), data, n_frames=args.frames, seed=0,
                         workers=1, progress=False)
        print(f"# training throughput, {args.frames} simulated frames (HDL-64E), >= {args.iters} timed iterations "
              f"in whole epochs, {os.cpu_count()} CPU cores, {args.threads} torch threads per single process")
        print(f"{'config':<26}{'processes':>10}{'batch/proc':>12}{'s/iter':>10}{'samples/s':>11}")
        for name in args.configs:
            config = REPO / "config" / "train" / f"{name}.yaml"
            runs: dict[int, list[float]] = {1: [], 2: []}
            for repeat in range(args.repeats):
                for batch in (1, 2):
                    out = tmp / f"{name}_b{batch}_{repeat}"
                    iterations = iterations_for(args.frames, batch, args.iters)
                    run([py, *train_cmd(config, out, data, batch, iterations, [])], args.threads)
                    spi = seconds_per_iteration(out)
                    runs[batch].append(spi)
                    print(f"{name:<26}{1:>10}{batch:>12}{spi:>10.2f}{batch / spi:>11.2f}   load {load_now()}",
                          flush=True)
            for batch, values in runs.items():
                spi = statistics.median(values)
                if args.repeats > 1:
                    print(f"{name + ' (median)':<26}{1:>10}{batch:>12}{spi:>10.2f}{batch / spi:>11.2f}", flush=True)
                emit(figure("train", f"{name} 1 process batch {batch}", batch / spi, "samples/s", s_per_iter=spi))
        if args.no_ddp:
            return 0
        # DDP: 2 processes x batch 1 vs 1 process x batch 2 (same global batch, --threads threads per process)
        name = args.configs[0]
        config = REPO / "config" / "train" / f"{name}.yaml"
        out = tmp / "ddp2"
        run([py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             *train_cmd(config, out, data, 1, iterations_for(args.frames, 2, args.iters), [])], args.threads)
        spi = seconds_per_iteration(out)
        print(f"{name + ' (DDP, gloo)':<26}{2:>10}{1:>12}{spi:>10.2f}{2 / spi:>11.2f}", flush=True)
        emit(figure("train", f"{name} DDP 2 processes x batch 1", 2 / spi, "samples/s", s_per_iter=spi))
        ddp2 = 2 / spi
        out = tmp / "ddp1"
        run([py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
             *train_cmd(config, out, data, 2, iterations_for(args.frames, 2, args.iters), [])], args.threads)
        spi = seconds_per_iteration(out)
        print(f"{name + ' (torchrun)':<26}{1:>10}{2:>12}{spi:>10.2f}{2 / spi:>11.2f}", flush=True)
        emit(figure("train", f"{name} DDP 1 process x batch 2", 2 / spi, "samples/s", s_per_iter=spi))
        emit(figure("train", f"{name} DDP speed-up 2 vs 1 processes", ddp2 / (2 / spi), "x"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
