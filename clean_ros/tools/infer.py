"""Offline inference on files, through the same Pipeline as the ROS node.

    python -m clean_ros.infer [--bundle DIR] [--backend auto|torch|onnxruntime|tensorrt] [--device cpu|cuda] [--int8]
                              [--out PRED_DIR] [--png DIR] [--calib FILE_or_DIR] [--intensity-scale S]
                              [--no-auto-intensity] [--score-threshold T|T1,T2,.. | --operating-point FP]
                              [--sensor-height M [--sensor-pitch RAD] [--sensor-roll RAD] | --auto-sensor-mount]
                              [--no-ground-check] [--crop-box LIST] [--exclusion-box LIST]
                              [--range-breakpoints LIST --range-score-thresholds LIST] INPUT...

INPUT: .bin (KITTI float32 x y z intensity), .pcd (ascii / binary), a folder of such files, or a KITTI split folder
(training/ or testing/ with velodyne/ and calib/: the frame's calib/<id>.txt is used automatically).

--out: one file per frame. With a calibration: KITTI label format, 16 columns (score last), in the camera frame,
readable by training/evaluate.py; only boxes at least partly in the camera image (what KITTI labels and the devkit
cover; a 360-degree model's other boxes are in the .json output, written without a calibration).
Without: <id>.json with LiDAR-frame boxes:
    {"frame": id, "frame_convention": "lidar: x forward, y left, z up; box = centre x y z, l w h, yaw about +z",
     "class_names": [...], "detections": [{"class": "Car", "score": 0.91, "box": [x, y, z, l, w, h, yaw]}, ...]}
--png: a bird's-eye view per frame (points + boxes coloured by class).
--sensor-height (+ pitch, roll): where the sensor is when it is not mounted like the model's training sensor
(clean_ros.inference.sensor_mount, the same setting as the node's sensor_height); boxes stay in the input frame.
--auto-sensor-mount: the mount measured from the scans' ground instead (clean_ros.inference.ground_plane, the node's
auto_sensor_mount). Unless --no-ground-check, the last line says whether the ground lies where the model's training
sensor saw it (and what --sensor-height would put it there).
Intensity: each scan's intensity is scaled to the bundle's training level when the bundle records one (a sensor
with another intensity scale, 0-255 included; clean_ros.inference.intensity_level, the node's auto_intensity); the
frame's line gives the factor. --no-auto-intensity: the intensity as read, times --intensity-scale.
--score-threshold / --operating-point: other score thresholds, as numbers or as one of the operating points the
bundle lists by val false-positive budget (clean_ros.inference.operating_points, the node's operating_point).
--crop-box / --exclusion-box / --range-breakpoints + --range-score-thresholds: the node's parameters of the same
names, parsed and checked as the node does (clean_ros/tools/model_input_options.py); the boxes are applied to the
file's points in the model's input frame (clean_ros.cloud.model_input.apply_boxes) and each frame's line says how
many points they removed.

Each frame prints one line: detections per class and the stage times. A frame without detections also prints the
input-contract findings (range, intensity scale, ...), the usual reasons a model sees nothing; the intensity's range
only with --no-auto-intensity (automatic intensity brings any scale to the training level).
Bad input: one clear "error: ..." line, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clean_ros import defaults
from clean_ros.atomic import atomic_open, atomic_write_text
from clean_ros.cloud.model_input import apply_boxes
from clean_ros.tools.mount_options import add_mount_options, apply_mount_options, mount_summary
from clean_ros.tools.model_input_options import (ModelInputOptions, add_model_input_options, add_threshold_options,
                                               apply_threshold_options)

EXIT_BAD_INPUT = 2
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default"
POINT_SUFFIXES = (".bin", ".pcd")
LIDAR_CONVENTION = "lidar: x forward, y left, z up; box = centre x y z, l w h, yaw about +z (0 = l along +x)"


class InferError(Exception):
    """Input the user has to fix."""


@dataclass
class Frame:
    frame_id: str
    path: Path
    calib_path: Path | None


# ------------------------------------------------------------------------------------------- inputs
def _calib_for(stem: str, calib: Path | None, kitti_calib_dir: Path | None) -> Path | None:
    if calib is not None:
        if calib.is_dir():
            candidate = calib / f"{stem}.txt"
            return candidate if candidate.is_file() else None
        return calib
    if kitti_calib_dir is not None:
        candidate = kitti_calib_dir / f"{stem}.txt"
        return candidate if candidate.is_file() else None
    return None


def collect_frames(inputs: list[Path], calib: Path | None) -> list[Frame]:
    if calib is not None and not calib.exists():
        raise InferError(f"--calib {calib}: no such file or directory")
    frames: list[Frame] = []
    for item in inputs:
        if item.is_dir():
            kitti_calib = None
            if (item / "velodyne").is_dir():  # a KITTI split folder
                kitti_calib = item / "calib" if (item / "calib").is_dir() else None
                item = item / "velodyne"
            files = sorted(p for p in item.iterdir() if p.suffix.lower() in POINT_SUFFIXES)
            if not files:
                raise InferError(f"{item}: no .bin or .pcd files (nor a velodyne/ folder)")
            frames += [Frame(p.stem, p, _calib_for(p.stem, calib, kitti_calib)) for p in files]
        elif item.is_file():
            if item.suffix.lower() not in POINT_SUFFIXES:
                raise InferError(f"{item}: unsupported file type {item.suffix!r} (use .bin or .pcd)")
            kitti_calib = item.parent.parent / "calib" if item.parent.name == "velodyne" else None
            frames.append(Frame(item.stem, item, _calib_for(item.stem, calib, kitti_calib)))
        else:
            raise InferError(f"{item}: no such file or directory")
    return frames


def read_frame_points(path: Path, num_features: int, intensity_scale: float = 1.0) -> tuple[np.ndarray, tuple[str, ...]]:
    """(N, 4) float32 x y z intensity from a .bin or .pcd file, and the fields it really had."""
    if path.suffix.lower() == ".pcd":
        from clean_ros.cloud.pcd import read_pcd

        cloud = read_pcd(path)
        points, fields = cloud.points, tuple(f for f in cloud.fields if f not in cloud.missing_fields)
    else:
        from clean_ros.cloud.kitti import read_velodyne

        points, fields = read_velodyne(path, 4), ("x", "y", "z", "intensity")
    if points.shape[1] < num_features:
        raise InferError(f"{path}: {points.shape[1]} values per point, the model needs {num_features}")
    if intensity_scale != 1.0 and points.shape[1] > 3:
        points = points.copy()
        points[:, 3] *= intensity_scale
    return points, fields


# ------------------------------------------------------------------------------------------- outputs
def write_predictions(out_dir: Path, frame: Frame, detections, calib) -> Path:
    from clean_ros.cloud.kitti import boxes_in_image, labels_from_lidar_boxes, write_labels

    out_dir.mkdir(parents=True, exist_ok=True)
    if calib is not None:
        path = out_dir / f"{frame.frame_id}.txt"
        rows = labels_from_lidar_boxes(detections.boxes, detections.names, detections.scores, calib)
        write_labels(path, rows.select(boxes_in_image(rows.bbox)))  # KITTI files hold what the camera sees
        return path
    path = out_dir / f"{frame.frame_id}.json"
    rows = [{"class": str(n), "score": round(float(s), 6), "box": [round(float(v), 5) for v in b]}
            for n, s, b in zip(detections.names, detections.scores, detections.boxes)]
    atomic_write_text(path, json.dumps({"frame": frame.frame_id, "frame_convention": LIDAR_CONVENTION,
                                         "class_names": list(detections.class_names), "detections": rows},
                                        indent=1) + "\n")
    return path


_CLASS_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown")


def write_bev_png(path: Path, points: np.ndarray, detections, point_cloud_range) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from clean_ros.cloud.geometry import boxes_to_corners_bev

    r = point_cloud_range
    fig, ax = plt.subplots(figsize=(8, 8 * (r[4] - r[1]) / max(r[3] - r[0], 1e-6)), dpi=100)
    keep = (points[:, 0] >= r[0]) & (points[:, 0] < r[3]) & (points[:, 1] >= r[1]) & (points[:, 1] < r[4])
    ax.scatter(points[keep, 0], points[keep, 1], s=0.2, c="0.4", linewidths=0)
    if len(detections):
        corners = boxes_to_corners_bev(torch.from_numpy(detections.boxes.astype(np.float32))).numpy()
        for box, label, score in zip(corners, detections.labels, detections.scores):
            colour = _CLASS_COLOURS[int(label) % len(_CLASS_COLOURS)]
            closed = np.vstack([box, box[:1]])
            ax.plot(closed[:, 0], closed[:, 1], color=colour, linewidth=1.2)
            ax.text(box[:, 0].mean(), box[:, 1].mean(), f"{score:.2f}", color=colour, fontsize=6)
        for i, name in enumerate(detections.class_names):
            ax.plot([], [], color=_CLASS_COLOURS[i % len(_CLASS_COLOURS)], label=name)
        ax.legend(loc="upper right", fontsize=7)
    ax.set_xlim(r[0], r[3])
    ax.set_ylim(r[1], r[4])
    ax.set_aspect("equal")
    ax.set_xlabel("x (m, forward)")
    ax.set_ylabel("y (m, left)")
    ax.set_title(f"{path.stem}: {len(detections)} detections")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)


def summary_line(frame_id: str, detections, timings_ms: dict) -> str:
    counts = np.bincount(detections.labels, minlength=len(detections.class_names)) if len(detections) else \
        np.zeros(len(detections.class_names), dtype=int)
    per_class = ", ".join(f"{n} {c}" for n, c in zip(detections.class_names, counts))
    total = sum(timings_ms.values())
    stages = ", ".join(f"{k} {v:.1f}" for k, v in timings_ms.items())
    return f"{frame_id}: {len(detections)} detections ({per_class}) | {total:.1f} ms ({stages})"


# ------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m clean_ros.infer",
                                 description="Run a clean_ros model bundle on .bin / .pcd files or a KITTI folder.")
    ap.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help=".bin / .pcd files or folders")
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="model bundle (default: models/default)")
    ap.add_argument("--backend", default=defaults.BACKEND, choices=list(defaults.BACKENDS))
    ap.add_argument("--device", default=defaults.DEVICE, help="cpu or cuda[:N]")
    ap.add_argument("--int8", action="store_true",
                    help="run the bundle's int8 dense part (model.int8.onnx) on onnxruntime (docs/BUNDLE.md)")
    ap.add_argument("--out", type=Path, help="write predictions here (KITTI .txt with calib, else .json)")
    ap.add_argument("--png", type=Path, help="write a bird's-eye-view PNG per frame here")
    ap.add_argument("--calib", type=Path, help="KITTI calib file for all frames, or a folder of <id>.txt")
    ap.add_argument("--intensity-scale", type=float, default=defaults.INTENSITY_SCALE,
                    help="multiply intensity by this (0-255 sensors: 0.00392156862745098)")
    ap.add_argument("--no-auto-intensity", dest="auto_intensity", action="store_false",
                    default=defaults.AUTO_INTENSITY,
                    help="give the model the intensity as read (times --intensity-scale); by default each scan's "
                         "intensity is scaled to the bundle's training level when the bundle records one "
                         "(docs/NODE.md 'Intensity of another sensor')")
    add_threshold_options(ap)
    add_mount_options(ap)
    add_model_input_options(ap)
    ap.add_argument("--threads", type=int, default=0, help="torch / onnxruntime CPU threads (0 = default)")
    ap.add_argument("--quiet", action="store_true", help="only errors and the final line")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from clean_ros.inference.backends import BackendError
    from clean_ros.inference.bundle import BundleError
    from clean_ros.cloud.kitti import Calibration, KittiFormatError
    from clean_ros.cloud.pcd import PcdFormatError

    try:
        options = ModelInputOptions.from_args(args)
        frames = collect_frames(args.inputs, args.calib)
        import torch

        if args.threads > 0:
            torch.set_num_threads(args.threads)
        from clean_ros.inference.pipeline import Pipeline

        if not (args.bundle / "manifest.json").exists() and args.bundle == DEFAULT_BUNDLE:
            raise InferError(f"the default bundle {DEFAULT_BUNDLE} is missing; pass --bundle DIR")
        pipeline = Pipeline.from_bundle(args.bundle, backend=args.backend, device=args.device,
                                        intra_op_threads=args.threads, int8=args.int8)
        chosen = apply_threshold_options(pipeline, args)
        if chosen and not args.quiet:
            print(chosen, flush=True)
        if options.range_changes:
            pipeline.update_postprocess(**options.range_changes)
        mount = apply_mount_options(pipeline, args)
        if mount and not args.quiet:
            print(mount, flush=True)
        off = pipeline.set_auto_intensity(args.auto_intensity)
        if off and not args.quiet:
            print(off, flush=True)
        if (options.boxes.active or options.range_changes) and not args.quiet:
            print(options.describe(), flush=True)
        # without the intensity's range while automatic intensity is on: any scale is brought to the training level
        contract = pipeline.input_contract()
        pipeline.warmup(1)
        total = 0
        for frame in frames:
            points, fields = read_frame_points(frame.path, len(pipeline.point_features), args.intensity_scale)
            # the mount in force (the automatic one moves as scans come in): the boxes are in the model's frame
            model_from_input = pipeline.frames.model_from_input if pipeline.frames is not None else None
            kept, outside, excluded = apply_boxes(points, options.boxes, model_from_input)
            result = pipeline(kept)
            dets = result.detections
            total += len(dets)
            removed = (f" | boxes removed {outside} points outside the crop box, {excluded} in the exclusion box"
                       if options.boxes.active else "")
            if pipeline.auto_intensity is not None:
                removed += f" | intensity x {pipeline.intensity_factor:.3g}"
            if not args.quiet:
                print(summary_line(frame.frame_id, dets, result.timings_ms) + removed, flush=True)
            if len(dets) == 0:
                from clean_ros.cloud.pointcloud import check_points_contract

                findings = check_points_contract(points, contract, fields)
                checked = ", ".join(["range", *contract.feature_ranges])  # no intensity while automatic intensity is on
                why = "; ".join(str(f) for f in findings) or (f"the input matches the model's contract ({checked}): "
                                                              "the scene may simply hold no objects")
                if options.boxes.active and not len(kept):
                    why = (f"the input boxes removed all {len(points)} points ({outside} outside the crop box, "
                           f"{excluded} in the exclusion box)")
                print(f"  no detections in {frame.frame_id}: {why}", flush=True)
            if args.out is not None:
                calib = Calibration.from_file(frame.calib_path) if frame.calib_path is not None else None
                write_predictions(args.out, frame, dets, calib)
            if args.png is not None:
                write_bev_png(args.png / f"{frame.frame_id}.png", kept, dets, pipeline.bundle.point_cloud_range)
        ground = mount_summary(pipeline)
        if ground:
            print(ground, flush=True)
        print(f"{len(frames)} frames, {total} detections, backend {pipeline.backend.describe()}"
              + (f", predictions in {args.out}" if args.out else ""))
        return 0
    except (InferError, BundleError, BackendError, KittiFormatError, PcdFormatError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
