"""Points just above each box (its footprint, top to top + 0.6 m) for the false positives and the matched detections
of models/default at its shipped settings (docs/RELEASE.md, end of "Floating boxes"). Reproduction script for one
paragraph, not a tool; checking only on real frames.

    PYTHONPATH=. python docs/sim_to_real/points_above.py DATASET SPLIT|all
"""
import sys, numpy as np, torch
torch.set_num_threads(1)
from pathlib import Path
from clean_ros.cloud.kitti import DEFAULT_IMAGE_SHAPE, Calibration, read_labels, split_frame_ids
from clean_ros.inference.pipeline import Pipeline
from training.data.kitti_dataset import read_png_shape, read_velodyne
from training.detection_diagnostics import LabelledFrame, match_frame

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

pipe = Pipeline.from_bundle("models/default", backend="onnxruntime", intra_op_threads=1)
pipe.set_auto_intensity(True)
split_dir, ids, _ = split_frame_ids(Path(sys.argv[1]), sys.argv[2] if sys.argv[2] != "all" else None)
fp, tp = [], []
for fid in ids:
    pts = read_velodyne(split_dir / "velodyne" / f"{fid}.bin")
    frame = LabelledFrame(fid, read_labels(split_dir / "label_2" / f"{fid}.txt"), Calibration.from_file(split_dir / "calib" / f"{fid}.txt"),
                          read_png_shape(split_dir / "image_2" / f"{fid}.png") or DEFAULT_IMAGE_SHAPE)
    det = pipe(pts).detections
    m = match_frame(frame, det, pts)
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
