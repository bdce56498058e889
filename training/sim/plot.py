"""Bird's-eye-view picture of a simulated frame next to a real KITTI frame, each with its label boxes.

    python -m training.sim.plot --real-root ../shared/data/kitti_sample/training --frame 000001 \
        --out docs/img/sim_vs_real_bev.png [--preset realistic]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from clean_ros.atomic import atomic_open
from clean_ros.cloud.geometry import points_in_boxes
from clean_ros.cloud.kitti import (Calibration, KittiFormatError, boxes_camera_to_lidar, read_labels,
                                   read_velodyne)
from training.sim.sim_config import PRESETS, config_from_dict
from training.sim.generate import generate_frame

CLASS_COLOURS = {"Car": "tab:red", "Van": "tab:orange", "Truck": "tab:brown", "Pedestrian": "tab:blue",
                 "Person_sitting": "tab:cyan", "Cyclist": "tab:green", "Misc": "tab:purple"}
VIEW = (-10.0, 75.0, -40.0, 40.0)  # x min, x max, y min, y max


def bev_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 4, 2) BEV corners of LiDAR boxes (drawing only)."""
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    dx = np.array([0.5, 0.5, -0.5, -0.5])[None] * boxes[:, 3:4]
    dy = np.array([0.5, -0.5, -0.5, 0.5])[None] * boxes[:, 4:5]
    return np.stack([boxes[:, 0:1] + c[:, None] * dx - s[:, None] * dy,
                     boxes[:, 1:2] + s[:, None] * dx + c[:, None] * dy], -1)


def draw_bev(ax, points: np.ndarray, boxes: np.ndarray, names: np.ndarray, title: str) -> None:
    x0, x1, y0, y1 = VIEW
    keep = (points[:, 0] > x0) & (points[:, 0] < x1) & (points[:, 1] > y0) & (points[:, 1] < y1)
    p = points[keep]
    # LiDAR y points left: plot -y on the horizontal axis so the picture reads like a map seen from above
    in_box = points_in_boxes(torch.from_numpy(p[:, :3].astype(np.float64)), torch.from_numpy(boxes)).any(1).numpy()
    ax.scatter(-p[~in_box, 1], p[~in_box, 0], s=0.15, c="0.35", alpha=0.6, linewidths=0, rasterized=True)
    ax.scatter(-p[in_box, 1], p[in_box, 0], s=0.8, c="black", linewidths=0, rasterized=True)  # object returns
    for corners, name in zip(bev_corners(boxes), names):
        colour = CLASS_COLOURS.get(str(name), "black")
        ring = np.vstack([corners, corners[:1]])
        ax.plot(-ring[:, 1], ring[:, 0], color=colour, lw=0.9)
        front, centre = corners[:2].mean(0), corners.mean(0)  # heading tick
        ax.plot([-centre[1], -front[1]], [centre[0], front[0]], color=colour, lw=0.9)
    ax.set_xlim(-y1, -y0)
    ax.set_ylim(x0, x1)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("-y (m)")
    ax.set_ylabel("x (m)")
    handles = [ax.plot([], [], color=c, label=n)[0] for n, c in CLASS_COLOURS.items() if n in set(map(str, names))]
    if handles:
        ax.legend(handles=handles, fontsize=6, loc="lower right")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-root", type=Path, required=True, help="KITTI training/ folder with velodyne, label_2, calib")
    ap.add_argument("--frame", default="000001")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index", type=int, default=0, help="simulated frame index")
    ap.add_argument("--preset", default="default", choices=sorted(PRESETS), help="simulator preset of the frame")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bin_path = args.real_root / "velodyne" / f"{args.frame}.bin"
    if not bin_path.is_file():
        print(f"error: {bin_path} not found", file=sys.stderr)
        return 2
    try:
        real = read_velodyne(bin_path)
        calib = Calibration.from_file(args.real_root / "calib" / f"{args.frame}.txt")
        labels = read_labels(args.real_root / "label_2" / f"{args.frame}.txt")
    except KittiFormatError as exc:  # a truncated scan, a broken calib or label file: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labels = labels.select(labels.names != "DontCare")
    real_boxes = boxes_camera_to_lidar(labels.location, labels.dimensions, labels.rotation_y, calib)

    sim = generate_frame(config_from_dict({}, preset=args.preset), args.seed, args.index)
    fig, axes = plt.subplots(1, 2, figsize=(11, 6.2), dpi=110)
    draw_bev(axes[0], sim.points, sim.labels.boxes, sim.labels.objects.names,
             f"simulated ({args.preset}, seed {args.seed}, frame {args.index}): {len(sim.points)} points, "
             f"{len(sim.labels.boxes)} labels")
    draw_bev(axes[1], real, real_boxes, labels.names,
             f"real KITTI training/{args.frame}: {len(real)} points, {len(real_boxes)} labels")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out, "wb") as handle:
        fig.savefig(handle, format="png")
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
