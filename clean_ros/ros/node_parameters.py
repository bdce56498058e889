"""The detector node's ROS parameters: their table, declaration and validation (shared by the plain node and the
lifecycle node, clean_ros.ros.detector_node / clean_ros.ros.lifecycle_node).

- STATIC_PARAMETERS: every parameter that does not depend on the model, with default, description, whether it is
  read-only (fixed at start) and its range; declared in the constructor. config/detector.yaml documents each one.
- Post-processing parameters (POSTPROCESS_PARAMS): declared once the bundle is loaded, default = the bundle's
  settings; they map onto Pipeline.update_postprocess, whose ONE validator
  (clean_ros.inference.postprocess_settings) accepts or refuses them. Range-dependent thresholds are three
  parameters: range_thresholds_enabled, range_breakpoints, range_score_thresholds (while disabled the two lists may be
  edited one at a time; enabling checks that they fit together).
- Input boxes: crop_box_enabled / crop_box, exclusion_box_enabled / exclusion_box (clean_ros.cloud.model_input).
- operating_point (read-only): the bundle's score thresholds at one of its operating points
  (clean_ros.inference.operating_points) become the score_thresholds parameter's default; giving both is refused.
- BUNDLE_OWNED: model geometry keys that a params file must not set (refused at start with StartupError).
A refused runtime change returns its reason (`ros2 param set` prints it) and leaves every setting as it was; what an
accepted one does to the running node is clean_ros.ros.node_parameter_changes.
"""
from __future__ import annotations

import array
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from clean_ros.cloud.model_input import BoxFilter, check_box
from clean_ros.defaults import (AUTO_INTENSITY, AUTO_SENSOR_MOUNT, BACKEND, BACKENDS, CROP_BOX, DEVICE,
                                EXCLUSION_BOX, EXPECTED_RATE_HZ, GROUND_CHECK, INPUT_TOPIC, INTENSITY_SCALE,
                                MAX_POINTS, NODE_NAME, NUM_THREADS, OUTPUT_TOPIC, RANGE_BREAKPOINTS,
                                WARMUP_ITERATIONS, TARGET_FRAME, MODEL_FRAME, TF_TIMEOUT_S, SENSOR_HEIGHT)
from clean_ros.inference.sensor_mount import MAX_TILT_RAD
from clean_ros.inference.postprocess_settings import check_range_breakpoints


class StartupError(RuntimeError):
    """The node cannot start (bundle, backend or parameters unusable); the message says what to fix."""


# Parameters whose value comes from the model bundle; setting them in a params file is refused (USERS.md 5).
BUNDLE_OWNED = ("point_cloud_range", "voxel_size", "class_names", "point_features", "num_point_features",
                "max_voxels", "max_points_per_voxel")


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Any
    description: str
    read_only: bool = False
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    choices: tuple[str, ...] = ()

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(description=self.description, read_only=self.read_only,
                                         additional_constraints=(f"one of {', '.join(self.choices)}"
                                                                 if self.choices else ""))
        if self.float_range is not None:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(self.float_range[0]),
                                                                  to_value=float(self.float_range[1]), step=0.0)]
        if self.int_range is not None:
            descriptor.integer_range = [IntegerRange(from_value=int(self.int_range[0]),
                                                     to_value=int(self.int_range[1]), step=1)]
        return descriptor


