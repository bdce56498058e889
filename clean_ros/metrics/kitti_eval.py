"""KITTI object evaluation (2D box, BEV, 3D; AOS) with the protocol of the official devkit.

Protocol (evaluate_object.cpp / evaluate_object_3d_offline.cpp of the KITTI object devkit, re-implemented here
in vectorised numpy):
- Per class, difficulty and metric, ground truth is *counted* (class, passes the difficulty filter), *ignored*
  (neighbouring class Van / Person_sitting, or the class but failing the filter) or *not considered*.
  GT height = y2 - y1 in pixels (as a double). Detections are *ignored* when their 2D height, truncated to an
  integer, is below the difficulty's minimum height - whatever their class -, *valid* when of the class,
  otherwise not considered. DontCare rows are "stuff" regions.
- Matching, frame by frame, ground truth in file order. Threshold pass: each GT takes the unassigned
  detection with the highest score among those overlapping > min overlap; the scores of true positives define
  the recall thresholds (getThresholds: 41 sample points, the devkit's float64 stepping and tie rule).
  PR pass, for each threshold: only detections scoring >= threshold take part; each GT takes the valid
  detection with the largest overlap, else the first overlapping ignored detection; pairs with an ignored GT or
  ignored detection are neither TP nor FP. FP = valid, active, unassigned detections not covered by a DontCare
  region (overlap w.r.t. the detection's own area > min overlap, computed with the metric's overlap function:
  in practice only 2D, since DontCare rows carry no 3D box and sit at -1000 m).
- Precision at each threshold, then interpolated as the maximum over the following points; AP R40 = mean of
  points 1..40, AP R11 = mean of points 0, 4, ..., 40, in percent. AOS (2D metric only) uses the orientation
  similarity (1 + cos(alpha_gt - alpha_det)) / 2 summed over true positives instead of the TP count.
- Overlaps: 2D IoU of pixel boxes; BEV IoU of (x, z, l, w, ry) rectangles in the camera x-z plane; 3D IoU =
  BEV intersection x overlap of the vertical extents [y - h, y] / union volume. The rotated-rectangle
  intersection comes from clean_ros.cloud.geometry (one implementation of polygon overlap in the project).

Instead of re-running the per-frame matching for every threshold in Python, all frames and all thresholds are
matched at once: the GT loop runs over "the k-th GT of every frame" (k up to the most GTs in one frame), with the
per-threshold assignment state held in a (thresholds x detections) array. Only detection/GT pairs whose overlap
exceeds the class's minimum take part, which is exactly the set the devkit's conditions can select.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clean_ros.cloud.geometry import bev_intersection_aligned
from clean_ros.cloud.kitti import KittiObjects

CLASSES = ("Car", "Pedestrian", "Cyclist")
MIN_OVERLAP = {"car": 0.7, "pedestrian": 0.5, "cyclist": 0.5}  # same for 2D, BEV and 3D
NEIGHBOUR_CLASS = {"car": "van", "pedestrian": "person_sitting"}
DIFFICULTIES = ("easy", "moderate", "hard")
MIN_HEIGHT = (40, 25, 25)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
METRICS = ("bbox", "bev", "3d")
N_SAMPLE_PTS = 41
_NO_DETECTION = -10000000.0  # the devkit's initial "best score"; scores at or below it never match


# --------------------------------------------------------------------------- flattened frames
@dataclass
class _Rows:
    """All frames' rows concatenated (frame-major, file order within a frame)."""

    frame: np.ndarray
    names: np.ndarray  # lower-case
    bbox: np.ndarray
    truncation: np.ndarray
    occlusion: np.ndarray
    alpha: np.ndarray
    dims: np.ndarray  # h, w, l
    loc: np.ndarray
    ry: np.ndarray
    score: np.ndarray

    @classmethod
    def concat(cls, annos: list[KittiObjects], with_score: bool) -> "_Rows":
        counts = np.array([len(a) for a in annos], dtype=np.int64)
        if with_score:
            for i, a in enumerate(annos):
                if len(a) and a.score is None:
                    raise ValueError(f"detections of frame {i} have no scores")

        def cat(get, shape, dtype=np.float64):
            parts = [np.asarray(get(a), dtype=dtype).reshape((len(a),) + shape) for a in annos if len(a)]
            return np.concatenate(parts) if parts else np.zeros((0,) + shape, dtype=dtype)

        return cls(
            frame=np.repeat(np.arange(len(annos)), counts),
            names=np.char.lower(cat(lambda a: a.names, (), dtype=str)) if counts.sum() else np.zeros(0, dtype=str),
            bbox=cat(lambda a: a.bbox, (4,)),
            truncation=cat(lambda a: a.truncation, ()),
            occlusion=cat(lambda a: a.occlusion, (), dtype=np.int64),
            alpha=cat(lambda a: a.alpha, ()),
            dims=cat(lambda a: a.dimensions, (3,)),
            loc=cat(lambda a: a.location, (3,)),
            ry=cat(lambda a: a.rotation_y, ()),
            score=cat(lambda a: a.score if with_score else np.zeros(len(a)), ()),
        )


