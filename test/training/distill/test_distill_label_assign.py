"""Label-assignment distillation (training/distill/label_assign.py): the accept rule, merging teacher boxes in
front of the ground truth, and the targets an anchor or centre student then trains on."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clean_ros.models.detector import build_detector
from training.distill import DistillConfig, build_distillation
from training.distill.distill_config import LabelAssignConfig
from training.distill.label_assign import accept_teacher_boxes, merge_ground_truth
from training.distill.teacher import TeacherBoxes
from training.targets import build_targets
from training.task import DetectionTask

from distill_helpers import small_cfg, car, one_car_batch, TwoStageDouble, final_detections

# the shared machine: one thread is much faster under load (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_accept_rule_score_and_general_form():
    boxes = torch.tensor([car(5.0, 0.0), car(15.0, 5.0), car(20.0, -5.0)])
    teacher = TeacherBoxes(boxes, torch.tensor([0.9, 0.5, 0.75]), torch.tensor([0, 0, 1]))
    gt = torch.tensor([car(5.0, 0.4)])
    cfg = LabelAssignConfig(thresholds=[0.7, 0.8, 0.7])
    accepted = accept_teacher_boxes(teacher, gt, torch.tensor([0]), cfg)
    assert accepted.scores.tolist() == pytest.approx([0.9])  # 0.75 is a Ped box: below its own 0.8
    # p = 0.5: sqrt(IoU * s); box 0 overlaps GT (IoU = 1.2/2.0 ... computed below), the others do not
    iou = (1.6 - 0.4) / (1.6 + 0.4)
    cfg = LabelAssignConfig(thresholds=[0.7, 0.7, 0.7], iou_power=0.5)
    accepted = accept_teacher_boxes(teacher, gt, torch.tensor([0]), cfg)
    assert (math.sqrt(iou * 0.9) > 0.7) == (accepted.boxes.shape[0] == 1)
    no_gt = accept_teacher_boxes(teacher, torch.zeros(0, 7), torch.zeros(0, dtype=torch.long), cfg)
    assert no_gt.boxes.shape[0] == 0


def test_accept_rule_iou_is_3d_by_default_and_bev_on_request():
    assert LabelAssignConfig().iou_type == "3d"  # the reference's max_g IoU(j, g) is a 3D IoU
    gt = torch.tensor([car(5.0, 0.0)])
    lifted = car(5.0, 0.0)
    lifted[2] += 0.78  # same footprint (BEV IoU 1), half the height shared: 3D IoU 0.78 / (2 * 1.56 - 0.78) = 1/3
    teacher = TeacherBoxes(torch.tensor([lifted]), torch.tensor([0.9]), torch.tensor([0]))
    rule = dict(thresholds=[0.5, 0.5, 0.5], iou_power=1.0)  # p = 1: IoU alone decides
    assert accept_teacher_boxes(teacher, gt, torch.tensor([0]), LabelAssignConfig(**rule)).boxes.shape[0] == 0
    bev = accept_teacher_boxes(teacher, gt, torch.tensor([0]), LabelAssignConfig(**rule, iou_type="bev"))
    assert bev.boxes.shape[0] == 1
    rule["thresholds"] = [0.3, 0.3, 0.3]  # 1/3 > 0.3: the 3D rule accepts it too
    assert accept_teacher_boxes(teacher, gt, torch.tensor([0]), LabelAssignConfig(**rule)).boxes.shape[0] == 1
    with pytest.raises(ValueError, match="iou_type"):
        LabelAssignConfig(iou_type="2d")


def test_merge_puts_teacher_boxes_in_front_and_handles_empty_frames():
    gt = torch.tensor([[car(1, 1), [0.0] * 7], [[0.0] * 7, [0.0] * 7]])
    labels = torch.tensor([[0, -1], [-1, -1]])
    front = [TeacherBoxes(torch.tensor([car(9, 9)]), torch.tensor([0.9]), torch.tensor([2])),
             TeacherBoxes(torch.tensor([car(7, 7), car(8, 8)]), torch.tensor([0.9, 0.8]), torch.tensor([0, 1]))]
    boxes, merged = merge_ground_truth(gt, labels, front=front)
    assert merged.tolist() == [[2, 0, -1, -1], [0, 1, -1, -1]]
    assert boxes[0, 0, 0] == 9 and boxes[0, 1, 0] == 1 and boxes[1, 1, 0] == 8
    boxes, merged = merge_ground_truth(torch.zeros(2, 0, 7), torch.zeros(2, 0, dtype=torch.long), front=front)
    assert merged.tolist() == [[2, -1], [0, 1]]


@pytest.mark.parametrize("head", ["anchor", "center"])
def test_label_assignment_targets_include_accepted_teacher_boxes(head):
    torch.manual_seed(4)
    cfg_t = small_cfg()
    # iou_target=anchor: the anchor's own IoU, exactly 1 on the teacher box (the predicted-box target: test_targets.py)
    cfg = small_cfg("pointpillars_tiny", "head.iou_branch=true",
                    "head.loss.iou_target=anchor") if head == "anchor" else small_cfg(
        "centerpoint_pillar_tiny", "head.iou_branch=true", "head.shared_conv_width=16", "head.head_conv_width=8")
    student = build_detector(cfg)
    # Teacher box exactly on a Car anchor of cell (row 20, col 30) in frame 1 (a frame with no GT);
    # a second, low-score box elsewhere must be rejected.
    grid = student.grid
    x = grid.x_min + 30.5 * grid.cell_x
    y = grid.y_min + 20.5 * grid.cell_y
    accepted_box = [x, y, -1.0, 3.9, 1.6, 1.56, 0.0]
    rejected_box = [x, y - 6.4, -1.0, 3.9, 1.6, 1.56, 0.0]
    final = [final_detections(np.zeros((0, 7)), [], []), final_detections([accepted_box, rejected_box], [0.95, 0.4], [0, 0])]
    teacher = TwoStageDouble(cfg_t, final=final)
    parts = build_distillation(DistillConfig(method="label_assign"), teacher, student)
    task = DetectionTask(cfg, student, target_hooks=parts.target_hooks)
    batch = one_car_batch(cfg)
    result = task(batch)
    plain = build_targets(result.output, batch.gt_boxes, batch.gt_labels, cfg)
    t = result.targets
    if head == "anchor":
        p_acc = (20 * grid.width + 30) * grid.positions_per_cell  # Car, rotation 0
        p_rej = (10 * grid.width + 30) * grid.positions_per_cell  # 6.4 m = 10 cells lower
        assert int(t.labels[1, p_acc]) == 1 and int(plain.labels[1, p_acc]) == 0  # positive only thanks to the teacher
        assert float(t.iou_targets[1, p_acc]) == pytest.approx(1.0, abs=1e-5)
        assert float(plain.iou_targets[1, p_acc]) == 0.0
        assert int(t.labels[1, p_rej]) == 0
        assert torch.equal(t.labels[0], plain.labels[0])  # frame 0: no accepted box, GT targets unchanged
    else:
        pixel = 20 * grid.width + 30
        assert float(t.heatmap[1, pixel, 0]) == 1.0 and float(plain.heatmap[1, pixel, 0]) == 0.0
        assert float(t.iou_targets[1, pixel]) == 1.0 and float(plain.iou_targets[1, pixel]) == 0.0
        assert int(t.mask[1].sum()) == 1
    assert torch.isfinite(result.total)
    assert parts.runner.module.calls["predict"] == 1


def test_heading_label_turns_boxes_that_point_against_their_label():
    """heading="label": a box pointing against its overlapping same-class GT box is turned by pi (same box, same IoU);
    one already along it, one of another class and one overlapping nothing keep the teacher's heading."""
    from training.distill.label_assign import turn_to_labels

    assert LabelAssignConfig().heading == "teacher"  # the reference's default
    with pytest.raises(ValueError, match="heading"):
        LabelAssignConfig(heading="gt")
    gt = torch.tensor([car(5.0, 0.0), car(15.0, 5.0), car(30.0, 0.0)])
    gt[1, 6] = 0.3
    against, along, other_class, alone = car(5.0, 0.0), car(15.0, 5.0), car(30.0, 0.0), car(40.0, 9.0)
    against[6], along[6], other_class[6], alone[6] = math.pi - 0.1, 0.4, math.pi, math.pi
    teacher = TeacherBoxes(torch.tensor([against, along, other_class, alone]), torch.tensor([0.9, 0.9, 0.9, 0.9]),
                           torch.tensor([0, 0, 1, 0]))
    turned, count = turn_to_labels(teacher, gt, torch.tensor([0, 0, 0]))
    assert count == 1
    assert turned.boxes[:, 6].tolist() == pytest.approx([-0.1, 0.4, math.pi, math.pi], abs=1e-6)
    assert torch.equal(turned.boxes[:, :6], teacher.boxes[:, :6]) and torch.equal(turned.scores, teacher.scores)
    assert turn_to_labels(teacher, torch.zeros(0, 7), torch.zeros(0, dtype=torch.long))[1] == 0


