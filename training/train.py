#!/usr/bin/env python3
"""Train a detector from one YAML config.

    python training/train.py --config config/train/pointpillars_tiny.yaml [--set key.path=value ...] [--out runs/NAME]
    python training/train.py --resume runs/NAME            # or a checkpoint file; continues exactly
    torchrun --nproc_per_node=N training/train.py --config ...   # DDP (nccl on GPU, gloo on CPU)

Ctrl-C / SIGTERM: the current step finishes, a checkpoint is written and the command to resume is printed.
User errors (missing file, unknown key, bad value, missing dataset, nothing to resume) exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clean_ros.yaml_config import ConfigError, add_override_argument, dump_yaml, load_config  # noqa: E402
from clean_ros.cloud.kitti import KittiFormatError  # noqa: E402
from training.checkpoint import CheckpointError  # noqa: E402

EXIT_USAGE = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

# What may change when resuming (everything else would change the run's trajectory).
RESUME_OVERRIDABLE = {"max_iterations", "workers", "eval_interval", "eval_max_frames", "eval_batch_size",
                      "log_interval", "log_grad_norms", "grad_norm_interval", "checkpoint_interval",
                      "keep_checkpoints", "data.root"}


class UsageError(Exception):
    """A mistake in the command line or its inputs: reported as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Train a clean_ros detector (single process, or DDP under torchrun).")
    ap.add_argument("--config", type=Path, help="training YAML (see config/train/)")
    add_override_argument(ap)
    ap.add_argument("--resume", type=Path, metavar="RUN_DIR_OR_CKPT",
                    help="continue a run: its folder (uses checkpoints/last.pt) or a checkpoint file")
    ap.add_argument("--out", type=Path, help="run folder (default runs/<name>, or the resumed run's folder)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (also off when not a TTY)")
    ap.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard event files")
    return ap


def _check_resume_overrides(overrides: list[str]) -> None:
    for text in overrides:
        key = text.partition("=")[0].strip()
        if key not in RESUME_OVERRIDABLE:
            raise UsageError(f"--set {key}: cannot be changed when resuming (it would change the run); "
                             f"allowed: {', '.join(sorted(RESUME_OVERRIDABLE))}")


def _default_run_dir(name: str) -> Path:
    base = Path("runs") / name
    candidate, n = base, 1
    while (candidate / "checkpoints").exists():
        n += 1
        candidate = base.with_name(f"{base.name}_{n}")
    return candidate


def _run_dir_of_checkpoint(path: Path) -> Path:
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (UsageError, ConfigError, KittiFormatError, CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("aborted (second Ctrl-C): no checkpoint written for the current step", file=sys.stderr)
        return EXIT_SIGINT


def _main(args) -> int:
    import torch  # noqa: F401  (heavy imports after argument parsing)

    from training import checkpoint as ckpt_io
    from training.train_config import TrainConfig, load_train_config
    from training.data.augment import Augmentor
    from training.data.gt_database import GTDatabaseError, build_gt_database, label_source_tag
    from training.data.kitti_dataset import KittiDataset
    from training.distributed import cleanup_distributed, init_distributed
    from training.run_dir import RunDir, setup_logging
    from training.teacher_task import build_task
    from training.trainer import Trainer, seed_everything

    # ---- configuration (fails fast, before any process group or folder exists)
    resume = None
    if True:
        if args.resume is not None:
            if args.config is not None:
                raise UsageError("give either --config (new run) or --resume (continue a run), not both")
            _check_resume_overrides(args.overrides)
            ckpt_path = ckpt_io.resolve_resume_path(args.resume)
            resume = ckpt_io.load_checkpoint(ckpt_path)
            import yaml

            raw = yaml.safe_load(resume["config"]) or {}
            cfg = load_config(TrainConfig, data=raw, overrides=args.overrides)
            run_root = args.out or _run_dir_of_checkpoint(ckpt_path)
        else:
            if args.config is None:
                raise UsageError("--config is required (or --resume RUN_DIR to continue a run)")
            cfg = load_train_config(args.config, args.overrides)
            run_root = args.out or _default_run_dir(cfg.name)
            if args.out is not None and (args.out / "checkpoints" / ckpt_io.LAST_NAME).exists():
                raise UsageError(f"{args.out} already holds a run; continue it with --resume {args.out} "
                                 f"or choose another --out")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device available")
        data_root = Path(cfg.data.root)
        if not data_root.is_dir():
            raise UsageError(f"data.root {data_root}: dataset folder not found (expected the KITTI object layout "
                             f"<root>/training/{{velodyne,label_2,calib}}, <root>/ImageSets/); "
                             f"set it with --set data.root=PATH")

    ctx = init_distributed(args.device)
    try:
        logger = setup_logging(Path(run_root) / "train.log" if ctx.is_main else None, ctx.is_main)
        if cfg.threads > 0:
            import torch

            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed, cfg.deterministic)
        try:
            if not cfg.augment.gt_sampling_config.database_path:  # default: next to the data, per split
                cfg.augment.gt_sampling_config.database_path = str(
                    Path(cfg.data.root) / f"gt_database_{cfg.data.train_split}{label_source_tag(cfg.data)}.npz")
            gt_db = Path(cfg.augment.gt_sampling_config.database_path)
            if cfg.augment.gt_sampling and not gt_db.is_file():
                if ctx.is_main:
                    logger.info(f"GT database {gt_db} not found: building it from split {cfg.data.train_split!r}")
                    build_gt_database(KittiDataset(cfg.data, cfg.data.train_split, training=False), gt_db)
                ctx.barrier()
            augmentor = Augmentor(cfg.augment, tuple(cfg.model.class_names))
            train_set = KittiDataset(cfg.data, cfg.data.train_split, training=True, augmentor=augmentor,
                                     seed=cfg.seed)
            val_set = KittiDataset(cfg.data, cfg.data.val_split, training=False) if cfg.eval_interval else None
        except GTDatabaseError as exc:
            raise UsageError(str(exc)) from None

        task = build_task(cfg)  # DetectionTask(cfg.model), or TeacherTask when cfg.two_stage is set
        if cfg.init_checkpoint and resume is None:
            try:
                task.model.load_state_dict(ckpt_io.load_model_weights(cfg.init_checkpoint))
            except ckpt_io.CheckpointError as exc:
                raise UsageError(f"init_checkpoint: {exc}") from None
            except RuntimeError as exc:
                raise UsageError(f"init_checkpoint {cfg.init_checkpoint}: weights do not fit the model: "
                                 f"{str(exc).splitlines()[0]}") from None

        run_dir = RunDir(run_root, enabled=ctx.is_main, tensorboard=not args.no_tensorboard)
        run_dir.save_config(cfg)
        progress = not args.no_progress and sys.stderr.isatty()
        trainer = Trainer(cfg, task, train_set, val_set, run_dir, ctx, progress=progress, resume=resume,
                          config_yaml=dump_yaml(cfg))
        result = trainer.fit()
        stop_reason = trainer.stop.reason
        del trainer  # its DDP wrapper holds gloo work: free it before the process group goes (cleanup_distributed)
        run_dir.close()
        ctx.barrier()  # leave together: rank 0 may still be writing the last checkpoint
        if result.status == "interrupted" and stop_reason:
            return EXIT_SIGTERM if stop_reason == "SIGTERM" else EXIT_SIGINT
        return 0
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    from training.distributed import exit_process

    exit_process(main())
