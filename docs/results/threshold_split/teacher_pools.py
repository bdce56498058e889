"""The teacher's val / holdout pools for compare.py (docs/results/threshold_split/README.md): the teacher package (a
two-stage model, not a bundle) predicts the split with its own post-processing (release_capacity/teacher_fp.py
`pooled`, which matches every detection with the real-data check's rule); written as pools.py writes them.
Reproduction script, not a tool.

    PYTHONPATH=. OMP_NUM_THREADS=2 python docs/results/threshold_split/teacher_pools.py models/teacher_realistic \
        DATASET SPLIT OUT.npz
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "release_capacity"))
from teacher_fp import pooled  # noqa: E402

from training.teacher_package import load_teacher_package  # noqa: E402

package, dataset, split, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
torch.set_num_threads(2)
cfg, model, _ = load_teacher_package(package)
names = tuple(cfg.rpn.class_names)
fp, found, frames = pooled(model, cfg, dataset, split, 0.5)
np.savez(out, frames=frames, names=np.array(names), **{f"fp_{n}": fp[n].astype(np.float32) for n in names},
         **{f"found_{n}": found[n].astype(np.float32) for n in names})
print(f"{out}: {frames} frames of {dataset} split {split}")
