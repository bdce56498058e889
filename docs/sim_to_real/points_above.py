"""Points just above each box (its footprint, top to top + 0.6 m) for the false positives and the matched detections
of models/default as the node runs it, its gate on (training/ground_gate.labelled_detections; docs/RELEASE.md, end of
"Floating boxes"). Reproduction script for one paragraph, not a tool; checking only on real frames.

    PYTHONPATH=. python docs/sim_to_real/points_above.py DATASET SPLIT|all
"""
import sys
from pathlib import Path

import numpy as np

from training.ground_gate import labelled_detections

def above(points, boxes, band=0.6):
    out = []
    for x, y, z, l, w, h, yaw in boxes[:, :7]:
        c, s = np.cos(-yaw), np.sin(-yaw)
        dx, dy = points[:, 0] - x, points[:, 1] - y
        lx, ly = c * dx - s * dy, s * dx + c * dy
        foot = (np.abs(lx) < l / 2) & (np.abs(ly) < w / 2)
        top = z + h / 2
        inside = foot & (np.abs(points[:, 2] - z) <= h / 2)
        over = foot & (points[:, 2] > top) & (points[:, 2] <= top + band)
        out.append((int(over.sum()), int(inside.sum())))
    return out

fp, tp = [], []
split = None if sys.argv[2] == "all" else sys.argv[2]
for pts, det, m in labelled_detections(Path("models/default"), Path(sys.argv[1]), split, ground_gate_m=None):
    a = above(pts, det.boxes)
    for i in np.flatnonzero(m.false_positive): fp.append((str(det.names[i]),) + a[i])
    for i in np.flatnonzero(m.detection_scored & ~m.false_positive): tp.append((str(det.names[i]),) + a[i])
for title, rows in (("FP", fp), ("matched", tp)):
    over = np.array([r[1] for r in rows]); ins = np.array([r[2] for r in rows])
    frac = over / np.maximum(ins, 1)
    print(title, len(rows), "share with >=3 pts above:", round(float(np.mean(over >= 3)), 3), " >= 10:", round(float(np.mean(over >= 10)), 3),
          " above/inside > 0.2:", round(float(np.mean(frac > 0.2)), 3))
    for cls in ("Car", "Pedestrian", "Cyclist"):
        sel = np.array([r[0] == cls for r in rows])
        if sel.any(): print("   ", cls, int(sel.sum()), ">=3 above:", int((over[sel] >= 3).sum()), ">=10:", int((over[sel] >= 10).sum()))
    if len(rows) < 30: print("  ", rows)
    pc = np.array([r[1] for r in rows if r[0] in ("Pedestrian", "Cyclist")])
    print("   ped+cyc above-count quantile 0.999 / max:", np.quantile(pc, 0.999) if len(pc) else "-", pc.max() if len(pc) else "-")
