"""Second-stage training targets of the two-stage teacher: RoI sampling and IoU-quality / box-residual targets.

Per frame (loop over the batch only; everything inside is vectorised):
1. Candidates = the valid RPN proposals (+ roi_head.gt_rois_train jittered copies of each ground-truth box).
2. IoU of each candidate with the ground truth of its own class (3D rotated IoU, geometry.iou_3d); the best one is
   its match.
3. Sample num_rois_train: up to fg_fraction of them foreground (IoU >= reg_fg_threshold), the rest background,
   hard_bg_fraction of it "hard" (hard_bg_threshold <= IoU < reg_fg_threshold) and the rest easy; a pool too small
   for its share is sampled with replacement, an empty pool passes its share on (so every frame has exactly R RoIs).
4. Targets: IoU quality = clip((IoU - iou_bg_threshold) / (iou_fg_threshold - iou_bg_threshold), 0, 1) (1 above
   0.75, 0 below 0.25, linear between); box residual = geometry.encode_boxes(matched GT, RoI) with the yaw residual
   wrapped to [-pi/2, pi/2) (a box and its half-turn are the same box; the RPN's direction bin sets the heading),
   used where IoU > reg_fg_threshold.
Sampling draws from torch's global generator (seeded by the trainer), so runs are reproducible.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from clean_ros.cloud import geometry
from clean_ros.models.two_stage import Proposals
from clean_ros.models.two_stage_config import RoIHeadConfig


class RoITargets(NamedTuple):
    rois: torch.Tensor  # (B, R, 7) sampled RoIs
    roi_labels: torch.Tensor  # (B, R) int64 class of the RoI
    ious: torch.Tensor  # (B, R) best same-class 3D IoU with the ground truth
    iou_targets: torch.Tensor  # (B, R) IoU-quality targets in [0, 1]
    box_targets: torch.Tensor  # (B, R, 7) residuals w.r.t. the RoI (zero where reg_mask is False)
    reg_mask: torch.Tensor  # (B, R) bool: IoU > reg_fg_threshold

    @property
    def num_foreground(self) -> int:
        return int(self.reg_mask.sum())


def iou_quality_targets(ious: torch.Tensor, fg_threshold: float = 0.75, bg_threshold: float = 0.25) -> torch.Tensor:
    """1 above fg_threshold, 0 below bg_threshold, linear between."""
    return ((ious - bg_threshold) / (fg_threshold - bg_threshold)).clamp(0.0, 1.0)


def roi_box_targets(gt: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """Residuals of matched GT boxes (N, 7) w.r.t. RoIs (N, 7), yaw residual wrapped to [-pi/2, pi/2)."""
    residuals = geometry.encode_boxes(gt, rois)
    yaw = geometry.limit_period(residuals[:, 6], 0.5, math.pi)
    return torch.cat([residuals[:, :6], yaw.unsqueeze(1)], dim=1)


def jittered_gt_rois(gt_boxes: torch.Tensor, copies: int, jitter: list[float]) -> torch.Tensor:
    """`copies` noisy versions of each box (M, 7): centre noise scaled by the box size, log-normal size noise."""
    if copies == 0 or gt_boxes.shape[0] == 0:
        return gt_boxes.new_zeros((0, 7))
    boxes = gt_boxes.repeat(copies, 1)
    std = boxes.new_tensor(jitter)
    noise = torch.randn_like(boxes) * std
    out = boxes.clone()
    out[:, 0:3] = boxes[:, 0:3] + noise[:, 0:3] * boxes[:, 3:6]
    out[:, 3:6] = boxes[:, 3:6] * torch.exp(noise[:, 3:6])
    out[:, 6] = geometry.normalize_yaw(boxes[:, 6] + noise[:, 6])
    return out


def _take(pool: torch.Tensor, k: int) -> torch.Tensor:
    """k indices from pool: without replacement when it is large enough, else with replacement."""
    if k <= 0 or pool.numel() == 0:
        return pool[:0]
    if pool.numel() >= k:
        return pool[torch.randperm(pool.numel(), device=pool.device)[:k]]
    return pool[torch.randint(pool.numel(), (k,), device=pool.device)]


def _sample_indices(ious: torch.Tensor, cfg: RoIHeadConfig) -> torch.Tensor:
    r = cfg.num_rois_train
    fg = (ious >= cfg.reg_fg_threshold).nonzero().squeeze(1)
    hard = ((ious < cfg.reg_fg_threshold) & (ious >= cfg.hard_bg_threshold)).nonzero().squeeze(1)
    easy = (ious < cfg.hard_bg_threshold).nonzero().squeeze(1)
    num_bg_pool = hard.numel() + easy.numel()
    num_fg = min(int(round(cfg.fg_fraction * r)), fg.numel()) if num_bg_pool else r
    num_bg = r - num_fg
    if hard.numel() and easy.numel():
        num_hard = min(int(round(num_bg * cfg.hard_bg_fraction)), hard.numel())
    else:
        num_hard = num_bg if hard.numel() else 0
    picked = torch.cat([_take(fg, num_fg), _take(hard, num_hard), _take(easy, num_bg - num_hard)])
    if picked.numel() < r:  # e.g. no background at all: fill from everything
        picked = torch.cat([picked, _take(torch.arange(ious.numel(), device=ious.device), r - picked.numel())])
    return picked


def sample_rois(proposals: Proposals, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                cfg: RoIHeadConfig) -> RoITargets:
    """Proposals (B, R0) + padded ground truth (B, M, 7) / (B, M) (label -1 = padding) -> RoITargets (B, R)."""
    with torch.no_grad():
        batch = proposals.boxes.shape[0]
        rois, labels, ious, box_targets, reg = [], [], [], [], []
        for b in range(batch):
            valid = proposals.labels[b] >= 0
            cand = proposals.boxes[b, valid].float()
            cand_labels = proposals.labels[b, valid]
            real = gt_labels[b] >= 0
            gt = gt_boxes[b, real].float().to(cand.device)
            gl = gt_labels[b, real].to(cand.device)
            extra = jittered_gt_rois(gt, cfg.gt_rois_train, cfg.gt_jitter)
            cand = torch.cat([cand, extra])
            cand_labels = torch.cat([cand_labels, gl.repeat(cfg.gt_rois_train)])
            if cand.shape[0] == 0:  # nothing proposed and no ground truth: the padding RoIs are background
                cand = proposals.boxes[b, :1].float()
                cand_labels = proposals.labels.new_zeros(1)
            if gt.shape[0]:
                iou = geometry.iou_3d(cand, gt)
                iou = iou * (cand_labels.unsqueeze(1) == gl.unsqueeze(0)).to(iou.dtype)
                best, match = iou.max(dim=1)
            else:
                best = cand.new_zeros(cand.shape[0])
                match = torch.zeros(cand.shape[0], dtype=torch.long, device=cand.device)
            idx = _sample_indices(best, cfg)
            roi, roi_iou = cand[idx], best[idx]
            mask = roi_iou > cfg.reg_fg_threshold
            target = roi.new_zeros(roi.shape)
            if mask.any():
                target[mask] = roi_box_targets(gt[match[idx][mask]], roi[mask])
            rois.append(roi)
            labels.append(cand_labels[idx])
            ious.append(roi_iou)
            box_targets.append(target)
            reg.append(mask)
        ious_t = torch.stack(ious)
        return RoITargets(torch.stack(rois), torch.stack(labels), ious_t,
                          iou_quality_targets(ious_t, cfg.iou_fg_threshold, cfg.iou_bg_threshold),
                          torch.stack(box_targets), torch.stack(reg))


__all__ = ["RoITargets", "sample_rois", "iou_quality_targets", "roi_box_targets", "jittered_gt_rois"]
