"""Distillation (training/distill): CaKD, label-assignment distillation, logit / feature / SparseKD / PointDistiller
baselines, teacher-guided initialisation, the shared teacher runner, and the IoU gate's duplicate removal.

Tiny models (40 x 40 feature map, 16 channels) so the whole file stays well under two minutes on a busy CPU.
`TwoStageDouble` below is a TEST DOUBLE of the clean_ros.models.two_stage.TwoStageDetector contract (rpn,
roi_forward, predict); tests against the real TwoStageDetector are at the end of the file.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from clean_ros.models.configs import find_config, load_detector_config
from clean_ros.models.detector import HeadOutput, build_detector
from clean_ros.postprocess import decode, postprocess_tensors
from clean_ros.types import Detections
from clean_ros.voxelize import voxelize_batch
from training.data.sample import Batch
from training.distill import DistillConfig, build_distillation
from training.distill.cakd import CaKDLoss, cakd_loss, map_cells, teacher_positions
from training.distill.config import (CaKDConfig, FeatureKDConfig, LabelAssignConfig, LogitKDConfig,
                                     PointDistillerConfig, SparseKDConfig)
from training.distill.feature_kd import FeatureKDLoss
from training.distill.label_assign import accept_teacher_boxes, merge_ground_truth
from training.distill.logit_kd import LogitKDLoss, logit_kd_loss
from training.distill.pointdistiller import PointDistillerLoss, edge_features, knn_graph
from training.distill.sparsekd import LabelKDHook, SparseKDLoss, pivotal_mask
from training.distill.teacher import TeacherBoxes, TeacherRunner
from clean_ros.models.sparse_backbone import bev_channels_of
from training.distill.teacher_init import concat_channels, teacher_guided_init
from training.targets import build_targets
from training.task import DetectionTask, LossContext

SMALL = ["point_cloud_range=[0.0, -12.8, -3.0, 25.6, 12.8, 1.0]", "encoder.widths=[16]",
         "bev_backbone.layer_widths=[[16, 16], [16, 16, 16], [16, 16, 16]]",
         "bev_backbone.num_upsample_filters=[16, 16, 16]"]


# the shared machine: one thread is much faster under load (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


def small_cfg(name="pointpillars_tiny", *extra):
    return load_detector_config(find_config(name), SMALL + list(extra))


def make_batch(cfg, gt_boxes, gt_labels, seed=0, points=1500):
    rng = np.random.default_rng(seed)
    r = cfg.point_cloud_range
    clouds = []
    for _ in range(gt_boxes.shape[0]):
        xyz = rng.uniform(r[:3], r[3:], (points, 3))
        clouds.append(torch.from_numpy(np.concatenate([xyz, rng.uniform(0, 1, (points, 1))], 1).astype(np.float32)))
    voxels, _ = voxelize_batch(clouds, r, cfg.voxel_size, cfg.max_points_per_voxel, cfg.max_voxels_train)
    return Batch(voxels=voxels, gt_boxes=gt_boxes.float(), gt_labels=gt_labels.long(),
                 frame_ids=[str(i) for i in range(gt_boxes.shape[0])], batch_size=gt_boxes.shape[0])


def car(x, y, yaw=0.0):
    return [x, y, -1.0, 3.9, 1.6, 1.56, yaw]


def one_car_batch(cfg, seed=0):
    """Frame 0: one Car; frame 1: no GT (padding row, label -1)."""
    gt = torch.tensor([[car(10.16, 0.32)], [[0.0] * 7]])
    return make_batch(cfg, gt, torch.tensor([[0], [-1]]), seed)


class TwoStageDouble(nn.Module):
    """TEST DOUBLE of the TwoStageDetector contract: `rpn` (one-stage anchor Detector), roi_forward(rpn_output,
    rois) -> (iou_logits (B, R), refined boxes), predict(voxels, batch_size) -> list[Detections].

    mode "echo": the IoU logit of a RoI is the RPN's max-class logit at the anchor whose decoded box is that RoI
    (so a student equal to the RPN has zero CaKD loss, and a wrong RoI mapping shows up). mode "learned": a small
    BN + linear head on the RoI box. `final` fixes what predict returns.
    """

    def __init__(self, cfg, mode="learned", final=None):
        super().__init__()
        self.cfg = cfg
        self.rpn = build_detector(cfg)
        self.mode = mode
        self.final = final
        self.roi_norm = nn.BatchNorm1d(7)
        self.roi_fc = nn.Linear(7, 1)
        self.calls = {"rpn": 0, "roi": 0, "predict": 0}
        self.rpn.register_forward_hook(lambda *a: self.calls.__setitem__("rpn", self.calls["rpn"] + 1))

    def roi_forward(self, rpn_output: HeadOutput, rois: torch.Tensor):
        self.calls["roi"] += 1
        if self.mode == "echo":
            boxes, _ = decode(rpn_output, self.cfg.head)
            logits = rpn_output.cls_logits.max(dim=-1).values
            nearest = torch.cdist(rois, boxes).argmin(dim=2)  # (B, R)
            return logits.gather(1, nearest), rois
        b, r, _ = rois.shape
        return self.roi_fc(self.roi_norm(rois.reshape(-1, 7))).reshape(b, r), rois

    def predict(self, voxels, batch_size):
        self.calls["predict"] += 1
        return self.final[:batch_size]


def _open_head(detector, bias=0.0):
    """Class bias so that many positions pass the CaKD score threshold (the focal prior keeps all below it)."""
    head = detector.head
    conv = head.conv_cls if hasattr(head, "conv_cls") else head.heatmap[-1]
    nn.init.constant_(conv.bias, bias)


def _context(task, batch):
    output = task.model(batch.voxels, batch.batch_size)
    gt_boxes, gt_labels = batch.gt_boxes, batch.gt_labels
    for hook in task.target_hooks:
        gt_boxes, gt_labels = hook(batch, gt_boxes, gt_labels)
    targets = build_targets(output, gt_boxes, gt_labels, task.cfg)
    return LossContext(batch, output, targets, gt_boxes, gt_labels, None, task.model)


# --------------------------------------------------------------------------- CaKD
@pytest.fixture(scope="module")
def anchor_pair():
    torch.manual_seed(0)
    cfg = small_cfg()
    teacher = TwoStageDouble(cfg, mode="echo")
    _open_head(teacher.rpn)
    student = copy.deepcopy(teacher.rpn)
    return cfg, teacher, student


def _final(boxes, scores, labels):
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 7), np.asarray(scores, np.float32),
                      np.asarray(labels, np.int64), ("Car", "Pedestrian", "Cyclist"))


def test_cakd_is_zero_when_the_student_is_the_teacher_rpn_and_positive_otherwise(anchor_pair):
    cfg, teacher, student = anchor_pair
    batch = one_car_batch(cfg)
    runner = TeacherRunner(copy.deepcopy(teacher))
    term = CaKDLoss(CaKDConfig(pre_nms_max=256), runner, cfg.head)
    student.eval()  # same BN mode as the (eval) teacher: identical logits
    ctx = _context(DetectionTask(cfg, student), batch)
    selected = term.select(ctx.output)
    assert all(0 < s.numel() <= 200 for s in selected)
    assert float(term(ctx)) < 1e-10  # RoIs are the teacher's boxes at the same anchors, echoed back exactly

    other = copy.deepcopy(student)
    _open_head(other, 0.5)
    ctx = _context(DetectionTask(cfg, other), batch)
    loss = term(ctx)
    # every selected logit is 0.5 above the echoed teacher logit at the same position... up to the re-selection
    assert float(loss) > 0.01


def test_cakd_selection_and_gradient_support(anchor_pair):
    cfg, teacher, student = anchor_pair
    torch.manual_seed(1)
    other = build_detector(cfg)
    _open_head(other)
    batch = one_car_batch(cfg, seed=1)
    runner = TeacherRunner(TwoStageDouble(cfg, mode="learned"))
    ccfg = CaKDConfig(pre_nms_max=300, post_nms_max_anchor=50)
    term = CaKDLoss(ccfg, runner, cfg.head)
    out = other(batch.voxels, 2)
    leaf = out.cls_logits.detach().clone().requires_grad_(True)
    out = out._replace(cls_logits=leaf)
    ctx = LossContext(batch, out, None, batch.gt_boxes, batch.gt_labels, None, other)
    selected = term.select(out)
    # Selection rule: above tau_sel, within the top pre_nms_max, at most post_nms_max, NMS order by score.
    s = leaf.detach().max(-1).values
    for b, sel in enumerate(selected):
        assert 0 < sel.numel() <= 50
        assert bool((torch.sigmoid(s[b, sel]) >= 0.25).all())
        assert bool((s[b, sel][:-1] >= s[b, sel][1:]).all())
        assert float(s[b, sel].min()) >= float(s[b].topk(300).values[-1])
    loss = term(ctx)
    loss.backward()
    expected = torch.zeros_like(leaf, dtype=torch.bool)
    for b, sel in enumerate(selected):
        expected[b, sel, leaf[b, sel].argmax(-1)] = True
    assert torch.equal(leaf.grad != 0, expected)
    # value against the formula with the runner's teacher logits
    targets = term.teacher_targets(ctx, selected)
    manual = sum(((s[b, sel] - t) ** 2).sum() / sel.numel() for b, (sel, t) in enumerate(zip(selected, targets))) / 2
    assert float(loss) == pytest.approx(float(manual), rel=1e-5)


def test_cakd_empty_selection_gives_zero_loss_in_the_graph():
    logits = torch.full((2, 10, 3), -5.0, requires_grad=True)
    loss = cakd_loss(logits, [torch.zeros(0, dtype=torch.long)] * 2, [torch.zeros(0)] * 2, 1.0)
    loss.backward()
    assert float(loss) == 0.0 and logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_map_cells_handles_a_stride_mismatch():
    from clean_ros.models.anchors import FeatureGrid
    fine = FeatureGrid(4, 4, 0.0, 0.0, 1.0, 1.0, 1)
    coarse = FeatureGrid(2, 2, 0.0, 0.0, 2.0, 2.0, 6)
    cells = torch.arange(16)
    rows, cols = cells // 4, cells % 4
    assert torch.equal(map_cells(fine, coarse, cells), (rows // 2) * 2 + cols // 2)
    assert torch.equal(map_cells(coarse, fine, torch.arange(4)), torch.tensor([0, 2, 8, 10]) + 5)  # centres (1, 1)...


def test_cakd_heatmap_student_takes_the_most_confident_teacher_anchor_of_its_cell():
    torch.manual_seed(2)
    cfg_t = small_cfg()
    cfg_s = small_cfg("centerpoint_pillar_tiny", "head.shared_conv_width=16", "head.head_conv_width=8")
    teacher = TwoStageDouble(cfg_t, mode="learned")
    student = build_detector(cfg_s)
    _open_head(student, 0.0)
    batch = one_car_batch(cfg_s)
    runner = TeacherRunner(teacher)
    term = CaKDLoss(CaKDConfig(pre_nms_max=200), runner, cfg_s.head)
    out = student(batch.voxels, 2)
    selected = term.select(out)
    assert all(0 < s.numel() <= 500 for s in selected)
    rpn = runner.dense_output(batch)
    t_pos = teacher_positions(out, rpn, 0, selected[0])
    a = rpn.grid.positions_per_cell
    assert torch.equal(t_pos // a, selected[0])  # same grid here: same cell
    probs = torch.sigmoid(rpn.cls_logits[0]).max(-1).values.reshape(-1, a)
    assert torch.equal(t_pos % a, probs[selected[0]].argmax(1))
    ctx = LossContext(batch, out, None, batch.gt_boxes, batch.gt_labels, None, student)
    loss = term(ctx)
    assert float(loss) > 0 and torch.isfinite(loss)
    loss.backward()


def test_teacher_stays_in_eval_mode_and_its_statistics_never_change():
    torch.manual_seed(3)
    cfg = small_cfg()
    final = [_final(np.zeros((0, 7)), [], [])] * 2
    teacher = TwoStageDouble(cfg, mode="learned", final=final)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    parts = build_distillation(DistillConfig(method="clean", cakd=CaKDConfig(pre_nms_max=64)), teacher,
                               student := build_detector(cfg))
    _open_head(student)
    task = DetectionTask(cfg, student, loss_terms=parts.loss_terms, target_hooks=parts.target_hooks)
    task.train()
    seen = []
    teacher.rpn.bev_backbone.blocks[0][1].register_forward_pre_hook(lambda m, i: seen.append(m.training))
    result = task(one_car_batch(cfg))
    result.total.backward()
    assert seen == [False] and not any(m.training for m in teacher.modules())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert "cakd" in result.parts and not any("teacher" in n for n, _ in task.named_parameters())

    # bn_train: batch statistics during the call, running statistics untouched
    runner = TeacherRunner(teacher, bn_train=True)
    seen.clear()
    runner.dense_output(one_car_batch(cfg, seed=5))
    assert seen == [True] and not any(m.training for m in teacher.modules())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


# --------------------------------------------------------------------------- label assignment
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
    cfg = small_cfg("pointpillars_tiny", "head.iou_branch=true") if head == "anchor" else small_cfg(
        "centerpoint_pillar_tiny", "head.iou_branch=true", "head.shared_conv_width=16", "head.head_conv_width=8")
    student = build_detector(cfg)
    # Teacher box exactly on a Car anchor of cell (row 20, col 30) in frame 1 (a frame with no GT);
    # a second, low-score box elsewhere must be rejected.
    grid = student.grid
    x = grid.x_min + 30.5 * grid.cell_x
    y = grid.y_min + 20.5 * grid.cell_y
    accepted_box = [x, y, -1.0, 3.9, 1.6, 1.56, 0.0]
    rejected_box = [x, y - 6.4, -1.0, 3.9, 1.6, 1.56, 0.0]
    final = [_final(np.zeros((0, 7)), [], []), _final([accepted_box, rejected_box], [0.95, 0.4], [0, 0])]
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


def test_teacher_runs_once_per_step_for_label_assignment_and_cakd():
    torch.manual_seed(5)
    cfg = small_cfg()
    final = [_final([car(10.0, 5.0)], [0.9], [0])] * 2
    teacher = TwoStageDouble(cfg, final=final)
    student = build_detector(cfg)
    _open_head(student)
    parts = build_distillation(DistillConfig(method="clean", cakd=CaKDConfig(pre_nms_max=64)), teacher, student)
    task = DetectionTask(cfg, student, loss_terms=parts.loss_terms, target_hooks=parts.target_hooks)
    task(one_car_batch(cfg))
    assert teacher.calls == {"rpn": 1, "roi": 1, "predict": 1}
    task(one_car_batch(cfg, seed=9))  # a new batch: the teacher runs again
    assert teacher.calls == {"rpn": 2, "roi": 2, "predict": 2}


# --------------------------------------------------------------------------- IoU-aware redundancy elimination
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
    from clean_ros.geometry import bev_iou
    overlap = float(bev_iou(model.anchors[first:first + 1], model.anchors[second:second + 1]))
    assert 0.2 < overlap < 0.5  # overlapping, but below the NMS threshold
    plain = postprocess_tensors(out, cfg)[0]
    assert sorted(plain.positions.tolist()) == [first, second]
    kept = postprocess_tensors(out, gated)[0]
    assert kept.positions.tolist() == [first]


# --------------------------------------------------------------------------- logit / feature KD
@pytest.fixture(scope="module")
def plain_pair():
    torch.manual_seed(6)
    cfg = small_cfg()
    teacher = build_detector(cfg)
    student = copy.deepcopy(teacher)
    return cfg, teacher, student


@pytest.mark.parametrize("mode", ["mse", "kl"])
def test_logit_kd_zero_for_equal_logits_positive_otherwise(mode):
    torch.manual_seed(7)
    t = torch.randn(2, 50, 3)
    assert float(logit_kd_loss(t.clone(), t, mode, 2.0)) == pytest.approx(0.0, abs=1e-6)
    s = (t + torch.randn_like(t)).requires_grad_(True)
    loss = logit_kd_loss(s, t, mode, 2.0)
    loss.backward()
    assert float(loss) > 1e-3 and bool((s.grad != 0).all())


def test_logit_kd_term_with_a_teacher_copy(plain_pair):
    cfg, teacher, student = plain_pair
    batch = one_car_batch(cfg)
    term = LogitKDLoss(LogitKDConfig(), TeacherRunner(copy.deepcopy(teacher)))
    student.eval()
    assert float(term(_context(DetectionTask(cfg, student), batch))) < 1e-12
    other = build_detector(cfg)
    assert float(term(_context(DetectionTask(cfg, other), batch))) > 0


def test_feature_kd_zero_with_identity_adapter_and_gradients_reach_adapter_and_student(plain_pair):
    cfg, teacher, student = plain_pair
    batch = one_car_batch(cfg)
    teacher = copy.deepcopy(teacher)
    term = FeatureKDLoss(FeatureKDConfig(weight=2.0), TeacherRunner(teacher), 48, 48)
    with torch.no_grad():
        term.adapter.weight.copy_(torch.eye(48).view(48, 48, 1, 1))
        term.adapter.bias.zero_()
    s = copy.deepcopy(student).eval()
    assert float(term(_context(DetectionTask(cfg, s), batch))) < 1e-12
    other = build_detector(cfg)
    task = DetectionTask(cfg, other, loss_terms=[term])
    assert "feature_kd.adapter.weight" in dict(task.loss_modules.named_parameters())
    loss = term(_context(task, batch))
    assert float(loss) > 0
    loss.backward()
    assert float(term.adapter.weight.grad.abs().sum()) > 0
    assert float(other.bev_backbone.blocks[0][0].weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.parameters())


# --------------------------------------------------------------------------- SparseKD
def test_sparsekd_anchor_zero_when_equal_and_gradient_only_at_positive_anchors(plain_pair):
    cfg, teacher, student = plain_pair
    batch = one_car_batch(cfg)
    term = SparseKDLoss(SparseKDConfig(), TeacherRunner(copy.deepcopy(teacher)))
    s = copy.deepcopy(student).eval()
    parts = term(_context(DetectionTask(cfg, s), batch))
    assert float(parts["cls"]) < 1e-12 and float(parts["reg"]) < 1e-12
    other = build_detector(cfg)
    ctx = _context(DetectionTask(cfg, other), batch)
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
    ctx = _context(DetectionTask(cfg, student), batch)
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
    hook = LabelKDHook(SparseKDConfig(label_kd=True, label_kd_threshold=0.6, label_kd_max_boxes=7), runner)
    boxes, labels = hook(batch, batch.gt_boxes, batch.gt_labels)
    assert labels.tolist()[0] == [0] + [0] * 7 and labels.tolist()[1] == [-1] + [0] * 7  # appended after the GT
    assert torch.equal(boxes[0, 0], batch.gt_boxes[0, 0])


# --------------------------------------------------------------------------- teacher-guided initialisation
def test_teacher_guided_init_copies_leading_slices_and_concat_segments():
    teacher_cfg = small_cfg("pointpillars_tiny", "encoder.widths=[8, 16]",
                            "bev_backbone.layer_widths=[[16, 16], [24, 24, 24], [32, 32, 32]]",
                            "bev_backbone.num_upsample_filters=[16, 16, 16]", "head.iou_branch=true")
    student_cfg = small_cfg("pointpillars_tiny", "encoder.widths=[4, 8]",
                            "bev_backbone.layer_widths=[[8, 8], [12, 12, 12], [16, 16, 16]]",
                            "bev_backbone.num_upsample_filters=[8, 8, 8]", "head.iou_branch=true")
    torch.manual_seed(9)
    teacher, student = build_detector(teacher_cfg), build_detector(student_cfg)
    for m in teacher.modules():  # non-trivial statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    copied = teacher_guided_init(student, teacher)
    t, s = teacher.state_dict(), student.state_dict()
    assert set(copied) == set(s)
    assert torch.equal(s["encoder.linears.0.weight"], t["encoder.linears.0.weight"][:4])
    assert torch.equal(s["encoder.linears.1.weight"], t["encoder.linears.1.weight"][:8][:, [0, 1, 2, 3, 8, 9, 10, 11]])
    assert torch.equal(s["bev_backbone.blocks.0.0.weight"], t["bev_backbone.blocks.0.0.weight"][:8, :8])
    assert torch.equal(s["bev_backbone.blocks.1.4.running_mean"], t["bev_backbone.blocks.1.4.running_mean"][:12])
    assert torch.equal(s["bev_backbone.deblocks.1.0.weight"], t["bev_backbone.deblocks.1.0.weight"][:12, :8])
    head_in = list(range(8)) + list(range(16, 24)) + list(range(32, 40))
    for name in ("conv_cls", "conv_box", "conv_dir", "conv_iou"):
        assert torch.equal(s[f"head.{name}.weight"], t[f"head.{name}.weight"][:, head_in])
        assert torch.equal(s[f"head.{name}.bias"], t[f"head.{name}.bias"])
    assert concat_channels([16, 16, 16], [8, 8, 8]).tolist() == head_in


def test_teacher_guided_init_with_equal_widths_reproduces_the_teacher(plain_pair):
    cfg, teacher, _ = plain_pair
    student = build_detector(cfg)
    teacher_guided_init(student, teacher)
    batch = one_car_batch(cfg)
    student.eval(), teacher.eval()
    with torch.no_grad():
        assert torch.equal(student(batch.voxels, 2).cls_logits, teacher(batch.voxels, 2).cls_logits)


def test_teacher_guided_init_agrees_with_pruning_surgery_on_leading_filters():
    """The same weight mapping as training.prune's physical surgery when it keeps the leading filters."""
    from training.prune import build_graph, prune_with_keep
    teacher_cfg = small_cfg("pointpillars_tiny", "encoder.widths=[8, 16]",
                            "bev_backbone.layer_widths=[[16, 16], [24, 24, 24], [32, 32, 32]]",
                            "bev_backbone.num_upsample_filters=[16, 16, 16]")
    student_cfg = small_cfg("pointpillars_tiny", "encoder.widths=[4, 8]",
                            "bev_backbone.layer_widths=[[8, 12], [12, 8, 12], [16, 16, 8]]",
                            "bev_backbone.num_upsample_filters=[8, 4, 8]")
    torch.manual_seed(12)
    teacher, student = build_detector(teacher_cfg), build_detector(student_cfg)
    teacher_guided_init(student, teacher)
    widths = {layer.name: layer.width for layer in build_graph(student, prune_encoder=True)}
    keep = {name: torch.arange(w) for name, w in widths.items()}
    pruned, _, _ = prune_with_keep(teacher, build_graph(teacher, prune_encoder=True), keep, fold_constants=False)
    ours, theirs = student.state_dict(), pruned.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