def test_heading_option_changes_the_kd_stage_hash_only_when_set():
    """Runs from before the option keep their stage hashes: the default adds nothing to DistillConfig's identity."""
    default = DistillConfig(method="clean").stage_identity()
    assert "heading" not in default["label_assign"] and default["label_assign"]["iou_type"] == "3d"
    label = DistillConfig(method="clean", label_assign=LabelAssignConfig(heading="label")).stage_identity()
    assert label["label_assign"]["heading"] == "label"
    assert {k: v for k, v in label["label_assign"].items() if k != "heading"} == default["label_assign"]


def test_heading_label_reaches_the_students_direction_targets():
    """Wired through the hook: the teacher's half-turned copy of the frame's car becomes, with heading="label", a box
    with the label's heading, so every anchor it claims learns the label's direction bin (with "teacher": the other)."""
    torch.manual_seed(4)
    cfg_t, cfg = small_cfg(), small_cfg("pointpillars_tiny")
    flipped = car(10.16, 0.32, yaw=math.pi)
    final = [final_detections([flipped], [0.95], [0]), final_detections(np.zeros((0, 7)), [], [])]
    bins = {}
    for heading in ("teacher", "label"):
        student = build_detector(cfg)
        distill = DistillConfig(method="label_assign", label_assign=LabelAssignConfig(heading=heading))
        parts = build_distillation(distill, TwoStageDouble(cfg_t, final=final), student)
        task = DetectionTask(cfg, student, target_hooks=parts.target_hooks)
        t = task(one_car_batch(cfg)).targets
        positive = t.labels[0] > 0
        assert int(positive.sum()) > 0
        bins[heading] = set(t.dir_targets[0, positive].tolist())
        hook = next(h for h in parts.target_hooks if h.name == "label_assign")
        assert hook.last_turned == (1 if heading == "label" else 0)
        assert ("turned_per_frame" in hook.diagnostics()) == (heading == "label")
    batch = one_car_batch(cfg)
    plain = build_targets(task(batch).output, batch.gt_boxes, batch.gt_labels, cfg)
    assert bins["label"] == set(plain.dir_targets[0, plain.labels[0] > 0].tolist())  # the label's direction
    assert bins["teacher"] != bins["label"]  # the teacher's copy won the anchors, with its own direction
