"""Post-processing: class scores -> IoU gate -> per-class score threshold -> decode of the boxes that pass ->
range-dependent per-class threshold (when set) -> top-k -> rotated NMS -> top-k -> Detections.

One implementation for training evaluation, the ROS node and replay. Scoring and gating are batched tensor
ops; thresholds, decoding of the candidates and NMS run per frame. `postprocess_tensors` also returns the kept
position indices (what the masked pruning criterion and CaKD need); `postprocess` converts to
clean_ros.types.Detections.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from clean_ros.cloud import geometry
from clean_ros.models.detector_config import DetectorConfig, HeadConfig, IoUGateConfig, PostProcessConfig
from clean_ros.models.detector import HeadOutput
from clean_ros.inference.voxelize import flat_nonzero
from clean_ros.types import Detections

# BEV shift between classes for class-aware NMS in one call: larger than any scene.
_CLASS_OFFSET = 1.0e4


class FrameDetections(NamedTuple):
    """Detections of one frame as tensors. positions: index into the head's P positions of each box."""

    boxes: torch.Tensor  # (K, 7)
    scores: torch.Tensor  # (K,)
    labels: torch.Tensor  # (K,) int64 class index
    positions: torch.Tensor  # (K,) int64


def decode_anchor_boxes(box_preds: torch.Tensor, anchors: torch.Tensor, dir_logits: torch.Tensor | None,
                        dir_offset: float, dir_limit_offset: float, num_dir_bins: int) -> torch.Tensor:
    """(B, P, 7) residuals + (P, 7) anchors -> (B, P, 7) boxes; the direction bin picks the heading's half-turn."""
    boxes = geometry.decode_boxes(box_preds, anchors.unsqueeze(0).expand_as(box_preds))
    if dir_logits is None or num_dir_bins <= 0:
        return boxes
    period = 2 * math.pi / num_dir_bins
    bins = dir_logits.argmax(dim=-1).to(boxes.dtype)
    yaw = geometry.limit_period(boxes[..., 6] - dir_offset, dir_limit_offset, period)
    yaw = yaw + dir_offset + period * bins
    return torch.cat([boxes[..., :6], yaw.unsqueeze(-1)], dim=-1)


def decode_center_boxes(box_preds: torch.Tensor, output: HeadOutput,
                        positions: torch.Tensor | None = None) -> torch.Tensor:
    """(B, HW, 8) per-pixel regression -> (B, HW, 7) boxes; with positions (K,), only those pixels: (B, K, 7)."""
    grid = output.grid
    if positions is None:
        positions = torch.arange(grid.height * grid.width, device=box_preds.device)
    else:
        box_preds = box_preds[:, positions]
    rows = torch.div(positions, grid.width, rounding_mode="floor").to(box_preds.dtype).unsqueeze(0)
    cols = (positions % grid.width).to(box_preds.dtype).unsqueeze(0)
    x = grid.x_min + (cols + box_preds[..., 0]) * grid.cell_x
    y = grid.y_min + (rows + box_preds[..., 1]) * grid.cell_y
    size = torch.exp(box_preds[..., 3:6].clamp(max=10.0))
    yaw = torch.atan2(box_preds[..., 6], box_preds[..., 7])
    return torch.cat([x.unsqueeze(-1), y.unsqueeze(-1), box_preds[..., 2:3], size, yaw.unsqueeze(-1)], dim=-1)


