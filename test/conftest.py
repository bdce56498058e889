"""Shared fixtures of the whole suite: the real KITTI sample frames, the default bundle and small helpers.

The test tree mirrors the source tree (test/clean_ros/..., test/training/..., test/bench, test/project); fixtures
used by one folder live in that folder's conftest.py, plain helpers in shared_helpers.py (and
training/distill/distill_helpers.py for the distillation tests)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

TEST_ROOT = Path(__file__).resolve().parent
REPO_ROOT = TEST_ROOT.parent
# tests run from a checkout without installing the package; helper modules are imported by name from any folder
for folder in (REPO_ROOT, TEST_ROOT, TEST_ROOT / "training" / "distill"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from shared_helpers import DEFAULT_BUNDLE, KITTI_SAMPLE, read_velodyne  # noqa: E402,F401  (read_velodyne: kept here)


@pytest.fixture(scope="session")
def kitti_sample() -> Path:
    """Root of the six real KITTI frames (training/ and testing/); the test is skipped when they are absent."""
    if not (KITTI_SAMPLE / "training" / "velodyne").is_dir():
        pytest.skip(f"KITTI sample frames not found at {KITTI_SAMPLE}")
    return KITTI_SAMPLE


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


@pytest.fixture(scope="session")
def default_bundle() -> Path:
    """The embedded default bundle (models/default); the test is skipped when it is absent."""
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"default bundle not found at {DEFAULT_BUNDLE}")
    return DEFAULT_BUNDLE
