"""CaKD (training/distill/cakd.py): position selection, the loss against the teacher's RoI logits, anchor and
heatmap students, stride mismatches; with the TwoStageDouble test double and with the real TwoStageDetector."""
from __future__ import annotations

import copy

import pytest
import torch

from clean_ros.models.detector import build_detector
from training.distill import DistillConfig, build_distillation
from training.distill.cakd import CaKDLoss, cakd_loss, inside_teacher_grid, map_cells, teacher_positions
from training.distill.distill_config import CaKDConfig
from training.distill.teacher import TeacherRunner
from training.task import DetectionTask, LossContext

from distill_helpers import small_cfg, one_car_batch, TwoStageDouble, open_head, loss_context, real_teacher

# the shared machine: one thread is much faster under load (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def anchor_pair():
    torch.manual_seed(0)
    cfg = small_cfg()
    teacher = TwoStageDouble(cfg, mode="echo")
    open_head(teacher.rpn)
    student = copy.deepcopy(teacher.rpn)
    return cfg, teacher, student


def test_cakd_is_zero_when_the_student_is_the_teacher_rpn_and_positive_otherwise(anchor_pair):
    cfg, teacher, student = anchor_pair
    batch = one_car_batch(cfg)
    runner = TeacherRunner(copy.deepcopy(teacher))
    term = CaKDLoss(CaKDConfig(pre_nms_max=256), runner, cfg.head)
    student.eval()  # same BN mode as the (eval) teacher: identical logits
    ctx = loss_context(DetectionTask(cfg, student), batch)
    selected = term.select(ctx.output)
    assert all(0 < s.numel() <= 200 for s in selected)
    assert float(term(ctx)) < 1e-10  # RoIs are the teacher's boxes at the same anchors, echoed back exactly

    other = copy.deepcopy(student)
    open_head(other, 0.5)
    ctx = loss_context(DetectionTask(cfg, other), batch)
    loss = term(ctx)
    # every selected logit is 0.5 above the echoed teacher logit at the same position... up to the re-selection
    assert float(loss) > 0.01


def test_cakd_selection_and_gradient_support(anchor_pair):
    cfg, teacher, student = anchor_pair
    torch.manual_seed(1)
    other = build_detector(cfg)
    open_head(other)
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


def test_positions_outside_the_teachers_grid_get_no_advice():
    """A student all around the car taught by a front teacher: positions behind the car are dropped, not clamped to
    the teacher's border (where its RoI would judge a box at the wrong place)."""
    from types import SimpleNamespace

    from clean_ros.models.anchors import FeatureGrid
    student = FeatureGrid(4, 4, -4.0, -4.0, 2.0, 2.0, 2)  # x, y in [-4, 4), 2 anchors per cell
    front = FeatureGrid(4, 2, 0.0, -4.0, 2.0, 2.0, 2)  # x in [0, 4)
    s_out = SimpleNamespace(grid=student, head_type="anchor")
    t_out = SimpleNamespace(grid=front, head_type="anchor")
    positions = torch.arange(student.num_positions)
    inside = inside_teacher_grid(s_out, t_out, positions)
    cols = (positions // 2) % 4  # cell centres x = -3, -1, 1, 3
    assert torch.equal(inside, cols >= 2)
    assert bool(inside_teacher_grid(s_out, s_out, positions).all())


def test_cakd_heatmap_student_takes_the_most_confident_teacher_anchor_of_its_cell():
    torch.manual_seed(2)
    cfg_t = small_cfg()
    cfg_s = small_cfg("centerpoint_pillar_tiny", "head.shared_conv_width=16", "head.head_conv_width=8")
    teacher = TwoStageDouble(cfg_t, mode="learned")
    student = build_detector(cfg_s)
    open_head(student, 0.0)
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


def test_cakd_heatmap_student_on_a_finer_grid_maps_pixels_to_the_teacher_cell_by_centre():
    torch.manual_seed(15)
    cfg_t = small_cfg()
    cfg_s = small_cfg("centerpoint_pillar_tiny", "head.shared_conv_width=16", "head.head_conv_width=8",
                      "bev_backbone.upsample_strides=[2, 4, 8]")  # stride 1: 80 x 80 pixels vs 40 x 40 teacher cells
    student = build_detector(cfg_s)
    assert (student.grid.height, student.grid.width) == (80, 80)
    open_head(student, 0.0)
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


def test_cakd_with_a_second_teacher_pooling_voxels_and_a_pillar_student():
    torch.manual_seed(11)
    teacher = real_teacher("second_tiny", pool=("bev", "voxel"))
    cfg = small_cfg()
    student = build_detector(cfg)
    open_head(student)
    parts = build_distillation(DistillConfig(method="cakd", cakd=CaKDConfig(pre_nms_max=64)), teacher, student)
    assert parts.voxelizers["teacher"].voxel_size == tuple(teacher.rpn.cfg.voxel_size)  # its own voxels
    task = DetectionTask(cfg, student, loss_terms=parts.loss_terms, extra_voxelizers=parts.voxelizers)
    result = task(one_car_batch(cfg, teacher_cfg=teacher.rpn.cfg))
    assert float(result.parts["cakd"]) > 0
    result.total.backward()
    assert float(student.head.conv_cls.weight.grad.abs().sum()) > 0


def test_a_few_cakd_steps_pull_the_students_selected_logits_to_the_teacher():
    """Training on the CaKD term alone lowers it: the loss and its gradients point the right way."""
    torch.manual_seed(13)
    teacher = real_teacher()
    cfg = small_cfg()
    student = build_detector(cfg)
    open_head(student, 1.0)
    parts = build_distillation(DistillConfig(method="cakd", cakd=CaKDConfig(pre_nms_max=64, post_nms_max_anchor=32)),
                               teacher, student)
    term = parts.loss_terms[0]
    task = DetectionTask(cfg, student)
    batch = one_car_batch(cfg)
    optimizer = torch.optim.Adam(student.head.parameters(), lr=0.05)
    losses = []
    for _ in range(12):
        loss = term(loss_context(task, batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses
