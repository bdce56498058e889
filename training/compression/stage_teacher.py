"""Stage `teacher`: the two-stage teacher, loaded from a teacher folder (models/teacher, training/ship_teacher.py)
or a checkpoint, or trained with TeacherTask for teacher.epochs."""
from __future__ import annotations

from pathlib import Path

from clean_ros.yaml_config import ConfigError
from training.compression.compress_config import TeacherSection
from training.compression.run_context import CompressRun
from training.compression.stored_models import save_model
from training.compression.training_run import fit
from training.teacher_package import TeacherPackageError, is_teacher_package, load_teacher_package, read_manifest


def teacher(run: CompressRun, folder: Path) -> dict:
    from clean_ros.models.flops import count_parameters
    from training.teacher_task import build_task
    from training.trainer import seed_everything

    t = run.cfg.teacher
    if t.checkpoint and is_teacher_package(t.checkpoint):  # a shipped teacher: its own config and weights
        try:
            cfg, model, manifest = load_teacher_package(t.checkpoint)
        except TeacherPackageError as exc:
            raise ConfigError(f"teacher.checkpoint: {exc}") from None
        save_model(folder, model, cfg, "two_stage")
        return {"loaded": t.checkpoint, "params": manifest["params"],
                "teacher_metrics": manifest.get("metrics", {})}
    train_cfg = run.train_config(t.config, t.epochs, t.set)
    if train_cfg.two_stage is None:
        raise ConfigError(f"teacher.config {t.config}: needs a two_stage section (a two-stage teacher)")
    seed_everything(train_cfg.seed, train_cfg.deterministic)  # the init must not depend on earlier stages
    task = build_task(train_cfg)
    if t.checkpoint:
        from training.checkpoint import CheckpointError, load_model_weights

        try:
            task.model.load_state_dict(load_model_weights(t.checkpoint))
        except (CheckpointError, RuntimeError) as exc:
            raise ConfigError(f"teacher.checkpoint {t.checkpoint}: {str(exc).splitlines()[0]}") from None
        summary = {"loaded": t.checkpoint}
    else:
        summary = fit(run, folder, train_cfg, task)
    if run.ctx.is_main:  # trained data-parallel: every rank holds the same weights
        save_model(folder, task.model, train_cfg.two_stage, "two_stage")
    summary["params"] = count_parameters(task.model)
    return summary


def teacher_fingerprint(section: TeacherSection) -> str:
    """The teacher folder's weights and config hashes (a new teacher in the same folder re-runs the stage), else ""."""
    path = section.checkpoint
    if path and is_teacher_package(path):
        try:
            files = read_manifest(path)["files"]
            return f"{files['weights.safetensors']['sha256']}:{files['teacher.yaml']['sha256']}"
        except (TeacherPackageError, KeyError, TypeError):
            return "unreadable"  # the stage itself reports what is wrong
    return ""


def teacher_identity(section: TeacherSection) -> dict:
    """What the teacher stage's hash covers: a teacher folder by the sha256 of its weights and config, not by its
    path (a moved checkout or another clone must not re-run every stage); anything else by the whole section."""
    fingerprint = teacher_fingerprint(section)
    if fingerprint:
        return {"teacher": "<teacher folder>", "weights": fingerprint}
    return {"teacher": section, "weights": ""}


__all__ = ["teacher", "teacher_fingerprint", "teacher_identity"]
