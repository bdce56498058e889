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
     That is export.threshold_split: even (the default). With max_mean_recall the total budget B is not split
     evenly: the thresholds are those that maximise the mean over classes of val recall at BEV IoU 0.5 with all
     classes' val false positives together <= B per frame (allocate_budget: exact, over the false-positive count),
     each class's curve read with the others at their current thresholds, in rounds until the allocation repeats
     (search_mean_recall). A class whose recall rises steeply with its threshold gets more of the budget than one
     whose curve is flat (on the 2026-12-07 release's val: Pedestrian more, Car less; docs/COMPRESS.md).
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
THRESHOLD_SPLITS = ("even", "max_mean_recall")  # export.threshold_split
MAX_DP_STATES = 4096  # allocate_budget is exact up to this many false positives in the budget (memory ~ states x 1000)


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
    return threshold_allowing(false_positive_scores, int(math.floor(max_per_frame * frames + 1e-9)), floor, step)


def threshold_allowing(false_positive_scores: np.ndarray, allowed: int, floor: float,
                       step: float = THRESHOLD_STEP) -> float:
    """The lowest threshold on the `step` grid, >= floor, that keeps at most `allowed` of these false positives."""
    scores = np.sort(np.asarray(false_positive_scores, dtype=np.float32))[::-1]
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


def candidate_thresholds(false_positive_scores: np.ndarray, floor: float, step: float = THRESHOLD_STEP) -> np.ndarray:
    """Every threshold at which the set of these false positives kept changes, ascending: the floor and, for each
    score >= floor, the lowest value on the `step` grid strictly above it (threshold_allowing's, vectorised). For a
    given number of false positives kept, the lowest such threshold keeps the most objects, so these are the only
    thresholds worth considering; at most one per grid step."""
    scores = np.asarray(false_positive_scores, np.float32)
    scores = scores[scores >= np.float32(floor)]
    grid = np.floor(scores.astype(np.float64) / step) + 1
    grid = np.where((grid * step).astype(np.float32) <= scores, grid + 1, grid)  # the detector compares in float32
    return np.unique(np.concatenate([[float(floor)], np.minimum(np.round(grid * step, 6), 1.0)]))


def allocate_budget(probes: dict[str, ValScores], class_names: tuple[str, ...], total_per_frame: float,
                    floor: float, bounds: list[tuple[float, float]] | None = None) -> list[float]:
    """Per-class thresholds that maximise the mean over classes of val recall at BEV IoU 0.5 while the classes' false
    positives together stay <= total_per_frame (export.threshold_split: max_mean_recall). probes[c] is the val pass
    that class c's curve is read from (c at the floor, the others at their current thresholds).

    Dynamic programming over the val false-positive count: each candidate threshold of class c (candidate_thresholds)
    keeps some of its false positives and some recall; the best sum of recalls per total count is carried class by
    class. Exact while the budget holds at most MAX_DP_STATES false positives (the release: 234); beyond, counts are
    taken in units of ceil(total / MAX_DP_STATES), each class's rounded up, so the result stays within the budget
    and may leave up to a unit per class unspent. Ties go to fewer false positives, then to the higher threshold. A
    class without val objects buys no recall, so it gets the threshold that keeps none of its false positives.
    bounds: per class (lowest, highest) threshold allowed (an operating point nested in its neighbour's;
    operating_points); each candidate is clipped into them. Upper bounds that no combination keeps within the total
    (possible only through the NMS coupling) give the bounds themselves."""
    frames = next(iter(probes.values())).frames
    total = int(math.floor(total_per_frame * frames + 1e-9))
    unit = max(1, math.ceil(total / MAX_DP_STATES))
    states = total // unit + 1
    value = np.full(states, -np.inf)  # best recall sum per false positives used (in units)
    value[0] = 0.0
    chosen = np.zeros((states, 0))  # thresholds behind each state
    for name in class_names:
        fp = np.sort(np.asarray(probes[name].false_positive_scores[name], np.float32))
        found = np.sort(np.asarray(probes[name].found_scores[name], np.float32))
        low, high = bounds[class_names.index(name)] if bounds else (floor, 1.0)
        thresholds = np.unique(np.clip(candidate_thresholds(fp, floor), low, high))[::-1]  # highest first
        kept = thresholds.astype(np.float32)
        used = len(fp) - np.searchsorted(fp, kept, side="left")  # (J,) false positives scored >= each threshold
        gained = (len(found) - np.searchsorted(found, kept, side="left")) / len(found) if len(found) else \
            np.zeros(len(thresholds))
        cost = -(-used // unit)  # in units, rounded up
        state = np.arange(states)[:, None] + cost[None, :]  # (S, J) count after this class
        candidate = np.where(state < states, value[:, None] + gained[None, :], -np.inf)
        flat_state, flat_value = state.ravel(), candidate.ravel()
        # per resulting count the best candidate; lexsort is stable, so ties keep the lower count before it and the
        # higher threshold (the order of both axes)
        order = np.lexsort((-flat_value, flat_state))
        first = np.ones(len(order), bool)
        first[1:] = flat_state[order][1:] != flat_state[order][:-1]
        best = order[first & (flat_state[order] < states)]
        new_value = np.full(states, -np.inf)
        new_chosen = np.zeros((states, chosen.shape[1] + 1))
        src, option = np.divmod(best, len(thresholds))
        new_value[flat_state[best]] = flat_value[best]
        new_chosen[flat_state[best]] = np.column_stack([chosen[src], thresholds[option]])
        value, chosen = new_value, new_chosen
    best_value = value.max()
    if not np.isfinite(best_value):  # only with upper bounds that no combination keeps within the total
        return [float(high) for _, high in bounds]
    state = int(np.flatnonzero(value >= best_value - 1e-12)[0])  # fewest false positives among the best
    return [float(t) for t in chosen[state]]


def search_mean_recall(measure: Callable[[list[float]], ValScores], class_names: tuple[str, ...],
                       total_per_frame: float, floor: float, bounds: list[tuple[float, float]] | None = None,
                       max_rounds: int = MAX_ROUNDS) -> tuple[list[float], ValScores, dict]:
    """Thresholds by allocate_budget, each class's curve read with the others at their current thresholds (the
    coupling through class-agnostic NMS, as in search_thresholds): rounds until the allocation repeats itself
    (converged) or max_rounds; an allocation that keeps changing ends there, unconverged (thresholds.json says so).
    Unbounded, the first round reads every class from one pass at the floor (returned as the at-floor pass). Same
    return as search_thresholds. bounds: see allocate_budget (the others start at their lowest allowed threshold)."""
    current = [max(float(floor), low) for low, _ in bounds] if bounds else [float(floor)] * len(class_names)
    requested: set[tuple] = set()
    at_floor: ValScores | None = None
    rounds = probes = 0
    converged = False
    while rounds < max_rounds:
        rounds += 1
        curves = {}
        for i, name in enumerate(class_names):
            probe = [float(floor) if j == i else t for j, t in enumerate(current)]
            if tuple(probe) not in requested:
                requested.add(tuple(probe))
                probes += 1
            curves[name] = measure(probe)
            if at_floor is None:
                at_floor = curves[name]
        allocated = allocate_budget(curves, class_names, total_per_frame, floor, bounds)
        if allocated == current:
            converged = True
            break
        current = allocated
    assert at_floor is not None
    return current, at_floor, {"rounds": rounds, "probes": probes, "converged": converged}


def search_for(split: str) -> Callable[..., tuple[list[float], ValScores, dict]]:
    """search(measure, class_names, total_per_frame, floor, bounds=None) of an export.threshold_split. The even
    split ignores bounds: its per-class thresholds fall as the budget grows by construction (pick_threshold)."""
    if split == "even":
        return lambda measure, names, total, floor, bounds=None: search_thresholds(measure, names, total / len(names),
                                                                                   floor)
    if split == "max_mean_recall":
        return search_mean_recall
    raise ConfigError(f"export.threshold_split must be one of {THRESHOLD_SPLITS}, got {split!r}")


RULES = {
    "even": "per class: the lowest threshold on a 0.001 grid, >= calibration_min_threshold, whose val false positives "
            "per frame (camera view, no labelled object at BEV IoU >= 0.25, not in DontCare) are <= "
            "max_false_positives_per_frame / classes, given the other classes' thresholds (class-agnostic NMS "
            "couples them); rounds until no threshold changes",
    "max_mean_recall": "the per-class thresholds (0.001 grid, >= calibration_min_threshold) that maximise the mean "
                       "over classes of val recall at BEV IoU 0.5 with the val false positives of all classes "
                       "together (camera view, no labelled object at BEV IoU >= 0.25, not in DontCare) <= "
                       "max_false_positives_per_frame; each class's curve read with the others at their thresholds "
                       "(class-agnostic NMS couples them); rounds until the allocation repeats",
}


def calibrate(run: CompressRun, folder: Path, refs: dict[str, ModelRef]) -> dict:
    c = run.cfg
    e = c.export
    kind, cfg, module = load_reported(run.stages_dir, refs["student_final"], c.iou_refine.gate)
    names = tuple(cfg.class_names)
    dataset = run.datasets.split(c.data.val_split, cfg)
    even = e.threshold_split == "even"
    budget = e.max_false_positives_per_frame / len(names)  # each class's share under the even split
    search_rule = search_for(e.threshold_split)
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
            f"{e.calibration_min_threshold:g}, budget " + (f"{budget:.3g} false positives per frame and class" if even
            else f"{e.max_false_positives_per_frame:g} false positives per frame in all, split for the best mean "
                 f"recall"))
    chosen, at_floor, search = search_rule(measure, names, e.max_false_positives_per_frame,
                                           e.calibration_min_threshold)
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
            "budget_met": fp_per_frame(fp, threshold, as_shipped.frames) <= budget + 1e-9 if even else None,
            "at_floor": {"threshold": e.calibration_min_threshold, "val_fp_per_frame": floor_fp,
                         "val_recall_iou50": recall(at_floor.found_scores[name], e.calibration_min_threshold)},
        }
        run.log(f"    {name}: threshold {threshold:g}, val false positives / frame "
                f"{per_class[name]['val_fp_per_frame']:.2f}, recall at BEV IoU 0.5 "
                f"{_fmt(per_class[name]['val_recall_iou50'])} (at {e.calibration_min_threshold:g}: {floor_fp:.2f}, "
                f"{_fmt(per_class[name]['at_floor']['val_recall_iou50'])})")
    total_fp = sum(v["val_fp_per_frame"] for v in per_class.values())
    result = {
        "split": c.data.val_split, "frames": as_shipped.frames, "threshold_split": e.threshold_split,
        "rule": RULES[e.threshold_split],
        "max_false_positives_per_frame": e.max_false_positives_per_frame,
        "per_class_budget": budget if even else None,
        "calibration_min_threshold": e.calibration_min_threshold, "thresholds_before": shipped, **search,
        "val_fp_per_frame_total": total_fp,
        "budget_met": total_fp <= e.max_false_positives_per_frame + 1e-9,
        "classes": per_class,
    }
    result["operating_points"] = operating_points(measure, names, e.max_false_positives_per_frame,
                                                  e.operating_points, e.calibration_min_threshold, run.log,
                                                  search_rule)
    atomic_write_json(folder / THRESHOLDS_FILE, result)
    over = [n for n, v in per_class.items() if v["budget_met"] is False]
    if over or not result["budget_met"]:
        run.log(f"    warning: over budget as shipped: {', '.join(over) if over else 'all classes together'} "
                f"(class-agnostic NMS: a class's false positives come back when another's threshold rises; "
                f"thresholds.json)")
    return {"thresholds": chosen, "val_fp_per_frame_total": round(result["val_fp_per_frame_total"], 4), **search}


