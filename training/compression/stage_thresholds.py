"""The `thresholds` stage (export.score_thresholds: calibrate): per-class score thresholds of the final student,
chosen on the VAL split (data.val_split; never the reported split, never real frames) and shipped in its bundle.

The rule, per class c of the K classes, with N val frames and B = export.max_false_positives_per_frame:
  1. run the final student (with its IoU gate) on every val frame, keeping boxes down to
     export.calibration_min_threshold (the floor);
  2. mark its false positives with training/detection_diagnostics.py's match_frame (the real-data check's rule: a
     detection the devkit would score that overlaps no labelled object at BEV IoU >= 0.25 and lies in no DontCare
     region);
  3. the threshold of c = the lowest value on a 0.001 grid, >= the floor, at which class c keeps at most B / K false
     positives per frame on val (pick_threshold). Whether a kept box is a false positive does not depend on the
     threshold, so the count at threshold t is the number of flagged scores >= t: one sort per class, no sweep.
     But which boxes are kept does: NMS is class-agnostic (postprocess.class_agnostic_nms), so a Car box kept at a
     low threshold suppresses the Pedestrian box it overlaps, which comes back once the Car threshold rises (seen
     with an untrained student boxing everywhere on the smoke config's 2 val frames: Cyclist 4 false positives per
     frame with every class at the floor, 37.5 once Car's threshold rose). So class c is probed with its own
     threshold at the floor and the others at their current values, in rounds, until a round changes nothing
     (search_thresholds; a threshold only rises, so it ends; at most MAX_ROUNDS, thresholds.json says whether it
     converged).
  4. run the student again with the chosen thresholds and record, per class, the val false positives per frame and
     the recall at BEV IoU 0.5 as shipped, next to the same figures with every class at the floor (what the
     threshold cost in recall).
  5. with export.operating_points, steps 3-4 again for each further total budget (probes already run are not run
     again): thresholds.json's "operating_points" lists every budget with its thresholds and what they keep on val,
     for a user who wants another trade between false positives and recall (the export lists them in the bundle's
     manifest: the node's operating_point parameter picks one by its budget).
Writes thresholds.json; the export stage copies the thresholds into the bundle's post-processing settings.

False positives are counted in the camera's view only (the devkit's and the real-data check's rule; a 360-degree
model's val labels, label_2, hold only objects the camera sees). A threshold is a property of the scores, not of
where a box lies, so the view is a sample of the whole scan.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from clean_ros.yaml_config import ConfigError
from training.compression.run_context import CompressRun
from training.compression.stage_store import atomic_write_json, read_json
from training.compression.stored_models import ModelRef, load_reported, make_task

THRESHOLDS_FILE = "thresholds.json"
THRESHOLD_STEP = 0.001  # thresholds are multiples of this (readable, and strictly above the excluded score)
RECALL_IOU = 0.5  # detection_diagnostics.RECALL_IOUS holds it
MAX_ROUNDS = 4  # rounds of search_thresholds (one probe per class whose others' thresholds changed)


@dataclass
class ValScores:
    """What one pass over val left, pooled over frames: the scores of each class's false positives and each scored
    labelled object's best same-class score at BEV IoU 0.5 (-inf when none overlaps it)."""

    frames: int
    false_positive_scores: dict[str, np.ndarray]  # class -> (F,) scores of its false-positive detections
    found_scores: dict[str, np.ndarray]  # class -> (M,) per scored object of that class


def pick_threshold(false_positive_scores: np.ndarray, frames: int, max_per_frame: float, floor: float,
                   step: float = THRESHOLD_STEP) -> float:
    """The lowest threshold on the `step` grid, >= floor, at which at most max_per_frame * frames of these false
    positives keep their box (score >= threshold); 1.0 when even that is too many (scores of 1.0)."""
    scores = np.sort(np.asarray(false_positive_scores, dtype=np.float32))[::-1]
    allowed = int(math.floor(max_per_frame * frames + 1e-9))
    scores = scores[scores >= np.float32(floor)]
    if len(scores) <= allowed:
        return float(floor)
    excluded = scores[allowed]  # the highest score that must fall below the threshold
    grid = math.floor(float(excluded) / step) + 1
    if np.float32(grid * step) <= excluded:  # the detector compares in float32
        grid += 1
    return float(min(round(grid * step, 6), 1.0))


