"""Offline inference tool (python -m clean_ros.infer) and the .pcd reader."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from clean_ros.tools import infer
from clean_ros.cloud.pcd import PcdFormatError, read_pcd, write_pcd
from shared_helpers import assert_same_detections, read_velodyne



@pytest.fixture(scope="module")
def bundle_path(default_bundle) -> Path:
    return default_bundle


@pytest.fixture(scope="module")
def kitti_split(kitti_sample, tmp_path_factory) -> Path:
    """A two-frame copy of the KITTI sample's training split (velodyne, calib, label_2)."""
    root = tmp_path_factory.mktemp("kitti") / "training"
    for sub in ("velodyne", "calib", "label_2"):
        (root / sub).mkdir(parents=True)
        for stem in ("000000", "000003"):
            src = next((kitti_sample / "training" / sub).glob(f"{stem}.*"))
            shutil.copy(src, root / sub / src.name)
    return root


# ------------------------------------------------------------------------------------------- .pcd
def test_pcd_binary_and_ascii_round_trip(tmp_path, kitti_sample):
    points = read_velodyne(kitti_sample / "training/velodyne/000000.bin")[:5000]
    write_pcd(tmp_path / "b.pcd", points, binary=True)
    write_pcd(tmp_path / "a.pcd", points[:300], binary=False)
    b = read_pcd(tmp_path / "b.pcd")
    assert b.points.dtype == np.float32 and np.array_equal(b.points, points)
    assert b.available_fields == ("x", "y", "z", "intensity") and b.missing_fields == ()
    assert np.array_equal(read_pcd(tmp_path / "a.pcd").points, points[:300])


def _header(fields, sizes, types, counts, n, data):
    return (f"VERSION 0.7\nFIELDS {fields}\nSIZE {sizes}\nTYPE {types}\nCOUNT {counts}\nWIDTH {n}\nHEIGHT 1\n"
            f"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {data}\n").encode()


def test_pcd_mixed_types_padding_counts_nan_and_missing_intensity(tmp_path):
    # x y z float32, a 3-float normal (COUNT 3, skipped), uint8 intensity, float64 time
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("n", "<f4", (3,)), ("i", "u1"), ("t", "<f8")])
    rows = np.zeros(3, dtype)
    rows["x"], rows["y"], rows["z"] = [1, np.nan, 3], [4, 5, 6], [7, 8, 9]
    rows["i"], rows["t"] = [10, 20, 255], [0.5, 0.25, 0.125]
    (tmp_path / "m.pcd").write_bytes(_header("x y z normal intensity time", "4 4 4 4 1 8", "F F F F U F",
                                             "1 1 1 3 1 1", 3, "binary") + rows.tobytes())
    cloud = read_pcd(tmp_path / "m.pcd", fields=("x", "y", "z", "intensity", "time"))
    assert cloud.num_nonfinite_removed == 1
    assert np.array_equal(cloud.points, np.array([[1, 4, 7, 10, 0.5], [3, 6, 9, 255, 0.125]], np.float32))
    (tmp_path / "xyz.pcd").write_bytes(_header("x y z", "4 4 4", "F F F", "1 1 1", 2, "ascii") + b"1 2 3\n4 5 6\n")
    cloud = read_pcd(tmp_path / "xyz.pcd")
    assert cloud.missing_fields == ("intensity",) and np.array_equal(cloud.points[:, 3], [0, 0])


