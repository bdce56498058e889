"""Two-stage teacher: a one-stage anchor-head RPN (SECOND or PointPillars body, the same anchor layout as the
students since both come from the same anchor config) plus a class-agnostic RoI head.

    model = TwoStageDetector(cfg)                          # cfg: TwoStageConfig
    out = model(voxels, batch_size)                        # TwoStageOutput
    iou_logits, boxes = model.roi_forward(out.rpn, rois, out.voxel_features)   # RoIs from outside (CaKD)
    detections = model.predict(voxels, batch_size)         # list[Detections]

Proposals: RPN decode (clean_ros.inference.postprocess.decode, direction bins applied) -> best class probability per
anchor ->
top proposal_pre_nms -> rotated BEV NMS (class-agnostic) -> top R (train: num_proposals_train, eval: num_rois_test),
padded to R with label -1 / score 0 (padding RoIs are unit boxes at the range origin; they are never reported).
Final score of a refined box (roi_head.score_rule): "iou" (default, the reference teachers): sigmoid(iou_logit), the
predicted IoU quality alone; "sqrt": sqrt(p_rpn * sigmoid(iou_logit)), the geometric mean with the RPN's class
probability of the RoI's class; "product", "rpn". The class is the RPN's either way. Then the RPN's per-class
score thresholds and a rotated BEV NMS at roi_head.final_nms_iou.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from clean_ros.cloud import geometry
from clean_ros.models.detector import Detector, HeadOutput
from clean_ros.models.roi_head import RoIHead, VoxelVolume
from clean_ros.models.sparse import to_dense
from clean_ros.models.two_stage_config import TwoStageConfig
from clean_ros.inference.postprocess import FrameDetections, decode, to_detections
from clean_ros.types import Detections
from clean_ros.inference.voxelize import Voxels

_CLASS_OFFSET = 1.0e4  # BEV shift between classes for class-aware NMS in one call


class Proposals(NamedTuple):
    boxes: torch.Tensor  # (B, R, 7)
    scores: torch.Tensor  # (B, R) RPN probability of `labels`, 0 for padding
    labels: torch.Tensor  # (B, R) int64 class index, -1 for padding

    @property
    def valid(self) -> torch.Tensor:
        return self.labels >= 0


class TwoStageOutput(NamedTuple):
    rpn: HeadOutput
    rois: torch.Tensor  # (B, R, 7)
    roi_labels: torch.Tensor  # (B, R) int64, -1 = padding
    roi_scores: torch.Tensor  # (B, R) RPN class probability
    iou_logits: torch.Tensor  # (B, R) raw IoU-quality logits
    box_residuals: torch.Tensor  # (B, R, 7) w.r.t. rois (geometry.encode_boxes coder)
    refined_boxes: torch.Tensor  # (B, R, 7) = geometry.decode_boxes(box_residuals, rois)
    voxel_features: Optional[VoxelVolume] = None  # what roi_forward needs besides rpn (voxel pooling only)


def _padding_rois(n: int, like: torch.Tensor, origin: tuple[float, float, float]) -> torch.Tensor:
    box = like.new_tensor([origin[0] + 0.5, origin[1] + 0.5, origin[2] + 0.5, 1.0, 1.0, 1.0, 0.0])
    return box.expand(n, 7)


class TwoStageDetector(nn.Module):
    def __init__(self, cfg: TwoStageConfig):
        super().__init__()
        self.cfg = cfg
        self.rpn = Detector(cfg.rpn)
        head = cfg.roi_head
        voxel_channels = None
        if "voxel" in head.pool_sources:
            voxel_channels = self.rpn.backbone_3d.stage_channels[head.voxel_stage]
        self.roi_head = RoIHead(head, self.rpn.bev_backbone.out_channels, voxel_channels)
        # Voxel pooling needs a sparse stage that HeadOutput does not carry. When the RPN runs without gradient
        # (a frozen teacher called as `teacher.rpn(voxels, b)`), remember that stage keyed by the output's BEV tensor,
        # so roi_forward(rpn_output, rois) works without it; nothing is kept while gradients are recorded.
        self._pending_stage = None
        self._stage_cache: tuple[torch.Tensor, object] | None = None
        if voxel_channels is not None:
            self.rpn.backbone_3d.register_forward_hook(self._capture_stage)
            self.rpn.register_forward_hook(self._capture_rpn_output)

    def _capture_stage(self, module, inputs, output) -> None:
        self._pending_stage = None if torch.is_grad_enabled() else output.stages[self.cfg.roi_head.voxel_stage]

    def _capture_rpn_output(self, module, inputs, output) -> None:
        if self._pending_stage is not None:
            self._stage_cache = (output.bev_features, self._pending_stage)
        self._pending_stage = None

    def _cached_volume(self, rpn_output: HeadOutput) -> Optional[VoxelVolume]:
        if self._stage_cache is not None and self._stage_cache[0] is rpn_output.bev_features:
            return self._volume(to_dense(self._stage_cache[1]))
        return None

    # ------------------------------------------------------------------ stages
    def rpn_forward(self, voxels: Voxels, batch_size: int) -> tuple[HeadOutput, Optional[VoxelVolume]]:
        """First stage: the RPN's HeadOutput and (voxel pooling only) the dense sparse stage it pools from."""
        bev_input, sparse_out = self.rpn.encode_with_3d(voxels, batch_size)
        bev = self.rpn.bev_backbone(bev_input)
        maps = self.rpn.head(bev)
        self.rpn._check_grid(bev)
        volume = None
        if "voxel" in self.cfg.roi_head.pool_sources:
            volume = self._volume(to_dense(sparse_out.stages[self.cfg.roi_head.voxel_stage]))
        return self.rpn.head_output(maps, bev), volume

    def _volume(self, dense: torch.Tensor) -> VoxelVolume:
        """Geometry of a dense stage (B, C, D, H, W): a cell spans `stride` voxels from the range's lower corner."""
        rpn = self.cfg.rpn
        nx, ny, nz = rpn.grid_size
        _, _, d, h, w = dense.shape
        stride = 2 ** self.cfg.roi_head.voxel_stage
        vx, vy, vz = rpn.voxel_size
        r = rpn.point_cloud_range
        return VoxelVolume(dense, (r[0], r[1], r[2]), (w * stride * vx, h * stride * vy, d * stride * vz))

    @torch.no_grad()
    def propose(self, rpn_output: HeadOutput, num_rois: Optional[int] = None, pre_nms: Optional[int] = None,
                nms_iou: Optional[float] = None) -> Proposals:
        """RPN boxes -> top-R class-agnostic NMS proposals per frame (defaults follow train / eval mode)."""
        head = self.cfg.roi_head
        training = self.training
        num_rois = num_rois or (head.num_proposals_train if training else head.num_rois_test)
        pre_nms = pre_nms or (head.proposal_pre_nms_train if training else head.proposal_pre_nms_test)
        nms_iou = nms_iou if nms_iou is not None else (head.proposal_nms_iou_train if training
                                                       else head.proposal_nms_iou_test)
        boxes, scores = decode(rpn_output.float32(), self.cfg.rpn.head)
        boxes = torch.cat([boxes[..., :6], geometry.normalize_yaw(boxes[..., 6:7])], dim=-1)
        best, labels = scores.max(dim=-1)
        b = boxes.shape[0]
        out_boxes = _padding_rois(num_rois, boxes, self.cfg.rpn.point_cloud_range[:3]).repeat(b, 1, 1).clone()
        out_scores = boxes.new_zeros((b, num_rois))
        out_labels = torch.full((b, num_rois), -1, dtype=torch.long, device=boxes.device)
        for i in range(b):  # per frame (NMS is per frame)
            top = best[i].topk(min(pre_nms, best.shape[1])).indices
            kept = top[geometry.nms_bev(boxes[i, top], best[i, top], nms_iou, post_max_size=num_rois)]
            n = kept.numel()
            out_boxes[i, :n] = boxes[i, kept]
            out_scores[i, :n] = best[i, kept]
            out_labels[i, :n] = labels[i, kept]
        return Proposals(out_boxes, out_scores, out_labels)

    def second_stage(self, rpn_output: HeadOutput, rois: torch.Tensor,
                     voxel_features: Optional[VoxelVolume] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """RoIs (B, R, 7) -> (iou_logits (B, R), box residuals (B, R, 7)); differentiable."""
        if rois.dim() != 3 or rois.shape[-1] != 7 or rois.shape[0] != rpn_output.batch_size:
            raise ValueError(f"rois must be (B, R, 7) with B = {rpn_output.batch_size}, got {tuple(rois.shape)}")
        rois = rois.to(rpn_output.bev_features.dtype).detach()
        if voxel_features is None and "voxel" in self.cfg.roi_head.pool_sources:
            voxel_features = self._cached_volume(rpn_output)
            if voxel_features is None:
                raise ValueError("this RoI head pools voxel features: pass voxel_features (TwoStageOutput."
                                 "voxel_features / rpn_forward's volume), or run the RPN under torch.no_grad() "
                                 "just before (its sparse stage is then remembered)")
        return self.roi_head(rois, rpn_output.bev_features, rpn_output.grid, voxel_features)

    def roi_forward(self, rpn_output: HeadOutput, rois: torch.Tensor,
                    voxel_features: Optional[VoxelVolume] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-run only the second stage on RoIs given from outside (CaKD): -> (iou_logits (B, R), refined boxes
        (B, R, 7)). Wrap in torch.no_grad() and put the model in eval mode for a frozen teacher."""
        iou_logits, residuals = self.second_stage(rpn_output, rois, voxel_features)
        return iou_logits, geometry.decode_boxes(residuals, rois.to(residuals.dtype))

    def forward(self, voxels: Voxels, batch_size: int) -> TwoStageOutput:
        rpn_output, volume = self.rpn_forward(voxels, batch_size)
        proposals = self.propose(rpn_output)
        iou_logits, residuals = self.second_stage(rpn_output, proposals.boxes, volume)
        refined = geometry.decode_boxes(residuals, proposals.boxes)
        return TwoStageOutput(rpn_output, proposals.boxes, proposals.labels, proposals.scores, iou_logits, residuals,
                              refined, volume)

    # ------------------------------------------------------------------ final detections
    def final_scores(self, roi_scores: torch.Tensor, iou_logits: torch.Tensor) -> torch.Tensor:
        rule = self.cfg.roi_head.score_rule
        quality = torch.sigmoid(iou_logits.float())
        if rule == "sqrt":
            return torch.sqrt(roi_scores.float().clamp(min=0) * quality)
        if rule == "product":
            return roi_scores.float() * quality
        if rule == "iou":
            return quality
        return roi_scores.float()

    @torch.no_grad()
    def select(self, output: TwoStageOutput) -> list[FrameDetections]:
        """TwoStageOutput -> per-frame refined detections (positions = RoI index)."""
        post = self.cfg.rpn.postprocess
        head = self.cfg.roi_head
        scores = self.final_scores(output.roi_scores, output.iou_logits)
        boxes = output.refined_boxes.float()
        boxes = torch.cat([boxes[..., :6], geometry.normalize_yaw(boxes[..., 6:7])], dim=-1)
        thresholds = scores.new_tensor(post.score_thresholds)
        frames = []
        for i in range(boxes.shape[0]):
            labels = output.roi_labels[i]
            keep = (labels >= 0) & (scores[i] >= thresholds[labels.clamp(min=0)])
            idx = keep.nonzero().squeeze(1)
            cand = boxes[i, idx]
            nms_boxes = cand
            if not post.class_agnostic_nms:
                nms_boxes = cand.clone()
                nms_boxes[:, 0] += labels[idx].to(cand.dtype) * _CLASS_OFFSET
            kept = idx[geometry.nms_bev(nms_boxes, scores[i, idx], head.final_nms_iou,
                                        post_max_size=head.final_post_max)]
            frames.append(FrameDetections(boxes[i, kept], scores[i, kept], labels[kept], kept))
        return frames

    @torch.no_grad()
    def predict(self, voxels: Voxels, batch_size: int) -> list[Detections]:
        """Final (second-stage, post-NMS) detections per frame; eval mode for the call, the mode is restored."""
        was_training = self.training
        self.eval()
        try:
            frames = self.select(self(voxels, batch_size))
        finally:
            self.train(was_training)
        return [to_detections(f, self.cfg.rpn.class_names) for f in frames]


def build_two_stage(cfg: TwoStageConfig) -> TwoStageDetector:
    return TwoStageDetector(cfg)


__all__ = ["TwoStageDetector", "TwoStageOutput", "Proposals", "build_two_stage"]
