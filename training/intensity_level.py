"""The training intensity level of a KITTI-layout dataset, and writing it into a bundle's manifest.

    python training/intensity_level.py DATASET [--split train]              # print the level
    python training/intensity_level.py DATASET --split train --bundle B     # ... and record it in B/manifest.json

The level is the median over the split's scans of each scan's median intensity 3-40 m away
(clean_ros/inference/intensity_level.py); `--auto-intensity` in infer and the real-data check, and the node's
`auto_intensity` parameter, scale another sensor's scans to it. The compress pipeline's export stage records it in
every bundle it writes (from the run's training split); this tool adds it to a bundle written before that.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.bundle_fields import EXIT_BAD_INPUT, measure_and_record  # noqa: E402,F401


def main(argv: list[str] | None = None) -> int:
    from clean_ros.inference.intensity_level import dataset_intensity_level

    return measure_and_record(argv, "training/intensity_level.py", __doc__, "intensity_level", dataset_intensity_level,
                              lambda count, where, level: f"intensity level of {count} scans of {where}: {level:.4f}")


if __name__ == "__main__":
    sys.exit(main())