@pytest.mark.parametrize("body, message", [
    (_header("x y z", "4 4 4", "F F F", "1 1 1", 2, "binary_compressed") + b"\0" * 24, "binary_compressed is not supported"),
    (_header("x y z", "4 4 4", "F F F", "1 1 1", 4, "binary") + b"\0" * 24, "binary data has 24 bytes, header promises 4"),
    (_header("x y z", "4 4 4", "F F F", "1 1 1", 2, "ascii") + b"1 2 3\n4 five 6\n", r":12: non-numeric value"),
    (_header("x y z", "4 4 4", "F F F", "1 1 1", 2, "ascii") + b"1 2 3\n4 5\n", r":12: expected 3 values per row"),
    (_header("y z", "4 4", "F F", "1 1", 1, "ascii") + b"1 2\n", "no 'x' field"),
    (b"hello\nworld\n", "header ends before a DATA line"),
])
def test_pcd_errors_name_file_and_line(tmp_path, body, message):
    (tmp_path / "bad.pcd").write_bytes(body)
    with pytest.raises(PcdFormatError, match=message) as err:
        read_pcd(tmp_path / "bad.pcd")
    assert str(tmp_path / "bad.pcd") in str(err.value)


# ------------------------------------------------------------------------------------------- infer
def test_kitti_folder_to_predictions_readable_by_evaluate(bundle_path, kitti_split, tmp_path, capsys):
    out, png = tmp_path / "pred", tmp_path / "png"
    code = infer.main(["--bundle", str(bundle_path), "--backend", "onnxruntime", "--out", str(out),
                       "--png", str(png), str(kitti_split)])
    text = capsys.readouterr().out
    assert code == 0
    lines = [ln for ln in text.splitlines() if ln.startswith(("000000:", "000003:"))]
    assert len(lines) == 2 and all(" ms (preprocess " in ln and "Car" in ln for ln in lines)
    assert sorted(p.name for p in out.iterdir()) == ["000000.txt", "000003.txt"]
    rows = [ln.split() for p in out.iterdir() for ln in p.read_text().splitlines()]
    assert rows and all(len(r) == 16 for r in rows)
    assert (png / "000000.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from training import evaluate as evaluate_cli

    results = tmp_path / "results.json"
    assert evaluate_cli.main(["--gt", str(kitti_split / "label_2"), "--pred", str(out), "--out", str(results)]) == 0
    payload = json.loads(results.read_text())
    assert payload["frames"] == 2 and payload["frames_without_predictions"] == 0
    assert set(payload["results"]) == {"Car", "Pedestrian", "Cyclist"}


def test_bin_and_pcd_inputs_give_the_same_json_predictions(bundle_path, kitti_sample, tmp_path, capsys):
    points = read_velodyne(kitti_sample / "training/velodyne/000000.bin")
    points.tofile(tmp_path / "scan.bin")
    write_pcd(tmp_path / "scan_copy.pcd", points)
    out = tmp_path / "pred"
    code = infer.main(["--bundle", str(bundle_path), "--backend", "torch", "--out", str(out),
                       str(tmp_path / "scan.bin"), str(tmp_path / "scan_copy.pcd")])
    assert code == 0, capsys.readouterr().err
    a = json.loads((out / "scan.json").read_text())
    b = json.loads((out / "scan_copy.json").read_text())
    assert a["frame_convention"].startswith("lidar: x forward")
    assert a["class_names"] == ["Car", "Pedestrian", "Cyclist"]
    assert a["detections"] and a["detections"] == b["detections"]
    threshold = min(json.loads((bundle_path / "manifest.json").read_text())["postprocess"]["score_thresholds"])
    assert all(len(d["box"]) == 7 and threshold <= d["score"] <= 1 for d in a["detections"])

    from clean_ros.inference.pipeline import Pipeline

    pipe = Pipeline.from_bundle(bundle_path, backend="torch")
    pipe.set_auto_intensity(True, strict=True)  # infer's default, as the node's
    dets = pipe(points).detections
    assert len(dets) == len(a["detections"])
    assert np.allclose(np.array([d["box"] for d in a["detections"]]), dets.boxes, atol=1e-4)


def test_a_dimmer_sensor_gives_the_same_boxes_unless_automatic_intensity_is_off(bundle_path, kitti_sample, tmp_path,
                                                                                capsys):
    points = read_velodyne(kitti_sample / "training/velodyne/000003.bin")
    points.tofile(tmp_path / "scan.bin")
    (points * np.array([1, 1, 1, 0.5], np.float32)).tofile(tmp_path / "dim.bin")
    runs = {}
    for name, extra in (("scan", []), ("dim", []), ("dim_off", ["--no-auto-intensity"])):
        source = tmp_path / f"{name.split('_')[0]}.bin"
        assert infer.main(["--bundle", str(bundle_path), "--backend", "torch", "--out", str(tmp_path / name),
                           *extra, str(source)]) == 0
        runs[name] = json.loads((tmp_path / name / f"{source.stem}.json").read_text())["detections"]
        runs[name + "_stdout"] = capsys.readouterr().out
    factor = {n: float(re.search(r"\| intensity x ([0-9.]+)", runs[n + "_stdout"]).group(1)) for n in ("scan", "dim")}
    assert factor["dim"] == pytest.approx(2 * factor["scan"], rel=5e-3) and factor["scan"] != 1.0
    assert "intensity x" not in runs["dim_off_stdout"]
    assert len(runs["scan"]) >= 3 and len(runs["dim"]) == len(runs["scan"])
    np.testing.assert_allclose([d["box"] for d in runs["dim"]], [d["box"] for d in runs["scan"]], atol=1e-3)
    assert [d["class"] for d in runs["dim"]] == [d["class"] for d in runs["scan"]]
    off = runs["dim_off"]
    assert len(off) != len(runs["scan"]) or not np.allclose([d["score"] for d in off],
                                                            [d["score"] for d in runs["scan"]], atol=1e-3)


def _infer_mm_0_255_scan(bundle_path, kitti_sample, tmp_path, capsys, *flags) -> str:
    """infer's stdout for a scan in millimetres with 0-255 intensity (no detections)."""
    points = read_velodyne(kitti_sample / "training/velodyne/000000.bin").copy()
    points[:, :3] *= 1000.0  # millimetres instead of metres
    points[:, 3] *= 255.0  # 0-255 intensity
    points.tofile(tmp_path / "mm.bin")
    assert infer.main(["--bundle", str(bundle_path), "--backend", "torch", "--score-threshold", "0.3", *flags,
                       str(tmp_path / "mm.bin")]) == 0
    text = capsys.readouterr().out
    assert "mm: 0 detections" in text
    assert "no detections in mm:" in text
    assert "are the units millimetres" in text
    return text


def test_no_detections_prints_the_input_contract_findings(bundle_path, kitti_sample, tmp_path, capsys):
    text = _infer_mm_0_255_scan(bundle_path, kitti_sample, tmp_path, capsys, "--no-auto-intensity")
    assert "looks 0-255 scaled" in text and "set intensity_scale" in text


def test_no_detections_with_automatic_intensity_does_not_judge_the_intensity_range(bundle_path, kitti_sample,
                                                                                    tmp_path, capsys):
    """Automatic intensity (on by default: the bundle records intensity_level) brings any intensity scale to the
    training level, so a 0-255 intensity is no finding then (Pipeline.input_contract, as the node)."""
    text = _infer_mm_0_255_scan(bundle_path, kitti_sample, tmp_path, capsys)
    assert "| intensity x " in text
    assert "0-255" not in text and "intensity_scale" not in text


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.bin", "missing.bin: no such file or directory"),
    (lambda d: (d / "x.txt").write_text("1") and d / "x.txt", "unsupported file type '.txt'"),
    (lambda d: (d / "odd.bin").write_bytes(b"\0" * 10) and d / "odd.bin", "odd.bin: 10 bytes is not a multiple of 16"),
    # fromfile alone would read 17 bytes as one point and 3 bytes as an empty scan
    (lambda d: (d / "cut.bin").write_bytes(b"\0" * 17) and d / "cut.bin", "cut.bin: 17 bytes is not a multiple of 16"),
    (lambda d: (d / "abc.bin").write_bytes(b"abc") and d / "abc.bin", "abc.bin: 3 bytes is not a multiple of 16"),
    (lambda d: (d / "e").mkdir() or d / "e", "no .bin or .pcd files"),
])
def test_bad_inputs_exit_2_with_a_message(bundle_path, tmp_path, capsys, make, message):
    target = make(tmp_path)
    assert infer.main(["--bundle", str(bundle_path), "--backend", "torch", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_bad_bundle_exits_2(tmp_path, capsys, kitti_sample):
    (tmp_path / "b").mkdir()
    assert infer.main(["--bundle", str(tmp_path / "b"), str(kitti_sample / "training/velodyne/000000.bin")]) == 2
    assert "no manifest.json: not a clean_ros bundle" in capsys.readouterr().err


def test_sensor_height_moves_points_to_the_training_height_and_boxes_back(bundle_path, kitti_sample, tmp_path,
                                                                           capsys):
    """The same scene seen by a sensor 0.6 m higher and pitched: --sensor-height/--sensor-pitch give the KITTI
    answer again, in that sensor's frame (clean_ros.inference.sensor_mount, as the node and the Pipeline do)."""
    from clean_ros.cloud.transforms import transform_boxes, transform_points
    from clean_ros.inference.sensor_mount import SensorMount

    points = read_velodyne(kitti_sample / "training/velodyne/000000.bin")
    points.tofile(tmp_path / "kitti.bin")
    kitti_from_high = SensorMount(2.33, pitch=0.05).model_from_sensor(1.73)
    transform_points(points, kitti_from_high.inverse()).tofile(tmp_path / "high.bin")
    out = tmp_path / "pred"
    assert infer.main(["--bundle", str(bundle_path), "--backend", "torch", "--out", str(out),
                       str(tmp_path / "kitti.bin")]) == 0
    assert infer.main(["--bundle", str(bundle_path), "--backend", "torch", "--out", str(out), "--sensor-height",
                       "2.33", "--sensor-pitch", "0.05", str(tmp_path / "high.bin")]) == 0
    assert "sensor 2.33 m above the ground, pitch 0.05 rad" in capsys.readouterr().out
    kitti = json.loads((out / "kitti.json").read_text())["detections"]
    high = json.loads((out / "high.json").read_text())["detections"]
    assert kitti and high
    manifest = json.loads((bundle_path / "manifest.json").read_text())
    thresholds = dict(zip(manifest["class_names"], manifest["detector_config"]["postprocess"]["score_thresholds"]))

    def as_arrays(detections):
        return (np.array([d["box"] for d in detections]), np.array([d["score"] for d in detections]),
                np.array([d["class"] for d in detections]))

    boxes, scores, names = as_arrays(high)
    assert_same_detections((transform_boxes(boxes, kitti_from_high), scores, names), as_arrays(kitti), thresholds)
    # a bad setting is one line, exit 2
    assert infer.main(["--bundle", str(bundle_path), "--sensor-height", "-1", str(tmp_path / "high.bin")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sensor_height = -1.0") and "Traceback" not in err


def test_the_ground_check_line_and_the_automatic_mount(bundle_path, kitti_sample, tmp_path, capsys):
    """infer's last lines: the ground check says whether the ground lies as the model's training scans had it (and
    what --sensor-height would fix it); --auto-sensor-mount measures the mount and says which it used;
    --no-ground-check measures nothing; both mounts at once are refused."""
    from clean_ros.cloud.transforms import transform_points
    from clean_ros.inference.sensor_mount import SensorMount

    points = read_velodyne(kitti_sample / "training/velodyne/000000.bin")
    transform_points(points, SensorMount(2.6, pitch=0.05).model_from_sensor(1.73).inverse()).astype(
        np.float32).tofile(tmp_path / "high.bin")
    common = ["--bundle", str(bundle_path), "--backend", "torch", "--threads", "1", str(tmp_path / "high.bin")]
    assert infer.main(common) == 0
    out = capsys.readouterr().out
    assert "ground check: ground 2." in out and "set sensor_height 2." in out
    frame_line = next(line for line in out.splitlines() if line.startswith("high:"))
    assert ", ground " in frame_line  # the fit's time, its own stage
    assert infer.main(common + ["--auto-sensor-mount"]) == 0
    out = capsys.readouterr().out
    assert "sensor mount measured from 1 scans: sensor 2." in out and "pitch 0.06" in out
    assert infer.main(common + ["--no-ground-check"]) == 0
    assert "ground" not in capsys.readouterr().out
    assert infer.main(common + ["--auto-sensor-mount", "--sensor-height", "2.6"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --auto-sensor-mount and --sensor-height say where the sensor is twice: give one"


# ------------------------------------------------------------------------------------------- input boxes, range table
def _inside(points: np.ndarray, box) -> np.ndarray:
    """Test-side reference: min <= coordinate <= max on x, y and z."""
    lo, hi = np.asarray(box[:3]), np.asarray(box[3:])
    return np.all((points[:, :3] >= lo) & (points[:, :3] <= hi), axis=1)


def test_input_boxes_and_range_thresholds_as_the_node_applies_them(bundle_path, kitti_sample, tmp_path, capsys,
                                                                    one_thread):
    """--crop-box / --exclusion-box remove the points the node's boxes remove (counted on the frame's line), and
    --range-breakpoints / --range-score-thresholds drop the far boxes: the predictions equal the Pipeline's on
    the points kept by a mask computed here, with the same range table."""
    from clean_ros.inference.pipeline import Pipeline

    points = read_velodyne(kitti_sample / "training/velodyne/000004.bin")  # cars at 23 and 41 m
    points.tofile(tmp_path / "scan.bin")
    crop, exclusion = (0.0, -30.0, -3.0, 60.0, 30.0, 1.0), (-3.0, -2.0, -3.0, 12.0, 2.0, 1.0)
    table = "[0, 1, 0, 1, 0, 1]"  # beyond 30 m nothing passes (a score is below 1)
    out = tmp_path / "pred"
    assert infer.main(["--bundle", str(bundle_path), "--backend", "torch", "--threads", "1", "--out", str(out),
                       "--crop-box=" + ",".join(map(str, crop)), "--exclusion-box", str(list(exclusion)),
                       "--range-breakpoints", "30", "--range-score-thresholds", table,
                       str(tmp_path / "scan.bin")]) == 0
    text = capsys.readouterr().out
    in_crop, in_exclusion = _inside(points, crop), _inside(points, exclusion)
    outside, excluded = int((~in_crop).sum()), int((in_crop & in_exclusion).sum())
    assert outside > 1000 and excluded > 100
    assert f"boxes removed {outside} points outside the crop box, {excluded} in the exclusion box" in text
    assert "range score thresholds: breakpoints [30.0] m" in text
    got = json.loads((out / "scan.json").read_text())["detections"]

    pipe = Pipeline.from_bundle(bundle_path, backend="torch")
    pipe.set_auto_intensity(True, strict=True)  # infer's default: the level of the points the boxes keep
    kept = points[in_crop & ~in_exclusion]
    unfiltered = pipe(kept).detections
    assert (np.hypot(unfiltered.boxes[:, 0], unfiltered.boxes[:, 1]) >= 30).any()  # the table has work to do
    pipe.update_postprocess(range_breakpoints=[30.0], range_score_thresholds=[0, 1, 0, 1, 0, 1])
    pipe.set_auto_intensity(True, strict=True)  # a fresh running median, as infer's one scan
    reference = pipe(kept).detections
    assert len(got) == len(reference) > 0
    boxes = np.array([d["box"] for d in got])
    np.testing.assert_allclose(boxes, reference.boxes, atol=1e-4)
    assert (np.hypot(boxes[:, 0], boxes[:, 1]) < 30).all()
    assert [d["class"] for d in got] == list(reference.names)


def test_input_boxes_are_in_the_model_frame_with_a_sensor_mount(bundle_path, kitti_sample, tmp_path, capsys):
    """With --sensor-height the boxes test the points moved to the model's frame, as the node does: a crop box
    that keeps the road only at the training height removes a count that only the moved points give."""
    from clean_ros.cloud.transforms import transform_points
    from clean_ros.inference.sensor_mount import SensorMount

    points = read_velodyne(kitti_sample / "training/velodyne/000000.bin")
    kitti_from_high = SensorMount(2.33, pitch=0.05).model_from_sensor(1.73)
    transform_points(points, kitti_from_high.inverse()).tofile(tmp_path / "high.bin")
    high = np.fromfile(tmp_path / "high.bin", np.float32).reshape(-1, 4)
    crop = (-80.0, -80.0, -1.5, 80.0, 80.0, 3.0)   # above the road at 1.73 m
    assert infer.main(["--bundle", str(bundle_path), "--backend", "torch", "--threads", "1", "--sensor-height",
                       "2.33", "--sensor-pitch", "0.05", "--crop-box", str(list(crop)), str(tmp_path / "high.bin")
                       ]) == 0
    text = capsys.readouterr().out
    in_model = int((~_inside(transform_points(high, kitti_from_high), crop)).sum())
    in_sensor = int((~_inside(high, crop)).sum())
    assert abs(in_model - in_sensor) > 1000
    assert f"boxes removed {in_model} points outside the crop box, 0 in the exclusion box" in text


@pytest.mark.parametrize("options, message", [
    (["--crop-box", "1,2,3"], "error: crop_box needs 6 values"),
    (["--exclusion-box=0,5,0,1,4,1"], "error: exclusion_box: min must be below max on every axis (not on y)"),
    (["--crop-box", "[0, a, 0, 1, 1, 1]"], "error: crop_box: 'a' is not a number"),
    (["--range-breakpoints", "30"], "error: --range-breakpoints and --range-score-thresholds go together"),
    (["--range-breakpoints", "30", "--range-score-thresholds", "0.1,0.2"],
     "error: range_score_thresholds needs 6 values (3 classes (Car, Pedestrian, Cyclist) x 2 range bands"),
    (["--range-breakpoints", "30,20", "--range-score-thresholds", "0,0,0,0,0,0,0,0,0"],
     "error: range_breakpoints must be strictly ascending"),
    (["--score-threshold", "0.4,0.3"], "error: score_thresholds needs 3 values (one per class"),
])
def test_bad_box_or_range_values_exit_2_with_one_line(bundle_path, kitti_sample, tmp_path, capsys, options, message):
    out = tmp_path / "pred"
    assert infer.main(["--bundle", str(bundle_path), "--backend", "torch", "--out", str(out), *options,
                       str(kitti_sample / "training/velodyne/000000.bin")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_per_class_score_thresholds(bundle_path, kitti_sample, tmp_path, capsys):
    # an operating point from the bundle's README, in its class order: each class keeps its own threshold
    out = tmp_path / "pred"
    shutil.copy(kitti_sample / "training/velodyne/000000.bin", tmp_path / "scan.bin")  # no calib: all-around .json
    assert infer.main(["--bundle", str(bundle_path), "--backend", "torch", "--out", str(out), "--score-threshold",
                       "[0.9, 0.05, 0.9]", str(tmp_path / "scan.bin")]) == 0, capsys.readouterr().err
    detections = json.loads((out / "scan.json").read_text())["detections"]
    scores = {name: [d["score"] for d in detections if d["class"] == name] for name in ("Car", "Pedestrian", "Cyclist")}
    assert all(v >= 0.9 for v in scores["Car"] + scores["Cyclist"])
    assert scores["Pedestrian"] and min(scores["Pedestrian"]) < 0.9
    parser = infer.build_parser()
    assert parser.parse_args(["x", "--score-threshold", "0.4"]).score_threshold == 0.4
    assert parser.parse_args(["x", "--score-threshold=0.4,0.3,0.2"]).score_threshold == [0.4, 0.3, 0.2]
    for text in ("", "0.3;0.2"):
        with pytest.raises(SystemExit):
            parser.parse_args(["x", f"--score-threshold={text}"])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.endswith(f"argument --score-threshold: {text!r}: write one number, or one per class such as "
                            "0.4,0.4,0.35"), err