def center_peak_scores(scores: torch.Tensor, grid, kernel: int) -> torch.Tensor:
    """(B, HW, C) scores -> same with every non-peak (not the max of its kernel x kernel window) set to 0."""
    if kernel <= 1:
        return scores
    b, _, c = scores.shape
    heat = scores.transpose(1, 2).reshape(b, c, grid.height, grid.width)
    peaks = F.max_pool2d(heat, kernel, stride=1, padding=kernel // 2)
    heat = heat * (heat == peaks).to(heat.dtype)
    return heat.reshape(b, c, -1).transpose(1, 2)


def decode(output: HeadOutput, head: HeadConfig, peak_kernel: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """HeadOutput -> boxes (B, P, 7) and class probabilities (B, P, C) (center head: peaks only)."""
    if output.head_type == "anchor":
        boxes = decode_anchor_boxes(output.box_preds, output.anchors, output.dir_logits, head.dir_offset,
                                    head.dir_limit_offset, head.num_dir_bins)
    else:
        boxes = decode_center_boxes(output.box_preds, output)
    return boxes, class_scores(output, peak_kernel)


def decode_positions(output: HeadOutput, head: HeadConfig, frame: int, positions: torch.Tensor) -> torch.Tensor:
    """Decoded boxes (K, 7), float32, of one frame's positions (K,) only: anchor residuals with their direction bins,
    or center-head regression. Post-processing decodes only the boxes that pass the score thresholds this way (a
    full-grid decode of every anchor cost more than the rest of post-processing on fine grids)."""
    if output.head_type == "anchor":
        dirs = output.dir_logits[frame, positions].unsqueeze(0) if output.dir_logits is not None else None
        return decode_anchor_boxes(output.box_preds[frame, positions].unsqueeze(0).float(),
                                   output.anchors[positions].float(), dirs, head.dir_offset, head.dir_limit_offset,
                                   head.num_dir_bins)[0]
    return decode_center_boxes(output.box_preds[frame:frame + 1].float(), output, positions)[0]


def class_scores(output: HeadOutput, peak_kernel: int = 3) -> torch.Tensor:
    """Class probabilities (B, P, C) of a HeadOutput (center head: peaks only), before any gate."""
    scores = torch.sigmoid(output.cls_logits)
    if output.head_type != "anchor":
        scores = center_peak_scores(scores, output.grid, peak_kernel)
    return scores


def apply_iou_gate(scores: torch.Tensor, iou_logits: torch.Tensor | None, gate: IoUGateConfig) -> torch.Tensor:
    """(B, P, C) class probabilities -> gated scores.

    hard: s_c * 1[sigmoid(u) > tau_c]; soft: s_c^(1 - alpha_c) * sigmoid(u)^alpha_c.
    """
    if gate.mode == "none":
        return scores
    if iou_logits is None:
        raise ValueError(f"iou_gate.mode={gate.mode!r} but the head has no IoU branch")
    return gate_scores(scores, torch.sigmoid(iou_logits).unsqueeze(-1), gate)


def gate_scores(scores: torch.Tensor, quality: torch.Tensor, gate: IoUGateConfig) -> torch.Tensor:
    """apply_iou_gate on probabilities: class scores (..., C) and IoU quality sigmoid(u) (..., 1)."""
    if gate.mode == "none":
        return scores
    if gate.mode == "hard":
        thresholds = scores.new_tensor(gate.thresholds)
        return scores * (quality > thresholds).to(scores.dtype)
    alphas = scores.new_tensor(gate.alphas)
    return scores.clamp(min=0).pow(1 - alphas) * quality.pow(alphas)


def range_thresholds(boxes: torch.Tensor, labels: torch.Tensor, cfg: PostProcessConfig,
                     num_classes: int) -> torch.Tensor:
    """The range-dependent score threshold of each box (K,): range_score_thresholds[label, band of its BEV distance]
    (bands and layout: clean_ros.inference.postprocess_settings)."""
    table = boxes.new_tensor(cfg.range_score_thresholds).view(num_classes, len(cfg.range_breakpoints) + 1)
    distance = torch.hypot(boxes[:, 0], boxes[:, 1])
    band = torch.bucketize(distance, boxes.new_tensor(cfg.range_breakpoints), right=True)
    return table[labels, band]


def _select_frame(output: HeadOutput, head: HeadConfig, frame: int, scores: torch.Tensor,
                  cfg: PostProcessConfig, rows: torch.Tensor | None = None) -> FrameDetections:
    """One frame: gated scores (P, C) -> kept detections. Thresholds first, then only the candidates are decoded.
    rows: the head positions that `scores` holds (ascending), when it holds only some of them."""
    num_classes = scores.shape[1]
    thresholds = scores.new_tensor(cfg.score_thresholds)
    if cfg.class_agnostic_nms:
        best, labels = scores.max(dim=1)
        keep = best >= thresholds[labels]
        positions = keep.nonzero().squeeze(1)
        cand_scores, cand_labels = best[positions], labels[positions]
    else:
        keep = scores >= thresholds.unsqueeze(0)
        positions, cand_labels = keep.nonzero(as_tuple=True)
        cand_scores = scores[positions, cand_labels]
    if rows is not None:
        positions = rows[positions]
    cand_boxes = decode_positions(output, head, frame, positions)
    cand_boxes = torch.cat([cand_boxes[:, :6], geometry.normalize_yaw(cand_boxes[:, 6:7])], dim=-1)
    if cfg.range_breakpoints:
        keep = cand_scores >= range_thresholds(cand_boxes, cand_labels, cfg, num_classes)
        positions, cand_labels, cand_scores, cand_boxes = (positions[keep], cand_labels[keep], cand_scores[keep],
                                                           cand_boxes[keep])
    if cfg.nms_pre_max and cand_scores.numel() > cfg.nms_pre_max:
        top = cand_scores.topk(cfg.nms_pre_max).indices
        positions, cand_labels, cand_scores, cand_boxes = (positions[top], cand_labels[top], cand_scores[top],
                                                           cand_boxes[top])
    nms_boxes = cand_boxes
    if not cfg.class_agnostic_nms and num_classes > 1:
        # Shift each class far apart in x so one NMS call never compares boxes of different classes.
        nms_boxes = cand_boxes.clone()
        nms_boxes[:, 0] += cand_labels.to(cand_boxes.dtype) * _CLASS_OFFSET
    kept = geometry.nms_bev(nms_boxes, cand_scores, cfg.nms_iou, post_max_size=cfg.nms_post_max or None)
    return FrameDetections(cand_boxes[kept], cand_scores[kept], cand_labels[kept], positions[kept])


def score_bound(settings: PostProcessConfig) -> float | None:
    """A class probability below which no gated score of any class reaches its score threshold (the lowest
    threshold); None where this is not known: a threshold <= 0, or the soft gate (its powers are computed in other
    float32 roundings on a gathered subset than on the whole map, and the candidates' scores must be the same bits
    either way). Without a gate or with the hard one a gated score never exceeds the class probability:
    s * 1[q > tau] <= s."""
    if settings.iou_gate.mode == "soft" or any(t <= 0 for t in settings.score_thresholds):
        return None
    return min(1.0, *(float(t) for t in settings.score_thresholds))


# Slack of the prefilter in logit units: far wider than float32 rounding of sigmoid near a threshold, so the
# exact test on the rows kept decides every case and the result is the same as scoring every position.
_LOGIT_SLACK = 1e-3


def candidate_rows(output: HeadOutput, frame: int, settings: PostProcessConfig) -> torch.Tensor | None:
    """Anchor heads: the positions of one frame where some class's logit can still pass its threshold (ascending),
    found on the logits alone; None: score every position (center heads, whose peaks need the neighbours, or
    settings without a bound). On a 336 x 336 grid (169k anchor positions, ~30 candidates) this replaced the sigmoid,
    the gate and the max over every position (about 8 of the 11 ms of post-processing on one CPU thread)."""
    if output.head_type != "anchor":
        return None
    bound = score_bound(settings)
    if bound is None:
        return None
    logits = output.cls_logits[frame]
    # One floor for every class (the lowest threshold's logit): one flat comparison, several times faster on CPU than
    # a per-class one over a last dimension of 3. A bound of 1 (every class switched off by threshold 1.0) still lets
    # through logits whose float32 sigmoid rounds to 1.0, all above 15 (sigmoid(15) = 1 - 3e-7 < 1 in float32).
    floor = math.log(bound / (1.0 - bound)) - _LOGIT_SLACK if bound < 1.0 else 15.0
    flat = flat_nonzero(logits.reshape(-1) >= floor)
    return torch.unique(flat // logits.shape[1])  # ascending


def postprocess_tensors(output: HeadOutput, cfg: DetectorConfig) -> list[FrameDetections]:
    """HeadOutput of a batch -> per-frame tensors (no gradient). Anchor heads score only the candidate rows
    (candidate_rows); the result is the same as scoring every position."""
    settings = cfg.postprocess
    with torch.no_grad():
        frames = []
        for b in range(output.cls_logits.shape[0]):
            rows = candidate_rows(output, b, settings)
            if rows is None:
                scores = apply_iou_gate(class_scores(output, settings.peak_kernel), output.iou_logits,
                                        settings.iou_gate)[b]
            else:
                # The sigmoids run on the whole frame and are then gathered: the same bits as scoring every
                # position (a gathered subset is computed in other float32 roundings).
                scores = torch.sigmoid(output.cls_logits[b]).index_select(0, rows)
                if settings.iou_gate.mode != "none":
                    if output.iou_logits is None:
                        apply_iou_gate(scores, None, settings.iou_gate)  # raises: the gate needs the IoU branch
                    quality = torch.sigmoid(output.iou_logits[b]).index_select(0, rows).unsqueeze(-1)
                    scores = gate_scores(scores, quality, settings.iou_gate)
            frames.append(_select_frame(output, cfg.head, b, scores, settings, rows))
        return frames


def to_detections(frame: FrameDetections, class_names: Sequence[str]) -> Detections:
    return Detections(boxes=frame.boxes.detach().cpu().float().numpy(), scores=frame.scores.detach().cpu().float().numpy(),
                      labels=frame.labels.detach().cpu().long().numpy(), class_names=tuple(class_names))


def postprocess(output: HeadOutput, cfg: DetectorConfig) -> list[Detections]:
    """HeadOutput of a batch -> one Detections per frame."""
    return [to_detections(frame, cfg.class_names) for frame in postprocess_tensors(output, cfg)]
