#!/usr/bin/env python3
"""Training throughput, batch 1 against batch 2, in one process (docs/BENCH.md "Training step: batch 1 vs batch 2").

    python bench/bench_train_step.py [--config pointpillars_tiny] [--part both|phases|trainer] [--steps 8]
                                     [--epochs 4] [--workers 1] [--set KEY=VALUE ...] [--frames 16] [--data ROOT]
                                     [--default-malloc]

Two measurements; in both, batch 1 and batch 2 alternate so that the other jobs' load hits them alike, and each
figure has wall-clock and CPU time (on a shared machine the wall clock follows the other jobs, the CPU time much
less). 1 torch thread.

phases: one training step cut into its phases, each timed: read (velodyne + labels), augment, crop, collate
  (voxelisation + padding), forward, targets, loss, backward, optimiser (gradient clipping + AdamW), with the
  minor page faults of the step. The calls are the ones KittiDataset.__getitem__, the Collator,
  DetectionTask.loss_context and Trainer.train_step make, run one by one in this process (no loader worker).
  Steps alternate 1, 2, 1, 2, ...; the first of each is a warm-up; medians per sample.
trainer: two real Trainers (training/trainer.py: DataLoader with 1 worker process, as bench_train.py's runs),
  one per batch size, training whole epochs in turn (1, 2, 1, 2, ...; the first epoch of each is a warm-up).
  samples/s = frames / seconds of the epoch (the loop, the loader worker's restart and its first batch
  included); CPU = this process + the epoch's loader worker (it exits at the epoch's end).

--default-malloc sets CLEAN_ROS_DEFAULT_MALLOC=1: glibc's adaptive malloc as the trainer had it before
training/allocator.py (the "before" figures). Data: a KITTI-layout root (--data, its train split), else --frames
simulated frames (full HDL-64E resolution) in a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from suite import emit, figure, load_average  # noqa: E402

PHASES = ("read", "augment", "crop", "collate", "forward", "targets", "loss", "backward", "optimiser")


def usage(self_and_children: bool = False) -> tuple[float, int]:
    """(CPU seconds, minor page faults) of this process, plus its finished children when asked."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    cpu, faults = own.ru_utime + own.ru_stime, own.ru_minflt
    if self_and_children:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu, faults = cpu + kids.ru_utime + kids.ru_stime, faults + kids.ru_minflt
    return cpu, faults


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="pointpillars_tiny", help="config/train/<name>.yaml")
    ap.add_argument("--part", choices=("both", "phases", "trainer"), default="both")
    ap.add_argument("--steps", type=int, default=8, help="phases: timed steps per batch size (after 1 warm-up)")
    ap.add_argument("--epochs", type=int, default=4, help="trainer: timed epochs per batch size (after 1 warm-up)")
    ap.add_argument("--workers", type=int, default=1, help="trainer: DataLoader worker processes")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="trainer: more train-config overrides (repeatable), e.g. log_grad_norms=false")
    ap.add_argument("--frames", type=int, default=16, help="simulated frames when --data is not given")
    ap.add_argument("--data", type=Path, default=None, help="KITTI-layout dataset root (its train split)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="glibc's adaptive malloc, as before training/allocator.py (the 'before' figures)")
    args = ap.parse_args()
    if args.steps < 1 or args.epochs < 1:
        raise SystemExit("--steps and --epochs must be >= 1")
    if args.default_malloc:
        os.environ["CLEAN_ROS_DEFAULT_MALLOC"] = "1"

    import torch

    torch.set_num_threads(1)
    from training.allocator import retain_freed_memory

    malloc = retain_freed_memory().reason  # what the Trainer does (again) at its start
    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as tmp:
        data = args.data
        if data is None:
            from training.sim.sim_config import config_from_dict
            from training.simulate import simulate_dataset

            data = Path(tmp) / "sim"
            simulate_dataset(config_from_dict({"dataset": {"val_fraction": 0.0}}), data, n_frames=args.frames,
                             seed=0, workers=1, progress=False)
        if not (Path(data) / "ImageSets" / "train.txt").is_file():
            raise SystemExit(f"--data {data}: no ImageSets/train.txt (expected the KITTI object layout)")
        tag = "default" if args.default_malloc else "kept"
        print(f"# {args.config}, 1 torch thread, {malloc}")
        if args.part in ("both", "phases"):
            report_phases(args, *run_phases(args, Path(data)), tag)
        if args.part in ("both", "trainer"):
            report_trainer(args, run_trainers(args, Path(data), Path(tmp)), tag)
    return 0


# ------------------------------------------------------------------------------------------- phases
def run_phases(args, data: Path) -> tuple[dict, dict, dict]:
    import numpy as np
    import torch

    from training.data.augment import Augmentor
    from training.data.kitti_dataset import KittiDataset, crop_to_range
    from training.data.loader import Collator
    from training.losses import compute_losses
    from training.targets import build_targets
    from training.teacher_task import build_task
    from training.train_config import load_train_config
    from training.trainer import seed_everything

    cfg = load_train_config(REPO / "config" / "train" / f"{args.config}.yaml",
                            [f"data.root={data}", "augment.gt_sampling=false"])
    seed_everything(cfg.seed)
    dataset = KittiDataset(cfg.data, cfg.data.train_split, training=True,
                           augmentor=Augmentor(cfg.augment, tuple(cfg.model.class_names)), seed=cfg.seed)
    task = build_task(cfg).train()
    collate = Collator.from_config(cfg.model, training=True, extra=getattr(task, "extra_voxelizers", None))
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    keys = (*PHASES, "total")
    wall = {b: {k: [] for k in keys} for b in (1, 2)}
    cpu = {b: {k: [] for k in keys} for b in (1, 2)}
    faults: dict[int, list[int]] = {1: [], 2: []}
    index = 0
    for step in range(args.steps + 1):
        for b in (1, 2):
            spent = dict.fromkeys(PHASES, 0.0)
            cpu_spent = dict.fromkeys(PHASES, 0.0)
            _, faults_before = usage()
            tic, cpu_tic = time.perf_counter(), time.process_time()

            def lap(phase: str) -> None:
                nonlocal tic, cpu_tic
                toc, cpu_toc = time.perf_counter(), time.process_time()
                spent[phase] += toc - tic
                cpu_spent[phase] += cpu_toc - cpu_tic
                tic, cpu_tic = toc, cpu_toc

            samples = []
            for _ in range(b):  # KittiDataset.__getitem__, phase by phase
                i = index % len(dataset)
                index += 1
                sample = dataset.load_frame(dataset.frame_ids[i])
                lap("read")
                sample = dataset.augmentor(sample, np.random.default_rng((cfg.seed, 0, i)))
                lap("augment")
                samples.append(crop_to_range(sample, cfg.data.point_cloud_range))
                lap("crop")
            batch = collate(samples)
            lap("collate")
            output = task.model(batch.voxels, batch.batch_size)
            lap("forward")
            targets = build_targets(output, batch.gt_boxes, batch.gt_labels, task.cfg)
            lap("targets")
            loss = compute_losses(output.float32(), targets, task.cfg.head.loss).total
            lap("loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lap("backward")
            torch.nn.utils.clip_grad_norm_(params, cfg.optimizer.grad_clip or float("inf"))
            optimizer.step()
            lap("optimiser")
            if step == 0:
                continue  # warm-up
            for phase in PHASES:
                wall[b][phase].append(spent[phase])
                cpu[b][phase].append(cpu_spent[phase])
            wall[b]["total"].append(sum(spent.values()))
            cpu[b]["total"].append(sum(cpu_spent.values()))
            faults[b].append(usage()[1] - faults_before)
    return wall, cpu, faults


def report_phases(args, wall: dict, cpu: dict, faults: dict, tag: str) -> None:
    load = load_average()
    print(f"\n## one step by phase, {args.steps} steps per batch size (alternating), load average {load}")
    print(f"{'per sample':<11}{'b1 wall ms':>12}{'b1 CPU ms':>11}{'b2 wall ms':>12}{'b2 CPU ms':>11}")
    total_wall, total_cpu = {}, {}
    for phase in (*PHASES, "total"):
        row = f"{phase:<11}"
        for b in (1, 2):
            wall_ms = statistics.median(wall[b][phase]) * 1e3 / b
            cpu_ms = statistics.median(cpu[b][phase]) * 1e3 / b
            row += f"{wall_ms:>12.1f}{cpu_ms:>11.1f}"
            total_wall[b], total_cpu[b] = wall_ms, cpu_ms
        print(row)
    for b in (1, 2):
        fault = statistics.median(faults[b]) / b
        print(f"batch {b}: {1e3 / total_wall[b]:.2f} samples/s wall, {1e3 / total_cpu[b]:.2f} samples per CPU second, "
              f"{fault:.0f} minor page faults per sample")
        emit(figure("train_step", f"{args.config} step batch {b} ({tag} malloc)", 1e3 / total_cpu[b],
                    "samples/CPU s", load=load, faults_per_sample=fault, wall_samples_per_s=1e3 / total_wall[b]))
    print(f"batch 2 / batch 1 samples/s: wall {total_wall[1] / total_wall[2]:.2f}, "
          f"CPU {total_cpu[1] / total_cpu[2]:.2f}")


# ------------------------------------------------------------------------------------------- trainer
def run_trainers(args, data: Path, tmp: Path) -> dict[int, list[tuple[float, float, int, int]]]:
    from training.data.augment import Augmentor
    from training.data.kitti_dataset import KittiDataset
    from training.run_dir import RunDir
    from training.teacher_task import build_task
    from training.train_config import load_train_config
    from training.trainer import Trainer, seed_everything

    trainers = {}
    for b in (1, 2):
        cfg = load_train_config(REPO / "config" / "train" / f"{args.config}.yaml", [
            f"data.root={data}", "augment.gt_sampling=false", f"batch_size={b}", f"workers={args.workers}",
            "eval_interval=0", "checkpoint_interval=0", "log_interval=10", f"epochs={args.epochs + 1}",
            *args.overrides])
        seed_everything(cfg.seed)
        train_set = KittiDataset(cfg.data, cfg.data.train_split, training=True,
                                 augmentor=Augmentor(cfg.augment, tuple(cfg.model.class_names)), seed=cfg.seed)
        trainers[b] = Trainer(cfg, build_task(cfg), train_set, None,
                              RunDir(tmp / f"trainer_b{b}", tensorboard=False), progress=False)
        trainers[b].task.train()
    runs: dict[int, list[tuple[float, float, int, int]]] = {1: [], 2: []}
    for epoch in range(args.epochs + 1):
        for b, trainer in trainers.items():
            cpu0, faults0 = usage(self_and_children=True)
            tic = time.perf_counter()
            trainer._train_epoch()  # the loop fit() runs, one epoch (fit() would also save and log)
            seconds = time.perf_counter() - tic
            cpu1, faults1 = usage(self_and_children=True)
            trainer.state.epoch += 1
            trainer.state.iteration = 0
            if epoch > 0:
                runs[b].append((seconds, cpu1 - cpu0, faults1 - faults0, len(trainer.train_set)))
    return runs


def report_trainer(args, runs: dict, tag: str) -> None:
    load = load_average()
    frames = runs[1][0][3]
    print(f"\n## Trainer, {args.epochs} epochs of {frames} frames per batch size (alternating, {args.workers} loader "
          f"worker(s)), "
          f"load average {load}")
    rate = {}
    for b, epochs in runs.items():
        seconds = sum(e[0] for e in epochs)
        cpu = sum(e[1] for e in epochs)
        faults = sum(e[2] for e in epochs)
        samples = sum(e[3] for e in epochs)
        rate[b] = samples / seconds
        per_epoch = " ".join(f"{e[3] / e[0]:.2f}" for e in epochs)
        print(f"batch {b}: {rate[b]:.2f} samples/s wall (epochs: {per_epoch}), {samples / cpu:.2f} samples per CPU "
              f"second (process + loader worker), {faults / samples:.0f} minor page faults per sample")
        emit(figure("train_step", f"{args.config} Trainer batch {b} ({tag} malloc)", rate[b], "samples/s", load=load,
                    samples_per_cpu_s=samples / cpu, faults_per_sample=faults / samples))
    print(f"batch 2 / batch 1 samples/s: wall {rate[2] / rate[1]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
