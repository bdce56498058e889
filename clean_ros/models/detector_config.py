"""Dataclass configs of a whole one-stage detector (loaded through clean_ros.yaml_config).

Every layer width is an explicit list, so a physically pruned network (arbitrary per-layer widths, including
the conv inside every block and every deblock) is rebuilt from its saved config alone.

The schema is what a bundle stores (docs/BUNDLE.md "Config schema"). It deliberately keeps the few training-only
settings of a model (LossConfig, the anchors' matching thresholds, the center head's target settings,
max_voxels_train): the runtime never reads them. The sparse backbone's shape arithmetic lives with its layout in
clean_ros.models.sparse_layout; the two-stage teacher's configs in clean_ros.models.two_stage_config; the source
tree's YAML folder lookup (find_config) in training.config_paths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from clean_ros.yaml_config import load_config
from clean_ros.models.sparse_layout import SPARSE_NUM_STAGES, output_shape, stage_shapes
from clean_ros.inference.voxelize import grid_size as voxel_grid_size
# The post-processing settings live with their one validator (re-exported here: the config schema uses them).
from clean_ros.inference.postprocess_settings import IoUGateConfig, PostProcessConfig, check_postprocess


@dataclass
class EncoderConfig:
    """Point / voxel encoder.

    pillar: PointNet over the points of a pillar. widths = output width of each linear layer; layers before
    the last feed [per-point features ; pillar max] (2 * width) to the next.
    mean_vfe: mean of the points of a voxel (no weights; widths unused), for the sparse backbone.
    """

    type: Literal["pillar", "mean_vfe"] = "pillar"
    widths: list[int] = field(default_factory=lambda: [64])
    with_distance: bool = False

    def __post_init__(self):
        if self.type == "pillar" and (not self.widths or min(self.widths) < 1):
            raise ValueError(f"encoder.widths must be a non-empty list of positive ints, got {self.widths}")


@dataclass
class Backbone3DConfig:
    """Sparse 3D backbone. 'none' = pillars scattered straight to BEV; 'sparse' = SECOND (mean VFE input).

    widths: one list per stage (4 stages), one entry per conv, so a pruned network is rebuilt from its config:
      widths[0] = [input SubM conv, SubM convs of stage 1 ...]; widths[i > 0] = [strided SparseConv3d, SubM convs ...].
    out_width: width of the final z-downsampling conv (0 = no such conv; the last stage's output goes to BEV).
    z_padding: voxel layers added above the grid (SECOND adds 1: 41 layers of 0.1 m give depth D = 2 at stride 8).
    The BEV input has out_channels * D channels, channel index c * D + d (c = 3D channel, d = depth index).
    Shapes per stage: clean_ros.models.sparse_layout.stage_shapes(cfg, grid_size) / output_shape(cfg, grid_size).
    """

    type: Literal["none", "sparse"] = "none"
    widths: list[list[int]] = field(default_factory=list)
    out_width: int = 128
    z_padding: int = 1

    def __post_init__(self):
        if self.type != "sparse":
            return
        if len(self.widths) != SPARSE_NUM_STAGES or any(len(w) < 1 for w in self.widths):
            raise ValueError(f"backbone_3d.widths needs {SPARSE_NUM_STAGES} non-empty lists (one width per conv of "
                             f"each stage), got {self.widths}")
        if min(min(w) for w in self.widths) < 1 or self.out_width < 0 or self.z_padding < 0:
            raise ValueError(f"backbone_3d: widths must be >= 1 and out_width, z_padding >= 0 "
                             f"(widths {self.widths}, out_width {self.out_width}, z_padding {self.z_padding})")

    @property
    def out_channels(self) -> int:
        return self.out_width if self.out_width else self.widths[-1][-1]


@dataclass
class BEVBackboneConfig:
    """2D BEV backbone: blocks of conv-BN-ReLU, then deblocks whose outputs are concatenated.

    Block i = one stride-`layer_strides[i]` conv followed by `layer_nums[i]` stride-1 convs, so it has
    layer_nums[i] + 1 convs; `layer_widths[i]` lists their output widths. If `layer_widths` is left empty it
    is filled from `num_filters` (every conv of block i gets num_filters[i]); afterwards num_filters[i] is
    always the block's output width (layer_widths[i][-1]).
    upsample_strides[i] >= 1: transposed conv (kernel = stride); < 1: strided conv with stride 1/s.
    """

    layer_nums: list[int] = field(default_factory=lambda: [3, 5, 5])
    layer_strides: list[int] = field(default_factory=lambda: [2, 2, 2])
    num_filters: list[int] = field(default_factory=lambda: [64, 128, 256])
    layer_widths: list[list[int]] = field(default_factory=list)
    upsample_strides: list[float] = field(default_factory=lambda: [1, 2, 4])
    num_upsample_filters: list[int] = field(default_factory=lambda: [128, 128, 128])

    def __post_init__(self):
        n = len(self.layer_nums)
        if len(self.layer_strides) != n:
            raise ValueError(f"bev_backbone: layer_strides has {len(self.layer_strides)} entries, layer_nums {n}")
        if not self.layer_widths:
            if len(self.num_filters) != n:
                raise ValueError(f"bev_backbone: num_filters has {len(self.num_filters)} entries, layer_nums {n}")
            self.layer_widths = [[w] * (k + 1) for w, k in zip(self.num_filters, self.layer_nums)]
        if len(self.layer_widths) != n:
            raise ValueError(f"bev_backbone: layer_widths has {len(self.layer_widths)} blocks, layer_nums {n}")
        for i, (widths, k) in enumerate(zip(self.layer_widths, self.layer_nums)):
            if len(widths) != k + 1:
                raise ValueError(f"bev_backbone: layer_widths[{i}] needs {k + 1} widths (layer_nums[{i}] + 1), "
                                 f"got {len(widths)}")
            if min(widths) < 1:
                raise ValueError(f"bev_backbone: layer_widths[{i}] has a width < 1: {widths}")
        self.num_filters = [w[-1] for w in self.layer_widths]
        if len(self.upsample_strides) != len(self.num_upsample_filters):
            raise ValueError("bev_backbone: upsample_strides and num_upsample_filters differ in length")
        if self.upsample_strides and len(self.upsample_strides) != n:
            raise ValueError(f"bev_backbone: {len(self.upsample_strides)} deblocks for {n} blocks")
        if self.upsample_strides:
            strides = {self.block_stride(i) / s for i, s in enumerate(self.upsample_strides)}
            if len(strides) != 1:
                raise ValueError(f"bev_backbone: deblock outputs have different strides {sorted(strides)}")

    def block_stride(self, i: int) -> int:
        return math.prod(self.layer_strides[: i + 1])

    @property
    def out_stride(self) -> float:
        """Stride of the concatenated output w.r.t. the BEV input grid."""
        if not self.upsample_strides:
            return float(self.block_stride(len(self.layer_nums) - 1))
        return self.block_stride(0) / self.upsample_strides[0]

    @property
    def out_channels(self) -> int:
        return sum(self.num_upsample_filters) if self.num_upsample_filters else self.layer_widths[-1][-1]


@dataclass
class AnchorClassConfig:
    """Anchors of one class: size (l, w, h), bottom z, rotations, matching IoU thresholds (BEV; training only)."""

    name: str
    size: list[float]
    bottom_z: float
    rotations: list[float] = field(default_factory=lambda: [0.0, 1.5707963])
    matched_threshold: float = 0.6
    unmatched_threshold: float = 0.45

    def __post_init__(self):
        if len(self.size) != 3 or min(self.size) <= 0:
            raise ValueError(f"anchor {self.name}: size must be 3 positive numbers (l, w, h), got {self.size}")
        if not self.rotations:
            raise ValueError(f"anchor {self.name}: rotations must not be empty")
        if self.unmatched_threshold > self.matched_threshold:
            raise ValueError(f"anchor {self.name}: unmatched_threshold {self.unmatched_threshold} > "
                             f"matched_threshold {self.matched_threshold}")


@dataclass
class LossConfig:
    """Loss weights. Anchor head: cls, box, dir, iou. Center head: heatmap, reg, iou.

    Training only (the runtime never reads it); kept in the schema so a bundle's model trains on with the same
    loss (docs/BUNDLE.md "Config schema")."""

    cls_weight: float = 1.0
    box_weight: float = 2.0
    dir_weight: float = 0.2
    iou_weight: float = 1.0
    heatmap_weight: float = 1.0
    reg_weight: float = 0.25
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    smooth_l1_beta: float = 1.0 / 9.0
    code_weights: list[float] = field(default_factory=list)  # per regression channel, empty = all 1
    # Anchor head's IoU branch (docs/DISTILL.md "IoU-aware redundancy elimination"; the center head keeps METHOD.md
    # section 5's): target = 3D / BEV IoU of the predicted box with its assigned box at positives, or the anchor's
    # own IoU (training/targets.py); loss = balanced positives / negatives or over all positions (training/losses.py)
    iou_target: Literal["predicted", "predicted_bev", "anchor"] = "predicted"
    iou_loss: Literal["balanced", "all_positions"] = "balanced"


@dataclass
class HeadConfig:
    """Detection head. anchor: per-class anchors; center: class heatmap + regression heads."""

    type: Literal["anchor", "center"] = "anchor"
    anchors: list[AnchorClassConfig] = field(default_factory=list)
    # IoU that matches anchors to boxes in training (training/targets.py): nearest axis-aligned BEV IoU (the
    # reference detectors') or exact rotated BEV IoU (this package's before issue 13). Training only.
    anchor_matching: Literal["nearest_bev", "rotated_bev"] = "nearest_bev"
    iou_branch: bool = False
    num_dir_bins: int = 2
    dir_offset: float = 0.78539
    dir_limit_offset: float = 0.0
    # center head (gaussian_overlap, min_radius, max_objects: training targets only)
    shared_conv_width: int = 64
    head_conv_width: int = 64
    gaussian_overlap: float = 0.1
    min_radius: int = 2
    max_objects: int = 500
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class DetectorConfig:
    name: str = "detector"
    class_names: list[str] = field(default_factory=lambda: ["Car", "Pedestrian", "Cyclist"])
    point_cloud_range: list[float] = field(default_factory=lambda: [0.0, -39.68, -3.0, 69.12, 39.68, 1.0])
    voxel_size: list[float] = field(default_factory=lambda: [0.16, 0.16, 4.0])
    num_point_features: int = 4
    max_points_per_voxel: int = 32
    max_voxels_train: int = 16000
    max_voxels_test: int = 40000
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    backbone_3d: Backbone3DConfig = field(default_factory=Backbone3DConfig)
    bev_backbone: BEVBackboneConfig = field(default_factory=BEVBackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    postprocess: PostProcessConfig = field(default_factory=PostProcessConfig)

    def __post_init__(self):
        if len(self.point_cloud_range) != 6 or len(self.voxel_size) != 3:
            raise ValueError("point_cloud_range needs 6 values and voxel_size 3")
        num_classes = len(self.class_names)
        if num_classes == 0:
            raise ValueError("class_names must not be empty")
        if self.head.type == "anchor":
            names = [a.name for a in self.head.anchors]
            if names != list(self.class_names):
                raise ValueError(f"head.anchors must list one entry per class in class_names order "
                                 f"{list(self.class_names)}, got {names}")
        try:
            check_postprocess(self.postprocess, self.class_names, self.head.iou_branch)
        except ValueError as error:
            raise ValueError(f"postprocess: {error}") from None
        if self.encoder.type == "mean_vfe" and self.backbone_3d.type != "sparse":
            raise ValueError("encoder.type=mean_vfe needs backbone_3d.type=sparse")
        grid = self.grid_size
        stride = self.bev_backbone.block_stride(len(self.bev_backbone.layer_nums) - 1)
        if self.backbone_3d.type == "none" and (grid[0] % stride or grid[1] % stride):
            raise ValueError(f"BEV grid {grid[0]}x{grid[1]} is not divisible by the backbone stride {stride}; "
                             f"adjust point_cloud_range or voxel_size")
        if self.backbone_3d.type == "sparse":
            if self.encoder.type != "mean_vfe":
                raise ValueError("backbone_3d.type=sparse needs encoder.type=mean_vfe")
            depth, height, width = output_shape(self.backbone_3d, grid)
            if depth < 1:
                raise ValueError(f"backbone_3d: {grid[2]} + {self.backbone_3d.z_padding} voxel layers in z leave no "
                                 f"depth at the sparse output (stage shapes {stage_shapes(self.backbone_3d, grid)}); "
                                 f"use a finer voxel_size[2], a larger z_padding or out_width 0")
            if height % stride or width % stride:
                raise ValueError(f"sparse output {width}x{height} (x, y) is not divisible by the BEV backbone stride "
                                 f"{stride}; adjust point_cloud_range or voxel_size")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """(nx, ny, nz) voxels over the range."""
        return voxel_grid_size(self.point_cloud_range, self.voxel_size)

    @property
    def bev_input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the BEV canvas the 2D backbone reads (sparse: height-compressed, C = channels * D)."""
        nx, ny, _ = self.grid_size
        if self.backbone_3d.type == "sparse":
            depth, height, width = output_shape(self.backbone_3d, self.grid_size)
            return self.backbone_3d.out_channels * depth, height, width
        width = self.encoder.widths[-1] if self.encoder.type == "pillar" else self.num_point_features
        return width, ny, nx

    @property
    def feature_map_stride(self) -> float:
        """Stride of the head's feature map w.r.t. the voxel grid (x; sparse backbone stride 8 included)."""
        nx = self.grid_size[0]
        return self.bev_backbone.out_stride * nx / self.bev_input_shape[2]

    @property
    def feature_map_size(self) -> tuple[int, int]:
        """(H, W) = (ny, nx) of the head's feature map."""
        _, height, width = self.bev_input_shape
        s = self.bev_backbone.out_stride
        return int(round(height / s)), int(round(width / s))


def load_detector_config(path: str | Path, overrides: Iterable[str] = ()) -> DetectorConfig:
    return load_config(DetectorConfig, path, overrides)


__all__ = ["EncoderConfig", "Backbone3DConfig", "BEVBackboneConfig", "AnchorClassConfig", "LossConfig",
           "HeadConfig", "IoUGateConfig", "PostProcessConfig", "DetectorConfig", "load_detector_config"]
