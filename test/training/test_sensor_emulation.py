"""--emulate-sensor of the real-data check (training/sensor_emulation.py): parsing, each step's effect on a scan, the
mounting being exactly what --sensor-height/pitch/roll undoes, and the check's figures with and without the setting."""
from __future__ import annotations

import json

import numpy as np
import pytest

from shared_helpers import read_velodyne
from training import real_check
from training.data.sensor_variation import sensor_rows
from training.sensor_emulation import EmulationError, SensorEmulation


def test_parse_keys_and_errors():
    e = SensorEmulation.parse("height=0.5, pitch=0.02,roll=-0.01,beams=32,intensity=0.6,gamma=1.5,keep=0.7,seed=3")
    assert e == SensorEmulation(0.5, 0.02, -0.01, 32, 0.6, 1.5, 0.7, 3)
    assert SensorEmulation.parse("") == SensorEmulation()
    assert e.describe().startswith("emulated sensor: height=0.5, pitch=0.02, roll=-0.01, beams=32")
    for spec, message in [("tilt=1", "KEY one of height, pitch"), ("height", "expected KEY=VALUE"),
                          ("beams=3.5", "not a number (an integer)"), ("keep=0", "keep=0: must be in (0, 1]"),
                          ("pitch=1.2", "tilt must be within"), ("height=-2", "sensor_height"),
                          ("intensity=-1", "need intensity >= 0"), ("beams=-2", "must be >= 0")]:
        with pytest.raises(EmulationError, match=message.replace("(", r"\(").replace(")", r"\)")):
            SensorEmulation.parse(spec)


def test_mounting_moves_the_scene_as_a_higher_nose_down_sensor_sees_it():
    points = np.array([[10.0, 0.0, 0.0, 0.5], [0.0, 5.0, 0.0, 0.2]], np.float32)
    higher = SensorEmulation(height_shift=0.5).apply(points, np.random.default_rng(0))
    np.testing.assert_allclose(higher[:, :3], [[10, 0, -0.5], [0, 5, -0.5]], atol=1e-6)
    assert np.array_equal(higher[:, 3], points[:, 3])
    # nose down by 0.1 rad: a point straight ahead at the sensor's height appears above the sensor's x axis
    tilted = SensorEmulation(pitch=0.1).apply(points, np.random.default_rng(0))
    np.testing.assert_allclose(tilted[0, :3], [10 * np.cos(0.1), 0, 10 * np.sin(0.1)], atol=1e-5)
    # left side up by 0.1 rad: a point on the left appears below the sensor's y axis
    rolled = SensorEmulation(roll=0.1).apply(points, np.random.default_rng(0))
    np.testing.assert_allclose(rolled[1, :3], [0, 5 * np.cos(0.1), -5 * np.sin(0.1)], atol=1e-5)
    # detections come back to the scan frame: the inverse of the points' move
    e = SensorEmulation(height_shift=0.4, pitch=0.03, roll=-0.02)
    boxes = np.array([[12.0, -3.0, -0.9, 4.0, 1.8, 1.5, 0.3]], np.float32)
    moved = e.apply(np.hstack([boxes[:, :3], np.zeros((1, 1), np.float32)]), np.random.default_rng(0))
    back = e.boxes_to_scan_frame(np.hstack([moved[:, :3], boxes[:, 3:]]))
    np.testing.assert_allclose(back[0, :3], boxes[0, :3], atol=1e-5)


def test_beams_keep_fraction_and_intensity_on_a_real_scan(kitti_sample):
    points = read_velodyne(kitti_sample / "training/velodyne/000000.bin")
    rows = sensor_rows(points)
    assert rows.count >= 64
    half = SensorEmulation(beams=32).apply(points, np.random.default_rng(0))
    assert len(half) == int((rows.row % 2 == 0).sum()) and 0.4 < len(half) / len(points) < 0.6
    kept = SensorEmulation(keep_fraction=0.5, seed=1).apply(points, np.random.default_rng(7))
    again = SensorEmulation(keep_fraction=0.5, seed=1).apply(points, np.random.default_rng(7))
    assert np.array_equal(kept, again) and abs(len(kept) / len(points) - 0.5) < 0.01
    dim = SensorEmulation(intensity_scale=0.5).apply(points, np.random.default_rng(0))
    np.testing.assert_allclose(dim[:, 3], np.clip(points[:, 3], 0, 1) * 0.5, atol=1e-6)
    assert np.array_equal(dim[:, :3], points[:, :3])
    with pytest.raises(EmulationError, match="the scan has only"):
        SensorEmulation(beams=128).apply(points, np.random.default_rng(0))


