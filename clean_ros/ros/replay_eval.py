"""Accuracy of a replay: KITTI-style AP of the replayed detections against the bag's ground truth.

The evaluator is clean_ros/metrics/kitti_eval.py, the same one training/evaluate.py uses. The protocol is chosen from
what the bag carries:
  kitti   ground truth with the KITTI annotation in Detection3D.id (clean_ros.ros.bag writes it): the devkit protocol
          with its easy / moderate / hard difficulties. Boxes go back to the camera frame with the frame's calib
          (/kitti/calib) and detections get their projected image box, so the image-height rule applies exactly
          as in training/evaluate.py. Without calib, an axis permutation stands in for the camera and detections
          are never height-ignored (noted in the report).
  range   any other ground truth (your own recordings): per range band 0-30 / 30-50 / 50+ m (BEV distance of the
          box centre from the sensor), the KITTI matching and R40 AP with ground truth and detections outside the
          band ignored (neither TP nor FP).
AP is BEV and 3D, R40, per class, for the classes both the bundle and the KITTI evaluator know
(Car, Pedestrian, Cyclist).
"""
from __future__ import annotations

import math

import numpy as np

from clean_ros.cloud.kitti import Calibration
from clean_ros.metrics.kitti_eval import CLASSES, evaluate
from clean_ros.ros.replay_frames import FrameResult, GroundTruthFrame

RANGE_BANDS = ((0.0, 30.0), (30.0, 50.0), (50.0, math.inf))


def _axes_calibration():
    """A stand-in camera when the bag has no calib: camera axes = LiDAR axes permuted (x right = -y, y down = -z,
    z forward = x), identity rectification. IoUs are invariant under it."""
    v2c = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    p2 = np.array([[700.0, 0.0, 600.0, 0.0], [0.0, 700.0, 180.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    return Calibration(P2=p2, R0=np.eye(3), V2C=v2c)


def _objects(boxes: np.ndarray, names, calib, scores=None, bbox=None, truncation=None, occlusion=None, alpha=None):
    """KittiObjects (camera frame) of LiDAR boxes; image box projected with calib unless given."""
    from clean_ros.cloud.kitti import KittiObjects, labels_from_lidar_boxes

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
