"""A KITTI-layout dataset (real or simulated) written as a rosbag2 for replay: `python -m clean_ros.bag from-kitti`.

The bag's layout (topics, types, QoS, the KITTI annotation in Detection3D.id) is clean_ros.ros.bag's, which also
holds the atomic BagWriter this module writes with, the reader replay uses, and the command line.

Frame k has header stamp ``start + k / rate`` and is written at that log time on every topic. DontCare rows are
not written: they carry no 3D box, and in the KITTI protocol they only change the 2D image metric, which replay
does not report (BEV and 3D AP are unchanged without them). Every other class (Van, Truck, Person_sitting, Tram,
Misc, ...) is written under its KITTI name: the evaluator needs Van / Person_sitting as the neighbour classes.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from clean_ros.ros.bag import (CALIB_TOPIC, CALIB_TYPE, GT_TOPIC, GT_TYPE, POINTS_TOPIC, POINTS_TYPE, BagError,
                               BagWriter, KittiAnnotation, encode_kitti_id, stamp_from_ns)

FRAME_ID = "velodyne"
DEFAULT_START_S = 1_600_000_000.0  # a fixed, plausible epoch: the same dataset always gives the same bag


def frame_ids(root: Path, split: str) -> tuple[list[str], Path, str]:
    """Frame ids of the split, their directory (training/ or testing/) and a note on how they were chosen.

    A dataset root only (test: testing/, else training/), and all frames when the split has no listing."""
    from clean_ros.cloud.kitti import frames_without, split_frame_ids

    base = root / ("testing" if split == "test" else "training")
    listing = root / "ImageSets" / f"{split}.txt"
    velodyne = base / "velodyne"
    if not velodyne.is_dir():
        raise BagError(f"{velodyne}: no velodyne directory (expected the KITTI object layout under {root})")
    try:
        _, ids, source = split_frame_ids(base, split, listing_required=False)
    except ValueError as exc:
        raise BagError(str(exc)) from None
    listed = source != str(velodyne)
    note = f"split '{split}' from {source}" if listed else f"{listing} not found: all {len(ids)} frames of {velodyne}"
    missing = frames_without(base, ids)
    if missing:
        raise BagError(f"{velodyne}: {len(missing)} frame(s) of {source} missing, e.g. {missing[0]}.bin")
    return ids, base, note


def ground_truth_message(objs, calib, header):
    """Detection3DArray of one frame's KITTI labels (DontCare dropped), boxes in the LiDAR frame."""
    from clean_ros.cloud.kitti import boxes_camera_to_lidar, difficulty_levels
    from clean_ros.ros.messages import to_detection3d_array
    from clean_ros.types import Detections

    objs = objs.select(objs.names != "DontCare")
    n = len(objs)
    boxes = boxes_camera_to_lidar(objs.location, objs.dimensions, objs.rotation_y, calib) if n else np.zeros((0, 7))
    class_names = tuple(dict.fromkeys(objs.names.tolist()))
    labels = np.array([class_names.index(name) for name in objs.names], dtype=np.int64)
    msg = to_detection3d_array(Detections(boxes, np.ones(n, np.float32), labels, class_names), header)
    levels = difficulty_levels(objs) if n else np.zeros(0, np.int64)
    for i, det in enumerate(msg.detections):
        det.id = encode_kitti_id(KittiAnnotation(int(levels[i]), float(objs.truncation[i]), int(objs.occlusion[i]),
                                                 tuple(float(v) for v in objs.bbox[i]), float(objs.alpha[i])))
    return msg


def write_kitti_bag(root: str | os.PathLike, out: str | os.PathLike, split: str = "val", rate_hz: float = 10.0,
                    fmt: str = "mcap", distro: str = "kilted", max_frames: int = 0,
                    start_s: float = DEFAULT_START_S) -> dict:
    """Write the split of a KITTI-layout dataset as a bag; returns a summary (frames, ids, note, ...)."""
    from std_msgs.msg import Header, String

    from clean_ros.tools.infer import InferError, read_frame_points
    from clean_ros.cloud.kitti import Calibration, KittiFormatError, read_labels
    from clean_ros.ros.pointcloud_msg import make_pointcloud2

    root = Path(root)
    if not root.is_dir():
        raise BagError(f"{root}: dataset root does not exist")
    if not (rate_hz > 0 and math.isfinite(rate_hz)):
        raise BagError(f"--rate {rate_hz}: must be a positive number of frames per second")
    ids, base, note = frame_ids(root, split)
    if max_frames > 0:
        ids = ids[:max_frames]
    labelled = (base / "label_2").is_dir()
    start_ns, period_ns = int(round(start_s * 1e9)), int(round(1e9 / rate_hz))
    n_boxes = 0
    try:
        with BagWriter(out, fmt, distro) as bag:
            bag.add_topic(POINTS_TOPIC, POINTS_TYPE, best_effort=True)
            if labelled:
                bag.add_topic(GT_TOPIC, GT_TYPE)
            has_calib = (base / "calib").is_dir()
            if has_calib:
                bag.add_topic(CALIB_TOPIC, CALIB_TYPE)
            for k, frame in enumerate(ids):
                time_ns = start_ns + k * period_ns
                header = Header(stamp=stamp_from_ns(time_ns), frame_id=FRAME_ID)
                points, _ = read_frame_points(base / "velodyne" / f"{frame}.bin", 4)
                bag.write(POINTS_TOPIC, time_ns, make_pointcloud2(points[:, :4], ("x", "y", "z", "intensity"),
                                                                  header))
                calib_path = base / "calib" / f"{frame}.txt"
                calib_text = calib_path.read_text() if has_calib else None
                if has_calib:
                    bag.write(CALIB_TOPIC, time_ns, String(data=calib_text))
                if labelled:
                    label_path = base / "label_2" / f"{frame}.txt"
                    if not label_path.is_file():
                        raise BagError(f"{label_path}: label file missing")
                    if calib_text is None:
                        raise BagError(f"{calib_path}: calibration needed to put the labels in the LiDAR frame")
                    gt = ground_truth_message(read_labels(label_path),
                                              Calibration.from_text(calib_text, str(calib_path)), header)
                    n_boxes += len(gt.detections)
                    bag.write(GT_TOPIC, time_ns, gt)
    except (KittiFormatError, InferError) as exc:
        raise BagError(str(exc)) from None
    except OSError as exc:
        raise BagError(f"{exc.filename or out}: {exc.strerror}") from None
    return {"frames": len(ids), "ids": ids, "note": note, "ground_truth": labelled, "boxes": n_boxes,
            "rate_hz": rate_hz, "format": fmt, "distro": distro}
