"""Operating points of a bundle: other per-class score thresholds, each chosen by the rule that chose the shipped ones.

A compress run's thresholds stage picks the shipped thresholds as the most val objects within a total budget of
false positives per frame (export.max_false_positives_per_frame); with export.operating_points it does the same at
further budgets (docs/COMPRESS.md "Operating points"). The bundle lists them in the manifest's optional field

    "operating_points": [                      lowest budget first, each budget once, at most one "shipped"
      {"max_false_positives_per_frame": 0.6,   the val budget (false positives per frame, all classes together)
       "score_thresholds": [0.378, 0.379, 0.334],   one per class, the bundle's class order, each in [0, 1]
       "shipped": false,                       true for the budget of the manifest's postprocess.score_thresholds
       "val_false_positives_per_frame": 0.589, what the thresholds gave on the run's val frames (information only)
       "val_recall_iou50": {"Car": 0.831, ...}}, ...]

so a user picks one by its budget, not by copying numbers: the node's `operating_point` parameter, infer's and the
real-data check's `--operating-point`. `select_operating_point` gives the one asked for, or a ValueError whose one
line lists the budgets the bundle has. Bundles without the field (older, or exported without
export.operating_points) have none; the score thresholds can still be set one by one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

FIELD = "operating_points"


@dataclass(frozen=True)
class OperatingPoint:
    budget: float                          # max false positives per frame on the val frames, all classes
    score_thresholds: tuple[float, ...]    # the bundle's class order
    shipped: bool = False
    val_false_positives_per_frame: float | None = None
    val_recall_iou50: Mapping[str, float] = field(default_factory=dict)

    def describe(self, class_names: Sequence[str]) -> str:
        """One line, e.g. 'operating point 0.6 false positives per frame on val: score thresholds Car 0.378, ...'."""
        thresholds = ", ".join(f"{name} {value:g}" for name, value in zip(class_names, self.score_thresholds))
        return (f"operating point {self.budget:g} false positives per frame on val"
                f"{' (the shipped one)' if self.shipped else ''}: score thresholds {thresholds}")

    def as_manifest(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"max_false_positives_per_frame": self.budget,
                                 "score_thresholds": list(self.score_thresholds), "shipped": self.shipped}
        if self.val_false_positives_per_frame is not None:
            entry["val_false_positives_per_frame"] = self.val_false_positives_per_frame
        if self.val_recall_iou50:
            entry["val_recall_iou50"] = dict(self.val_recall_iou50)
        return entry


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_operating_points(raw: Any, class_names: Sequence[str]) -> tuple[OperatingPoint, ...]:
    """The manifest field's entries, checked (ValueError naming the entry and what is wrong); None or [] -> ()."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ValueError(f"field '{FIELD}' must be a list of objects, got {type(raw).__name__}")
    points = []
    for i, entry in enumerate(raw):
        where = f"{FIELD}[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object, got {type(entry).__name__}")
        budget = entry.get("max_false_positives_per_frame")
        if not _number(budget) or budget <= 0:
            raise ValueError(f"{where}: 'max_false_positives_per_frame' must be a number > 0, got {budget!r}")
        thresholds = entry.get("score_thresholds")
        if (not isinstance(thresholds, list) or len(thresholds) != len(class_names)
                or not all(_number(t) and 0.0 <= t <= 1.0 for t in thresholds)):
            raise ValueError(f"{where}: 'score_thresholds' must be {len(class_names)} numbers in [0, 1] (one per "
                             f"class: {', '.join(class_names)}), got {thresholds!r}"[:300])
        shipped = entry.get("shipped", False)
        if not isinstance(shipped, bool):
            raise ValueError(f"{where}: 'shipped' must be true or false, got {shipped!r}")
        fp = entry.get("val_false_positives_per_frame")
        if fp is not None and (not _number(fp) or fp < 0):
            raise ValueError(f"{where}: 'val_false_positives_per_frame' must be a number >= 0, got {fp!r}")
        recall = entry.get("val_recall_iou50") or {}
        if not isinstance(recall, dict) or not all(isinstance(k, str) and _number(v) and 0.0 <= v <= 1.0
                                                   for k, v in recall.items()):
            raise ValueError(f"{where}: 'val_recall_iou50' must map class names to fractions in [0, 1]")
        points.append(OperatingPoint(float(budget), tuple(float(t) for t in thresholds), shipped,
                                     None if fp is None else float(fp), {k: float(v) for k, v in recall.items()}))
    budgets = [p.budget for p in points]
    if len(set(budgets)) != len(budgets):
        raise ValueError(f"field '{FIELD}': each budget once, got {budgets}")
    if sum(p.shipped for p in points) > 1:
        raise ValueError(f"field '{FIELD}': at most one entry is the shipped one")
    return tuple(sorted(points, key=lambda p: p.budget))


def budgets_text(points: Sequence[OperatingPoint]) -> str:
    return ", ".join(f"{p.budget:g}{' (shipped)' if p.shipped else ''}" for p in points)


def select_operating_point(points: Sequence[OperatingPoint], budget: float) -> OperatingPoint:
    """The point whose budget is `budget` (to 1e-6), or ValueError saying which budgets there are."""
    if not points:
        raise ValueError(f"operating point {budget:g}: this bundle lists no operating points (a bundle exported "
                         f"without export.operating_points, or before them); set the score thresholds instead")
    for point in points:
        if math.isclose(point.budget, budget, rel_tol=1e-6, abs_tol=1e-9):
            return point
    raise ValueError(f"operating point {budget:g}: this bundle has {budgets_text(points)} false positives per frame "
                     f"(its README lists what each keeps)")


def thresholds_label(points: Sequence[OperatingPoint], thresholds: Sequence[float]) -> str:
    """What the score thresholds in force are, for diagnostics: the operating point they equal ('0.6' or
    '1.3 (shipped)'), 'custom' when set otherwise, 'custom (the bundle lists no operating points)' without a table."""
    if not points:
        return "custom (the bundle lists no operating points)"
    for point in points:
        if len(point.score_thresholds) == len(thresholds) and all(
                math.isclose(a, b, abs_tol=1e-9) for a, b in zip(point.score_thresholds, thresholds)):
            return f"{point.budget:g}{' (shipped)' if point.shipped else ''}"
    return "custom"


__all__ = ["FIELD", "OperatingPoint", "budgets_text", "parse_operating_points", "select_operating_point",
           "thresholds_label"]
