"""Feature KD baseline (FitNet, METHOD.md section 6): weight * mean (adapter(F_S) - F_T)^2 on BEV features.

F_S / F_T: the BEV backbone outputs (HeadOutput.bev_features) of the student and of the teacher's dense part.
The adapter is a trainable 1x1 conv from the student's to the teacher's width (this term is an nn.Module, so
DetectionTask optimises and checkpoints it). A student map of another size is resized bilinearly to the
teacher's before the loss. Gradients reach the adapter and the student, never the teacher.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.distill.distill_config import FeatureKDConfig
from training.distill.teacher import TeacherRunner
from training.task import LossContext


class FeatureKDLoss(nn.Module):
    name = "feature_kd"

    def __init__(self, cfg: FeatureKDConfig, runner: TeacherRunner, student_channels: int, teacher_channels: int):
        super().__init__()
        self.cfg = cfg
        self.runner = runner  # a plain object: the teacher inside is not registered
        self.adapter = nn.Conv2d(student_channels, teacher_channels, 1)

    def feature_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        adapted = self.adapter(student.to(self.adapter.weight.dtype))
        if adapted.shape[-2:] != teacher.shape[-2:]:
            adapted = F.interpolate(adapted, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
        if adapted.shape != teacher.shape:
            raise ValueError(f"feature_kd: adapted student features {tuple(adapted.shape)} vs teacher "
                             f"{tuple(teacher.shape)}")
        return self.cfg.weight * F.mse_loss(adapted.float(), teacher.float().detach())

    def forward(self, ctx: LossContext) -> torch.Tensor:
        teacher = self.runner.dense_output(ctx.batch).bev_features
        return self.feature_loss(ctx.output.bev_features, teacher)


__all__ = ["FeatureKDLoss"]
