"""Benchmark: KITTI evaluation of a val-sized set (3,769 frames) of synthetic predictions, and BEV IoU / NMS
on 4,096 boxes.

    python bench/bench_eval.py [--frames 3769] [--boxes 4096] [--seed 0]

Synthetic data: every frame gets ~7 ground-truth rows (cars, pedestrians, cyclists, vans, other classes, DontCare),
with 2D boxes from a pinhole projection, random truncation/occlusion; predictions are noisy copies (some missed,
some duplicated, some mislabelled) plus false positives, with scores loosely tied to quality.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clean_ros.cloud.geometry import bev_iou, nms_bev  # noqa: E402
from clean_ros.cloud.kitti import KittiObjects  # noqa: E402
from clean_ros.metrics.kitti_eval import evaluate, format_results  # noqa: E402
from suite import percentile, sample_call  # noqa: E402  (bench/suite.py, beside this script)

SIZES = {"Car": (1.53, 1.63, 3.88), "Van": (2.2, 1.9, 5.0), "Pedestrian": (1.76, 0.66, 0.84),
         "Cyclist": (1.74, 0.6, 1.76), "Truck": (3.2, 2.5, 10.0), "Person_sitting": (1.2, 0.6, 0.8)}
NAMES = list(SIZES)
PROBS = np.array([0.55, 0.07, 0.18, 0.1, 0.05, 0.05])
FOCAL, CX, HORIZON = 720.0, 620.0, 180.0


def _objects(names, trunc, occ, alpha, bbox, dims, loc, ry, score=None) -> KittiObjects:
    return KittiObjects(np.asarray(names, dtype="<U16"), np.asarray(trunc, float), np.asarray(occ, np.int64),
                        np.asarray(alpha, float), np.asarray(bbox, float).reshape(-1, 4),
                        np.asarray(dims, float).reshape(-1, 3), np.asarray(loc, float).reshape(-1, 3),
                        np.asarray(ry, float), None if score is None else np.asarray(score, float))


def _image_boxes(loc: np.ndarray, dims: np.ndarray) -> np.ndarray:
    x, y, z = loc[:, 0], loc[:, 1], loc[:, 2]
    half_w = FOCAL * np.maximum(dims[:, 1], dims[:, 2]) / z / 2
    bottom = np.minimum(374.0, HORIZON + FOCAL * y / z)
    return np.stack([np.clip(CX + FOCAL * x / z - half_w, 0, 1241), np.maximum(0, bottom - FOCAL * dims[:, 0] / z),
                     np.clip(CX + FOCAL * x / z + half_w, 0, 1241), bottom], 1)


def synthetic_frame(rng: np.random.Generator) -> tuple[KittiObjects, KittiObjects]:
    n = rng.poisson(6)
    names = np.array(NAMES)[rng.choice(len(NAMES), n, p=PROBS)]
    dims = np.array([SIZES[c] for c in names]).reshape(n, 3) * rng.uniform(0.9, 1.1, (n, 3))
    loc = np.stack([rng.uniform(-15, 15, n), 1.7 + rng.normal(0, 0.1, n), rng.uniform(5, 60, n)], 1)
    ry = rng.uniform(-math.pi, math.pi, n)
    alpha = ry - np.arctan2(loc[:, 0], loc[:, 2])
    bbox = _image_boxes(loc, dims)
    trunc = rng.choice([0.0, 0.0, 0.1, 0.2, 0.4, 0.6], n)
    occ = rng.choice([0, 0, 1, 1, 2, 3], n)
    n_dc = rng.poisson(1.5)
    dc_x = rng.uniform(0, 1100, n_dc)
    dc_box = np.stack([dc_x, rng.uniform(150, 200, n_dc), dc_x + rng.uniform(10, 100, n_dc), rng.uniform(200, 260, n_dc)], 1)
    gt = _objects(np.r_[names, ["DontCare"] * n_dc], np.r_[trunc, -np.ones(n_dc)], np.r_[occ, -np.ones(n_dc)],
                  np.r_[alpha, -10 * np.ones(n_dc)], np.r_[bbox, dc_box], np.r_[dims, -np.ones((n_dc, 3))],
                  np.r_[loc, -1000 * np.ones((n_dc, 3))], np.r_[ry, -10 * np.ones(n_dc)])

    found = rng.random(n) > 0.12
    dup = found & (rng.random(n) < 0.1)
    src = np.r_[np.flatnonzero(found), np.flatnonzero(dup)]
    m = len(src)
    quality = rng.uniform(0.0, 1.0, m)
    noise = 0.03 + 0.25 * (1 - quality)
    d_names = names[src].copy()
    d_names[d_names == "Van"] = np.where(rng.random((d_names == "Van").sum()) < 0.4, "Car", "Van")
    d_names[d_names == "Person_sitting"] = "Pedestrian"
    d_dims = dims[src] * np.exp(rng.normal(0, 1, (m, 3)) * noise[:, None] * 0.3)
    d_loc = loc[src] + rng.normal(0, 1, (m, 3)) * noise[:, None] * np.array([1.0, 0.3, 2.0])
    d_ry = ry[src] + rng.normal(0, 0.1, m) + np.where(rng.random(m) < 0.05, math.pi, 0)
    n_fp = rng.poisson(2)
    fp_names = np.array(["Car", "Pedestrian", "Cyclist"])[rng.choice(3, n_fp, p=[0.6, 0.25, 0.15])]
    fp_dims = np.array([SIZES[c] for c in fp_names]).reshape(n_fp, 3)
    fp_loc = np.stack([rng.uniform(-15, 15, n_fp), np.full(n_fp, 1.7), rng.uniform(5, 60, n_fp)], 1)
    all_loc, all_dims = np.r_[d_loc, fp_loc], np.r_[d_dims, fp_dims]
    all_ry = np.r_[d_ry, rng.uniform(-math.pi, math.pi, n_fp)]
    score = np.r_[0.3 + 0.7 * quality * rng.uniform(0.6, 1, m), rng.uniform(0.0, 0.7, n_fp)].round(4)
    det = _objects(np.r_[d_names, fp_names], -np.ones(m + n_fp), -np.ones(m + n_fp),
                   all_ry - np.arctan2(all_loc[:, 0], all_loc[:, 2]), _image_boxes(all_loc, all_dims), all_dims,
                   all_loc, all_ry, score)
    return gt, det


def synthetic_dataset(n_frames: int, seed: int) -> tuple[list[KittiObjects], list[KittiObjects]]:
    rng = np.random.default_rng(seed)
    frames = [synthetic_frame(rng) for _ in range(n_frames)]
    return [f[0] for f in frames], [f[1] for f in frames]


def bench_geometry(n_boxes: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    # detector-like output before NMS: clusters of overlapping car boxes around 200 objects in a 70 x 80 m area
    centres = torch.rand(200, 2, generator=g) * torch.tensor([70.0, 80.0]) - torch.tensor([0.0, 40.0])
    pick = torch.randint(0, 200, (n_boxes,), generator=g)
    boxes = torch.cat([centres[pick] + 0.4 * torch.randn(n_boxes, 2, generator=g), torch.zeros(n_boxes, 1),
                       torch.tensor([3.9, 1.6, 1.56]) * (1 + 0.05 * torch.randn(n_boxes, 3, generator=g)),
                       torch.randn(n_boxes, 1, generator=g) * 0.3], 1)
    scores = torch.rand(n_boxes, generator=g)
    for name, fn in (("bev_iou N x N", lambda: bev_iou(boxes, boxes)),
                     ("nms_bev (IoU 0.1)", lambda: nms_bev(boxes, scores, 0.1))):
        times, out = sample_call(fn, 3)  # one warm-up call, then 3 timed
        extra = f", kept {len(out)}" if out.dim() == 1 else f", non-zero pairs {(out > 0).sum().item()}"
        print(f"{name:<20} {n_boxes} boxes: median {percentile(times, 50):8.1f} ms (of 3){extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3769)
    parser.add_argument("--boxes", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (on a busy shared machine 1 can be much faster than 2)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    t0 = time.perf_counter()
    gts, dets = synthetic_dataset(args.frames, args.seed)
    print(f"generated {args.frames} frames ({sum(map(len, gts))} GT rows, {sum(map(len, dets))} detections) "
          f"in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    results = evaluate(gts, dets)
    elapsed = time.perf_counter() - t0
    print(format_results(results))
    print(f"evaluate(): {args.frames} frames in {elapsed:.2f} s")
    bench_geometry(args.boxes, args.seed)


if __name__ == "__main__":
    main()
