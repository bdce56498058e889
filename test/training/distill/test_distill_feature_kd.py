"""Feature KD baseline (training/distill/feature_kd.py): BEV features through a trained 1x1 adapter."""
from __future__ import annotations

import copy

import pytest
import torch

from clean_ros.models.detector import build_detector
from training.distill.distill_config import FeatureKDConfig
from training.distill.feature_kd import FeatureKDLoss
from training.distill.teacher import TeacherRunner
from training.task import DetectionTask

from distill_helpers import one_car_batch, loss_context

# the shared machine: one thread is much faster under load (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_feature_kd_zero_with_identity_adapter_and_gradients_reach_adapter_and_student(plain_pair):
    cfg, teacher, student = plain_pair
    batch = one_car_batch(cfg)
    teacher = copy.deepcopy(teacher)
    term = FeatureKDLoss(FeatureKDConfig(weight=2.0), TeacherRunner(teacher), 48, 48)
    with torch.no_grad():
        term.adapter.weight.copy_(torch.eye(48).view(48, 48, 1, 1))
        term.adapter.bias.zero_()
    s = copy.deepcopy(student).eval()
    assert float(term(loss_context(DetectionTask(cfg, s), batch))) < 1e-12
    other = build_detector(cfg)
    task = DetectionTask(cfg, other, loss_terms=[term])
    assert "feature_kd.adapter.weight" in dict(task.loss_modules.named_parameters())
    loss = term(loss_context(task, batch))
    assert float(loss) > 0
    loss.backward()
    assert float(term.adapter.weight.grad.abs().sum()) > 0
    assert float(other.bev_backbone.blocks[0][0].weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.parameters())
