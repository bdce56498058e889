"""The clean_ros detector node: sensor_msgs/PointCloud2 in, vision_msgs/Detection3DArray out.

    python -m clean_ros.detector_node --ros-args --params-file config/detector.yaml      (what the launch file runs)
    ros2 launch clean_ros detector.launch.py                                              (on a ROS install)

A thin rclpy shell over clean_ros.inference.pipeline.Pipeline (the same object the offline tools use):
callback -> read_points (decode) -> Pipeline (preprocess, inference, postprocess) -> messages (publish).

- Sensor QoS: best-effort, keep-last, depth ``qos_depth`` (1). Each frame is processed inside its callback, so at
  most ``qos_depth`` frames ever wait; older ones are overwritten by DDS. Missed frames are counted from DDS
  publication sequence numbers (exact) and from header-stamp gaps against ``expected_rate_hz``.
- Header in = header out: the Detection3DArray, every Detection3D, the markers and the stage-latency record carry
  the input cloud's header. Every frame that arrives is answered, with an empty array when it could not be
  processed (undecodable, empty, backend failure), and the node keeps running.
- Latency: per-frame stages on ``~/stage_latency`` (diagnostic_msgs/DiagnosticArray, header = the cloud's);
  rolling p50/p95/p99, rates, drops and problems at 1 Hz on /diagnostics.
- The input contract (fields, value ranges, range crop) is checked on the first cloud and after a frame_id change.
- Post-processing is tunable at runtime (``ros2 param set``); values are validated, a rejection says why.
"""
from __future__ import annotations

import array
import math
import os
import signal
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from sensor_msgs.msg import PointCloud2
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from clean_ros.defaults import (BACKEND, BACKENDS, DEVICE, EXPECTED_RATE_HZ, INPUT_TOPIC, INTENSITY_SCALE, NODE_NAME,
                                NUM_THREADS, OUTPUT_TOPIC, WARMUP_ITERATIONS)
from clean_ros.metrics.latency import EventLog, RateMeter, RollingStageStats, SequenceGapCounter, StampGapCounter
from clean_ros.ros.messages import stage_timing_message, to_detection3d_array, to_marker_array
from clean_ros.ros.node_diagnostics import HealthSnapshot, assess, to_diagnostic_array
from clean_ros.package_share import default_bundle_path
from clean_ros.cloud.pointcloud import CloudFormatError, InputContract, check_input_contract, read_points
from clean_ros.types import Detections

PACKAGE = "clean_ros"
STAGES = ("decode", "preprocess", "inference", "postprocess", "publish", "total")
# How long a warning of one kind stays quiet after it was logged (seconds).
LOG_THROTTLE_S = 5.0
RATE_WINDOW_S = 5.0          # received / processed rates are measured over this window
PROBLEM_HOLD_S = 5.0         # a problem stays on /diagnostics this long after it last happened
CONTRACT_CHECK_MIN_PERIOD_S = 1.0
CLOCK_COMPARABLE_S = 3600.0  # |now - stamp| beyond this: the stamp is from another clock (bag without --clock)
# rclpy >= Jazzy passes MessageInfo (publication sequence numbers) to two-argument callbacks.
_MESSAGE_INFO_CALLBACKS = hasattr(Subscription, "CallbackType")


def stamp_seconds(stamp) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


# ------------------------------------------------------------------------------------------- post-processing params
# ROS parameters of the runtime post-processing: each maps one to one onto a keyword of
# Pipeline.update_postprocess (which validates and applies them; a refusal keeps the old settings).
POSTPROCESS_PARAMS = ("score_thresholds", "nms_iou", "nms_pre_max", "nms_post_max", "class_agnostic_nms",
                      "iou_gate_mode", "iou_gate_thresholds", "iou_gate_alphas")
ARRAY_PARAMS = ("score_thresholds", "iou_gate_thresholds", "iou_gate_alphas")


def current_postprocess_values(settings) -> dict[str, Any]:
    """The ROS-parameter view of a PostProcessConfig."""
    gate = settings.iou_gate
    return {
        "score_thresholds": [float(v) for v in settings.score_thresholds],
        "nms_iou": float(settings.nms_iou),
        "nms_pre_max": int(settings.nms_pre_max),
        "nms_post_max": int(settings.nms_post_max),
        "class_agnostic_nms": bool(settings.class_agnostic_nms),
        "iou_gate_mode": str(gate.mode),
        "iou_gate_thresholds": [float(v) for v in gate.thresholds],
        "iou_gate_alphas": [float(v) for v in gate.alphas],
    }


