"""What a detector gets right and wrong on labelled real frames, beyond AP: recall, false positives, confusions.

Used by training/real_check.py; pure numpy/torch, one frame at a time (IoU matrices from clean_ros.cloud.geometry,
no loops over boxes). Boxes are compared in the LiDAR frame with the exact rotated BEV IoU.

What counts, chosen to agree with what the KITTI devkit scores (clean_ros/metrics/kitti_eval.py):
- Labelled objects: every label_2 row except DontCare. A row is *scored* when the devkit scores it at some
  difficulty: 2D box height >= 25 px, occlusion <= 2, truncation <= 0.5 (clean_ros.cloud.kitti.difficulty_levels
  >= 0). Label rows are in the camera's view by construction (they are annotated in the image).
- Recall, per class of the bundle, at BEV IoU >= 0.5 and >= 0.25, overall and per range band of the object's BEV
  distance from the sensor (0-20, 20-40, 40+ m): a scored object of class C is found when a detection of class C
  overlaps it at the threshold. Van and Person_sitting rows are not Car / Pedestrian objects (the devkit ignores
  them). A detection may find two objects (only possible below IoU 0.5, e.g. two people side by side); the AP is
  the one-to-one measure.
- The same recall by the points on the object (0-9, 10-29, 30-99, 100+ LiDAR points of the frame inside its
  labelled 3D box, clean_ros.cloud.geometry.points_in_boxes; only when match_frame is given the frame's points) and
  by crowding ("crowded": another labelled object of any class, DontCare left out, has its BEV centre within
  CROWDED_DISTANCE = 1 m of this one's; else "alone"). They say why objects are missed: too few points (another
  sensor, sparse beams, far or occluded) or people in groups. The points must be in the labels' LiDAR frame.
- Camera view: a detection is in it when part of its box is in the image (its projected 2D box, clipped to the
  image, keeps a positive area: clean_ros.cloud.kitti.boxes_in_image); others are not scored at all (the AP of
  training/real_check.py and `infer --out` files leave them out too).
- False positives: detections the devkit scores - in the camera view, projected 2D box >= 25 px high (smaller ones
  the devkit ignores at every difficulty) - that overlap no
  labelled object of any class (any difficulty; Van, Truck, Misc... included) at BEV IoU >= 0.25 and lie in no
  DontCare region (2D intersection / the detection's own area > the class's devkit minimum overlap, the devkit's
  test). Of these, the ones whose box centre projects outside the image are also counted apart: a box beside the
  image with one corner in view is scored by the devkit, but labels drawn on the image rarely hold the object (a
  360-degree model finds real cars there that no label_2 row can match).
- Confusions: each scored labelled object (every class of the labels) -> the class of the detection that overlaps
  it most in BEV, when that IoU >= 0.25, else "none". Rows therefore sum to the number of objects.
- Detections per frame: all of them, those in the camera view, and those the devkit scores (whatever they match).
- Heading: for each scored object found at BEV IoU >= HEADING_IOU, the heading error of the same-class detection
  that overlaps it most (wrapped to [0, 180] degrees). A box turned by 180 degrees has the same IoU, so AP cannot
  see a flipped heading; a tracker can. Reported per class: found objects, how many turned > 90 degrees, median.
- AP ceiling: the KITTI AP that perfect detections would get on the same frames - every labelled object (DontCare
  rows left out) given back as a detection with one score, through the same clean_ros.metrics.kitti_eval.evaluate
  call. The devkit samples precision only at the scores where recall passes its 40 recall points and advances one
  point per true positive, so with N <= 40 objects of a class at a difficulty even perfect detections fill points
  0..N-1 and get AP R40 = 100 (N - 1) / 40 (1 object: 0, 3 objects: 5). No detector can score above this (it has at
  most N true positives, hence at most N points); below AP_CEILING_MIN the folder is too small for AP to tell
  models apart, and recall / false positives are the measures to read.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clean_ros.cloud.geometry import bev_iou, points_in_boxes
from clean_ros.cloud.kitti import (DEFAULT_IMAGE_SHAPE, Calibration, KittiObjects, boxes_in_image,
                                   centres_in_image, difficulty_levels, labels_from_lidar_boxes, normalize_yaw_np,
                                   read_labels)
from clean_ros.metrics.kitti_eval import DIFFICULTIES, MIN_HEIGHT, MIN_OVERLAP, evaluate, image_overlap
from clean_ros.types import Detections
from training.data.kitti_dataset import DONT_CARE, ground_truth_from_annotations, read_png_shape

RANGE_BANDS = ((0.0, 20.0), (20.0, 40.0), (40.0, math.inf))
POINT_BANDS = ((0, 10), (10, 30), (30, 100), (100, math.inf))  # LiDAR points inside the labelled box, [lo, hi)
CROWDED_DISTANCE = 1.0  # m between BEV box centres: another labelled object this close makes an object "crowded"
CROWDING_NAMES = ("crowded", "alone")
RECALL_IOUS = (0.5, 0.25)
MATCH_IOU = 0.25  # "overlaps a labelled object": false positives and confusions
HEADING_IOU = 0.5  # objects whose heading is checked: found at this BEV IoU by a detection of their class
MIN_SCORED_HEIGHT = min(MIN_HEIGHT)  # px; the devkit ignores shorter boxes at every difficulty
DEFAULT_MIN_OVERLAP = 0.5  # DontCare test for a bundle class the devkit does not know
AP_CEILING_MIN = 50.0  # AP points; a folder whose perfect-detection AP is below this cannot measure a model by AP
PERFECT_SCORE = 0.9  # the one score of the perfect detections (any value: all tie, the devkit's order decides)
NONE = "none"


def band_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}m" if math.isfinite(hi) else f"{lo:g}m+"


def point_band_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi - 1:g} pts" if math.isfinite(hi) else f"{lo:g}+ pts"


BAND_NAMES = tuple(band_name(lo, hi) for lo, hi in RANGE_BANDS)
POINT_BAND_NAMES = tuple(point_band_name(lo, hi) for lo, hi in POINT_BANDS)


@dataclass
class LabelledFrame:
    """One real frame's labels as in label_2 (camera frame, DontCare rows included) and its calibration."""

    frame_id: str
    labels: KittiObjects
    calib: Calibration
    image_shape: tuple[int, int] = DEFAULT_IMAGE_SHAPE  # (height, width)

    @classmethod
    def read(cls, split_dir: Path, frame_id: str) -> "LabelledFrame":
        """A KITTI split folder's label_2/<id>.txt and calib/<id>.txt, with the image's shape from image_2/<id>.png
        when there is one (else the KITTI default)."""
        split_dir = Path(split_dir)
        return cls(frame_id, read_labels(split_dir / "label_2" / f"{frame_id}.txt"),
                   Calibration.from_file(split_dir / "calib" / f"{frame_id}.txt"),
                   read_png_shape(split_dir / "image_2" / f"{frame_id}.png") or DEFAULT_IMAGE_SHAPE)


