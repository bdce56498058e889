"""How far above the local ground a bundle's boxes float (docs/RELEASE.md "Floating boxes"). Reproduction script for one
paragraph, not a tool; checking only on real frames.

    PYTHONPATH=. python docs/sim_to_real/ground_contact.py DATASET SPLIT|all [BUNDLE]

The bundle (default models/default) runs as the node runs it with the ground gate off; each detection's gap to the
local ground is the gate's own measure (clean_ros.inference.ground_gate.box_ground_gaps) and its match the real-data
check's rule (training/ground_gate.measure_gaps). Printed: how many false positives and matched detections a gate at
each height would remove, and the matched detections' gap percentiles. SPLIT: ImageSets/SPLIT.txt of a KITTI root;
`all`: every scan of a KITTI split folder.
"""
import sys
from pathlib import Path

import numpy as np

from training.ground_gate import measure_gaps

root, split = Path(sys.argv[1]), sys.argv[2]
bundle = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("models/default")
gaps = measure_gaps(bundle, root, None if split == "all" else split)
matched, false_positives = gaps["matched"], gaps["false_positives"]
print(f"{split}: frames {gaps['frames']}, FP {len(false_positives)}, matched {len(matched)}")
for t in (0.3, 0.4, 0.5, 0.6, 0.8):
    print(f"  gate {t}: FP removed {int(np.sum(false_positives > t))}, matched removed {int(np.sum(matched > t))}")
if len(matched):
    print("  matched gap pct 50/99/99.9/max", np.round(np.percentile(matched, [50, 99, 99.9, 100]), 2))
