"""The real-data check (training/real_check.py) and its diagnostics (training/detection_diagnostics.py).

On the six shared KITTI frames: it runs, its AP equals training/evaluate.py on the files `python -m clean_ros.infer`
writes, and its counts agree with the labels; its AP ceiling (perfect detections) equals training/evaluate.py on the
labels given back as predictions. On a hand-built label folder: the ceiling's known values (100 (N - 1) / 40 for N
scored objects). On a hand-built two-frame case (synthetic camera): recall by class
and range band, false positives (camera view, devkit height, DontCare), confusions and detection counts with known
answers. Bad input: one line, exit status 2.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clean_ros.cloud.kitti import (Calibration, boxes_in_image, difficulty_levels, format_labels,
                                   labels_from_lidar_boxes, parse_labels, read_labels)
from clean_ros.types import Detections
from shared_helpers import REPO_ROOT
from training import real_check
from training.detection_diagnostics import (AP_CEILING_MIN, LabelledFrame, ap_below_ceiling_min, ap_ceiling,
                                            crowded, match_frame, perfect_detections, scored_object_counts,
                                            summarize)

CLASSES = ("Car", "Pedestrian", "Cyclist")


# ------------------------------------------------------------------------------------------- shared real frames
@pytest.fixture(scope="module")
def shared_run(kitti_sample, default_bundle, tmp_path_factory):
    """infer + evaluate.py on the six frames, and the real-data check on the same frames (torch, one thread)."""
    import io
    from contextlib import redirect_stdout

    from clean_ros.tools import infer
    from training import evaluate as evaluate_cli

    tmp = tmp_path_factory.mktemp("real_check")
    split = kitti_sample / "training"
    common = ["--bundle", str(default_bundle), "--backend", "torch", "--threads", "1"]
    infer_out = io.StringIO()
    with redirect_stdout(infer_out):
        assert infer.main(common + ["--out", str(tmp / "pred_infer"), "--quiet", str(split)]) == 0
        assert evaluate_cli.main(["--gt", str(split / "label_2"), "--pred", str(tmp / "pred_infer"),
                                  "--out", str(tmp / "evaluate.json")]) == 0
    check_out = io.StringIO()
    with redirect_stdout(check_out):
        code = real_check.main(common + [str(split), "--out", str(tmp / "report.json"),
                                         "--save-predictions", str(tmp / "pred_check")])
    assert code == 0
    return {"tmp": tmp, "split": split, "infer_stdout": infer_out.getvalue(), "stdout": check_out.getvalue(),
            "report": json.loads((tmp / "report.json").read_text()),
            "evaluate": json.loads((tmp / "evaluate.json").read_text())}


def test_ap_equals_evaluate_on_infer_predictions(shared_run):
    report, reference = shared_run["report"], shared_run["evaluate"]["results"]
    assert set(report["ap"]) == set(CLASSES)
    for cls in CLASSES:
        for metric in ("bev_R40", "3d_R40"):
            assert report["ap"][cls][metric] == pytest.approx(reference[cls][metric], abs=1e-9), (cls, metric)
    # the detections the check scores are exactly the rows infer writes
    tmp = shared_run["tmp"]
    infer_files = sorted(p.name for p in (tmp / "pred_infer").iterdir())
    assert infer_files == sorted(p.name for p in (tmp / "pred_check").iterdir()) and len(infer_files) == 6
    for name in infer_files:
        assert (tmp / "pred_check" / name).read_text() == (tmp / "pred_infer" / name).read_text(), name
    rows = sum(len(read_labels(tmp / "pred_infer" / n, require_score=True)) for n in infer_files)
    assert report["detections"]["in_camera_view_total"] == rows
    total = int(re.search(r"^6 frames, (\d+) detections", shared_run["infer_stdout"], re.M).group(1))
    assert report["detections"]["total"] == total


def test_counts_agree_with_the_labels(shared_run):
    report = shared_run["report"]
    assert report["frames"] == 6 and len(report["per_frame"]) == 6
    # scored by the devkit (difficulty >= 0), straight from the label files
    labels = [read_labels(p) for p in sorted((shared_run["split"] / "label_2").glob("*.txt"))]
    names = np.concatenate([objs.names for objs in labels])
    scored = np.concatenate([difficulty_levels(objs) for objs in labels]) >= 0
    recall = report["recall"]["by_iou"]
    for iou in ("0.5", "0.25"):
        for cls in CLASSES:
            entry = recall[iou][cls]
            assert entry["all"]["total"] == int(((names == cls) & scored).sum())
            assert sum(entry[b]["total"] for b in report["recall"]["range_bands"]) == entry["all"]["total"]
            assert entry["all"]["found"] <= entry["all"]["total"]
        assert recall["0.25"][cls]["all"]["found"] >= recall["0.5"][cls]["all"]["found"]
    # the six frames: Car 3 and Pedestrian 2 scored; the 51 m / 58 m cars (< 25 px) and the occluded cyclist are not
    assert [recall["0.5"][c]["all"]["total"] for c in CLASSES] == [3, 2, 0]
    assert report["recall"]["labelled_but_not_scored"] == {"Car": 2, "Pedestrian": 0, "Cyclist": 1}
    conf = report["confusion"]
    assert conf["rows"] == ["Car", "Pedestrian", "Misc", "Truck"]
    assert [sum(r) for r in conf["counts"]] == [3, 2, 1, 1]
    fp = report["false_positives"]
    assert fp["total"] == sum(f["false_positives"] for f in report["per_frame"])
    assert fp["per_frame"] == pytest.approx(fp["total"] / 6)
    assert "KITTI AP R40" in shared_run["stdout"] and "False positives per frame" in shared_run["stdout"]
    assert "(Cyclist: no labelled object the devkit scores in these frames" in shared_run["stdout"]


def _points_in_box(points: np.ndarray, box: np.ndarray) -> int:
    """Points inside one upright box, counted in the box's own axes (independent of the code under test)."""
    rel = points[:, :3].astype(np.float64) - box[:3]
    cos, sin = np.cos(box[6]), np.sin(box[6])
    along, across = rel[:, 0] * cos + rel[:, 1] * sin, -rel[:, 0] * sin + rel[:, 1] * cos
    inside = (np.abs(along) <= box[3] / 2) & (np.abs(across) <= box[4] / 2) & (np.abs(rel[:, 2]) <= box[5] / 2)
    return int(inside.sum())


