"""The one-stage students' training stages (METHOD.md section 4, order of stages):

  student_baseline  the full-width student without KD, from random weights (importance is scored on it)
  student_cakd      optional row (student.kd_row): the full-width student with distill.method, from its weights
  finetune          the pruned student with distill.method from its inherited weights (+ the IoU branch when
                    iou_refine.joint)
  iou_refine        optional (iou_refine.epochs > 0): the IoU branch added to the fine-tuned student and trained
  baseline_<name>   a comparison student (BaselineConfig)
"""
from __future__ import annotations

import shutil
from pathlib import Path

from clean_ros.yaml_config import ConfigError, load_config, to_dict
from training.compression.compress_config import BaselineConfig
from training.compression.run_context import CompressRun
from training.compression.stage_store import StageSkipped
from training.compression.stored_models import load_model, with_iou_branch
from training.compression.training_run import train_student


def student_baseline(run: CompressRun, folder: Path) -> dict:
    return train_student(run, folder, run.cfg.student.epochs, [])


def student_cakd(run: CompressRun, folder: Path) -> dict:
    _, _, trained = load_model(run.stage_dir("student_baseline"))
    return train_student(run, folder, run.cfg.student.epochs, [], distill_cfg=run.cfg.distill,
                         init_state=trained.state_dict(), init_from="student_baseline")


def finetune(run: CompressRun, folder: Path) -> dict:
    c = run.cfg
    _, pruned_cfg, pruned = load_model(run.stage_dir("prune"))
    joint = c.iou_refine.joint
    model_cfg = with_iou_branch(pruned_cfg, c.iou_refine.gate) if joint else pruned_cfg
    return train_student(run, folder, c.finetune.epochs, [*c.finetune.set, *(c.iou_refine.set if joint else [])],
                         distill_cfg=c.distill, model_cfg=model_cfg, init_state=pruned.state_dict(),
                         strict=not joint, init_from="prune")


def iou_refine(run: CompressRun, folder: Path) -> dict:
    c = run.cfg
    _, cfg, model = load_model(run.stage_dir("finetune"))
    return train_student(run, folder, c.iou_refine.epochs, c.iou_refine.set, distill_cfg=c.distill,
                         model_cfg=with_iou_branch(cfg, c.iou_refine.gate), init_state=model.state_dict(),
                         strict=False, init_from="finetune")


def baseline(run: CompressRun, folder: Path, spec: BaselineConfig, epochs: int) -> dict:
    """Comparison student `spec`, trained for `epochs` (the graph's baseline_epochs). A method that refuses its
    teacher / student pairing skips the stage with the reason."""
    from training.distill.distill_config import DistillConfig

    c = run.cfg
    try:
        distill_cfg = load_config(DistillConfig, data={**to_dict(c.distill), "method": spec.method},
                                  overrides=spec.distill)
    except ConfigError as exc:
        raise ConfigError(f"baselines[{spec.name}].distill: {exc}") from None
    model_cfg, init_state = None, None
    if spec.architecture == "pruned":
        _, model_cfg, pruned = load_model(run.stage_dir("prune"))
        if spec.init == "pruned":  # the final student's start: inherited weights
            init_state = pruned.state_dict()
    if spec.iou_gate:
        if model_cfg is None:
            model_cfg = run.train_config(c.student.config, 1, list(c.student.set)).model
        model_cfg = with_iou_branch(model_cfg, c.iou_refine.gate)
    try:
        return train_student(run, folder, epochs, [], distill_cfg=distill_cfg, model_cfg=model_cfg,
                             init_state=init_state, teacher_stage=spec.teacher, init_from="prune",
                             strict=not spec.iou_gate)
    except (ValueError, ConfigError) as exc:  # the method refuses this teacher / student pairing
        shutil.rmtree(folder / "train", ignore_errors=True)
        first = str(exc).strip().splitlines()[0]
        raise StageSkipped(f"{spec.method} with teacher {spec.teacher!r}: {first}") from None


__all__ = ["student_baseline", "student_cakd", "finetune", "iou_refine", "baseline"]
