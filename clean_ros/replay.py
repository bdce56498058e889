"""Replay a recorded bag through a model bundle: accuracy (KITTI-style AP) and latency, as the vehicle would see it.

    python -m clean_ros.replay BAG --bundle DIR [--mode fast|realtime] [--out report.json] [--record OUT_BAG]
                               [--backend auto|torch|onnxruntime|tensorrt] [--device cpu] [--num-threads N]
                               [--points-topic /points] [--gt-topic /ground_truth] [--rate-scale 1.0]

Modes
  fast      in process, frame by frame, deterministic, no drops: each /points message is decoded with
            clean_ros.pointcloud.read_points and run through clean_ros.pipeline.Pipeline exactly as the detector
            node's callback does (same bundle, same post-processing settings).
  realtime  the detector node is started as a subprocess, exactly as the launch file starts it
            (clean_ros.detector_node.launch_command, Fast DDS large-data profile, private ROS_DOMAIN_ID, localhost
            discovery), the clouds are published best-effort at the recorded rate, and its Detection3DArray answers
            and ~/stage_latency records are collected. A frame the node never answered is a drop and counts as a
            frame without detections in the AP (what a vehicle would have had).

Matching: detections belong to the ground-truth message with the same header stamp (ns).

Accuracy: the KITTI evaluator (clean_ros/kitti_eval.py, the same one training/evaluate.py uses). Without ground truth
in the bag the report holds latency only and says why. Protocol, chosen from what the bag carries:
  kitti   ground truth with the KITTI annotation in Detection3D.id (clean_ros.bag writes it): the devkit protocol
          with its easy / moderate / hard difficulties. Boxes go back to the camera frame with the frame's calib
          (/kitti/calib) and detections get their projected image box, so the image-height rule applies exactly
          as in training/evaluate.py. Without calib, an axis permutation stands in for the camera and detections
          are never height-ignored (noted in the report).
  range   any other ground truth (your own recordings): per range band 0-30 / 30-50 / 50+ m (BEV distance of the
          box centre from the sensor), the KITTI matching and R40 AP with ground truth and detections outside the
          band ignored (neither TP nor FP).
AP is BEV and 3D, R40, per class, for the classes both the bundle and the KITTI evaluator know
(Car, Pedestrian, Cyclist).

Bad input (missing / corrupt / truncated bag, unknown topic, undecodable type, unusable bundle) ends with one
"error: ..." line and exit status 2. A bag without ground truth gives latency only, said plainly.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clean_ros.bag import (CALIB_TOPIC, CALIB_TYPE, GT_TOPIC, GT_TYPE, POINTS_TOPIC, POINTS_TYPE, BagError,
                           BagReader, BagWriter, decode_kitti_id, stamp_ns)
from clean_ros.atomic import atomic_write_json
from clean_ros.kitti import Calibration
from clean_ros.kitti_eval import CLASSES, evaluate

EXIT_BAD_INPUT = 2
RANGE_BANDS = ((0.0, 30.0), (30.0, 50.0), (50.0, math.inf))
PERCENTILES = (50, 90, 95, 99)
DETECTIONS_TOPIC = "/detections"
LATENCY_TOPIC = "/clean_ros_detector/stage_latency"
NODE_NAMESPACE = "/replay"


class ReplayError(Exception):
    """Input the user has to fix; the message says what."""


@dataclass
class FrameResult:
    stamp_ns: int
    boxes: np.ndarray                 # (N, 7) float32, LiDAR frame
    scores: np.ndarray                # (N,) float32
    names: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)
    answered: bool = True             # realtime: the node published an answer for this frame
    frame_id: str = ""


@dataclass
class GroundTruthFrame:
    boxes: np.ndarray                 # (M, 7) float32, LiDAR frame
    names: list[str]
    annotations: list                 # KittiAnnotation or None per box


# ------------------------------------------------------------------------------------------- bag input
def load_side_topics(reader: BagReader, gt_topic: str) -> tuple[dict[int, GroundTruthFrame] | None, dict[int, str],
                                                                 str]:
    """Ground truth by stamp (None when the bag has none), calib text by log time, and a note."""
    from std_msgs.msg import String
    from vision_msgs.msg import Detection3DArray

    from clean_ros.messages import from_detection3d_array

    calibs: dict[int, str] = {}
    if CALIB_TOPIC in reader.topics and reader.topics[CALIB_TOPIC].msgtype == CALIB_TYPE:
        calibs = {t: m.data for t, m in reader.messages(CALIB_TOPIC, String)}
    if gt_topic not in reader.topics:
        return None, calibs, (f"the bag has no ground truth ({gt_topic} absent; topics: {reader.describe_topics()}): "
                              "latency only, no AP")
    reader.require(gt_topic, GT_TYPE)
    gt: dict[int, GroundTruthFrame] = {}
    for _, msg in reader.messages(gt_topic, Detection3DArray):
        boxes, _, names = from_detection3d_array(msg)
        gt[stamp_ns(msg.header)] = GroundTruthFrame(boxes, names, [decode_kitti_id(d.id) for d in msg.detections])
    return gt, calibs, f"{len(gt)} ground-truth frames on {gt_topic}"


def cloud_messages(reader: BagReader, topic: str):
    from sensor_msgs.msg import PointCloud2

    reader.require(topic, POINTS_TYPE)
    return reader.messages(topic, PointCloud2)


# ------------------------------------------------------------------------------------------- fast
def run_fast(reader: BagReader, pipeline, points_topic: str, intensity_scale: float = 1.0,
             progress: bool = False) -> list[FrameResult]:
    """Every cloud through the pipeline, as the node's callback does it (decode -> Pipeline)."""
    from clean_ros.pointcloud import CloudFormatError, read_points

    results = []
    for index, (_, msg) in enumerate(cloud_messages(reader, points_topic)):
        t0 = time.perf_counter()
        try:
            points, _ = read_points(msg, pipeline.point_features, intensity_scale=intensity_scale)
        except CloudFormatError as exc:
            raise ReplayError(f"cloud {index} on {points_topic}: {exc}") from None
        if not points.flags.c_contiguous or not points.flags.writeable:
            points = np.ascontiguousarray(points)
        t1 = time.perf_counter()
        result = pipeline(points)
        t2 = time.perf_counter()
        timings = {"decode": 1e3 * (t1 - t0), **result.timings_ms, "total": 1e3 * (t2 - t0)}
        det = result.detections
        results.append(FrameResult(stamp_ns(msg.header), np.asarray(det.boxes, np.float32),
                                   np.asarray(det.scores, np.float32), [str(n) for n in det.names], timings,
                                   frame_id=msg.header.frame_id))
        if progress:
            print(f"\r{index + 1} frames", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return results


# ------------------------------------------------------------------------------------------- realtime
def _source_or_share(relative: str) -> Path:
    """A file of the package share (colcon install), else of the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory("clean_ros")) / relative
        if shared.is_file():
            return shared
    except Exception:  # noqa: BLE001 - not installed through ament
        pass
    return Path(__file__).resolve().parents[1] / relative


def run_realtime(reader: BagReader, bundle: Path, points_topic: str, *, backend: str = "auto", device: str = "cpu",
                 num_threads: int = 2, rate_scale: float = 1.0, startup_timeout_s: float = 180.0,
                 drain_s: float = 10.0, domain_id: int | None = None, log_path: Path | None = None
                 ) -> tuple[list[FrameResult], dict]:
    """Publish the bag's clouds to a node subprocess at the recorded rate (x rate_scale); collect the answers."""
    from diagnostic_msgs.msg import DiagnosticArray
    from vision_msgs.msg import Detection3DArray

    from clean_ros.detector_node import launch_command, stop_node_process
    from clean_ros.messages import from_detection3d_array, parse_stage_timing
    from clean_ros.node_diagnostics import STATUS_NAME, parse_diagnostic_values

    reader.require(points_topic, POINTS_TYPE)
    profile = _source_or_share("config/fastdds_large_data.xml")
    params = _source_or_share("config/detector.yaml")
    domain_id = domain_id if domain_id is not None else random.SystemRandom().randint(1, 200)
    # Our process publishes the large clouds: the profile must be in effect here (read at participant creation).
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "FASTDDS_DEFAULT_PROFILES_FILE": str(profile), "PYTHONUNBUFFERED": "1"}
    input_topic, output_topic = f"{NODE_NAMESPACE}/points", f"{NODE_NAMESPACE}/detections"
    package_root = str(Path(__file__).resolve().parents[1])  # a source checkout: the node imports clean_ros too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    command = launch_command(params, {"bundle_path": str(Path(bundle).resolve()), "backend": backend, "device": device,
                                      "num_threads": int(num_threads), "input_topic": input_topic,
                                      "output_topic": output_topic, "publish_markers": False})
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    if log_path is None:  # keep the node's output for the error message, in a temp file removed afterwards
        handle, name = tempfile.mkstemp(prefix="clean_ros_replay_node_", suffix=".log")
        os.close(handle)
        log_path, temporary_log = Path(name), True
    else:
        temporary_log = False
    log = open(log_path, "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = rclpy.create_node("clean_ros_replay", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    answers: dict[int, tuple[float, object]] = {}
    latencies: dict[int, dict[str, float]] = {}

    def on_detections(msg):
        answers.setdefault(stamp_ns(msg.header), (time.monotonic(), msg))

    node_health: dict[str, str] = {}

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name == STATUS_NAME:
                node_health.update(parse_diagnostic_values(status))

    def on_latency(msg):
        try:
            latencies[stamp_ns(msg.header)] = parse_stage_timing(msg)
        except ValueError:
            pass

    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
    publisher = node.create_publisher(PointCloud2, input_topic, qos)
    node.create_subscription(Detection3DArray, output_topic, on_detections, 100)
    node.create_subscription(DiagnosticArray, "/clean_ros_detector/stage_latency", on_latency, 100)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)

    def spin_until(predicate, deadline: float) -> bool:
        while not predicate() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.01)
        return bool(predicate())

    sent: list[tuple[int, float]] = []
    frame_id = ""
    try:
        up = spin_until(lambda: process.poll() is not None or publisher.get_subscription_count() > 0,
                        time.monotonic() + startup_timeout_s)
        if process.poll() is not None or not up:
            log.flush()
            fatal = [line for line in Path(log_path).read_text().splitlines() if "FATAL" in line]
            tail = fatal[-1] if fatal else Path(log_path).read_text()[-1500:]
            raise ReplayError(f"the detector node did not start (exit status {process.poll()}; command: "
                              f"{' '.join(command)}): {tail}")
        spin_until(lambda: False, time.monotonic() + 0.5)  # discovery of the node's publishers by us
        first_log = None
        start = time.monotonic()
        for log_ns, msg in cloud_messages(reader, points_topic):
            first_log = log_ns if first_log is None else first_log
            due = start + (log_ns - first_log) * 1e-9 / rate_scale
            spin_until(lambda: False, due)
            publisher.publish(msg)
            sent.append((stamp_ns(msg.header), time.monotonic()))
            frame_id = msg.header.frame_id
        last = sent[-1][0] if sent else None
        spin_until(lambda: last is None or (last in answers and last in latencies), time.monotonic() + drain_s)
        spin_until(lambda: False, time.monotonic() + 1.2)  # one more 1 Hz /diagnostics after the last frame
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        stop_node_process(process)
        log.close()
        if temporary_log:
            log_path.unlink(missing_ok=True)
    results = []
    for stamp, published_at in sent:
        if stamp in answers:
            received_at, msg = answers[stamp]
            boxes, scores, names = from_detection3d_array(msg)
            timings = dict(latencies.get(stamp, {}))
            timings["replay_round_trip"] = 1e3 * (received_at - published_at)
            results.append(FrameResult(stamp, boxes, scores, names, timings, True, frame_id))
        else:
            results.append(FrameResult(stamp, np.zeros((0, 7), np.float32), np.zeros(0, np.float32), [], {}, False,
                                       frame_id))
    dropped = sum(not r.answered for r in results)
    stats = {"published": len(sent), "answered": len(sent) - dropped, "dropped": dropped,
             "drop_fraction": dropped / len(sent) if sent else 0.0, "domain_id": domain_id,
             "rate_scale": rate_scale, "num_threads": num_threads,
             "node_backend": node_health.get("backend", "unknown (no /diagnostics received)"),
             "node_dropped_frames": node_health.get("dropped_frames")}
    return results, stats


