"""Distillation configs: one DistillConfig with a `method` switch and one sub-config per method.

Every hyper-parameter of every method is a value here (METHOD.md section 9: the references hard-code several).
Defaults are the METHOD.md values for KITTI. Loaded through clean_ros.yaml_config like every other config, so a run's
resolved config records all of them.

method:
  none            no distillation
  cakd            CaKD loss term only (METHOD.md section 2)
  label_assign    label-assignment distillation target hook only (section 3)
  clean           cakd + label_assign (the CLEAN method)
  logit_kd        vanilla logit KD on all positions
  feature_kd      FitNet MSE on BEV features through a 1x1 adapter
  sparsekd        pivotal-position logit KD (+ reg KD; + label KD and teacher-guided init when enabled)
  pointdistiller  dynamic-graph local distillation on encoder features
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clean_ros.yaml_config import to_dict

METHODS = ("none", "cakd", "label_assign", "clean", "logit_kd", "feature_kd", "sparsekd", "pointdistiller")


def _one_of(section: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{section}.{key} must be one of {', '.join(allowed)}, got {value!r}")


def _positive(section: str, **values: float) -> None:
    for key, value in values.items():
        if value is None or value <= 0:
            raise ValueError(f"{section}.{key} must be > 0, got {value}")


@dataclass
class CaKDConfig:
    """CaKD: student-selected positions, teacher second-stage IoU logit as the target of the max-class logit."""

    weight_anchor: float = 1.0
    weight_center: float = 0.5
    score_threshold_anchor: float = 0.25  # tau_sel on sigmoid(max_c z)
    score_threshold_center: float = 0.1
    pre_nms_max: int = 2048  # top candidates by max-class logit before NMS
    nms_iou: float = 0.7  # class-agnostic rotated BEV NMS on the student's decoded boxes
    post_nms_max_anchor: int = 200
    post_nms_max_center: int = 500

    def __post_init__(self):
        _positive("cakd", pre_nms_max=self.pre_nms_max, post_nms_max_anchor=self.post_nms_max_anchor,
                  post_nms_max_center=self.post_nms_max_center)
        for key in ("weight_anchor", "weight_center"):
            if getattr(self, key) < 0:
                raise ValueError(f"cakd.{key} must be >= 0, got {getattr(self, key)}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"cakd.nms_iou must be in (0, 1], got {self.nms_iou}")


@dataclass
class LabelAssignConfig:
    """Accept teacher final box j of class c if max_g IoU(j, g)^p * s_j^(1 - p) > thresholds[c] (p = iou_power).

    iou_type: the IoU of that rule, "3d" (the reference's) or rotated "bev" (this package's before issue 13).
    heading: "teacher" keeps an accepted box's heading as the teacher gives it (the reference's); "label" turns it by
    half a turn where it points against the same-class ground-truth box it overlaps (BEV IoU >= 0.5). A box and its
    half-turn have the same IoU, so this changes only what the student's direction bins learn: measured here, the
    shipped teacher's headings are turned in ~43 % of its boxes (docs/results/scaling/README.md).
    """

    thresholds: list[float] = field(default_factory=lambda: [0.7, 0.7, 0.7])  # per class (KITTI 0.7, Waymo 0.5)
    iou_power: float = 0.0  # p; the references use 0 (score only)
    iou_type: Literal["3d", "bev"] = "3d"
    max_boxes: int = 0  # keep at most this many accepted boxes per frame (highest score first); 0 = all
    heading: Literal["teacher", "label"] = "teacher"

    def __post_init__(self):
        _one_of("label_assign", "iou_type", self.iou_type, ("3d", "bev"))
        _one_of("label_assign", "heading", self.heading, ("teacher", "label"))
        if not 0.0 <= self.iou_power <= 1.0:
            raise ValueError(f"label_assign.iou_power must be in [0, 1], got {self.iou_power}")
        if self.max_boxes < 0:
            raise ValueError(f"label_assign.max_boxes must be >= 0, got {self.max_boxes}")


@dataclass
class LogitKDConfig:
    """Vanilla logit KD on every position. mse: (sigmoid(z_S/T) - sigmoid(z_T/T))^2; kl: per-class Bernoulli KL
    of the tempered teacher to the tempered student, times T^2. Mean over positions and classes."""

    mode: Literal["mse", "kl"] = "mse"
    weight: float = 1.0
    temperature: float = 1.0

    def __post_init__(self):
        _positive("logit_kd", temperature=self.temperature)
        if self.weight < 0:
            raise ValueError(f"logit_kd.weight must be >= 0, got {self.weight}")


@dataclass
class FeatureKDConfig:
    """FitNet: weight * mean (adapter(F_S) - F_T)^2 on the BEV backbone outputs; adapter = 1x1 conv."""

    weight: float = 1.0

    def __post_init__(self):
        if self.weight < 0:
            raise ValueError(f"feature_kd.weight must be >= 0, got {self.weight}")


@dataclass
class SparseKDConfig:
    """Pivotal-position logit KD: m_p = 1[max_c T > theta] * max_c T * max_c G, L = w sum (s_S - s_T)^2 m / sum m.

    Center heads: G = the GT Gaussian heatmap. Anchor heads: the pivotal positions are the positive anchors
    (G = 1 there, 0 elsewhere); anchor_mask "positives" uses m = 1 at positive anchors, "positives_x_teacher"
    the full formula with G = positives. reg_weight: smooth-L1 KD of the regression outputs on the same mask.
    label_kd: add the teacher's dense-head peaks (no NMS) with score > label_kd_threshold to the GT, in front of it
    (label_kd_position "front", the reference's order) or after it ("back", this package's before issue 13); the
    order matters because target assignment gives the first of equally good boxes the anchor.
    teacher_init: teacher-guided initialisation (build_distillation applies it to the student).
    """

    weight: float = 15.0
    teacher_threshold: float = 0.1  # theta
    anchor_mask: Literal["positives", "positives_x_teacher"] = "positives"
    reg_weight: float = 0.2
    smooth_l1_beta: float = 1.0 / 9.0
    label_kd: bool = False
    label_kd_threshold: float = 0.6
    label_kd_max_boxes: int = 100  # per frame, highest scores first (no NMS: bounds the target-assignment cost)
    label_kd_position: Literal["front", "back"] = "front"
    teacher_init: bool = False

    def __post_init__(self):
        _one_of("sparsekd", "label_kd_position", self.label_kd_position, ("front", "back"))
        for key in ("weight", "reg_weight", "teacher_threshold"):
            if getattr(self, key) < 0:
                raise ValueError(f"sparsekd.{key} must be >= 0, got {getattr(self, key)}")
        _positive("sparsekd", label_kd_max_boxes=self.label_kd_max_boxes)


@dataclass
class PointDistillerConfig:
    """Dynamic-graph local distillation on the encoder outputs (pillar / voxel features, (V, C)).

    Per frame: the top num_nodes voxels (by point count or by the teacher feature's max), a kNN graph (k
    neighbours, self excluded) in TEACHER feature space, edges [neighbour ; centre], separate trainable 1x1
    conv + BN + ReLU encoders (teacher, student) to embed_channels, loss = weight * mean_i w_i mean (e_S - e_T)^2
    with w = N * softmax(importance / temperature). importance: the node voxel's point count ("points"), teacher
    max class probability in the node's BEV cell ("teacher_score"), the teacher feature's max ("teacher_feature")
    or none ("uniform").

    Defaults: the authors' released PointPillars 4x setting (github.com/RunpeiDong/PointDistiller:
    configs/pointpillars/hv_pointpillars_secfpn_6x8_160e_kitti-3d-3class_student_4x.py `kd_cfg` num_voxels 6000,
    kneighbours 128, temperature 1e-2; mmdet3d/models/detectors/voxelnet.py: nodes = top voxels by point count,
    reweight = N * softmax(point count / temperature), loss = 2 * mean(reweighted squared error), 32-channel edge
    encoders). Their N counts voxels over a batch of 6 frames; ours counts per frame. Before issue 13 the
    defaults were num_nodes 256, k 8, temperature 1.0, importance teacher_score, weight 1.0.
    """

    num_nodes: int = 6000
    k: int = 128
    embed_channels: int = 32
    temperature: float = 0.01
    select_by: Literal["points", "teacher_feature"] = "points"
    importance: Literal["points", "teacher_score", "teacher_feature", "uniform"] = "points"
    weight: float = 2.0

    def __post_init__(self):
        _one_of("pointdistiller", "select_by", self.select_by, ("points", "teacher_feature"))
        _one_of("pointdistiller", "importance", self.importance,
                ("points", "teacher_score", "teacher_feature", "uniform"))
        _positive("pointdistiller", num_nodes=self.num_nodes, k=self.k, embed_channels=self.embed_channels,
                  temperature=self.temperature)
        if self.weight < 0:
            raise ValueError(f"pointdistiller.weight must be >= 0, got {self.weight}")


@dataclass
class DistillConfig:
    method: Literal["none", "cakd", "label_assign", "clean", "logit_kd", "feature_kd", "sparsekd",
                    "pointdistiller"] = "none"
    teacher_config: str = ""  # config name / YAML of the teacher (integrator loads it)
    teacher_checkpoint: str = ""
    teacher_bn_train: bool = False  # run the teacher's batch norms on batch statistics (never updates them)
    cakd: CaKDConfig = field(default_factory=CaKDConfig)
    label_assign: LabelAssignConfig = field(default_factory=LabelAssignConfig)
    logit_kd: LogitKDConfig = field(default_factory=LogitKDConfig)
    feature_kd: FeatureKDConfig = field(default_factory=FeatureKDConfig)
    sparsekd: SparseKDConfig = field(default_factory=SparseKDConfig)
    pointdistiller: PointDistillerConfig = field(default_factory=PointDistillerConfig)

    @property
    def uses_cakd(self) -> bool:
        return self.method in ("cakd", "clean")

    @property
    def uses_label_assign(self) -> bool:
        return self.method in ("label_assign", "clean")

    def stage_identity(self) -> dict:
        """What a KD stage hashes: every value, except options still at a default they were added with later (so
        runs from before an option keep their stage hashes)."""
        values = to_dict(self)
        if self.label_assign.heading == "teacher":
            del values["label_assign"]["heading"]
        return values


__all__ = ["METHODS", "CaKDConfig", "LabelAssignConfig", "LogitKDConfig", "FeatureKDConfig", "SparseKDConfig",
           "PointDistillerConfig", "DistillConfig"]
