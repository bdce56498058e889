"""The training intensity level of a KITTI-layout dataset, and writing it into a bundle's manifest.

    python training/intensity_level.py DATASET [--split train]              # print the level
    python training/intensity_level.py DATASET --split train --bundle B     # ... and record it in B/manifest.json

The level is the median over the split's scans of each scan's median intensity 3-40 m away
(clean_ros/inference/intensity_level.py); `--auto-intensity` in infer and the real-data check, and the node's
`auto_intensity` parameter, scale another sensor's scans to it. The compress pipeline's export stage records it in
every bundle it writes (from the run's training split); this tool adds it to a bundle written before that.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXIT_BAD_INPUT = 2


def split_scans(root: Path, split: str | None):
    """The scans of a KITTI root (or split folder) and optional ImageSets split, read one at a time."""
    from clean_ros.cloud.kitti import read_velodyne, split_frame_ids

    split_dir, frame_ids, _ = split_frame_ids(root, split)
    return len(frame_ids), (read_velodyne(split_dir / "velodyne" / f"{i}.bin") for i in frame_ids)


def record_level(bundle: Path, level: float, source: str) -> None:
    """Write `intensity_level` (and where it came from) into a bundle's manifest, atomically; the bundle must load
    before and after."""
    from clean_ros.atomic import atomic_open
    from clean_ros.inference.bundle import MANIFEST_NAME, load_bundle

    load_bundle(bundle)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["intensity_level"] = round(float(level), 6)
    manifest.setdefault("provenance", {})["intensity_level_from"] = source
    with atomic_open(bundle / MANIFEST_NAME, "w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    load_bundle(bundle)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python training/intensity_level.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path, help="KITTI root (training/velodyne/) or split folder (velodyne/)")
    ap.add_argument("--split", help="only the scans of ImageSets/SPLIT.txt (e.g. train)")
    ap.add_argument("--bundle", type=Path, help="record the level in this bundle's manifest")
    args = ap.parse_args(argv)
    from clean_ros.cloud.kitti import KittiFormatError
    from clean_ros.inference.bundle import BundleError
    from clean_ros.inference.intensity_level import dataset_intensity_level

    try:
        count, scans = split_scans(args.dataset, args.split)
        level = dataset_intensity_level(scans)
        where = f"{args.dataset}" + (f" split {args.split}" if args.split else "")
        print(f"intensity level of {count} scans of {where}: {level:.4f}")
        if args.bundle is not None:
            record_level(args.bundle, level, f"training/intensity_level.py on {count} scans of {where}")
            print(f"recorded in {args.bundle}/manifest.json")
        return 0
    except (ValueError, KittiFormatError, BundleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