# --------------------------------------------------------------------------- PointDistiller
def test_knn_graph_in_feature_space_and_edge_layout():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
    assert knn_graph(features, 1).squeeze(1).tolist() == [1, 0, 1, 2]
    assert knn_graph(features, 2).tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    edges = edge_features(features, knn_graph(features, 1))
    assert edges.shape == (4, 1, 4)
    assert edges[2, 0].tolist() == [1.0, 0.0, 3.0, 0.0]  # [neighbour ; centre]


def test_pointdistiller_graph_is_built_in_teacher_space(plain_pair):
    cfg, teacher, _ = plain_pair
    runner = TeacherRunner(copy.deepcopy(teacher))
    student = build_detector(cfg)
    term = PointDistillerLoss(PointDistillerConfig(k=1, importance="uniform"), runner, student)
    term.eval()  # deterministic BN for comparing two computations
    teacher_f = torch.tensor([[0.0] * 15 + [v] for v in (0.0, 1.0, 3.0, 10.0)])
    student_f = torch.tensor([[0.0] * 15 + [v] for v in (0.0, 10.0, 1.0, 3.0)])  # other neighbours in its own space
    nodes = torch.arange(4)
    loss = term.graph_loss(student_f, teacher_f, [nodes], [torch.zeros(4)])

    def reference(graph_space):
        nb = knn_graph(graph_space, 1)
        t = term.teacher_edges(edge_features(teacher_f, nb).permute(2, 0, 1).unsqueeze(0))
        s = term.student_edges(edge_features(student_f, nb).permute(2, 0, 1).unsqueeze(0))
        return ((s - t) ** 2).mean()
    assert float(loss) == pytest.approx(float(reference(teacher_f)), rel=1e-6)
    assert float(loss) != pytest.approx(float(reference(student_f)), rel=1e-3)