@dataclass
class FrameMatch:
    """Per-object and per-detection results of one frame (objects = non-DontCare label rows)."""

    object_names: np.ndarray  # (M,) str
    object_scored: np.ndarray  # (M,) bool: the devkit scores it at some difficulty
    object_range: np.ndarray  # (M,) BEV distance of the box centre from the sensor, m
    object_points: np.ndarray  # (M,) int: LiDAR points inside the box; -1 when match_frame got no points
    object_crowded: np.ndarray  # (M,) bool: another labelled object's BEV centre within CROWDED_DISTANCE
    best_same_class_iou: np.ndarray  # (M,) largest BEV IoU with a detection of its own class (0 if none)
    # (M, len(RECALL_IOUS)) highest score of a detection of its own class overlapping it at RECALL_IOUS[j] (-inf if
    # none): the object is found at that IoU by every score threshold <= this (training/compression/stage_thresholds)
    found_score: np.ndarray
    detected_as: np.ndarray  # (M,) str: class of the most-overlapping detection at IoU >= MATCH_IOU, else "none"
    # (M,) |heading error| in radians, [0, pi], of the own-class detection overlapping it most, when that BEV IoU
    # >= HEADING_IOU; NaN otherwise
    heading_error: np.ndarray
    detection_names: np.ndarray  # (N,) str
    detection_in_view: np.ndarray  # (N,) bool: part of the box is in the camera image
    detection_scored: np.ndarray  # (N,) bool: in the camera view and tall enough for the devkit
    false_positive: np.ndarray  # (N,) bool
    # (N,) bool: the box's 3D centre projects into the image (boxes_in_image keeps a box with one corner in view)
    detection_centre_in_image: np.ndarray
    detection_rows: KittiObjects  # (N,) the detections as KITTI label rows (camera frame, projected 2D box)
    detection_boxes: np.ndarray  # (N, 7) float64 the detections in the labels' LiDAR frame
    detection_scores: np.ndarray  # (N,) float64
    detection_points: np.ndarray  # (N,) int: LiDAR points inside each detection's box; -1 without points


