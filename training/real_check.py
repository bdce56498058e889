"""The real-data check: run a model bundle on labelled real scans and print what it finds and what it gets wrong.

    python training/real_check.py [--bundle models/default] FOLDER [--split NAME] [--out report.json]
                                  [--backend auto|torch|onnxruntime|tensorrt] [--device cpu] [--int8] [--threads 1]
                                  [--intensity-scale S] [--no-auto-intensity]
                                  [--sensor-height M [--sensor-pitch RAD] [--sensor-roll RAD] | --auto-sensor-mount] [--no-ground-check] [--emulate-sensor SPEC] [--score-threshold T|T1,T2,.. | --operating-point FP] [--save-predictions DIR]
                                  [--list-false-positives] [--quiet]

FOLDER is any folder in the KITTI object layout: a split folder holding velodyne/*.bin, label_2/*.txt and calib/*.txt
(e.g. .../kitti_sample/training), or a KITTI root holding training/ (and optionally ImageSets/). Every scan is used,
or only the frames listed in ImageSets/<NAME>.txt with --split NAME. image_2/<id>.png, when present, gives the
image size (else KITTI's 1242 x 375). --intensity-scale, --sensor-height / pitch / roll and --auto-sensor-mount (the
mount measured from the scans' ground) are the settings of `python -m clean_ros.infer` and the node (a sensor mounted unlike the model's training sensor); boxes stay in the
scan's frame, so the labels' calibration still applies. --emulate-sensor "height=0.5,pitch=0.02,beams=32,intensity=0.6"
re-mounts the real scans as another sensor would record them (training/sensor_emulation.py); detections are mapped
back to the scan's frame before they are compared with the labels. Each scan's intensity is scaled to the bundle's
training level when the bundle records one (clean_ros/inference/intensity_level.py; --no-auto-intensity: as recorded),
as infer and the node do; the report lists the factor per frame (`intensity_factors`).

Each frame runs through clean_ros.inference.pipeline.Pipeline, the object the node, replay and `infer` use, on the
whole scan. Printed (and written to --out as JSON, atomically):
- KITTI AP R40, BEV and 3D, easy / moderate / hard per class: clean_ros/metrics/kitti_eval.py on the detections in
  the camera's view (part of the box in the image) as a KITTI prediction file carries them (2 decimals), so the
  figures equal training/evaluate.py on `infer --out` files;
- next to it, the AP *ceiling*: what perfect detections (the labels scored against themselves, same evaluate call)
  get on the same frames. With few labelled objects the devkit's 40 recall points stay mostly empty (N objects:
  at most 100 (N - 1) / 40), so when a ceiling is below 50 the check says the folder is too small for AP and points
  at recall and false positives;
- recall of labelled objects at BEV IoU 0.5 and 0.25 by class and range band, and again by the LiDAR points on the
  object and by crowding; false positives per frame, the confusion matrix and detections per frame:
  training/detection_diagnostics.py (its docstring says what counts); with --list-false-positives each false
  positive, with where it is and the points inside.
The points on an object are counted on the scan as read, in the labels' LiDAR frame: with --emulate-sensor, on the
emulated sensor's points (rows, dropout) before its re-mount moves them out of that frame. --sensor-height / pitch
/ roll move points only inside the Pipeline, which reports boxes back in the frame it was given, so they change
no count.
Bad input (folder, bundle, a file) ends with one "error: ..." line and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from clean_ros import defaults  # noqa: E402
from clean_ros.atomic import atomic_write_json  # noqa: E402
from clean_ros.cloud.kitti import (KittiFormatError, KittiObjects, format_labels, frames_without,  # noqa: E402
                                   parse_labels, split_frame_ids, write_labels)
from clean_ros.metrics.kitti_eval import CLASSES, evaluate  # noqa: E402
from clean_ros.tools.model_input_options import add_threshold_options, apply_threshold_options  # noqa: E402
from clean_ros.tools.mount_options import add_mount_options, apply_mount_options, mount_summary  # noqa: E402

EXIT_BAD_INPUT = 2
DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "default"
AP_METRICS = ("bev_R40", "3d_R40")


class RealCheckError(Exception):
    """Input the user has to fix; the message says what and where."""


@dataclass
class KittiFolder:
    split_dir: Path  # holds velodyne/, label_2/, calib/
    frame_ids: list[str]
    source: str  # where the frame list came from


def resolve_folder(folder: Path, split: str | None = None) -> KittiFolder:
    """The split folder and its frame ids; every missing piece is a RealCheckError naming the path."""
    if not folder.exists():
        raise RealCheckError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise RealCheckError(f"{folder}: not a folder (expected a KITTI split folder with velodyne/, label_2/, calib/)")
    try:
        split_dir, frame_ids, source = split_frame_ids(folder, split)
    except ValueError as exc:
        raise RealCheckError(str(exc)) from None
    for sub in ("label_2", "calib"):
        if not (split_dir / sub).is_dir():
            raise RealCheckError(f"{split_dir / sub}: missing; the real-data check needs labels and calibration")
    for sub, suffix in (("velodyne", ".bin"), ("label_2", ".txt"), ("calib", ".txt")):
        missing = frames_without(split_dir, frame_ids, sub, suffix)
        if missing:
            raise RealCheckError(f"{split_dir / sub}: {len(missing)} of {len(frame_ids)} frames have no {suffix} "
                                 f"file, e.g. {missing[0]}{suffix}")
    return KittiFolder(split_dir, frame_ids, source)


# ------------------------------------------------------------------------------------------- running
def run_check(folder: KittiFolder, pipeline, intensity_scale: float = 1.0, save_predictions: Path | None = None,
              log=print, emulation=None) -> dict:
    """Run the pipeline on every frame and compute the report (AP + diagnostics); emulation: a SensorEmulation."""
    from training.data.kitti_dataset import read_velodyne
    from training.detection_diagnostics import (AP_CEILING_MIN, LabelledFrame, ap_below_ceiling_min, ap_ceiling,
                                                match_frame, scored_object_counts, summarize)

    frames, matches, gt_annos, dt_annos, factors = [], [], [], [], []
    for index, frame_id in enumerate(folder.frame_ids):
        d = folder.split_dir
        # scan_points: in the labels' frame, what the objects' points are counted on; points: what the bundle sees
        scan_points = read_velodyne(d / "velodyne" / f"{frame_id}.bin")
        points = scan_points
        if emulation is not None:
            scan_points = emulation.resample(scan_points, np.random.default_rng((emulation.seed, index)))
            points = emulation.remount(scan_points)
        if intensity_scale != 1.0:  # on a copy: scan_points stays the scan as recorded
            points = points.copy()
            points[:, 3] *= np.float32(intensity_scale)
        frame = LabelledFrame.read(d, frame_id)
        detections = pipeline(points).detections
        factors.append(round(pipeline.intensity_factor, 4))
        if emulation is not None:
            detections = dataclasses.replace(detections, boxes=emulation.boxes_to_scan_frame(detections.boxes))
        match = match_frame(frame, detections, scan_points)
        rows = match.detection_rows.select(match.detection_in_view)
        if save_predictions is not None:
            save_predictions.mkdir(parents=True, exist_ok=True)
            write_labels(save_predictions / f"{frame_id}.txt", rows)
        # the AP sees the detections as a prediction file carries them, like training/evaluate.py
        as_file = parse_labels(format_labels(rows), source=f"{frame_id} predictions", require_score=True) \
            if len(rows) else KittiObjects.empty(with_score=True)
        frames.append(frame)
        matches.append(match)
        gt_annos.append(frame.labels)
        dt_annos.append(as_file)
        if log is not None:
            log(f"{frame_id}: {len(points)} points, {len(detections)} detections "
                f"({int(match.detection_in_view.sum())} in the camera view, {int(match.detection_scored.sum())} "
                f"scored by the devkit), {int(match.false_positive.sum())} false positives")
    classes = tuple(c for c in pipeline.class_names if c in CLASSES)
    ap = evaluate(gt_annos, dt_annos, classes) if classes else {}
    report = summarize(frames, matches, tuple(pipeline.class_names))
    report["ap"] = {c: {m: ap[c][m] for m in AP_METRICS} for c in classes}
    report["ap_all_metrics"] = ap
    # the most any detector can score on these labels: AP is only a measure when this is high
    ceiling = ap_ceiling(gt_annos, classes) if classes else {}
    report["ap_ceiling"] = {c: {m: ceiling[c][m] for m in AP_METRICS} for c in classes}
    report["ap_scored_objects"] = scored_object_counts(gt_annos, classes)
    report["ap_ceiling_min"] = AP_CEILING_MIN
    report["ap_ceiling_below_min"] = ap_below_ceiling_min(report["ap_ceiling"], AP_METRICS)
    report["ap_classes_not_evaluated"] = [c for c in pipeline.class_names if c not in CLASSES]
    if pipeline.auto_intensity is not None:  # the factor each frame's intensity was multiplied by
        report["intensity_factors"] = factors
    return report


# ------------------------------------------------------------------------------------------- printing
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.0f}%"


def _ceiling_lines(report: dict) -> list[str]:
    """What the ceiling column means, the object counts behind it, and the too-small verdict."""
    counts = report["ap_scored_objects"]
    lines = ["  (ceiling: the AP of perfect detections on these frames, the labels scored against themselves; no model "
             "scores more. Objects the devkit scores, easy/moderate/hard: "
             + ", ".join(f"{c} {'/'.join(str(n) for n in counts[c])}" for c in report["ap"]) + ")"]
    low = report["ap_ceiling_below_min"]
    if low:
        every = len(low) == len(report["ap"]) and all(len(ds) == 3 for ds in low.values())
        where = "every class and difficulty" if every else "; ".join(
            f"{c} {'all difficulties' if len(ds) == 3 else ', '.join(ds)}" for c, ds in low.items())
        lines.append(f"  This folder is too small for AP to measure the model (ceiling below "
                     f"{report['ap_ceiling_min']:g} for {where}): judge it by the recall and false positives below.")
    return lines


def _recall_lines(by_iou: dict, bands: list[str]) -> list[str]:
    """One recall table: class, BEV IoU, then found/total and recall for all objects and for each band."""
    columns = ["all"] + bands
    lines = [f"  {'class':<11} {'BEV IoU':>7} " + " ".join(f"{c:>13}" for c in columns)]
    for iou_key, per_class in by_iou.items():
        for cls, entry in per_class.items():
            cells = [f"{entry[c]['found']}/{entry[c]['total']} {_pct(entry[c]['recall']):>4}" for c in columns]
            lines.append(f"  {cls:<11} {float(iou_key):>7.2f} " + " ".join(f"{c:>13}" for c in cells))
    return lines


def _why_missed_lines(rec: dict) -> list[str]:
    """The same recall by the points on the object and by crowding (absent from older reports)."""
    lines = []
    if rec.get("by_points") is not None:
        lines.append("  by LiDAR points inside the labelled 3D box:")
        lines.extend(_recall_lines(rec["by_points"], rec["point_bands"]))
    if rec.get("by_crowding") is not None:
        lines.append(f"  by crowding (crowded: another labelled object's BEV centre within "
                     f"{rec['crowded_distance']:g} m):")
        lines.extend(_recall_lines(rec["by_crowding"], rec["crowding"]))
    return lines


def _false_positive_lines(report: dict) -> list[str]:
    rows = [(f["frame"], b) for f in report["per_frame"] for b in f["false_positive_boxes"]]
    lines = ["  frame      class       score  x, y (LiDAR frame, m)   range   points  centre"]
    for frame_id, b in rows:
        x, y = b["box"][:2]
        points = "-" if b["points"] < 0 else str(b["points"])
        where = "in image" if b["centre_in_image"] else "beside"
        lines.append(f"  {frame_id:<10} {b['class']:<11} {b['score']:5.2f}  ({x:7.2f}, {y:7.2f})       "
                     f"{b['range']:5.1f} m {points:>6}  {where}")
    return lines if rows else []


def format_report(report: dict, list_false_positives: bool = False) -> str:
    lines = [f"KITTI AP R40 (devkit protocol; {report['frames']} frames)   easy  moderate    hard"
             f"   ceiling: easy  moderate    hard"]
    for cls, entry in report["ap"].items():
        for metric in AP_METRICS:
            e, m, h = entry[metric]
            ce, cm, ch = report["ap_ceiling"][cls][metric]
            lines.append(f"  {cls:<11} {metric.split('_')[0].upper():<4}                  {e:7.2f} {m:9.2f} {h:7.2f}"
                         f"            {ce:7.2f} {cm:9.2f} {ch:7.2f}")
    if report["ap"]:
        lines.extend(_ceiling_lines(report))
    rec = report["recall"]
    bands = rec["range_bands"]
    totals = next(iter(rec["by_iou"].values()))  # the object totals are the same at every IoU
    unmeasured = [c for c in report["ap"] if totals[c]["all"]["total"] == 0]
    if unmeasured:
        lines.append(f"  ({', '.join(unmeasured)}: no labelled object the devkit scores in these frames; the devkit "
                     f"reports AP 0, which is not a measurement)")
    lines.append("Recall of labelled objects the devkit scores (height >= 25 px, occlusion <= 2, truncation <= 0.5; "
                 "DontCare, Van, Person_sitting not counted): found/total")
    lines.extend(_recall_lines(rec["by_iou"], bands))
    unscored = {c: n for c, n in rec["labelled_but_not_scored"].items() if n}
    if unscored:
        lines.append("  labelled but not scored by the devkit (too small, occluded or truncated): "
                     + ", ".join(f"{c} {n}" for c, n in unscored.items()))
    lines.extend(_why_missed_lines(rec))
    fp, det = report["false_positives"], report["detections"]
    per_frame = "-" if fp["per_frame"] is None else f"{fp['per_frame']:.2f}"
    lines.append(f"False positives per frame: {per_frame} ({fp['total']} in {report['frames']} frames: "
                 + ", ".join(f"{c} {n}" for c, n in fp["by_class"].items())
                 + f"; scored detections overlapping no labelled object at BEV IoU >= {fp['iou']:g}, "
                   "DontCare regions excluded)")
    if fp.get("centre_outside_image"):
        lines.append(f"  of which {fp['centre_outside_image']} have the box centre outside the image (only a corner in "
                     f"view; labels drawn on the image rarely hold such objects)")
    if list_false_positives:
        lines.extend(_false_positive_lines(report))
    if det["per_frame"] is not None:
        lines.append(f"Detections per frame: {det['per_frame']:.2f} (in the camera view "
                     f"{det['in_camera_view_per_frame']:.2f}, scored by the devkit {det['scored_per_frame']:.2f})")
    head = report["heading"]
    lines.append(f"Heading of found objects (same class, BEV IoU >= {head['iou']:g}; a box turned 180 degrees keeps "
                 "its IoU, so AP does not see it): turned > 90 degrees / found, median error")
    for cls, entry in head["by_class"].items():
        median = "-" if entry["median_error_deg"] is None else f"{entry['median_error_deg']:.1f} deg"
        lines.append(f"  {cls:<11} {entry['turned_over_90']}/{entry['found']}   median {median}")
    conf = report["confusion"]
    lines.append(f"Confusions (labelled class -> class of the most-overlapping detection, BEV IoU >= {conf['iou']:g}):")
    width = max([len(c) for c in conf["columns"]] + [5])
    lines.append(f"  {'label':<14}" + " ".join(f"{c:>{width}}" for c in conf["columns"]))
    for row, counts in zip(conf["rows"], conf["counts"]):
        lines.append(f"  {row:<14}" + " ".join(f"{n:>{width}d}" for n in counts))
    if not conf["rows"]:
        lines.append("  (no labelled object the devkit scores)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python training/real_check.py",
                                 description="Run a model bundle on a KITTI-layout folder of labelled real scans: "
                                             "AP, recall, false positives, confusions.")
    ap.add_argument("folder", type=Path, help="KITTI split folder (velodyne/, label_2/, calib/) or KITTI root")
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="model bundle (default: models/default)")
    ap.add_argument("--split", help="use only the frames of ImageSets/SPLIT.txt")
    ap.add_argument("--out", type=Path, help="write the report as JSON here")
    ap.add_argument("--backend", default=defaults.BACKEND, choices=list(defaults.BACKENDS))
    ap.add_argument("--device", default=defaults.DEVICE, help="cpu or cuda[:N]")
    ap.add_argument("--int8", action="store_true",
                    help="run the bundle's int8 dense part (model.int8.onnx) on onnxruntime, as the node's int8")
    ap.add_argument("--threads", type=int, default=defaults.NUM_THREADS,
                    help="torch / onnxruntime CPU threads (0 = library default)")
    ap.add_argument("--intensity-scale", type=float, default=defaults.INTENSITY_SCALE,
                    help="multiply intensity by this (0-255 sensors: 0.00392156862745098)")
    add_mount_options(ap)  # --sensor-height / pitch / roll, --auto-sensor-mount, --no-ground-check, as in infer
    ap.add_argument("--emulate-sensor", metavar="SPEC",
                    help="re-mount the scans as another sensor: height=M,pitch=RAD,roll=RAD,beams=N,intensity=S,"
                         "gamma=G,keep=F,seed=I (training/sensor_emulation.py)")
    ap.add_argument("--no-auto-intensity", dest="auto_intensity", action="store_false",
                    default=defaults.AUTO_INTENSITY,
                    help="give the intensity as recorded (times --intensity-scale); by default each scan's intensity "
                         "is scaled to the bundle's training level when the bundle records one "
                         "(clean_ros/inference/intensity_level.py), as infer and the node do")
    add_threshold_options(ap)
    ap.add_argument("--save-predictions", type=Path, help="also write the detections as KITTI prediction files here")
    ap.add_argument("--list-false-positives", action="store_true",
                    help="print each false positive (frame, class, score, position, points inside); the JSON always "
                         "has them")
    ap.add_argument("--quiet", action="store_true", help="no per-frame lines")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from clean_ros.inference.backends import BackendError
    from clean_ros.inference.bundle import BundleError

    try:
        emulation = None
        if args.emulate_sensor is not None:
            from training.sensor_emulation import SensorEmulation

            emulation = SensorEmulation.parse(args.emulate_sensor)
        folder = resolve_folder(args.folder, args.split)
        if not args.bundle.is_dir():
            raise RealCheckError(f"--bundle {args.bundle}: no such bundle folder")
        import torch

        if args.threads > 0:
            torch.set_num_threads(args.threads)
        from clean_ros.inference.pipeline import Pipeline

        pipeline = Pipeline.from_bundle(args.bundle, backend=args.backend, device=args.device,
                                        intra_op_threads=args.threads, int8=args.int8)
        chosen = apply_threshold_options(pipeline, args)
        apply_mount_options(pipeline, args)
        off = pipeline.set_auto_intensity(args.auto_intensity)
        if off:
            print(off)
        report = run_check(folder, pipeline, args.intensity_scale, args.save_predictions,
                           log=None if args.quiet else print, emulation=emulation)
        report = {"bundle": str(args.bundle), "folder": str(folder.split_dir), "frames_from": folder.source,
                  "backend": pipeline.backend.describe(), "intensity_scale": args.intensity_scale,
                  "auto_intensity": args.auto_intensity,
                  "sensor_mount": None if pipeline.sensor_mount is None else pipeline.sensor_mount.describe(),
                  "auto_sensor_mount": bool(args.auto_sensor_mount), "ground_check": mount_summary(pipeline),
                  "emulation": None if emulation is None else emulation.describe(),
                  "score_thresholds": dict(zip(pipeline.class_names,
                                               pipeline.postprocess_settings.score_thresholds)),
                  "operating_point": args.operating_point, "ground_gate_m": pipeline.ground_gate_m, **report}
        if chosen:
            print(chosen)
        mount = "" if pipeline.sensor_mount is None else f"; {pipeline.sensor_mount.describe()}"
        mount += "" if emulation is None else f"; {emulation.describe()}"
        if pipeline.auto_intensity is not None and report["intensity_factors"]:
            factors = report["intensity_factors"]
            mount += f"; automatic intensity: factor {min(factors):.3g}-{max(factors):.3g}"
        print(f"{args.bundle} on {len(folder.frame_ids)} frames of {folder.split_dir} "
              f"(backend {pipeline.backend.describe()}{mount})")
        print(format_report(report, args.list_false_positives))
        if report["ground_check"]:
            print(report["ground_check"])
        if args.out is not None:
            atomic_write_json(args.out, report)
            print(f"wrote {args.out}")
        return 0
    except (RealCheckError, BundleError, BackendError, KittiFormatError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