def operating_points(measure: Callable[[list[float]], ValScores], class_names: tuple[str, ...], shipped: float,
                     budgets, floor: float, log=lambda line: None, search_rule=None) -> list[dict]:
    """The shipped budget and each further one (export.operating_points), lowest first: the thresholds the same rule
    (search_rule, default the even split's) gives for that total budget, and what they keep on val (false positives
    per frame and recall at BEV IoU 0.5, per class and in all).

    The points are nested: a stricter point never lowers a class's threshold below a looser one's, so it keeps a
    subset of the looser point's boxes (up to class-agnostic NMS) on any scan, real ones included. The shipped point
    is found first, unbounded (the thresholds the bundle ships); then the stricter ones from the shipped downwards,
    each at least as high as its looser neighbour, and the looser ones upwards, each at most as high (bounds of
    search_mean_recall; the even split is nested by construction)."""
    search_rule = search_rule or search_for("even")
    shipped = float(shipped)
    stricter = sorted((float(b) for b in budgets if float(b) < shipped), reverse=True)
    looser = sorted(float(b) for b in budgets if float(b) > shipped)
    chosen_at: dict[float, list[float]] = {}
    points = []
    for budget in [shipped, *stricter, *looser]:
        if budget == shipped:
            bounds = None
        elif budget < shipped:
            neighbour = chosen_at[min(b for b in chosen_at if b > budget)]
            bounds = [(t, 1.0) for t in neighbour]
        else:
            neighbour = chosen_at[max(b for b in chosen_at if b < budget)]
            bounds = [(floor, t) for t in neighbour]
        chosen, _, search = search_rule(measure, class_names, budget, floor, bounds)
        chosen_at[budget] = chosen
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
    return sorted(points, key=lambda point: point["max_false_positives_per_frame"])


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


__all__ = ["THRESHOLDS_FILE", "THRESHOLD_STEP", "MAX_ROUNDS", "THRESHOLD_SPLITS", "RULES", "ValScores",
           "pick_threshold", "threshold_allowing", "fp_per_frame", "recall", "collect_val_scores",
           "search_thresholds", "candidate_thresholds", "allocate_budget", "search_mean_recall", "search_for", "operating_points", "calibrate", "read_thresholds",
           "calibrated_score_thresholds", "manifest_operating_points"]