def fp_per_frame(false_positive_scores: np.ndarray, threshold: float, frames: int) -> float:
    return float((np.asarray(false_positive_scores, np.float32) >= np.float32(threshold)).sum()) / max(frames, 1)


def recall(found_scores: np.ndarray, threshold: float) -> float | None:
    found = np.asarray(found_scores, np.float64)
    return float((found >= np.float32(threshold)).mean()) if len(found) else None


def collect_val_scores(task, dataset, class_names: tuple[str, ...], batch_size: int, device) -> ValScores:
    """Run `task` (its post-processing as configured) over `dataset` and pool what the threshold rule needs."""
    from training.data.loader import Collator, make_dataloader
    from training.detection_diagnostics import RECALL_IOUS, LabelledFrame, match_frame

    column = RECALL_IOUS.index(RECALL_IOU)
    loader = make_dataloader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                             collate=Collator.from_config(task.cfg, training=False))
    fp_scores = {c: [] for c in class_names}
    found = {c: [] for c in class_names}
    frames = 0
    for batch in loader:
        for frame_id, det, calib, annos in zip(batch.frame_ids, task.predict(batch.to(device)), batch.calibs,
                                               batch.annotations):
            if calib is None or annos is None:
                raise ConfigError(f"split {dataset.split!r} frame {frame_id}: calibrating thresholds needs labels and "
                                  f"calibration")
            match = match_frame(LabelledFrame(str(frame_id), annos, calib), det)
            scores = np.asarray(det.scores, np.float32)
            for c in class_names:
                fp_scores[c].append(scores[match.false_positive & (match.detection_names == c)])
                found[c].append(match.found_score[match.object_scored & (match.object_names == c), column])
            frames += 1
    return ValScores(frames, {c: np.concatenate(v) for c, v in fp_scores.items()},
                     {c: np.concatenate(v) for c, v in found.items()})


def search_thresholds(measure: Callable[[list[float]], ValScores], class_names: tuple[str, ...], budget: float,
                      floor: float, max_rounds: int = MAX_ROUNDS) -> tuple[list[float], ValScores, dict]:
    """Per-class thresholds by pick_threshold, each given the others' (see the module docstring, step 3).

    measure(thresholds) runs the detector on val with those per-class thresholds. Class c is probed with its own
    threshold at the floor and the others at their current values; a threshold only ever rises, so the rounds end:
    when a round changes nothing (converged) or after max_rounds. A probe whose thresholds were already measured
    is not run again. Returns (thresholds, the first probe = every class at the floor, {"rounds", "probes",
    "converged"})."""
    current = {name: float(floor) for name in class_names}
    probed: dict[str, tuple] = {}
    at_floor: ValScores | None = None
    rounds = probes = 0
    changed = True
    while changed and rounds < max_rounds:
        rounds += 1
        changed = False
        for name in class_names:
            probe = [float(floor) if n == name else current[n] for n in class_names]
            if probed.get(name) == tuple(probe):
                continue
            probed[name] = tuple(probe)
            scores = measure(probe)
            probes += 1
            if at_floor is None:
                at_floor = scores  # the first probe has every class at the floor
            threshold = pick_threshold(scores.false_positive_scores[name], scores.frames, budget, floor)
            if threshold > current[name]:
                current[name], changed = threshold, True
    assert at_floor is not None  # the first round probes every class
    return [current[n] for n in class_names], at_floor, {"rounds": rounds, "probes": probes,
                                                          "converged": not changed}