def _pairs_in_frames(frame_a: np.ndarray, idx_a: np.ndarray, frame_b: np.ndarray, idx_b: np.ndarray,
                     n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (a, b) pair of the same frame, ordered by (a, b); idx_* are row indices sorted by frame."""
    count_a = np.bincount(frame_a, minlength=n_frames)
    count_b = np.bincount(frame_b, minlength=n_frames)
    counts = count_a * count_b
    pair_frame = np.repeat(np.arange(n_frames), counts)
    k = np.arange(counts.sum()) - (np.cumsum(counts) - counts)[pair_frame]
    start_a = np.cumsum(count_a) - count_a
    start_b = np.cumsum(count_b) - count_b
    nb = count_b[pair_frame]
    return idx_a[start_a[pair_frame] + k // np.maximum(nb, 1)], idx_b[start_b[pair_frame] + k % np.maximum(nb, 1)]


# --------------------------------------------------------------------------- overlaps (detection d, ground truth g)
def image_overlap(d_box: np.ndarray, g_box: np.ndarray, own_area: bool = False) -> np.ndarray:
    """2D IoU of (x1, y1, x2, y2) pixel boxes; own_area=True: intersection / area of d (DontCare test)."""
    w = np.minimum(d_box[:, 2], g_box[:, 2]) - np.maximum(d_box[:, 0], g_box[:, 0])
    h = np.minimum(d_box[:, 3], g_box[:, 3]) - np.maximum(d_box[:, 1], g_box[:, 1])
    inter = w * h
    d_area = (d_box[:, 2] - d_box[:, 0]) * (d_box[:, 3] - d_box[:, 1])
    g_area = (g_box[:, 2] - g_box[:, 0]) * (g_box[:, 3] - g_box[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        overlap = inter / d_area if own_area else inter / (d_area + g_area - inter)
    return np.where((w <= 0) | (h <= 0), 0.0, overlap)


def camera_ground_boxes(loc: np.ndarray, dims: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Camera boxes -> (N, 7) boxes whose BEV footprint (x, y) is the camera x-z rectangle (x, z, l, w, ry)."""
    n = len(loc)
    return np.stack([loc[:, 0], loc[:, 2], np.zeros(n), dims[:, 2], dims[:, 1], np.ones(n), -ry], axis=1)


def _ground_intersection(d: _Rows, di: np.ndarray, g: _Rows, gi: np.ndarray) -> np.ndarray:
    a = torch.from_numpy(camera_ground_boxes(d.loc[di], d.dims[di], d.ry[di]))
    b = torch.from_numpy(camera_ground_boxes(g.loc[gi], g.dims[gi], g.ry[gi]))
    return bev_intersection_aligned(a, b).numpy()


def ground_overlap(d: _Rows, di: np.ndarray, g: _Rows, gi: np.ndarray, own_area: bool = False) -> np.ndarray:
    """BEV overlap of detections d[di] and ground truth g[gi] (IoU, or intersection / detection area)."""
    inter = _ground_intersection(d, di, g, gi)
    d_area = np.abs(d.dims[di, 2] * d.dims[di, 1])
    g_area = np.abs(g.dims[gi, 2] * g.dims[gi, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / d_area if own_area else inter / (d_area + g_area - inter)


def box3d_overlap(d: _Rows, di: np.ndarray, g: _Rows, gi: np.ndarray, own_area: bool = False) -> np.ndarray:
    """3D overlap: BEV intersection x shared vertical extent ([y - h, y], y down) / union (or detection) volume."""
    inter = _ground_intersection(d, di, g, gi)
    dy, gy, dh, gh = d.loc[di, 1], g.loc[gi, 1], d.dims[di, 0], g.dims[gi, 0]
    inter_vol = inter * np.maximum(0.0, np.minimum(dy, gy) - np.maximum(dy - dh, gy - gh))
    d_vol = dh * d.dims[di, 2] * d.dims[di, 1]
    g_vol = gh * g.dims[gi, 2] * g.dims[gi, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter_vol / d_vol if own_area else inter_vol / (d_vol + g_vol - inter_vol)


def _overlap(metric: str, d: _Rows, di: np.ndarray, g: _Rows, gi: np.ndarray, own_area: bool = False) -> np.ndarray:
    if len(di) == 0:
        return np.zeros(0)
    if metric == "bbox":
        return image_overlap(d.bbox[di], g.bbox[gi], own_area)
    if metric == "bev":
        return ground_overlap(d, di, g, gi, own_area)
    return box3d_overlap(d, di, g, gi, own_area)


# --------------------------------------------------------------------------- devkit arithmetic
def recall_thresholds(scores: np.ndarray, n_gt: int) -> list[float]:
    """The devkit's getThresholds: scores of TPs sampled at ~41 recall steps, with its float64 stepping."""
    v = sorted((float(s) for s in scores), reverse=True)
    thresholds: list[float] = []
    current_recall = 0.0
    step = 1.0 / (N_SAMPLE_PTS - 1.0)
    n = len(v)
    for i in range(n):
        l_recall = (i + 1) / n_gt
        r_recall = (i + 2) / n_gt if i < n - 1 else l_recall
        # skip when the next detection's recall is closer to the current sample point (strict comparison)
        if (r_recall - current_recall) < (current_recall - l_recall) and i < n - 1:
            continue
        thresholds.append(v[i])
        current_recall += step
    return thresholds[:N_SAMPLE_PTS]


def _suffix_max(values: list[float]) -> list[float]:
    """precision[i] = *max_element(precision[i:]) as in C++ (first largest by operator<, NaN-propagating alike)."""
    out = list(values)
    for i in range(len(values)):
        largest = values[i]
        for x in values[i + 1:]:
            if largest < x:
                largest = x
        out[i] = largest
    return out


def ap_r40(precision: list[float]) -> float:
    return sum(precision[1:N_SAMPLE_PTS]) / 40.0 * 100.0


def ap_r11(precision: list[float]) -> float:
    return sum(precision[0:N_SAMPLE_PTS:4]) / 11.0 * 100.0


# --------------------------------------------------------------------------- matching
def _greedy_assign(pair_gt: np.ndarray, pair_det: np.ndarray, gt_frame: np.ndarray, priority: np.ndarray,
                   n_det: int) -> np.ndarray:
    """The devkit's sequential GT loop, for all frames and all thresholds (rows of priority) at once.

    Pairs are (gt, det) candidates sorted by (gt, det); priority (T, P) ranks them (-inf: may not be chosen).
    Each GT, in file order within its frame, takes the first pair of maximal priority among detections not yet
    taken. Returns the chosen pair index per (threshold, pair_gt value) as (T, n_gt_rows) with -1 = none.
    """
    n_thr = priority.shape[0]
    n_gt_rows = int(pair_gt.max()) + 1 if len(pair_gt) else 0
    winners = np.full((n_thr, n_gt_rows), -1, dtype=np.int64)
    if len(pair_gt) == 0:
        return winners
    gts = np.unique(pair_gt)  # sorted = frame-major, file order
    frames = gt_frame[gts]
    slot_of_gt = np.arange(len(gts)) - np.searchsorted(frames, frames, side="left")
    slot = np.zeros(n_gt_rows, dtype=np.int64)
    slot[gts] = slot_of_gt
    order = np.argsort(slot[pair_gt], kind="stable")  # pairs of the k-th GT of every frame together
    pair_gt, pair_det, priority = pair_gt[order], pair_det[order], priority[:, order]
    pair_slot = slot[pair_gt]
    bounds = np.searchsorted(pair_slot, np.arange(pair_slot[-1] + 2), side="left")
    taken = np.zeros((n_thr, n_det), dtype=bool)
    for s0, s1 in zip(bounds[:-1], bounds[1:]):
        if s1 <= s0:
            continue
        gt_block, det_block = pair_gt[s0:s1], pair_det[s0:s1]
        prio = np.where(taken[:, det_block], -np.inf, priority[:, s0:s1])
        starts = np.flatnonzero(np.r_[True, gt_block[1:] != gt_block[:-1]])
        lengths = np.diff(np.r_[starts, len(gt_block)])
        best = np.maximum.reduceat(prio, starts, axis=1)
        is_best = (prio == np.repeat(best, lengths, axis=1)) & (prio > -np.inf)
        position = np.where(is_best, np.arange(s1 - s0), s1 - s0)
        first = np.minimum.reduceat(position, starts, axis=1)  # (T, GTs in block)
        t_idx, g_idx = np.nonzero(first < s1 - s0)
        chosen = first[t_idx, g_idx]
        # one GT per frame per block, detections belong to one frame: these writes never collide
        taken[t_idx, det_block[chosen]] = True
        winners[t_idx, gt_block[starts[g_idx]]] = order[s0 + chosen]
    return winners


@dataclass
class _ClassMetricPairs:
    """Candidate (gt, det) pairs of one class and metric whose overlap exceeds the class minimum."""

    gt: np.ndarray
    det: np.ndarray
    overlap: np.ndarray
    stuff_covered: np.ndarray  # (n_det_rows,) bool: detection covered by a DontCare region


def _evaluate_one(gt: _Rows, dt: _Rows, cls: str, pairs: _ClassMetricPairs, difficulty: int,
                  compute_aos: bool) -> tuple[list[float], list[float] | None]:
    """Interpolated precision (and AOS) curves, 41 points, for one class / metric / difficulty."""
    neighbour = NEIGHBOUR_CLASS.get(cls)
    gt_height = gt.bbox[:, 3] - gt.bbox[:, 1]
    is_class = gt.names == cls
    hidden = ((gt.occlusion > MAX_OCCLUSION[difficulty]) | (gt.truncation > MAX_TRUNCATION[difficulty])
              | (gt_height < MIN_HEIGHT[difficulty]))
    ignored_gt = np.where(is_class & ~hidden, 0, np.where((gt.names == neighbour) | is_class, 1, -1))
    n_gt = int((ignored_gt == 0).sum())

    det_height = np.trunc(np.abs(dt.bbox[:, 1] - dt.bbox[:, 3]))  # the devkit stores it in an int32
    ignored_det = np.where(det_height < MIN_HEIGHT[difficulty], 1, np.where(dt.names == cls, 0, -1))

    keep = ignored_det[pairs.det] != -1
    pair_gt, pair_det, overlap = pairs.gt[keep], pairs.det[keep], pairs.overlap[keep]
    pair_score = dt.score[pair_det]
    n_det = len(dt.score)

    # threshold pass: highest score wins
    priority = np.where(pair_score > _NO_DETECTION, pair_score, -np.inf)[None, :]
    winners = _greedy_assign(pair_gt, pair_det, gt.frame, priority, n_det)[0]
    won = np.flatnonzero(winners >= 0)
    won_det = pair_det[winners[won]]
    tp = (ignored_gt[won] == 0) & (ignored_det[won_det] == 0)
    thresholds = recall_thresholds(dt.score[won_det[tp]], n_gt) if n_gt else []

    precision = [0.0] * N_SAMPLE_PTS
    aos = [0.0] * N_SAMPLE_PTS if compute_aos else None
    if thresholds:
        thr = np.asarray(thresholds)
        # PR pass: among active detections the valid one with the largest overlap, else the first ignored one
        base = np.where(ignored_det[pair_det] == 0, overlap, -1.0)
        priority = np.where(pair_score[None, :] >= thr[:, None], base[None, :], -np.inf)
        winners = _greedy_assign(pair_gt, pair_det, gt.frame, priority, n_det)
        t_idx, g_idx = np.nonzero(winners >= 0)
        w_det = pair_det[winners[t_idx, g_idx]]
        is_tp = (ignored_gt[g_idx] == 0) & (ignored_det[w_det] == 0)
        n_tp = np.bincount(t_idx[is_tp], minlength=len(thr))
        # FP: valid active detections, not assigned, not in a DontCare region
        counted = (ignored_det == 0) & ~pairs.stuff_covered
        counted_scores = np.sort(dt.score[counted])
        n_active = len(counted_scores) - np.searchsorted(counted_scores, thr, side="left")
        n_fp = n_active - np.bincount(t_idx[counted[w_det]], minlength=len(thr))
        with np.errstate(divide="ignore", invalid="ignore"):
            raw = (n_tp / (n_tp + n_fp).astype(np.float64)).tolist()
        precision[:len(raw)] = raw
        precision = _suffix_max(precision)
        if compute_aos:
            similarity = (1.0 + np.cos(gt.alpha[g_idx[is_tp]] - dt.alpha[w_det[is_tp]])) / 2.0
            total = np.bincount(t_idx[is_tp], weights=similarity, minlength=len(thr))
            with np.errstate(divide="ignore", invalid="ignore"):
                raw_aos = (total / (n_tp + n_fp)).tolist()
            aos[:len(raw_aos)] = raw_aos
            aos = _suffix_max(aos)
    return precision, aos


def _candidate_pairs(gt: _Rows, dt: _Rows, cls: str, metric: str, n_frames: int) -> _ClassMetricPairs:
    neighbour = NEIGHBOUR_CLASS.get(cls)
    gt_rows = np.flatnonzero((gt.names == cls) | (gt.names == neighbour))
    # detections of the class, or small enough to be "ignored" at some difficulty (the devkit lets those match)
    det_height = np.trunc(np.abs(dt.bbox[:, 1] - dt.bbox[:, 3]))
    det_rows = np.flatnonzero((dt.names == cls) | (det_height < max(MIN_HEIGHT)))
    gi, di = _pairs_in_frames(gt.frame[gt_rows], gt_rows, dt.frame[det_rows], det_rows, n_frames)
    overlap = _overlap(metric, dt, di, gt, gi)
    keep = overlap > MIN_OVERLAP[cls]
    # DontCare regions: only valid detections (of the class) are ever tested against them
    dc_rows = np.flatnonzero(gt.names == "dontcare")
    cls_rows = np.flatnonzero(dt.names == cls)
    dci, dcd = _pairs_in_frames(gt.frame[dc_rows], dc_rows, dt.frame[cls_rows], cls_rows, n_frames)
    covered = np.zeros(len(dt.score), dtype=bool)
    covered[dcd[_overlap(metric, dt, dcd, gt, dci, own_area=True) > MIN_OVERLAP[cls]]] = True
    return _ClassMetricPairs(gi[keep], di[keep], overlap[keep], covered)


# --------------------------------------------------------------------------- public API
def evaluate(gt_annos: list[KittiObjects], dt_annos: list[KittiObjects],
             classes: tuple[str, ...] = CLASSES) -> dict:
    """KITTI AP (R40 and R11, percent) per class: {"Car": {"3d_R40": [easy, moderate, hard], "bev_R40": ...,
    "bbox_R40": ..., "aos_R40": ..., "3d_R11": ..., "bev_R11": ..., "bbox_R11": ..., "aos_R11": ...}, ...}.

    gt_annos[i] and dt_annos[i] are the label rows of frame i (detections with scores). AOS is None when a
    detection has the devkit's "no orientation" alpha of -10.
    """
    if len(gt_annos) != len(dt_annos):
        raise ValueError(f"{len(gt_annos)} ground-truth frames but {len(dt_annos)} detection frames")
    for name in classes:
        if name.lower() not in MIN_OVERLAP:
            raise ValueError(f"unknown class {name!r}; KITTI evaluation knows {', '.join(CLASSES)}")
    gt = _Rows.concat(gt_annos, with_score=False)
    dt = _Rows.concat(dt_annos, with_score=True)
    compute_aos = not bool((dt.alpha == -10).any())
    n_frames = len(gt_annos)
    results: dict = {}
    for name in classes:
        cls = name.lower()
        entry: dict = {}
        for metric in METRICS:
            pairs = _candidate_pairs(gt, dt, cls, metric, n_frames)
            curves = [_evaluate_one(gt, dt, cls, pairs, d, compute_aos and metric == "bbox") for d in range(3)]
            entry[f"{metric}_R40"] = [ap_r40(p) for p, _ in curves]
            entry[f"{metric}_R11"] = [ap_r11(p) for p, _ in curves]
            if metric == "bbox":
                entry["aos_R40"] = [ap_r40(a) for _, a in curves] if compute_aos else None
                entry["aos_R11"] = [ap_r11(a) for _, a in curves] if compute_aos else None
        results[name] = {key: entry[key] for key in ("3d_R40", "bev_R40", "bbox_R40", "aos_R40",
                                                     "3d_R11", "bev_R11", "bbox_R11", "aos_R11")}
    return results


def mean_ap_3d_moderate(results: dict) -> float:
    """The KD papers' "mAP": mean over Car, Pedestrian, Cyclist of the moderate 3D AP (R40)."""
    missing = [c for c in CLASSES if c not in results]
    if missing:
        raise KeyError(f"results lack {', '.join(missing)}")
    return float(np.mean([results[c]["3d_R40"][1] for c in CLASSES]))


def format_results(results: dict) -> str:
    """The usual text table: one block per class, rows per metric, columns easy / moderate / hard."""
    lines = []
    for name, entry in results.items():
        overlap = MIN_OVERLAP[name.lower()]
        lines.append(f"{name} AP@{overlap:.2f} (R40 | R11)     easy  moderate    hard |   easy  moderate    hard")
        for metric in ("bbox", "bev", "3d", "aos"):
            r40, r11 = entry[f"{metric}_R40"], entry[f"{metric}_R11"]
            if r40 is None:
                lines.append(f"  {metric:<5}  (not computed: a detection has alpha = -10)")
                continue
            lines.append(f"  {metric:<5}                 {r40[0]:7.2f} {r40[1]:9.2f} {r40[2]:7.2f} |"
                         f" {r11[0]:7.2f} {r11[1]:9.2f} {r11[2]:7.2f}")
    if all(c in results for c in CLASSES):
        lines.append(f"mAP (3D R40 moderate, Car/Ped/Cyc): {mean_ap_3d_moderate(results):.2f}")
    return "\n".join(lines)


__all__ = ["CLASSES", "evaluate", "mean_ap_3d_moderate", "format_results", "recall_thresholds", "image_overlap",
           "ground_overlap", "box3d_overlap", "camera_ground_boxes", "ap_r40", "ap_r11"]
