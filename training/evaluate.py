"""KITTI evaluation from the command line.

    python training/evaluate.py --gt GT_LABEL_DIR --pred PRED_DIR [--out results.json]

GT_LABEL_DIR holds KITTI label_2 files; PRED_DIR the same file names in KITTI format with a 16th column (score).
A frame without a prediction file has no detections. Prints the AP table (R40 and R11) and writes the results
as JSON. Bad input ends with "file:line: message" and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clean_ros.atomic import atomic_write_json  # noqa: E402
from clean_ros.cloud.kitti import KittiFormatError, KittiObjects, read_labels  # noqa: E402
from clean_ros.metrics.kitti_eval import CLASSES, evaluate, format_results, mean_ap_3d_moderate  # noqa: E402

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Input the user has to fix; the message says what and where."""


def load_frames(gt_dir: Path, pred_dir: Path) -> tuple[list[str], list[KittiObjects], list[KittiObjects], int]:
    """Ground truth and predictions per frame (sorted by file name); also the number of missing prediction files."""
    for kind, path in (("ground-truth", gt_dir), ("prediction", pred_dir)):
        if not path.is_dir():
            raise InputError(f"{path}: {kind} directory does not exist" if not path.exists()
                             else f"{path}: {kind} path is not a directory")
    gt_files = sorted(gt_dir.glob("*.txt"))
    if not gt_files:
        raise InputError(f"{gt_dir}: no *.txt label files")
    names, gts, preds, missing = [], [], [], 0
    for gt_file in gt_files:
        pred_file = pred_dir / gt_file.name
        gts.append(read_labels(gt_file))
        if pred_file.exists():
            preds.append(read_labels(pred_file, require_score=True))
        else:
            preds.append(KittiObjects.empty(with_score=True))
            missing += 1
        names.append(gt_file.stem)
    return names, gts, preds, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="KITTI 3D object evaluation (official devkit protocol, R40 and R11).")
    parser.add_argument("--gt", required=True, type=Path, help="directory of KITTI label_2 files")
    parser.add_argument("--pred", required=True, type=Path, help="directory of prediction files (16 columns)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), help="classes to evaluate")
    args = parser.parse_args(argv)
    try:
        names, gts, preds, missing = load_frames(args.gt, args.pred)
        results = evaluate(gts, preds, tuple(args.classes))
    except (KittiFormatError, InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{len(names)} frames ({missing} without a prediction file, counted as no detections)")
    print(format_results(results))
    if args.out is not None:
        payload = {"frames": len(names), "frames_without_predictions": missing, "results": results}
        if all(c in results for c in CLASSES):
            payload["mAP_3d_R40_moderate"] = mean_ap_3d_moderate(results)
        try:
            atomic_write_json(args.out, payload)
        except OSError as exc:
            print(f"error: {args.out}: cannot write: {exc.strerror}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
