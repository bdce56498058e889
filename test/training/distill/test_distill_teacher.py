"""The shared teacher (training/distill/teacher.py): TeacherRunner keeps the teacher frozen and in eval mode,
runs it once per step for every term that needs it, and load_teacher builds one from a config + checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clean_ros.models.detector import build_detector
from clean_ros.inference.postprocess import decode
from training.distill import DistillConfig, build_distillation
from training.distill.distill_config import CaKDConfig, LabelAssignConfig
from training.distill.teacher import TeacherRunner
from training.task import DetectionTask

from distill_helpers import (small_cfg, car, one_car_batch, TwoStageDouble, open_head, loss_context, final_detections,
                             real_teacher)

# the shared machine: one thread is much faster under load (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_teacher_stays_in_eval_mode_and_its_statistics_never_change():
    torch.manual_seed(3)
    cfg = small_cfg()
    final = [final_detections(np.zeros((0, 7)), [], [])] * 2
    teacher = TwoStageDouble(cfg, mode="learned", final=final)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    parts = build_distillation(DistillConfig(method="clean", cakd=CaKDConfig(pre_nms_max=64)), teacher,
                               student := build_detector(cfg))
    open_head(student)
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


def test_teacher_runs_once_per_step_for_label_assignment_and_cakd():
    torch.manual_seed(5)
    cfg = small_cfg()
    final = [final_detections([car(10.0, 5.0)], [0.9], [0])] * 2
    teacher = TwoStageDouble(cfg, final=final)
    student = build_detector(cfg)
    open_head(student)
    parts = build_distillation(DistillConfig(method="clean", cakd=CaKDConfig(pre_nms_max=64)), teacher, student)
    task = DetectionTask(cfg, student, loss_terms=parts.loss_terms, target_hooks=parts.target_hooks)
    task(one_car_batch(cfg))
    assert teacher.calls == {"rpn": 1, "roi": 1, "predict": 1}
    task(one_car_batch(cfg, seed=9))  # a new batch: the teacher runs again
    assert teacher.calls == {"rpn": 2, "roi": 2, "predict": 2}


def test_clean_with_the_real_two_stage_teacher_runs_it_once_per_step():
    torch.manual_seed(10)
    teacher = real_teacher()
    open_head(teacher.rpn)  # RPN probabilities 0.5: final boxes pass the score thresholds
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    encoder_calls = []
    teacher.rpn.encoder.register_forward_hook(lambda *a: encoder_calls.append(1))
    cfg = small_cfg()
    student = build_detector(cfg)
    open_head(student)
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
                       loss_context(task, batch).gt_boxes[frame, 0])  # teacher boxes in front of the GT
    assert not any(m.training for m in teacher.modules())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    # the RoI logits CaKD uses are the teacher's own second stage on its own first-stage boxes
    ctx = loss_context(task, batch)
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
