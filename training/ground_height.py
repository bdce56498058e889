"""The training scans' ground height of a KITTI-layout dataset, and writing it into a bundle's manifest.

    python training/ground_height.py DATASET [--split train]              # print it
    python training/ground_height.py DATASET --split train --bundle B     # ... and record it in B/manifest.json

The ground height is the median over the split's scans of each scan's fitted ground plane's distance below the
sensor (clean_ros/inference/ground_plane.py). The node's mount check (`ground_check`) and automatic mount
(`auto_sensor_mount`) compare another sensor's measured ground with it, so the estimator's own bias cancels; a bundle
without it is compared with its `sensor_height`. The compress pipeline's export stage records it in every bundle it
writes (from the run's training split); this tool adds it to a bundle written before that.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.bundle_fields import EXIT_BAD_INPUT, measure_and_record  # noqa: E402,F401


def main(argv: list[str] | None = None) -> int:
    from clean_ros.inference.ground_plane import dataset_ground_height

    return measure_and_record(argv, "training/ground_height.py", __doc__, "ground_height", dataset_ground_height,
                              lambda count, where, height: f"ground height of {count} scans of {where}: {height:.4f} m "
                                                           "below the sensor")


if __name__ == "__main__":
    sys.exit(main())