P = ParameterSpec
STATIC_PARAMETERS: tuple[ParameterSpec, ...] = (
    # model and backend (read-only)
    P("bundle_path", "", "model bundle directory; empty = the embedded default (models/default)", read_only=True),
    P("backend", BACKEND, f"{' | '.join(BACKENDS)} (auto: best available)", read_only=True, choices=BACKENDS),
    P("device", DEVICE, "cpu | cuda | cuda:N", read_only=True),
    P("num_threads", NUM_THREADS, "torch intra-op threads (CPU); see docs/NODE.md on contention", read_only=True,
      int_range=(1, 256)),
    P("int8", False, "run the bundle's int8 dense part (model.int8.onnx) on onnxruntime; an error if it has none",
      read_only=True),
    P("warmup_iterations", WARMUP_ITERATIONS, "inference runs on a synthetic cloud at start-up, excluded from "
      "statistics", read_only=True, int_range=(0, 100)),
    P("operating_point", 0.0, "score thresholds of one of the bundle's operating points, by its val false-positive "
      "budget per frame (e.g. 0.6: fewer false positives, less recall; the bundle's README lists them); 0 = the "
      "bundle's shipped thresholds; not together with score_thresholds", read_only=True, float_range=(0.0, 1e6)),
    # topics and QoS (read-only)
    P("input_topic", INPUT_TOPIC, "sensor_msgs/PointCloud2 input topic", read_only=True),
    P("output_topic", OUTPUT_TOPIC, "vision_msgs/Detection3DArray output; markers on <output_topic>/markers",
      read_only=True),
    P("qos_depth", 1, "input keep-last depth (1: never build a backlog)", read_only=True, int_range=(1, 100)),
    P("qos_reliability", "best_effort", "input reliability: best_effort (sensor QoS) | reliable", read_only=True,
      choices=("best_effort", "reliable")),
    # statistics (read-only)
    P("latency_window", 300, "frames in the rolling latency percentiles", read_only=True, int_range=(10, 100000)),
    P("diagnostics_period_s", 1.0, "period of the /diagnostics report", read_only=True, float_range=(0.05, 60.0)),
    # runtime
    P("hardware_id", "", "hardware_id of the diagnostics; empty = the node's name"),
    P("intensity_scale", INTENSITY_SCALE, "multiplies the input intensity (0-255 sensors: 0.00392156862745098)",
      float_range=(1e-9, 1e6)),
    P("auto_intensity", AUTO_INTENSITY, "scale each scan's intensity to the bundle's training level (manifest "
      "intensity_level), for sensors with another intensity scale; off = the intensity as given times "
      "intensity_scale (docs/NODE.md 'Intensity of another sensor')", read_only=True),
    P("expected_rate_hz", EXPECTED_RATE_HZ, "sensor rate; a lower received rate is reported (0 = unknown)",
      float_range=(0.0, 1000.0)),
    P("publish_markers", True, "MarkerArray on <output_topic>/markers while someone subscribes"),
    P("marker_lifetime_s", 0.2, "marker lifetime (0 = forever)", float_range=(0.0, 3600.0)),
    P("stale_timeout_s", 2.0, "no input for this long is reported as stale input", float_range=(0.01, 3600.0)),
    P("max_input_age_s", 0.0, "drop (count, do not process) frames older than this when stamps are comparable with "
      "the node clock; 0 = never drop", float_range=(0.0, 3600.0)),
    P("max_points", MAX_POINTS, "clouds with more points are decimated (every k-th point) to bound latency; "
      "0 = no limit", int_range=(0, 1 << 26)),
    P("crop_box_enabled", False, "keep only the points inside crop_box (before voxelisation)"),
    P("crop_box", list(CROP_BOX), "[x_min, y_min, z_min, x_max, y_max, z_max] in metres, the model's input frame; "
      "points outside are removed while crop_box_enabled"),
    P("exclusion_box_enabled", False, "remove the points inside exclusion_box (e.g. the ego vehicle and its mounts)"),
    P("exclusion_box", list(EXCLUSION_BOX), "[x_min, y_min, z_min, x_max, y_max, z_max] in metres, the model's "
      "input frame; points inside are removed while exclusion_box_enabled"),
    # frames (read-only; clean_ros.ros.tf_frames, docs/NODE.md "Frames (TF)" and "Where the sensor is")
    P("target_frame", TARGET_FRAME, "frame the boxes are published in (e.g. base_link), through TF at the cloud's "
      "stamp; empty = the cloud's frame", read_only=True),
    P("model_frame", MODEL_FRAME, "frame the points are given to the model in (e.g. a level virtual sensor at the "
      "model's training height), through TF; empty = the cloud's frame", read_only=True),
    P("tf_timeout_s", TF_TIMEOUT_S, "how long a TF lookup at the cloud's stamp may wait; a frame whose lookup fails "
      "is skipped and reported", read_only=True, float_range=(0.0, 10.0)),
    P("sensor_height", SENSOR_HEIGHT, "without TF: the sensor's height above the ground (m); points are moved to a "
      "virtual sensor at the bundle's training height and boxes back; 0 = off", read_only=True,
      float_range=(0.0, 100.0)),
    P("sensor_pitch", 0.0, "with sensor_height: the sensor's pitch in radians (positive = nose down)",
      read_only=True, float_range=(-MAX_TILT_RAD, MAX_TILT_RAD)),
    P("sensor_roll", 0.0, "with sensor_height: the sensor's roll in radians (positive = left side up)",
      read_only=True, float_range=(-MAX_TILT_RAD, MAX_TILT_RAD)),
    P("auto_sensor_mount", AUTO_SENSOR_MOUNT, "the sensor's height, pitch and roll measured from the scans' ground "
      "and used as the sensor mount (the first scans, until one shows enough ground, run without one); not with "
      "sensor_height or model_frame (docs/NODE.md 'Where the sensor is')", read_only=True),
    P("ground_check", GROUND_CHECK, "measure the scans' ground and report on /diagnostics (key ground, WARN) when "
      "it is not where the model's training sensor saw it", read_only=True),
)
FRAME_PARAMS = ("target_frame", "model_frame", "tf_timeout_s", "sensor_height", "sensor_pitch", "sensor_roll",
                "auto_sensor_mount")
