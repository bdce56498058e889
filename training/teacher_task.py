"""TeacherTask: trains the two-stage teacher through the ordinary Trainer (a DetectionTask subclass).

    task = TeacherTask(two_stage_cfg)            # builds TwoStageDetector; task.cfg is the RPN's DetectorConfig
    result = task(batch)                         # StepResult: RPN losses + "roi_iou" / "roi_box"
    detections = task.predict(batch)             # final (second-stage) detections

RPN losses are exactly the one-stage task's (same targets, same weights). Second stage: RoIs sampled from the RPN's
proposals (training.roi_targets), BCE of the IoU-quality logit against its soft target over every sampled RoI
(mean), smooth-L1 of the box residual over the RoIs with IoU > reg_fg_threshold (sum / their count). The proposals
carry no gradient; the RoI head's gradient reaches the shared BEV features. Target hooks edit the ground truth of
both stages; extra loss terms see the RPN output (LossContext.output) and the TwoStageDetector as `model`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from clean_ros.models.two_stage import TwoStageDetector
from clean_ros.models.two_stage_config import RoILossConfig, TwoStageConfig
from clean_ros.types import Detections
from training.data.sample import Batch
from training.losses import smooth_l1
from training.roi_targets import RoITargets, sample_rois
from training.task import DetectionTask, LossTerm, StepResult, TargetHook, add_loss_terms


def roi_losses(iou_logits: torch.Tensor, residuals: torch.Tensor, targets: RoITargets,
               cfg: RoILossConfig) -> dict[str, torch.Tensor]:
    """Weighted second-stage losses: {"roi_iou": BCE mean, "roi_box": smooth-L1 over regression RoIs}."""
    iou = F.binary_cross_entropy_with_logits(iou_logits.float(), targets.iou_targets, reduction="mean")
    weights = residuals.new_tensor(cfg.code_weights) if cfg.code_weights else residuals.new_ones(7)
    diff = residuals.float() - targets.box_targets
    per_roi = (smooth_l1(diff, cfg.smooth_l1_beta) * weights).sum(-1)
    mask = targets.reg_mask.to(per_roi.dtype)
    box = (per_roi * mask).sum() / mask.sum().clamp(min=1)
    return {"roi_iou": cfg.iou_weight * iou, "roi_box": cfg.box_weight * box}


class TeacherTask(DetectionTask):
    def __init__(self, cfg: TwoStageConfig, model: TwoStageDetector | None = None,
                 loss_terms: Sequence[LossTerm] = (), target_hooks: Sequence[TargetHook] = ()):
        super().__init__(cfg.rpn, model=model if model is not None else TwoStageDetector(cfg),
                         loss_terms=loss_terms, target_hooks=target_hooks)
        self.two_stage_cfg = cfg

    def forward(self, batch: Batch) -> StepResult:
        model: TwoStageDetector = self.model
        rpn_output, volume = model.rpn_forward(batch.voxels, batch.batch_size)
        ctx = self.loss_context(batch, rpn_output)  # RPN losses, exactly the one-stage task's
        parts = dict(ctx.detection.parts)
        proposals = model.propose(rpn_output)
        device = rpn_output.cls_logits.device
        roi_targets = sample_rois(proposals, ctx.gt_boxes.to(device), ctx.gt_labels.to(device).long(),
                                  self.two_stage_cfg.roi_head)
        iou_logits, residuals = model.second_stage(rpn_output, roi_targets.rois, volume)
        parts.update(roi_losses(iou_logits, residuals, roi_targets, self.two_stage_cfg.roi_head.loss))
        total = add_loss_terms(self.loss_terms, ctx, parts, sum(parts.values()))
        return StepResult(total, parts, rpn_output, ctx.targets)

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Detections]:
        """Final second-stage detections per frame (eval mode for the call)."""
        return self.model.predict(batch.voxels, batch.batch_size)

    @torch.no_grad()
    def predict_rpn(self, batch: Batch) -> list[Detections]:
        """The RPN's own detections (its one-stage post-processing), to compare the stages."""
        from clean_ros.inference.postprocess import postprocess

        model: TwoStageDetector = self.model
        was_training = model.training
        model.eval()
        try:
            rpn_output, _ = model.rpn_forward(batch.voxels, batch.batch_size)
            return postprocess(rpn_output.float32(), self.cfg)
        finally:
            model.train(was_training)


def build_task(train_cfg) -> DetectionTask:
    """The task a TrainConfig asks for: TeacherTask when `two_stage` is set, else DetectionTask(model)."""
    if getattr(train_cfg, "two_stage", None) is not None:
        return TeacherTask(train_cfg.two_stage)
    return DetectionTask(train_cfg.model)


__all__ = ["TeacherTask", "roi_losses", "build_task"]