def test_resample_keeps_the_scan_frame_and_remount_leaves_it(kitti_sample):
    """apply = remount(resample): the rows and dropout keep the scan's own points (where the real-data check counts
    the points on labelled objects); only remount moves them into the emulated sensor's frame."""
    points = read_velodyne(kitti_sample / "training/velodyne/000000.bin")
    e = SensorEmulation(height_shift=0.5, pitch=0.03, beams=32, keep_fraction=0.8)
    kept = e.resample(points, np.random.default_rng(3))
    assert 0.3 < len(kept) / len(points) < 0.5
    # rows of the scan itself (each 16-byte row viewed as one value)
    assert np.isin(kept.view(np.complex128).ravel(), points.view(np.complex128).ravel()).all()
    assert np.array_equal(e.apply(points, np.random.default_rng(3)), e.remount(kept))
    assert np.abs(e.remount(kept)[:, 2] - kept[:, 2]).mean() > 0.4
    assert e.remount(kept[:0]).shape == (0, 4) and SensorEmulation(beams=32).remount(kept) is kept


class _RecordingPipeline:
    """Stands in for the Pipeline: no detections, keeps the points it is given."""

    class_names = ("Car", "Pedestrian", "Cyclist")
    auto_intensity, intensity_factor = None, 1.0

    def __init__(self):
        self.seen = []

    def __call__(self, points):
        from types import SimpleNamespace

        from clean_ros.types import Detections

        self.seen.append(points.copy())
        return SimpleNamespace(detections=Detections.empty(self.class_names))


def test_check_counts_object_points_on_the_scan_frame_points(kitti_sample, monkeypatch):
    """With --emulate-sensor the bundle sees the re-mounted points, and the points on each labelled object are
    counted on the emulated sensor's points still in the scan's (the labels') frame."""
    from training import detection_diagnostics

    counted, real_match_frame = [], detection_diagnostics.match_frame

    def match_frame(frame, detections, points=None):
        counted.append(points)
        return real_match_frame(frame, detections, points)

    monkeypatch.setattr(detection_diagnostics, "match_frame", match_frame)
    folder, pipeline = real_check.resolve_folder(kitti_sample / "training"), _RecordingPipeline()
    e = SensorEmulation(height_shift=0.5, pitch=0.03, beams=32)
    report = real_check.run_check(folder, pipeline, log=None, emulation=e)
    assert len(counted) == len(pipeline.seen) == len(folder.frame_ids)
    for index, frame_id in enumerate(folder.frame_ids):
        scan = read_velodyne(kitti_sample / "training" / "velodyne" / f"{frame_id}.bin")
        expected = e.resample(scan, np.random.default_rng((e.seed, index)))
        assert np.array_equal(counted[index], expected), frame_id
        assert np.array_equal(pipeline.seen[index], e.remount(expected)), frame_id
    assert report["recall"]["by_points"] is not None


def test_check_with_emulated_mount_and_the_setting_gives_the_original_figures(kitti_sample, default_bundle, tmp_path,
                                                                             capsys):
    split = kitti_sample / "training"
    base = ["--bundle", str(default_bundle), "--backend", "torch", "--threads", "1", "--quiet", str(split)]
    spec = "height=0.5,pitch=0.03"
    runs = {}
    for name, extra in [("original", []), ("emulated", ["--emulate-sensor", spec]),
                        ("corrected", ["--emulate-sensor", spec, "--sensor-height", "2.23", "--sensor-pitch", "0.03"])]:
        assert real_check.main(base + extra + ["--out", str(tmp_path / f"{name}.json")]) == 0
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert "emulated sensor: height=0.5, pitch=0.03" in capsys.readouterr().out
    assert runs["emulated"]["emulation"] == "emulated sensor: height=0.5, pitch=0.03"
    for key in ("recall", "confusion", "false_positives"):
        assert runs["corrected"][key] == runs["original"][key], key
    # per frame: what the devkit scores is the same; all-around counts may differ by a box, as the round trip
    # (emulated mount, then the setting) moves points by float rounding, which can cross a pillar edge
    for corrected, original in zip(runs["corrected"]["per_frame"], runs["original"]["per_frame"], strict=True):
        for key in ("frame", "in_camera_view", "scored_detections", "false_positives"):
            assert corrected[key] == original[key], (original["frame"], key)
        assert abs(corrected["detections"] - original["detections"]) <= 1, original["frame"]
    for cls, entry in runs["original"]["ap"].items():
        for metric in ("bev_R40", "3d_R40"):
            assert runs["corrected"]["ap"][cls][metric] == pytest.approx(entry[metric], abs=1e-9), (cls, metric)
    # the points on an object are counted in the labels' frame: a re-mount alone moves no object between bands
    for iou, per_class in runs["original"]["recall"]["by_points"].items():
        for cls, entry in per_class.items():
            assert {b: c["total"] for b, c in runs["emulated"]["recall"]["by_points"][iou][cls].items()} == \
                {b: c["total"] for b, c in entry.items()}, (iou, cls)
    # the emulated mount alone changes what the model sees: some frame's detections differ
    assert runs["emulated"]["per_frame"] != runs["original"]["per_frame"]


def test_bad_emulation_is_one_line_and_exit_2(kitti_sample, default_bundle, capsys):
    code = real_check.main(["--bundle", str(default_bundle), str(kitti_sample / "training"), "--emulate-sensor",
                            "beams=many"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --emulate-sensor beams='many': not a number (an integer)"]