# ------------------------------------------------------------------------------------------- latency
def latency_summary(results: list[FrameResult]) -> dict:
    """Per stage: n, mean, p50/p90/p95/p99, max (ms) over the frames that have the stage."""
    stages: dict[str, list[float]] = {}
    for r in results:
        for stage, ms in r.timings_ms.items():
            stages.setdefault(stage, []).append(float(ms))
    out = {}
    for stage, values in stages.items():
        v = np.asarray(values)
        out[stage] = {"n": int(v.size), "mean": float(v.mean()), **{f"p{p}": float(np.percentile(v, p))
                                                                     for p in PERCENTILES}, "max": float(v.max())}
    return out


# ------------------------------------------------------------------------------------------- accuracy
def _axes_calibration():
    """A stand-in camera when the bag has no calib: camera axes = LiDAR axes permuted (x right = -y, y down = -z,
    z forward = x), identity rectification. IoUs are invariant under it."""
    v2c = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    p2 = np.array([[700.0, 0.0, 600.0, 0.0], [0.0, 700.0, 180.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    return Calibration(P2=p2, R0=np.eye(3), V2C=v2c)


def _objects(boxes: np.ndarray, names, calib, scores=None, bbox=None, truncation=None, occlusion=None, alpha=None):
    """KittiObjects (camera frame) of LiDAR boxes; image box projected with calib unless given."""
    from clean_ros.kitti import KittiObjects, labels_from_lidar_boxes

    objs = labels_from_lidar_boxes(np.asarray(boxes, np.float64).reshape(-1, 7), np.asarray(names, dtype="<U32"),
                                   scores, calib)
    if len(objs) == 0:
        return KittiObjects.empty(with_score=scores is not None)
    return KittiObjects(objs.names, objs.truncation if truncation is None else truncation,
                        objs.occlusion if occlusion is None else occlusion, objs.alpha if alpha is None else alpha,
                        objs.bbox if bbox is None else bbox, objs.dimensions, objs.location, objs.rotation_y,
                        objs.score)


def _tall_boxes(n: int, visible: np.ndarray | None = None) -> np.ndarray:
    """Image boxes that pass (100 px) or fail (0 px) every KITTI minimum height."""
    bbox = np.zeros((n, 4))
    bbox[:, 3] = 100.0 if visible is None else np.where(visible, 100.0, 0.0)
    return bbox


def evaluate_replay(gt: dict[int, GroundTruthFrame], results: list[FrameResult], calibs: dict[int, str],
                    classes: tuple[str, ...]) -> dict:
    """AP report (see the module docstring for the protocol)."""

    evaluated = tuple(c for c in classes if c in CLASSES)
    skipped = [c for c in classes if c not in CLASSES]
    frames = [(r, gt[r.stamp_ns]) for r in results if r.stamp_ns in gt]
    report: dict = {"available": True, "frames": len(frames),
                    "frames_without_ground_truth": sum(r.stamp_ns not in gt for r in results),
                    "ground_truth_without_cloud": len(set(gt) - {r.stamp_ns for r in results}),
                    "classes": list(evaluated)}
    if skipped:
        report["classes_not_evaluated"] = skipped
    if not frames or not evaluated:
        report["note"] = "no frame has both a cloud and ground truth" if not frames else \
            f"none of the bundle's classes ({', '.join(classes)}) is known to the KITTI evaluator"
        return report
    annotated = all(a is not None for _, g in frames for a in g.annotations)
    with_calib = all(r.stamp_ns in calibs for r, _ in frames)
    fallback = _axes_calibration()
    metrics = ("bev_R40", "3d_R40")
    if annotated:
        gt_annos, dt_annos = [], []
        for r, g in frames:
            calib = Calibration.from_text(calibs[r.stamp_ns]) if with_calib else fallback
            ann = g.annotations
            gt_annos.append(_objects(g.boxes, g.names, calib,
                                     bbox=np.array([a.bbox for a in ann]).reshape(-1, 4),
                                     truncation=np.array([a.truncation for a in ann], dtype=np.float64),
                                     occlusion=np.array([a.occlusion for a in ann], dtype=np.int64),
                                     alpha=np.array([a.alpha for a in ann], dtype=np.float64)))
            dt_annos.append(_objects(r.boxes, r.names, calib, scores=np.asarray(r.scores, np.float64),
                                     bbox=None if with_calib else _tall_boxes(len(r.boxes))))
        results_ap = evaluate(gt_annos, dt_annos, evaluated)
        report["protocol"] = "kitti"
        report["columns"] = ["easy", "moderate", "hard"]
        report["note"] = ("KITTI devkit protocol, difficulties from the ground truth's KITTI annotation"
                          + ("; detections projected with the bag's /kitti/calib" if with_calib else
                             "; no /kitti/calib in the bag: detections are never ignored for image height"))
        report["ap"] = {c: {m: dict(zip(report["columns"], results_ap[c][m])) for m in metrics} for c in evaluated}
        return report
    # range bands: one evaluation per band, everything outside the band ignored (image height 0)
    report["protocol"] = "range"
    report["columns"] = [f"{lo:g}-{hi:g}m" if math.isfinite(hi) else f"{lo:g}m+" for lo, hi in RANGE_BANDS]
    report["note"] = ("no KITTI annotation in the ground truth: difficulty by range band (BEV distance of the box "
                      "centre); boxes outside the band are ignored")
    ap = {c: {m: {} for m in metrics} for c in evaluated}
    for (lo, hi), column in zip(RANGE_BANDS, report["columns"]):
        gt_annos, dt_annos = [], []
        for r, g in frames:
            g_range = np.hypot(g.boxes[:, 0], g.boxes[:, 1])
            d_range = np.hypot(r.boxes[:, 0], r.boxes[:, 1])
            gt_annos.append(_objects(g.boxes, g.names, fallback, bbox=_tall_boxes(len(g.boxes),
                                                                                  (g_range >= lo) & (g_range < hi))))
            dt_annos.append(_objects(r.boxes, r.names, fallback, scores=np.asarray(r.scores, np.float64),
                                     bbox=_tall_boxes(len(r.boxes), (d_range >= lo) & (d_range < hi))))
        band = evaluate(gt_annos, dt_annos, evaluated)
        for c in evaluated:
            for m in metrics:
                ap[c][m][column] = band[c][m][0]  # "easy" = every non-ignored box
    report["ap"] = ap
    return report


def format_ap(report: dict) -> str:
    if not report.get("available") or "ap" not in report:
        return f"AP: {report.get('note', 'not computed')}"
    cols = report["columns"]
    lines = [f"AP R40 ({report['protocol']} protocol, {report['frames']} frames; {report['note']})",
             f"{'class':<11} {'metric':<6} " + " ".join(f"{c:>9}" for c in cols)]
    for cls, entry in report["ap"].items():
        for metric, values in entry.items():
            lines.append(f"{cls:<11} {metric.split('_')[0]:<6} " + " ".join(f"{values[c]:9.2f}" for c in cols))
    return "\n".join(lines)


def format_latency(summary: dict) -> str:
    lines = [f"{'stage (ms)':<18} {'n':>5} " + " ".join(f"{'p' + str(p):>8}" for p in PERCENTILES) + f" {'max':>8}"]
    for stage, s in summary.items():
        lines.append(f"{stage:<18} {s['n']:>5} " + " ".join(f"{s['p' + str(p)]:8.1f}" for p in PERCENTILES)
                     + f" {s['max']:8.1f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- record
def record_detections(out: Path, results: list[FrameResult], class_names: tuple[str, ...],
                      fmt: str = "mcap") -> int:
    """Detections as vision_msgs/Detection3DArray on /detections (+ per-frame stage latency), log time = stamp;
    answered frames only. Returns the number of frames written."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    from clean_ros.messages import stage_timing_message, to_detection3d_array
    from clean_ros.types import Detections

    names = tuple(dict.fromkeys([*class_names, *(n for r in results for n in r.names)]))
    written = 0
    with BagWriter(out, fmt) as bag:
        bag.add_topic(DETECTIONS_TOPIC, GT_TYPE)
        bag.add_topic(LATENCY_TOPIC, "diagnostic_msgs/msg/DiagnosticArray")
        for r in results:
            if not r.answered:
                continue
            header = Header(stamp=Time(sec=r.stamp_ns // 1_000_000_000, nanosec=r.stamp_ns % 1_000_000_000),
                            frame_id=r.frame_id)
            labels = np.array([names.index(n) for n in r.names], dtype=np.int64)
            det = Detections(r.boxes, r.scores, labels, names)
            bag.write(DETECTIONS_TOPIC, r.stamp_ns, to_detection3d_array(det, header))
            if r.timings_ms:
                bag.write(LATENCY_TOPIC, r.stamp_ns, stage_timing_message(r.timings_ms, header, "clean_ros_replay"))
            written += 1
    return written


# ------------------------------------------------------------------------------------------- CLI
def replay(args) -> dict:
    from clean_ros.backends.base import BackendError
    from clean_ros.bundle import BundleError

    if args.record is not None and args.record.exists():
        raise ReplayError(f"{args.record}: exists already (--record never overwrites)")
    if args.mode == "realtime" and not (args.bundle / "manifest.json").is_file():
        raise ReplayError(f"{args.bundle}: not a model bundle (no manifest.json)")
    reader = BagReader(args.bag)
    try:
        reader.require(args.points_topic, POINTS_TYPE)
        gt, calibs, gt_note = load_side_topics(reader, args.gt_topic)
        if args.mode == "fast":
            import torch

            from clean_ros.pipeline import Pipeline

            torch.set_num_threads(max(1, args.num_threads))
            try:
                pipeline = Pipeline.from_bundle(args.bundle, backend=args.backend, device=args.device,
                                                intra_op_threads=args.num_threads)
            except (BundleError, BackendError, ValueError, OSError) as exc:
                raise ReplayError(f"{args.bundle}: cannot load the bundle: {exc}") from None
            class_names = tuple(pipeline.class_names)
            backend = pipeline.backend_name
            pipeline.warmup(args.warmup)
            results = run_fast(reader, pipeline, args.points_topic, args.intensity_scale, progress=args.progress)
            mode_stats = {"published": len(results), "answered": len(results), "dropped": 0, "drop_fraction": 0.0}
        else:
            from clean_ros.bundle import load_bundle

            try:
                bundle = load_bundle(args.bundle)
            except (BundleError, ValueError, OSError) as exc:
                raise ReplayError(f"{args.bundle}: cannot load the bundle: {exc}") from None
            class_names = tuple(bundle.class_names)
            results, mode_stats = run_realtime(reader, args.bundle, args.points_topic, backend=args.backend,
                                               device=args.device, num_threads=args.num_threads,
                                               rate_scale=args.rate_scale, drain_s=args.drain_s,
                                               log_path=args.node_log)
            backend = mode_stats.pop("node_backend")
    finally:
        reader.close()
    if not results:
        raise ReplayError(f"{args.bag}: no clouds on {args.points_topic}")
    report = {"bag": str(args.bag), "bundle": str(args.bundle), "mode": args.mode, "backend": backend,
              "device": args.device, "num_threads": args.num_threads, "frames": len(results), **mode_stats,
              "ground_truth": gt_note, "latency_ms": latency_summary([r for r in results if r.answered])}
    report["accuracy"] = (evaluate_replay(gt, results, calibs, class_names) if gt is not None
                          else {"available": False, "note": gt_note})
    if args.record is not None:
        report["recorded_frames"] = record_detections(args.record, results, class_names, args.record_format)
        report["record"] = str(args.record)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clean_ros.replay",
                                     description="Accuracy and latency of a model bundle on a recorded bag.")
    parser.add_argument("bag", type=Path, help="rosbag2 directory (or its .mcap/.db3 file)")
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--mode", choices=("fast", "realtime"), default="fast")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--record", type=Path, help="write the detections as a bag here (ros2 bag play-able)")
    parser.add_argument("--record-format", choices=("mcap", "db3"), default="mcap")
    parser.add_argument("--backend", default="auto", help="auto | torch | onnxruntime | tensorrt")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-threads", type=int, default=2, help="CPU threads of the model (node default 2)")
    parser.add_argument("--points-topic", default=POINTS_TOPIC)
    parser.add_argument("--gt-topic", default=GT_TOPIC)
    parser.add_argument("--intensity-scale", type=float, default=1.0, help="fast mode: as the node parameter")
    parser.add_argument("--warmup", type=int, default=3, help="fast mode: warm-up runs before timing")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="realtime: publish at recorded rate x this")
    parser.add_argument("--drain-s", type=float, default=10.0, help="realtime: wait this long for late answers")
    parser.add_argument("--node-log", type=Path, help="realtime: write the node's output here")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    if args.rate_scale <= 0:
        parser.error("--rate-scale must be > 0")
    try:
        report = replay(args)
    except (ReplayError, BagError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{report['frames']} frames, mode {report['mode']}, backend {report['backend']}: "
          f"{report['answered']} answered, {report['dropped']} dropped")
    print(f"ground truth: {report['ground_truth']}")
    print(format_latency(report["latency_ms"]))
    print(format_ap(report["accuracy"]))
    if args.out is not None:
        try:
            atomic_write_json(args.out, report)
        except OSError as exc:
            print(f"error: {args.out}: cannot write: {exc.strerror}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"wrote {args.out}")
    if "record" in report:
        print(f"recorded {report['recorded_frames']} frames of detections to {report['record']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