STATIC_BY_NAME: Mapping[str, ParameterSpec] = {spec.name: spec for spec in STATIC_PARAMETERS}
BOX_PARAMS = ("crop_box_enabled", "crop_box", "exclusion_box_enabled", "exclusion_box")

# Post-processing: ROS parameter -> keyword of Pipeline.update_postprocess (range_* are handled together).
POSTPROCESS_PARAMS = ("score_thresholds", "nms_iou", "nms_pre_max", "nms_post_max", "class_agnostic_nms",
                      "iou_gate_mode", "iou_gate_thresholds", "iou_gate_alphas", "range_thresholds_enabled",
                      "range_breakpoints", "range_score_thresholds", "ground_gate_m")
RANGE_PARAMS = ("range_thresholds_enabled", "range_breakpoints", "range_score_thresholds")
ARRAY_PARAMS = ("score_thresholds", "iou_gate_thresholds", "iou_gate_alphas", "crop_box", "exclusion_box",
                "range_breakpoints", "range_score_thresholds")


def postprocess_specs(settings, class_names, ground_gate_m: float = 0.0) -> list[ParameterSpec]:
    """The post-processing parameters of a bundle: defaults = its settings (range table: off, with a neutral
    table over RANGE_BREAKPOINTS to edit when none is set; ground_gate_m: the Pipeline's ground-contact gate)."""
    values = postprocess_values(settings, ground_gate_m)
    n = len(class_names)
    classes = ", ".join(class_names)
    bands = len(values["range_breakpoints"]) + 1
    described = {
        "score_thresholds": (f"per-class score thresholds in [0, 1], {n} values in class order ({classes})", {}),
        "nms_iou": ("rotated BEV NMS IoU threshold in [0, 1]", dict(float_range=(0.0, 1.0))),
        "nms_pre_max": ("boxes kept (by score) before NMS; 0 = no limit", dict(int_range=(0, 1 << 20))),
        "nms_post_max": ("detections kept after NMS (max detections per frame); 0 = no limit",
                         dict(int_range=(0, 1 << 20))),
        "class_agnostic_nms": ("NMS across classes (true) or per class (false)", {}),
        "iou_gate_mode": ("IoU-aware rescoring: none | hard | soft (hard/soft need a bundle with an IoU branch)", {}),
        "iou_gate_thresholds": (f"per-class IoU-gate thresholds in [0, 1] ({n} values, mode hard)", {}),
        "iou_gate_alphas": (f"per-class IoU-gate exponents in [0, 1] ({n} values, mode soft)", {}),
        "range_thresholds_enabled": ("apply range_score_thresholds (a box must pass both its class threshold and "
                                     "its class-and-range threshold)", {}),
        "range_breakpoints": ("ascending BEV distances in metres splitting the range into len + 1 bands", {}),
        "range_score_thresholds": (f"score threshold per class per range band, class-major ({n} classes x "
                                   f"{bands} bands with the default breakpoints; class order {classes})", {}),
        "ground_gate_m": ("drop boxes whose bottom is more than this many metres above the local ground (tree "
                          "crowns, wall tops); 0 = off", dict(float_range=(0.0, 100.0))),
    }
    specs = []
    for name in POSTPROCESS_PARAMS:
        description, ranges = described[name]
        default = values[name]
        if isinstance(default, list) and not default:
            continue  # the bundle has no such setting (an empty list has no parameter type)
        specs.append(ParameterSpec(name, default, description + " (default: the bundle's value)", **ranges))
    return specs


def postprocess_values(settings, ground_gate_m: float = 0.0) -> dict[str, Any]:
    """The ROS-parameter view of a PostProcessConfig (and of the Pipeline's ground-contact gate)."""
    gate = settings.iou_gate
    enabled = bool(settings.range_breakpoints)
    breakpoints = [float(v) for v in settings.range_breakpoints] if enabled else list(RANGE_BREAKPOINTS)
    if enabled:
        table = [float(v) for v in settings.range_score_thresholds]
    else:  # neutral: every band repeats the class threshold
        table = [float(t) for t in settings.score_thresholds for _ in range(len(breakpoints) + 1)]
    return {
        "score_thresholds": [float(v) for v in settings.score_thresholds],
        "nms_iou": float(settings.nms_iou),
        "nms_pre_max": int(settings.nms_pre_max),
        "nms_post_max": int(settings.nms_post_max),
        "class_agnostic_nms": bool(settings.class_agnostic_nms),
        "iou_gate_mode": str(gate.mode),
        "iou_gate_thresholds": [float(v) for v in gate.thresholds],
        "iou_gate_alphas": [float(v) for v in gate.alphas],
        "range_thresholds_enabled": enabled,
        "range_breakpoints": breakpoints,
        "range_score_thresholds": table,
        "ground_gate_m": float(ground_gate_m),
    }


