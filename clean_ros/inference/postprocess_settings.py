"""Post-processing settings and their ONE validator (no torch, no ROS: the config loader, the Pipeline and the node
all call it).

    check_postprocess(settings, class_names, iou_branch)          # ValueError naming the setting, or None
    new = updated_postprocess(current, {"nms_iou": 0.2}, class_names, iou_branch=False)   # validated copy

Callers: DetectorConfig.__post_init__ (a YAML or bundle manifest), Pipeline.update_postprocess (infer, replay, the
node's `ros2 param set`), clean_ros.ros.node_parameters (ROS parameter values -> these keywords).

Range-dependent score thresholds (off when both lists are empty): ``range_breakpoints`` are B ascending BEV
distances sqrt(x^2 + y^2) in metres from the model frame's origin, splitting the range into B + 1 bands
[0, b0), [b0, b1), ..., [b_{B-1}, inf); ``range_score_thresholds`` holds one threshold per class per band,
class-major (class c, band k at index c * (B + 1) + k). A box of class c in band k is kept when its score is at
least max(score_thresholds[c], range_score_thresholds[c, k]): the table only ever raises the per-class threshold.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np

# Flat names accepted by updated_postprocess (the node maps its ROS parameters onto them).
POSTPROCESS_KEYS = ("score_thresholds", "nms_iou", "nms_pre_max", "nms_post_max", "class_agnostic_nms",
                    "peak_kernel", "iou_gate_mode", "iou_gate_thresholds", "iou_gate_alphas", "range_breakpoints",
                    "range_score_thresholds")


@dataclass
class IoUGateConfig:
    """IoU-aware rescoring. hard: s * 1[sigmoid(u) > threshold_c]; soft: s^(1-alpha_c) * sigmoid(u)^alpha_c."""

    mode: Literal["none", "hard", "soft"] = "none"
    thresholds: list[float] = field(default_factory=lambda: [0.5, 0.2, 0.2])
    alphas: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass
class PostProcessConfig:
    score_thresholds: list[float] = field(default_factory=lambda: [0.1, 0.1, 0.1])
    nms_iou: float = 0.01
    nms_pre_max: int = 4096
    nms_post_max: int = 500
    class_agnostic_nms: bool = True
    peak_kernel: int = 3  # center head: max-pool window of the peak extraction
    iou_gate: IoUGateConfig = field(default_factory=IoUGateConfig)
    range_breakpoints: list[float] = field(default_factory=list)       # metres, ascending; [] = off
    range_score_thresholds: list[float] = field(default_factory=list)  # classes x (bands), class-major; [] = off


# ------------------------------------------------------------------------------------------------- value checks
def _is_number(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
            and math.isfinite(float(value)))


def _numbers_in(name: str, values: Sequence[Any], lo: float, hi: float, labels: Sequence[str] | None = None) -> None:
    for i, v in enumerate(values):
        if not _is_number(v) or not lo <= float(v) <= hi:
            where = labels[i] if labels is not None else str(i)
            raise ValueError(f"{name}[{where}] = {v!r}: must be a number in [{lo:g}, {hi:g}]")


def check_range_breakpoints(breakpoints: Sequence[Any]) -> None:
    """Each breakpoint a finite distance > 0, strictly ascending."""
    for i, v in enumerate(breakpoints):
        if not _is_number(v) or float(v) <= 0:
            raise ValueError(f"range_breakpoints[{i}] = {v!r}: must be a distance in metres > 0")
    if any(float(b) <= float(a) for a, b in zip(breakpoints, breakpoints[1:])):
        raise ValueError(f"range_breakpoints must be strictly ascending, got {[float(v) for v in breakpoints]}")


def check_range_thresholds(breakpoints: Sequence[Any], thresholds: Sequence[Any], class_names: Sequence[str]
                           ) -> None:
    """The range table on its own: off (both empty) or B breakpoints and classes x (B + 1) thresholds."""
    check_range_breakpoints(breakpoints)
    _numbers_in("range_score_thresholds", thresholds, 0.0, 1.0)
    if not breakpoints and not thresholds:
        return
    bands = len(breakpoints) + 1
    need = len(class_names) * bands
    if len(thresholds) != need:
        raise ValueError(f"range_score_thresholds needs {need} values ({len(class_names)} classes "
                         f"({', '.join(class_names)}) x {bands} range bands from {len(breakpoints)} breakpoint(s), "
                         f"class-major), got {len(thresholds)}")


def check_postprocess(settings: PostProcessConfig, class_names: Sequence[str], iou_branch: bool) -> None:
    """THE post-processing validator: ValueError with the setting's name and what is wrong, or None."""
    names = tuple(class_names)
    n = len(names)
    if len(settings.score_thresholds) != n:
        raise ValueError(f"score_thresholds needs {n} values (one per class: {', '.join(names)}), "
                         f"got {len(settings.score_thresholds)}")
    _numbers_in("score_thresholds", settings.score_thresholds, 0.0, 1.0, names)
    if not _is_number(settings.nms_iou) or not 0.0 <= float(settings.nms_iou) <= 1.0:
        raise ValueError(f"nms_iou = {settings.nms_iou!r}: must be a number in [0, 1]")
    for key in ("nms_pre_max", "nms_post_max"):
        value = getattr(settings, key)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{key} = {value!r}: must be an integer >= 0 (0 = no limit)")
    pre, post = int(settings.nms_pre_max), int(settings.nms_post_max)
    if pre > 0 and post > pre:
        raise ValueError(f"nms_post_max ({post}) must not exceed nms_pre_max ({pre}): NMS keeps at most what it is "
                         "given (0 = no limit)")
    if not isinstance(settings.class_agnostic_nms, bool):
        raise ValueError(f"class_agnostic_nms = {settings.class_agnostic_nms!r}: must be true or false")
    kernel = settings.peak_kernel
    if isinstance(kernel, bool) or not isinstance(kernel, (int, np.integer)) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"peak_kernel = {kernel!r}: must be odd and >= 1 (a centred window)")
    gate = settings.iou_gate
    if gate.mode not in ("none", "hard", "soft"):
        raise ValueError(f"iou_gate_mode = {gate.mode!r}: must be one of none, hard, soft")
    if gate.mode != "none" and not iou_branch:
        raise ValueError(f"iou_gate_mode = {gate.mode!r}: this model has no IoU branch; only 'none' is possible")
    for key, values, mode in (("iou_gate_thresholds", gate.thresholds, "hard"), ("iou_gate_alphas", gate.alphas,
                                                                                  "soft")):
        if gate.mode == mode and len(values) != n:
            raise ValueError(f"iou_gate_mode {mode} needs {key} with {n} values (one per class: {', '.join(names)}), "
                             f"got {len(values)}")
        if len(values) == n:
            _numbers_in(key, values, 0.0, 1.0, names)
    check_range_thresholds(settings.range_breakpoints, settings.range_score_thresholds, names)


