#!/usr/bin/env python3
"""The CLEAN compression pipeline: teacher -> distilled student -> pruned -> fine-tuned -> IoU gate -> bundle.

    python training/compress.py [--config config/compress/default.yaml] [--set key.path=value ...]
                                [--out runs/NAME] [--force STAGE|all] [--until STAGE] [--list-stages]
                                [--plan [--plan-iterations N]]
    make compress                       # the embedded default (config/compress/default.yaml), simulated data

Stages (resumable; each writes runs/NAME/stages/<stage>/ and a done-marker keyed by its config hash; a re-run
skips finished stages whose config is unchanged, a killed stage restarts, training stages from their last
checkpoint): data, teacher, student_baseline, student_cakd, importance, prune, finetune, iou_refine,
baseline_<name>..., evaluate, efficiency, export, report. Outputs: runs/NAME/{config.yaml, compress.log,
report.md, report.json, plots/*.png, bundle/}. See docs/COMPRESS.md. --until STAGE stops after that stage (the
stages listed before it, then it): e.g. only the trained students of a comparison, resumable later without it.

Mistakes in the config or paths: one line `error: ...`, exit status 2. Ctrl-C: the running training step finishes
and a checkpoint is saved (exit 130); run the same command again to continue.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clean_ros.yaml_config import ConfigError, add_override_argument  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "config" / "compress" / "default.yaml"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A mistake in the command line or its inputs: one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Compress a LiDAR detector (CLEAN): teacher, distilled and pruned "
                                             "students, IoU gate, evaluation, efficiency, bundle, report.")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"compression YAML (default {DEFAULT_CONFIG.relative_to(REPO)})")
    add_override_argument(ap)
    ap.add_argument("--out", type=Path, help="run folder (default runs/<name>); an existing one is resumed")
    ap.add_argument("--force", action="append", default=[], metavar="STAGE|all",
                    help="re-run this stage (and so everything that depends on it) even if it is done; repeatable")
    ap.add_argument("--until", metavar="STAGE",
                    help="run the stages up to this one (in --list-stages order) and stop; the rest can follow "
                         "later by the same command without --until")
    ap.add_argument("--list-stages", action="store_true", help="print the stages of this config and exit")
    ap.add_argument("--plan", action="store_true",
                    help="check the dataset and config, print frames, objects, models, stages and a time estimate, "
                         "and exit without running or writing anything (training/compression/plan.py)")
    ap.add_argument("--plan-iterations", type=int, default=2, metavar="N",
                    help="--plan: training steps timed per model after one warm-up (0 = no timing); default 2")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (also off when not a TTY)")
    return ap


def load(args):
    from clean_ros.yaml_config import load_config
    from training.compression.compress_config import CompressConfig

    if not args.config.is_file():
        raise UsageError(f"{args.config}: config file not found")
    cfg = load_config(CompressConfig, args.config, args.overrides)
    for label, path in (("teacher.config", cfg.teacher.config), ("student.config", cfg.student.config)):
        if not _resolve(path).is_file():
            raise UsageError(f"{label} {path}: file not found")
    cfg.teacher.config = str(_resolve(cfg.teacher.config))
    cfg.student.config = str(_resolve(cfg.student.config))
    if cfg.teacher.checkpoint:
        from training.teacher_package import TeacherPackageError, is_teacher_package, read_manifest

        checkpoint = _resolve(cfg.teacher.checkpoint)
        if checkpoint.is_dir():
            if not is_teacher_package(checkpoint):
                raise UsageError(f"teacher.checkpoint {cfg.teacher.checkpoint}: a folder without manifest.json, not a "
                                 "teacher folder (training/ship_teacher.py writes one)")
            try:
                read_manifest(checkpoint)
            except TeacherPackageError as exc:
                raise UsageError(f"teacher.checkpoint: {exc}") from None
        elif not checkpoint.is_file():
            raise UsageError(f"teacher.checkpoint {cfg.teacher.checkpoint}: file not found")
        cfg.teacher.checkpoint = str(checkpoint)
    if cfg.data.source == "kitti" and not Path(cfg.data.root).is_dir():
        raise UsageError(f"data.root {cfg.data.root}: dataset folder not found (expected the KITTI object layout "
                         f"<root>/training/{{velodyne,label_2,calib}}, <root>/ImageSets/)")
    return cfg


def _resolve(path: str) -> Path:
    """Config paths are relative to the working directory, else to the repository root."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else REPO / p


