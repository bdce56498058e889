"""Detection losses of the one-stage heads, weighted from LossConfig, returned as a typed breakdown.

Anchor head: sigmoid focal classification (alpha 0.25, gamma 2) over positives + negatives, smooth-L1 box
regression (beta 1/9) with the sin-difference trick for yaw, direction-bin cross-entropy, each normalised by
the frame's number of positive anchors and averaged over the batch; IoU branch (LossConfig.iou_loss):
  balanced (default): mean squared error of sigmoid(u) over the batch's positive anchors plus that over its
    negative anchors; ignored anchors add nothing. Positives and negatives weigh the same whatever their counts.
  all_positions (METHOD.md section 5): squared error summed over all positions, divided by the batch's positives.
    With ~1,800 negatives per positive and sigmoid(u) starting at 0.01 it holds the branch near 0 for classes
    with few positives: the hard gate then removed every pedestrian (docs/DISTILL.md, IoU gate).
Normalisers counted over the batch go through training.distributed.per_process_count, so that N DDP processes train
like one process with the global batch.
Center head: CenterNet focal loss on the Gaussian heatmap (normalised by the number of objects), L1 on the
per-object regression, IoU-branch MSE summed over all positions divided by the number of objects.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from clean_ros.models.detector_config import DetectorConfig, LossConfig
from clean_ros.models.detector import HeadOutput
from training.distributed import per_process_count
from training.targets import AnchorTargets, CenterTargets, Targets, build_targets


class LossBreakdown(NamedTuple):
    """total = sum of the weighted parts; parts maps name -> weighted loss (scalar tensors, in the graph)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]

    def as_floats(self) -> dict[str, float]:
        return {"total": float(self.total.detach()), **{k: float(v.detach()) for k, v in self.parts.items()}}


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
                       ) -> torch.Tensor:
    """Element-wise focal loss of raw logits against {0, 1} targets (numerically stable BCE)."""
    prob = torch.sigmoid(logits)
    alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
    p_t = targets * prob + (1 - targets) * (1 - prob)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return alpha_t * (1 - p_t).pow(gamma) * bce


def smooth_l1(diff: torch.Tensor, beta: float = 1.0 / 9.0) -> torch.Tensor:
    abs_diff = diff.abs()
    if beta < 1e-5:
        return abs_diff
    return torch.where(abs_diff < beta, 0.5 * abs_diff ** 2 / beta, abs_diff - 0.5 * beta)


