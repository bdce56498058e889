"""Val / holdout pools of a bundle for the threshold-split comparison (docs/results/threshold_split/README.md): the
bundle run as the node runs it (default backend, automatic intensity) with the ground-contact gate off and every
class at the thresholds stage's floor 0.05; per class, the scores of its false positives and, per labelled object
the devkit scores, its best same-class score at BEV IoU 0.5 (the real-data check's matching). One pass, no re-probe
for class-agnostic NMS (the stage's rounds). Reproduction script, not a tool.

    PYTHONPATH=. OMP_NUM_THREADS=2 python docs/results/threshold_split/pools.py BUNDLE DATASET SPLIT OUT.npz
"""
import sys
from pathlib import Path

import numpy as np
import torch

from clean_ros import defaults
from clean_ros.cloud.kitti import split_frame_ids
from clean_ros.inference.pipeline import Pipeline
from training.data.kitti_dataset import read_velodyne
from training.detection_diagnostics import RECALL_IOUS, LabelledFrame, match_frame

FLOOR = 0.05

bundle, dataset, split, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
torch.set_num_threads(2)
pipe = Pipeline.from_bundle(bundle, backend=defaults.BACKEND, intra_op_threads=2)
pipe.set_auto_intensity(defaults.AUTO_INTENSITY)
pipe.set_ground_gate(0.0)
names = tuple(pipe.bundle.class_names)
pipe.update_postprocess(score_thresholds={n: FLOOR for n in names})
column = RECALL_IOUS.index(0.5)
split_dir, frame_ids, _ = split_frame_ids(dataset, split)
fp = {n: [] for n in names}
found = {n: [] for n in names}
for frame_id in frame_ids:
    points = read_velodyne(split_dir / "velodyne" / f"{frame_id}.bin")
    det = pipe(points).detections
    match = match_frame(LabelledFrame.read(split_dir, frame_id), det, points)
    for n in names:
        fp[n].append(np.asarray(det.scores, np.float32)[match.false_positive & (match.detection_names == n)])
        found[n].append(match.found_score[match.object_scored & (match.object_names == n), column])
np.savez(out, frames=len(frame_ids), names=np.array(names),
         **{f"fp_{n}": np.concatenate(v) for n, v in fp.items()},
         **{f"found_{n}": np.concatenate(v).astype(np.float32) for n, v in found.items()})
print(f"{out}: {len(frame_ids)} frames of {dataset} split {split}")
