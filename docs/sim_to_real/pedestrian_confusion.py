"""Which simulated pedestrians a bundle boxes as Cyclists, or misses (docs/RELEASE.md, "What the real false
positives are"). Reproduction script for one paragraph, not a tool.

    python training/real_check.py DATASET --split holdout --bundle B --threads 1 --quiet --save-predictions PRED
    PYTHONPATH=. python docs/sim_to_real/pedestrian_confusion.py DATASET PRED
    # a teacher package (not a bundle): write its holdout predictions kept at MIN_SCORE first
    PYTHONPATH=. python docs/sim_to_real/pedestrian_confusion.py --teacher models/teacher_realistic 0.25 DATASET PRED

DATASET: a KITTI root with ImageSets/holdout.txt (e.g. runs/release_default/stages/data/dataset). Every pedestrian
label the devkit scores is matched to the detection of any class that overlaps it most (BEV IoU >= 0.25, else
"none"), and the shares are printed by range, by how side-on the person stands to the sensor's ray
(|sin(heading - bearing)|: 1 = walking across the ray, the stride in full view; 0 = towards or away) and by the
label's length, over all ranges and within 20 m.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from clean_ros.cloud.geometry import bev_iou
from clean_ros.cloud.kitti import Calibration, read_labels
from training.data.kitti_dataset import ground_truth_from_annotations
from training.scan_stats import CLASSES

OUTCOMES = ("Pedestrian", "Cyclist", "none")


def pedestrians(root: Path, predictions: Path) -> dict[str, np.ndarray]:
    split = root / "training"
    rows = []
    for frame_id in (root / "ImageSets" / "holdout.txt").read_text().split():
        calib = Calibration.from_file(split / "calib" / f"{frame_id}.txt")
        boxes, _, names, difficulty = ground_truth_from_annotations(
            read_labels(split / "label_2" / f"{frame_id}.txt"), calib, CLASSES)
        people = boxes[(names == "Pedestrian") & (difficulty >= 0)]
        if not len(people):
            continue
        outcome = np.full(len(people), "none", dtype=object)
        det_file = predictions / f"{frame_id}.txt"
        detections = read_labels(det_file) if det_file.exists() else None
        if detections is not None and len(detections.names):
            det_boxes, _, det_names, _ = ground_truth_from_annotations(detections, calib, CLASSES)
            iou = bev_iou(torch.from_numpy(people).double(), torch.from_numpy(det_boxes).double()).numpy()
            hit = iou.max(1) >= 0.25
            outcome[hit] = det_names[iou.argmax(1)[hit]]
        bearing = np.arctan2(people[:, 1], people[:, 0])
        rows.append(np.c_[np.hypot(people[:, 0], people[:, 1]), np.abs(np.sin(people[:, 6] - bearing)),
                          people[:, 3], np.array([OUTCOMES.index(o) if o in OUTCOMES else 2 for o in outcome])])
    table = np.concatenate(rows)
    return {"range": table[:, 0], "side_on": table[:, 1], "length": table[:, 2], "outcome": table[:, 3].astype(int)}


def print_table(name: str, values: np.ndarray, edges: list[float], outcome: np.ndarray, keep: np.ndarray) -> None:
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = keep & (values >= lo) & (values < hi)
        if m.any():
            shares = "  ".join(f"{o} {np.mean(outcome[m] == k):.2f}" for k, o in enumerate(OUTCOMES))
            print(f"  {name} {lo:5.2f}-{hi:5.2f}: {m.sum():4d} people   boxed as {shares}")


def teacher_predictions(package: str, min_score: float, root: Path, out: Path) -> None:
    """The teacher package's detections on the holdout (its own post-processing), kept at min_score, as KITTI files."""
    from clean_ros.cloud.kitti import write_labels
    from training.ship_teacher import predict_teacher
    from training.teacher_package import load_teacher_package

    cfg, model, _ = load_teacher_package(package)
    _, predicted, frame_ids = predict_teacher(model, cfg, root, "holdout", batch_size=1)
    out.mkdir(parents=True, exist_ok=True)
    for frame_id, rows in zip(frame_ids, predicted):
        write_labels(out / f"{frame_id}.txt", rows.select(rows.score >= min_score))


def main(argv: list[str]) -> None:
    if argv[:1] == ["--teacher"] and len(argv) == 5:
        teacher_predictions(argv[1], float(argv[2]), Path(argv[3]), Path(argv[4]))
        argv = argv[3:]
    if len(argv) != 2:
        raise SystemExit(__doc__)
    p = pedestrians(Path(argv[0]), Path(argv[1]))
    everyone = np.ones(len(p["range"]), bool)
    print(f"{len(everyone)} scored pedestrians: " + ", ".join(f"{o} {int((p['outcome'] == k).sum())}"
                                                             for k, o in enumerate(OUTCOMES)))
    for title, keep in (("all ranges", everyone), ("within 20 m", p["range"] < 20)):
        print(title)
        print_table("range m      ", p["range"], [0, 10, 20, 30, 45], p["outcome"], keep)
        print_table("side-on |sin|", p["side_on"], [0, 0.5, 0.85, 1.01], p["outcome"], keep)
        print_table("label l m    ", p["length"], [0, 0.45, 0.6, 0.8, 2.0], p["outcome"], keep)


if __name__ == "__main__":
    main(sys.argv[1:])
