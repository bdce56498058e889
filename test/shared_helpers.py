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


def bundle_with_intensity_level(bundle: Path, directory: Path, level: float | None) -> Path:
    """A copy of `bundle` in directory/bundle whose manifest records `level` as intensity_level (None: no such
    field, a bundle written before it existed)."""
    import json
    import shutil

    copy = directory / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.pop("intensity_level", None)
    if level is not None:
        manifest["intensity_level"] = level
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return copy


def assert_same_detections(got: tuple, want: tuple, threshold, edge: float = 0.03, near: float = 0.9) -> None:
    """Two detection sets of one scene seen two ways (e.g. another sensor mount, undone): (boxes (N, 7), scores (N,),
    labels (N,)) each, boxes in one frame. threshold: one score threshold, or {label: threshold}.

    Float rounding of the transform moves a few points across a pillar edge (a handful per 120k-point scan on a
    0.24 m grid), which nudges the nearby weak boxes (measured: a score by 0.024, a box by 5 cm). So: a box within
    `edge` of its score threshold may be in one set only; every other box pairs one to one (nearest centre, same
    label) within 0.05 in score and 0.1 m / 0.1 rad in the box (yaw modulo pi: a weak box's direction may flip);
    and at least `near` of the pairs agree to 0.01 in score and 2 cm / 0.02 rad (yaw modulo 2 pi). A wrong mount
    moves far boxes by decimetres (0.05 rad of pitch is 1 m at 20 m)."""
    from scipy.optimize import linear_sum_assignment

    (g_boxes, g_scores, g_labels), (w_boxes, w_scores, w_labels) = (
        (np.asarray(b, np.float64).reshape(-1, 7), np.asarray(s, np.float64), np.asarray(lab))
        for b, s, lab in (got, want))
    cost = (np.linalg.norm(g_boxes[:, None, :3] - w_boxes[None, :, :3], axis=2)
            + 100.0 * (g_labels[:, None] != w_labels[None, :]) + 10.0 * np.abs(g_scores[:, None] - w_scores[None, :]))
    g_idx, w_idx = linear_sum_assignment(cost)
    paired = cost[g_idx, w_idx] < 1.0  # a pair at all: same label, centres within ~1 m, scores close
    g_idx, w_idx = g_idx[paired], w_idx[paired]
    for scores, labels, idx, name in ((g_scores, g_labels, g_idx, "got"), (w_scores, w_labels, w_idx, "want")):
        alone = np.setdiff1d(np.arange(len(scores)), idx)
        floor = np.array([threshold[lab] if isinstance(threshold, dict) else threshold for lab in labels[alone]])
        strong = alone[scores[alone] >= floor + edge]
        assert len(strong) == 0, f"{name}: boxes {strong.tolist()} (scores {scores[strong].round(3).tolist()}) unpaired"
    np.testing.assert_array_equal(g_labels[g_idx], w_labels[w_idx])
    score_error = np.abs(g_scores[g_idx] - w_scores[w_idx])
    box_error = np.abs(g_boxes[g_idx] - w_boxes[w_idx])
    yaw = g_boxes[g_idx, 6] - w_boxes[w_idx, 6]
    box_error[:, 6] = np.abs(np.angle(np.exp(2j * yaw))) / 2  # modulo pi: a weak box's direction bin may flip
    assert score_error.max(initial=0.0) <= 0.05 and box_error.max(initial=0.0) <= 0.1, \
        f"worst pair: score {score_error.max(initial=0.0):.3f}, box {box_error.max(initial=0.0):.3f}"
    box_error[:, 6] = np.abs(np.angle(np.exp(1j * yaw)))  # the close pairs: modulo 2 pi
    agree = (score_error <= 0.01) & (box_error.max(axis=1, initial=0.0) <= 2e-2)
    assert len(g_idx) and agree.mean() >= near, f"{agree.sum()} of {len(g_idx)} pairs agree closely"