def test_pointdistiller_zero_when_equal_positive_otherwise_and_reweighting(plain_pair):
    cfg, teacher, student = plain_pair
    batch = one_car_batch(cfg)
    runner = TeacherRunner(copy.deepcopy(teacher))
    s = copy.deepcopy(student).eval()
    term = PointDistillerLoss(PointDistillerConfig(num_nodes=64, k=4), runner, s)
    term.student_edges.load_state_dict(term.teacher_edges.state_dict())
    task = DetectionTask(cfg, s, loss_terms=[term])
    assert float(term(_context(task, batch))) < 1e-12
    other = build_detector(cfg)
    term = PointDistillerLoss(PointDistillerConfig(num_nodes=64, k=4), runner, other)
    task = DetectionTask(cfg, other, loss_terms=[term])
    result = task(batch)
    assert float(result.parts["pointdistiller"]) > 0
    result.total.backward()
    assert float(other.encoder.linears[0].weight.grad.abs().sum()) > 0
    assert float(term.teacher_edges[0].weight.grad.abs().sum()) > 0  # the teacher's edge encoder is trained
    # N * softmax(importance / tau) weights: error concentrated on the important node
    err_nodes = torch.arange(3)
    t_f = torch.randn(3, 16)
    w_loss = term.graph_loss(torch.zeros(3, 16), t_f, [err_nodes], [torch.tensor([100.0, 0.0, 0.0])])
    u_loss = term.graph_loss(torch.zeros(3, 16), t_f, [err_nodes], [torch.zeros(3)])
    assert float(w_loss) != pytest.approx(float(u_loss), rel=1e-3)


