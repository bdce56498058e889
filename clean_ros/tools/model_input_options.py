"""Command-line options for the detector node's input boxes and range-dependent score thresholds, shared by
`python -m clean_ros.infer` and `python -m clean_ros.replay` (one parser, one mapping; no ROS needed).

    option                                  node parameters it stands for
    --crop-box "[x0, y0, z0, x1, y1, z1]"   crop_box_enabled: true, crop_box: [...]
    --exclusion-box "[...]"                 exclusion_box_enabled: true, exclusion_box: [...]
    --range-breakpoints "[30, 50]"          range_thresholds_enabled: true, range_breakpoints: [...]
    --range-score-thresholds "[...]"        range_score_thresholds: [...] (class-major, classes x (breakpoints + 1))
    --score-threshold T | T1,T2,..          score_thresholds: [...]   (add_threshold_options; also real_check)
    --operating-point FP                    operating_point: FP       (one of the bundle's operating points)
    --ground-gate M                         ground_gate_m: M          (0 = off; default the bundle's)

A list is written as in the node's params file or `ros2 param set` (brackets optional, numbers separated by commas
or spaces): `--crop-box "[0, -40, -3, 70, 40, 1]"` or `--crop-box=0,-40,-3,70,40,1` (a value starting with '-'
needs the '=' form). The two range options go together, as the node's range table is set as a whole.

Validation is the node's: the boxes by clean_ros.cloud.model_input.check_box (through BoxFilter), the range table
by clean_ros.inference.postprocess_settings (Pipeline.update_postprocess, or updated_postprocess against a bundle's
settings before a node is started); a refused value raises ValueError whose message names the node parameter. The
tools print it as one "error: ..." line and exit with status 2.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

from clean_ros.cloud.model_input import NO_FILTER, BoxFilter

_SEPARATORS = re.compile(r"[,\s]+")


def parse_number_list(name: str, text: str) -> list[float]:
    """'[1, 2.5, -3]', '1,2.5,-3' or '1 2.5 -3' -> [1.0, 2.5, -3.0]; ValueError naming the parameter."""
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    values = []
    for item in (part for part in _SEPARATORS.split(body.strip()) if part):
        try:
            values.append(float(item))
        except ValueError:
            raise ValueError(f"{name}: {item!r} is not a number (write a list such as \"[30, 50]\")") from None
    return values


def score_thresholds_option(text: str) -> float | list[float]:
    """argparse type of --score-threshold: 'T' (every class) or a list 'T1,T2,..' / "[T1, T2, ..]" (one per class,
    the bundle's class order, e.g. an operating point from its README; the count is the post-processing validator's
    to check against the bundle)."""
    try:
        values = parse_number_list("score_thresholds", text)
    except ValueError:
        values = []
    if not values:  # argparse prefixes the option's name
        raise argparse.ArgumentTypeError(f"{text!r}: write one number, or one per class such as 0.4,0.4,0.35")
    return values[0] if len(values) == 1 else values


SCORE_THRESHOLD_HELP = ("override the score thresholds: one for every class, or one per class in the bundle's class "
                        "order, e.g. 0.4,0.4,0.35")


def add_threshold_options(parser: argparse.ArgumentParser) -> None:
    """--score-threshold and --operating-point (one or the other), and --ground-gate, on a tool's parser;
    apply_threshold_options uses them."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--score-threshold", type=score_thresholds_option, metavar="T|T1,T2,..",
                       help=SCORE_THRESHOLD_HELP)
    group.add_argument("--operating-point", type=float, metavar="FP",
                       help="the score thresholds of one of the bundle's operating points, by its val false-positive "
                            "budget per frame, e.g. 0.6 (the node's operating_point; the bundle's README lists them)")
    parser.add_argument("--ground-gate", type=float, metavar="M",
                        help="drop boxes whose bottom floats more than M metres above the local ground (the node's "
                             "ground_gate_m; default: the bundle's, 0 = off)")


def chosen_thresholds(args: argparse.Namespace, bundle) -> tuple[list[float] | None, str | None]:
    """The score thresholds --score-threshold / --operating-point ask for, checked against `bundle` (a --score-threshold
    by the one post-processing validator, an operating point must be one the bundle lists): (thresholds in class
    order, a line saying which operating point) or (None, None) when neither option was given. ValueError, one line,
    when refused."""
    from clean_ros.inference.operating_points import select_operating_point
    from clean_ros.inference.postprocess_settings import updated_postprocess

    if args.operating_point is not None:
        point = select_operating_point(bundle.operating_points, args.operating_point)
        return list(point.score_thresholds), point.describe(bundle.class_names)
    if args.score_threshold is not None:
        settings = updated_postprocess(bundle.postprocess, {"score_thresholds": args.score_threshold},
                                       bundle.class_names, iou_branch=bool(bundle.detector_config.head.iou_branch))
        return [float(t) for t in settings.score_thresholds], None
    return None, None


