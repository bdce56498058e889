"""SparseKD baseline (training/distill/sparsekd.py): pivotal-position masks for anchor and centre heads, and
label KD (confident dense teacher boxes appended to the ground truth)."""
from __future__ import annotations

import copy

import pytest
import torch

from clean_ros.models.detector import build_detector
from training.distill.distill_config import SparseKDConfig
from training.distill.label_assign import merge_ground_truth
from training.distill.sparsekd import LabelKDHook, SparseKDLoss, pivotal_mask
from training.distill.teacher import TeacherBoxes, TeacherRunner
from training.task import DetectionTask

from distill_helpers import car, small_cfg, one_car_batch, loss_context

# the shared machine: one thread is much faster under load (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_sparsekd_anchor_zero_when_equal_and_gradient_only_at_positive_anchors(plain_pair):
    cfg, teacher, student = plain_pair
    batch = one_car_batch(cfg)
    term = SparseKDLoss(SparseKDConfig(), TeacherRunner(copy.deepcopy(teacher)))
    s = copy.deepcopy(student).eval()
    parts = term(loss_context(DetectionTask(cfg, s), batch))
    assert float(parts["cls"]) < 1e-12 and float(parts["reg"]) < 1e-12
    other = build_detector(cfg)
    ctx = loss_context(DetectionTask(cfg, other), batch)
    leaf = ctx.output.cls_logits.detach().clone().requires_grad_(True)
    box = ctx.output.box_preds.detach().clone().requires_grad_(True)
    ctx = ctx._replace(output=ctx.output._replace(cls_logits=leaf, box_preds=box))
    parts = term(ctx)
    assert float(parts["cls"]) > 0 and float(parts["reg"]) > 0
    (parts["cls"] + parts["reg"]).backward()
    positives = ctx.targets.labels > 0
    assert int(positives.sum()) > 0
    assert torch.equal((leaf.grad != 0).any(-1), positives)
    assert torch.equal((box.grad != 0).any(-1), positives)
    # normalisation: w * sum over positives and classes / number of positives
    t = term.runner.dense_output(batch).cls_logits
    manual = 15.0 * ((torch.sigmoid(leaf) - torch.sigmoid(t)) ** 2).sum(-1)[positives].sum() / positives.sum()
    assert float(parts["cls"]) == pytest.approx(float(manual), rel=1e-5)


def test_sparsekd_center_mask_is_teacher_confidence_times_gt_gaussian():
    torch.manual_seed(8)
    cfg = small_cfg("centerpoint_pillar_tiny", "head.shared_conv_width=16", "head.head_conv_width=8")
    teacher = build_detector(cfg)
    batch = one_car_batch(cfg)
    runner = TeacherRunner(teacher)
    student = build_detector(cfg)
    ctx = loss_context(DetectionTask(cfg, student), batch)
    t_logits = runner.dense_output(batch).cls_logits
    skd = SparseKDConfig(teacher_threshold=0.1)
    mask = pivotal_mask(t_logits, ctx.targets, skd)
    tmax = torch.sigmoid(t_logits).max(-1).values
    expected = (tmax > 0.1).float() * tmax * ctx.targets.heatmap.max(-1).values
    assert torch.allclose(mask, expected) and int((mask > 0).sum()) > 0
    leaf = ctx.output.cls_logits.detach().clone().requires_grad_(True)
    ctx = ctx._replace(output=ctx.output._replace(cls_logits=leaf))
    SparseKDLoss(skd, runner)(ctx)["cls"].backward()
    assert torch.equal((leaf.grad != 0).any(-1), mask > 0)


def test_label_kd_appends_confident_dense_teacher_boxes(plain_pair):
    cfg, teacher, _ = plain_pair
    teacher = copy.deepcopy(teacher)
    with torch.no_grad():
        teacher.head.conv_cls.bias.fill_(-10.0)
        teacher.head.conv_cls.weight.zero_()
    batch = one_car_batch(cfg)
    runner = TeacherRunner(teacher)
    hook = LabelKDHook(SparseKDConfig(label_kd=True, label_kd_threshold=0.6), runner)
    boxes, labels = hook(batch, batch.gt_boxes, batch.gt_labels)
    assert torch.equal(labels, batch.gt_labels)  # nothing confident
    with torch.no_grad():  # channel a * C + c: anchor 1 of every cell, class 0 -> 0.73
        teacher.head.conv_cls.bias[1 * 3 + 0] = 1.0
    runner = TeacherRunner(teacher)
    hook = LabelKDHook(SparseKDConfig(label_kd=True, label_kd_threshold=0.6, label_kd_max_boxes=7,
                                      label_kd_position="back"), runner)
    boxes, labels = hook(batch, batch.gt_boxes, batch.gt_labels)
    assert labels.tolist()[0] == [0] + [0] * 7 and labels.tolist()[1] == [-1] + [0] * 7  # appended after the GT
    assert torch.equal(boxes[0, 0], batch.gt_boxes[0, 0])
    # the reference order (default): the teacher's boxes in front of the GT
    assert SparseKDConfig().label_kd_position == "front"
    hook = LabelKDHook(SparseKDConfig(label_kd=True, label_kd_threshold=0.6, label_kd_max_boxes=7), runner)
    front_boxes, front_labels = hook(batch, batch.gt_boxes, batch.gt_labels)
    assert front_labels.tolist()[0] == [0] * 7 + [0] and front_labels.tolist()[1] == [0] * 7 + [-1]
    assert torch.equal(front_boxes[0, 7], batch.gt_boxes[0, 0]) and torch.equal(front_boxes[:, :7], boxes[:, 1:])
    with pytest.raises(ValueError, match="label_kd_position"):
        SparseKDConfig(label_kd_position="middle")


def test_order_decides_the_tied_anchor_so_label_kd_position_matters(plain_pair):
    """Target assignment gives an anchor to the FIRST of equally good boxes: a teacher box with the GT's footprint
    (so the same BEV IoU with every anchor) but another height gives the tied anchors its regression targets only
    when it comes first."""
    cfg, _, student = plain_pair
    from training.targets import build_targets

    gt = torch.tensor([[car(10.16, 0.32)]])
    lifted = car(10.16, 0.32)
    lifted[2] += 0.3
    teacher = TeacherBoxes(torch.tensor([lifted]), torch.tensor([0.9]), torch.tensor([0]))
    out = student.head_output(student.head(torch.zeros(1, cfg.bev_backbone.out_channels, student.grid.height,
                                                      student.grid.width)), torch.zeros(1))
    front = build_targets(out, *merge_ground_truth(gt, torch.tensor([[0]]), front=[teacher]), cfg)
    back = build_targets(out, *merge_ground_truth(gt, torch.tensor([[0]]), back=[teacher]), cfg)
    pos = front.positives
    assert torch.equal(front.labels, back.labels) and int(pos.sum()) > 0
    assert (front.matched_gt[pos] == 0).all() and (back.matched_gt[pos] == 0).all()  # index 0 = the first box
    anchor_h = cfg.head.anchors[0].size[2]
    dz = front.box_targets[pos][:, 2] - back.box_targets[pos][:, 2]
    assert torch.allclose(dz, torch.full_like(dz, 0.3 / anchor_h), atol=1e-5)  # the lifted box's z when first
