"""Reproduction script (docs/results/release_capacity/README.md): the shipped teacher's real false positives at the
thresholds a val budget gives it. Checking only, not a tool.

    PYTHONPATH=. python docs/results/release_capacity/teacher_fp.py models/teacher_realistic \
        runs/release_default/stages/data/dataset ../shared/data/kitti_sample/training WORKDIR

The teacher package (a two-stage model, not a bundle) predicts the val split of the simulated dataset and the real
frames with its own post-processing (training/ship_teacher.predict_teacher). The real scans are first scaled by the
intensity factor the shipped bundle's automatic intensity gives each of them (as the students were checked), into
WORKDIR. Every detection is matched with the real-data check's rule (training/detection_diagnostics.match_frame);
per class, the threshold pick_threshold gives for budget / 3 val false positives per frame (the thresholds stage's
rule, each class on its own), then the real false positives and objects found (BEV IoU 0.25) at it.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from clean_ros.cloud.kitti import boxes_camera_to_lidar
from clean_ros.inference.pipeline import Pipeline
from clean_ros.types import Detections
from training.compression.stage_thresholds import fp_per_frame, pick_threshold, recall
from training.data.kitti_dataset import read_velodyne
from training.data.sample import class_indices
from training.detection_diagnostics import RECALL_IOUS, LabelledFrame, match_frame
from training.ship_teacher import predict_teacher
from training.teacher_package import load_teacher_package

BUDGETS = (0.6, 0.9, 1.3, 2.0)


def scaled_real_root(real: Path, work: Path) -> Path:
    """WORKDIR/training with the real scans' intensity scaled as the shipped bundle's automatic intensity does."""
    pipe = Pipeline.from_bundle("models/default", backend="onnxruntime", intra_op_threads=1)
    pipe.set_auto_intensity(True)
    ids = sorted(p.stem for p in (real / "velodyne").glob("*.bin"))
    (work / "training" / "velodyne").mkdir(parents=True, exist_ok=True)
    (work / "ImageSets").mkdir(exist_ok=True)
    for sub in ("calib", "label_2"):
        link = work / "training" / sub
        if not link.exists():
            link.symlink_to((real / sub).resolve())
    for frame_id in ids:
        points = read_velodyne(real / "velodyne" / f"{frame_id}.bin")
        pipe(points)  # the running median the node keeps, frame by frame
        scaled = points.copy()
        scaled[:, 3] = np.clip(scaled[:, 3] * np.float32(pipe.intensity_factor), 0.0, 1.0)
        scaled.tofile(work / "training" / "velodyne" / f"{frame_id}.bin")
    (work / "ImageSets" / "real.txt").write_text("\n".join(ids) + "\n")
    return work


def pooled(model, cfg, root: Path, split: str, iou: float):
    classes = tuple(cfg.rpn.class_names)
    _, predicted, ids = predict_teacher(model, cfg, root, split, batch_size=1)
    d = root / "training"
    fp = {c: [] for c in classes}
    found = {c: [] for c in classes}
    column = RECALL_IOUS.index(iou)
    for frame_id, rows in zip(ids, predicted):
        frame = LabelledFrame.read(d, frame_id)
        calib = frame.calib
        rows = rows.select(np.isin(rows.names, classes))
        boxes = boxes_camera_to_lidar(rows.location, rows.dimensions, rows.rotation_y, calib).astype(np.float32)
        detections = Detections(boxes, rows.score.astype(np.float32), class_indices(rows.names, classes), classes)
        match = match_frame(frame, detections, read_velodyne(d / "velodyne" / f"{frame_id}.bin"))
        for c in classes:
            fp[c].append(detections.scores[match.false_positive & (match.detection_names == c)])
            found[c].append(match.found_score[match.object_scored & (match.object_names == c), column])
    return ({c: np.concatenate(v) for c, v in fp.items()}, {c: np.concatenate(v) for c, v in found.items()},
            len(ids))


def main(argv: list[str]) -> None:
    if len(argv) != 4:
        raise SystemExit(__doc__)
    torch.set_num_threads(2)
    cfg, model, _ = load_teacher_package(argv[0])
    classes = tuple(cfg.rpn.class_names)
    val_fp, val_found, n = pooled(model, cfg, Path(argv[1]), "val", 0.5)
    real_fp, real_found, real_n = pooled(model, cfg, scaled_real_root(Path(argv[2]), Path(argv[3])), "real", 0.25)
    for budget in BUDGETS:
        row = {}
        for c in classes:
            t = pick_threshold(val_fp[c], n, budget / len(classes), 0.05)
            row[c] = {"threshold": t, "val_fp_per_frame": round(fp_per_frame(val_fp[c], t, n), 3),
                      "val_recall_bev50": round(recall(val_found[c], t), 3),
                      "real_false_positives": int((real_fp[c] >= np.float32(t)).sum()),
                      "real_found_bev25": f"{int((real_found[c] >= np.float32(t)).sum())}/{len(real_found[c])}"}
        total = sum(v["real_false_positives"] for v in row.values())
        print(f"budget {budget:g}: real false positives per frame {total / real_n:.2f}  {json.dumps(row)}")


if __name__ == "__main__":
    main(sys.argv[1:])
