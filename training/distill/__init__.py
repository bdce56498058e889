"""Knowledge distillation for the one-stage students (issue 6, distillation half). See docs/DISTILL.md.

Each method is a small module that plugs into training.task.DetectionTask as a LossTerm or a TargetHook:

    parts = build_distillation(distill_cfg, teacher, student)      # teacher: TwoStageDetector or Detector
    task = DetectionTask(student_cfg, student, loss_terms=parts.loss_terms, target_hooks=parts.target_hooks,
                         extra_voxelizers=parts.voxelizers)

All methods of one task share one TeacherRunner (the teacher runs at most once per step). The teacher reads its
own voxelisation of the raw points (parts.voxelizers -> Batch.extra_voxels), never the student's voxels.
"""
from __future__ import annotations

from typing import NamedTuple

from torch import nn

from clean_ros.models.detector import Detector
from training.distill.cakd import CaKDLoss
from training.distill.distill_config import (METHODS, CaKDConfig, DistillConfig, FeatureKDConfig, LabelAssignConfig,
                                             LogitKDConfig, PointDistillerConfig, SparseKDConfig)
from training.distill.feature_kd import FeatureKDLoss
from training.distill.label_assign import LabelAssignHook
from training.distill.logit_kd import LogitKDLoss
from training.distill.pointdistiller import PointDistillerLoss
from training.distill.sparsekd import LabelKDHook, SparseKDLoss
from training.distill.teacher import TEACHER_VOXELS, TeacherRunner, teacher_voxelizer
from training.distill.teacher_init import teacher_guided_init


class DistillParts(NamedTuple):
    loss_terms: list
    target_hooks: list
    runner: TeacherRunner | None
    voxelizers: dict = {}  # name -> Voxelizer for Batch.extra_voxels (the teacher's own input)


def same_voxel_grid(a, b) -> bool:
    """Whether two detector configs put a point into the same voxel (range and voxel size)."""
    def key(c):
        return [float(x) for x in c.point_cloud_range], [float(x) for x in c.voxel_size], c.num_point_features
    return key(a) == key(b)


def check_pairing(method: str, student: Detector, dense_teacher: Detector) -> None:
    """Refuse, before training starts, a teacher / student pair the method cannot distil (ValueError)."""
    s_head, t_head = student.cfg.head.type, dense_teacher.cfg.head.type
    if method in ("logit_kd", "sparsekd") and (s_head != t_head or student.grid != dense_teacher.grid):
        raise ValueError(f"{method} needs the teacher's dense head in the student's position layout: student "
                         f"{s_head} head on {student.grid}, teacher {t_head} head on {dense_teacher.grid}")
    if method in ("cakd", "clean"):
        if t_head != "anchor":
            raise ValueError("cakd needs a teacher whose first stage is an anchor head")
        if s_head == "anchor" and student.grid.positions_per_cell != dense_teacher.grid.positions_per_cell:
            raise ValueError(f"cakd: {student.grid.positions_per_cell} anchors per cell in the student, "
                             f"{dense_teacher.grid.positions_per_cell} in the teacher: the anchor layouts must match")
    if method == "pointdistiller" and not same_voxel_grid(dense_teacher.cfg, student.cfg):
        raise ValueError("pointdistiller pairs the teacher's and the student's encoder outputs voxel by voxel: both "
                         "must voxelise alike on one voxel grid (range, voxel size)")


def build_distillation(cfg: DistillConfig, teacher: nn.Module | None, student: Detector) -> DistillParts:
    """Loss terms, target hooks and the teacher's own voxelizer for cfg.method and this student (applies
    teacher-guided init when cfg.sparsekd.teacher_init is set). The task must be built with parts.voxelizers so
    that every batch carries the teacher's own voxelisation of the raw points."""
    if cfg.method == "none":
        return DistillParts([], [], None)
    if teacher is None:
        raise ValueError(f"distill.method={cfg.method!r} needs a teacher")
    dense_cfg = getattr(teacher, "rpn", teacher).cfg
    check_pairing(cfg.method, student, getattr(teacher, "rpn", teacher))
    runner = TeacherRunner(teacher, bn_train=cfg.teacher_bn_train)
    terms, hooks = [], []
    if cfg.uses_label_assign:
        if len(cfg.label_assign.thresholds) != student.cfg.num_classes:
            raise ValueError(f"distill.label_assign.thresholds needs {student.cfg.num_classes} values (one per class "
                             f"{list(student.cfg.class_names)}), got {cfg.label_assign.thresholds}")
        hooks.append(LabelAssignHook(cfg.label_assign, runner))
    if cfg.uses_cakd:
        if not runner.is_two_stage:
            raise ValueError("distill.method=cakd/clean needs a two-stage teacher (roi_forward)")
        terms.append(CaKDLoss(cfg.cakd, runner, student.cfg.head))
    if cfg.method == "logit_kd":
        terms.append(LogitKDLoss(cfg.logit_kd, runner))
    elif cfg.method == "feature_kd":
        terms.append(FeatureKDLoss(cfg.feature_kd, runner, student.bev_backbone.out_channels,
                                   runner.dense.bev_backbone.out_channels))
    elif cfg.method == "sparsekd":
        terms.append(SparseKDLoss(cfg.sparsekd, runner))
        if cfg.sparsekd.label_kd:
            hooks.append(LabelKDHook(cfg.sparsekd, runner))
        if cfg.sparsekd.teacher_init:
            teacher_guided_init(student, teacher)
    elif cfg.method == "pointdistiller":
        terms.append(PointDistillerLoss(cfg.pointdistiller, runner, student))
    return DistillParts(terms, hooks, runner, {TEACHER_VOXELS: teacher_voxelizer(dense_cfg)})


__all__ = ["build_distillation", "DistillParts", "DistillConfig", "CaKDConfig", "LabelAssignConfig",
           "LogitKDConfig", "FeatureKDConfig", "SparseKDConfig", "PointDistillerConfig", "METHODS",
           "TeacherRunner", "CaKDLoss", "LabelAssignHook", "LogitKDLoss", "FeatureKDLoss", "SparseKDLoss",
           "LabelKDHook", "PointDistillerLoss", "teacher_guided_init"]
