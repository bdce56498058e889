#!/usr/bin/env python3
"""Choose a bundle's ground-contact gate on simulated val frames and record it in its manifest.

    python training/ground_gate.py BUNDLE DATASET [--split val] [--keep 0.999] [--dry-run]

The bundle runs on the split as the node runs it (its thresholds, automatic intensity, the default backend) with the
gate off; every detection is matched to the labels with
the real-data check's rule (training/detection_diagnostics.match_frame: BEV IoU 0.5, the devkit's scored objects)
and its gap to the local ground measured (clean_ros.inference.ground_gate). The gate is the KEEP quantile of the
matched detections' gaps, rounded up to 5 cm: a box that floats higher than almost every correct box on the
simulated frames is dropped (docs/RELEASE.md "Floating boxes"; the node's `ground_gate_m`). Printed: the gate and
what it removes on the split (matched detections, false positives). Without --dry-run the manifest gets
`ground_gate_m` and `ground_gate_calibration` (what it was chosen on), written atomically; the bundle must load
before and after. Choose on simulated data only: real labelled scans are for checking.

Mistakes: one line `error: ...`, exit 2; a bundle that matches no labelled object on the split (an untrained one):
one line, exit 3, nothing written.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXIT_BAD_INPUT = 2
EXIT_NOTHING_MATCHED = 3  # the bundle matched no labelled object on the split: no gate can be chosen
STEP_M = 0.05


class NothingMatched(ValueError):
    """No detection matched a labelled object: nothing to choose the gate by."""


def labelled_detections(bundle: Path, dataset: Path, split: str | None, threads: int = 1,
                        ground_gate_m: float | None = 0.0):
    """(points, detections, FrameMatch) of each frame of a labelled KITTI-layout split, the bundle run as the node runs
    it (default backend, automatic intensity) with the ground gate at ground_gate_m (None: the bundle's own) and every
    detection matched with the real-data check's rule (training/detection_diagnostics.match_frame)."""
    import torch

    from clean_ros import defaults
    from clean_ros.cloud.kitti import split_frame_ids
    from clean_ros.inference.pipeline import Pipeline
    from training.data.kitti_dataset import read_velodyne
    from training.detection_diagnostics import LabelledFrame, match_frame

    torch.set_num_threads(max(1, threads))
    pipe = Pipeline.from_bundle(bundle, backend=defaults.BACKEND, intra_op_threads=threads)
    pipe.set_auto_intensity(defaults.AUTO_INTENSITY)
    if ground_gate_m is not None:
        pipe.set_ground_gate(ground_gate_m)
    split_dir, frame_ids, _ = split_frame_ids(dataset, split)
    for frame_id in frame_ids:
        points = read_velodyne(split_dir / "velodyne" / f"{frame_id}.bin")
        detections = pipe(points).detections
        yield points, detections, match_frame(LabelledFrame.read(split_dir, frame_id), detections, points)


def measure_gaps(bundle: Path, dataset: Path, split: str | None, threads: int = 1) -> dict:
    """Gaps (m) of the matched detections and of the false positives on the split, gate off; NaN-free."""
    from clean_ros.inference.ground_gate import box_ground_gaps

    matched, false_positive = [], []
    for points, detections, match in labelled_detections(bundle, dataset, split, threads):
        gaps = box_ground_gaps(points, detections.boxes)
        matched.append(gaps[match.detection_scored & ~match.false_positive])
        false_positive.append(gaps[match.false_positive])
    clean = [np.concatenate(v) if v else np.zeros(0, np.float32) for v in (matched, false_positive)]
    return {"frames": len(matched), "matched": clean[0][np.isfinite(clean[0])],
            "false_positives": clean[1][np.isfinite(clean[1])]}


def choose_gate(matched: np.ndarray, keep: float) -> float:
    """The keep-quantile of the matched gaps, rounded up to STEP_M (at least one step)."""
    if len(matched) == 0:
        raise NothingMatched("no detection matched a labelled object on the split: nothing to choose the gate by; "
                             "no gate recorded")
    return max(STEP_M, math.ceil(float(np.quantile(matched, keep)) / STEP_M - 1e-9) * STEP_M)


def record_gate(bundle: Path, gate: float, calibration: dict) -> None:
    from clean_ros.atomic import atomic_open
    from clean_ros.inference.bundle import MANIFEST_NAME, load_bundle

    load_bundle(bundle)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["ground_gate_m"] = round(gate, 4)
    manifest["ground_gate_calibration"] = calibration
    with atomic_open(bundle / MANIFEST_NAME, "w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    load_bundle(bundle)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python training/ground_gate.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("dataset", type=Path, help="KITTI root with ImageSets/ (a simulated dataset) or split folder")
    ap.add_argument("--split", default="val", help="ImageSets split (default val)")
    ap.add_argument("--keep", type=float, default=0.999, help="share of matched detections the gate keeps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dry-run", action="store_true", help="print, do not write the manifest")
    args = ap.parse_args(argv)
    from clean_ros.cloud.kitti import KittiFormatError
    from clean_ros.inference.bundle import BundleError

    try:
        if not 0.5 <= args.keep < 1.0:
            raise ValueError(f"--keep must be in [0.5, 1), got {args.keep}")
        gaps = measure_gaps(args.bundle, args.dataset, args.split, args.threads)
        gate = choose_gate(gaps["matched"], args.keep)
        matched, fp = gaps["matched"], gaps["false_positives"]
        calibration = {"data": str(args.dataset), "split": args.split, "frames": gaps["frames"], "keep": args.keep,
                       "matched": int(len(matched)), "matched_removed": int((matched > gate).sum()),
                       "false_positives": int(len(fp)), "false_positives_removed": int((fp > gate).sum()),
                       "matched_gap_max_m": round(float(matched.max()), 3)}
        print(f"ground gate {gate:.2f} m on {gaps['frames']} frames of {args.dataset} split {args.split}: removes "
              f"{calibration['matched_removed']} of {len(matched)} matched detections and "
              f"{calibration['false_positives_removed']} of {len(fp)} false positives (largest matched gap "
              f"{calibration['matched_gap_max_m']:.2f} m)")
        if not args.dry_run:
            record_gate(args.bundle, gate, calibration)
            print(f"recorded in {args.bundle}/manifest.json (ground_gate_m)")
        return 0
    except NothingMatched as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOTHING_MATCHED
    except (ValueError, KittiFormatError, BundleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
