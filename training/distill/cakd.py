"""CaKD, category-knowledge distillation, student-oriented (METHOD.md section 2).

The student chooses where it wants advice, the teacher's second stage judges those places:
1. s_a = max_c z^S_{a,c} for every position a (anchor or heatmap pixel).
2. Candidates sigmoid(s_a) >= tau_sel, the top `pre_nms_max` by s_a, class-agnostic rotated BEV NMS (IoU
   `nms_iou`) on the student's own decoded boxes, at most `post_nms_max` kept: the set S (per frame).
3. RoIs = the teacher's own first-stage boxes at the same positions: the teacher RPN's box residuals decoded at
   the same anchor. Positions are matched through BEV cell centres, so a student grid with another stride works
   (positions outside the teacher's grid get no advice: inside_teacher_grid);
   a heatmap student takes, in that teacher cell, the teacher anchor with the highest class probability.
4. t_a = teacher.roi_forward(rpn_output, RoIs) IoU logits, under no_grad with the teacher in eval mode.
5. L = w * sum_{a in S} (s_a - t_a)^2 / max(1, |S|) per frame, averaged over the frames of the batch.
Selection is non-differentiable; only the selected positions' max-class logits receive gradients.
"""
from __future__ import annotations

import torch

from clean_ros.cloud import geometry
from clean_ros.models.anchors import FeatureGrid
from clean_ros.models.detector_config import HeadConfig
from clean_ros.models.detector import HeadOutput
from clean_ros.inference.postprocess import decode_positions
from training.distill.distill_config import CaKDConfig
from training.distill.teacher import TeacherRunner
from training.task import LossContext


def select_positions(output: HeadOutput, head: HeadConfig, score_threshold: float, pre_nms_max: int,
                     nms_iou: float, post_nms_max: int) -> list[torch.Tensor]:
    """Per frame, the student-selected positions S (LongTensor, in NMS order: descending max-class logit)."""
    selected = []
    with torch.no_grad():
        scores = output.cls_logits.detach().float().max(dim=-1).values  # (B, P)
        for b in range(scores.shape[0]):
            cand = (torch.sigmoid(scores[b]) >= score_threshold).nonzero().squeeze(1)
            if cand.numel() > pre_nms_max:
                cand = cand[scores[b, cand].topk(pre_nms_max).indices]
            if cand.numel() == 0:
                selected.append(cand)
                continue
            boxes = decode_positions(output, head, b, cand)
            keep = geometry.nms_bev(boxes, scores[b, cand], nms_iou, post_max_size=post_nms_max)
            selected.append(cand[keep])
    return selected


def map_cells(source: FeatureGrid, target: FeatureGrid, cells: torch.Tensor) -> torch.Tensor:
    """Cell indices of `source` -> the `target` cell containing each source cell's centre (clamped to the grid)."""
    x, y = source.centers_of(cells)
    t_cols = torch.floor((x - target.x_min) / target.cell_x).long().clamp(0, target.width - 1)
    t_rows = torch.floor((y - target.y_min) / target.cell_y).long().clamp(0, target.height - 1)
    return t_rows * target.width + t_cols


def inside_teacher_grid(student: HeadOutput, teacher: HeadOutput, positions: torch.Tensor) -> torch.Tensor:
    """(n,) True where a student position's cell centre lies on the teacher's grid. A student that sees more than
    its teacher (e.g. all around the car, taught by a front teacher) gets no advice outside the teacher's range:
    clamping such positions to the teacher's border would make it judge boxes at the wrong place."""
    s, t = student.grid, teacher.grid
    if s == t:
        return torch.ones_like(positions, dtype=torch.bool)
    x, y = s.centers_of(s.cell_of_position(positions) if student.head_type == "anchor" else positions)
    return (x >= t.x_min) & (x < t.x_max) & (y >= t.y_min) & (y < t.y_max)


def teacher_positions(student: HeadOutput, teacher: HeadOutput, frame: int, positions: torch.Tensor) -> torch.Tensor:
    """Teacher RPN anchor index for each selected student position of one frame."""
    if teacher.head_type != "anchor":
        raise ValueError("CaKD needs a teacher whose first stage is an anchor head")
    a_t = teacher.grid.positions_per_cell
    if student.head_type == "anchor":
        if student.grid.positions_per_cell != a_t:
            raise ValueError(f"CaKD: student has {student.grid.positions_per_cell} anchors per cell, the teacher "
                             f"{a_t}: the anchor layouts must match")
        if student.grid == teacher.grid:
            return positions
        cells = map_cells(student.grid, teacher.grid, student.grid.cell_of_position(positions))
        return cells * a_t + positions % a_t
    cells = map_cells(student.grid, teacher.grid, positions)  # center head: position = cell
    candidates = cells.unsqueeze(1) * a_t + torch.arange(a_t, device=positions.device)  # (n, A)
    probs = torch.sigmoid(teacher.cls_logits[frame].float()[candidates]).max(dim=-1).values  # (n, A)
    return candidates.gather(1, probs.argmax(dim=1, keepdim=True)).squeeze(1)