def calibrate(run: CompressRun, folder: Path, refs: dict[str, ModelRef]) -> dict:
    c = run.cfg
    e = c.export
    kind, cfg, module = load_reported(run.stages_dir, refs["student_final"], c.iou_refine.gate)
    names = tuple(cfg.class_names)
    dataset = run.datasets.split(c.data.val_split, cfg)
    budget = e.max_false_positives_per_frame / len(names)
    task = make_task(kind, cfg, module).to(run.device)
    shipped = list(cfg.postprocess.score_thresholds)

    measured: dict[tuple, ValScores] = {}  # the operating points' searches repeat probes (all at the floor first)

    def measure(thresholds: list[float]) -> ValScores:
        key = tuple(thresholds)
        if key not in measured:
            cfg.postprocess.score_thresholds = list(thresholds)  # the task's post-processing reads this config
            measured[key] = collect_val_scores(task, dataset, names, c.evaluation.batch_size, run.device)
        return measured[key]

    run.log(f"    student_final on split {c.data.val_split!r} ({len(dataset)} frames), floor "
            f"{e.calibration_min_threshold:g}, budget {budget:.3g} false positives per frame and class")
    chosen, at_floor, search = search_thresholds(measure, names, budget, e.calibration_min_threshold)
    as_shipped = measure(chosen)
    per_class = {}
    for name, threshold in zip(names, chosen):
        fp, objects = as_shipped.false_positive_scores[name], as_shipped.found_scores[name]
        floor_fp = fp_per_frame(at_floor.false_positive_scores[name], e.calibration_min_threshold, at_floor.frames)
        per_class[name] = {
            "threshold": threshold,
            "val_fp_per_frame": fp_per_frame(fp, threshold, as_shipped.frames),
            "val_recall_iou50": recall(objects, threshold),
            "val_objects": int(len(objects)),
            "budget_met": fp_per_frame(fp, threshold, as_shipped.frames) <= budget + 1e-9,
            "at_floor": {"threshold": e.calibration_min_threshold, "val_fp_per_frame": floor_fp,
                         "val_recall_iou50": recall(at_floor.found_scores[name], e.calibration_min_threshold)},
        }
        run.log(f"    {name}: threshold {threshold:g}, val false positives / frame "
                f"{per_class[name]['val_fp_per_frame']:.2f}, recall at BEV IoU 0.5 "
                f"{_fmt(per_class[name]['val_recall_iou50'])} (at {e.calibration_min_threshold:g}: {floor_fp:.2f}, "
                f"{_fmt(per_class[name]['at_floor']['val_recall_iou50'])})")
    result = {
        "split": c.data.val_split, "frames": as_shipped.frames,
        "rule": "per class: the lowest threshold on a 0.001 grid, >= calibration_min_threshold, whose val false "
                "positives per frame (camera view, no labelled object at BEV IoU >= 0.25, not in DontCare) are <= "
                "max_false_positives_per_frame / classes, given the other classes' thresholds (class-agnostic NMS "
                "couples them); rounds until no threshold changes",
        "max_false_positives_per_frame": e.max_false_positives_per_frame, "per_class_budget": budget,
        "calibration_min_threshold": e.calibration_min_threshold, "thresholds_before": shipped, **search,
        "val_fp_per_frame_total": sum(v["val_fp_per_frame"] for v in per_class.values()),
        "classes": per_class,
    }
    result["operating_points"] = operating_points(measure, names, e.max_false_positives_per_frame,
                                                  e.operating_points, e.calibration_min_threshold, run.log)
    atomic_write_json(folder / THRESHOLDS_FILE, result)
    if not all(v["budget_met"] for v in per_class.values()):
        run.log(f"    warning: over budget as shipped: "
                f"{', '.join(n for n, v in per_class.items() if not v['budget_met'])} (thresholds.json)")
    return {"thresholds": chosen, "val_fp_per_frame_total": round(result["val_fp_per_frame_total"], 4), **search}


