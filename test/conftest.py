"""Shared fixtures: the real KITTI sample frames and small helpers."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # tests run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))

KITTI_SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/kitti_sample"


@pytest.fixture(scope="session")
def kitti_sample() -> Path:
    """Root of the six real KITTI frames (training/ and testing/); the test is skipped when they are absent."""
    if not (KITTI_SAMPLE / "training" / "velodyne").is_dir():
        pytest.skip(f"KITTI sample frames not found at {KITTI_SAMPLE}")
    return KITTI_SAMPLE


def read_velodyne(path: Path) -> np.ndarray:
    """(N, 4) float32 points of a KITTI .bin file (test helper, no validation)."""
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def one_thread():
    """One torch thread for the test (on a shared 2-core machine two spin-waiting OpenMP threads are several times
    slower), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


DEFAULT_BUNDLE = REPO_ROOT / "models" / "default"


@pytest.fixture(scope="session")
def default_bundle() -> Path:
    """The embedded default bundle (models/default); the test is skipped when it is absent."""
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"default bundle not found at {DEFAULT_BUNDLE}")
    return DEFAULT_BUNDLE


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
