"""Replay with the node's input boxes and range-dependent score thresholds (--crop-box, --exclusion-box,
--range-breakpoints + --range-score-thresholds; clean_ros/tools/model_input_options.py): fast mode gives the same
detections as the Pipeline on the points a mask computed here keeps, the boxes test the points in the model's frame
when a sensor mount is set (as the node does), and refused values are one error line before anything runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

from clean_ros.ros.replay import main  # noqa: E402
from shared_helpers import read_velodyne  # noqa: E402

pytestmark = pytest.mark.ros
BUNDLE = Path(__file__).resolve().parents[3] / "models" / "default"
CROP = (0.0, -30.0, -1.5, 60.0, 30.0, 1.0)        # model frame: z above the road at the training height
EXCLUSION = (-3.0, -2.0, -3.0, 12.0, 2.0, 1.0)
TABLE = [0, 1, 0, 1, 0, 1]                        # beyond 30 m no box passes (a score is below 1)


def _inside(points: np.ndarray, box) -> np.ndarray:
    lo, hi = np.asarray(box[:3]), np.asarray(box[3:])
    return np.all((points[:, :3] >= lo) & (points[:, :3] <= hi), axis=1)


@pytest.fixture(scope="module")
def high_bag(kitti_sample, tmp_path_factory):
    """A one-frame bag of KITTI frame 000004 (cars at 23 and 41 m) seen by a sensor 2.33 m up, pitched 0.05 rad."""
    if not (BUNDLE / "manifest.json").is_file():
        pytest.skip("embedded default bundle models/default is absent")
    from clean_ros.cloud.transforms import transform_points
    from clean_ros.inference.sensor_mount import SensorMount
    from clean_ros.ros.bag import POINTS_TYPE, BagWriter
    from clean_ros.ros.pointcloud_msg import make_pointcloud2

    kitti_from_high = SensorMount(2.33, pitch=0.05).model_from_sensor(1.73)
    high = transform_points(read_velodyne(kitti_sample / "training/velodyne/000004.bin"), kitti_from_high.inverse())
    bag = tmp_path_factory.mktemp("input_options") / "high"
    with BagWriter(bag) as writer:
        writer.add_topic("/points", POINTS_TYPE, best_effort=True)
        writer.write("/points", 1_000_000_000, make_pointcloud2(high, ("x", "y", "z", "intensity"), (1.0, "lidar")))
    return bag, high, kitti_from_high


def test_fast_replay_applies_boxes_in_the_model_frame_and_the_range_table(high_bag, tmp_path, one_thread):
    from vision_msgs.msg import Detection3DArray

    from clean_ros.cloud.transforms import transform_points
    from clean_ros.inference.pipeline import Pipeline
    from clean_ros.inference.sensor_mount import SensorMount
    from clean_ros.ros.bag import BagReader
    from clean_ros.ros.messages import from_detection3d_array

    bag, high, kitti_from_high = high_bag
    report_path, record = tmp_path / "report.json", tmp_path / "dets"
    assert main([str(bag), "--bundle", str(BUNDLE), "--backend", "torch", "--num-threads", "1", "--warmup", "0",
                 "--no-auto-intensity",                                     # the reference Pipeline's intensity
                 "--sensor-height", "2.33", "--sensor-pitch", "0.05", "--crop-box", str(list(CROP)),
                 "--exclusion-box", str(list(EXCLUSION)), "--range-breakpoints", "[30]",
                 "--range-score-thresholds", str(TABLE), "--out", str(report_path), "--record", str(record)]) == 0
    in_model = transform_points(high, kitti_from_high)
    in_crop, in_exclusion = _inside(in_model, CROP), _inside(in_model, EXCLUSION)
    report = json.loads(report_path.read_text())
    manifest = json.loads((BUNDLE / "manifest.json").read_text())
    shipped = manifest["postprocess"]["score_thresholds"]
    assert report["input"] == {"score_thresholds": dict(zip(("Car", "Pedestrian", "Cyclist"), shipped)),
                               "operating_point": None, "ground_gate_m": manifest.get("ground_gate_m", 0.0),
                               "crop_box": list(CROP), "exclusion_box": list(EXCLUSION), "range_breakpoints": [30.0],
                               "range_score_thresholds": [float(v) for v in TABLE],
                               "points_outside_crop_total": int((~in_crop).sum()),
                               "points_excluded_total": int((in_crop & in_exclusion).sum())}
    # the counts are those of the model frame, not of the sensor's own coordinates
    assert abs(int((~_inside(high, CROP)).sum()) - report["input"]["points_outside_crop_total"]) > 1000
    with BagReader(record) as reader:
        (_, msg), = list(reader.messages("/detections", Detection3DArray))
    boxes, _, names = from_detection3d_array(msg)

    pipe = Pipeline.from_bundle(BUNDLE, backend="torch")
    pipe.set_sensor_mount(SensorMount(2.33, pitch=0.05))
    kept = high[in_crop & ~in_exclusion]
    unfiltered = pipe(kept).detections
    assert (np.hypot(unfiltered.boxes[:, 0], unfiltered.boxes[:, 1]) >= 30).any()  # the table has work to do
    pipe.update_postprocess(range_breakpoints=[30.0], range_score_thresholds=TABLE)
    reference = pipe(kept).detections
    assert len(reference) > 0 and list(names) == list(reference.names)
    np.testing.assert_allclose(np.asarray(boxes), reference.boxes, atol=1e-4)
    assert (np.hypot(np.asarray(boxes)[:, 0], np.asarray(boxes)[:, 1]) < 30).all()


@pytest.mark.parametrize("mode, options, message", [
    ("fast", ["--crop-box", "1,2,3"], "error: crop_box needs 6 values"),
    ("realtime", ["--exclusion-box=0,5,0,1,4,1"], "error: exclusion_box: min must be below max on every axis"),
    ("fast", ["--range-score-thresholds", "0.5"], "error: --range-breakpoints and --range-score-thresholds go"),
    # the table is checked against the bundle before the node is started (realtime) or the bag replayed (fast)
    ("realtime", ["--range-breakpoints", "30", "--range-score-thresholds", "0.1"],
     "error: range_score_thresholds needs 6 values (3 classes (Car, Pedestrian, Cyclist) x 2 range bands"),
    ("fast", ["--range-breakpoints", "30", "--range-score-thresholds", "0,0,2,0,0,0"],
     "error: range_score_thresholds[2] = 2.0: must be a number in [0, 1]"),
    # thresholds: an operating point the bundle lists, or per-class values the validator accepts
    ("realtime", ["--operating-point", "0.7"], "error: operating point 0.7: this bundle has 0.6, 0.9, 1.3 (shipped)"),
    ("fast", ["--operating-point", "0.7"], "error: operating point 0.7: this bundle has"),
    ("realtime", ["--score-threshold", "0.3,0.2"], "error: score_thresholds needs 3 values"),
])
def test_refused_values_are_one_error_line(high_bag, tmp_path, capsys, mode, options, message):
    bag, _, _ = high_bag
    out = tmp_path / "report.json"
    assert main([str(bag), "--bundle", str(BUNDLE), "--mode", mode, "--backend", "torch", "--num-threads", "1",
                 "--warmup", "0", "--out", str(out), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_realtime_replay_starts_the_node_with_the_boxes(high_bag, tmp_path):
    """Realtime mode passes the options to the node as its parameters: the node's /diagnostics totals of removed
    points are the counts of the model frame (the node applies sensor_height too), and its answer has no far box."""
    from clean_ros.cloud.transforms import transform_points

    bag, high, kitti_from_high = high_bag
    report_path = tmp_path / "rt.json"
    code = main([str(bag), "--bundle", str(BUNDLE), "--mode", "realtime", "--num-threads", "1", "--drain-s", "30",
                 "--sensor-height", "2.33", "--sensor-pitch", "0.05", "--crop-box", str(list(CROP)),
                 "--exclusion-box", str(list(EXCLUSION)), "--range-breakpoints", "30", "--range-score-thresholds",
                 str(TABLE), "--out", str(report_path), "--node-log", str(tmp_path / "node.log"),
                 "--record", str(tmp_path / "dets")])
    assert code == 0, (tmp_path / "node.log").read_text()[-2000:]
    report = json.loads(report_path.read_text())
    assert report["answered"] == 1, (tmp_path / "node.log").read_text()[-2000:]
    in_model = transform_points(high, kitti_from_high)
    in_crop, in_exclusion = _inside(in_model, CROP), _inside(in_model, EXCLUSION)
    assert report["input"]["points_outside_crop_total"] == int((~in_crop).sum())
    assert report["input"]["points_excluded_total"] == int((in_crop & in_exclusion).sum())
    from vision_msgs.msg import Detection3DArray

    from clean_ros.ros.bag import BagReader
    from clean_ros.ros.messages import from_detection3d_array

    with BagReader(tmp_path / "dets") as reader:
        (_, msg), = list(reader.messages("/detections", Detection3DArray))
    boxes = np.asarray(from_detection3d_array(msg)[0])
    assert len(boxes) > 0 and (np.hypot(boxes[:, 0], boxes[:, 1]) < 30).all()  # the car at 41 m is cut


@pytest.mark.parametrize("mode", ["fast", "realtime"])
def test_operating_point_sets_the_bundles_thresholds_in_both_modes(high_bag, tmp_path, capsys, mode):
    from vision_msgs.msg import Detection3DArray

    from clean_ros.inference.bundle import load_bundle
    from clean_ros.ros.bag import BagReader
    from clean_ros.ros.messages import from_detection3d_array

    bag, _, _ = high_bag
    bundle = load_bundle(BUNDLE)
    loosest = bundle.operating_points[-1]  # the most detections, so the check below has boxes to look at
    out, record = tmp_path / "report.json", tmp_path / "dets"
    assert main([str(bag), "--bundle", str(BUNDLE), "--mode", mode, "--backend", "torch", "--num-threads", "1",
                 "--warmup", "0", "--sensor-height", "2.33", "--sensor-pitch", "0.05",
                 "--operating-point", f"{loosest.budget:g}", "--out", str(out), "--record", str(record)]) == 0
    assert f"operating point {loosest.budget:g} false positives per frame on val" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["answered"] == 1
    assert report["input"]["operating_point"] == loosest.budget
    assert report["input"]["score_thresholds"] == dict(zip(bundle.class_names, loosest.score_thresholds))
    with BagReader(record) as reader:
        (_, msg), = list(reader.messages("/detections", Detection3DArray))
    _, scores, names = from_detection3d_array(msg)
    assert len(names) > 0 and min(bundle.postprocess.score_thresholds) > min(loosest.score_thresholds)
    for score, name in zip(scores, names):
        assert score >= loosest.score_thresholds[bundle.class_names.index(name)] - 1e-6