def test_points_and_crowding_tables_on_the_shared_frames(shared_run):
    """The check counts the points of each scan in its labelled boxes: the points table's totals are those of an
    independent count on the scans as read; both tables add up to the overall recall."""
    from training.data.kitti_dataset import ground_truth_from_annotations
    from training.detection_diagnostics import POINT_BANDS

    split, recall = shared_run["split"], shared_run["report"]["recall"]
    expected = {c: [0] * len(POINT_BANDS) for c in CLASSES}
    for label_file in sorted((split / "label_2").glob("*.txt")):
        labels, calib = read_labels(label_file), Calibration.from_file(split / "calib" / label_file.name)
        boxes, _, names, difficulty = ground_truth_from_annotations(labels, calib, CLASSES)
        points = np.fromfile(split / "velodyne" / f"{label_file.stem}.bin", np.float32).reshape(-1, 4)
        for box, name, level in zip(boxes.astype(np.float64), names, difficulty):
            if name in expected and level >= 0:
                n = _points_in_box(points, box)
                expected[name][next(i for i, (lo, hi) in enumerate(POINT_BANDS) if lo <= n < hi)] += 1
    for iou in ("0.5", "0.25"):
        for cls in CLASSES:
            assert [recall["by_points"][iou][cls][b]["total"] for b in recall["point_bands"]] == expected[cls], cls
    assert sum(map(sum, expected.values())) == 5  # Car 3, Pedestrian 2
    _assert_bands_add_up(recall, "by_points", "point_bands")
    _assert_bands_add_up(recall, "by_crowding", "crowding")
    assert "by LiDAR points inside the labelled 3D box:" in shared_run["stdout"]
    assert "by crowding (crowded: " in shared_run["stdout"]


def test_ap_ceiling_equals_evaluate_on_labels_as_predictions(shared_run, capsys):
    """The six frames' ceiling is training/evaluate.py on every label row given back with score 0.9; with Car 1/3/3
    and Pedestrian 2/2/2 scored objects it is 0 / 5 / 5 and 2.5, far below 50, and the check says so."""
    from training import evaluate as evaluate_cli

    pred = shared_run["tmp"] / "labels_as_predictions"
    pred.mkdir()
    for label_file in sorted((shared_run["split"] / "label_2").glob("*.txt")):
        rows = [line for line in label_file.read_text().splitlines() if line.strip()]
        (pred / label_file.name).write_text("".join(f"{line} 0.9\n" for line in rows))
    assert evaluate_cli.main(["--gt", str(shared_run["split"] / "label_2"), "--pred", str(pred),
                              "--out", str(shared_run["tmp"] / "ceiling.json")]) == 0
    capsys.readouterr()
    reference = json.loads((shared_run["tmp"] / "ceiling.json").read_text())["results"]
    report = shared_run["report"]
    for cls in CLASSES:
        for metric in ("bev_R40", "3d_R40"):
            assert report["ap_ceiling"][cls][metric] == pytest.approx(reference[cls][metric], abs=1e-9), (cls, metric)
            # no model scores above the ceiling
            assert all(a <= c + 1e-9 for a, c in zip(report["ap"][cls][metric], report["ap_ceiling"][cls][metric]))
    assert report["ap_ceiling"]["Car"] == {"bev_R40": [0.0, 5.0, 5.0], "3d_R40": [0.0, 5.0, 5.0]}
    assert report["ap_ceiling"]["Pedestrian"]["bev_R40"] == pytest.approx([2.5, 2.5, 2.5])
    assert report["ap_ceiling"]["Cyclist"]["3d_R40"] == [0.0, 0.0, 0.0]
    assert report["ap_scored_objects"] == {"Car": [1, 3, 3], "Pedestrian": [2, 2, 2], "Cyclist": [0, 0, 0]}
    assert report["ap_ceiling_min"] == AP_CEILING_MIN == 50.0
    assert report["ap_ceiling_below_min"] == {c: ["easy", "moderate", "hard"] for c in CLASSES}
    out = shared_run["stdout"]
    car_bev = " +".join(re.escape(f"{v:.2f}") for v in report["ap"]["Car"]["bev_R40"])  # the model's own AP
    assert re.search(rf"^  Car +BEV +{car_bev} +0\.00 +5\.00 +5\.00$", out, re.M), out
    assert "Objects the devkit scores, easy/moderate/hard: Car 1/3/3, Pedestrian 2/2/2, Cyclist 0/0/0" in out
    too_small = [line for line in out.splitlines() if "too small for AP to measure the model" in line]
    assert len(too_small) == 1 and "recall and false positives" in too_small[0]


def test_no_too_small_line_when_the_ceiling_is_high(shared_run):
    report = json.loads(json.dumps(shared_run["report"]))
    report["ap_ceiling"] = {c: {m: [100.0, 97.5, 97.5] for m in ("bev_R40", "3d_R40")} for c in CLASSES}
    report["ap_ceiling_below_min"] = ap_below_ceiling_min(report["ap_ceiling"], ("bev_R40", "3d_R40"))
    assert report["ap_ceiling_below_min"] == {}
    text = real_check.format_report(report)
    assert "too small for AP" not in text and re.search(r"^  Cyclist +3D .* 100\.00 +97\.50 +97\.50$", text, re.M)
    report["ap_ceiling"]["Car"]["3d_R40"] = [0.0, 97.5, 97.5]  # one low cell: the line names it
    report["ap_ceiling_below_min"] = ap_below_ceiling_min(report["ap_ceiling"], ("bev_R40", "3d_R40"))
    assert report["ap_ceiling_below_min"] == {"Car": ["easy"]}
    assert "too small for AP to measure the model (ceiling below 50 for Car easy)" in real_check.format_report(report)