def cakd_loss(cls_logits: torch.Tensor, selected: list[torch.Tensor], teacher_logits: list[torch.Tensor],
              weight: float) -> torch.Tensor:
    """w * mean over frames of sum_{a in S_b} (max_c z_{a,c} - t_a)^2 / max(1, |S_b|)."""
    student = cls_logits.float().max(dim=-1).values  # gradient reaches only the argmax class of each position
    loss = cls_logits.new_zeros((), dtype=torch.float32)
    for b, (sel, t) in enumerate(zip(selected, teacher_logits)):
        if sel.numel():
            loss = loss + ((student[b, sel] - t.to(student.dtype)) ** 2).sum() / max(1, sel.numel())
    if not any(sel.numel() for sel in selected):
        return 0.0 * student.sum()  # zero, but in the graph (every frame empty)
    return weight * loss / max(1, len(selected))


class CaKDLoss:
    """LossTerm 'cakd' (no trainable parameters)."""

    name = "cakd"

    def __init__(self, cfg: CaKDConfig, runner: TeacherRunner, student_head: HeadConfig):
        self.cfg, self.runner, self.head = cfg, runner, student_head
        self._last: tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]] | None = None

    def diagnostics(self) -> dict[str, float]:
        """Of the last step: selected positions per frame, mean student max-class logit and mean teacher IoU logit
        over them (the term pulls the first toward the second). Computed only when asked (logged steps)."""
        if self._last is None:
            return {}
        cls_logits, selected, targets = self._last
        count = sum(int(s.numel()) for s in selected)
        out = {"selected_per_frame": count / max(1, len(selected))}
        if count:
            student = torch.cat([cls_logits[b, s].float().max(dim=-1).values for b, s in enumerate(selected)])
            out["student_logit"] = float(student.mean())
            out["teacher_logit"] = float(torch.cat([t.float() for t in targets]).mean())
        return out

    def settings(self, head_type: str) -> tuple[float, float, int]:
        """(weight, score threshold, post-NMS max) for an anchor or center student."""
        c = self.cfg
        if head_type == "anchor":
            return c.weight_anchor, c.score_threshold_anchor, c.post_nms_max_anchor
        return c.weight_center, c.score_threshold_center, c.post_nms_max_center

    def select(self, output: HeadOutput) -> list[torch.Tensor]:
        _, threshold, post_max = self.settings(output.head_type)
        return select_positions(output, self.head, threshold, self.cfg.pre_nms_max, self.cfg.nms_iou, post_max)

    def teacher_targets(self, ctx: LossContext, selected: list[torch.Tensor]) -> list[torch.Tensor]:
        """t_a for the selected positions of every frame."""
        rpn = self.runner.dense_output(ctx.batch)
        head = self.runner.dense.cfg.head
        rois = []
        with torch.no_grad():
            for b, sel in enumerate(selected):
                t_pos = teacher_positions(ctx.output, rpn, b, sel)
                rois.append(decode_positions(rpn, head, b, t_pos).float())
        return self.runner.roi_iou_logits(ctx.batch, rois)

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        weight = self.settings(ctx.output.head_type)[0]
        selected = self.select(ctx.output)
        if any(s.numel() for s in selected):  # only where the teacher sees (its RPN output is cached per batch)
            rpn = self.runner.dense_output(ctx.batch)
            selected = [s[inside_teacher_grid(ctx.output, rpn, s)] for s in selected]
        if not any(s.numel() for s in selected):
            self._last = (ctx.output.cls_logits.detach(), selected, [])
            return cakd_loss(ctx.output.cls_logits, selected, [s.new_zeros(0) for s in selected], weight)
        targets = self.teacher_targets(ctx, selected)
        self._last = (ctx.output.cls_logits.detach(), selected, targets)
        return cakd_loss(ctx.output.cls_logits, selected, targets, weight)


__all__ = ["CaKDLoss", "cakd_loss", "select_positions", "teacher_positions", "map_cells",
           "inside_teacher_grid"]
