"""Configuration and assembly (training/distill/distill_config.py, build_distillation): loading DistillConfig, the
terms and hooks of each method, and clear refusals of unusable configurations and teacher/student pairings."""
from __future__ import annotations

import copy

import pytest

from clean_ros.models.detector import build_detector
from training.distill import DistillConfig, build_distillation
from training.distill.distill_config import LabelAssignConfig, LogitKDConfig, SparseKDConfig
from training.distill.logit_kd import LogitKDLoss
from training.distill.sparsekd import LabelKDHook
from training.distill.teacher import TeacherRunner
from training.task import DetectionTask

from distill_helpers import small_cfg, one_car_batch, TwoStageDouble, loss_context

# the shared machine: one thread is much faster under load (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_distill_config_loads_with_overrides_and_rejects_bad_values(tmp_path):
    from clean_ros.yaml_config import ConfigError, load_config
    path = tmp_path / "d.yaml"
    path.write_text("method: clean\ncakd: {weight_anchor: 0.3}\n")
    cfg = load_config(DistillConfig, path, ["label_assign.thresholds=[0.5, 0.6, 0.6]"])
    assert cfg.uses_cakd and cfg.uses_label_assign and cfg.cakd.weight_anchor == 0.3
    assert cfg.cakd.post_nms_max_center == 500 and cfg.sparsekd.weight == 15.0
    with pytest.raises(ConfigError):
        load_config(DistillConfig, path, ["method=nonsense"])
    with pytest.raises(ConfigError):
        load_config(DistillConfig, path, ["cakd.nms_iou=1.5"])


def test_build_distillation_methods(plain_pair):
    cfg, teacher, _ = plain_pair
    for method, terms, hooks in [("none", [], []), ("logit_kd", ["logit_kd"], []),
                                 ("feature_kd", ["feature_kd"], []), ("pointdistiller", ["pointdistiller"], [])]:
        parts = build_distillation(DistillConfig(method=method), teacher, build_detector(cfg))
        assert [t.name for t in parts.loss_terms] == terms and parts.target_hooks == hooks
    cfg_sk = DistillConfig(method="sparsekd", sparsekd=SparseKDConfig(label_kd=True))
    parts = build_distillation(cfg_sk, teacher, build_detector(cfg))
    assert [t.name for t in parts.loss_terms] == ["sparsekd"] and isinstance(parts.target_hooks[0], LabelKDHook)
    with pytest.raises(ValueError, match="two-stage"):
        build_distillation(DistillConfig(method="cakd"), teacher, build_detector(cfg))


def test_configuration_errors_are_clear(plain_pair):
    cfg, teacher, _ = plain_pair
    bad = DistillConfig(method="label_assign", label_assign=LabelAssignConfig(thresholds=[0.7]))
    with pytest.raises(ValueError, match="one per class"):
        build_distillation(bad, TwoStageDouble(cfg), build_detector(cfg))
    with pytest.raises(ValueError, match="needs a teacher"):
        build_distillation(DistillConfig(method="logit_kd"), None, build_detector(cfg))
    center = build_detector(small_cfg("centerpoint_pillar_tiny", "head.shared_conv_width=16", "head.head_conv_width=8"))
    term = LogitKDLoss(LogitKDConfig(), TeacherRunner(copy.deepcopy(teacher)))
    with pytest.raises(ValueError, match="position layout"):
        term(loss_context(DetectionTask(center.cfg, center), one_car_batch(center.cfg)))


def test_unusable_pairings_are_refused_at_build_time(plain_pair):
    cfg, teacher, _ = plain_pair
    center = build_detector(small_cfg("centerpoint_pillar_tiny", "head.shared_conv_width=16", "head.head_conv_width=8"))
    for method in ("logit_kd", "sparsekd"):
        with pytest.raises(ValueError, match="position layout"):
            build_distillation(DistillConfig(method=method), teacher, center)
    coarse = build_detector(small_cfg("pointpillars_tiny", "voxel_size=[0.64, 0.64, 4.0]"))
    with pytest.raises(ValueError, match="voxelise alike"):
        build_distillation(DistillConfig(method="pointdistiller"), teacher, coarse)
    one_rotation = small_cfg("pointpillars_tiny", *[f"head.anchors.{i}.rotations=[0.0]" for i in range(3)])
    with pytest.raises(ValueError, match="anchor layouts"):
        build_distillation(DistillConfig(method="cakd"), TwoStageDouble(cfg), build_detector(one_rotation))
    build_distillation(DistillConfig(method="cakd"), TwoStageDouble(cfg), center)  # heatmap student: fine
