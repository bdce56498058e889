"""Helpers shared by tests anywhere under test/ (fixtures are in conftest.py files; import helpers from here, not
from conftest: each folder may have its own conftest.py, so the module name `conftest` is not one file)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

TEST_ROOT = Path(__file__).resolve().parent
REPO_ROOT = TEST_ROOT.parent
KITTI_SAMPLE = REPO_ROOT.parent / "shared/data/kitti_sample"
DEFAULT_BUNDLE = REPO_ROOT / "models" / "default"


def read_velodyne(path: Path) -> np.ndarray:
    """(N, 4) float32 points of a KITTI .bin file (test helper, no validation)."""
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)
