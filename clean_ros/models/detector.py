"""One-stage detector assembled from a DetectorConfig, and the typed HeadOutput every later stage reads.

Two entry points:
- forward(voxels, batch_size) -> HeadOutput: the training / evaluation path (encoder + scatter, or mean VFE + sparse
  3D backbone + height compression (BEV channel c * D + d, clean_ros.models.sparse_backbone), inside).
- forward_dense(bev_input) -> tuple of raw head maps: the dense part (BEV backbone + head) with only
  ONNX-expressible ops; `encode(voxels, batch_size)` produces its input and `head_output(maps, bev)` turns its
  output into a HeadOutput. Pre/post-processing stay outside the exported graph.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from clean_ros.models.anchor_head import AnchorHead, flatten_anchor_map
from clean_ros.models.anchors import FeatureGrid, feature_grid, generate_anchors
from clean_ros.models.bev_backbone import BEVBackbone
from clean_ros.models.center_head import CenterHead
from clean_ros.models.detector_config import DetectorConfig
from clean_ros.models.pillar import PillarFeatureNet, PillarScatter
from clean_ros.models.sparse_backbone import SparseBackbone3D, SparseBackboneOutput
from clean_ros.models.vfe import MeanVFE
from clean_ros.inference.voxelize import PointVoxels, Voxels, as_padded


class HeadOutput(NamedTuple):
    """Dense per-position predictions of one batch (see clean_ros.models.anchors for the position layout).

    cls_logits: (B, P, C) raw class logits (distillation and pruning read these).
    box_preds: anchor head (B, P, 7) residuals w.r.t. `anchors` (geometry.encode_boxes coder);
        center head (B, P, 8) per pixel: offset x, y (cells), z (m), log l, w, h, sin yaw, cos yaw.
    dir_logits: (B, P, num_dir_bins) anchor head, else None.
    iou_logits: (B, P) raw IoU-quality logits when the head has an IoU branch, else None.
    anchors: (P, 7) anchor head, else None; anchor_classes: (P,) class index of each anchor, else None.
    grid: FeatureGrid of the head's map (P = grid.num_positions).
    bev_features: (B, C_bev, H, W) BEV backbone output (feature KD).
    head_type: "anchor" | "center".
    """

    cls_logits: torch.Tensor
    box_preds: torch.Tensor
    dir_logits: Optional[torch.Tensor]
    iou_logits: Optional[torch.Tensor]
    anchors: Optional[torch.Tensor]
    anchor_classes: Optional[torch.Tensor]
    grid: FeatureGrid
    bev_features: torch.Tensor
    head_type: str

    @property
    def batch_size(self) -> int:
        return self.cls_logits.shape[0]

    @property
    def num_positions(self) -> int:
        return self.cls_logits.shape[1]

    def float32(self) -> "HeadOutput":
        """The predictions (logits and box regressions) in float32, for losses and decoding also when the forward
        ran under autocast; already-float32 tensors are returned as they are."""
        def f(t):
            return t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        return self._replace(cls_logits=f(self.cls_logits), box_preds=f(self.box_preds),
                             dir_logits=f(self.dir_logits), iou_logits=f(self.iou_logits))


class Detector(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.cfg = cfg
        nx, ny, _ = cfg.grid_size
        if cfg.encoder.type == "pillar":
            self.encoder = PillarFeatureNet(cfg.num_point_features, cfg.encoder.widths, cfg.voxel_size,
                                            cfg.point_cloud_range, cfg.encoder.with_distance)
        else:
            self.encoder = MeanVFE(cfg.num_point_features)
        if cfg.backbone_3d.type == "sparse":
            self.scatter = None
            self.backbone_3d = SparseBackbone3D(cfg.backbone_3d, self.encoder.out_channels, cfg.grid_size)
            bev_channels = self.backbone_3d.bev_channels
        else:
            self.scatter = PillarScatter(nx, ny)
            self.backbone_3d = None
            bev_channels = self.encoder.out_channels
        self.bev_backbone = BEVBackbone(cfg.bev_backbone, bev_channels)
        self.grid = feature_grid(cfg)
        head = cfg.head
        if head.type == "anchor":
            self.head = AnchorHead(self.bev_backbone.out_channels, cfg.num_classes, self.grid.positions_per_cell,
                                   head.num_dir_bins, head.iou_branch)
            anchors, anchor_classes = generate_anchors(self.grid, head.anchors)
            # Derived from the config: not part of the state dict.
            self.register_buffer("anchors", anchors, persistent=False)
            self.register_buffer("anchor_classes", anchor_classes, persistent=False)
        else:
            self.head = CenterHead(self.bev_backbone.out_channels, cfg.num_classes, head.shared_conv_width,
                                   head.head_conv_width, head.iou_branch)
            self.anchors = None
            self.anchor_classes = None

    @property
    def dense_output_names(self) -> tuple[str, ...]:
        return self.head.output_names

    def dense_module(self) -> "DenseDetector":
        """nn.Module wrapping forward_dense (shares this detector's weights), for export."""
        return DenseDetector(self)

    def encode(self, voxels: Voxels | PointVoxels, batch_size: int) -> torch.Tensor:
        """Voxels -> BEV input canvas (B, C_enc, ny, nx); sparse backbone: (B, C * D, H, W) at stride 8."""
        return self.encode_with_3d(voxels, batch_size)[0]

    def encode_with_3d(self, voxels: Voxels | PointVoxels, batch_size: int
                       ) -> tuple[torch.Tensor, Optional[SparseBackboneOutput]]:
        """(BEV input canvas, the sparse backbone's stage outputs or None for pillars); the RoI head reads both.
        Either voxel layout: the pillar encoder reads PointVoxels as they are, other encoders get them padded."""
        if isinstance(voxels, PointVoxels) and isinstance(self.encoder, PillarFeatureNet):
            features = self.encoder.forward_point_voxels(voxels)
        else:
            voxels = as_padded(voxels)
            features = self.encoder(voxels.features, voxels.num_points, voxels.coords)
        if self.backbone_3d is None:
            return self.scatter(features, voxels.coords, batch_size), None
        out = self.backbone_3d(features, voxels.coords, batch_size)
        return out.bev, out

    def forward_dense(self, bev_input: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """BEV canvas -> raw head maps (names in dense_output_names). ONNX-exportable."""
        return self.head(self.bev_backbone(bev_input))

    def head_output(self, maps: tuple[torch.Tensor, ...], bev_features: torch.Tensor) -> HeadOutput:
        named = dict(zip(self.head.output_names, maps))
        iou = named.get("iou")
        if self.cfg.head.type == "anchor":
            c = self.cfg.num_classes
            return HeadOutput(
                cls_logits=flatten_anchor_map(named["cls"], c),
                box_preds=flatten_anchor_map(named["box"], 7),
                dir_logits=flatten_anchor_map(named["dir"], self.cfg.head.num_dir_bins) if "dir" in named else None,
                iou_logits=flatten_anchor_map(iou, 1).squeeze(2) if iou is not None else None,
                anchors=self.anchors, anchor_classes=self.anchor_classes, grid=self.grid,
                bev_features=bev_features, head_type="anchor")
        regression = torch.cat([named["offset"], named["z"], named["size"], named["rot"]], dim=1)
        return HeadOutput(
            cls_logits=flatten_anchor_map(named["heatmap"], self.cfg.num_classes),
            box_preds=flatten_anchor_map(regression, regression.shape[1]),
            dir_logits=None, iou_logits=flatten_anchor_map(iou, 1).squeeze(2) if iou is not None else None,
            anchors=None, anchor_classes=None, grid=self.grid, bev_features=bev_features, head_type="center")

    def forward(self, voxels: Voxels, batch_size: int) -> HeadOutput:
        bev_input = self.encode(voxels, batch_size)
        bev_features = self.bev_backbone(bev_input)
        maps = self.head(bev_features)
        self._check_grid(bev_features)
        return self.head_output(maps, bev_features)

    def _check_grid(self, bev_features: torch.Tensor) -> None:
        if tuple(bev_features.shape[2:]) != (self.grid.height, self.grid.width):
            raise RuntimeError(f"feature map {tuple(bev_features.shape[2:])} does not match the anchor grid "
                               f"{(self.grid.height, self.grid.width)}: check bev_backbone strides")


class DenseDetector(nn.Module):
    """The exportable dense part of a Detector as its own module: forward(bev_input) -> raw head maps."""

    def __init__(self, detector: Detector):
        super().__init__()
        self.detector = detector
        self.output_names = detector.dense_output_names
        self.train(detector.training)  # a fresh Module is in training mode; keep the detector's mode

    def forward(self, bev_input: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.detector.forward_dense(bev_input)


def build_detector(cfg: DetectorConfig) -> Detector:
    return Detector(cfg)
