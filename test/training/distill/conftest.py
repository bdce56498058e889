"""Fixtures of the distillation tests (their plain helpers are in distill_helpers.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def plain_pair():
    """Distillation tests: a tiny PointPillars config, a detector as teacher and an identical copy as student
    (one pair per test module; distill_helpers.py has the other distillation helpers)."""
    import copy

    import torch

    from clean_ros.models.detector import build_detector
    from distill_helpers import small_cfg

    torch.manual_seed(6)
    cfg = small_cfg()
    teacher = build_detector(cfg)
    student = copy.deepcopy(teacher)
    return cfg, teacher, student