# --------------------------------------------------------------------------- config / assembly
def test_distill_config_loads_with_overrides_and_rejects_bad_values(tmp_path):
    from clean_ros.config import ConfigError, load_config
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


# --------------------------------------------------------------------------- the real TwoStageDetector
def _real_teacher(rpn_name="pointpillars_tiny", pool=("bev",)):
    two_stage = pytest.importorskip("clean_ros.models.two_stage", reason="TwoStageDetector not in the tree yet")
    from clean_ros.models.configs import RoIHeadConfig, TwoStageConfig
    rpn = small_cfg() if rpn_name == "pointpillars_tiny" else load_detector_config(
        find_config(rpn_name), ["point_cloud_range=[0.0, -12.8, -3.0, 25.6, 12.8, 1.0]"])
    head = RoIHeadConfig(pool_sources=list(pool), bev_grid_size=3, voxel_grid_size=3, point_width=8, mlp_widths=[16],
                         dropout=0.0, proposal_pre_nms_test=256, num_rois_test=20)
    return two_stage.TwoStageDetector(TwoStageConfig(rpn=rpn, roi_head=head))


def test_clean_with_the_real_two_stage_teacher_runs_it_once_per_step():
    torch.manual_seed(10)
    teacher = _real_teacher()
    _open_head(teacher.rpn)  # RPN probabilities 0.5: final boxes pass the score thresholds
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    encoder_calls = []
    teacher.rpn.encoder.register_forward_hook(lambda *a: encoder_calls.append(1))
    cfg = small_cfg()
    student = build_detector(cfg)
    _open_head(student)
    dcfg = DistillConfig(method="clean", cakd=CaKDConfig(pre_nms_max=64),
                         label_assign=LabelAssignConfig(thresholds=[0.0, 0.0, 0.0]))  # accept every final box
    parts = build_distillation(dcfg, teacher, student)
    task = DetectionTask(cfg, student, loss_terms=parts.loss_terms, target_hooks=parts.target_hooks)
    task.train()
    batch = one_car_batch(cfg)
    result = task(batch)
    result.total.backward()
    assert len(encoder_calls) == 1  # one teacher pass: final boxes, RPN output and CaKD RoIs share it
    assert float(result.parts["cakd"]) > 0
    accepted = parts.target_hooks[0].last_accepted
    assert sum(a.boxes.shape[0] for a in accepted) > 0
    frame = 0 if accepted[0].boxes.shape[0] else 1
    assert torch.equal(parts.target_hooks[0].last_accepted[frame].boxes[0],
                       _context(task, batch).gt_boxes[frame, 0])  # teacher boxes in front of the GT
    assert not any(m.training for m in teacher.modules())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    # the RoI logits CaKD uses are the teacher's own second stage on its own first-stage boxes
    ctx = _context(task, batch)
    term = parts.loss_terms[0]
    selected = term.select(ctx.output)
    targets = term.teacher_targets(ctx, selected)
    rpn, volume = teacher.rpn_forward(batch.voxels, 2)
    n = min(s.numel() for s in selected)
    boxes = decode(rpn, cfg.head)[0]
    rois = torch.stack([boxes[b, sel[:n]] for b, sel in enumerate(selected)])
    with torch.no_grad():  # eval-mode RoI head: each RoI's logit is independent of the others
        expected, _ = teacher.roi_forward(rpn, rois)
    for b in range(2):
        assert torch.allclose(targets[b][:n], expected[b], atol=1e-5)


