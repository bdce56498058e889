"""How far a person's returns spread along the heading (the stride, seen from the sensor), simulated against real.
Reproduction script for docs/results/release_stride/README.md, not a tool.

    PYTHONPATH=. python docs/results/release_stride/shape_stats.py runs/release_default/stages/data/dataset 300
    PYTHONPATH=. python docs/results/release_stride/shape_stats.py ../shared/data/kitti_sample/training

A simulated KITTI root (with ImageSets/train.txt): the first N training frames' pedestrians within 25 m, by how
side-on they stand to the ray (|sin(heading - bearing)|) and range: the spread of their returns along the heading
(3rd to 97th percentile, returns 0.1 m or more above the box floor, box grown 0.5 m along and 0.2 m across), label
length and points. A real folder (training/ layout without ImageSets): the same figures for each labelled person.
"""
import sys
from pathlib import Path

import numpy as np

from clean_ros.cloud.kitti import Calibration, read_labels
from training.data.kitti_dataset import ground_truth_from_annotations
from training.scan_stats import CLASSES


def people(split: Path, frame_ids: list[str]) -> np.ndarray:
    """(N, 5) range, side-on, points, spread along the heading, label length of each person within 25 m."""
    rows = []
    for fid in frame_ids:
        calib = Calibration.from_file(split / "calib" / f"{fid}.txt")
        boxes, _, names, _ = ground_truth_from_annotations(read_labels(split / "label_2" / f"{fid}.txt"), calib,
                                                           CLASSES)
        pts = np.fromfile(split / "velodyne" / f"{fid}.bin", dtype=np.float32).reshape(-1, 4)[:, :3]
        for b in boxes[names == "Pedestrian"]:
            r = np.hypot(b[0], b[1])
            if r > 25:
                continue
            d = pts - b[:3]
            c, s = np.cos(b[6]), np.sin(b[6])
            u, v = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c
            z = d[:, 2] + b[5] / 2
            m = (np.abs(u) < b[3] / 2 + 0.5) & (np.abs(v) < b[4] / 2 + 0.2) & (z > 0.1) & (z < b[5] + 0.1)
            if m.sum() < 10:
                continue
            spread = np.percentile(u[m], 97) - np.percentile(u[m], 3)
            rows.append((r, abs(np.sin(b[6] - np.arctan2(b[1], b[0]))), m.sum(), spread, b[3]))
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def main() -> None:
    root = Path(sys.argv[1])
    if (root / "ImageSets" / "train.txt").exists():
        ids = (root / "ImageSets" / "train.txt").read_text().split()[: int(sys.argv[2]) if len(sys.argv) > 2 else None]
        a = people(root / "training", ids)
        for lo, hi in ((0, 0.5), (0.5, 0.85), (0.85, 1.01)):
            for rlo, rhi in ((0, 12), (12, 25)):
                m = (a[:, 1] >= lo) & (a[:, 1] < hi) & (a[:, 0] >= rlo) & (a[:, 0] < rhi)
                print(f"side-on {lo}-{hi}, {rlo}-{rhi} m: {m.sum():3d} people, spread median {np.median(a[m, 3]):.2f} "
                      f"p75 {np.percentile(a[m, 3], 75):.2f} p90 {np.percentile(a[m, 3], 90):.2f} m, label l median "
                      f"{np.median(a[m, 4]):.2f} m, points {np.median(a[m, 2]):.0f}")
    else:
        ids = sorted(p.stem for p in (root / "label_2").glob("*.txt"))
        for r, side, n, spread, length in people(root, ids):
            print(f"range {r:.1f} m, side-on {side:.2f}: {n:.0f} points, spread {spread:.2f} m, label l {length:.2f} m")


if __name__ == "__main__":
    main()