def sin_difference(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the yaw channel by sin(a)cos(b) and cos(a)sin(b): their difference is sin(a - b), so the box loss
    is blind to a half-turn (the direction classifier resolves it)."""
    sin_pred = torch.sin(pred[..., 6:7]) * torch.cos(target[..., 6:7])
    sin_target = torch.cos(pred[..., 6:7]) * torch.sin(target[..., 6:7])
    return (torch.cat([pred[..., :6], sin_pred, pred[..., 7:]], dim=-1),
            torch.cat([target[..., :6], sin_target, target[..., 7:]], dim=-1))


def _code_weights(cfg: LossConfig, n: int, like: torch.Tensor) -> torch.Tensor:
    if not cfg.code_weights:
        return like.new_ones(n)
    if len(cfg.code_weights) != n:
        raise ValueError(f"loss.code_weights needs {n} values for this head, got {len(cfg.code_weights)}")
    return like.new_tensor(cfg.code_weights)


def iou_branch_loss(iou_logits: torch.Tensor, iou_targets: torch.Tensor, num_positives: torch.Tensor) -> torch.Tensor:
    """Sum over all positions of (sigmoid(u) - target)^2, divided by the number of positives (>= 1)."""
    return ((torch.sigmoid(iou_logits) - iou_targets) ** 2).sum() / per_process_count(num_positives).clamp(min=1)


def balanced_iou_branch_loss(iou_logits: torch.Tensor, iou_targets: torch.Tensor, positives: torch.Tensor,
                             negatives: torch.Tensor) -> torch.Tensor:
    """Mean of (sigmoid(u) - target)^2 over the positives plus its mean over the negatives (each count >= 1)."""
    squared = (torch.sigmoid(iou_logits) - iou_targets) ** 2
    return ((squared * positives).sum() / per_process_count(positives.sum()).clamp(min=1)
            + (squared * negatives).sum() / per_process_count(negatives.sum()).clamp(min=1))


def anchor_losses(output: HeadOutput, targets: AnchorTargets, cfg: LossConfig) -> LossBreakdown:
    batch, _, num_classes = output.cls_logits.shape
    positives = targets.labels > 0
    negatives = targets.labels == 0
    normalizer = positives.sum(dim=1, keepdim=True).clamp(min=1).float()  # per frame
    cls_weights = (positives | negatives).float() / normalizer
    reg_weights = positives.float() / normalizer
    one_hot = F.one_hot(targets.labels.clamp(min=0), num_classes + 1)[..., 1:].to(output.cls_logits.dtype)
    cls = (sigmoid_focal_loss(output.cls_logits, one_hot, cfg.focal_alpha, cfg.focal_gamma)
           * cls_weights.unsqueeze(-1)).sum() / batch
    pred, target = sin_difference(output.box_preds, targets.box_targets)
    box_elem = smooth_l1(pred - target, cfg.smooth_l1_beta) * _code_weights(cfg, 7, pred)
    box = (box_elem.sum(-1) * reg_weights).sum() / batch
    parts = {"cls": cfg.cls_weight * cls, "box": cfg.box_weight * box}
    if output.dir_logits is not None:
        ce = F.cross_entropy(output.dir_logits.transpose(1, 2), targets.dir_targets, reduction="none")
        parts["dir"] = cfg.dir_weight * (ce * reg_weights).sum() / batch
    if output.iou_logits is not None:
        if cfg.iou_loss == "balanced":
            iou = balanced_iou_branch_loss(output.iou_logits, targets.iou_targets, positives, negatives)
        else:
            iou = iou_branch_loss(output.iou_logits, targets.iou_targets, positives.sum())
        parts["iou"] = cfg.iou_weight * iou
    return LossBreakdown(sum(parts.values()), parts)


def center_focal_loss(logits: torch.Tensor, heatmap: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
                      ) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed, divided by the number of peaks (>= 1)."""
    prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    peak = heatmap.eq(1).float()
    pos = torch.log(prob) * (1 - prob).pow(alpha) * peak
    neg = torch.log(1 - prob) * prob.pow(alpha) * (1 - heatmap).pow(beta) * (1 - peak)
    return -(pos.sum() + neg.sum()) / per_process_count(peak.sum()).clamp(min=1)


def center_losses(output: HeadOutput, targets: CenterTargets, cfg: LossConfig) -> LossBreakdown:
    heatmap = center_focal_loss(output.cls_logits, targets.heatmap)
    channels = output.box_preds.shape[-1]
    gathered = output.box_preds.gather(1, targets.indices.unsqueeze(-1).expand(-1, -1, channels))
    mask = targets.mask.unsqueeze(-1).float()
    num_objects = targets.mask.sum()
    reg = ((gathered - targets.box_targets).abs() * mask * _code_weights(cfg, channels, gathered)).sum()
    reg = reg / per_process_count(num_objects).clamp(min=1)
    parts = {"heatmap": cfg.heatmap_weight * heatmap, "reg": cfg.reg_weight * reg}
    if output.iou_logits is not None:
        parts["iou"] = cfg.iou_weight * iou_branch_loss(output.iou_logits, targets.iou_targets, num_objects)
    return LossBreakdown(sum(parts.values()), parts)


def compute_losses(output: HeadOutput, targets: Targets, cfg: LossConfig) -> LossBreakdown:
    if isinstance(targets, AnchorTargets):
        return anchor_losses(output, targets, cfg)
    return center_losses(output, targets, cfg)


def detection_loss(output: HeadOutput, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, cfg: DetectorConfig
                   ) -> tuple[LossBreakdown, Targets]:
    """Targets from padded ground truth, then the head's losses. Returns the targets too (KD reuses them)."""
    targets = build_targets(output, gt_boxes, gt_labels, cfg)
    return compute_losses(output, targets, cfg.head.loss), targets