def validate_postprocess(changes: dict[str, Any], current: dict[str, Any], num_classes: int) -> str | None:
    """Checks that span parameters (the Pipeline validates each value): a reason for refusing, or None."""
    merged = {**current, **changes}
    for name in ARRAY_PARAMS:
        if name in changes and len(changes[name]) != num_classes:
            return f"{name} needs {num_classes} values (one per class), got {len(changes[name])}"
        if name in changes and not all(math.isfinite(v) for v in changes[name]):
            return f"{name} values must be finite numbers in [0, 1], got {list(changes[name])}"
    pre, post = int(merged["nms_pre_max"]), int(merged["nms_post_max"])
    if pre > 0 and post > pre:
        return (f"nms_post_max ({post}) must not exceed nms_pre_max ({pre}): NMS keeps at most what it is given "
                "(0 = no limit)")
    return None


def to_pipeline_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """ROS parameter values -> keywords of Pipeline.update_postprocess."""
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if name in ARRAY_PARAMS:
            out[name] = [float(v) for v in value]
        elif name == "nms_iou":
            out[name] = float(value)
        elif name in ("nms_pre_max", "nms_post_max"):
            out[name] = int(value)
        else:
            out[name] = value
    return out


def decimate(points: np.ndarray, max_points: int) -> np.ndarray:
    """Every k-th point so that at most max_points remain (a view, no copy); max_points <= 0: unchanged."""
    if max_points <= 0 or len(points) <= max_points:
        return points
    step = -(-len(points) // max_points)
    return points[::step]


class StartupError(RuntimeError):
    """The node cannot start (bundle, backend or parameters unusable); the message says what to fix."""


# Parameters whose value comes from the model bundle; setting them in a params file is refused (USERS.md 5).
BUNDLE_OWNED = ("point_cloud_range", "voxel_size", "class_names", "point_features", "num_point_features",
                "max_voxels", "max_points_per_voxel")


class DetectorNode(Node):
    """See the module docstring. ``pipeline_factory(bundle_path, backend, device)`` exists for unit tests of the
    node's logic with a test double; the node itself always uses Pipeline.from_bundle."""

    def __init__(self, pipeline_factory=None, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self._loggers: dict[str, Any] = {}
        self._refuse_bundle_owned_overrides()
        self._declare_static_parameters()
        read = self._param
        self.input_topic = read("input_topic")
        self.output_topic = read("output_topic")
        self.backend_requested = read("backend")
        self.device = read("device")
        self.num_threads = read("num_threads")
        self.use_sim_time = bool(self.get_parameter("use_sim_time").value)
        self._set_torch_threads(self.num_threads)
        self.pipeline, self.bundle_path = self._load_pipeline(pipeline_factory)
        self.class_names = tuple(self.pipeline.class_names)
        self.point_features = tuple(self._feature_names(self.pipeline.point_features))
        self._declare_postprocess_parameters()
        self._warm_up(read("warmup_iterations"))

        # Runtime-tunable values (kept in attributes: the callback reads them per frame).
        self.intensity_scale = read("intensity_scale")
        self.expected_rate_hz = read("expected_rate_hz")
        self.publish_markers = read("publish_markers")
        self.marker_lifetime_s = read("marker_lifetime_s")
        self.stale_timeout_s = read("stale_timeout_s")
        self.max_input_age_s = read("max_input_age_s")
        self.max_points = read("max_points")
        self.add_on_set_parameters_callback(self._on_set_parameters)

        # Bounded statistics and counters.
        window = read("latency_window")
        self.stage_stats = RollingStageStats(window)
        self.age_stats = RollingStageStats(window)
        self.received_rate = RateMeter(RATE_WINDOW_S)
        self.processed_rate = RateMeter(RATE_WINDOW_S)
        self.sequence_gaps = SequenceGapCounter()
        # A gap longer than stale_timeout_s is an interruption of the stream (reported as stale input), not drops.
        self.stamp_gaps = StampGapCounter(self.expected_rate_hz, max_gap_s=self.stale_timeout_s)
        self.events = EventLog()
        self.frames_received = self.frames_processed = self.frames_published = self.dropped_stale = 0
        self.last_input_time: float | None = None
        self.started = time.monotonic()
        self.clock_offset_s: float | None = None
        self.frame_id: str | None = None
        self.contract_pending = True
        self.last_contract_check = -math.inf
        self.contract_findings: list = []
        self.contract = self._input_contract()
        self.hardware_id = read("hardware_id") or self.get_fully_qualified_name()

        depth = read("qos_depth")
        reliability = read("qos_reliability")
        sensor_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                                reliability=(ReliabilityPolicy.RELIABLE if reliability == "reliable"
                                             else ReliabilityPolicy.BEST_EFFORT),
                                durability=DurabilityPolicy.VOLATILE)
        self.detections_pub = self.create_publisher(Detection3DArray, self.output_topic, 10)
        self.markers_pub = self.create_publisher(MarkerArray, self.output_topic.rstrip("/") + "/markers", 10)
        self.timing_pub = self.create_publisher(DiagnosticArray, "~/stage_latency", 10)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        if _MESSAGE_INFO_CALLBACKS:
            callback = self._on_cloud
        else:  # older rclpy (Humble): no MessageInfo, drops are counted from stamps only
            def callback(msg):
                self._on_cloud(msg, None)
        self.subscription = self.create_subscription(PointCloud2, self.input_topic, callback, sensor_qos)
        # Diagnostics on a steady clock: with use_sim_time and no /clock the node must still report.
        self.diagnostics_timer = self.create_timer(read("diagnostics_period_s"), self._publish_diagnostics,
                                                   clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f"ready: backend '{self.pipeline.backend_name}' (requested '{self.backend_requested}') on "
            f"{self.device}, {self.num_threads} torch thread(s); bundle {self.bundle_path}; classes "
            f"{', '.join(self.class_names)}; point features {', '.join(self.point_features)}; input "
            f"{self.input_topic} ({reliability}, depth {depth}); output {self.output_topic}"
            + ("; use_sim_time" if self.use_sim_time else ""))

    # ------------------------------------------------------------------------------------------ start-up
    def _param(self, name: str):
        value = self.get_parameter(name).value
        return list(value) if isinstance(value, (array.array, tuple)) else value

    def _refuse_bundle_owned_overrides(self) -> None:
        overrides = getattr(self, "_parameter_overrides", {}) or {}
        owned = sorted(name for name in overrides if name in BUNDLE_OWNED)
        if owned:
            raise StartupError(
                f"parameter(s) {', '.join(owned)} set for {NODE_NAME}, but model geometry, classes and feature "
                "layout come from the model bundle's manifest (what the model was trained with): remove them "
                "from the params file / command line, or choose another bundle_path")

    def _declare(self, name: str, default, description: str, *, read_only: bool = False,
                 float_range: tuple[float, float] | None = None, int_range: tuple[int, int] | None = None,
                 constraints: str = ""):
        descriptor = ParameterDescriptor(description=description, read_only=read_only,
                                         additional_constraints=constraints)
        if float_range is not None:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(float_range[0]),
                                                                  to_value=float(float_range[1]), step=0.0)]
        if int_range is not None:
            descriptor.integer_range = [IntegerRange(from_value=int(int_range[0]), to_value=int(int_range[1]),
                                                     step=1)]
        try:
            self.declare_parameter(name, default, descriptor)
        except Exception as error:  # noqa: BLE001 - wrong type / out of range in the params file
            raise StartupError(f"parameter '{name}': {error} ({description}; default {default!r})") from None

    def _declare_static_parameters(self) -> None:
        d = self._declare
        d("bundle_path", "", "model bundle directory; empty = the embedded default (models/default)", read_only=True)
        d("backend", BACKEND, f"{' | '.join(BACKENDS)} (auto: best available)", read_only=True,
          constraints=f"one of {', '.join(BACKENDS)}")
        d("device", DEVICE, "cpu | cuda | cuda:N", read_only=True)
        d("num_threads", NUM_THREADS, "torch intra-op threads (CPU); see docs/NODE.md on contention", read_only=True,
          int_range=(1, 256))
        d("warmup_iterations", WARMUP_ITERATIONS,
          "inference runs on a synthetic cloud at start-up, excluded from statistics", read_only=True,
          int_range=(0, 100))
        d("input_topic", INPUT_TOPIC, "sensor_msgs/PointCloud2 input topic", read_only=True)
        d("output_topic", OUTPUT_TOPIC, "vision_msgs/Detection3DArray output; markers on <output_topic>/markers",
          read_only=True)
        d("qos_depth", 1, "input keep-last depth (1: never build a backlog)", read_only=True, int_range=(1, 100))
        d("qos_reliability", "best_effort", "input reliability: best_effort (sensor QoS) | reliable",
          read_only=True, constraints="best_effort or reliable")
        if self._param("qos_reliability") not in ("best_effort", "reliable"):
            raise StartupError(f"parameter 'qos_reliability' is '{self._param('qos_reliability')}': use "
                               "best_effort or reliable")
        if self._param("backend") not in BACKENDS:
            raise StartupError(f"parameter 'backend' is '{self._param('backend')}': use one of {', '.join(BACKENDS)}")
        d("latency_window", 300, "frames in the rolling latency percentiles", read_only=True,
          int_range=(10, 100000))
        d("diagnostics_period_s", 1.0, "period of the /diagnostics report", read_only=True,
          float_range=(0.05, 60.0))
        d("hardware_id", "", "hardware_id of the diagnostics; empty = the node's name")
        d("intensity_scale", INTENSITY_SCALE, "multiplies the input intensity (0-255 sensors: 0.00392156862745098)",
          float_range=(1e-9, 1e6))
        d("expected_rate_hz", EXPECTED_RATE_HZ, "sensor rate; a lower received rate is reported (0 = unknown)",
          float_range=(0.0, 1000.0))
        d("publish_markers", True, "MarkerArray on <output_topic>/markers while someone subscribes")
        d("marker_lifetime_s", 0.2, "marker lifetime (0 = forever)", float_range=(0.0, 3600.0))
        d("stale_timeout_s", 2.0, "no input for this long is reported as stale input", float_range=(0.01, 3600.0))
        d("max_input_age_s", 0.0, "drop (count, do not process) frames older than this when stamps are comparable "
                                  "with the node clock; 0 = never drop", float_range=(0.0, 3600.0))
        d("max_points", 1_000_000, "clouds with more points are decimated (every k-th point) to bound latency; "
                                   "0 = no limit", int_range=(0, 1 << 26))

    def _declare_postprocess_parameters(self) -> None:
        current = current_postprocess_values(self.pipeline.postprocess_settings)
        n = len(self.class_names)
        classes = ", ".join(self.class_names)
        descriptions = {
            "score_thresholds": (f"per-class score thresholds in [0, 1], {n} values in class order ({classes})",
                                 {}),
            "nms_iou": ("rotated BEV NMS IoU threshold in [0, 1]", dict(float_range=(0.0, 1.0))),
            "nms_pre_max": ("boxes kept (by score) before NMS; 0 = no limit", dict(int_range=(0, 1 << 20))),
            "nms_post_max": ("detections kept after NMS (max detections per frame); 0 = no limit",
                             dict(int_range=(0, 1 << 20))),
            "class_agnostic_nms": ("NMS across classes (true) or per class (false)", {}),
            "iou_gate_mode": ("IoU-aware rescoring: none | hard | soft (hard/soft need a bundle with an IoU branch)",
                              {}),
            "iou_gate_thresholds": (f"per-class IoU-gate thresholds in [0, 1] ({n} values, mode hard)", {}),
            "iou_gate_alphas": (f"per-class IoU-gate exponents in [0, 1] ({n} values, mode soft)", {}),
        }
        for name in POSTPROCESS_PARAMS:
            description, ranges = descriptions[name]
            default = current[name]
            if isinstance(default, list) and not default:
                continue  # the bundle has no such setting (an empty list has no parameter type)
            self._declare(name, default, description + " (default: the bundle's value)", **ranges)
        # Values from the params file override the bundle's: apply them now (and refuse invalid ones).
        overrides = {name: self._param(name) for name in POSTPROCESS_PARAMS
                     if self.has_parameter(name) and self._param(name) != current[name]}
        if overrides:
            reason = self._apply_postprocess(overrides)
            if reason:
                raise StartupError(f"post-processing parameters from the params file: {reason}")
            self.get_logger().info(f"post-processing overrides applied: {overrides}")

    def _set_torch_threads(self, threads: int) -> None:
        try:
            import torch

            torch.set_num_threads(int(threads))
        except Exception as error:  # noqa: BLE001
            self.get_logger().warning(f"could not set torch threads to {threads}: {error}")

    def _load_pipeline(self, factory):
        path = self._param("bundle_path") or str(default_bundle_path())
        try:
            if factory is None:
                from clean_ros.inference.pipeline import Pipeline

                pipeline = Pipeline.from_bundle(path, backend=self.backend_requested, device=self.device,
                                                intra_op_threads=self.num_threads)
            else:
                pipeline = factory(path, backend=self.backend_requested, device=self.device)
        except Exception as error:  # noqa: BLE001 - every start-up failure becomes one clear line
            raise StartupError(f"cannot load the model bundle '{path}' (backend '{self.backend_requested}', "
                               f"device '{self.device}'): {error}") from None
        name = getattr(pipeline, "backend_name", "?")
        reason = getattr(getattr(pipeline, "backend", None), "selection_reason", "") or "requested explicitly"
        self.backend_reason = reason
        if self.backend_requested not in ("auto", name):
            self.get_logger().warning(f"backend fallback: '{self.backend_requested}' was requested but '{name}' "
                                      f"runs ({reason})")
        else:
            self.get_logger().info(f"backend '{name}' runs (requested '{self.backend_requested}': {reason})")
        return pipeline, path

    def _warm_up(self, iterations: int) -> None:
        if iterations <= 0:
            return
        start = time.perf_counter()
        try:
            self.pipeline.warmup(iterations=iterations)
        except Exception as error:  # noqa: BLE001
            raise StartupError(f"warm-up of backend '{self.pipeline.backend_name}' failed: {error}") from None
        self.get_logger().info(f"warm-up: {iterations} iteration(s) in {time.perf_counter() - start:.2f} s")

    @staticmethod
    def _feature_names(features) -> list[str]:
        names = []
        for f in features:
            if isinstance(f, str):
                names.append(f)
            elif isinstance(f, dict):
                names.append(str(f["name"]))
            else:
                names.append(str(getattr(f, "name", f)))
        return names

    def _input_contract(self):
        bundle = getattr(self.pipeline, "bundle", None)
        if bundle is not None and hasattr(bundle, "input_contract"):
            return bundle.input_contract()
        return InputContract(point_features=self.point_features,
                             point_cloud_range=tuple(getattr(bundle, "point_cloud_range", (-1e9,) * 3 + (1e9,) * 3)))

    def _log(self, kind: str):
        """A child logger per problem kind, so each kind has its own throttle (rclpy throttles per call site and
        logger)."""
        logger = self._loggers.get(kind)
        if logger is None:
            logger = self._loggers[kind] = self.get_logger().get_child(kind)
        return logger

    # ------------------------------------------------------------------------------------------ parameters
    def _apply_postprocess(self, changes: dict[str, Any]) -> str | None:
        current = current_postprocess_values(self.pipeline.postprocess_settings)
        reason = validate_postprocess(changes, current, len(self.class_names))
        if reason:
            return reason
        try:
            self.pipeline.update_postprocess(**to_pipeline_changes(changes))
        except (ValueError, TypeError) as error:
            return str(error)
        return None

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        post: dict[str, Any] = {}
        plain: dict[str, Any] = {}
        for parameter in parameters:
            if parameter.name in POSTPROCESS_PARAMS:
                value = parameter.value
                post[parameter.name] = list(value) if parameter.name in ARRAY_PARAMS else value
            else:
                plain[parameter.name] = parameter.value
        scale = plain.get("intensity_scale", 1.0)
        if not (math.isfinite(scale) and scale > 0):
            return SetParametersResult(successful=False, reason=f"intensity_scale must be > 0, got {scale}")
        if post:
            reason = self._apply_postprocess(post)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            self.get_logger().info(f"post-processing updated: {post}")
        if "intensity_scale" in plain:
            self.intensity_scale = float(plain["intensity_scale"])
            self.contract_pending = True  # show whether the new scale fixes a value-range finding
        if "expected_rate_hz" in plain:
            self.expected_rate_hz = float(plain["expected_rate_hz"])
            self.stamp_gaps.expected_rate_hz = self.expected_rate_hz
        for name in ("publish_markers", "marker_lifetime_s", "stale_timeout_s", "max_input_age_s", "max_points",
                     "hardware_id"):
            if name in plain:
                setattr(self, name, plain[name])
        if "hardware_id" in plain:
            self.hardware_id = plain["hardware_id"] or self.get_fully_qualified_name()
        if "stale_timeout_s" in plain:
            self.stamp_gaps.max_gap_s = float(plain["stale_timeout_s"])
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------------------ per frame
    def _on_cloud(self, msg: PointCloud2, info) -> None:
        """info: rclpy MessageInfo (a required argument: rclpy passes it only to two-argument callbacks)."""
        start = time.perf_counter()
        arrival = time.monotonic()
        self.frames_received += 1
        self.received_rate.add(arrival)
        self.last_input_time = arrival
        header = msg.header
        self._account_drops(header, info)
        age_s = self._input_age(header)
        if header.frame_id != self.frame_id:
            if self.frame_id is not None:
                self.events.record("frame_id_changed", arrival, f"'{self.frame_id}' -> '{header.frame_id}'")
                self._log("frame_id").warning(f"input frame_id changed from '{self.frame_id}' to "
                                              f"'{header.frame_id}': boxes follow the new frame; re-checking the "
                                              "input contract", throttle_duration_sec=LOG_THROTTLE_S)
            self.frame_id = header.frame_id
            self.contract_pending = True
        if self.max_input_age_s > 0 and age_s is not None and age_s > self.max_input_age_s:
            self.dropped_stale += 1
            self.events.record("stale_frame_dropped", arrival, f"age {age_s:.3f} s > {self.max_input_age_s:g} s")
            self._log("stale").warning(f"dropping frames older than max_input_age_s={self.max_input_age_s:g} s "
                                       f"(this one: {age_s:.3f} s); {self.dropped_stale} dropped so far",
                                       throttle_duration_sec=LOG_THROTTLE_S)
            return

        stage_ms: dict[str, float] = {}
        detections, num_points, ran = self._detect(msg, arrival, stage_ms)

        t_publish = time.perf_counter()
        try:
            self.detections_pub.publish(to_detection3d_array(detections, header))
            if self.publish_markers and self.markers_pub.get_subscription_count() > 0:
                self.markers_pub.publish(to_marker_array(detections, header, lifetime_s=self.marker_lifetime_s))
        except Exception as error:  # noqa: BLE001 - a publish failure must not stop the node
            self._log("publish").error(f"publishing failed: {error!r}", throttle_duration_sec=LOG_THROTTLE_S)
        end = time.perf_counter()
        stage_ms["publish"] = 1e3 * (end - t_publish)
        stage_ms["total"] = 1e3 * (end - start)
        self.frames_published += 1
        self.processed_rate.add(time.monotonic())
        if ran:
            self.stage_stats.add(stage_ms)
        extra = {"num_points": num_points, "num_detections": len(detections), "processed": str(ran).lower()}
        if age_s is not None:
            extra["input_age_ms"] = f"{1e3 * age_s:.3f}"
            extra["end_to_end_ms"] = f"{1e3 * age_s + stage_ms['total']:.3f}"
            if ran:
                self.age_stats.add({"input_age": 1e3 * age_s})
        try:
            self.timing_pub.publish(stage_timing_message({k: stage_ms.get(k, 0.0) for k in STAGES}, header,
                                                         self.hardware_id, extra))
        except Exception as error:  # noqa: BLE001
            self._log("publish").error(f"publishing stage latency failed: {error!r}",
                                       throttle_duration_sec=LOG_THROTTLE_S)
        # The check decodes the cloud once more: at most once a second, even if a hostile stream flips frame_id.
        if self.contract_pending and time.monotonic() - self.last_contract_check >= CONTRACT_CHECK_MIN_PERIOD_S:
            self.last_contract_check = time.monotonic()
            self._check_contract(msg)

    def _detect(self, msg: PointCloud2, arrival: float, stage_ms: dict[str, float]):
        """(detections, number of points, whether the pipeline ran); never raises."""
        empty = Detections.empty(self.class_names)
        t0 = time.perf_counter()
        try:
            points, cloud = read_points(msg, self.point_features, intensity_scale=self.intensity_scale)
        except CloudFormatError as error:
            stage_ms["decode"] = 1e3 * (time.perf_counter() - t0)
            self.events.record("undecodable_input", arrival, str(error))
            self._log("input").warning(f"cannot decode the cloud on {self.input_topic} (frame "
                                       f"'{msg.header.frame_id}'): {error}; publishing an empty result",
                                       throttle_duration_sec=LOG_THROTTLE_S)
            return empty, 0, False
        except Exception as error:  # noqa: BLE001 - hostile input must never stop the node
            stage_ms["decode"] = 1e3 * (time.perf_counter() - t0)
            self.events.record("undecodable_input", arrival, repr(error))
            self._log("input").warning(f"cannot decode the cloud: {error!r}; publishing an empty result",
                                       throttle_duration_sec=LOG_THROTTLE_S)
            return empty, 0, False
        if self.max_points > 0 and len(points) > self.max_points:
            self.events.record("too_many_points", arrival, f"{len(points)} points > max_points {self.max_points}")
            self._log("size").warning(f"cloud has {len(points)} points (> max_points {self.max_points}): keeping "
                                      "every k-th point to bound latency", throttle_duration_sec=LOG_THROTTLE_S)
            points = decimate(points, self.max_points)
        stage_ms["decode"] = 1e3 * (time.perf_counter() - t0)
        if len(points) == 0:
            detail = (f"{cloud.num_points_in} points in, {cloud.num_nonfinite_removed} NaN/Inf removed"
                      if cloud.num_points_in else "width * height = 0")
            self.events.record("empty_input", arrival, detail)
            self._log("empty").warning(f"empty cloud on {self.input_topic} ({detail}): publishing an empty result",
                                       throttle_duration_sec=LOG_THROTTLE_S)
            return empty, 0, False
        if not points.flags.c_contiguous or not points.flags.writeable:
            points = np.ascontiguousarray(points)  # the zero-copy view of msg.data is read-only
        try:
            result = self.pipeline(points)
        except Exception as error:  # noqa: BLE001 - a backend failure on one frame must not stop the node
            self.events.record("backend_error", arrival, repr(error)[:300])
            self._log("backend").error(f"backend '{self.pipeline.backend_name}' failed on a frame of "
                                       f"{len(points)} points: {error!r}; publishing an empty result",
                                       throttle_duration_sec=LOG_THROTTLE_S)
            return empty, len(points), False
        for stage in ("preprocess", "inference", "postprocess"):
            stage_ms[stage] = float(result.timings_ms.get(stage, 0.0))
        stats = result.voxel_stats
        if stats is not None and stats.overflowed:
            detail = (f"{stats.num_overflow_voxels} of {stats.num_occupied_voxels} voxels and "
                      f"{stats.num_overflow_points} points dropped")
            self.events.record("voxel_overflow", arrival, detail)
            self._log("voxels").warning(f"voxel overflow: {detail} (the bundle's max_voxels is too small for this "
                                        "sensor, or the cloud is not in the trained range/units)",
                                        throttle_duration_sec=LOG_THROTTLE_S)
        self.frames_processed += 1
        return result.detections, len(points), True

    def _account_drops(self, header, info) -> None:
        if info is not None:
            try:
                gid = info.get("publisher_gid")
                key = bytes(gid["data"]) if isinstance(gid, dict) and "data" in gid else repr(gid)
                self.sequence_gaps.add(key, info.get("publication_sequence_number"))
            except Exception:  # noqa: BLE001 - middleware without sequence numbers
                pass
        backwards_before = self.stamp_gaps.backward_jumps
        self.stamp_gaps.add(stamp_seconds(header.stamp))
        if self.stamp_gaps.backward_jumps != backwards_before:
            now = time.monotonic()
            self.events.record("stamp_backwards", now, "a header stamp earlier than the previous one")
            self._log("stamps").warning("input header stamp went backwards (bag loop, restarted driver or clock "
                                        "jump): drop counting restarts from here",
                                        throttle_duration_sec=LOG_THROTTLE_S)

    def _input_age(self, header) -> float | None:
        """now - stamp in seconds when the stamp and the node clock are comparable, else None (and the offset
        is kept for the diagnostics hint)."""
        now = self.get_clock().now().nanoseconds
        age = 1e-9 * now - stamp_seconds(header.stamp)
        if now > 0 and abs(age) < CLOCK_COMPARABLE_S:
            self.clock_offset_s = None
            return age
        self.clock_offset_s = age
        return None

    def _check_contract(self, msg: PointCloud2) -> None:
        findings = check_input_contract(msg, self.contract, intensity_scale=self.intensity_scale)
        self.contract_findings = [(f.code, f.message) for f in findings if f.code != "empty"]
        self.contract_pending = any(f.code == "empty" for f in findings)  # check again on a non-empty cloud
        for code, message in self.contract_findings:
            self.get_logger().warning(f"input contract ({code}) on {self.input_topic} frame "
                                      f"'{msg.header.frame_id}': {message}")
        if not findings:
            self.get_logger().info(f"input contract OK on {self.input_topic} (frame '{msg.header.frame_id}')")

    # ------------------------------------------------------------------------------------------ diagnostics
    def health_snapshot(self) -> HealthSnapshot:
        now = time.monotonic()
        age = self.age_stats.percentiles("input_age")
        return HealthSnapshot(
            now=now, started=self.started, input_topic=self.input_topic, expected_rate_hz=self.expected_rate_hz,
            received_rate_hz=self.received_rate.rate(now), processed_rate_hz=self.processed_rate.rate(now),
            frames_received=self.frames_received, frames_processed=self.frames_processed,
            frames_published=self.frames_published, dropped_sequence=self.sequence_gaps.dropped,
            dropped_stamp_gaps=self.stamp_gaps.dropped, dropped_stale=self.dropped_stale,
            last_input_time=self.last_input_time, stale_timeout_s=self.stale_timeout_s,
            rate_window_s=RATE_WINDOW_S, events=self.events, problem_hold_s=PROBLEM_HOLD_S,
            stage_percentiles=self.stage_stats.summary(), input_age=age, clock_offset_s=self.clock_offset_s,
            backend_requested=self.backend_requested, backend_name=str(self.pipeline.backend_name),
            device=self.device, bundle=str(self.bundle_path), num_threads=self.num_threads,
            contract_findings=tuple(self.contract_findings), use_sim_time=self.use_sim_time,
            backend_reason=self.backend_reason)

    def _publish_diagnostics(self) -> None:
        try:
            level, message, items = assess(self.health_snapshot())
            self.diagnostics_pub.publish(to_diagnostic_array(level, message, items, self.get_clock().now().to_msg(),
                                                             self.hardware_id))
        except Exception as error:  # noqa: BLE001 - diagnostics must never stop detection
            self._log("diagnostics").error(f"diagnostics failed: {error!r}", throttle_duration_sec=LOG_THROTTLE_S)

    def close(self) -> None:
        dropped = max(self.sequence_gaps.dropped, self.stamp_gaps.dropped) + self.dropped_stale
        line = (f"stopping: {self.frames_received} frames received, {self.frames_published} answered, "
                f"{self.frames_processed} through the model, {dropped} dropped")
        if self.context.ok():
            self.get_logger().info(line)
        else:  # after SIGINT the context is gone and /rosout with it
            print(f"[INFO] [{NODE_NAME}]: {line}", file=sys.stderr, flush=True)

