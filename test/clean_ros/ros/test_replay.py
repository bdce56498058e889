"""clean_ros.ros.replay (fast and realtime modes, evaluation, recording) end to end on bags written by
clean_ros.ros.bag.

The accuracy check is not circular: the reference runs the Pipeline on the simulator's .bin files directly (no
bag), converts the detections with the frame's calib file into KITTI label files, and scores them with
training/evaluate.py against the simulator's label_2 files (camera frame, as written). Replay instead reads clouds,
LiDAR-frame ground truth (+ annotation) and calib from the bag, matches by stamp and scores in memory. Equal APs
mean the bag carries the frames and the ground truth faithfully and replay drives the model and the protocol as
the offline evaluation does.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

from clean_ros.ros.kitti_bag import write_kitti_bag  # noqa: E402
from clean_ros.cloud.kitti import Calibration, labels_from_lidar_boxes  # noqa: E402
from clean_ros.ros.replay import main  # noqa: E402
from clean_ros.ros.replay_eval import evaluate_replay  # noqa: E402
from clean_ros.ros.replay_frames import FrameResult, GroundTruthFrame  # noqa: E402

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[3]
BUNDLE = REPO / "models" / "default"
SIM_YAML = "sensor:\n  azimuth_resolution_deg: 0.36\ndataset:\n  val_fraction: 0.5\n"


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory) -> tuple[Path, Path]:
    """(simulated KITTI root with 6 frames, its bag of all 6 frames)."""
    if not (BUNDLE / "manifest.json").is_file():
        pytest.skip("embedded default bundle models/default is absent")
    tmp = tmp_path_factory.mktemp("replay")
    (tmp / "sim.yaml").write_text(SIM_YAML)
    subprocess.run([sys.executable, "training/simulate.py", "--out", str(tmp / "sim"), "--frames", "6", "--seed", "3",
                    "--config", str(tmp / "sim.yaml"), "--quiet"], cwd=REPO, check=True, timeout=120)
    write_kitti_bag(tmp / "sim", tmp / "sim_bag", split="trainval")
    return tmp / "sim", tmp / "sim_bag"


def _write_full_precision_labels(path: Path, objs) -> None:
    """KITTI label rows with every float at full precision (write_labels rounds to cm, which could flip a
    borderline IoU; the comparison is about the pipeline, not about text rounding)."""
    rows = []
    for i in range(len(objs)):
        values = [objs.truncation[i], objs.occlusion[i], objs.alpha[i], *objs.bbox[i], *objs.dimensions[i],
                  *objs.location[i], objs.rotation_y[i], objs.score[i]]
        rows.append(" ".join([str(objs.names[i]), *(repr(float(v)) for v in values)]))
    path.write_text("".join(row + "\n" for row in rows))


def test_fast_replay_ap_equals_offline_evaluation(sim_bag, tmp_path, capsys):
    import torch

    from clean_ros.ros.bag import BagReader
    from clean_ros.inference.pipeline import Pipeline

    root, bag = sim_bag
    report_path, record = tmp_path / "report.json", tmp_path / "dets_bag"
    # --no-auto-intensity: the reference below is the Pipeline on the scans as given (test_replay_auto_intensity.py
    # covers automatic intensity in replay)
    assert main([str(bag), "--bundle", str(BUNDLE), "--num-threads", "1", "--warmup", "1", "--backend",
                 "onnxruntime", "--no-auto-intensity", "--out", str(report_path), "--record", str(record)]) == 0
    report = json.loads(report_path.read_text())
    assert report["frames"] == 6 and report["dropped"] == 0
    assert report["latency_ms"]["total"]["n"] == 6 and report["latency_ms"]["inference"]["p50"] > 0
    acc = report["accuracy"]
    assert acc["available"] and acc["protocol"] == "kitti" and acc["frames"] == 6
    assert "AP R40 (kitti protocol" in capsys.readouterr().out

    # Reference: the same model on the .bin files, evaluated by training/evaluate.py on label files.
    torch.set_num_threads(1)
    pipe = Pipeline.from_bundle(BUNDLE, backend="onnxruntime", intra_op_threads=1)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    labels = sorted((root / "training" / "label_2").glob("*.txt"))
    assert len(labels) == 6
    n_detections = 0
    for label in labels:
        points = np.fromfile(root / "training" / "velodyne" / f"{label.stem}.bin", np.float32).reshape(-1, 4)
        det = pipe(points).detections
        n_detections += len(det)
        calib = Calibration.from_file(root / "training" / "calib" / label.name)
        _write_full_precision_labels(pred_dir / label.name, labels_from_lidar_boxes(det.boxes, det.names,
                                                                                     det.scores, calib))
    offline_json = tmp_path / "offline.json"
    subprocess.run([sys.executable, "training/evaluate.py", "--gt", str(root / "training" / "label_2"), "--pred",
                    str(pred_dir), "--out", str(offline_json)], cwd=REPO, check=True, timeout=120,
                   capture_output=True)
    offline = json.loads(offline_json.read_text())["results"]
    assert n_detections > 0
    nonzero = 0
    for cls in ("Car", "Pedestrian", "Cyclist"):
        for metric in ("bev_R40", "3d_R40"):
            replayed = [acc["ap"][cls][metric][c] for c in ("easy", "moderate", "hard")]
            assert replayed == pytest.approx(offline[cls][metric], abs=1e-9), (cls, metric)
            nonzero += sum(v > 0 for v in replayed)
    assert nonzero >= 3, "the comparison needs non-trivial APs"

    # The recorded bag holds the same detections, with the clouds' stamps.
    from vision_msgs.msg import Detection3DArray

    from clean_ros.ros.messages import from_detection3d_array
    with BagReader(record) as reader:
        recorded = list(reader.messages("/detections", Detection3DArray))
    assert len(recorded) == 6 and report["recorded_frames"] == 6
    assert sum(len(m.detections) for _, m in recorded) == n_detections
    assert all(t == m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for t, m in recorded)
    assert all(m.header.frame_id == "velodyne" for _, m in recorded)
    assert {n for _, m in recorded for n in from_detection3d_array(m)[2]} <= {"Car", "Pedestrian", "Cyclist"}


def _frame(stamp, boxes, names, scores=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 7)
    if scores is None:
        return GroundTruthFrame(boxes, list(names), [None] * len(names))
    return FrameResult(stamp, boxes, np.asarray(scores, np.float32), list(names))


def test_range_bands_without_kitti_annotation():
    """Own recordings: no annotation, no calib -> AP per range band, other bands ignored."""
    near = [10.0, 2.0, -0.8, 4.0, 1.8, 1.5, 0.3]
    mid = [40.0, -3.0, -0.8, 4.0, 1.8, 1.5, 1.2]
    far = [60.0, 5.0, -0.8, 4.0, 1.8, 1.5, -2.0]
    shifted_mid = list(mid)
    shifted_mid[0] += 1.5  # BEV IoU 0.45 < 0.7: a false positive and a miss in the 30-50 m band
    # 41 frames: R40 needs 41 true positives per band to reach 100 (the devkit's recall sampling)
    gt = {k: _frame(k, [near, mid, far], ["Car"] * 3) for k in range(41)}
    results = [_frame(k, [near, shifted_mid, far], ["Car"] * 3, [0.9 - 0.01 * k, 0.8, 0.7]) for k in range(41)]
    report = evaluate_replay(gt, results, {}, ("Car", "Pedestrian", "Cyclist"))
    assert report["protocol"] == "range" and report["columns"] == ["0-30m", "30-50m", "50m+"]
    car = report["ap"]["Car"]
    for metric in ("bev_R40", "3d_R40"):
        assert car[metric]["0-30m"] == pytest.approx(100.0)
        assert car[metric]["30-50m"] == pytest.approx(0.0)
        assert car[metric]["50m+"] == pytest.approx(100.0)
    assert report["ap"]["Pedestrian"]["bev_R40"]["0-30m"] == 0.0  # no pedestrians at all


def test_realtime_replay_with_node_reports_drops(sim_bag, tmp_path, capsys):
    """The node as a subprocess answers the bag's clouds; drops (never answered) are counted and scored as empty
    frames. Not timing-dependent: replay starts publishing once the node is connected both ways and waits for the
    node's answers and its final /diagnostics (clean_ros/ros/replay_realtime.py); this process's DDS participant
    has the large-data profile (conftest.py), without which clouds were lost in transport whatever the load."""
    from clean_ros.package_share import package_path
    from clean_ros.ros.node_process import PROFILE_FILE

    profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
    assert profile == str(package_path(PROFILE_FILE)), (
        f"FASTDDS_DEFAULT_PROFILES_FILE is {profile!r}: this process's DDS participants must use the large-data "
        "profile (set by test/clean_ros/ros/conftest.py), or clouds are lost before the node sees them")
    _, bag = sim_bag
    report_path = tmp_path / "rt.json"
    code = main([str(bag), "--bundle", str(BUNDLE), "--mode", "realtime", "--num-threads", "1",
                 "--out", str(report_path), "--drain-s", "20", "--node-log", str(tmp_path / "node.log")])
    output = capsys.readouterr()
    seen = f"{output.out[-1500:]}{output.err[-1500:]}\nnode log: {(tmp_path / 'node.log').read_text()[-2000:]}"
    assert code == 0, seen
    report = json.loads(report_path.read_text())
    assert report["mode"] == "realtime" and report["published"] == 6
    assert report["backend"] in ("onnxruntime", "torch"), seen  # the node's choice, read from its /diagnostics
    assert report["answered"] + report["dropped"] == 6 and report["answered"] >= 1, seen
    assert report["node_dropped_frames"] is not None and int(report["node_dropped_frames"]) <= report["dropped"]
    assert report["drop_fraction"] == pytest.approx(report["dropped"] / 6)
    latency = report["latency_ms"]
    assert latency["total"]["n"] == report["answered"] and latency["replay_round_trip"]["p50"] > 0, seen
    assert {"decode", "preprocess", "inference", "postprocess", "publish"} <= set(latency)
    assert report["accuracy"]["available"] and report["accuracy"]["frames"] == 6  # drops count as empty frames
    assert all(math.isfinite(v) for c in report["accuracy"]["ap"].values() for m in c.values() for v in m.values())


def test_bad_bags_give_clear_errors(sim_bag, tmp_path, capsys):
    _, bag = sim_bag
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for item in bag.iterdir():
        data = item.read_bytes()
        (truncated / item.name).write_bytes(data[: len(data) // 2] if item.suffix == ".mcap" else data)
    cases = [(truncated, [], "corrupt or truncated"),
             (tmp_path / "missing", [], "no such bag"),
             (bag, ["--points-topic", "/lidar"], "no topic /lidar; topics in the bag: /points"),
             (bag, ["--points-topic", "/ground_truth"], "cannot decode it")]
    for path, extra, message in cases:
        assert main([str(path), "--bundle", str(BUNDLE), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err


def test_bag_without_ground_truth_gives_latency_only(kitti_sample, tmp_path, capsys):
    if not (BUNDLE / "manifest.json").is_file():
        pytest.skip("embedded default bundle models/default is absent")
    bag = tmp_path / "test_split"
    write_kitti_bag(kitti_sample, bag, split="test", max_frames=2)
    assert main([str(bag), "--bundle", str(BUNDLE), "--num-threads", "1", "--warmup", "0",
                 "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "the bag has no ground truth (/ground_truth absent" in out and "latency only" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["accuracy"]["available"] is False and report["latency_ms"]["total"]["n"] == 2


def test_fast_replay_with_the_int8_dense_part(kitti_sample, tmp_path, capsys):
    """--int8 runs the bundle's model.int8.onnx (as the node's int8), and says so in the report."""
    from clean_ros.inference.bundle import load_bundle

    if not (BUNDLE / "manifest.json").is_file() or load_bundle(BUNDLE).int8_onnx_path is None:
        pytest.skip("models/default has no model.int8.onnx")
    bag = tmp_path / "test_split"
    write_kitti_bag(kitti_sample, bag, split="test", max_frames=1)
    assert main([str(bag), "--bundle", str(BUNDLE), "--num-threads", "1", "--warmup", "0", "--int8",
                 "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["backend"] == "onnxruntime" and report["int8"] is True and report["latency_ms"]["total"]["n"] == 1
    assert main([str(bag), "--bundle", str(BUNDLE), "--backend", "torch", "--int8"]) == 2
    assert "int8 runs on onnxruntime" in capsys.readouterr().err


def test_undecodable_message_is_a_clear_error(tmp_path, capsys):
    """A /points message whose bytes are not a PointCloud2 (e.g. written with another definition)."""
    from clean_ros.ros.bag import POINTS_TYPE, BagWriter

    bag = tmp_path / "garbage"
    with BagWriter(bag) as writer:
        writer.add_topic("/points", POINTS_TYPE, best_effort=True)
        writer.write_raw("/points", 1, b"\x00\x01\x00\x00" + b"\xff" * 64)
    assert main([str(bag), "--bundle", str(BUNDLE), "--warmup", "0", "--num-threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "message 0 on /points cannot be decoded as sensor_msgs/PointCloud2" in err and "Traceback" not in err
