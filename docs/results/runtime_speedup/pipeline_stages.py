"""Pipeline stage p50 (ms) of models/default over the six shared KITTI scans x 8, N torch and ONNX Runtime threads.

Run from the root of a checkout (the one whose clean_ros is measured):
    PYTHONPATH=. .venv/bin/python docs/results/runtime_speedup/pipeline_stages.py 1
"""
import glob
import statistics
import sys

import numpy as np
import torch

from clean_ros.inference.pipeline import Pipeline

threads = int(sys.argv[1])
torch.set_num_threads(threads)
pipe = Pipeline.from_bundle("models/default", backend="onnxruntime", intra_op_threads=threads)
scans = [np.fromfile(p, dtype=np.float32).reshape(-1, 4)
         for p in sorted(glob.glob("../shared/data/kitti_sample/training/velodyne/*.bin"))]
for scan in scans:  # warm-up
    pipe(scan)
stages: dict[str, list[float]] = {}
for _ in range(8):
    for scan in scans:
        for stage, ms in pipe(scan).timings_ms.items():
            stages.setdefault(stage, []).append(ms)
print(threads, {stage: round(statistics.median(ms), 1) for stage, ms in stages.items()})