def _ros_arg_value(value: Any) -> str:
    """A parameter value as `-p name:=value` wants it (YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_ros_arg_value(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def launch_command(params_file: str | os.PathLike, parameters: Mapping[str, Any] | None = None,
                   log_level: str = "info", python: str | None = None) -> list[str]:
    """The command line that starts the node as launch/detector.launch.py does (console script `detector_node`
    = `python -m clean_ros.detector_node`): params file first, then per-parameter overrides, then the log level.
    Tests and benchmarks start the node with exactly this."""
    command = [python or sys.executable, "-m", "clean_ros.detector_node", "--ros-args", "--params-file",
               str(params_file)]
    for name, value in (parameters or {}).items():
        command += ["-p", f"{name}:={_ros_arg_value(value)}"]
    return command + ["--log-level", log_level]


def stop_node_process(process: "subprocess.Popen", timeout_s: float = 15.0) -> int | None:
    """Stop a node started with launch_command: SIGINT (SIGTERM was occasionally lost while spinning), then kill
    if it has not exited within timeout_s. Returns its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m clean_ros.detector_node` and the `detector_node` console script."""
    argv = list(sys.argv if argv is None else argv)
    rclpy.init(args=argv)
    node = None
    code = 0
    try:
        node = DetectorNode()
        rclpy.spin(node)
    except StartupError as error:
        # A clear line, no traceback: the bundle/backend/parameters cannot be used.
        print(f"[{NODE_NAME}] FATAL: {error}", file=sys.stderr, flush=True)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
            try:
                node.destroy_node()
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
        if rclpy.ok():
            rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
