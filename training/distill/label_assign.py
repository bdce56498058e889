"""Two-stage-oriented label-assignment distillation (METHOD.md section 3) and the padded-GT merge it needs.

The teacher's final (second-stage, post-NMS) boxes are accepted when max_g IoU(j, g)^p * s_j^(1 - p) >
theta_{class(j)} (p = 0: score only, the references' choice; IoU: 3D as the reference, or rotated BEV, by
cfg.iou_type), and put in FRONT of the ground truth. Because the
hook edits the (B, M, 7) / (B, M) tensors before DetectionTask builds targets, the union drives every target of
the student: anchor labels and regression, heatmap Gaussians and the IoU-branch targets.

cfg.heading = "label" turns an accepted box by half a turn where it points against the same-class GT box it overlaps
(BEV IoU >= HEADING_IOU): the IoU is unchanged, the direction bins then learn the label's heading, not the
teacher's (whose headings may be unreliable: measured for the shipped teacher in docs/results/scaling/README.md).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from clean_ros.cloud import geometry
from training.data.sample import Batch
from training.distill.distill_config import LabelAssignConfig
from training.distill.teacher import TeacherBoxes, TeacherRunner

HEADING_IOU = 0.5  # heading="label": the GT box an accepted box overlaps this much (BEV, same class) gives its heading


def merge_ground_truth(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, front: Sequence[TeacherBoxes] = (),
                       back: Sequence[TeacherBoxes] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame [front boxes ; the frame's GT rows (padding included) ; back boxes], re-padded to the longest
    frame (zero boxes, label -1). Frames with no GT (M = 0) or no extra boxes are fine."""
    batch = gt_boxes.shape[0]
    device, dtype = gt_boxes.device, gt_boxes.dtype
    empty = TeacherBoxes(gt_boxes.new_zeros((0, 7)), gt_boxes.new_zeros(0),
                         torch.zeros(0, dtype=torch.long, device=device))
    front = list(front) or [empty] * batch
    back = list(back) or [empty] * batch
    if len(front) != batch or len(back) != batch:
        raise ValueError(f"merge_ground_truth: {batch} frames but {len(front)} / {len(back)} box sets")
    rows = [(torch.cat([f.boxes.to(device, dtype), gt_boxes[b], k.boxes.to(device, dtype)]),
             torch.cat([f.labels.to(device).long(), gt_labels[b].long(), k.labels.to(device).long()]))
            for b, (f, k) in enumerate(zip(front, back))]
    width = max(r[0].shape[0] for r in rows)
    boxes = gt_boxes.new_zeros((batch, width, 7))
    labels = torch.full((batch, width), -1, dtype=torch.long, device=device)
    for b, (bx, lb) in enumerate(rows):
        boxes[b, :bx.shape[0]] = bx
        labels[b, :lb.shape[0]] = lb
    return boxes, labels


def accept_teacher_boxes(teacher: TeacherBoxes, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                         cfg: LabelAssignConfig) -> TeacherBoxes:
    """One frame: the teacher boxes passing max_g IoU^p * s^(1-p) > theta_class, highest score first.

    IoU (3D or rotated BEV, cfg.iou_type) with any trained GT box of the frame (labels >= 0); with no GT the IoU
    term is 0, so p > 0 accepts nothing there and p = 0 accepts by score alone.
    """
    num_classes = len(cfg.thresholds)
    labels = teacher.labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"label_assign: teacher labels must be in [0, {num_classes}) (one threshold per class), "
                         f"got {sorted(set(labels.tolist()))}")
    scores = teacher.scores.float().clamp(0.0, 1.0)
    quality = scores
    if cfg.iou_power > 0:
        valid = gt_labels >= 0
        if valid.any() and teacher.boxes.shape[0]:
            iou = geometry.iou_3d if cfg.iou_type == "3d" else geometry.bev_iou
            best_iou = iou(teacher.boxes.float(), gt_boxes[valid].float()).max(dim=1).values
        else:
            best_iou = scores.new_zeros(scores.shape)
        quality = best_iou.clamp(min=0).pow(cfg.iou_power) * scores.pow(1.0 - cfg.iou_power)
    thresholds = scores.new_tensor(cfg.thresholds)
    keep = (quality > thresholds[labels]).nonzero().squeeze(1)
    keep = keep[scores[keep].argsort(descending=True)]
    if cfg.max_boxes:
        keep = keep[:cfg.max_boxes]
    return TeacherBoxes(teacher.boxes[keep], teacher.scores[keep], labels[keep])