def _label_line(name: str, index: int, height_px: float, occlusion: int = 0) -> str:
    """One label row: a box of the class at its own place (x = 5 * index m, 20 m ahead), its own 2D box."""
    h, w, l = {"Car": (1.5, 1.8, 4.0), "Van": (2.0, 2.0, 5.0), "Pedestrian": (1.7, 0.6, 0.8),
               "Cyclist": (1.7, 0.6, 1.8)}[name]
    left = 60.0 * index
    return (f"{name} 0.00 {occlusion} 0.00 {left:.2f} 150.00 {left + 50:.2f} {150 + height_px:.2f} "
            f"{h:.2f} {w:.2f} {l:.2f} {5.0 * index - 40:.2f} 1.70 20.00 0.00\n")


def test_ap_ceiling_on_a_hand_built_folder(tmp_path):
    """N scored objects of a class at a difficulty: perfect detections get AP R40 = 100 (N - 1) / 40 (the devkit
    advances one of its 40 recall points per true positive and R40 leaves out point 0)."""
    labels = tmp_path / "label_2"
    labels.mkdir()
    frame_a = ([_label_line("Car", i, 50) for i in range(4)]  # easy
               + [_label_line("Car", 4, 30),  # moderate and hard only (< 40 px)
                  _label_line("Car", 5, 50, occlusion=3),  # never scored
                  _label_line("Van", 6, 50),  # the devkit's neighbour class: ignored for Car
                  _label_line("Pedestrian", 7, 50)]  # one easy pedestrian
               + ["DontCare -1 -1 -10 600.00 150.00 650.00 200.00 -1 -1 -1 -1000 -1000 -1000 -10\n"])
    frame_b = [_label_line("Car", i, 60) for i in range(2)] + [_label_line("Cyclist", 2, 30, occlusion=1)]
    (labels / "a.txt").write_text("".join(frame_a))
    (labels / "b.txt").write_text("".join(frame_b))
    frames = [read_labels(labels / "a.txt"), read_labels(labels / "b.txt")]
    assert len(perfect_detections(frames[0])) == 8 and (perfect_detections(frames[0]).score == 0.9).all()

    assert scored_object_counts(frames, CLASSES) == {"Car": [6, 7, 7], "Pedestrian": [1, 1, 1], "Cyclist": [0, 1, 1]}
    ceiling = ap_ceiling(frames, CLASSES)
    for metric in ("bev_R40", "3d_R40", "bbox_R40"):
        assert ceiling["Car"][metric] == pytest.approx([12.5, 15.0, 15.0]), metric  # N = 6, 7, 7
        assert ceiling["Pedestrian"][metric] == pytest.approx([0.0, 0.0, 0.0]), metric  # N = 1: point 0 only
        assert ceiling["Cyclist"][metric] == pytest.approx([0.0, 0.0, 0.0]), metric
    assert ceiling["Pedestrian"]["bev_R11"] == pytest.approx([100 / 11] * 3)  # R11 keeps point 0
    assert ap_below_ceiling_min(ceiling, ("bev_R40", "3d_R40")) == {c: ["easy", "moderate", "hard"] for c in CLASSES}


def test_ap_ceiling_reaches_100_from_41_objects():
    """40 scored pedestrians: 97.5; 41 fill all the devkit's points: 100, and AP then measures the model."""
    frames = [parse_labels(_label_line("Pedestrian", i % 8, 50)) for i in range(41)]
    assert ap_ceiling(frames[:40], ("Pedestrian",))["Pedestrian"]["3d_R40"] == pytest.approx([97.5] * 3)
    ceiling = ap_ceiling(frames, ("Pedestrian",))
    assert ceiling["Pedestrian"]["bev_R40"] == pytest.approx([100.0] * 3)
    assert ap_below_ceiling_min(ceiling, ("bev_R40", "3d_R40")) == {}