def apply_threshold_options(pipeline, args: argparse.Namespace) -> str | None:
    """chosen_thresholds of the pipeline's bundle and --ground-gate, set on the pipeline: the operating point's line,
    or None."""
    thresholds, line = chosen_thresholds(args, pipeline.bundle)
    if args.ground_gate is not None:
        pipeline.set_ground_gate(args.ground_gate)  # ValueError (one line) for a negative or non-finite value
    if thresholds is not None:
        pipeline.update_postprocess(score_thresholds=thresholds)
    return line


def add_model_input_options(parser: argparse.ArgumentParser) -> None:
    """The four options (module docstring) on a tool's parser; their values stay text until from_args."""
    group = parser.add_argument_group(
        "input boxes and range-dependent score thresholds (the node's parameters of the same names; "
        "docs/NODE.md 'Crop and exclusion boxes', 'Range-dependent score thresholds')")
    group.add_argument("--crop-box", metavar="LIST", help="keep only the points inside [x_min, y_min, z_min, x_max, "
                       "y_max, z_max] (metres, the model's input frame: after --sensor-height)")
    group.add_argument("--exclusion-box", metavar="LIST", help="remove the points inside [x_min, y_min, z_min, "
                       "x_max, y_max, z_max], e.g. the ego vehicle")
    group.add_argument("--range-breakpoints", metavar="LIST", help="ascending BEV distances (m) splitting the range "
                       "into bands, e.g. \"[30, 50]\"; with --range-score-thresholds")
    group.add_argument("--range-score-thresholds", metavar="LIST", help="one score threshold per class per band, "
                       "class-major (classes x (breakpoints + 1) values); with --range-breakpoints")


@dataclass(frozen=True)
class ModelInputOptions:
    """What the options asked for: the boxes (checked) and the range table (checked against a model by
    range_changes / validated_range_changes)."""

    boxes: BoxFilter = NO_FILTER
    range_breakpoints: list[float] | None = None       # None: the bundle's range table stays as it is
    range_score_thresholds: list[float] | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ModelInputOptions":
        """Parse and check the boxes; ValueError with the node parameter's name when a value is refused."""
        crop = parse_number_list("crop_box", args.crop_box) if args.crop_box is not None else None
        exclusion = parse_number_list("exclusion_box", args.exclusion_box) if args.exclusion_box is not None else None
        boxes = BoxFilter(crop=crop, exclusion=exclusion)  # check_box: 6 finite numbers, min < max per axis
        given = (args.range_breakpoints is not None, args.range_score_thresholds is not None)
        if any(given) and not all(given):
            raise ValueError("--range-breakpoints and --range-score-thresholds go together (the node's "
                             "range_thresholds_enabled with both lists)")
        if not any(given):
            return cls(boxes)
        return cls(boxes, parse_number_list("range_breakpoints", args.range_breakpoints),
                   parse_number_list("range_score_thresholds", args.range_score_thresholds))

    @property
    def range_changes(self) -> dict[str, list[float]]:
        """Keywords for Pipeline.update_postprocess ({} when the options were not given)."""
        if self.range_breakpoints is None:
            return {}
        return {"range_breakpoints": list(self.range_breakpoints),
                "range_score_thresholds": list(self.range_score_thresholds or [])}

    def validate_range(self, settings, class_names, iou_branch: bool) -> None:
        """The range table against a model's post-processing settings (e.g. a bundle's, before starting a node):
        the one validator, ValueError if refused."""
        from clean_ros.inference.postprocess_settings import updated_postprocess

        if self.range_changes:
            updated_postprocess(settings, self.range_changes, class_names, iou_branch=iou_branch)

    def node_parameters(self) -> dict[str, Any]:
        """The same settings as detector node parameters (realtime replay starts the node with them)."""
        parameters: dict[str, Any] = {}
        if self.boxes.crop is not None:
            parameters.update(crop_box_enabled=True, crop_box=list(self.boxes.crop))
        if self.boxes.exclusion is not None:
            parameters.update(exclusion_box_enabled=True, exclusion_box=list(self.boxes.exclusion))
        if self.range_changes:
            parameters.update(range_thresholds_enabled=True, **self.range_changes)
        return parameters

    def describe(self) -> str:
        """One line for the tools' output."""
        crop, exclusion = self.boxes.crop, self.boxes.exclusion
        text = f"input boxes: crop {list(crop) if crop else 'off'}, exclusion {list(exclusion) if exclusion else 'off'}"
        if self.range_changes:
            text += (f"; range score thresholds: breakpoints {self.range_breakpoints} m, "
                     f"table {self.range_score_thresholds}")
        return text


__all__ = ["ModelInputOptions", "SCORE_THRESHOLD_HELP", "add_model_input_options", "add_threshold_options",
           "apply_threshold_options", "chosen_thresholds", "parse_number_list", "score_thresholds_option"]
