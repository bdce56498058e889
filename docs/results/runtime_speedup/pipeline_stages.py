"""Pipeline stage p50 (ms) of models/default over the six shared KITTI scans x 8, N torch and ONNX Runtime threads.

Run from the root of a checkout (the one whose clean_ros is measured):
    PYTHONPATH=. .venv/bin/python docs/results/runtime_speedup/pipeline_stages.py 1
"""
import glob
import statistics as st
import sys

import numpy as np
import torch

from clean_ros.inference.pipeline import Pipeline
n=int(sys.argv[1])
torch.set_num_threads(n)
pipe = Pipeline.from_bundle("models/default", backend="onnxruntime", intra_op_threads=n)
scans=[np.fromfile(p, dtype=np.float32).reshape(-1,4) for p in sorted(glob.glob("../shared/data/kitti_sample/training/velodyne/*.bin"))]
for s in scans: pipe(s)
T={}
for r in range(8):
    for s in scans:
        for k,v in pipe(s).timings_ms.items(): T.setdefault(k,[]).append(v)
print(n, {k: round(st.median(v),1) for k,v in T.items()})
