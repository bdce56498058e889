"""Vanilla logit KD baseline (METHOD.md section 6): every position, student vs teacher dense-head logits.

mse: mean (sigmoid(z_S / T) - sigmoid(z_T / T))^2; kl: mean per-class Bernoulli KL(teacher || student) of the
tempered probabilities, times T^2 (so gradients keep their scale across temperatures). The teacher's dense head
(the RPN of a two-stage teacher) must have the student's position layout (same grid, anchors per cell, classes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clean_ros.models.detector import HeadOutput
from training.distill.distill_config import LogitKDConfig
from training.distill.teacher import TeacherRunner
from training.task import LossContext


def check_same_layout(student: HeadOutput, teacher: HeadOutput, method: str) -> None:
    if student.cls_logits.shape != teacher.cls_logits.shape or student.head_type != teacher.head_type:
        raise ValueError(f"{method} needs the teacher's dense head in the student's position layout: student "
                         f"{student.head_type} {tuple(student.cls_logits.shape)}, teacher {teacher.head_type} "
                         f"{tuple(teacher.cls_logits.shape)} (B, positions, classes)")


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mode: str = "mse",
                  temperature: float = 1.0) -> torch.Tensor:
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    if mode == "mse":
        return ((torch.sigmoid(s) - torch.sigmoid(t)) ** 2).mean()
    if mode == "kl":
        p_t = torch.sigmoid(t)
        # KL(Bern(p_t) || Bern(p_s)) = BCE(s, p_t) - H(p_t): zero when the logits agree.
        kl = (F.binary_cross_entropy_with_logits(s, p_t, reduction="none")
              - F.binary_cross_entropy_with_logits(t, p_t, reduction="none"))
        return kl.mean() * temperature ** 2
    raise ValueError(f"logit_kd.mode must be 'mse' or 'kl', got {mode!r}")


class LogitKDLoss:
    """LossTerm 'logit_kd' (no trainable parameters)."""

    name = "logit_kd"

    def __init__(self, cfg: LogitKDConfig, runner: TeacherRunner):
        self.cfg, self.runner = cfg, runner

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        teacher = self.runner.dense_output(ctx.batch)
        check_same_layout(ctx.output, teacher, "logit_kd")
        return self.cfg.weight * logit_kd_loss(ctx.output.cls_logits, teacher.cls_logits, self.cfg.mode,
                                               self.cfg.temperature)


__all__ = ["LogitKDLoss", "logit_kd_loss", "check_same_layout"]
