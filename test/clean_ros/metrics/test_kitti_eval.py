"""KITTI evaluation: hand-computed APs, devkit corner cases, the CLI, the real sample frames.

The numbers here follow the official devkit's arithmetic, including its small-sample behaviour: the precision
of the k-th recall threshold is stored at sample point k (thresholds are spaced for recall steps of 1/40), so
with fewer than 40 counted objects even a perfect detector scores below 100 (n objects -> R40 = (n-1)/40).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clean_ros.cloud.kitti import KittiObjects, format_labels, read_labels
from clean_ros.metrics.kitti_eval import (evaluate, format_results, image_overlap, mean_ap_3d_moderate,
                                          recall_thresholds)

REPO = Path(__file__).resolve().parents[3]
SAMPLE = Path(__file__).resolve().parents[4] / "shared/data/kitti_sample"
KEYS = ("3d_R40", "bev_R40", "bbox_R40", "aos_R40", "3d_R11", "bev_R11", "bbox_R11", "aos_R11")


def objects(rows: list[dict], scores=None) -> KittiObjects:
    """rows: name, slot (lays the object out: 2D box and 3D position), optional height_px/occ/trunc/alpha/ry."""
    if not rows:
        return KittiObjects.empty(with_score=scores is not None)
    n = len(rows)
    bbox, loc, dims = np.zeros((n, 4)), np.zeros((n, 3)), np.zeros((n, 3))
    sizes = {"Car": (1.5, 1.6, 3.9), "Van": (2.2, 1.9, 5.0), "Pedestrian": (1.8, 0.6, 0.8),
             "Person_sitting": (1.2, 0.6, 0.8), "Cyclist": (1.7, 0.6, 1.8), "DontCare": (-1, -1, -1)}
    for i, r in enumerate(rows):
        k = r["slot"]
        bbox[i] = [10 + 120 * k, 150, 10 + 120 * k + 60, 150 + r.get("height_px", 50)]
        loc[i] = [-20 + 8 * k, 1.7, 30.0] if r["name"] != "DontCare" else [-1000, -1000, -1000]
        dims[i] = sizes[r["name"]]
        if "bbox" in r:
            bbox[i] = r["bbox"]
        if "dims" in r:
            dims[i] = r["dims"]
    return KittiObjects(np.array([r["name"] for r in rows]), np.array([r.get("trunc", 0.0) for r in rows]),
                        np.array([r.get("occ", 0) for r in rows]), np.array([r.get("alpha", 0.1) for r in rows]),
                        bbox, dims, loc, np.array([r.get("ry", 0.2) for r in rows]),
                        None if scores is None else np.asarray(scores, dtype=float))


def all_metrics(result: dict, cls: str, difficulty: int, kind: str = "R40") -> set:
    return {round(result[cls][f"{m}_{kind}"][difficulty], 9) for m in ("bbox", "bev", "3d")}


# --------------------------------------------------------------------------- protocol
def test_perfect_detector_scores_100_and_no_detections_0():
    # 45 frames with one object of each class: 45 counted objects per class (>= 41 recall sample points)
    frames = [objects([{"name": "Car", "slot": 0}, {"name": "Pedestrian", "slot": 2}, {"name": "Cyclist", "slot": 4}])
              for _ in range(45)]
    dets = [objects([{"name": "Car", "slot": 0}, {"name": "Pedestrian", "slot": 2}, {"name": "Cyclist", "slot": 4}],
                    scores=[0.9 - 0.01 * i, 0.8, 0.7]) for i in range(45)]
    result = evaluate(frames, dets)
    for cls in ("Car", "Pedestrian", "Cyclist"):
        for key in KEYS:
            assert result[cls][key] == pytest.approx([100.0] * 3, abs=1e-9), (cls, key)
    assert mean_ap_3d_moderate(result) == pytest.approx(100.0)
    empty = evaluate(frames, [KittiObjects.empty(with_score=True)] * 45)
    assert all(empty[c][k] == [0.0] * 3 for c in empty for k in KEYS)
    assert "Car AP@0.70" in format_results(result) and "mAP" in format_results(result)


def test_hand_computed_pr_curve():
    # 10 easy cars (two frames of 5); 8 detections by score: T T F T T F T T (F far from everything).
    gts = [objects([{"name": "Car", "slot": k} for k in range(5)]) for _ in range(2)]
    det0 = objects([{"name": "Car", "slot": 0}, {"name": "Car", "slot": 1}, {"name": "Car", "slot": 7},
                    {"name": "Car", "slot": 2}, {"name": "Car", "slot": 3}], scores=[0.95, 0.90, 0.85, 0.80, 0.75])
    det1 = objects([{"name": "Car", "slot": 8}, {"name": "Car", "slot": 0}, {"name": "Car", "slot": 1}],
                   scores=[0.70, 0.65, 0.60])
    result = evaluate(gts, [det0, det1], classes=("Car",))
    # TP scores .95 .9 .8 .75 .65 .6 -> recalls .1 ... .6: every TP becomes a threshold (steps of 1/40 are finer).
    # precision at those thresholds: 1/1, 2/2, 3/4, 4/5, 5/7, 6/8 -> interpolated (max over the following points)
    # 1, 1, .8, .8, .75, .75 at sample points 0..5, zeros after.
    # R40 = (1 + .8 + .8 + .75 + .75) / 40 = 10.25 %;  R11 = (p0 + p4) / 11 = 1.75 / 11 = 15.909 %.
    assert all_metrics(result, "Car", 0) == {10.25}
    assert all_metrics(result, "Car", 0, "R11") == {round(175 / 11, 9)}
    assert result["Car"]["aos_R40"][0] == pytest.approx(10.25)  # same orientation everywhere: AOS = AP


def test_aos_halves_with_quarter_turn():
    gts = [objects([{"name": "Car", "slot": 0}]) for _ in range(41)]
    dets = [objects([{"name": "Car", "slot": 0, "alpha": 0.1 + math.pi / 2}], scores=[0.5 + 0.01 * i]) for i in range(41)]
    result = evaluate(gts, dets, classes=("Car",))
    assert result["Car"]["bbox_R40"] == pytest.approx([100.0] * 3)
    assert result["Car"]["aos_R40"] == pytest.approx([50.0] * 3)  # (1 + cos(pi/2)) / 2


def _ten_cars_plus(extra_gt: list[dict], extra_det: list[dict], extra_scores: list[float], classes=("Car",)):
    gts = [objects([{"name": "Car", "slot": k} for k in range(5)] + extra_gt),
           objects([{"name": "Car", "slot": k} for k in range(5)])]
    scores = [0.9 - 0.05 * i for i in range(10)]
    dets = [objects([{"name": "Car", "slot": k} for k in range(5)] + extra_det, scores=scores[:5] + extra_scores),
            objects([{"name": "Car", "slot": k} for k in range(5)], scores=scores[5:])]
    return evaluate(gts, dets, classes=classes)


# Ten cars all found: 10 thresholds, precision 1 at points 0..9 -> R40 = 9/40, R11 = 3/11 (points 0, 4, 8).
PERFECT_10 = (22.5, round(300 / 11, 9))
# The same plus one false positive scoring above everything: precision k/(k+1) rising to 10/11, interpolated
# to 10/11 at points 0..9 -> R40 = 9 * (10/11) / 40, R11 = 3 * (10/11) / 11.
ONE_TOP_FP = (round(9 * 10 / 11 / 40 * 100, 9), round(3 * 10 / 11 / 11 * 100, 9))


def test_neighbouring_class_is_ignored_not_false_positive():
    assert all_metrics(_ten_cars_plus([], [], []), "Car", 0) == {PERFECT_10[0]}
    top_fp = _ten_cars_plus([], [{"name": "Car", "slot": 6}], [0.99])
    assert all_metrics(top_fp, "Car", 0) == {ONE_TOP_FP[0]}
    assert all_metrics(top_fp, "Car", 0, "R11") == {ONE_TOP_FP[1]}
    # the same detection (shaped like the van) on a Van: matched to an ignored GT -> neither TP nor FP
    on_van = _ten_cars_plus([{"name": "Van", "slot": 6}], [{"name": "Car", "slot": 6, "dims": (2.2, 1.9, 5.0)}], [0.99])
    assert all_metrics(on_van, "Car", 0) == {PERFECT_10[0]}
    # a Person_sitting GT under a Pedestrian detection: ignored too
    peds = [objects([{"name": "Pedestrian", "slot": k} for k in range(4)] + [{"name": "Person_sitting", "slot": 6}])]
    ped_dets = [objects([{"name": "Pedestrian", "slot": 6, "dims": (1.2, 0.6, 0.8)}]
                        + [{"name": "Pedestrian", "slot": k} for k in range(4)], scores=[0.99, .9, .8, .7, .6])]
    assert evaluate(peds, ped_dets, classes=("Pedestrian",))["Pedestrian"]["3d_R40"][0] == pytest.approx(3 / 40 * 100)
    # a Van detection is not a Car detection: the Van GT ignored, nothing else changes
    assert all_metrics(_ten_cars_plus([{"name": "Van", "slot": 6}], [{"name": "Van", "slot": 6}], [0.99]), "Car", 0) \
        == {PERFECT_10[0]}


def test_difficulty_filters_and_small_detections():
    # a too-small (20 px) car GT is ignored at every difficulty; a detection on it is not a FP
    small = _ten_cars_plus([{"name": "Car", "slot": 6, "height_px": 20}], [{"name": "Car", "slot": 6, "height_px": 20}],
                           [0.99])
    assert all_metrics(small, "Car", 0) == {PERFECT_10[0]} and all_metrics(small, "Car", 2) == {PERFECT_10[0]}
    # a 20 px detection alone (no GT) is an ignored detection, not a FP
    assert all_metrics(_ten_cars_plus([], [{"name": "Car", "slot": 6, "height_px": 20}], [0.99]), "Car", 1) \
        == {PERFECT_10[0]}
    # an occluded (occ 1), 35 px car found at the top score: easy ignores GT and detection (22.5 as ten cars);
    # moderate counts it: 11 objects, 11 TPs, 11 thresholds at precision 1 -> R40 = 10/40 = 25
    occl = _ten_cars_plus([{"name": "Car", "slot": 6, "occ": 1, "height_px": 35}],
                          [{"name": "Car", "slot": 6, "height_px": 35}], [0.99])
    assert occl["Car"]["3d_R40"] == pytest.approx([22.5, 25.0, 25.0])


def test_dontcare_removes_false_positives_in_2d_only():
    # FP car inside a DontCare region: the devkit drops it for the 2D metric; DontCare rows have no 3D box
    # (location -1000), so for BEV/3D the same detection stays a FP.
    dc = {"name": "DontCare", "slot": 6, "bbox": [700, 140, 800, 220]}
    result = _ten_cars_plus([dc], [{"name": "Car", "slot": 6}], [0.99])
    assert result["Car"]["bbox_R40"][0] == pytest.approx(PERFECT_10[0])
    assert result["Car"]["bev_R40"][0] == pytest.approx(ONE_TOP_FP[0])
    assert result["Car"]["3d_R40"][0] == pytest.approx(ONE_TOP_FP[0])


def test_recall_thresholds_follow_devkit_float_arithmetic():
    scores = np.arange(50, 0, -1) / 50.0
    t = recall_thresholds(scores, 50)
    assert len(t) == 41 and t[0] == 1.0 and t[-1] == 0.02
    # Sample point 14: exact arithmetic ties between recall .34 and .36 around 14/40 = .35 and would keep .34
    # (score .68); the devkit's accumulated current_recall is 0.35000000000000003, so it takes .36 (score .66).
    assert t[14] == 0.66
    assert recall_thresholds(np.array([0.9, 0.8, 0.7]), 3) == [0.9, 0.8, 0.7]


def test_image_overlap_formula():
    a = np.array([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    b = np.array([[5.0, 0, 15, 10], [10, 0, 20, 10], [2, 2, 4, 4]])
    assert image_overlap(a, b).tolist() == pytest.approx([50 / 150, 0.0, 4 / 100])
    assert image_overlap(b[2:], a[2:], own_area=True).tolist() == [1.0]


# --------------------------------------------------------------------------- real frames
@pytest.fixture
def kitti_labels() -> Path:
    path = SAMPLE / "training/label_2"
    if not path.is_dir():
        pytest.skip(f"KITTI sample frames not found at {path}")
    return path


def test_sample_frames_gt_as_predictions(kitti_labels):
    files = sorted(kitti_labels.glob("*.txt"))
    gts = [read_labels(f) for f in files]
    dets = []
    for g in gts:
        keep = g.select(g.names != "DontCare")
        keep.score = np.ones(len(keep))
        dets.append(keep)
    result = evaluate(gts, dets)
    # Counted cars: 1 easy (103 px), 3 moderate/hard (others < 25 px); pedestrians: 2 at every level;
    # the cyclist is occlusion 3 (never counted). All found with precision 1 -> R40 = (n - 1)/40, R11 = 1/11 or
    # 2/11 (points 0 and 4 filled when n >= 5, else point 0 only). Same numbers as the devkit on these files.
    assert result["Car"]["3d_R40"] == pytest.approx([0.0, 5.0, 5.0])
    assert result["Car"]["bbox_R11"] == pytest.approx([100 / 11] * 3)
    assert result["Pedestrian"]["bev_R40"] == pytest.approx([2.5, 2.5, 2.5])
    assert result["Cyclist"]["3d_R40"] == [0.0, 0.0, 0.0]
    for cls in ("Car", "Pedestrian"):
        for m in ("bbox", "bev", "3d"):
            assert result[cls][f"{m}_R40"] == result[cls]["3d_R40"]


# --------------------------------------------------------------------------- CLI
def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "training/evaluate.py"), *args], capture_output=True, text=True,
                          cwd=REPO.parent, timeout=120)


def test_cli_end_to_end(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for i in range(12):
        g = objects([{"name": "Car", "slot": 0}, {"name": "Pedestrian", "slot": 2}])
        (gt_dir / f"{i:06d}.txt").write_text(format_labels(g))
        if i < 10:  # two frames without a prediction file
            d = objects([{"name": "Car", "slot": 0}, {"name": "Pedestrian", "slot": 2}], scores=[0.9 - i * 0.01, 0.5])
            (pred_dir / f"{i:06d}.txt").write_text(format_labels(d))
    out = tmp_path / "results.json"
    proc = _run_cli("--gt", str(gt_dir), "--pred", str(pred_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Car AP@0.70" in proc.stdout and "2 without a prediction file" in proc.stdout
    data = json.loads(out.read_text())
    assert data["frames"] == 12
    # 12 cars, 10 found (precision 1): 10 thresholds -> R40 = 9/40
    assert data["results"]["Car"]["3d_R40"] == pytest.approx([22.5] * 3)
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_bad_input(tmp_path, capsys):
    from training.evaluate import main  # in-process: the subprocess test above covers running it as a script

    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    (gt_dir / "000000.txt").write_text(format_labels(objects([{"name": "Car", "slot": 0}])))
    (pred_dir / "000000.txt").write_text("Car -1 -1 0.1 10 150 70 200 1.5 1.6 3.9 -20 1.7 30 0.2 0.9\n"
                                         "Car -1 -1 0.1 10 150 70 200 1.5 1.6 3.9 -20 1.7 30 0.2\n")
    assert main(["--gt", str(gt_dir), "--pred", str(pred_dir)]) == 2
    assert f"{pred_dir / '000000.txt'}:2:" in capsys.readouterr().err
    (pred_dir / "000000.txt").write_text("Car -1 -1 0.1 10 150 70 200 1.5 1.6 x 3.9 -20 1.7 30 0.2 0.9\n")
    assert main(["--gt", str(gt_dir), "--pred", str(pred_dir)]) == 2
    assert f"{pred_dir / '000000.txt'}:1:" in capsys.readouterr().err
    assert main(["--gt", str(tmp_path / "missing"), "--pred", str(pred_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--gt", str(empty), "--pred", str(pred_dir)]) == 2
    assert "no *.txt" in capsys.readouterr().err
    # a malformed ground-truth file is reported the same way, and no JSON is written
    (gt_dir / "000000.txt").write_text("Car 0 0 0.1 10 150 70\n")
    assert main(["--gt", str(gt_dir), "--pred", str(pred_dir), "--out", str(tmp_path / "r.json")]) == 2
    assert f"{gt_dir / '000000.txt'}:1: expected 15 or 16 columns" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