# ------------------------------------------------------------------------------------------------- changes
def _per_class(name: str, value: Any, current: Sequence[float], class_names: tuple[str, ...]) -> list:
    """A per-class list from a list (one per class), a single number (all classes) or {class name: value}."""
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in class_names]
        if unknown:
            raise ValueError(f"{name}: unknown class {unknown[0]!r}; classes: {', '.join(class_names)}")
        out = list(current) if len(current) == len(class_names) else [0.0] * len(class_names)
        for key, v in value.items():
            out[class_names.index(key)] = v
        return out
    if _is_number(value):
        return [value] * len(class_names)
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    raise ValueError(f"{name}: expected a number, a list of {len(class_names)} numbers or {{class: number}}, "
                     f"got {value!r}")


def _as_float_list(name: str, value: Any) -> list:
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ValueError(f"{name}: expected a list of numbers, got {value!r}")
    return list(value)


def updated_postprocess(current: PostProcessConfig, changes: Mapping[str, Any], class_names: Sequence[str], *,
                        iou_branch: bool) -> PostProcessConfig:
    """A validated copy of `current` with `changes` applied (keys: POSTPROCESS_KEYS, or iou_gate={...});
    ValueError (current untouched) when the result would be invalid."""
    names = tuple(class_names)
    new = copy.deepcopy(current)
    gate = new.iou_gate
    changes = dict(changes)
    if "iou_gate" in changes:
        nested = changes.pop("iou_gate")
        if not isinstance(nested, Mapping):
            raise ValueError(f"iou_gate: expected a mapping with mode / thresholds / alphas, got {nested!r}")
        changes.update({f"iou_gate_{key}": value for key, value in nested.items()})
    for key, value in changes.items():
        if key == "score_thresholds":
            new.score_thresholds = _per_class(key, value, new.score_thresholds, names)
        elif key == "iou_gate_thresholds":
            gate.thresholds = _per_class(key, value, gate.thresholds, names)
        elif key == "iou_gate_alphas":
            gate.alphas = _per_class(key, value, gate.alphas, names)
        elif key == "iou_gate_mode":
            gate.mode = value
        elif key in ("range_breakpoints", "range_score_thresholds"):
            setattr(new, key, _as_float_list(key, value))
        elif key in POSTPROCESS_KEYS:
            setattr(new, key, value)
        else:
            raise ValueError(f"unknown post-processing setting {key!r}; allowed: {', '.join(POSTPROCESS_KEYS)}")
    check_postprocess(new, names, iou_branch)
    # numbers as float (ints from YAML / ROS are fine on input)
    new.score_thresholds = [float(v) for v in new.score_thresholds]
    new.nms_iou = float(new.nms_iou)
    new.nms_pre_max, new.nms_post_max, new.peak_kernel = int(new.nms_pre_max), int(new.nms_post_max), int(
        new.peak_kernel)
    gate.thresholds, gate.alphas = [float(v) for v in gate.thresholds], [float(v) for v in gate.alphas]
    new.range_breakpoints = [float(v) for v in new.range_breakpoints]
    new.range_score_thresholds = [float(v) for v in new.range_score_thresholds]
    return new


__all__ = ["IoUGateConfig", "PostProcessConfig", "POSTPROCESS_KEYS", "check_postprocess", "check_range_breakpoints",
           "check_range_thresholds", "updated_postprocess"]
