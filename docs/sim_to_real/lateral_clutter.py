"""How far beside the road the near clutter stands, real against simulated (docs/SIM_TO_REAL.md, "Where the near
clutter stands"). Reproduction script for one paragraph, not a tool.

    PYTHONPATH=. python docs/sim_to_real/lateral_clutter.py ../shared/data/kitti_sample/training 6
    PYTHONPATH=. python docs/sim_to_real/lateral_clutter.py runs/release_default/stages/data/dataset/training 40

Clutter = points 0.3-2 m above the fitted ground (training/scan_stats.fit_ground), outside every labelled box, 5-25 m
ahead of the sensor (x), any |y|. Prints the mean points per frame by |y| band and, per side of each frame, the 10th
percentile of |y| of that side's clutter (the nearest structure beside the road), when the side has > 50 points.
"""
import sys
from pathlib import Path

import numpy as np

from clean_ros.cloud.kitti import Calibration, read_labels
from training.data.augment import first_box_of_point
from training.data.kitti_dataset import ground_truth_from_annotations, read_velodyne
from training.scan_stats import CLASSES, fit_ground

BANDS = [0, 3, 5, 8, 12, 20, 40]


def frame_clutter(folder: Path, frame_id: str) -> tuple[list[float], np.ndarray]:
    points = read_velodyne(folder / "velodyne" / f"{frame_id}.bin")
    calib = Calibration.from_file(folder / "calib" / f"{frame_id}.txt")
    boxes, _, _, _ = ground_truth_from_annotations(read_labels(folder / "label_2" / f"{frame_id}.txt"), calib,
                                                   CLASSES)
    height = fit_ground(points).height_above
    owner = first_box_of_point(points, boxes.astype(np.float64))
    with np.errstate(invalid="ignore"):
        clutter = (owner < 0) & (height >= 0.3) & (height < 2.0) & (points[:, 0] > 5) & (points[:, 0] < 25)
    y = points[clutter, 1]
    nearest = [float(np.percentile(side * y[side * y > 0], 10)) if (side * y > 0).sum() > 50 else np.nan
               for side in (1, -1)]
    return nearest, np.histogram(np.abs(y), BANDS)[0]


def main(folder: str, frames: int) -> None:
    folder = Path(folder)
    ids = sorted(p.stem for p in (folder / "velodyne").glob("*.bin"))[:frames]
    nearest, counts = [], []
    for frame_id in ids:
        n, c = frame_clutter(folder, frame_id)
        nearest += n
        counts.append(c)
    nearest = np.array(nearest)
    print(f"{folder}: {len(ids)} frames")
    print(f"  clutter points per frame by |y| band {BANDS} m: {np.round(np.mean(counts, 0)).astype(int).tolist()}")
    print(f"  nearest structure per side (10th percentile of |y|): median {np.nanmedian(nearest):.1f} m, quartiles "
          f"{np.nanpercentile(nearest, 25):.1f}-{np.nanpercentile(nearest, 75):.1f} m")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
