"""How far above the local ground a bundle's boxes float (docs/RELEASE.md "Floating boxes"). Reproduction script for one
paragraph, not a tool; checking only on real frames.

    PYTHONPATH=. python docs/sim_to_real/ground_contact.py DATASET SPLIT|all C,P,Y [MARGIN]

Local ground: the lowest point of every 0.5 m BEV cell; for a box, the 25th percentile of those minima over the cells
of its axis-aligned footprint (half-diagonal + MARGIN, default 1 m). Gap = box bottom - local ground. Printed: how
many false positives and matched detections (BEV IoU 0.5 rule of the real-data check) a gate at each gap would
remove, and the matched detections' gap percentiles. SPLIT: ImageSets/SPLIT.txt of a KITTI root; `all`: every scan
of a KITTI split folder.
"""
import sys, json, numpy as np, torch
torch.set_num_threads(1)
from clean_ros.cloud.kitti import DEFAULT_IMAGE_SHAPE, Calibration, read_labels
from clean_ros.inference.pipeline import Pipeline
from training.data.kitti_dataset import read_png_shape, read_velodyne
from training.detection_diagnostics import LabelledFrame, match_frame, RECALL_IOUS
from pathlib import Path
CELL, MARGIN, Q = 0.5, float(sys.argv[4]) if len(sys.argv) > 4 else 1.0, 25

def ground_gap(points, boxes):
    ij = np.floor(points[:, :2] / CELL).astype(np.int64)
    key = ij[:, 0] * 100003 + ij[:, 1]
    order = np.argsort(key, kind="stable")
    ks, zs = key[order], points[order, 2]
    uniq, start = np.unique(ks, return_index=True)
    cmin = np.minimum.reduceat(zs, start)
    lut = dict(zip(uniq.tolist(), cmin.tolist()))
    out = []
    for x, y, z, l, w, h, yaw in boxes[:, :7]:
        r = 0.5 * np.hypot(l, w) + MARGIN
        i0, i1 = int(np.floor((x - r) / CELL)), int(np.floor((x + r) / CELL))
        j0, j1 = int(np.floor((y - r) / CELL)), int(np.floor((y + r) / CELL))
        vals = [lut[i * 100003 + j] for i in range(i0, i1 + 1) for j in range(j0, j1 + 1) if i * 100003 + j in lut]
        g = np.percentile(vals, Q) if len(vals) >= 3 else np.nan
        out.append((z - h / 2) - g)
    return np.array(out)

root, split, thr = Path(sys.argv[1]), sys.argv[2], [float(v) for v in sys.argv[3].split(",")]
pipe = Pipeline.from_bundle("models/default", backend="onnxruntime", intra_op_threads=1)
pipe.set_auto_intensity(True)
pipe.update_postprocess(score_thresholds=thr)
d = root / "training" if (root / "training").is_dir() else root
ids = (root / "ImageSets" / f"{split}.txt").read_text().split() if split != "all" else sorted(p.stem for p in (d / "velodyne").glob("*.bin"))
fp, found, objects = [], [], []
col = RECALL_IOUS.index(0.5)
for fid in ids:
    pts = read_velodyne(d / "velodyne" / f"{fid}.bin")
    frame = LabelledFrame(fid, read_labels(d / "label_2" / f"{fid}.txt"), Calibration.from_file(d / "calib" / f"{fid}.txt"),
                          read_png_shape(d / "image_2" / f"{fid}.png") or DEFAULT_IMAGE_SHAPE)
    det = pipe(pts).detections
    m = match_frame(frame, det, pts)
    gap = ground_gap(pts, det.boxes)
    names = det.names
    for i in np.flatnonzero(m.false_positive): fp.append((str(names[i]), float(gap[i])))
    for i in np.flatnonzero(m.detection_scored & ~m.false_positive): found.append((str(names[i]), float(gap[i])))
g_fp = np.array([g for _, g in fp]); g_tp = np.array([g for _, g in found])
print(f"{split}: frames {len(ids)}, FP {len(fp)}, matched {len(found)}")
for t in (0.3, 0.4, 0.5, 0.6, 0.8):
    print(f"  gate {t}: FP removed {int(np.sum(g_fp > t))}, matched removed {int(np.sum(g_tp > t))}")
print("  TP gap pct 50/99/99.9/max", np.round(np.nanpercentile(g_tp, [50, 99, 99.9, 100]), 2) if len(g_tp) else "-")
if len(fp) < 40: print("  FP", [(n, round(g, 2)) for n, g in fp])