def operating_points(measure: Callable[[list[float]], ValScores], class_names: tuple[str, ...], shipped: float,
                     budgets, floor: float, log=lambda line: None) -> list[dict]:
    """The shipped budget and each further one (export.operating_points), lowest first: the thresholds the same rule
    (search_thresholds) gives for that total budget, and what they keep on val (false positives per frame and recall
    at BEV IoU 0.5, per class and in all)."""
    points = []
    for budget in sorted({float(shipped), *(float(b) for b in budgets)}):
        chosen, _, search = search_thresholds(measure, class_names, budget / len(class_names), floor)
        kept = measure(chosen)
        classes = {name: {"threshold": t,
                          "val_fp_per_frame": fp_per_frame(kept.false_positive_scores[name], t, kept.frames),
                          "val_recall_iou50": recall(kept.found_scores[name], t)}
                   for name, t in zip(class_names, chosen)}
        found = sum(int((kept.found_scores[n] >= np.float32(t)).sum()) for n, t in zip(class_names, chosen))
        objects = sum(len(kept.found_scores[n]) for n in class_names)
        points.append({"max_false_positives_per_frame": budget, "shipped": budget == float(shipped),
                       "thresholds": chosen, "converged": search["converged"],
                       "val_fp_per_frame_total": sum(v["val_fp_per_frame"] for v in classes.values()),
                       "val_recall_iou50_all": found / objects if objects else None, "classes": classes})
        if len(budgets):
            log(f"    operating point {budget:g} false positives per frame: thresholds "
                f"{', '.join(f'{n} {t:g}' for n, t in zip(class_names, chosen))}; val recall at BEV IoU 0.5 "
                f"{_fmt(points[-1]['val_recall_iou50_all'])} of all objects")
    return points


def _fmt(value: float | None) -> str:
    return "n/a (no object)" if value is None else f"{value:.1%}"


def read_thresholds(stages_dir: Path) -> dict | None:
    """thresholds.json of a finished thresholds stage, or None."""
    return read_json(Path(stages_dir) / "thresholds" / THRESHOLDS_FILE)


def calibrated_score_thresholds(stages_dir: Path, class_names: tuple[str, ...]) -> list[float]:
    """The thresholds stage's per-class thresholds in class_names order (ConfigError when missing / other classes)."""
    data = read_thresholds(stages_dir)
    if not data:
        raise ConfigError(f"{Path(stages_dir) / 'thresholds' / THRESHOLDS_FILE}: missing; export.score_thresholds is "
                          f"'calibrate' but the thresholds stage left no result")
    classes = data.get("classes") or {}
    if set(classes) != set(class_names):
        raise ConfigError(f"{THRESHOLDS_FILE}: classes {sorted(classes)} differ from the model's {list(class_names)}")
    return [float(classes[n]["threshold"]) for n in class_names]


def manifest_operating_points(stages_dir: Path, class_names: tuple[str, ...]) -> list[dict]:
    """thresholds.json's operating points as the bundle manifest's `operating_points` entries
    (clean_ros.inference.operating_points); [] without them (export.operating_points empty)."""
    data = read_thresholds(stages_dir) or {}
    entries = []
    for point in data.get("operating_points") or []:
        classes = point.get("classes") or {}
        if set(classes) != set(class_names):
            raise ConfigError(f"{THRESHOLDS_FILE}: operating point classes {sorted(classes)} differ from the model's "
                              f"{list(class_names)}")
        entries.append({"max_false_positives_per_frame": float(point["max_false_positives_per_frame"]),
                        "score_thresholds": [float(classes[n]["threshold"]) for n in class_names],
                        "shipped": bool(point.get("shipped", False)),
                        "val_false_positives_per_frame": round(float(point["val_fp_per_frame_total"]), 4),
                        "val_recall_iou50": {n: round(float(classes[n]["val_recall_iou50"]), 4) for n in class_names
                                             if classes[n].get("val_recall_iou50") is not None}})
    return entries


__all__ = ["THRESHOLDS_FILE", "THRESHOLD_STEP", "MAX_ROUNDS", "ValScores", "pick_threshold", "fp_per_frame",
           "recall", "collect_val_scores", "search_thresholds", "operating_points", "calibrate", "read_thresholds",
           "calibrated_score_thresholds", "manifest_operating_points"]
