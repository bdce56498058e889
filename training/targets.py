"""Training targets of the one-stage heads, from padded ground truth (B, M, 7) + labels (B, M) (-1 = padding / not
trained). The label-assignment distillation prepends teacher boxes to these tensors, so they are plain tensors.

Anchor head (per class, the matching IoU of that class's anchors with that class's boxes, head.anchor_matching:
  nearest_bev (default, the reference's) = nearest axis-aligned BEV IoU, geometry.nearest_bev_iou; rotated_bev =
  exact rotated BEV IoU, geometry.bev_iou):
  positive: IoU >= matched threshold, or the best anchor(s) of a box (if that IoU > 0);
  negative: IoU < unmatched threshold (and not positive); ignored: in between.
  Box targets: geometry.encode_boxes of the matched box; direction bin of its yaw.
  IoU-branch target (LossConfig.iou_target, docs/DISTILL.md "IoU-aware redundancy elimination"):
    predicted (default): at each positive anchor, the 3D IoU of the box the head predicts there (decoded
      residuals, no gradient) with its assigned box; 0 at every other anchor. Localisation quality of the
      predicted box, class-agnostic, the quantity the IoU gate is meant to judge.
    predicted_bev: the same with rotated BEV IoU.
    anchor (METHOD.md section 5 as written): the anchor's own matching IoU with its best same-class box, at
      every anchor where > 0, whatever its box regression does.
Center head: CenterPoint Gaussian heatmap (radius from the box's size in feature cells, min overlap), per-object
  pixel index, sub-pixel offset, z, log size, sin/cos yaw; IoU-branch target 1 at the centre pixels.
Anchor head: vectorised over anchors and over the frames of the batch (one IoU call per class against every
frame's boxes of that class, padded; a loop over classes only), so a batch of B frames costs about B single
frames' arithmetic without B times the Python / per-call overhead (tested equal to assigning each frame alone).
Center head: vectorised over pixels and objects, a loop over frames.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence, Union

import torch

from clean_ros.cloud import geometry
from clean_ros.models.anchors import FeatureGrid
from clean_ros.models.detector_config import AnchorClassConfig, DetectorConfig, HeadConfig
from clean_ros.models.detector import HeadOutput


class AnchorTargets(NamedTuple):
    labels: torch.Tensor  # (B, P) int64: -1 ignore, 0 background, k + 1 = class k
    box_targets: torch.Tensor  # (B, P, 7) residuals (zero where not positive)
    dir_targets: torch.Tensor  # (B, P) int64 direction bin (0 where not positive)
    iou_targets: torch.Tensor  # (B, P) best same-class matching IoU where > 0 (build_targets: per iou_target)
    matched_gt: torch.Tensor  # (B, P) int64 index into the M boxes of the frame, -1 where not positive

    @property
    def positives(self) -> torch.Tensor:
        return self.labels > 0


class CenterTargets(NamedTuple):
    heatmap: torch.Tensor  # (B, P, C) Gaussian targets in the cls_logits layout (P = H * W)
    indices: torch.Tensor  # (B, K) int64 centre pixel of each object
    mask: torch.Tensor  # (B, K) bool, real objects
    labels: torch.Tensor  # (B, K) int64 class
    box_targets: torch.Tensor  # (B, K, 8) offset x, y, z, log l, w, h, sin, cos yaw
    iou_targets: torch.Tensor  # (B, P) 1 at object centre pixels


Targets = Union[AnchorTargets, CenterTargets]


def _check_gt(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, num_classes: int) -> None:
    if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 7 or gt_labels.shape != gt_boxes.shape[:2]:
        raise ValueError(f"gt_boxes must be (B, M, 7) and gt_labels (B, M), got {tuple(gt_boxes.shape)} and "
                         f"{tuple(gt_labels.shape)}")
    if gt_labels.numel() and int(gt_labels.max()) >= num_classes:
        raise ValueError(f"gt_labels contain class {int(gt_labels.max())} but the model has {num_classes} classes")


def direction_bins(yaw: torch.Tensor, dir_offset: float, num_bins: int) -> torch.Tensor:
    """Which of num_bins heading sectors (after dir_offset) a yaw falls in."""
    period = 2 * math.pi / num_bins
    shifted = geometry.limit_period(yaw - dir_offset, 0.0, 2 * math.pi)
    return torch.floor(shifted / period).long().clamp(0, num_bins - 1)


# IoU that matches anchors to boxes (HeadConfig.anchor_matching).
ANCHOR_MATCHING = {"nearest_bev": geometry.nearest_bev_iou, "rotated_bev": geometry.bev_iou}


def class_box_slots(gt_labels: torch.Tensor, cls: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame, the indices of its boxes of class `cls` in their order, padded to the batch's largest count S:
    (slots (B, S) int64 index into M, valid (B, S) bool). Padding slots point at any box and are not valid."""
    in_class = gt_labels == cls
    width = int(in_class.sum(dim=1).max()) if in_class.numel() else 0
    order = torch.sort((~in_class).to(torch.int8), dim=1, stable=True).indices[:, :width]
    return order, in_class.gather(1, order)


