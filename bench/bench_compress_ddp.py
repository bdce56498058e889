#!/usr/bin/env python3
"""Wall time of `training/compress.py` on the smoke config: one process x batch 2 against `torchrun` with 2 gloo
processes x batch 1 (the same global batch, the same models within the DDP tolerance), on this machine's CPU.

    python bench/bench_compress_ddp.py [--frames 96] [--epochs 4] [--keep DIR]

Both runs load the shipped teacher (models/teacher) and use 1 torch thread per process; the data stage is
simulated once and linked into both run folders, so the figures compare the stages that do the work. Prints the
wall time of each run, each stage's seconds (report.json) and the speed-up (1-process wall / 2-process wall).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from suite import emit, figure  # noqa: E402  (machine-readable lines for run_all.py only)

COMPRESS = REPO / "training" / "compress.py"
SMOKE = REPO / "config" / "compress" / "smoke.yaml"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tic = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - tic
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=96, help="simulated frames (3/4 train)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the student and fine-tune stages")
    ap.add_argument("--keep", type=Path, help="keep the run folders here (default: a temporary folder)")
    args = ap.parse_args()

    sets = ["--set", f"teacher.checkpoint={REPO / 'models' / 'teacher'}", "--set", f"data.simulate.frames={args.frames}",
            "--set", f"student.epochs={args.epochs}", "--set", f"finetune.epochs={args.epochs}", "--no-progress"]
    with tempfile.TemporaryDirectory(dir=args.keep.parent if args.keep else None) as tmp:
        root = args.keep or Path(tmp)
        single, ddp = root / "one_process", root / "two_processes"
        wall = {}  # the one-process run simulates the data; its data stage's seconds are taken off its wall time
        wall["1 process x batch 2"] = _run([sys.executable, str(COMPRESS), "--config", str(SMOKE), "--out",
                                            str(single), *sets, "--set", "training.batch_size=2"])
        (ddp / "stages").mkdir(parents=True, exist_ok=True)
        (ddp / "stages" / "data").symlink_to(single / "stages" / "data")
        wall["2 processes x batch 1 (torchrun, gloo)"] = _run(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
             "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{_port()}", str(COMPRESS), "--config", str(SMOKE),
             "--out", str(ddp), *sets, "--set", "training.batch_size=1"])
        load = os.getloadavg()
        print(f"compress.py smoke, {args.frames} frames, {args.epochs} epochs per student stage, shipped teacher; "
              f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs")
        walls = []
        for (label, seconds), folder in zip(wall.items(), (single, ddp)):
            stages = json.loads((folder / "report.json").read_text())["stage_seconds"]
            seconds -= stages.get("data", 0.0) if folder == single else 0.0
            walls.append(seconds)
            worked = {k: v for k, v in stages.items() if k != "data"}
            print(f"  {label:40s} wall without data {seconds:7.1f} s   stages: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in worked.items()))
        one, two = walls
        print(f"  speed-up (1-process wall / 2-process wall): {one / two:.2f}x")
        emit(figure("compress_ddp", "speed-up 2 vs 1 processes (smoke)", one / two, "x", goal=">= 1"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
