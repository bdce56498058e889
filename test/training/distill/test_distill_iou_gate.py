"""IoU-aware redundancy elimination, the third part of the CLEAN method (the IoU gate of
clean_ros.inference.postprocess): it removes a low-quality duplicate that plain NMS keeps."""
from __future__ import annotations

import pytest
import torch

from clean_ros.models.detector import HeadOutput, build_detector
from clean_ros.inference.postprocess import postprocess_tensors

from distill_helpers import small_cfg

# the shared machine: one thread is much faster under load (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_iou_gate_removes_a_low_quality_duplicate_that_plain_nms_keeps():
    cfg = small_cfg("pointpillars_tiny", "head.iou_branch=true", "postprocess.nms_iou=0.5")
    gated = small_cfg("pointpillars_tiny", "head.iou_branch=true", "postprocess.nms_iou=0.5",
                      "postprocess.iou_gate.mode=hard")
    model = build_detector(cfg)
    grid, p = model.grid, model.grid.num_positions
    a = grid.positions_per_cell
    first, second = (20 * grid.width + 10) * a, (20 * grid.width + 13) * a  # Car anchors 3 cells apart along x
    cls = torch.full((1, p, 3), -10.0)
    cls[0, first, 0], cls[0, second, 0] = 3.0, 2.0
    iou = torch.full((1, p), -10.0)
    iou[0, first], iou[0, second] = 3.0, -2.0  # sigmoid 0.95 / 0.12 (< tau_car 0.5)
    out = HeadOutput(cls, torch.zeros(1, p, 7), torch.zeros(1, p, 2), iou, model.anchors, model.anchor_classes,
                     grid, torch.zeros(1, 1, grid.height, grid.width), "anchor")
    from clean_ros.cloud.geometry import bev_iou
    overlap = float(bev_iou(model.anchors[first:first + 1], model.anchors[second:second + 1]))
    assert 0.2 < overlap < 0.5  # overlapping, but below the NMS threshold
    plain = postprocess_tensors(out, cfg)[0]
    assert sorted(plain.positions.tolist()) == [first, second]
    kept = postprocess_tensors(out, gated)[0]
    assert kept.positions.tolist() == [first]
