"""Dataclass configs of the two-stage teacher (clean_ros.models.two_stage): its RPN is any one-stage
DetectorConfig (clean_ros.models.detector_config) with an anchor head, plus the RoI head (clean_ros.models.roi_head) and
the second stage's losses."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from clean_ros.yaml_config import load_config
from clean_ros.models.detector_config import DetectorConfig
from clean_ros.models.sparse_layout import SPARSE_NUM_STAGES


@dataclass
class RoILossConfig:
    """Second-stage losses: BCE on the IoU-quality logit over the sampled RoIs, smooth-L1 on the box residual over
    the RoIs whose IoU with their ground truth exceeds roi_head.reg_fg_threshold."""

    iou_weight: float = 1.0
    box_weight: float = 1.0
    smooth_l1_beta: float = 1.0 / 9.0
    code_weights: list[float] = field(default_factory=list)  # 7 values, empty = all 1


@dataclass
class RoIHeadConfig:
    """Class-agnostic RoI head of the two-stage teacher (clean_ros.models.roi_head).

    Pooling: `pool_sources` any of
      bev   - bilinear samples of the RPN's BEV feature map at a bev_grid_size x bev_grid_size grid in the rotated RoI;
      voxel - trilinear samples of a sparse 3D stage (voxel_stage, densified) at a voxel_grid_size^3 grid in the 3D RoI.
    Each source's samples go through a point-wise linear (point_width) + BN + ReLU, are flattened and concatenated,
    then a shared MLP (mlp_widths, BN + ReLU, dropout) feeds two linear outputs: the IoU-quality logit and the
    7-dof residual of the box w.r.t. its RoI (geometry.encode_boxes coder).
    Proposals: RPN decode -> best class score -> top proposal_pre_nms -> rotated BEV NMS at proposal_nms_iou -> top
    num_proposals. Training samples num_rois_train of them per frame (fg_fraction at IoU >= reg_fg_threshold with
    the same-class ground truth, background split hard [hard_bg_threshold, reg_fg_threshold) / easy by
    hard_bg_fraction); IoU-quality target 0 below iou_bg_threshold, 1 above iou_fg_threshold, linear between.
    gt_rois_train adds that many jittered copies of every ground-truth box to the proposals during training
    (the second stage sees well-placed RoIs from the first step, before the RPN is good).
    Final score (score_rule): iou = sigmoid(iou) (the reference two-stage teachers, default); sqrt =
    sqrt(p_rpn * sigmoid(iou)) (this package's rule before issue 13; stored teacher configs that name it keep it);
    product = p_rpn * sigmoid(iou); rpn = p_rpn. Final NMS: rotated BEV at final_nms_iou, keep final_post_max.
    """

    pool_sources: list[Literal["bev", "voxel"]] = field(default_factory=lambda: ["bev"])
    bev_grid_size: int = 6
    voxel_grid_size: int = 6
    voxel_stage: int = 3  # index into the sparse backbone's stages (3 = stride 8)
    point_width: int = 32
    mlp_widths: list[int] = field(default_factory=lambda: [256, 256])
    dropout: float = 0.3
    proposal_pre_nms_train: int = 9000
    proposal_pre_nms_test: int = 1024
    proposal_nms_iou_train: float = 0.8
    proposal_nms_iou_test: float = 0.7
    num_proposals_train: int = 512
    num_rois_train: int = 128
    num_rois_test: int = 100
    fg_fraction: float = 0.5
    reg_fg_threshold: float = 0.55
    iou_fg_threshold: float = 0.75
    iou_bg_threshold: float = 0.25
    hard_bg_threshold: float = 0.1
    hard_bg_fraction: float = 0.8
    gt_rois_train: int = 0
    gt_jitter: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.15, 0.1, 0.1, 0.1, 0.15])  # x..yaw std
    score_rule: Literal["iou", "sqrt", "product", "rpn"] = "iou"
    final_nms_iou: float = 0.1
    final_post_max: int = 100
    loss: RoILossConfig = field(default_factory=RoILossConfig)

    def __post_init__(self):
        if not self.pool_sources or len(set(self.pool_sources)) != len(self.pool_sources):
            raise ValueError(f"roi_head.pool_sources must list 'bev' and/or 'voxel' once each, got {self.pool_sources}")
        if min(self.bev_grid_size, self.voxel_grid_size, self.point_width) < 1 or any(w < 1 for w in self.mlp_widths):
            raise ValueError("roi_head: grid sizes, point_width and mlp_widths must be >= 1")
        for key in ("num_proposals_train", "num_rois_train", "num_rois_test", "proposal_pre_nms_train",
                    "proposal_pre_nms_test"):
            if getattr(self, key) < 1:
                raise ValueError(f"roi_head.{key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.iou_bg_threshold < self.iou_fg_threshold <= 1.0:
            raise ValueError(f"roi_head: need 0 <= iou_bg_threshold < iou_fg_threshold <= 1, got "
                             f"{self.iou_bg_threshold}, {self.iou_fg_threshold}")
        if not 0.0 <= self.hard_bg_threshold <= self.reg_fg_threshold <= 1.0:
            raise ValueError("roi_head: need 0 <= hard_bg_threshold <= reg_fg_threshold <= 1")
        for key in ("fg_fraction", "hard_bg_fraction", "dropout"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"roi_head.{key} must be in [0, 1], got {getattr(self, key)}")
        if len(self.gt_jitter) != 7 or self.gt_rois_train < 0:
            raise ValueError("roi_head: gt_jitter needs 7 standard deviations and gt_rois_train must be >= 0")
        if self.loss.code_weights and len(self.loss.code_weights) != 7:
            raise ValueError("roi_head.loss.code_weights needs 7 values (or none)")


@dataclass
class TwoStageConfig:
    """Two-stage teacher: a one-stage anchor-head RPN (any DetectorConfig, same anchor layout as the students) plus
    the RoI head. The data-facing values (range, voxels, classes) are the RPN's."""

    rpn: DetectorConfig
    roi_head: RoIHeadConfig = field(default_factory=RoIHeadConfig)
    name: str = "two_stage"

    def __post_init__(self):
        if self.rpn.head.type != "anchor":
            raise ValueError(f"two-stage: the RPN needs an anchor head (same anchor layout as the students), got "
                             f"head.type={self.rpn.head.type!r}")
        if "voxel" in self.roi_head.pool_sources:
            if self.rpn.backbone_3d.type != "sparse":
                raise ValueError("roi_head.pool_sources 'voxel' needs an RPN with backbone_3d.type=sparse")
            if not 0 <= self.roi_head.voxel_stage < SPARSE_NUM_STAGES:
                raise ValueError(f"roi_head.voxel_stage must be in [0, {SPARSE_NUM_STAGES - 1}]")

    # Data-facing values follow the RPN (so a Collator or evaluation can take this config directly).
    @property
    def class_names(self) -> list[str]:
        return self.rpn.class_names

    @property
    def num_classes(self) -> int:
        return self.rpn.num_classes

    @property
    def point_cloud_range(self) -> list[float]:
        return self.rpn.point_cloud_range

    @property
    def voxel_size(self) -> list[float]:
        return self.rpn.voxel_size

    @property
    def num_point_features(self) -> int:
        return self.rpn.num_point_features

    @property
    def max_points_per_voxel(self) -> int:
        return self.rpn.max_points_per_voxel

    @property
    def max_voxels_train(self) -> int:
        return self.rpn.max_voxels_train

    @property
    def max_voxels_test(self) -> int:
        return self.rpn.max_voxels_test


def load_two_stage_config(path: str | Path, overrides: Iterable[str] = ()) -> TwoStageConfig:
    return load_config(TwoStageConfig, path, overrides)


__all__ = ["RoILossConfig", "RoIHeadConfig", "TwoStageConfig", "load_two_stage_config"]