def turn_to_labels(accepted: TeacherBoxes, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                   min_iou: float = HEADING_IOU) -> tuple[TeacherBoxes, int]:
    """One frame: each accepted box that overlaps a same-class GT box at BEV IoU >= min_iou and points more than a
    quarter turn away from it is turned by pi (same box, the label's heading). Returns (boxes, how many turned)."""
    valid = gt_labels >= 0
    if not accepted.boxes.shape[0] or not valid.any():
        return accepted, 0
    gt, gt_cls = gt_boxes[valid].to(accepted.boxes.dtype), gt_labels[valid].long()
    iou = geometry.bev_iou(accepted.boxes.float(), gt.float())
    iou = torch.where(accepted.labels.long().view(-1, 1) == gt_cls.view(1, -1), iou, torch.zeros_like(iou))
    best, nearest = iou.max(dim=1)
    against = geometry.normalize_yaw(accepted.boxes[:, 6] - gt[nearest, 6]).abs() > math.pi / 2
    turn = (best >= min_iou) & against
    boxes = accepted.boxes.clone()
    boxes[turn, 6] = geometry.normalize_yaw(boxes[turn, 6] + math.pi)
    return TeacherBoxes(boxes, accepted.scores, accepted.labels), int(turn.sum())


def pseudo_box_hits(accepted: TeacherBoxes, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                    thresholds: Sequence[float] = (0.5, 0.7)) -> list[int]:
    """How many accepted teacher boxes of one frame overlap a ground-truth box of their class with BEV IoU >= each
    threshold (a box is right or wrong on its own: not a one-to-one matching)."""
    valid = gt_labels >= 0
    if not accepted.boxes.shape[0] or not valid.any():
        return [0 for _ in thresholds]
    iou = geometry.bev_iou(accepted.boxes.float(), gt_boxes[valid].float())
    iou = torch.where(accepted.labels.view(-1, 1) == gt_labels[valid].view(1, -1), iou, torch.zeros_like(iou))
    best = iou.max(dim=1).values
    return [int((best >= t).sum()) for t in thresholds]


class LabelAssignHook:
    """TargetHook: accepted final teacher boxes in front of the GT (shares the runner's per-step cache)."""

    name = "label_assign"

    def __init__(self, cfg: LabelAssignConfig, runner: TeacherRunner):
        self.cfg, self.runner = cfg, runner
        self.last_accepted: list[TeacherBoxes] = []  # for logging / tests
        self.last_turned = 0  # heading="label": accepted boxes of the last step turned to their label's heading
        self._last_gt: tuple[torch.Tensor, torch.Tensor] | None = None

    def diagnostics(self) -> dict[str, float]:
        """Of the last step, per frame: accepted pseudo boxes and how many of them are right at BEV IoU 0.5 / 0.7
        against the ground truth (precision = right / accepted, computed over an epoch by the report). Computed
        only when asked (logged steps)."""
        if self._last_gt is None:
            return {}
        gt_boxes, gt_labels = self._last_gt
        accepted = self.last_accepted
        with torch.no_grad():
            hits = [pseudo_box_hits(a, gt_boxes[b], gt_labels[b]) for b, a in enumerate(accepted)]
        frames = max(1, len(accepted))
        values = {"accepted_per_frame": sum(int(a.boxes.shape[0]) for a in accepted) / frames,
                  "right_iou50_per_frame": sum(h[0] for h in hits) / frames,
                  "right_iou70_per_frame": sum(h[1] for h in hits) / frames}
        if self.cfg.heading == "label":
            values["turned_per_frame"] = self.last_turned / frames
        return values

    def __call__(self, batch: Batch, gt_boxes: torch.Tensor, gt_labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        detections = self.runner.final_detections(batch)
        if len(detections) != gt_boxes.shape[0]:
            raise RuntimeError(f"teacher returned {len(detections)} frames for a batch of {gt_boxes.shape[0]}")
        accepted = [accept_teacher_boxes(d, gt_boxes[b], gt_labels[b], self.cfg) for b, d in enumerate(detections)]
        self.last_turned = 0
        if self.cfg.heading == "label":
            turned = [turn_to_labels(a, gt_boxes[b], gt_labels[b]) for b, a in enumerate(accepted)]
            accepted = [a for a, _ in turned]
            self.last_turned = sum(n for _, n in turned)
        self.last_accepted = accepted
        self._last_gt = (gt_boxes.detach(), gt_labels)
        return merge_ground_truth(gt_boxes, gt_labels, front=accepted)


__all__ = ["LabelAssignHook", "accept_teacher_boxes", "merge_ground_truth", "pseudo_box_hits", "turn_to_labels"]
