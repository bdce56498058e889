"""Replay a recorded bag through a model bundle: accuracy (KITTI-style AP) and latency, as the vehicle would see it.

    python -m clean_ros.replay BAG --bundle DIR [--mode fast|realtime] [--out report.json] [--record OUT_BAG]
                               [--backend auto|torch|onnxruntime|tensorrt] [--device cpu] [--int8] [--num-threads N]
                               [--points-topic /points] [--gt-topic /ground_truth] [--rate-scale 1.0]
                               [--sensor-height M [--sensor-pitch RAD] [--sensor-roll RAD] | --auto-sensor-mount]
                               [--no-ground-check] [--no-auto-intensity]
                               [--score-threshold T|T1,T2,.. | --operating-point FP]
                               [--crop-box LIST] [--exclusion-box LIST]
                               [--range-breakpoints LIST --range-score-thresholds LIST]

This module is the command line; the work is done by:
  clean_ros/ros/replay_frames.py    the bag's clouds, ground truth and calib; per-frame results (FrameResult)
  clean_ros/ros/replay_fast.py      --mode fast: in process, frame by frame, deterministic, no drops, through
                                clean_ros.inference.pipeline.Pipeline exactly as the detector node's callback does
  clean_ros/ros/replay_realtime.py  --mode realtime: the detector node as a subprocess (clean_ros/ros/node_process.py,
                                started as the launch file starts it), clouds published at the recorded rate; a
                                frame the node never answered is a drop and counts as a frame without detections
  clean_ros/ros/replay_eval.py      AP: KITTI devkit protocol when the ground truth carries the KITTI annotation,
                                else per range band (0-30 / 30-50 / 50+ m); BEV and 3D, R40
  clean_ros/metrics/latency.py          latency_summary: per-stage n, mean, p50/p90/p95/p99, max
  clean_ros/ros/bag.py              record_detections (--record)

--sensor-height (+ pitch, roll): where the bag's sensor is, the node's sensor_height setting
(clean_ros.inference.sensor_mount): fast mode sets it on the Pipeline, realtime mode passes it to the node.
--auto-sensor-mount: the mount measured from the scans' ground instead (the node's auto_sensor_mount,
clean_ros.inference.ground_plane; not with --sensor-height). The ground is measured unless --no-ground-check (the
node's ground_check): the last line says whether it lies where the model's training sensor saw it, or which mount the
automatic one settled on (fast mode: the Pipeline's mount check, clean_ros/tools/mount_options.py; realtime mode: the
node's /diagnostics keys ground and sensor_mount); the report's "ground_check" holds that line.
--no-auto-intensity: the node's auto_intensity off (clean_ros.inference.intensity_level: on by default, each scan's
intensity scaled to the bundle's training level when the bundle records one); fast mode sets it on the Pipeline
(a bundle without the level: one line on stderr, the intensity as recorded), realtime mode passes it to the node.
--score-threshold / --operating-point: the node's score_thresholds / operating_point (one of the bundle's operating
points by its val false-positive budget; clean_ros.inference.operating_points), checked against the bundle before the
bag is read; the report's "input" section gives the thresholds in force.
--crop-box / --exclusion-box / --range-breakpoints + --range-score-thresholds: the node's parameters of the same
names (clean_ros/tools/model_input_options.py: parsed and checked as the node does, bad values are refused before
the bag is read): fast mode gives the boxes to points_for_model and the range table to the Pipeline, realtime mode
starts the node with them. The report's "input" section says what was in force and how many points the boxes
removed.

Matching: detections belong to the ground-truth message with the same header stamp (ns). Without ground truth in
the bag the report holds latency only and says why.

Bad input (missing / corrupt / truncated bag, unknown topic, undecodable type, unusable bundle) ends with one
"error: ..." line and exit status 2. A bag without ground truth gives latency only, said plainly.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clean_ros import defaults
from clean_ros.atomic import atomic_write_json
from clean_ros.inference.ground_gate import check_max_gap
from clean_ros.ros.bag import GT_TOPIC, POINTS_TOPIC, POINTS_TYPE, BagError, BagReader, record_detections
from clean_ros.metrics.latency import format_latency, latency_summary
from clean_ros.ros.replay_eval import evaluate_replay, format_ap
from clean_ros.ros.replay_fast import run_fast
from clean_ros.ros.replay_frames import FrameResult, GroundTruthFrame, ReplayError, load_side_topics
from clean_ros.ros.replay_realtime import run_realtime
from clean_ros.tools.model_input_options import (ModelInputOptions, add_model_input_options, add_threshold_options,
                                               apply_threshold_options, chosen_thresholds)
from clean_ros.tools.mount_options import add_mount_options, apply_mount_options, mount_from_options, mount_summary

__all__ = ["FrameResult", "GroundTruthFrame", "ReplayError", "evaluate_replay", "format_ap", "load_side_topics",
           "main", "record_detections", "replay", "run_fast", "run_realtime"]

EXIT_BAD_INPUT = 2


# ------------------------------------------------------------------------------------------- CLI
def replay(args) -> dict:
    from clean_ros.inference.backends.base import BackendError
    from clean_ros.inference.bundle import BundleError

    if args.record is not None and args.record.exists():
        raise ReplayError(f"{args.record}: exists already (--record never overwrites)")
    if args.mode == "realtime" and not (args.bundle / "manifest.json").is_file():
        raise ReplayError(f"{args.bundle}: not a model bundle (no manifest.json)")
    try:
        mount = mount_from_options(args)  # refused before the bag is read: a bad mount, or one given twice
        options = ModelInputOptions.from_args(args)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    reader = BagReader(args.bag)
    try:
        reader.require(args.points_topic, POINTS_TYPE)
        gt, calibs, gt_note = load_side_topics(reader, args.gt_topic)
        if args.mode == "fast":
            import torch

            from clean_ros.inference.pipeline import Pipeline

            torch.set_num_threads(max(1, args.num_threads))
            try:
                pipeline = Pipeline.from_bundle(args.bundle, backend=args.backend, device=args.device,
                                                intra_op_threads=args.num_threads, int8=args.int8)
            except (BundleError, BackendError, ValueError, OSError) as exc:
                raise ReplayError(f"{args.bundle}: cannot load the bundle: {exc}") from None
            apply_mount_options(pipeline, args)  # the mount, the ground watch, the automatic mount
            off = pipeline.set_auto_intensity(args.auto_intensity)
            if off is not None:  # the bundle records no training level: the intensity as given
                print(off, file=sys.stderr)
            try:
                chosen = apply_threshold_options(pipeline, args)
                pipeline.update_postprocess(**options.range_changes)
            except ValueError as exc:
                raise ReplayError(str(exc)) from None
            if chosen:
                print(chosen)
            thresholds = [float(t) for t in pipeline.postprocess_settings.score_thresholds]
            gate = pipeline.ground_gate_m
            class_names = tuple(pipeline.class_names)
            backend = pipeline.backend_name
            pipeline.warmup(args.warmup)
            removed: dict[str, int] = {}
            results = run_fast(reader, pipeline, args.points_topic, args.intensity_scale, progress=args.progress,
                               boxes=options.boxes, removed=removed)
            mode_stats = {"published": len(results), "answered": len(results), "dropped": 0, "drop_fraction": 0.0}
            ground_check = mount_summary(pipeline)
        else:
            from clean_ros.inference.bundle import load_bundle

            try:
                bundle = load_bundle(args.bundle)
            except (BundleError, ValueError, OSError) as exc:
                raise ReplayError(f"{args.bundle}: cannot load the bundle: {exc}") from None
            class_names = tuple(bundle.class_names)
            try:  # refused here with the node's words rather than by a node that stops at start
                options.validate_range(bundle.postprocess, class_names, bundle.detector_config.head.iou_branch)
                thresholds, chosen = chosen_thresholds(args, bundle)
                gate = bundle.ground_gate_m if args.ground_gate is None else check_max_gap(args.ground_gate)
            except ValueError as exc:
                raise ReplayError(str(exc)) from None
            node_parameters = {**options.node_parameters(), "auto_intensity": bool(args.auto_intensity),
                               "int8": bool(args.int8), "ground_check": bool(args.ground_check),
                               "auto_sensor_mount": bool(args.auto_sensor_mount)}
            if args.ground_gate is not None:
                node_parameters["ground_gate_m"] = gate
            if args.operating_point is not None:  # the node picks it (and logs it) as a user's params file would
                node_parameters["operating_point"] = float(args.operating_point)
                print(chosen)
            elif thresholds is not None:
                node_parameters["score_thresholds"] = thresholds
            thresholds = thresholds or [float(t) for t in bundle.postprocess.score_thresholds]
            if mount is not None:
                node_parameters.update(sensor_height=mount.height, sensor_pitch=mount.pitch, sensor_roll=mount.roll)
            results, mode_stats = run_realtime(reader, args.bundle, args.points_topic, backend=args.backend,
                                               device=args.device, num_threads=args.num_threads,
                                               rate_scale=args.rate_scale, drain_s=args.drain_s,
                                               log_path=args.node_log, node_parameters=node_parameters)
            backend = mode_stats.pop("node_backend")
            removed = mode_stats.pop("node_points_removed")
            ground_check = node_ground_line(mode_stats.pop("node_ground"), args.auto_sensor_mount)
    finally:
        reader.close()
    if not results:
        raise ReplayError(f"{args.bag}: no clouds on {args.points_topic}")
    report = {"bag": str(args.bag), "bundle": str(args.bundle), "mode": args.mode, "backend": backend,
              "int8": bool(args.int8), "device": args.device, "num_threads": args.num_threads,
              "frames": len(results), **mode_stats,
              "ground_truth": gt_note, "ground_check": ground_check,
              "latency_ms": latency_summary(r.timings_ms for r in results if r.answered),
              "input": {"score_thresholds": dict(zip(class_names, thresholds)), "operating_point": args.operating_point,
                        "ground_gate_m": gate,
                        "crop_box": list(options.boxes.crop) if options.boxes.crop else None,
                        "exclusion_box": list(options.boxes.exclusion) if options.boxes.exclusion else None,
                        **options.range_changes, **removed}}
    report["accuracy"] = (evaluate_replay(gt, results, calibs, class_names) if gt is not None
                          else {"available": False, "note": gt_note})
    if args.record is not None:
        report["recorded_frames"] = record_detections(args.record, results, class_names, args.record_format)
        report["record"] = str(args.record)
    return report


def node_ground_line(health: dict[str, str], auto_mount: bool) -> str | None:
    """Realtime mode's last line about the mount, from the node's last /diagnostics keys (fast mode's is
    clean_ros.tools.mount_options.mount_summary); None when the node measured no ground."""
    if auto_mount and health.get("sensor_mount"):
        return f"sensor mount (node): {health['sensor_mount']}"
    ground = health.get("ground")
    return None if ground in (None, "off") else f"ground check (node): {ground}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clean_ros.replay",
                                     description="Accuracy and latency of a model bundle on a recorded bag.")
    parser.add_argument("bag", type=Path, help="rosbag2 directory (or its .mcap/.db3 file)")
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--mode", choices=("fast", "realtime"), default="fast")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--record", type=Path, help="write the detections as a bag here (ros2 bag play-able)")
    parser.add_argument("--record-format", choices=("mcap", "db3"), default="mcap")
    parser.add_argument("--backend", default=defaults.BACKEND, help=" | ".join(defaults.BACKENDS))
    parser.add_argument("--device", default=defaults.DEVICE)
    parser.add_argument("--int8", action="store_true",
                        help="the bundle's int8 dense part (model.int8.onnx) on onnxruntime, as the node parameter")
    parser.add_argument("--num-threads", type=int, default=defaults.NUM_THREADS,
                        help=f"CPU threads of the model (node default {defaults.NUM_THREADS})")
    parser.add_argument("--points-topic", default=POINTS_TOPIC)
    parser.add_argument("--gt-topic", default=GT_TOPIC)
    parser.add_argument("--intensity-scale", type=float, default=defaults.INTENSITY_SCALE,
                        help="fast mode: as the node parameter")
    parser.add_argument("--no-auto-intensity", dest="auto_intensity", action="store_false",
                        default=defaults.AUTO_INTENSITY,
                        help="give the model the intensity as recorded (times --intensity-scale); otherwise each "
                             "scan's intensity is scaled to the bundle's training level when the bundle records "
                             "one, as the node's auto_intensity does (docs/NODE.md 'Intensity of another sensor')")
    parser.add_argument("--warmup", type=int, default=defaults.WARMUP_ITERATIONS,
                        help="fast mode: warm-up runs before timing")
    add_mount_options(parser)  # --sensor-height / pitch / roll, --auto-sensor-mount, --no-ground-check
    add_threshold_options(parser)
    add_model_input_options(parser)
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
    if report["ground_check"]:
        print(report["ground_check"])
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