def detections_as_labels(detections: Detections, calib: Calibration,
                         image_shape: tuple[int, int] = DEFAULT_IMAGE_SHAPE) -> KittiObjects:
    """Detections as KITTI label rows (camera frame, projected 2D box, alpha, score)."""
    return labels_from_lidar_boxes(detections.boxes, np.asarray(detections.names, dtype=str),
                                   np.asarray(detections.scores, dtype=np.float64), calib, image_shape)


def _dont_care_covered(det_bbox: np.ndarray, det_names: np.ndarray, dont_care_bbox: np.ndarray) -> np.ndarray:
    """(N,) True where a detection's 2D box lies in a DontCare region (the devkit's own-area test)."""
    n, k = len(det_bbox), len(dont_care_bbox)
    if n == 0 or k == 0:
        return np.zeros(n, dtype=bool)
    d_idx, k_idx = np.repeat(np.arange(n), k), np.tile(np.arange(k), n)
    needed = np.array([MIN_OVERLAP.get(str(name).lower(), DEFAULT_MIN_OVERLAP) for name in det_names])
    overlap = image_overlap(det_bbox[d_idx], dont_care_bbox[k_idx], own_area=True)
    return np.bincount(d_idx[overlap > needed[d_idx]], minlength=n) > 0


def points_on_objects(points: np.ndarray | None, boxes: np.ndarray) -> np.ndarray:
    """(M,) number of points inside each (M, 7) box; all -1 without points (not counted, not zero)."""
    if points is None:
        return np.full(len(boxes), -1, dtype=np.int64)
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be (N, >= 3), got shape {points.shape}")
    inside = points_in_boxes(torch.from_numpy(np.ascontiguousarray(points[:, :3])), torch.from_numpy(boxes))
    return inside.sum(0).numpy().astype(np.int64)


def crowded(boxes: np.ndarray, distance: float = CROWDED_DISTANCE) -> np.ndarray:
    """(M,) True where another box's BEV centre is within `distance` of this box's."""
    gap = np.linalg.norm(boxes[:, None, :2] - boxes[None, :, :2], axis=-1)  # (M, M)
    np.fill_diagonal(gap, np.inf)
    return (gap <= distance).any(1)


