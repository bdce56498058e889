"""How a training stage trains: the project's Trainer in-process, in the stage's train/ folder (resumed from its
checkpoint when there is one), with a task carrying the stage's loss terms and target hooks
(training.distill.build_distillation)."""
from __future__ import annotations

import shutil
from pathlib import Path

from clean_ros.models.detector_config import DetectorConfig
from clean_ros.yaml_config import ConfigError
from training.compression.report_rows import epoch_diagnostics, read_last_losses
from training.compression.run_context import CompressRun
from training.compression.stored_models import load_model, save_model


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM during a training stage: the trainer saved a checkpoint; re-running resumes."""


def fit(run: CompressRun, folder: Path, train_cfg, task) -> dict:
    """Run the Trainer for a stage (resuming its checkpoint when there is one); returns a summary."""
    from clean_ros.yaml_config import dump_yaml
    from training import checkpoint as ckpt_io
    from training.distributed import DistContext
    from training.run_dir import RunDir
    from training.trainer import Trainer, seed_everything

    run_root = folder / "train"
    last = run_root / "checkpoints" / ckpt_io.LAST_NAME
    resume = ckpt_io.load_checkpoint(last) if last.is_file() else None
    if resume is not None:
        run.log(f"    resuming the trainer from {last} (epoch {resume['epoch']}, iteration "
                f"{resume['iteration']})")
    seed_everything(train_cfg.seed, train_cfg.deterministic)
    ctx = run.ctx
    train_set = run.datasets.train_set(train_cfg, ctx)
    run_dir = RunDir(run_root, enabled=ctx.is_main, tensorboard=run.cfg.training.tensorboard)
    run_dir.save_config(train_cfg)
    ctx = DistContext(rank=ctx.rank, local_rank=ctx.local_rank, world_size=ctx.world_size, device=run.device)
    try:
        trainer = Trainer(train_cfg, task, train_set, None, run_dir, ctx, progress=run.progress,
                          resume=resume, config_yaml=dump_yaml(train_cfg))
    except (RuntimeError, KeyError, ckpt_io.CheckpointError) as exc:
        if resume is None:
            raise
        first = str(exc).strip().splitlines()[0]
        run.log(f"    cannot resume from {last} ({first}): starting the stage's training afresh")
        run_dir.close()
        ctx.barrier()  # every rank has read the checkpoint before rank 0 removes it
        if ctx.is_main:
            shutil.rmtree(run_root)
        ctx.barrier()
        return fit(run, folder, train_cfg, task)
    result = trainer.fit()
    run_dir.close()
    ctx.barrier()  # rank 0 may still be writing the last checkpoint
    if result.status != "finished":
        raise TrainingInterrupted(f"training interrupted ({trainer.stop.reason or 'stopped'}); checkpoint "
                                  f"{result.checkpoint}")
    losses = read_last_losses(run_root / "epochs.csv")
    return {"frames": len(train_set), "epochs": train_cfg.epochs, "steps": result.global_step,
            "train_seconds": round(result.seconds, 1), "final_losses": losses,
            "per_epoch": epoch_diagnostics(run_root / "epochs.csv")}


def distill_parts(run: CompressRun, distill_cfg, student, teacher_stage: str = "teacher"):
    """The loss terms, target hooks and extra voxelisers of distill_cfg's method, taught by the model of stage
    `teacher_stage`."""
    from training.distill import build_distillation

    _, _, teacher = load_model(run.stage_dir(teacher_stage))
    try:
        return build_distillation(distill_cfg, teacher, student)
    except ValueError as exc:
        raise ConfigError(f"distill: {exc}") from None


def train_student(run: CompressRun, folder: Path, epochs: int, stage_set: list[str], distill_cfg=None,
                  model_cfg: DetectorConfig | None = None, init_state: dict | None = None,
                  strict: bool = True, kind_extra: dict | None = None, teacher_stage: str = "teacher",
                  init_from: str = "random") -> dict:
    """Train a one-stage student; init_state (the weights of stage `init_from`) replaces the random init."""
    from clean_ros.models.detector import build_detector
    from clean_ros.models.flops import count_parameters
    from training.task import DetectionTask
    from training.trainer import seed_everything

    train_cfg = run.train_config(run.cfg.student.config, epochs, [*run.cfg.student.set, *stage_set],
                                 model_cfg=model_cfg)
    seed_everything(train_cfg.seed, train_cfg.deterministic)  # the init must not depend on earlier stages
    student = build_detector(train_cfg.model)
    if init_state is not None:
        missing, unexpected = student.load_state_dict(init_state, strict=strict)
        if unexpected or any("iou" not in name for name in missing):
            raise RuntimeError(f"inherited weights do not fit: missing {missing}, unexpected {unexpected}")
    terms, hooks, voxelizers = [], [], {}
    if distill_cfg is not None and distill_cfg.method != "none":
        parts = distill_parts(run, distill_cfg, student, teacher_stage)
        terms, hooks, voxelizers = parts.loss_terms, parts.target_hooks, parts.voxelizers
    task = DetectionTask(train_cfg.model, student, loss_terms=terms, target_hooks=hooks,
                         extra_voxelizers=voxelizers)
    summary = fit(run, folder, train_cfg, task)
    if run.ctx.is_main:  # every rank holds the same weights after DDP training
        save_model(folder, task.model, train_cfg.model, "detector", kind_extra)
    summary["params"] = count_parameters(task.model)
    summary["initial_weights"] = init_from if init_state is not None else "random"
    return summary


__all__ = ["TrainingInterrupted", "fit", "distill_parts", "train_student"]