# ------------------------------------------------------------------------------------------- hand-built case
def _camera() -> Calibration:
    """Camera at the LiDAR origin looking along +x (camera x = -y, y = -z, z = x), f = 700 px, 1242 x 375 image."""
    v2c = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    p2 = np.array([[700.0, 0.0, 620.0, 0.0], [0.0, 700.0, 187.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    return Calibration(P2=p2, R0=np.eye(3), V2C=v2c)


def _box(x, y, l, w, h):
    return [x, y, -1.75 + h / 2, l, w, h, 0.0]


GT = [("Car", _box(10, 0, 4, 1.8, 1.5)),          # found at 0.5 (exact detection), band 0-20
      ("Car", _box(30, 2, 4, 2.0, 1.5)),          # detection 2 m ahead: IoU 1/3, found only at 0.25, band 20-40
      ("Pedestrian", _box(8, -2, 0.8, 0.6, 1.7)),  # detected as a Cyclist
      ("Cyclist", _box(45, 0, 1.8, 0.6, 1.7)),    # missed, band 40+
      ("Van", _box(15, 5, 5, 2, 2)),              # detected as a Car: neither Car recall nor a false positive
      ("Car", _box(20, -5, 4, 1.8, 1.5))]         # occlusion 3: not scored; its detection is no false positive
DETS = [("Car", _box(10, 0, 4, 1.8, 1.5)), ("Car", _box(32, 2, 4, 2.0, 1.5)), ("Cyclist", _box(8, -2, 0.8, 0.6, 1.7)),
        ("Car", _box(15, 5, 5, 2, 2)), ("Car", _box(20, -5, 4, 1.8, 1.5)),
        ("Car", _box(25, -6, 4, 1.8, 1.5)),         # inside a DontCare region
        ("Car", _box(12, -8, 4, 1.8, 1.5)),         # the false positive
        ("Car", _box(-10, 0, 4, 1.8, 1.5)),         # behind the camera: not in view
        ("Car", _box(3, 12, 4, 1.8, 1.5)),          # beside the image: not in view
        ("Pedestrian", _box(60, 3, 0.8, 0.6, 1.7))]  # in view but < 25 px: the devkit ignores it


def _detections(rows) -> Detections:
    if not rows:
        return Detections.empty(CLASSES)
    return Detections(np.array([b for _, b in rows], np.float32), np.linspace(0.9, 0.5, len(rows)).astype(np.float32),
                      np.array([CLASSES.index(n) for n, _ in rows], np.int64), CLASSES)


def _hand_frames(with_dont_care: bool = True):
    calib = _camera()
    gt = labels_from_lidar_boxes(np.array([b for _, b in GT]), np.array([n for n, _ in GT]), None, calib)
    gt.occlusion[5] = 3
    gt.bbox[3, 3] = gt.bbox[3, 1] + 40.0  # the 45 m cyclist: 40 px tall, scored
    dets = _detections(DETS)
    text = format_labels(gt)
    if with_dont_care:
        d_box = labels_from_lidar_boxes(dets.boxes[5:6].astype(np.float64), np.array(["Car"]), None, calib).bbox[0]
        pad = np.array([-3.0, -3.0, 3.0, 3.0])
        text += "DontCare -1 -1 -10 " + " ".join(f"{v:.2f}" for v in d_box + pad) + \
            " -1 -1 -1 -1000 -1000 -1000 -10\n"
    frames = [LabelledFrame("a", parse_labels(text), calib), LabelledFrame("b", parse_labels(""), calib)]
    return frames, [dets, _detections([("Pedestrian", _box(6, 1, 0.8, 0.6, 1.7))])]


def test_hand_built_case_has_the_known_answers():
    frames, dets = _hand_frames()
    levels = difficulty_levels(frames[0].labels.select(frames[0].labels.names != "DontCare"))
    assert (levels >= 0).tolist() == [True] * 5 + [False]  # the set-up: only the occluded car is not scored
    matches = [match_frame(f, d) for f, d in zip(frames, dets)]
    report = summarize(frames, matches, CLASSES)
    r50, r25 = report["recall"]["by_iou"]["0.5"], report["recall"]["by_iou"]["0.25"]

    def cells(entry):
        return [(entry[k]["found"], entry[k]["total"]) for k in ("all", "0-20m", "20-40m", "40m+")]

    assert cells(r50["Car"]) == [(1, 2), (1, 1), (0, 1), (0, 0)]
    assert cells(r25["Car"]) == [(2, 2), (1, 1), (1, 1), (0, 0)]
    assert cells(r25["Pedestrian"]) == [(0, 1), (0, 1), (0, 0), (0, 0)]
    assert cells(r25["Cyclist"]) == [(0, 1), (0, 0), (0, 0), (0, 1)]
    assert r50["Car"]["all"]["recall"] == 0.5 and r25["Cyclist"]["0-20m"]["recall"] is None
    assert report["recall"]["labelled_but_not_scored"] == {"Car": 1, "Pedestrian": 0, "Cyclist": 0}
    assert matches[0].best_same_class_iou[1] == pytest.approx(1 / 3, abs=1e-3)  # labels carry 2 decimals

    fp = report["false_positives"]
    assert (fp["total"], fp["per_frame"], fp["by_class"]) == (2, 1.0, {"Car": 1, "Pedestrian": 1, "Cyclist": 0})
    assert matches[0].false_positive.tolist() == [False] * 6 + [True] + [False] * 3
    assert [f["false_positives"] for f in report["per_frame"]] == [1, 1]

    conf = report["confusion"]
    assert conf["rows"] == ["Car", "Pedestrian", "Cyclist", "Van"]
    assert conf["columns"] == ["Car", "Pedestrian", "Cyclist", "none"]
    assert conf["counts"] == [[2, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]]

    det = report["detections"]
    assert (det["total"], det["in_camera_view_total"], det["scored_total"]) == (11, 9, 8)
    assert det["per_frame"] == 5.5
    assert matches[0].detection_in_view.tolist() == [True] * 7 + [False, False, True]
    assert matches[0].detection_scored.tolist() == [True] * 7 + [False, False, False]


def test_heading_counts_boxes_turned_half_a_turn():
    """Same boxes, headings turned by pi and by 0.2 rad: both are found at IoU 0.5 (a half-turn keeps the IoU), the
    first counts as turned > 90 degrees; the hand-built case's detections all keep their heading."""
    calib = _camera()
    gt_boxes = np.array([_box(10, 0, 4, 1.8, 1.5), _box(20, 3, 4, 1.8, 1.5), _box(8, -2, 0.8, 0.6, 1.7)])
    gt = labels_from_lidar_boxes(gt_boxes, np.array(["Car", "Car", "Pedestrian"]), None, calib)
    frame = LabelledFrame("h", parse_labels(format_labels(gt)), calib)
    turned = gt_boxes[:2].copy()
    turned[:, 6] += [np.pi, 0.2]
    dets = Detections(turned.astype(np.float32), np.array([0.9, 0.8], np.float32), np.zeros(2, np.int64), CLASSES)
    match = match_frame(frame, dets)
    assert match.heading_error[:2] == pytest.approx([np.pi, 0.2], abs=0.02)  # labels carry 2 decimals
    assert np.isnan(match.heading_error[2])  # no pedestrian detection: not checked
    heading = summarize([frame], [match], CLASSES)["heading"]
    assert heading["iou"] == 0.5
    assert heading["by_class"]["Car"]["found"] == 2 and heading["by_class"]["Car"]["turned_over_90"] == 1
    assert heading["by_class"]["Pedestrian"] == {"found": 0, "turned_over_90": 0, "median_error_deg": None}
    frames, hand = _hand_frames()
    report = summarize(frames, [match_frame(f, d) for f, d in zip(frames, hand)], CLASSES)
    assert report["heading"]["by_class"]["Car"]["found"] == 1  # only the exact car is found at 0.5
    assert report["heading"]["by_class"]["Car"]["turned_over_90"] == 0
    assert "Heading of found objects" in real_check.format_report({**report, "ap": {}})


def _frame_of(rows, extra_text: str = "") -> LabelledFrame:
    """A frame labelled with (name, LiDAR box) rows through a label file's text (2 decimals), synthetic camera."""
    calib = _camera()
    gt = labels_from_lidar_boxes(np.array([b for _, b in rows]), np.array([n for n, _ in rows]), None, calib)
    return LabelledFrame("f", parse_labels(format_labels(gt) + extra_text), calib)


def _points_on(box, k: int, rng) -> np.ndarray:
    """k points well inside the box (the labels' 2-decimal rounding cannot push them out), intensity 0.5."""
    xyz = np.asarray(box[:3]) + rng.uniform(-0.25, 0.25, size=(k, 3))
    return np.hstack([xyz, np.full((k, 1), 0.5)]).astype(np.float32)


POINT_GT = [("Car", _box(10, 0, 4, 1.8, 1.5)),           # 9 points: "0-9 pts", found
            ("Car", _box(15, 5, 4, 1.8, 1.5)),           # 10: "10-29 pts", missed
            ("Car", _box(25, -5, 4, 1.8, 1.5)),          # 29: "10-29 pts", found
            ("Car", _box(30, 3, 4, 1.8, 1.5)),           # 30: "30-99 pts", missed
            ("Car", _box(12, -8, 4, 1.8, 1.5)),          # 100: "100+ pts", found
            ("Pedestrian", _box(8, -2, 0.8, 0.6, 1.7))]  # 0: "0-9 pts", missed
POINTS_ON = [9, 10, 29, 30, 100, 0]


def _point_case():
    rng = np.random.default_rng(0)
    frame = _frame_of(POINT_GT)
    clutter = _points_on(_box(5, 10, 1, 1, 1), 50, rng)  # on no object
    points = np.vstack([_points_on(b, k, rng) for (_, b), k in zip(POINT_GT, POINTS_ON)] + [clutter])
    return frame, points, _detections([POINT_GT[i] for i in (0, 2, 4)])


def _band_cells(entry, bands):
    return [(entry[b]["found"], entry[b]["total"]) for b in ["all"] + bands]


def _assert_bands_add_up(recall: dict, table: str, bands: str):
    """Each class's band cells add up to its overall cell, which is the range table's."""
    for iou, per_class in recall[table].items():
        for cls, entry in per_class.items():
            assert entry["all"] == recall["by_iou"][iou][cls]["all"], (table, iou, cls)
            for key in ("found", "total"):
                assert sum(entry[b][key] for b in recall[bands]) == entry["all"][key], (table, iou, cls, key)


def test_recall_by_points_on_the_object():
    """An object with exactly k points inside its box lands in k's band: 9 -> 0-9, 10 and 29 -> 10-29, 30 -> 30-99,
    100 -> 100+; points on no object count nowhere."""
    frame, points, dets = _point_case()
    assert (difficulty_levels(frame.labels) >= 0).all()  # the set-up: every object is scored
    match = match_frame(frame, dets, points)
    assert match.object_points.tolist() == POINTS_ON
    recall = summarize([frame], [match], CLASSES)["recall"]
    bands = recall["point_bands"]
    assert bands == ["0-9 pts", "10-29 pts", "30-99 pts", "100+ pts"]
    for iou in ("0.5", "0.25"):
        assert _band_cells(recall["by_points"][iou]["Car"], bands) == [(3, 5), (1, 1), (1, 2), (0, 1), (1, 1)]
        assert _band_cells(recall["by_points"][iou]["Pedestrian"], bands) == [(0, 1), (0, 1), (0, 0), (0, 0), (0, 0)]
    assert recall["by_points"]["0.5"]["Car"]["10-29 pts"]["recall"] == 0.5
    _assert_bands_add_up(recall, "by_points", "point_bands")
    text = real_check.format_report({**summarize([frame], [match], CLASSES), "ap": {}})
    assert "by LiDAR points inside the labelled 3D box:" in text
    assert re.search(r"^  Car +0\.50 +3/5  60% +1/1 100% +1/2  50% +0/1   0% +1/1 100%$", text, re.M), text


def test_without_points_the_points_table_is_absent():
    frame, points, dets = _point_case()
    match = match_frame(frame, dets)
    assert match.object_points.tolist() == [-1] * len(POINT_GT)
    report = summarize([frame], [match], CLASSES)
    assert report["recall"]["by_points"] is None and report["recall"]["by_crowding"] is not None
    text = real_check.format_report({**report, "ap": {}})
    assert "by LiDAR points" not in text and "pts" not in text and "by crowding" in text
    # one frame without its points leaves the table out for all
    with_points = match_frame(frame, dets, points)
    assert summarize([frame, frame], [with_points, match], CLASSES)["recall"]["by_points"] is None
    assert summarize([frame, frame], [with_points, with_points], CLASSES)["recall"]["by_points"] is not None


CROWD_GT = [("Pedestrian", _box(8, -2, 0.8, 0.6, 1.7)),     # 0.8 m from the next: crowded, found
            ("Pedestrian", _box(8, -1.2, 0.8, 0.6, 1.7)),   # crowded, missed
            ("Pedestrian", _box(8, 1.8, 0.8, 0.6, 1.7)),    # 3 m from the nearest: alone, found
            ("Cyclist", _box(14, 0.5, 1.8, 0.6, 1.7)),      # 0.78 m from a pedestrian (any class counts): crowded
            ("Pedestrian", _box(14.6, 0.0, 0.8, 0.6, 1.7)),  # crowded, missed
            ("Car", _box(20, -4, 4, 1.8, 1.5))]             # alone, found


def test_recall_by_crowding():
    frame = _frame_of(CROWD_GT, "DontCare -1 -1 -10 600.00 150.00 650.00 200.00 -1 -1 -1 -1000 -1000 -1000 -10\n")
    match = match_frame(frame, _detections([CROWD_GT[i] for i in (0, 2, 5)]))
    assert match.object_crowded.tolist() == [True, True, False, True, True, False]
    recall = summarize([frame], [match], CLASSES)["recall"]
    assert recall["crowding"] == ["crowded", "alone"] and recall["crowded_distance"] == 1.0
    for iou in ("0.5", "0.25"):
        by = recall["by_crowding"][iou]
        assert _band_cells(by["Pedestrian"], ["crowded", "alone"]) == [(2, 4), (1, 3), (1, 1)]
        assert _band_cells(by["Cyclist"], ["crowded", "alone"]) == [(0, 1), (0, 1), (0, 0)]
        assert _band_cells(by["Car"], ["crowded", "alone"]) == [(1, 1), (0, 0), (1, 1)]
    _assert_bands_add_up(recall, "by_crowding", "crowding")
    text = real_check.format_report({**summarize([frame], [match], CLASSES), "ap": {}})
    assert "by crowding (crowded: another labelled object's BEV centre within 1 m):" in text
    assert re.search(r"^  Pedestrian +0\.25 +2/4  50% +1/3  33% +1/1 100%$", text, re.M), text


def test_crowded_is_within_the_distance_and_never_the_object_itself():
    boxes = np.zeros((4, 7))
    boxes[:, 0] = [0.0, 1.0, 2.01, 10.0]  # 1.0 m apart: within; 1.01 m: not
    assert crowded(boxes).tolist() == [True, True, False, False]
    assert crowded(boxes[:1]).tolist() == [False] and crowded(np.zeros((0, 7))).tolist() == []


def test_dont_care_region_is_what_spares_the_detection():
    frames, dets = _hand_frames(with_dont_care=False)
    match = match_frame(frames[0], dets[0])
    assert np.flatnonzero(match.false_positive).tolist() == [5, 6]


def test_box_beside_the_image_would_reach_the_devkit_as_a_full_height_box():
    calib = _camera()
    rows = labels_from_lidar_boxes(np.array([_box(3, 12, 4, 1.8, 1.5), _box(10, 0, 4, 1.8, 1.5),
                                             _box(-10, 0, 4, 1.8, 1.5)]), np.array(["Car"] * 3), None, calib)
    beside = rows.bbox[0]
    assert beside[2] == beside[0] and beside[3] - beside[1] >= 25  # zero width, tall: the devkit would score it
    assert boxes_in_image(rows.bbox).tolist() == [False, True, False]


def test_false_positives_with_the_centre_beside_the_image_are_counted_apart():
    """A box with only a corner in the image is scored (a false positive when no label holds it); the report says how
    many of the false positives are such boxes, whose object the camera-drawn labels rarely hold."""
    calib = _camera()  # at x = 10 m the image spans |y| < 8.86 m
    dets = _detections([("Car", _box(10, 9.5, 4, 1.8, 1.5)),   # centre beside the image, near corner in view
                        ("Car", _box(10, 5.0, 4, 1.8, 1.5)),   # wholly in view
                        ("Car", _box(10, -12.0, 4, 1.8, 1.5)),  # wholly beside: not in view, not scored
                        ("Car", _box(-10, 0, 4, 1.8, 1.5))])   # behind the camera
    frame = LabelledFrame("a", parse_labels(""), calib)
    match = match_frame(frame, dets)
    assert match.detection_in_view.tolist() == [True, True, False, False]
    assert match.detection_centre_in_image.tolist() == [False, True, False, False]
    assert match.false_positive.tolist() == [True, True, False, False]
    report = summarize([frame], [match], CLASSES)
    assert (report["false_positives"]["total"], report["false_positives"]["centre_outside_image"]) == (2, 1)
    text = real_check.format_report({**report, "ap": {}})
    assert "of which 1 have the box centre outside the image" in text
    quiet = summarize([frame], [match_frame(frame, _detections(DETS[6:7]))], CLASSES)
    assert quiet["false_positives"]["centre_outside_image"] == 0
    assert "centre outside the image" not in real_check.format_report({**quiet, "ap": {}})


def test_false_positives_are_listed_strongest_first_with_where_to_look():
    """Each false positive in the JSON (and with --list-false-positives, printed): class, score, LiDAR box, range,
    points inside and whether the centre is in the image; found and unscored detections are not listed."""
    gt = _box(10, 0, 4, 1.8, 1.5)
    dets = _detections([("Car", gt),                                # 0.9: finds the label
                        ("Pedestrian", _box(20, 3, 0.8, 0.6, 1.7)),  # 0.7: false, 3 points inside
                        ("Car", _box(10, 9.5, 4, 1.8, 1.5)),         # 0.5: false, centre beside the image
                        ])
    frame = _frame_of([("Car", gt)])
    points = np.array([[20.0, 3.0, -1.0, 0.1], [20.1, 3.1, -0.5, 0.1], [19.9, 2.9, -1.5, 0.1],  # in the pedestrian
                       [50.0, 0.0, -1.0, 0.1]], np.float32)
    match = match_frame(frame, dets, points)
    listed = summarize([frame], [match], CLASSES)["per_frame"][0]["false_positive_boxes"]
    assert [(b["class"], b["score"], b["points"], b["centre_in_image"]) for b in listed] == [
        ("Pedestrian", 0.7, 3, True), ("Car", 0.5, 0, False)]
    assert listed[0]["box"][:2] == [20.0, 3.0] and listed[0]["range"] == round(float(np.hypot(20, 3)), 2)
    report = {**summarize([frame], [match], CLASSES), "ap": {}}
    assert "Pedestrian" not in real_check.format_report(report).split("False positives per frame")[1].split("\n")[1]
    text = real_check.format_report(report, list_false_positives=True)
    assert re.search(r"^  f +Pedestrian +0\.70 +\( +20\.00, +3\.00\) +20\.2 m +3 +in image$", text, re.M), text
    assert re.search(r"^  f +Car +0\.50 +\( +10\.00, +9\.50\) +13\.8 m +0 +beside$", text, re.M), text


# ------------------------------------------------------------------------------------------- folders and errors
def _copy_split(kitti_sample, root, stems=("000000", "000003"), subs=("velodyne", "calib", "label_2")):
    for sub in subs:
        (root / sub).mkdir(parents=True)
        for stem in stems:
            src = next((kitti_sample / "training" / sub).glob(f"{stem}.*"))
            shutil.copy(src, root / sub / src.name)
    return root


def test_kitti_root_with_image_sets_split(kitti_sample, default_bundle, tmp_path, capsys):
    root = tmp_path / "kitti"
    _copy_split(kitti_sample, root / "training", stems=("000000", "000003", "000004"))
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "val.txt").write_text("000003\n000004\n")
    folder = real_check.resolve_folder(root, "val")
    assert folder.frame_ids == ["000003", "000004"] and folder.split_dir == root / "training"
    assert real_check.resolve_folder(root).frame_ids == ["000000", "000003", "000004"]
    code = real_check.main(["--bundle", str(default_bundle), "--backend", "torch", "--quiet", str(root),
                            "--split", "val", "--out", str(tmp_path / "r.json")])
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["frames"] == 2 and [f["frame"] for f in report["per_frame"]] == ["000003", "000004"]
    assert report["recall"]["by_iou"]["0.5"]["Car"]["all"]["total"] == 2


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("case, expected", [
    ("missing_folder", "no such folder"),
    ("no_labels", "label_2: missing"),
    ("label_missing_for_a_frame", "1 of 2 frames have no .txt file, e.g. 000003.txt"),
    ("unknown_split", "--split val: no"),
    ("missing_bundle", "no such bundle folder"),
    ("broken_bundle", "manifest"),
    ("bad_scan", "not a multiple of 16 bytes"),
    ("thresholds_count", "score_thresholds needs 3 values (one per class: Car, Pedestrian, Cyclist), got 2"),
    ("mount_twice", "--auto-sensor-mount and --sensor-height say where the sensor is twice"),
])
def test_bad_input_is_one_line_and_exit_2(case, expected, kitti_sample, default_bundle, tmp_path, capsys):
    split = tmp_path / "training"
    bundle = default_bundle
    if case != "missing_folder":
        _copy_split(kitti_sample, split, subs=("velodyne", "calib") if case == "no_labels" else
                    ("velodyne", "calib", "label_2"))
    if case == "label_missing_for_a_frame":
        (split / "label_2" / "000003.txt").unlink()
    if case == "missing_bundle":
        bundle = tmp_path / "nope"
    if case == "broken_bundle":
        bundle = tmp_path / "empty_bundle"
        bundle.mkdir()
    if case == "bad_scan":
        with open(split / "velodyne" / "000003.bin", "ab") as f:
            f.write(b"\0\0\0")
    args = ["--bundle", str(bundle), "--backend", "torch", "--quiet", str(split), "--out", str(tmp_path / "r.json")]
    if case == "unknown_split":
        args += ["--split", "val"]
    if case == "thresholds_count":
        args += ["--score-threshold", "0.3,0.2"]
    if case == "mount_twice":
        args += ["--auto-sensor-mount", "--sensor-height", "2.0"]
    assert real_check.main(args) == 2
    assert expected in _error_line(capsys)
    assert not (tmp_path / "r.json").exists()


def test_per_class_score_thresholds(kitti_sample, default_bundle, tmp_path):
    # an operating point from a bundle's README: one threshold per class, in the bundle's class order
    split = _copy_split(kitti_sample, tmp_path / "training")
    assert real_check.main(["--bundle", str(default_bundle), "--backend", "torch", "--threads", "1", "--quiet",
                            str(split), "--score-threshold", "0.9,0.05,0.9", "--save-predictions",
                            str(tmp_path / "pred")]) == 0
    rows = [line.split() for f in sorted((tmp_path / "pred").glob("*.txt")) for line in f.read_text().splitlines()]
    scores = {name: [float(r[-1]) for r in rows if r[0] == name] for name in ("Car", "Pedestrian", "Cyclist")}
    assert all(v >= 0.9 for v in scores["Car"] + scores["Cyclist"])
    assert scores["Pedestrian"] and min(scores["Pedestrian"]) < 0.9  # its own, lower threshold applied
    assert real_check.build_parser().parse_args(["x", "--score-threshold", "0.4"]).score_threshold == 0.4


def test_command_line_error_has_no_traceback(tmp_path):
    run = subprocess.run([sys.executable, str(REPO_ROOT / "training" / "real_check.py"), str(tmp_path / "nowhere")],
                         capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such folder"


def _lowered_split(shared_run, tmp_path, drop: float = 0.5):
    """The shared frames seen from `drop` m higher: points lower, the calibration moved with them (so the labels sit
    on the lowered points)."""
    import dataclasses

    split = _copy_split(shared_run["split"].parent, tmp_path / "training",
                        stems=tuple(f["frame"] for f in shared_run["report"]["per_frame"]))
    for scan in (split / "velodyne").glob("*.bin"):
        points = np.fromfile(scan, np.float32).reshape(-1, 4)
        points[:, 2] -= drop
        points.tofile(scan)
        calib_file = split / "calib" / f"{scan.stem}.txt"
        calib = Calibration.from_file(calib_file)
        v2c = calib.V2C.copy()
        v2c[:, 3] += drop * v2c[:, 2]  # camera <- lowered scan: the same camera coordinates as before
        calib_file.write_text(dataclasses.replace(calib, V2C=v2c).to_text())
    return split


def test_sensor_height_setting_undoes_a_higher_mount(shared_run, default_bundle, tmp_path, capsys):
    """The same six scenes seen from 0.5 m higher (points 0.5 m lower, and the calibration moved with them, so the
    labels sit on the lowered points): with --sensor-height 2.23 (KITTI's 1.73 + 0.5) the check gives the figures of
    the original scans, the points on each object included (counted in the labels' frame, not the model's)."""
    split = _lowered_split(shared_run, tmp_path)
    assert real_check.main(["--bundle", str(default_bundle), "--backend", "torch", "--threads", "1", "--quiet",
                            str(split), "--sensor-height", "2.23", "--out", str(tmp_path / "r.json")]) == 0
    assert "sensor 2.23 m above the ground" in capsys.readouterr().out
    report, original = json.loads((tmp_path / "r.json").read_text()), shared_run["report"]
    assert report["recall"] == original["recall"] and report["confusion"] == original["confusion"]
    def without_boxes(frames):
        return [{**f, "false_positive_boxes": [{k: v for k, v in b.items() if k != "box"}
                                               for b in f["false_positive_boxes"]]} for f in frames]

    assert without_boxes(report["per_frame"]) == without_boxes(original["per_frame"])
    boxes = [np.array([b["box"] for b in f["false_positive_boxes"]]).reshape(-1, 7) for f in report["per_frame"]]
    before = [np.array([b["box"] for b in f["false_positive_boxes"]]).reshape(-1, 7) for f in original["per_frame"]]
    for now, then in zip(boxes, before):  # the same boxes, 0.5 m lower in the lowered scans' frame
        np.testing.assert_allclose(now + [0, 0, 0.5, 0, 0, 0, 0], then, atol=2e-3)
    assert sum(len(f["false_positive_boxes"]) for f in report["per_frame"]) == report["false_positives"]["total"] > 0
    assert report["recall"]["by_points"] is not None
    for metric in ("bev_R40", "3d_R40"):
        assert report["ap"]["Car"][metric] == pytest.approx(original["ap"]["Car"][metric], abs=1e-9), metric


def test_the_ground_check_and_the_automatic_mount_on_a_higher_mount(shared_run, default_bundle, tmp_path, capsys):
    """The six scans as they are: the ground check says the ground lies as trained. Seen from 0.5 m higher: without a
    setting it says so and suggests a sensor_height 0.5 m above the scans' own; with --auto-sensor-mount the check
    measures that mount and uses it (the JSON says which)."""
    from clean_ros.inference.bundle import load_bundle
    from clean_ros.inference.ground_plane import fit_ground_plane

    original = shared_run["report"]
    assert original["ground_check"].startswith("ground check: ground 1.") and original["ground_check"].endswith(
        "as trained")
    split = _lowered_split(shared_run, tmp_path)
    common = ["--bundle", str(default_bundle), "--backend", "torch", "--threads", "1", "--quiet", str(split)]
    assert real_check.main(common + ["--out", str(tmp_path / "none.json")]) == 0
    unset = json.loads((tmp_path / "none.json").read_text())
    assert "the sensor is not where the model expects it: set sensor_height 2." in unset["ground_check"]
    assert unset["sensor_mount"] is None and not unset["auto_sensor_mount"]
    assert real_check.main(common + ["--auto-sensor-mount", "--out", str(tmp_path / "auto.json")]) == 0
    auto = json.loads((tmp_path / "auto.json").read_text())
    assert auto["auto_sensor_mount"] and auto["ground_check"].startswith("sensor mount measured from 6 scans")
    assert auto["ground_check"] in capsys.readouterr().out
    own = np.median([fit_ground_plane(np.fromfile(p, np.float32).reshape(-1, 4)).height
                     for p in sorted((shared_run["split"] / "velodyne").glob("*.bin"))
                     if p.stem in {f["frame"] for f in original["per_frame"]}])
    bundle = load_bundle(default_bundle)
    height = float(auto["sensor_mount"].split(" m above")[0].split()[-1])
    assert height == pytest.approx(own + 0.5 - bundle.ground_height + bundle.sensor_height, abs=0.03)


def test_automatic_intensity_undoes_a_dimmer_sensor(shared_run, default_bundle, tmp_path, capsys):
    """The same six scans with intensity x 0.5 (a sensor on another intensity scale): by default the check (the
    Pipeline) scales them back to the bundle's training level and gives the original figures; with
    --no-auto-intensity the model sees the dim scans and the figures change."""
    split = _copy_split(shared_run["split"].parent, tmp_path / "training",
                        stems=tuple(f["frame"] for f in shared_run["report"]["per_frame"]))
    for scan in (split / "velodyne").glob("*.bin"):
        points = np.fromfile(scan, np.float32).reshape(-1, 4)
        points[:, 3] *= 0.5
        points.tofile(scan)
    common = ["--bundle", str(default_bundle), "--backend", "torch", "--threads", "1", "--quiet", str(split)]
    assert real_check.main(common + ["--out", str(tmp_path / "auto.json")]) == 0
    assert "automatic intensity: factor" in capsys.readouterr().out
    assert real_check.main(common + ["--no-auto-intensity", "--out", str(tmp_path / "off.json")]) == 0
    auto, off = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("auto", "off"))
    original = shared_run["report"]
    assert original["auto_intensity"] and len(original["intensity_factors"]) == len(original["per_frame"])
    np.testing.assert_allclose(auto["intensity_factors"], 2 * np.array(original["intensity_factors"]), rtol=2e-3)
    assert auto["false_positives"] == original["false_positives"] and auto["recall"] == original["recall"]
    assert not off["auto_intensity"] and "intensity_factors" not in off
    assert [f["detections"] for f in off["per_frame"]] != [f["detections"] for f in original["per_frame"]]


def test_intensity_scale_reaches_the_pipeline_and_leaves_the_scan_as_recorded(kitti_sample, tmp_path):
    """--intensity-scale: the bundle sees intensity x scale; the points counted on the objects (and the scan read
    from disk) are the recorded ones, so the 'by points' table does not depend on the setting."""
    from training.data.kitti_dataset import read_velodyne

    split = tmp_path / "training"
    frame = "000000"
    for sub, suffix in (("velodyne", ".bin"), ("label_2", ".txt"), ("calib", ".txt")):
        (split / sub).mkdir(parents=True)
        shutil.copy(kitti_sample / "training" / sub / f"{frame}{suffix}", split / sub / f"{frame}{suffix}")
    recorded = read_velodyne(split / "velodyne" / f"{frame}.bin")
    seen = []

    class Recording:
        class_names = CLASSES
        auto_intensity, intensity_factor = None, 1.0

        def __call__(self, points):
            seen.append(points.copy())
            return type("Result", (), {"detections": Detections.empty(CLASSES)})()

    folder = real_check.resolve_folder(split)
    reports = [real_check.run_check(folder, Recording(), scale, log=lambda *a: None) for scale in (1.0, 0.5)]
    np.testing.assert_array_equal(seen[0], recorded)
    np.testing.assert_array_equal(seen[1][:, :3], recorded[:, :3])
    np.testing.assert_allclose(seen[1][:, 3], recorded[:, 3] * np.float32(0.5))
    assert reports[0]["recall"]["by_points"] == reports[1]["recall"]["by_points"]


def test_operating_point_sets_the_thresholds_the_bundle_lists(kitti_sample, default_bundle, tmp_path, capsys):
    from clean_ros.inference.bundle import load_bundle

    points = load_bundle(default_bundle).operating_points
    assert len(points) >= 2  # the release recipe's export.operating_points (config/compress/release.yaml)
    tightest = points[0]
    split = _copy_split(kitti_sample, tmp_path / "training")
    out = tmp_path / "r.json"
    assert real_check.main(["--bundle", str(default_bundle), "--backend", "torch", "--threads", "1", "--quiet",
                            str(split), "--operating-point", f"{tightest.budget:g}", "--out", str(out),
                            "--save-predictions", str(tmp_path / "pred")]) == 0
    assert f"operating point {tightest.budget:g} false positives per frame on val" in capsys.readouterr().out
    report = json.loads(out.read_text())
    names = load_bundle(default_bundle).class_names
    assert report["operating_point"] == tightest.budget
    assert report["score_thresholds"] == dict(zip(names, tightest.score_thresholds))
    for f in (tmp_path / "pred").glob("*.txt"):
        for row in (line.split() for line in f.read_text().splitlines()):
            assert float(row[-1]) >= tightest.score_thresholds[names.index(row[0])] - 1e-6
