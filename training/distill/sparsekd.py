"""SparseKD baselines (METHOD.md section 6): pivotal-position logit KD (+ regression KD) and label KD.

Pivotal-position KD, student and teacher dense heads in the same position layout:
  m_p = 1[max_c T_{c,p} > theta] * max_c T_{c,p} * max_c G_{c,p}    (T = sigmoid(z^T), G = GT Gaussian heatmap)
  L_cls = w * sum_{p,c} (sigmoid(z^S_{p,c}) - T_{c,p})^2 m_p / sum_p m_p
  L_reg = w_reg * sum_p m_p * sum_k smoothL1(b^S_{p,k} - b^T_{p,k}) / sum_p m_p
Anchor heads: the pivotal positions are the positive anchors of the student's targets; anchor_mask
"positives" gives m = 1 there, "positives_x_teacher" the formula with G = 1[positive]. Sums run over the batch.

Label KD (a TargetHook): the teacher's dense-head peaks (center head: local maxima; anchor head: every anchor),
without NMS, with score > threshold, added to the GT: in front of it (label_kd_position "front", the reference's
order) or after it ("back"). Target assignment gives an anchor to the first of equally good boxes, so the order
decides which box (and heading) a tied anchor learns.
"""
from __future__ import annotations

import torch

from clean_ros.inference.postprocess import decode
from training.data.sample import Batch
from training.distill.distill_config import SparseKDConfig
from training.distill.label_assign import merge_ground_truth
from training.distill.logit_kd import check_same_layout
from training.distill.teacher import TeacherBoxes, TeacherRunner
from training.losses import smooth_l1
from training.targets import AnchorTargets, Targets
from training.task import LossContext


def pivotal_mask(teacher_logits: torch.Tensor, targets: Targets, cfg: SparseKDConfig) -> torch.Tensor:
    """(B, P) float mask m_p (no gradient)."""
    with torch.no_grad():
        teacher_max = torch.sigmoid(teacher_logits.float()).max(dim=-1).values
        confident = (teacher_max > cfg.teacher_threshold).float() * teacher_max
        if isinstance(targets, AnchorTargets):
            positives = (targets.labels > 0).float()
            return positives if cfg.anchor_mask == "positives" else confident * positives
        return confident * targets.heatmap.float().max(dim=-1).values


def pivotal_kd_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor, student_boxes: torch.Tensor,
                      teacher_boxes: torch.Tensor, mask: torch.Tensor, cfg: SparseKDConfig) -> dict[str, torch.Tensor]:
    norm = mask.sum().clamp(min=1e-6)
    diff = (torch.sigmoid(student_logits.float()) - torch.sigmoid(teacher_logits.float())) ** 2
    losses = {"cls": cfg.weight * (diff.sum(dim=-1) * mask).sum() / norm}
    if cfg.reg_weight > 0:
        reg = smooth_l1(student_boxes.float() - teacher_boxes.float(), cfg.smooth_l1_beta).sum(dim=-1)
        losses["reg"] = cfg.reg_weight * (reg * mask).sum() / norm
    return losses


class SparseKDLoss:
    """LossTerm 'sparsekd' -> {'cls', 'reg'} (no trainable parameters)."""

    name = "sparsekd"

    def __init__(self, cfg: SparseKDConfig, runner: TeacherRunner):
        self.cfg, self.runner = cfg, runner

    def __call__(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        teacher = self.runner.dense_output(ctx.batch)
        check_same_layout(ctx.output, teacher, "sparsekd")
        mask = pivotal_mask(teacher.cls_logits, ctx.targets, self.cfg)
        return pivotal_kd_losses(ctx.output.cls_logits, teacher.cls_logits, ctx.output.box_preds,
                                 teacher.box_preds, mask, self.cfg)


def dense_head_boxes(runner: TeacherRunner, batch: Batch, threshold: float, max_boxes: int) -> list[TeacherBoxes]:
    """Teacher dense-head boxes per frame with best class score > threshold, no NMS, at most max_boxes."""
    output = runner.dense_output(batch)
    with torch.no_grad():
        boxes, scores = decode(output, runner.dense.cfg.head, runner.dense.cfg.postprocess.peak_kernel)
        best, labels = scores.float().max(dim=-1)
        frames = []
        for b in range(boxes.shape[0]):
            keep = (best[b] > threshold).nonzero().squeeze(1)
            keep = keep[best[b, keep].argsort(descending=True)][:max_boxes]
            frames.append(TeacherBoxes(boxes[b, keep].float(), best[b, keep], labels[b, keep]))
    return frames


class LabelKDHook:
    """TargetHook: the teacher's confident dense-head boxes added in front of (or after) the GT."""

    def __init__(self, cfg: SparseKDConfig, runner: TeacherRunner):
        self.cfg, self.runner = cfg, runner

    def __call__(self, batch: Batch, gt_boxes: torch.Tensor, gt_labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        extra = dense_head_boxes(self.runner, batch, self.cfg.label_kd_threshold, self.cfg.label_kd_max_boxes)
        if self.cfg.label_kd_position == "front":
            return merge_ground_truth(gt_boxes, gt_labels, front=extra)
        return merge_ground_truth(gt_boxes, gt_labels, back=extra)


__all__ = ["SparseKDLoss", "LabelKDHook", "pivotal_mask", "pivotal_kd_losses", "dense_head_boxes"]
