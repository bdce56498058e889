"""Turned cars by box shape: run a bundle on a simulated dataset's holdout split, save one row per found car.

    PYTHONPATH=. python docs/results/release_shapes/heading_by_shape.py DATASET_ROOT BUNDLE SCORE_THRESHOLD|bundle OUT.npy
    python docs/results/release_shapes/hs_summary.py OUT.npy ...

Rows: label h, w, l, range (m), points in the box, |heading error| (rad) of the same-class detection overlapping it
most at BEV IoU >= 0.5 (training/detection_diagnostics.match_frame); cars without such a detection are left out.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from clean_ros.cloud.kitti import Calibration, read_labels
from clean_ros.inference.pipeline import Pipeline
from training.data.kitti_dataset import read_velodyne
from training.detection_diagnostics import LabelledFrame, match_frame
from training.real_check import resolve_folder

torch.set_num_threads(1)
folder = resolve_folder(Path(sys.argv[1]), "holdout")
pipe = Pipeline.from_bundle(Path(sys.argv[2]), backend="onnxruntime", device="cpu", intra_op_threads=1)
if sys.argv[3] != "bundle":  # "bundle": the bundle's own (calibrated) thresholds
    pipe.update_postprocess(score_thresholds=float(sys.argv[3]))
rows = []
for fid in folder.frame_ids:
    d = folder.split_dir
    pts = read_velodyne(d / "velodyne" / f"{fid}.bin")
    labels = read_labels(d / "label_2" / f"{fid}.txt")
    m = match_frame(LabelledFrame(fid, labels, Calibration.from_file(d / "calib" / f"{fid}.txt")), pipe(pts).detections,
                    pts)
    dims = labels.dimensions[labels.names != "DontCare"]  # (h, w, l), the order of match_frame's objects
    for k in np.flatnonzero((m.object_names == "Car") & np.isfinite(m.heading_error)):
        rows.append((*dims[k], m.object_range[k], m.object_points[k], m.heading_error[k]))
np.save(sys.argv[4], np.array(rows))
print(f"{len(rows)} found cars -> {sys.argv[4]}")