def _lock_run_folder(root: Path):
    """One compress.py per run folder: a second one would interleave stage outputs."""
    import fcntl

    handle = (root / ".lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UsageError(f"{root}: another training/compress.py is already running on this run folder") from None
    return handle


def _check_stage_configs(cfg, run) -> None:
    """Load every training config once up front, so that a bad override fails before hours of work."""
    run.train_config(cfg.teacher.config, cfg.teacher.epochs, cfg.teacher.set)
    run.train_config(cfg.student.config, cfg.student.epochs, cfg.student.set)
    run.train_config(cfg.student.config, cfg.finetune.epochs, [*cfg.student.set, *cfg.finetune.set])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (UsageError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _main(args) -> int:
    cfg = load(args)
    from training.compression.ranks import RanksDisagree, start_ranks
    from training.distributed import cleanup_distributed

    try:
        ctx = start_ranks(cfg, cfg.training.device)
    except RanksDisagree as exc:
        raise UsageError(str(exc)) from None
    try:
        return _run(args, cfg, ctx)
    finally:
        cleanup_distributed()


def _run(args, cfg, ctx) -> int:
    """The run on this process: every stage in order; under torchrun rank 0 alone writes the run folder's files."""
    import torch

    from clean_ros.yaml_config import save_yaml
    from training.compression.stage_store import StageStore, fmt_seconds
    from training.compression.graph import CompressionGraph
    from training.compression.training_run import TrainingInterrupted
    from training.run_dir import setup_logging

    root = args.out or Path("runs") / cfg.name
    progress = not args.no_progress and sys.stderr.isatty() and ctx.is_main
    graph = CompressionGraph(cfg, root, log=print, progress=progress, ctx=ctx)
    stages = graph.stages()
    names = [s.name for s in stages]
    if args.list_stages:
        if ctx.is_main:
            print("\n".join(names))
        return 0
    unknown = [f for f in args.force if f != "all" and f not in names]
    if unknown:
        raise UsageError(f"--force {unknown[0]}: no such stage; stages: {', '.join(names)}, or all")
    if args.until is not None:
        if args.until not in names:
            raise UsageError(f"--until {args.until}: no such stage; stages: {', '.join(names)}")
        stages = stages[:names.index(args.until) + 1]  # in dependency order: a prefix has all it needs
    _check_stage_configs(cfg, graph.run)
    if args.plan:
        from training.compression.plan import make_plan

        plan = make_plan(cfg, graph, max(0, args.plan_iterations))  # every rank checks and times its own device
        if ctx.is_main:
            print(plan.to_text())
        return 0

    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        lock = _lock_run_folder(root)  # noqa: F841  (held until the process exits)
    logger = setup_logging(root / "compress.log" if ctx.is_main else None, ctx.is_main)
    graph.run.log = logger.info
    torch.set_num_threads(cfg.training.threads)
    store = StageStore(root, log=logger.info, ctx=ctx)
    if ctx.is_main:
        save_yaml(cfg, root / "config.yaml")
        store.force(names if "all" in args.force else args.force)
    ranks = f", {ctx.world_size} ranks (torchrun)" if ctx.distributed else ""
    logger.info(f"compress {cfg.name}: {len(stages)} stages, run folder {root}, config {args.config} "
                f"(resolved: {root / 'config.yaml'}), {cfg.training.threads} torch thread(s){ranks}")
    ctx.barrier()  # rank 0 has prepared the run folder
    try:
        store.run_all(stages)
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        logger.warning(f"interrupted ({exc or 'Ctrl-C'}); run the same command again to continue where it stopped")
        return EXIT_INTERRUPTED
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    total = sum(store.seconds.values())
    if args.until is not None and args.until != names[-1]:
        logger.info(f"stopped after {args.until} (--until) in {fmt_seconds(store.elapsed())} (stage time "
                    f"{fmt_seconds(total)}); the same command without --until runs the rest")
        return 0
    logger.info(f"done in {fmt_seconds(store.elapsed())} (stage time {fmt_seconds(total)}): {root / 'report.md'}")
    report = root / "report.md"
    if ctx.is_main and report.is_file():
        print(report.read_text())
    return 0


if __name__ == "__main__":
    from training.distributed import exit_process

    exit_process(main())
