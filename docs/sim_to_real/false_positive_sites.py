"""What the real false positives sit on (docs/RELEASE.md, "What the real false positives are"). Reproduction script
for one section, not a tool; it only checks real frames, it trains and tunes nothing.

    python training/real_check.py ../shared/data/kitti_sample/training --bundle B --out B.json   # per bundle
    PYTHONPATH=. python docs/sim_to_real/false_positive_sites.py sites A.json B.json C.json
    PYTHONPATH=. python docs/sim_to_real/false_positive_sites.py probe A.json
    PYTHONPATH=. python docs/sim_to_real/false_positive_sites.py views A.json docs/sim_to_real/false_positives.png

sites: the false positives of several bundles (real_check's `per_frame[].false_positive_boxes`) grouped into
*sites*: boxes of one frame whose BEV centres lie within SITE_DISTANCE of each other. A site hit by every bundle is
something in the scan that all of them take for an object (systematic); a site hit by one is that bundle's own.

probe: reruns the report's bundle on its folder with the scan changed around each false positive and prints the
score of the same-class detection left within SITE_DISTANCE (0: gone, at the bundle's thresholds):
  no box pts  - every point inside the box grown by GROW removed: is the detection made of its own points?
  no ground   - only the points inside that are below GROUND_CUT above the fitted ground (scan_stats.fit_ground)
                removed: does it need the ground under it?
  no context  - the points within CONTEXT m around the box (outside it) removed: does it need its surroundings?
  median int. - the intensity of the points inside set to the scan's median: does it need their intensity?

views: each false positive's surroundings (8 x 8 m in the box's own frame), top view coloured by height above the
fitted ground and side view (height above ground along the box), the box drawn in red.
"""
import json
import sys
from pathlib import Path

import numpy as np

from clean_ros.cloud.kitti import read_velodyne
from training.scan_stats import fit_ground

SITE_DISTANCE = 1.5  # m
GROW, CONTEXT, GROUND_CUT = 0.3, 3.0, 0.3  # m


def false_positives(report: dict) -> list[tuple[str, dict]]:
    return [(f["frame"], b) for f in report["per_frame"] for b in f["false_positive_boxes"]]


def sites(paths: list[str]) -> None:
    reports = [json.loads(Path(p).read_text()) for p in paths]
    found: list[dict] = []  # {"frame", "xy", "hits": {bundle index: class}}
    for k, report in enumerate(reports):
        for frame_id, b in false_positives(report):
            xy = np.asarray(b["box"][:2])
            site = next((s for s in found if s["frame"] == frame_id and k not in s["hits"]
                         and np.hypot(*(s["xy"] - xy)) < SITE_DISTANCE), None)
            if site is None:
                found.append(site := {"frame": frame_id, "xy": xy, "hits": {}, "points": b["points"]})
            site["hits"][k] = b["class"]
    names = [r["bundle"] for r in reports]
    print(f"{len(found)} sites; false positives: " + ", ".join(f"{n} {len(false_positives(r))}"
                                                             for n, r in zip(names, reports)))
    for hits in range(len(reports), 0, -1):
        print(f"  hit by {hits} of {len(reports)}: {sum(len(s['hits']) == hits for s in found)}")
    for s in sorted(found, key=lambda s: (-len(s["hits"]), s["frame"], float(np.hypot(*s["xy"])))):
        x, y = s["xy"]
        print(f"  {s['frame']} ({x:6.1f}, {y:6.1f}) {np.hypot(x, y):5.1f} m {s['points']:4d} pts  "
              + " ".join(f"{s['hits'].get(k, '-'):<10}" for k in range(len(reports))))


def _in_box(points: np.ndarray, box, grow: float) -> np.ndarray:
    """(N,) points inside the box grown by `grow` on every side (clean_ros.cloud.geometry.points_in_boxes)."""
    import torch

    from clean_ros.cloud.geometry import points_in_boxes

    grown = np.asarray(box, np.float64) + [0, 0, 0, 2 * grow, 2 * grow, 2 * grow, 0]
    return points_in_boxes(torch.from_numpy(points[:, :3].astype(np.float64)), torch.from_numpy(grown[None]))[:, 0].numpy()


