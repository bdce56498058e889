"""Logit KD baseline (training/distill/logit_kd.py): MSE / KL on the class logits."""
from __future__ import annotations

import copy

import pytest
import torch

from clean_ros.models.detector import build_detector
from training.distill.distill_config import LogitKDConfig
from training.distill.logit_kd import LogitKDLoss, logit_kd_loss
from training.distill.teacher import TeacherRunner
from training.task import DetectionTask

from distill_helpers import one_car_batch, loss_context

# the shared machine: one thread is much faster under load (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


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
    assert float(term(loss_context(DetectionTask(cfg, student), batch))) < 1e-12
    other = build_detector(cfg)
    assert float(term(loss_context(DetectionTask(cfg, other), batch))) > 0
