"""The one post-processing validator (clean_ros.inference.postprocess_settings) and the range-dependent per-class
score thresholds applied in post-processing."""
from __future__ import annotations

import math

import pytest
import torch

from clean_ros.inference.postprocess import postprocess_tensors, range_thresholds
from clean_ros.inference.postprocess_settings import PostProcessConfig, check_postprocess, updated_postprocess
from clean_ros.models.anchors import FeatureGrid
from clean_ros.models.detector import HeadOutput
from clean_ros.models.detector_config import load_detector_config
from clean_ros.yaml_config import ConfigError
from training.config_paths import find_config

CLASSES = ("Car", "Pedestrian", "Cyclist")


@pytest.mark.parametrize("changes, message", [
    ({"score_thresholds": [0.1, 0.2]}, "score_thresholds needs 3 values"),
    ({"score_thresholds": [0.1, float("nan"), 0.2]}, r"score_thresholds\[Pedestrian\] = nan"),
    ({"score_thresholds": {"Truck": 0.3}}, "unknown class 'Truck'"),
    ({"nms_iou": 1.5}, r"nms_iou = 1.5: must be a number in \[0, 1\]"),
    ({"nms_pre_max": 10}, r"nms_post_max \(500\) must not exceed nms_pre_max \(10\)"),
    ({"nms_post_max": -1}, "must be an integer >= 0"),
    ({"peak_kernel": 4}, "must be odd"),
    ({"iou_gate_mode": "soft"}, "no IoU branch"),
    ({"iou_gate_thresholds": [0.5, 2.0, 0.2]}, r"iou_gate_thresholds\[Pedestrian\] = 2.0"),
    ({"range_breakpoints": [30.0]}, r"range_score_thresholds needs 6 values \(3 classes .* x 2 range bands"),
    ({"range_breakpoints": [30.0, 20.0], "range_score_thresholds": [0.1] * 9}, "strictly ascending"),
    ({"range_breakpoints": [0.0], "range_score_thresholds": [0.1] * 6}, r"range_breakpoints\[0\] = 0.0"),
    ({"range_breakpoints": [30.0], "range_score_thresholds": [0.1] * 5 + [1.2]}, r"range_score_thresholds\[5\]"),
    ({"nms_radius": 2}, "unknown post-processing setting 'nms_radius'"),
])
def test_updated_postprocess_refuses_with_the_reason(changes, message):
    current = PostProcessConfig()
    with pytest.raises(ValueError, match=message):
        updated_postprocess(current, changes, CLASSES, iou_branch=False)
    assert current == PostProcessConfig()  # untouched


def test_updated_postprocess_applies_valid_changes_as_floats():
    new = updated_postprocess(PostProcessConfig(), {"score_thresholds": {"Car": 1}, "nms_pre_max": 100,
                                                    "nms_post_max": 100, "range_breakpoints": [20, 40],
                                                    "range_score_thresholds": [0, 0.3, 0.6] * 3},
                              CLASSES, iou_branch=False)
    assert new.score_thresholds == [1.0, 0.1, 0.1] and type(new.score_thresholds[0]) is float
    assert (new.nms_pre_max, new.nms_post_max) == (100, 100)
    assert new.range_breakpoints == [20.0, 40.0] and new.range_score_thresholds[1] == 0.3
    assert updated_postprocess(PostProcessConfig(), {"nms_pre_max": 0}, CLASSES, iou_branch=False).nms_pre_max == 0


def test_the_config_loader_uses_the_same_validator():
    """DetectorConfig (YAML, bundle manifests) refuses what the node and the Pipeline refuse, with the same words."""
    with pytest.raises(ConfigError, match=r"postprocess: nms_post_max \(500\) must not exceed nms_pre_max \(2\)"):
        load_detector_config(find_config("pointpillars_tiny"), ["postprocess.nms_pre_max=2"])
    with pytest.raises(ConfigError, match="postprocess: range_score_thresholds needs 6 values"):
        load_detector_config(find_config("pointpillars_tiny"), ["postprocess.range_breakpoints=[10.0]",
                                                                "postprocess.range_score_thresholds=[0.5]"])
    check_postprocess(PostProcessConfig(), CLASSES, iou_branch=False)   # the defaults are valid


def test_range_thresholds_pick_the_band_of_each_box():
    cfg = PostProcessConfig(range_breakpoints=[20.0, 40.0],
                            range_score_thresholds=[0.1, 0.2, 0.3,    # Car: < 20 m, 20-40 m, >= 40 m
                                                    0.4, 0.5, 0.6,    # Pedestrian
                                                    0.7, 0.8, 0.9])   # Cyclist
    boxes = torch.zeros(5, 7)
    boxes[:, 0] = torch.tensor([5.0, 12.0, 39.9, 40.0, 100.0])
    boxes[:, 1] = torch.tensor([0.0, 16.0, 0.0, 0.0, 0.0])      # the second box: sqrt(12^2 + 16^2) = 20 m exactly
    labels = torch.tensor([0, 1, 2, 0, 1])
    got = range_thresholds(boxes, labels, cfg, 3)
    assert got.tolist() == pytest.approx([0.1, 0.5, 0.8, 0.3, 0.6])


def test_range_thresholds_drop_far_low_scores_in_postprocess():
    """Two cars with score 0.5, one at 10 m and one at 50 m: a 0.6 threshold beyond 30 m drops only the far one."""
    cfg = load_detector_config(find_config("pointpillars_tiny"), ["postprocess.score_thresholds=[0.1, 0.1, 0.1]"])
    anchors = torch.tensor([[10.0, 0.0, -1.0, 3.9, 1.6, 1.56, 0.0], [50.0, 0.0, -1.0, 3.9, 1.6, 1.56, 0.0]])
    logits = torch.tensor([[[0.0, -9.0, -9.0], [0.0, -9.0, -9.0]]])          # sigmoid(0) = 0.5
    output = HeadOutput(logits, torch.zeros(1, 2, 7), None, None, anchors, torch.tensor([0, 0]),
                        FeatureGrid(1, 2, 0.0, 0.0, 1.0, 1.0, 1), torch.zeros(1, 1, 1, 2), "anchor")
    assert postprocess_tensors(output, cfg)[0].positions.tolist() == [0, 1]
    cfg.postprocess = updated_postprocess(cfg.postprocess, {"range_breakpoints": [30.0],
                                                            "range_score_thresholds": [0.0, 0.6] * 3},
                                          cfg.class_names, iou_branch=cfg.head.iou_branch)
    frame = postprocess_tensors(output, cfg)[0]
    assert frame.positions.tolist() == [0] and math.isclose(frame.scores.item(), 0.5, rel_tol=1e-6)
    # the table only raises the per-class threshold: 0.0 near does not undercut score_thresholds 0.7
    cfg.postprocess.score_thresholds = [0.7, 0.7, 0.7]
    assert postprocess_tensors(output, cfg)[0].positions.tolist() == []