def match_frame(frame: LabelledFrame, detections: Detections, points: np.ndarray | None = None) -> FrameMatch:
    """Compare one frame's detections with its labels (see the module docstring for the rules).

    points: the frame's (N, >= 3) cloud in the labels' LiDAR frame, to count the points on each object; without
    it object_points is -1 and summarize leaves the points table out.
    """
    boxes, _, names, difficulty = ground_truth_from_annotations(frame.labels, frame.calib, detections.class_names)
    det_names = np.asarray(detections.names, dtype=str)
    boxes64 = np.asarray(boxes, np.float64).reshape(-1, 7)
    iou = bev_iou(torch.from_numpy(boxes64),
                  torch.from_numpy(np.asarray(detections.boxes, np.float64).reshape(-1, 7))).numpy()  # (M, N)
    n_obj, n_det = iou.shape
    same_class = names[:, None] == det_names[None, :]
    best_same = np.where(same_class, iou, 0.0).max(1, initial=0.0)
    scores = np.asarray(detections.scores, dtype=np.float64)
    overlap_at = same_class[:, :, None] & (iou[:, :, None] >= np.asarray(RECALL_IOUS)[None, None, :])  # (M, N, J)
    found_score = np.where(overlap_at, scores[None, :, None], -np.inf).max(1, initial=-np.inf)
    best_any = iou.max(1, initial=0.0)
    heading_error = np.full(n_obj, np.nan)
    if n_det:
        same_iou = np.where(same_class, iou, 0.0)
        nearest = same_iou.argmax(1)
        checked = same_iou[np.arange(n_obj), nearest] >= HEADING_IOU
        turn = np.asarray(detections.boxes, np.float64).reshape(-1, 7)[nearest, 6] - np.asarray(boxes)[:, 6]
        heading_error[checked] = np.abs(normalize_yaw_np(turn[checked]))
    detected_as = np.full(n_obj, NONE, dtype=object)
    if n_det:
        hit = best_any >= MATCH_IOU
        detected_as[hit] = det_names[iou.argmax(1)[hit]]

    det_boxes = np.asarray(detections.boxes, np.float64).reshape(-1, 7)
    det_rows = detections_as_labels(detections, frame.calib, frame.image_shape)
    height = np.trunc(np.abs(det_rows.bbox[:, 3] - det_rows.bbox[:, 1]))  # the devkit keeps it as an int
    in_view = boxes_in_image(det_rows.bbox)
    scored = in_view & (height >= MIN_SCORED_HEIGHT)
    overlaps_object = iou.max(0, initial=0.0) >= MATCH_IOU
    dont_care = frame.labels.select(frame.labels.names == DONT_CARE)
    covered = _dont_care_covered(det_rows.bbox, det_names, dont_care.bbox)
    return FrameMatch(object_names=names.astype(str), object_scored=difficulty >= 0,
                      object_range=np.hypot(boxes[:, 0], boxes[:, 1]).astype(np.float64),
                      object_points=points_on_objects(points, boxes64), object_crowded=crowded(boxes64),
                      best_same_class_iou=best_same, found_score=found_score, detected_as=np.asarray(detected_as, dtype=str),
                      heading_error=heading_error,
                      detection_names=det_names, detection_in_view=in_view, detection_scored=scored,
                      false_positive=scored & ~overlaps_object & ~covered,
                      detection_centre_in_image=centres_in_image(det_rows.location, det_rows.dimensions, frame.calib,
                                                                 frame.image_shape),
                      detection_rows=det_rows, detection_boxes=det_boxes, detection_scores=scores,
                      detection_points=points_on_objects(points, det_boxes))


def _ratio(found: int, total: int) -> float | None:
    return found / total if total else None


def _cell(found: int, total: int) -> dict:
    return {"found": found, "total": total, "recall": _ratio(found, total)}


def _band_index(values: np.ndarray, bands: tuple) -> np.ndarray:
    """Index of each value's [lo, hi) band (bands contiguous, ascending)."""
    return np.searchsorted(np.array([hi for _, hi in bands[:-1]]), values, side="right")


def _by_band(names: np.ndarray, scored: np.ndarray, best: np.ndarray, band: np.ndarray,
             band_names: tuple[str, ...], class_names: tuple[str, ...]) -> dict:
    """{iou: {class: {"all": cell, band name: cell}}}, a cell being found / total / recall of the scored objects."""
    table: dict = {}
    for iou in RECALL_IOUS:
        per_class = {}
        for cls in class_names:
            counted = scored & (names == cls)
            found = counted & (best >= iou)
            totals = np.bincount(band[counted], minlength=len(band_names))
            hits = np.bincount(band[found], minlength=len(band_names))
            per_class[cls] = {"all": _cell(int(found.sum()), int(counted.sum())),
                              **{name: _cell(int(hits[b]), int(totals[b])) for b, name in enumerate(band_names)}}
        table[f"{iou:g}"] = per_class
    return table


def _concat(matches: list[FrameMatch], field: str, empty: np.ndarray) -> np.ndarray:
    return np.concatenate([getattr(m, field) for m in matches]) if matches else empty