def test_cakd_with_a_second_teacher_pooling_voxels_and_a_pillar_student():
    torch.manual_seed(11)
    teacher = _real_teacher("second_tiny", pool=("bev", "voxel"))
    cfg = small_cfg()
    student = build_detector(cfg)
    _open_head(student)
    parts = build_distillation(DistillConfig(method="cakd", cakd=CaKDConfig(pre_nms_max=64)), teacher, student)
    assert parts.runner.teacher_voxels.__class__.__name__ == "Revoxelizer"  # other voxel size: own voxels
    task = DetectionTask(cfg, student, loss_terms=parts.loss_terms)
    result = task(one_car_batch(cfg))
    assert float(result.parts["cakd"]) > 0
    result.total.backward()
    assert float(student.head.conv_cls.weight.grad.abs().sum()) > 0


def test_teacher_guided_init_sparse_backbone_uses_c_times_depth_plus_d():
    teacher = _real_teacher("second_tiny", pool=("bev",)).rpn
    extra = ["point_cloud_range=[0.0, -12.8, -3.0, 25.6, 12.8, 1.0]",
             "backbone_3d.widths=[[4, 4], [8, 8], [12, 12], [16, 16]]", "backbone_3d.out_width=16",
             "bev_backbone.layer_widths=[[32, 32], [48, 48, 48]]", "bev_backbone.num_upsample_filters=[24, 24]"]
    student = build_detector(load_detector_config(find_config("second_tiny"), extra))
    teacher_guided_init(student, teacher)
    t, s = teacher.state_dict(), student.state_dict()
    depth = teacher.backbone_3d.depth
    assert depth == student.backbone_3d.depth == 2
    kept = bev_channels_of(torch.arange(16), depth)
    assert torch.equal(s["bev_backbone.blocks.0.0.weight"], t["bev_backbone.blocks.0.0.weight"][:32][:, kept])
    # spconv weights [out, kz, ky, kx, in]: leading out and leading in (last dim)
    assert torch.equal(s["backbone_3d.stages.1.1.0.weight"], t["backbone_3d.stages.1.1.0.weight"][:8, ..., :8])
    assert torch.equal(s["backbone_3d.stages.0.0.0.weight"], t["backbone_3d.stages.0.0.0.weight"][:4])
    head_in = list(range(24)) + list(range(48, 72))
    assert torch.equal(s["head.conv_cls.weight"], t["head.conv_cls.weight"][:, head_in])


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
        term(_context(DetectionTask(center.cfg, center), one_car_batch(center.cfg)))


