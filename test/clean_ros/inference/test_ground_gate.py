"""The ground-contact gate (clean_ros.inference.ground_gate): known gaps on synthetic ground, robustness to a stray
low return, the gate's decisions, its setting in the bundle and the Pipeline, and the calibration tool
(training/ground_gate.py)."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from clean_ros.inference.bundle import BundleError, load_bundle
from clean_ros.inference.ground_gate import GroundGate, box_ground_gaps, check_max_gap
from clean_ros.types import Detections

CLASSES = ("Car", "Pedestrian", "Cyclist")


def ground(slope: float = 0.0, height: float = -1.7, extent: float = 20.0, step: float = 0.2) -> np.ndarray:
    """A ground plane z = height + slope * x sampled every `step` m over [-extent, extent]^2, intensity 0.3."""
    xs = np.arange(-extent, extent, step, dtype=np.float32)
    x, y = np.meshgrid(xs, xs, indexing="ij")
    z = height + slope * x
    return np.column_stack([x.ravel(), y.ravel(), z.ravel(), np.full(x.size, 0.3)]).astype(np.float32)


def box(x, y, bottom, l=4.0, w=1.7, h=1.5, yaw=0.3) -> list[float]:
    return [x, y, bottom + h / 2, l, w, h, yaw]


def test_gaps_of_standing_floating_and_sloped_boxes():
    flat = ground()
    boxes = np.array([box(5, 3, -1.7), box(-8, 2, -0.7), box(0, -6, -1.2, 0.6, 0.6, 1.7)], np.float32)
    gaps = box_ground_gaps(flat, boxes)
    np.testing.assert_allclose(gaps, [0.0, 1.0, 0.5], atol=0.05)
    # one call for many boxes gives what one call per box gives (no state between boxes)
    np.testing.assert_allclose(gaps, np.concatenate([box_ground_gaps(flat, boxes[i:i + 1]) for i in range(3)]))
    # on a 10 % slope a box resting on the ground at its centre stays within a few centimetres of it
    sloped = ground(slope=0.1)
    on_slope = np.array([box(5, 3, -1.7 + 0.1 * 5)], np.float32)
    assert abs(box_ground_gaps(sloped, on_slope)[0]) < 0.25


def test_a_stray_low_return_does_not_lift_every_box():
    points = ground()
    stray = np.array([[5.1, 3.1, -4.0, 0.1]], np.float32)  # a multipath return 2.3 m below the road
    boxes = np.array([box(5, 3, -1.7)], np.float32)
    assert abs(box_ground_gaps(np.vstack([points, stray]), boxes)[0]) < 0.05


def test_a_box_with_no_ground_around_cannot_be_judged():
    far = np.array([box(60, 0, 0.0)], np.float32)
    assert math.isnan(box_ground_gaps(ground(), far)[0])
    assert box_ground_gaps(ground(), np.zeros((0, 7), np.float32)).shape == (0,)
    assert math.isnan(box_ground_gaps(np.zeros((0, 4), np.float32), far)[0])


def test_boxes_no_grid_can_hold_are_refused_not_allocated():
    spread = np.array([box(-5000, -5000, 0.0), box(5000, 5000, 0.0)], np.float32)
    with pytest.raises(ValueError, match="the boxes span 10"):
        box_ground_gaps(ground(), spread)
    with pytest.raises(ValueError, match="boxes must be finite"):
        box_ground_gaps(ground(), np.array([box(np.nan, 0, 0.0)], np.float32))


def test_the_gate_drops_floating_boxes_and_keeps_the_rest():
    boxes = np.array([box(5, 3, -1.7), box(-8, 2, -0.7), box(60, 0, 0.0)], np.float32)
    detections = Detections(boxes, np.array([0.9, 0.8, 0.7], np.float32), np.array([0, 2, 1]), CLASSES)
    kept = GroundGate(0.5)(ground(), detections)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.7]) and kept.labels.tolist() == [0, 1]
    assert len(GroundGate(1.5)(ground(), detections)) == 3
    assert len(GroundGate(0.5)(ground(), Detections.empty(CLASSES))) == 0


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, True, "0.5", None])
def test_bad_gate_values_are_one_line(value):
    with pytest.raises(ValueError, match=r"^ground_gate_m must be a number of metres >= 0 \(0 = off\), got"):
        check_max_gap(value)


def test_the_bundle_field_sets_the_pipelines_gate(default_bundle, tmp_path):
    from clean_ros.inference.pipeline import Pipeline

    path = tmp_path / "bundle"
    shutil.copytree(default_bundle, path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["ground_gate_m"] = 0.45
    (path / "manifest.json").write_text(json.dumps(manifest))
    pipe = Pipeline.from_bundle(path, backend="torch")
    assert pipe.ground_gate_m == 0.45
    # a refused change leaves everything as it was, the gate included
    with pytest.raises(ValueError, match="ground_gate_m must be"):
        pipe.update_postprocess(ground_gate_m=-1.0, nms_iou=0.2)
    assert pipe.ground_gate_m == 0.45 and pipe.postprocess_settings.nms_iou != 0.2
    pipe.update_postprocess(ground_gate_m=0.0)
    assert pipe.ground_gate is None
    manifest["ground_gate_m"] = -1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest.json: field ground_gate_m must be a number of metres >= 0"):
        load_bundle(path)


def test_the_pipeline_gates_in_the_model_frame(kitti_sample, default_bundle, one_thread):
    from clean_ros.cloud.transforms import transform_points
    from clean_ros.inference.pipeline import Pipeline
    from clean_ros.inference.sensor_mount import SensorMount

    points = np.fromfile(kitti_sample / "training" / "velodyne" / "000000.bin", np.float32).reshape(-1, 4)
    pipe = Pipeline.from_bundle(default_bundle, backend="torch")
    pipe.set_ground_gate(0.0)
    ungated = pipe(points).detections
    gaps = box_ground_gaps(points, ungated.boxes)
    assert (gaps > 0.5).sum() >= 2  # the real scan has floating boxes for the gate to drop
    pipe.set_ground_gate(0.5)
    gated = pipe(points).detections
    assert len(gated) == int((~(gaps > 0.5)).sum())
    np.testing.assert_allclose(gated.boxes, ungated.boxes[~(gaps > 0.5)])
    # the same scan from a sensor 0.5 m higher, mount given: the gate judges the moved points, same boxes kept
    mount = SensorMount(2.23)
    higher = transform_points(points, mount.model_from_sensor(1.73).inverse())
    pipe.set_sensor_mount(mount)
    assert len(pipe(higher).detections) == len(gated)


# --------------------------------------------------------------------------------------- training/ground_gate.py
def _kitti_root(kitti_sample, root, empty_labels=False):
    """A KITTI root over the shared frames with ImageSets/val.txt (optionally with every label file empty)."""
    split = root / "training"
    split.mkdir(parents=True)
    for sub in ("velodyne", "calib"):
        (split / sub).symlink_to(kitti_sample / "training" / sub)
    if empty_labels:
        (split / "label_2").mkdir()
        for f in (kitti_sample / "training" / "label_2").glob("*.txt"):
            (split / "label_2" / f.name).write_text("")
    else:
        (split / "label_2").symlink_to(kitti_sample / "training" / "label_2")
    ids = sorted(p.stem for p in (kitti_sample / "training" / "velodyne").glob("*.bin"))
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "val.txt").write_text("\n".join(ids) + "\n")
    return root


def test_the_tool_chooses_and_records_the_gate(kitti_sample, default_bundle, tmp_path, capsys, one_thread):
    from training import ground_gate

    assert ground_gate.choose_gate(np.array([0.1, 0.2, 0.31], np.float32), 0.999) == pytest.approx(0.35)
    assert ground_gate.choose_gate(np.array([-0.3], np.float32), 0.999) == pytest.approx(0.05)
    path = tmp_path / "bundle"
    shutil.copytree(default_bundle, path)
    before = (path / "manifest.json").read_text()
    # the shared real frames stand in for a labelled val split: the tool's mechanics, not a choice of the gate
    root = _kitti_root(kitti_sample, tmp_path / "kitti")
    assert ground_gate.main([str(path), str(root), "--dry-run"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("ground gate ") and " m on 6 frames of " in line and "matched detections" in line
    assert (path / "manifest.json").read_text() == before  # --dry-run writes nothing
    assert ground_gate.main([str(path), str(root)]) == 0
    bundle = load_bundle(path)
    calibration = bundle.manifest["ground_gate_calibration"]
    assert calibration["split"] == "val" and calibration["frames"] == 6 and calibration["matched"] >= 1
    assert bundle.ground_gate_m == pytest.approx(float(line.split()[2]))  # 'ground gate 0.50 m ...'
    assert bundle.ground_gate_m >= calibration["matched_gap_max_m"] - 1e-6  # keep 0.999 of a handful: all of them


def test_the_tool_says_when_it_cannot_choose(kitti_sample, default_bundle, tmp_path, capsys, one_thread):
    from training import ground_gate

    path = tmp_path / "bundle"
    shutil.copytree(default_bundle, path)
    before = (path / "manifest.json").read_text()
    nothing = _kitti_root(kitti_sample, tmp_path / "empty", empty_labels=True)
    assert ground_gate.main([str(path), str(nothing)]) == ground_gate.EXIT_NOTHING_MATCHED
    err = capsys.readouterr().err
    assert err.startswith("error: no detection matched a labelled object") and err.count("\n") == 1
    assert ground_gate.main([str(path), str(kitti_sample / "training"), "--split", "val"]) == 2  # no listing there
    assert capsys.readouterr().err.startswith("error: ")
    assert ground_gate.main([str(path), str(nothing), "--keep", "1.5"]) == 2
    assert (path / "manifest.json").read_text() == before