def _recall_table(matches: list[FrameMatch], class_names: tuple[str, ...]) -> dict:
    names = _concat(matches, "object_names", np.zeros(0, dtype=str))
    scored = _concat(matches, "object_scored", np.zeros(0, dtype=bool))
    best = _concat(matches, "best_same_class_iou", np.zeros(0))
    points = _concat(matches, "object_points", np.zeros(0, dtype=np.int64))
    crowd = _concat(matches, "object_crowded", np.zeros(0, dtype=bool))

    def by(band: np.ndarray, band_names: tuple[str, ...]) -> dict:
        return _by_band(names, scored, best, band, band_names, class_names)

    rng = _band_index(_concat(matches, "object_range", np.zeros(0)), RANGE_BANDS)
    not_scored = {cls: int(((names == cls) & ~scored).sum()) for cls in class_names}
    # a frame matched without its points has no counts: no table rather than a wrong one
    by_points = by(_band_index(points, POINT_BANDS), POINT_BAND_NAMES) if (points >= 0).all() else None
    return {"iou_thresholds": list(RECALL_IOUS), "range_bands": list(BAND_NAMES), "by_iou": by(rng, BAND_NAMES),
            "labelled_but_not_scored": not_scored,
            "point_bands": list(POINT_BAND_NAMES), "by_points": by_points,
            "crowding": list(CROWDING_NAMES), "crowded_distance": CROWDED_DISTANCE,
            "by_crowding": by(np.where(crowd, 0, 1), CROWDING_NAMES)}


def _positions(values: np.ndarray, vocabulary: list[str]) -> np.ndarray:
    """Index of each value in vocabulary (every value must be in it); a lookup per distinct value, not per row."""
    distinct, inverse = np.unique(values, return_inverse=True)
    lookup = np.array([vocabulary.index(v) for v in distinct.tolist()], dtype=np.int64)
    return lookup[inverse] if len(values) else np.zeros(0, dtype=np.int64)


def _confusion(matches: list[FrameMatch], class_names: tuple[str, ...]) -> dict:
    names = np.concatenate([m.object_names[m.object_scored] for m in matches]) if matches else np.zeros(0, str)
    detected = np.concatenate([m.detected_as[m.object_scored] for m in matches]) if matches else np.zeros(0, str)
    present = set(names.tolist())
    rows = [c for c in class_names if c in present] + sorted(present - set(class_names))
    columns = list(class_names) + [NONE]
    cells = _positions(names, rows) * len(columns) + _positions(detected, columns)
    counts = np.bincount(cells, minlength=len(rows) * len(columns)).reshape(len(rows), len(columns))
    return {"rows": rows, "columns": columns, "counts": counts.tolist(), "iou": MATCH_IOU}


def _headings(matches: list[FrameMatch], class_names: tuple[str, ...]) -> dict:
    names = np.concatenate([m.object_names[m.object_scored] for m in matches]) if matches else np.zeros(0, str)
    error = np.concatenate([m.heading_error[m.object_scored] for m in matches]) if matches else np.zeros(0)
    per_class = {}
    for cls in class_names:
        e = error[(names == cls) & np.isfinite(error)]
        per_class[cls] = {"found": int(len(e)), "turned_over_90": int((e > np.pi / 2).sum()),
                          "median_error_deg": float(np.degrees(np.median(e))) if len(e) else None}
    return {"iou": HEADING_IOU, "by_class": per_class}


