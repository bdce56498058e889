"""Reproduction script (docs/results/release_scoring/README.md): how much recall a bundle keeps at a fixed budget of
simulated val false positives, under two inference-side changes that need no training:

  --flips y | x | y,x,yx   test-time flips: the scan is also run mirrored (y -> -y, x -> -x or both), each extra
                           pass's class and IoU maps are flipped back onto the original grid and the probabilities
                           averaged with the original pass (boxes and directions stay the original pass's);
  --gate MODE:T1,T2,T3:A1,A2,A3   the IoU gate (clean_ros.inference.postprocess_settings.IoUGateConfig).

    PYTHONPATH=. OMP_NUM_THREADS=1 python docs/results/release_scoring/operating_point.py \
        runs/release_default/stages/data/dataset --split val [--flips y] [--gate soft:0.5,0.2,0.2:0.5,0.5,0.5] \
        --save S.npz

Every detection down to --floor (0.05, the thresholds stage's floor) is matched with the real-data check's rule
(training/detection_diagnostics.match_frame); the scores of the false positives and each scored object's best
same-class score at BEV IoU 0.5 are kept, per class. Printed: per class and total budget, the threshold
training/compression/stage_thresholds.pick_threshold would give (each class on its own, every class probed at the
floor: the release's stage also re-probes for class-agnostic NMS, so its thresholds differ in the third digit) with
the false positives per frame and the recall it keeps. `--thresholds C,P,Y` also prints the false positives and found
objects at those thresholds (used on the real frames, with the thresholds chosen on val). Inference only: the flips
pass runs the dense part on both scans (twice the inference time), so it is a measurement, not a runtime option.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from clean_ros.cloud.kitti import split_frame_ids
from clean_ros.inference.pipeline import Pipeline
from training.compression.stage_thresholds import fp_per_frame, pick_threshold, recall
from training.data.kitti_dataset import read_velodyne
from training.detection_diagnostics import RECALL_IOUS, LabelledFrame, match_frame

FLIP_DIMS = {"y": (1, [2]), "x": (0, [3])}  # point column negated, map dims flipped back ((B, C, H=y, W=x) maps)
FUSED_MAPS = ("cls", "iou")  # maps whose probabilities are averaged; the rest are the original pass's


def fused_maps(pipe: Pipeline, points: np.ndarray, flips: list[str]):
    voxels, _ = pipe.preprocess(points)
    maps, bev = pipe.raw_outputs(voxels)
    if not flips:
        return maps, bev
    names = pipe.detector.head.output_names
    passes = [dict(zip(names, maps))]
    for flip in flips:
        mirrored = points.copy()
        dims = []
        for axis in flip:
            column, map_dims = FLIP_DIMS[axis]
            mirrored[:, column] *= -1
            dims += map_dims
        m, _ = pipe.raw_outputs(pipe.preprocess(mirrored)[0])
        passes.append({k: torch.flip(t, dims) for k, t in zip(names, m)})
    out = []
    for name, original in zip(names, maps):
        if name in FUSED_MAPS:
            prob = torch.stack([torch.sigmoid(p[name]) for p in passes]).mean(0).clamp(1e-6, 1 - 1e-6)
            out.append(torch.log(prob) - torch.log1p(-prob))
        else:
            out.append(original)
    return tuple(out), bev


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path, help="KITTI root (with ImageSets/) or split folder")
    ap.add_argument("--split", help="frames of ImageSets/SPLIT.txt (default: every velodyne file)")
    ap.add_argument("--bundle", default="models/default")
    ap.add_argument("--flips", default="", help="comma-separated: y, x, yx")
    ap.add_argument("--gate", default="", help="MODE:T1,T2,T3:A1,A2,A3")
    ap.add_argument("--floor", type=float, default=0.05)
    ap.add_argument("--budgets", default="1.3,0.9,0.6", help="total false positives per frame, split evenly")
    ap.add_argument("--thresholds", help="also count at these per-class thresholds")
    ap.add_argument("--save", type=Path, help="write the pooled scores here (.npz)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    split_dir, ids, _ = split_frame_ids(args.dataset, args.split)
    pipe = Pipeline.from_bundle(args.bundle, backend="torch")
    names = pipe.class_names
    pipe.update_postprocess(score_thresholds=args.floor)
    pipe.set_auto_intensity(True)
    if args.gate:
        mode, thr, alp = args.gate.split(":")
        pipe.update_postprocess(iou_gate_mode=mode, iou_gate_thresholds=[float(v) for v in thr.split(",")],
                                iou_gate_alphas=[float(v) for v in alp.split(",")])
    flips = [f for f in args.flips.split(",") if f]
    column = RECALL_IOUS.index(0.5)
    fp = {c: [] for c in names}
    found = {c: [] for c in names}
    fp_range = {c: [] for c in names}  # BEV distance of each false positive's centre / of each scored object
    found_range = {c: [] for c in names}
    start = time.time()
    for frame_id in ids:
        points = read_velodyne(split_dir / "velodyne" / f"{frame_id}.bin")
        frame = LabelledFrame.read(split_dir, frame_id)
        detections = pipe.postprocess(*fused_maps(pipe, points, flips))
        match = match_frame(frame, detections, points)
        scores = np.asarray(detections.scores, np.float32)
        det_range = np.hypot(match.detection_boxes[:, 0], match.detection_boxes[:, 1])
        for c in names:
            is_fp = match.false_positive & (match.detection_names == c)
            is_object = match.object_scored & (match.object_names == c)
            fp[c].append(scores[is_fp])
            fp_range[c].append(det_range[is_fp])
            found[c].append(match.found_score[is_object, column])
            found_range[c].append(match.object_range[is_object])
    fp, found, fp_range, found_range = ({c: np.concatenate(v) for c, v in d.items()}
                                        for d in (fp, found, fp_range, found_range))
    n = len(ids)
    out = {"bundle": args.bundle, "frames": n, "flips": flips, "gate": args.gate or "bundle's",
           "seconds_per_frame": round((time.time() - start) / n, 3), "budgets": {}}
    for budget in (float(b) for b in args.budgets.split(",")):
        rows = {}
        for c in names:
            t = pick_threshold(fp[c], n, budget / len(names), args.floor)
            rows[c] = {"threshold": t, "fp_per_frame": round(fp_per_frame(fp[c], t, n), 3),
                       "recall_bev50": recall(found[c], t), "objects": int(len(found[c]))}
        out["budgets"][str(budget)] = rows
    if args.thresholds:
        at = [float(v) for v in args.thresholds.split(",")]
        out["at_thresholds"] = {c: {"threshold": t, "false_positives": int((fp[c] >= np.float32(t)).sum()),
                                    "found": int((found[c] >= np.float32(t)).sum()), "objects": int(len(found[c]))}
                                for c, t in zip(names, at)}
    if args.save:
        np.savez(args.save, **{f"fp_{c}": v for c, v in fp.items()}, **{f"found_{c}": v for c, v in found.items()},
                 **{f"fp_range_{c}": v for c, v in fp_range.items()},
                 **{f"found_range_{c}": v for c, v in found_range.items()})
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
