"""Measured fields of a bundle's manifest that come from its training scans (intensity_level, ground_height): the
scans of a split, and writing one such field into an existing bundle."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Iterable

EXIT_BAD_INPUT = 2


def split_scans(root: Path, split: str | None):
    """(count, scans) of a KITTI root (or split folder) and optional ImageSets split, read one at a time."""
    from clean_ros.cloud.kitti import read_velodyne, split_frame_ids

    split_dir, frame_ids, _ = split_frame_ids(root, split)
    return len(frame_ids), (read_velodyne(split_dir / "velodyne" / f"{i}.bin") for i in frame_ids)


def record_field(bundle: Path, field: str, value: float, source: str) -> None:
    """Write a number `field` (and where it came from, provenance `<field>_from`) into a bundle's manifest,
    atomically; the bundle must load before and after (so a value the manifest check refuses is never left)."""
    from clean_ros.atomic import atomic_open
    from clean_ros.inference.bundle import MANIFEST_NAME, load_bundle

    load_bundle(bundle)
    path = bundle / MANIFEST_NAME
    before = path.read_text()
    manifest = json.loads(before)
    manifest[field] = round(float(value), 6)
    manifest.setdefault("provenance", {})[f"{field}_from"] = source
    with atomic_open(path, "w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    try:
        load_bundle(bundle)
    except Exception:
        with atomic_open(path, "w") as f:
            f.write(before)
        raise


def measure_and_record(argv: list[str] | None, tool: str, doc: str, field: str,
                       measure: Callable[[Iterable], float], say: Callable[[int, str, float], str]) -> int:
    """The command line of a field's tool (training/intensity_level.py, training/ground_height.py): DATASET
    [--split S] [--bundle B]; measure the field on the split's scans, print `say(count, where, value)`, record it in
    the bundle if given. Bad input: one `error:` line, exit 2, the bundle as it was."""
    ap = argparse.ArgumentParser(prog=f"python {tool}", description=doc.split("\n\n")[0])
    ap.add_argument("dataset", type=Path, help="KITTI root (training/velodyne/) or split folder (velodyne/)")
    ap.add_argument("--split", help="only the scans of ImageSets/SPLIT.txt (e.g. train)")
    ap.add_argument("--bundle", type=Path, help=f"record {field} in this bundle's manifest")
    args = ap.parse_args(argv)
    from clean_ros.cloud.kitti import KittiFormatError
    from clean_ros.inference.bundle import BundleError

    try:
        count, scans = split_scans(args.dataset, args.split)
        value = measure(scans)
        where = f"{args.dataset}" + (f" split {args.split}" if args.split else "")
        print(say(count, where, value))
        if args.bundle is not None:
            record_field(args.bundle, field, value, f"{tool} on {count} scans of {where}")
            print(f"recorded in {args.bundle}/manifest.json")
        return 0
    except (ValueError, KittiFormatError, BundleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