def probe(path: str) -> None:
    import torch

    from clean_ros.inference.pipeline import Pipeline

    torch.set_num_threads(1)
    report = json.loads(Path(path).read_text())
    if report.get("emulation") or report.get("sensor_mount") or report.get("intensity_scale", 1.0) != 1.0:
        raise SystemExit("error: probe reruns the scans as read; use a report made without sensor settings")
    pipeline = Pipeline.from_bundle(report["bundle"], backend="onnxruntime", intra_op_threads=1)
    folder = Path(report["folder"])

    def score_left(points, box, name):
        det = pipeline(points).detections
        near = (np.asarray(det.names) == name) & (np.hypot(det.boxes[:, 0] - box[0], det.boxes[:, 1] - box[1])
                                                  < SITE_DISTANCE)
        return float(det.scores[near].max()) if near.any() else 0.0

    print(f"{report['bundle']}: score of the false positive after each change (0 = gone)")
    print("  frame   class       score  x, y             | no box pts | no ground | no context | median int.")
    scans = {}
    for frame_id, b in false_positives(report):
        if frame_id not in scans:
            points = read_velodyne(folder / "velodyne" / f"{frame_id}.bin")
            scans = {frame_id: (points, np.nan_to_num(fit_ground(points).height_above, nan=0.0))}
        points, height = scans[frame_id]
        box, name = b["box"], b["class"]
        inside = _in_box(points, box, GROW)
        around = _in_box(points, box, CONTEXT) & ~inside
        recoloured = points.copy()
        recoloured[inside, 3] = np.median(points[:, 3])
        after = [score_left(points[~inside], box, name), score_left(points[~(inside & (height < GROUND_CUT))], box, name),
                 score_left(points[~around], box, name), score_left(recoloured, box, name)]
        print(f"  {frame_id} {name:<11} {b['score']:.2f}  ({box[0]:5.1f}, {box[1]:6.1f}) | "
              + " | ".join(f"{a:9.2f}" for a in after))


def views(path: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads(Path(path).read_text())
    folder, items = Path(report["folder"]), false_positives(report)
    cols = 5
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(3.2 * cols, 5.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    loaded = {}
    for k, (frame_id, b) in enumerate(items):
        if frame_id not in loaded:
            points = read_velodyne(folder / "velodyne" / f"{frame_id}.bin")
            loaded = {frame_id: (points, fit_ground(points).height_above)}
        points, height = loaded[frame_id]
        box = b["box"]
        c, s = np.cos(-box[6]), np.sin(-box[6])
        d = points[:, :2] - np.asarray(box[:2], np.float32)
        u, v = d[:, 0] * c - d[:, 1] * s, d[:, 0] * s + d[:, 1] * c
        near = (np.abs(u) < 4) & (np.abs(v) < 4)
        top, side = axes[2 * (k // cols), k % cols], axes[2 * (k // cols) + 1, k % cols]
        for ax in (top, side):
            ax.set_axis_on()
            ax.set_xlim(-4, 4)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=6)
        top.scatter(u[near], v[near], s=1, c=np.clip(np.nan_to_num(height[near], nan=-0.2), -0.2, 2.5),
                    cmap="viridis")
        top.add_patch(plt.Rectangle((-box[3] / 2, -box[4] / 2), box[3], box[4], fill=False, color="r"))
        top.set_ylim(-4, 4)
        top.set_title(f"{frame_id} {b['class']} {b['score']:.2f}\n({box[0]:.1f}, {box[1]:.1f}) {b['range']:.0f} m, "
                      f"{b['points']} pts", fontsize=7)
        beside = near & (np.abs(v) < box[4] / 2 + 0.5)
        side.scatter(u[beside], np.nan_to_num(height[beside], nan=-0.4), s=1, c="k")
        side.axhline(0.0, color="g", lw=0.5)
        side.set_ylim(-0.5, 3.5)
        side.set_title("side: height above ground (m)", fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=50)
    print(f"wrote {out}")


if __name__ == "__main__":
    commands = {"sites": lambda a: sites(a), "probe": lambda a: probe(a[0]), "views": lambda a: views(a[0], a[1])}
    if len(sys.argv) < 3 or sys.argv[1] not in commands or (sys.argv[1] == "views" and len(sys.argv) < 4):
        raise SystemExit(__doc__)
    commands[sys.argv[1]](sys.argv[2:])
