"""Dataclass configs of a whole one-stage detector (loaded through clean_ros.config).

Every layer width is an explicit list, so a physically pruned network (arbitrary per-layer widths, including
the conv inside every block and every deblock) is rebuilt from its saved config alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from clean_ros.config import load_config
from clean_ros.voxelize import grid_size as voxel_grid_size


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


# SECOND's fixed sparse layout (clean_ros.models.sparse_backbone): stage i > 0 opens with a kernel-3, stride-2
# SparseConv3d padded (1, 1, 1), except the last stage, padded (0, 1, 1) in (z, y, x); the output conv has kernel
# (3, 1, 1), stride (2, 1, 1), no padding (it only shrinks z).
SPARSE_NUM_STAGES = 4


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@dataclass
class Backbone3DConfig:
    """Sparse 3D backbone. 'none' = pillars scattered straight to BEV; 'sparse' = SECOND (mean VFE input).

    widths: one list per stage (4 stages), one entry per conv, so a pruned network is rebuilt from its config:
      widths[0] = [input SubM conv, SubM convs of stage 1 ...]; widths[i > 0] = [strided SparseConv3d, SubM convs ...].
    out_width: width of the final z-downsampling conv (0 = no such conv; the last stage's output goes to BEV).
    z_padding: voxel layers added above the grid (SECOND adds 1: 41 layers of 0.1 m give depth D = 2 at stride 8).
    The BEV input has out_channels * D channels, channel index c * D + d (c = 3D channel, d = depth index).
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

    def stage_shapes(self, grid_size: tuple[int, int, int]) -> list[tuple[int, int, int]]:
        """(z, y, x) extent of each stage's output (and of the output conv, last) for a voxel grid (nx, ny, nz)."""
        nx, ny, nz = grid_size
        shape = (nz + self.z_padding, ny, nx)
        shapes = [shape]
        for stage in range(1, SPARSE_NUM_STAGES):
            z_pad = 0 if stage == SPARSE_NUM_STAGES - 1 else 1
            shape = (_conv_out(shape[0], 3, 2, z_pad), _conv_out(shape[1], 3, 2, 1), _conv_out(shape[2], 3, 2, 1))
            shapes.append(shape)
        if self.out_width:
            shapes.append((_conv_out(shape[0], 3, 2, 0), shape[1], shape[2]))
        return shapes

    def output_shape(self, grid_size: tuple[int, int, int]) -> tuple[int, int, int]:
        """(D, H, W) of the dense 3D output that is height-compressed to BEV."""
        return self.stage_shapes(grid_size)[-1]


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
    """Anchors of one class: size (l, w, h), bottom z, rotations, matching IoU thresholds (BEV)."""

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
    """Loss weights. Anchor head: cls, box, dir, iou. Center head: heatmap, reg, iou."""

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


@dataclass
class HeadConfig:
    """Detection head. anchor: per-class anchors; center: class heatmap + regression heads."""

    type: Literal["anchor", "center"] = "anchor"
    anchors: list[AnchorClassConfig] = field(default_factory=list)
    iou_branch: bool = False
    num_dir_bins: int = 2
    dir_offset: float = 0.78539
    dir_limit_offset: float = 0.0
    # center head
    shared_conv_width: int = 64
    head_conv_width: int = 64
    gaussian_overlap: float = 0.1
    min_radius: int = 2
    max_objects: int = 500
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class IoUGateConfig:
    """IoU-aware rescoring. hard: s * 1[sigmoid(u) > threshold_c]; soft: s^(1-alpha_c) * sigmoid(u)^alpha_c."""

    mode: Literal["none", "hard", "soft"] = "none"
    thresholds: list[float] = field(default_factory=lambda: [0.5, 0.2, 0.2])
    alphas: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass
class PostProcessConfig:
    score_thresholds: list[float] = field(default_factory=lambda: [0.1, 0.1, 0.1])
    nms_iou: float = 0.01
    nms_pre_max: int = 4096
    nms_post_max: int = 500
    class_agnostic_nms: bool = True
    peak_kernel: int = 3  # center head: max-pool window of the peak extraction
    iou_gate: IoUGateConfig = field(default_factory=IoUGateConfig)


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
        for key in ("score_thresholds",):
            if len(getattr(self.postprocess, key)) != num_classes:
                raise ValueError(f"postprocess.{key} needs {num_classes} values (one per class)")
        gate = self.postprocess.iou_gate
        if gate.mode != "none" and not self.head.iou_branch:
            raise ValueError(f"postprocess.iou_gate.mode={gate.mode!r} needs head.iou_branch=true")
        if gate.mode == "hard" and len(gate.thresholds) != num_classes:
            raise ValueError(f"postprocess.iou_gate.thresholds needs {num_classes} values")
        if gate.mode == "soft" and len(gate.alphas) != num_classes:
            raise ValueError(f"postprocess.iou_gate.alphas needs {num_classes} values")
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
            depth, height, width = self.backbone_3d.output_shape(grid)
            if depth < 1:
                raise ValueError(f"backbone_3d: {grid[2]} + {self.backbone_3d.z_padding} voxel layers in z leave no "
                                 f"depth at the sparse output (stage shapes {self.backbone_3d.stage_shapes(grid)}); "
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
            depth, height, width = self.backbone_3d.output_shape(self.grid_size)
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
    Final score (score_rule): sqrt = sqrt(p_rpn * sigmoid(iou)); product = p_rpn * sigmoid(iou); iou = sigmoid(iou);
    rpn = p_rpn. Final NMS: rotated BEV at final_nms_iou, keep final_post_max.
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
    score_rule: Literal["sqrt", "product", "iou", "rpn"] = "sqrt"
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


def load_detector_config(path: str | Path, overrides: Iterable[str] = ()) -> DetectorConfig:
    return load_config(DetectorConfig, path, overrides)


CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def find_config(name: str) -> Path:
    """'pointpillars_tiny' or a path -> the YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONFIG_DIR / f"{name}.yaml"
    if candidate.exists():
        return candidate
    raise FileNotFoundError(f"config {name!r} not found (looked for {path} and {candidate})")


__all__ = ["EncoderConfig", "Backbone3DConfig", "BEVBackboneConfig", "AnchorClassConfig", "LossConfig",
           "HeadConfig", "IoUGateConfig", "PostProcessConfig", "DetectorConfig", "load_detector_config",
           "find_config", "RoILossConfig", "RoIHeadConfig", "TwoStageConfig", "load_two_stage_config",
           "SPARSE_NUM_STAGES"]