def summarize(frames: list[LabelledFrame], matches: list[FrameMatch], class_names: tuple[str, ...]) -> dict:
    """Recall, false positives, confusions and detection counts over all frames (JSON-ready)."""
    n = len(frames)
    det_total = np.array([len(m.detection_names) for m in matches], dtype=np.int64)
    det_view = np.array([int(m.detection_in_view.sum()) for m in matches], dtype=np.int64)
    det_scored = np.array([int(m.detection_scored.sum()) for m in matches], dtype=np.int64)
    fp = np.array([int(m.false_positive.sum()) for m in matches], dtype=np.int64)
    fp_names = np.concatenate([m.detection_names[m.false_positive] for m in matches]) if matches else np.zeros(0, str)
    fp_beside = sum(int((m.false_positive & ~m.detection_centre_in_image).sum()) for m in matches)
    return {
        "frames": n,
        "recall": _recall_table(matches, class_names),
        "false_positives": {"total": int(fp.sum()), "per_frame": float(fp.sum()) / n if n else None,
                            "by_class": {c: int((fp_names == c).sum()) for c in class_names}, "iou": MATCH_IOU,
                            "centre_outside_image": fp_beside},
        "confusion": _confusion(matches, class_names),
        "heading": _headings(matches, class_names),
        "detections": {"total": int(det_total.sum()), "per_frame": float(det_total.sum()) / n if n else None,
                       "in_camera_view_total": int(det_view.sum()),
                       "in_camera_view_per_frame": float(det_view.sum()) / n if n else None,
                       "scored_total": int(det_scored.sum()),
                       "scored_per_frame": float(det_scored.sum()) / n if n else None},
        "per_frame": [{"frame": f.frame_id, "detections": int(a), "in_camera_view": int(v),
                       "scored_detections": int(b), "false_positives": int(c),
                       "false_positive_boxes": false_positive_boxes(m)}
                      for f, m, a, v, b, c in zip(frames, matches, det_total, det_view, det_scored, fp)],
    }


def false_positive_boxes(match: FrameMatch) -> list[dict]:
    """The frame's false positives, strongest first: class, score, LiDAR-frame box, BEV range, points inside
    (-1: not counted) and whether the box centre is in the image. Where to look in the scan, one row each."""
    idx = np.flatnonzero(match.false_positive)
    idx = idx[np.argsort(-match.detection_scores[idx], kind="stable")]
    boxes = match.detection_boxes
    return [{"class": str(match.detection_names[i]), "score": round(float(match.detection_scores[i]), 4),
             "box": [round(float(v), 3) for v in boxes[i]],
             "range": round(float(np.hypot(boxes[i, 0], boxes[i, 1])), 2),
             "points": int(match.detection_points[i]), "centre_in_image": bool(match.detection_centre_in_image[i])}
            for i in idx]


# ------------------------------------------------------------------------------------------- AP ceiling
def perfect_detections(labels: KittiObjects, score: float = PERFECT_SCORE) -> KittiObjects:
    """Every labelled object of a frame (DontCare rows left out) as a detection with the given score."""
    objects = labels.select(labels.names != DONT_CARE)
    return dataclasses.replace(objects, score=np.full(len(objects), score, dtype=np.float64))


def scored_object_counts(label_frames: list[KittiObjects], classes: tuple[str, ...]) -> dict[str, list[int]]:
    """{class: [easy, moderate, hard]}: the objects the devkit counts at each difficulty (the levels nest)."""
    names = np.concatenate([objs.names for objs in label_frames]) if label_frames else np.zeros(0, dtype=str)
    levels = np.concatenate([difficulty_levels(objs) for objs in label_frames]) if label_frames else np.zeros(0, int)
    return {cls: [int(((names == cls) & (levels >= 0) & (levels <= d)).sum()) for d in range(len(DIFFICULTIES))]
            for cls in classes}


def ap_ceiling(label_frames: list[KittiObjects], classes: tuple[str, ...]) -> dict:
    """The KITTI AP (evaluate's dict) of perfect detections on these frames: the most any detector can score."""
    return evaluate(label_frames, [perfect_detections(objs) for objs in label_frames], classes)


def ap_below_ceiling_min(ceiling: dict, metrics: tuple[str, ...]) -> dict[str, list[str]]:
    """{class: [difficulties]} whose ceiling is below AP_CEILING_MIN for any of the metrics."""
    low = {cls: [d for i, d in enumerate(DIFFICULTIES) if min(entry[m][i] for m in metrics) < AP_CEILING_MIN]
           for cls, entry in ceiling.items()}
    return {cls: ds for cls, ds in low.items() if ds}


__all__ = ["RANGE_BANDS", "RECALL_IOUS", "MATCH_IOU", "BAND_NAMES", "POINT_BANDS", "POINT_BAND_NAMES",
           "CROWDED_DISTANCE", "CROWDING_NAMES", "LabelledFrame", "FrameMatch", "points_on_objects", "crowded",
           "detections_as_labels", "match_frame", "summarize", "AP_CEILING_MIN", "perfect_detections",
           "scored_object_counts", "ap_ceiling", "ap_below_ceiling_min"]