def test_a_few_cakd_steps_pull_the_students_selected_logits_to_the_teacher():
    """Training on the CaKD term alone lowers it: the loss and its gradients point the right way."""
    torch.manual_seed(13)
    teacher = _real_teacher()
    cfg = small_cfg()
    student = build_detector(cfg)
    _open_head(student, 1.0)
    parts = build_distillation(DistillConfig(method="cakd", cakd=CaKDConfig(pre_nms_max=64, post_nms_max_anchor=32)),
                               teacher, student)
    term = parts.loss_terms[0]
    task = DetectionTask(cfg, student)
    batch = one_car_batch(cfg)
    optimizer = torch.optim.Adam(student.head.parameters(), lr=0.05)
    losses = []
    for _ in range(12):
        loss = term(_context(task, batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses


# --------------------------------------------------------------------------- inside the real Trainer
@pytest.fixture(scope="module")
def sim_root(tmp_path_factory):
    from training.sim.config import config_from_dict
    from training.simulate import simulate_dataset

    out = tmp_path_factory.mktemp("sim_distill")
    cfg = config_from_dict({"sensor": {"azimuth_resolution_deg": 0.4}, "dataset": {"val_fraction": 0.25}})
    simulate_dataset(cfg, out, n_frames=4, seed=0, workers=1, progress=False)
    return out


@pytest.mark.parametrize("method", ["clean", "feature_kd"])
def test_distillation_runs_in_the_trainer_and_checkpoints_adapters(sim_root, tmp_path, method):
    from clean_ros.config import load_config, to_dict
    from training import checkpoint as ckpt_io
    from training.config import TrainConfig
    from training.data.kitti_dataset import KittiDataset
    from training.run_dir import RunDir
    from training.trainer import Trainer

    model = to_dict(small_cfg())
    cfg = load_config(TrainConfig, data={
        "name": "distill", "model": model, "epochs": 1, "batch_size": 2, "workers": 0, "eval_interval": 0,
        "log_interval": 1, "seed": 0, "max_iterations": 2,
        "data": {"root": str(sim_root), "train_split": "trainval", "val_split": "trainval"},
        "augment": {"gt_sampling": False, "global_rotation": False, "global_scaling": False, "random_flip_x": False,
                    "shuffle_points": False}})
    torch.manual_seed(14)
    teacher = _real_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_detector(cfg.model)
    parts = build_distillation(DistillConfig(method=method, cakd=CaKDConfig(pre_nms_max=64)), teacher, student)
    task = DetectionTask(cfg.model, student, loss_terms=parts.loss_terms, target_hooks=parts.target_hooks)
    train_set = KittiDataset(cfg.data, "trainval", training=True)
    result = Trainer(cfg, task, train_set, None, RunDir(tmp_path / "run", tensorboard=False), progress=False).fit()
    assert result.global_step == 2
    header = (tmp_path / "run" / "losses.csv").read_text().splitlines()[0]
    assert ("cakd" if method == "clean" else "feature_kd") in header
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    ckpt = ckpt_io.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert not any(k.startswith("rpn.") or "roi_head" in k for k in ckpt["model"])  # the teacher is not saved
    if method == "feature_kd":
        adapter = ckpt["loss_terms"]["feature_kd"]["adapter.weight"]
        assert torch.equal(adapter, parts.loss_terms[0].adapter.weight.detach())


def test_cakd_heatmap_student_on_a_finer_grid_maps_pixels_to_the_teacher_cell_by_centre():
    torch.manual_seed(15)
    cfg_t = small_cfg()
    cfg_s = small_cfg("centerpoint_pillar_tiny", "head.shared_conv_width=16", "head.head_conv_width=8",
                      "bev_backbone.upsample_strides=[2, 4, 8]")  # stride 1: 80 x 80 pixels vs 40 x 40 teacher cells
    student = build_detector(cfg_s)
    assert (student.grid.height, student.grid.width) == (80, 80)
    _open_head(student, 0.0)
    batch = one_car_batch(cfg_s)
    runner = TeacherRunner(TwoStageDouble(cfg_t))
    term = CaKDLoss(CaKDConfig(pre_nms_max=100), runner, cfg_s.head)
    out = student(batch.voxels, 2)
    sel = term.select(out)[1]
    rpn = runner.dense_output(batch)
    t_pos = teacher_positions(out, rpn, 1, sel)
    rows, cols = sel // 80, sel % 80
    assert torch.equal(t_pos // rpn.grid.positions_per_cell, (rows // 2) * 40 + cols // 2)
    loss = term(LossContext(batch, out, None, batch.gt_boxes, batch.gt_labels, None, student))
    assert float(loss) > 0


def test_load_teacher_from_config_and_checkpoint(tmp_path):
    from training.distill.teacher import load_teacher
    torch.manual_seed(16)
    detector = load_teacher("pointpillars_tiny")
    torch.save(detector.state_dict(), tmp_path / "w.pt")
    again = load_teacher("pointpillars_tiny", str(tmp_path / "w.pt"))
    assert all(torch.equal(a, b) for a, b in zip(detector.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="do not fit"):
        load_teacher("centerpoint_pillar_tiny", str(tmp_path / "w.pt"))
    pytest.importorskip("clean_ros.models.two_stage", reason="TwoStageDetector not in the tree yet")
    assert hasattr(load_teacher("teacher_two_stage_tiny"), "roi_forward")


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