def assign_anchor_targets(anchors: torch.Tensor, anchor_classes: torch.Tensor, gt_boxes: torch.Tensor,
                          gt_labels: torch.Tensor, classes: Sequence[AnchorClassConfig], dir_offset: float = 0.78539,
                          num_dir_bins: int = 2, matching: str = "nearest_bev") -> AnchorTargets:
    """Anchors (P, 7) with class (P,); gt (B, M, 7) / (B, M) -> AnchorTargets; matching: a key of ANCHOR_MATCHING.

    Of equally good boxes an anchor takes the first (torch's max returns the first maximum), so the order of the
    boxes matters where they tie (label-assignment / label-KD boxes in front of the GT win those anchors)."""
    if matching not in ANCHOR_MATCHING:
        raise ValueError(f"anchor matching must be one of {', '.join(ANCHOR_MATCHING)}, got {matching!r}")
    _check_gt(gt_boxes, gt_labels, len(classes))
    batch, num_anchors = gt_boxes.shape[0], anchors.shape[0]
    device = anchors.device
    labels = torch.full((batch, num_anchors), -1, dtype=torch.long, device=device)
    box_targets = anchors.new_zeros((batch, num_anchors, 7))
    dir_targets = torch.zeros((batch, num_anchors), dtype=torch.long, device=device)
    iou_targets = anchors.new_zeros((batch, num_anchors))
    matched_gt = torch.full((batch, num_anchors), -1, dtype=torch.long, device=device)
    match_iou = ANCHOR_MATCHING[matching]
    for c, spec in enumerate(classes):  # the whole batch at once, per class
        a_idx = (anchor_classes == c).nonzero().squeeze(1)
        slot_box, slot_valid = class_box_slots(gt_labels, c)  # (B, S): the frame's class-c boxes first, in order
        if slot_box.shape[1] == 0:
            labels[:, a_idx] = 0
            continue
        gt = gt_boxes.gather(1, slot_box.unsqueeze(-1).expand(-1, -1, 7)).to(anchors.dtype)  # (B, S, 7)
        # One IoU call against the batch's class-c boxes, spread into the padded slots; padding slots hold -1 so
        # they never match or win a tie.
        if bool(slot_valid.all()):  # no padding (one frame, or equal counts): nothing to spread
            iou = match_iou(anchors[a_idx], gt.reshape(-1, 7))
        else:
            valid = slot_valid.reshape(-1).nonzero().squeeze(1)
            iou = anchors.new_full((a_idx.numel(), slot_valid.numel()), -1.0)
            iou[:, valid] = match_iou(anchors[a_idx], gt.reshape(-1, 7)[valid])
        iou = iou.reshape(-1, batch, gt.shape[1])  # (Pc, B, S)
        best_iou, best_slot = iou.max(dim=2)  # (Pc, B); first maximum: of equal boxes the earlier one, as per frame
        gt_best = iou.max(dim=0).values  # (B, S)
        # The best anchor(s) of each box are positive even below the threshold (if they overlap at all).
        forced = ((iou == gt_best) & (gt_best > 0)).any(dim=2)
        best_iou, best_slot, forced = best_iou.t(), best_slot.t(), forced.t()  # (B, Pc)
        positive = (best_iou >= spec.matched_threshold) | forced
        negative = (best_iou < spec.unmatched_threshold) & ~positive  # frames without class-c boxes: all (-1)
        class_labels = torch.full_like(best_slot, -1)
        class_labels[negative] = 0
        class_labels[positive] = c + 1
        labels[:, a_idx] = class_labels
        iou_targets[:, a_idx] = best_iou.clamp(min=0)
        frame, position = positive.nonzero(as_tuple=True)
        pos_anchor = a_idx[position]
        slot = best_slot[frame, position]
        matched = gt[frame, slot]
        box_targets[frame, pos_anchor] = geometry.encode_boxes(matched, anchors[pos_anchor])
        dir_targets[frame, pos_anchor] = direction_bins(matched[:, 6], dir_offset, num_dir_bins)
        matched_gt[frame, pos_anchor] = slot_box[frame, slot]
    return AnchorTargets(labels, box_targets, dir_targets, iou_targets, matched_gt)