def as_python(value: Any) -> Any:
    """A parameter value as plain Python (arrays as lists)."""
    return list(value) if isinstance(value, (array.array, tuple)) else value


def to_pipeline_changes(changes: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """ROS post-processing parameter values -> keywords of Pipeline.update_postprocess. `current` (the parameters'
    values now) is needed when a range parameter changes; ValueError for a range list that is wrong on its own."""
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if name in RANGE_PARAMS:
            continue
        if name in ARRAY_PARAMS:
            out[name] = [float(v) for v in value]
        elif name in ("nms_iou", "ground_gate_m"):
            out[name] = float(value)
        elif name in ("nms_pre_max", "nms_post_max"):
            out[name] = int(value)
        else:
            out[name] = value
    if any(name in changes for name in RANGE_PARAMS):
        merged = {**(current or {}), **changes}
        breakpoints = [float(v) for v in merged.get("range_breakpoints", [])]
        table = [float(v) for v in merged.get("range_score_thresholds", [])]
        if merged.get("range_thresholds_enabled", False):
            out["range_breakpoints"], out["range_score_thresholds"] = breakpoints, table
        else:  # disabled: the lists may be edited one at a time; each must still be valid on its own
            check_range_breakpoints(breakpoints)
            bad = [v for v in table if not (math.isfinite(v) and 0.0 <= v <= 1.0)]
            if bad:
                raise ValueError(f"range_score_thresholds values must be numbers in [0, 1], got {bad[0]!r}")
            out["range_breakpoints"], out["range_score_thresholds"] = [], []
    return out


def box_filter(values: Mapping[str, Any]) -> BoxFilter:
    """The crop / exclusion boxes from parameter values (ValueError naming the parameter if a box is invalid)."""
    crop = check_box("crop_box", values["crop_box"])
    exclusion = check_box("exclusion_box", values["exclusion_box"])
    return BoxFilter(crop=crop if values["crop_box_enabled"] else None,
                     exclusion=exclusion if values["exclusion_box_enabled"] else None)


def check_plain_change(name: str, value: Any) -> str | None:
    """Checks of runtime parameters beyond their declared range: a reason for refusing, or None."""
    if name == "intensity_scale" and not (math.isfinite(value) and value > 0):
        return f"intensity_scale must be > 0, got {value}"
    return None


@dataclass
class ParameterReader:
    """Declares and reads a node's parameters (plain or lifecycle node): one StartupError line for a bad value."""

    node: Any
    declared: list[str] = field(default_factory=list)

    def refuse_bundle_owned_overrides(self) -> None:
        overrides = getattr(self.node, "_parameter_overrides", {}) or {}
        owned = sorted(name for name in overrides if name in BUNDLE_OWNED)
        if owned:
            raise StartupError(
                f"parameter(s) {', '.join(owned)} set for {NODE_NAME}, but model geometry, classes and feature "
                "layout come from the model bundle's manifest (what the model was trained with): remove them "
                "from the params file / command line, or choose another bundle_path")

    def declare(self, spec: ParameterSpec) -> None:
        if self.node.has_parameter(spec.name):
            return  # a lifecycle node configured a second time
        try:
            self.node.declare_parameter(spec.name, spec.default, spec.descriptor())
        except Exception as error:  # noqa: BLE001 - wrong type / out of range in the params file
            raise StartupError(f"parameter '{spec.name}': {error} ({spec.description}; default "
                               f"{spec.default!r})") from None
        self.declared.append(spec.name)
        value = self.get(spec.name)
        if spec.choices and value not in spec.choices:
            raise StartupError(f"parameter '{spec.name}' is '{value}': use "
                               f"{' or '.join(spec.choices) if len(spec.choices) == 2 else 'one of ' + ', '.join(spec.choices)}")

    def declare_static(self) -> None:
        for spec in STATIC_PARAMETERS:
            self.declare(spec)
        try:
            box_filter({name: self.get(name) for name in BOX_PARAMS})
        except ValueError as error:
            raise StartupError(f"parameter {error}") from None

    def get(self, name: str) -> Any:
        return as_python(self.node.get_parameter(name).value)

    def values(self, names) -> dict[str, Any]:
        return {name: self.get(name) for name in names if self.node.has_parameter(name)}


__all__ = ["ARRAY_PARAMS", "BOX_PARAMS", "BUNDLE_OWNED", "POSTPROCESS_PARAMS", "ParameterReader", "ParameterSpec",
           "RANGE_PARAMS", "STATIC_PARAMETERS", "StartupError", "as_python", "box_filter", "check_plain_change",
           "postprocess_specs", "postprocess_values", "to_pipeline_changes"]
