"""Mean +- std of the Pedestrian labels' size (label_all/, every frame) of simulated KITTI roots. Reproduction script
for docs/results/release_stride/README.md, not a tool.

    PYTHONPATH=. python docs/results/release_stride/label_len.py runs/release_default/stages/data/dataset \
        runs/release_stride/stages/data/dataset
"""
import sys
from pathlib import Path

import numpy as np

from clean_ros.cloud.kitti import read_labels

for root in sys.argv[1:]:
    dims = np.concatenate([o.dimensions[o.names == "Pedestrian"]
                           for o in map(read_labels, sorted((Path(root) / "training" / "label_all").glob("*.txt")))])
    h, w, l = dims.T  # KITTI label order
    print(f"{root}: {len(dims)} pedestrians, l {l.mean():.2f} +- {l.std():.2f} (median {np.median(l):.2f}), "
          f"w {w.mean():.2f} +- {w.std():.2f}")