def gaussian_radius(length_cells: torch.Tensor, width_cells: torch.Tensor, min_overlap: float = 0.1) -> torch.Tensor:
    """CenterPoint's heatmap radius (in cells) for boxes of the given BEV size in feature cells.

    The smallest of the three CornerNet cases (both corners inside, both outside, one of each) that keeps IoU
    >= min_overlap, with CenterPoint's constants.
    """
    h, w, o = length_cells, width_cells, min_overlap
    b1 = h + w
    c1 = w * h * (1 - o) / (1 + o)
    r1 = (b1 + torch.sqrt((b1 ** 2 - 4 * c1).clamp(min=0))) / 2
    b2 = 2 * (h + w)
    c2 = (1 - o) * w * h
    r2 = (b2 + torch.sqrt((b2 ** 2 - 16 * c2).clamp(min=0))) / 2
    a3 = 4 * o
    b3 = -2 * o * (h + w)
    c3 = (o - 1) * w * h
    r3 = (b3 + torch.sqrt((b3 ** 2 - 4 * a3 * c3).clamp(min=0))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def draw_gaussians(grid: FeatureGrid, rows: torch.Tensor, cols: torch.Tensor, radii: torch.Tensor,
                   classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, H * W) heatmap: per object a Gaussian (sigma = (2r + 1) / 6) cut to its (2r+1)^2 window, max over objects."""
    heat = torch.zeros(num_classes, grid.num_cells, device=rows.device)
    if rows.numel() == 0:
        return heat
    pix_rows = torch.arange(grid.height, device=rows.device).repeat_interleave(grid.width)
    pix_cols = torch.arange(grid.width, device=rows.device).repeat(grid.height)
    dy = (pix_rows.unsqueeze(0) - rows.unsqueeze(1)).float()  # (N, HW)
    dx = (pix_cols.unsqueeze(0) - cols.unsqueeze(1)).float()
    r = radii.float().unsqueeze(1)
    sigma = (2 * r + 1) / 6
    gauss = torch.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2))
    gauss = gauss * ((dx.abs() <= r) & (dy.abs() <= r)).float()
    gauss = torch.where(gauss < torch.finfo(gauss.dtype).eps, torch.zeros_like(gauss), gauss)
    return heat.scatter_reduce_(0, classes.unsqueeze(1).expand_as(gauss), gauss, "amax", include_self=True)


def assign_center_targets(grid: FeatureGrid, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, num_classes: int,
                          head: HeadConfig) -> CenterTargets:
    _check_gt(gt_boxes, gt_labels, num_classes)
    batch, device = gt_boxes.shape[0], gt_boxes.device
    k = head.max_objects
    heatmaps = torch.zeros(batch, grid.num_cells, num_classes, device=device)
    indices = torch.zeros(batch, k, dtype=torch.long, device=device)
    mask = torch.zeros(batch, k, dtype=torch.bool, device=device)
    labels = torch.zeros(batch, k, dtype=torch.long, device=device)
    box_targets = torch.zeros(batch, k, 8, device=device)
    iou_targets = torch.zeros(batch, grid.num_cells, device=device)
    for b in range(batch):
        boxes = gt_boxes[b].float()
        fx = (boxes[:, 0] - grid.x_min) / grid.cell_x
        fy = (boxes[:, 1] - grid.y_min) / grid.cell_y
        cols, rows = torch.floor(fx).long(), torch.floor(fy).long()
        valid = ((gt_labels[b] >= 0) & (boxes[:, 3:6] > 0).all(1) & (cols >= 0) & (cols < grid.width)
                 & (rows >= 0) & (rows < grid.height))
        sel = valid.nonzero().squeeze(1)[:k]
        n = sel.numel()
        if n == 0:
            continue
        boxes, fx, fy, cols, rows, cls = boxes[sel], fx[sel], fy[sel], cols[sel], rows[sel], gt_labels[b, sel]
        radius = gaussian_radius(boxes[:, 3] / grid.cell_x, boxes[:, 4] / grid.cell_y, head.gaussian_overlap)
        radius = radius.floor().clamp(min=head.min_radius)
        heatmaps[b] = draw_gaussians(grid, rows, cols, radius, cls, num_classes).t()
        pixel = rows * grid.width + cols
        indices[b, :n] = pixel
        mask[b, :n] = True
        labels[b, :n] = cls
        box_targets[b, :n] = torch.stack([fx - cols, fy - rows, boxes[:, 2], torch.log(boxes[:, 3]),
                                          torch.log(boxes[:, 4]), torch.log(boxes[:, 5]), torch.sin(boxes[:, 6]),
                                          torch.cos(boxes[:, 6])], dim=1)
        iou_targets[b, pixel] = 1.0
    return CenterTargets(heatmaps, indices, mask, labels, box_targets, iou_targets)


def predicted_iou_targets(box_preds: torch.Tensor, anchors: torch.Tensor, targets: AnchorTargets,
                          gt_boxes: torch.Tensor, three_d: bool = True) -> torch.Tensor:
    """(B, P) IoU-branch targets: at each positive anchor the IoU (3D, or rotated BEV) of the box decoded from
    box_preds (B, P, 7) there with the box it is assigned (gt_boxes (B, M, 7), targets.matched_gt); 0 elsewhere.

    Heading bins do not matter: both IoUs are unchanged by a half-turn of the box. Call without gradient.
    """
    iou_targets = torch.zeros_like(targets.iou_targets)
    frame, position = targets.positives.nonzero(as_tuple=True)
    if frame.numel() == 0:
        return iou_targets
    predicted = geometry.decode_boxes(box_preds[frame, position].to(anchors.dtype), anchors[position])
    assigned = gt_boxes[frame, targets.matched_gt[frame, position]].to(anchors.dtype)
    iou = geometry.iou_3d_aligned(predicted, assigned) if three_d else geometry.bev_iou_aligned(predicted, assigned)
    iou_targets[frame, position] = iou.clamp(0.0, 1.0).to(iou_targets.dtype)
    return iou_targets


def build_targets(output: HeadOutput, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, cfg: DetectorConfig) -> Targets:
    """Targets for a HeadOutput (anchor or center head) from padded ground truth; the anchor head's IoU-branch
    targets as cfg.head.loss.iou_target says."""
    gt_boxes = gt_boxes.to(output.cls_logits.device)
    gt_labels = gt_labels.to(output.cls_logits.device).long()
    with torch.no_grad():
        if output.head_type == "anchor":
            targets = assign_anchor_targets(output.anchors, output.anchor_classes, gt_boxes, gt_labels,
                                            cfg.head.anchors, cfg.head.dir_offset, cfg.head.num_dir_bins,
                                            cfg.head.anchor_matching)
            mode = cfg.head.loss.iou_target
            if mode == "anchor":
                return targets
            iou = predicted_iou_targets(output.box_preds, output.anchors, targets, gt_boxes,
                                        three_d=mode == "predicted")
            return targets._replace(iou_targets=iou)
        return assign_center_targets(output.grid, gt_boxes, gt_labels, cfg.num_classes, cfg.head)
