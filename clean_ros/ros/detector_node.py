"""The clean_ros detector node: sensor_msgs/PointCloud2 in, vision_msgs/Detection3DArray out.

    python -m clean_ros.detector_node --ros-args --params-file config/detector.yaml      (what the launch file runs)
    ros2 launch clean_ros detector.launch.py                                              (on a ROS install)

A thin rclpy shell over clean_ros.inference.pipeline.Pipeline (the same object the offline tools use). Per frame:
points (clean_ros.cloud.model_input.points_for_model: decode, crop / exclusion box, decimation) -> model
(Pipeline: preprocess, inference, postprocess) -> boxes -> publish (clean_ros.ros.messages).

- Sensor QoS: best-effort, keep-last, depth ``qos_depth`` (1). Each frame is processed inside its callback, so at
  most ``qos_depth`` frames ever wait; older ones are overwritten by DDS. Missed frames are counted by
  clean_ros.ros.frame_accounting (DDS sequence numbers, header-stamp gaps).
- Header in = header out: the Detection3DArray, every Detection3D, the markers and the stage-latency record carry
  the input cloud's header (with target_frame set, the boxes' frame_id is target_frame; the stamp is kept). Every
  frame that arrives is answered, with an empty array when it could not be processed (undecodable, empty, backend
  failure), and the node keeps running; only a frame whose TF lookup fails is skipped (no answer, a diagnostic).
- Frames (clean_ros.ros.tf_frames): target_frame / model_frame through TF at the cloud's stamp (tf2_ros where
  installed, else clean_ros.ros.tf_buffer), or sensor_height / pitch / roll without TF (the Pipeline's sensor mount),
  or auto_sensor_mount (the Pipeline's mount measured from the scans' ground). ground_check: the Pipeline fits the
  scans' ground and /diagnostics says whether it lies where the model's training sensor saw it (with model_frame,
  judged in the last cloud's model frame).
- Latency: per-frame stages on ``~/stage_latency`` (diagnostic_msgs/DiagnosticArray, header = the cloud's);
  rolling p50/p95/p99, rates, drops and problems at 1 Hz on /diagnostics.
- The input contract (fields, value ranges, range crop) is checked on the first cloud and after a frame_id change.
- Parameters (table and validation: clean_ros.ros.node_parameters; applying a change:
  clean_ros.ros.node_parameter_changes): post-processing, input boxes and the rest are tunable at runtime
  (``ros2 param set``); values are validated, a rejection says why.

DetectorCore is the node's work; DetectorNode (here) does all of it in its constructor, LifecycleDetectorNode
(clean_ros.ros.lifecycle_node) spreads the same steps over configure / activate / deactivate / cleanup. This module
is the node itself (set-up, callback steps, publishing, timers, main); the model's load / warm-up / free is
clean_ros.ros.node_model, the /diagnostics report clean_ros.ros.node_diagnostics.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Sequence

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from clean_ros.cloud.model_input import ModelInput, points_for_model
from clean_ros.cloud.pointcloud import CloudFormatError, InputContract, check_input_contract
from clean_ros.defaults import NODE_NAME
from clean_ros.ros.frame_accounting import Arrival, FrameAccounting
from clean_ros.ros.messages import stage_timing_message, to_detection3d_array, to_marker_array
from clean_ros.ros.node_diagnostics import LOG_THROTTLE_S, HealthReport
from clean_ros.ros.node_model import NodeModel
from clean_ros.ros.node_parameter_changes import PLAIN_ATTRIBUTES, ParameterChanges
from clean_ros.ros.node_parameters import BOX_PARAMS, ParameterReader, StartupError, box_filter
from clean_ros.ros.tf_frames import FrameLookupError, FrameResolver
from clean_ros.types import Detections

PACKAGE = "clean_ros"
STAGES = ("decode", "preprocess", "inference", "postprocess", "publish", "total")
# TF lookups + moving points and boxes between frames (the Pipeline's "frames" time); in the stage record only while
# target_frame, model_frame or sensor_height is set.
FRAMES_STAGE = "frames"
# Fitting the ground plane (the Pipeline's "ground" time): only on the scans it fits (ground_check, auto_sensor_mount).
GROUND_STAGE = "ground"
SKIPPED = object()  # a frame whose TF lookup failed: no answer
CONTRACT_CHECK_MIN_PERIOD_S = 1.0
# rclpy >= Jazzy passes MessageInfo (publication sequence numbers) to two-argument callbacks.
_MESSAGE_INFO_CALLBACKS = hasattr(Subscription, "CallbackType")


class DetectorCore(NodeModel, ParameterChanges, HealthReport):
    """The detector's state and work, mixed into an rclpy Node (plain or lifecycle). ``pipeline_factory(bundle_path,
    backend, device)`` exists for unit tests of the node's logic with a test double; the node itself always uses
    Pipeline.from_bundle. The model's life (clean_ros.ros.node_model), runtime parameter changes
    (clean_ros.ros.node_parameter_changes) and the health report (clean_ros.ros.node_diagnostics) are mixins."""

    pipeline = None

    # ------------------------------------------------------------------------------------------ construction
    def _setup(self, pipeline_factory=None) -> None:
        """Static parameters, accounting and the parameter callback (no model yet)."""
        self._loggers: dict[str, Any] = {}
        self._pipeline_factory = pipeline_factory
        self._declaring = True  # declare_parameter runs the set-parameters callback: nothing to apply then
        self.params = ParameterReader(self)
        self.params.refuse_bundle_owned_overrides()
        self.params.declare_static()
        read = self.params.get
        self.input_topic = read("input_topic")
        self.output_topic = read("output_topic")
        self.backend_requested = read("backend")
        self.device = read("device")
        self.num_threads = read("num_threads")
        self.int8 = bool(read("int8"))
        self.use_sim_time = bool(self.get_parameter("use_sim_time").value)
        for name in PLAIN_ATTRIBUTES:
            setattr(self, name, read(name))
        self.boxes = box_filter(self.params.values(BOX_PARAMS))
        self.hardware_id = read("hardware_id") or self.get_fully_qualified_name()
        # A stamp gap longer than stale_timeout_s is an interruption of the stream (stale input), not drops.
        self.accounting = FrameAccounting(read("expected_rate_hz"), read("stale_timeout_s"), read("latency_window"))
        self.bundle_path: str | None = None
        self.backend_reason = ""
        self.class_names: tuple[str, ...] = ()
        self.point_features: tuple[str, ...] = ()
        self.contract: InputContract | None = None
        self.contract_pending = True
        self.last_contract_check = -math.inf
        self.contract_findings: list = []
        self.subscription = None
        self.diagnostics_timer = None
        self.frame_settings = self._read_frame_settings()
        self.tf = None                       # TfBackend while TF is needed and a model is loaded
        self.frames: FrameResolver | None = None
        self.cloud_frames = None             # with model_frame: the last cloud's TF transforms (for the mount check)
        self._declaring = False
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _create_publishers(self, create) -> None:
        """create: Node.create_publisher, or create_lifecycle_publisher (publishes only while active)."""
        self.detections_pub = create(Detection3DArray, self.output_topic, 10)
        self.markers_pub = create(MarkerArray, self.output_topic.rstrip("/") + "/markers", 10)
        self.timing_pub = create(DiagnosticArray, "~/stage_latency", 10)
        self.diagnostics_pub = create(DiagnosticArray, "/diagnostics", 10)

    def _subscribe(self) -> None:
        depth, reliability = self.params.get("qos_depth"), self.params.get("qos_reliability")
        sensor_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                                reliability=(ReliabilityPolicy.RELIABLE if reliability == "reliable"
                                             else ReliabilityPolicy.BEST_EFFORT),
                                durability=DurabilityPolicy.VOLATILE)
        if _MESSAGE_INFO_CALLBACKS:
            callback = self._on_cloud
        else:  # older rclpy (Humble): no MessageInfo, drops are counted from stamps only
            def callback(msg):
                self._on_cloud(msg, None)
        self.subscription = self.create_subscription(PointCloud2, self.input_topic, callback, sensor_qos)

    def _unsubscribe(self) -> None:
        if self.subscription is not None:
            self.destroy_subscription(self.subscription)
            self.subscription = None

    def _start_diagnostics(self) -> None:
        # On a steady clock: with use_sim_time and no /clock the node must still report.
        self.diagnostics_timer = self.create_timer(self.params.get("diagnostics_period_s"), self._publish_diagnostics,
                                                   clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _stop_diagnostics(self) -> None:
        if self.diagnostics_timer is not None:
            self.destroy_timer(self.diagnostics_timer)
            self.diagnostics_timer = None

    def _log_ready(self) -> None:
        self.get_logger().info(
            f"ready: backend '{self.pipeline.backend_name}'{' with the int8 dense part' if self.int8 else ''} "
            f"(requested '{self.backend_requested}') on "
            f"{self.device}, {self.num_threads} torch thread(s); bundle {self.bundle_path}; classes "
            f"{', '.join(self.class_names)}; point features {', '.join(self.point_features)}; input "
            f"{self.input_topic} ({self.params.get('qos_reliability')}, depth {self.params.get('qos_depth')}); "
            f"output {self.output_topic}" + ("; use_sim_time" if self.use_sim_time else ""))

    def _log(self, kind: str):
        """A child logger per problem kind, so each kind has its own throttle (rclpy throttles per call site and
        logger)."""
        logger = self._loggers.get(kind)
        if logger is None:
            logger = self._loggers[kind] = self.get_logger().get_child(kind)
        return logger

    # ------------------------------------------------------------------------------------------ per frame
    def _on_cloud(self, msg: PointCloud2, info) -> None:
        """info: rclpy MessageInfo (a required argument: rclpy passes it only to two-argument callbacks)."""
        start = time.perf_counter()
        arrival = self._arrive(msg, info)
        if arrival is None:
            return
        stage_ms: dict[str, float] = {}
        frames = self._model_frames(msg, arrival, stage_ms)
        if frames is SKIPPED:
            return
        detections, num_points, ran = self._detect(msg, arrival, stage_ms, frames)
        self._publish(detections, msg.header, stage_ms, start, num_points, ran, arrival)
        # The check decodes the cloud once more: at most once a second, even if a hostile stream flips frame_id.
        if self.contract_pending and time.monotonic() - self.last_contract_check >= CONTRACT_CHECK_MIN_PERIOD_S:
            self.last_contract_check = time.monotonic()
            self._check_contract(msg)

    def _arrive(self, msg: PointCloud2, info) -> Arrival | None:
        """Count the frame; None when it is dropped as too old."""
        header = msg.header
        arrival = self.accounting.arrive(header, info, self.get_clock().now().nanoseconds)
        if arrival.stamp_backwards:
            self._log("stamps").warning("input header stamp went backwards (bag loop, restarted driver or clock "
                                        "jump): drop counting restarts from here",
                                        throttle_duration_sec=LOG_THROTTLE_S)
        if arrival.frame_id_changed:
            if arrival.previous_frame_id is not None:
                self._log("frame_id").warning(f"input frame_id changed from '{arrival.previous_frame_id}' to "
                                              f"'{header.frame_id}': boxes follow the new frame; re-checking the "
                                              "input contract", throttle_duration_sec=LOG_THROTTLE_S)
            self.contract_pending = True
        if self.accounting.too_old(arrival, self.max_input_age_s):
            self._log("stale").warning(f"dropping frames older than max_input_age_s={self.max_input_age_s:g} s "
                                       f"(this one: {arrival.age_s:.3f} s); {self.accounting.dropped_stale} dropped "
                                       "so far", throttle_duration_sec=LOG_THROTTLE_S)
            return None
        return arrival

    def _model_frames(self, msg: PointCloud2, arrival: Arrival, stage_ms: dict[str, float]):
        """This cloud's transforms (None: the Pipeline's own), or SKIPPED when a TF lookup failed (logged and
        counted; stage "frames")."""
        if self.frames is None or not self.frames.uses_tf:
            return None
        t0 = time.perf_counter()
        try:
            frames = self.frames.frames_for(msg.header.frame_id, msg.header.stamp)
        except FrameLookupError as error:
            self.accounting.events.record("tf_lookup_failed", arrival.time, str(error)[:300])
            self._log("tf").warning(f"{error}; frame skipped", throttle_duration_sec=LOG_THROTTLE_S)
            return SKIPPED
        finally:
            stage_ms[FRAMES_STAGE] = 1e3 * (time.perf_counter() - t0)   # the lookups; + the moves below
        if self.frames.model_frame:  # the Pipeline fits the ground in the cloud's frame; TF says where the model's is
            self.cloud_frames = frames
        return frames

    def _detect(self, msg: PointCloud2, arrival: Arrival, stage_ms: dict[str, float], frames=None):
        """points -> model -> boxes: (detections, number of points, whether the model ran); never raises."""
        empty = Detections.empty(self.class_names)
        prepared = self._points(msg, arrival, stage_ms, frames)
        if prepared is None:
            return empty, 0, False
        detections = self._run_model(prepared.points, arrival, stage_ms, frames)
        if detections is None:
            return empty, len(prepared.points), False
        return detections, len(prepared.points), True

    def _points(self, msg: PointCloud2, arrival: Arrival, stage_ms: dict[str, float],
                frames=None) -> ModelInput | None:
        """The model's input points (stage "decode"), or None (logged and counted) when there are none. The
        crop / exclusion boxes are in the model frame: frames (this cloud's TF), else the pipeline's sensor mount."""
        t0 = time.perf_counter()
        frames = frames if frames is not None else self.pipeline.frames
        try:
            prepared = points_for_model(msg, self.point_features, intensity_scale=self.intensity_scale,
                                        max_points=self.max_points, boxes=self.boxes,
                                        model_from_input=frames.model_from_input if frames is not None else None)
        except CloudFormatError as error:
            stage_ms["decode"] = 1e3 * (time.perf_counter() - t0)
            self.accounting.events.record("undecodable_input", arrival.time, str(error))
            self._log("input").warning(f"cannot decode the cloud on {self.input_topic} (frame "
                                       f"'{msg.header.frame_id}'): {error}; publishing an empty result",
                                       throttle_duration_sec=LOG_THROTTLE_S)
            return None
        except Exception as error:  # noqa: BLE001 - hostile input must never stop the node
            stage_ms["decode"] = 1e3 * (time.perf_counter() - t0)
            self.accounting.events.record("undecodable_input", arrival.time, repr(error))
            self._log("input").warning(f"cannot decode the cloud: {error!r}; publishing an empty result",
                                       throttle_duration_sec=LOG_THROTTLE_S)
            return None
        stage_ms["decode"] = 1e3 * (time.perf_counter() - t0)
        self.accounting.boxes_removed(prepared.num_outside_crop, prepared.num_excluded)
        if prepared.decimated:
            self.accounting.events.record("too_many_points", arrival.time, f"{prepared.num_before_decimation} "
                                          f"points > max_points {self.max_points}")
            self._log("size").warning(f"cloud has {prepared.num_before_decimation} points (> max_points "
                                      f"{self.max_points}): keeping every k-th point to bound latency",
                                      throttle_duration_sec=LOG_THROTTLE_S)
        if len(prepared.points) == 0:
            cloud = prepared.cloud
            if cloud.num_points_in == 0:
                detail = "width * height = 0"
            else:
                detail = f"{cloud.num_points_in} points in, {cloud.num_nonfinite_removed} NaN/Inf removed"
                if prepared.num_outside_crop or prepared.num_excluded:
                    detail += (f", {prepared.num_outside_crop} outside crop_box, {prepared.num_excluded} inside "
                               "exclusion_box")
            self.accounting.events.record("empty_input", arrival.time, detail)
            self._log("empty").warning(f"empty cloud on {self.input_topic} ({detail}): publishing an empty result",
                                       throttle_duration_sec=LOG_THROTTLE_S)
            return None
        return prepared

    def _run_model(self, points, arrival: Arrival, stage_ms: dict[str, float], frames=None) -> Detections | None:
        """Pipeline on the points (stages preprocess, inference, postprocess); None on a backend failure."""
        try:
            result = self.pipeline(points, frames) if frames is not None else self.pipeline(points)
        except Exception as error:  # noqa: BLE001 - a backend failure on one frame must not stop the node
            self.accounting.events.record("backend_error", arrival.time, repr(error)[:300])
            self._log("backend").error(f"backend '{self.pipeline.backend_name}' failed on a frame of "
                                       f"{len(points)} points: {error!r}; publishing an empty result",
                                       throttle_duration_sec=LOG_THROTTLE_S)
            return None
        for stage in ("preprocess", "inference", "postprocess"):
            stage_ms[stage] = float(result.timings_ms.get(stage, 0.0))
        if FRAMES_STAGE in result.timings_ms:
            stage_ms[FRAMES_STAGE] = stage_ms.get(FRAMES_STAGE, 0.0) + float(result.timings_ms[FRAMES_STAGE])
        if GROUND_STAGE in result.timings_ms:
            stage_ms[GROUND_STAGE] = float(result.timings_ms[GROUND_STAGE])
        stats = result.voxel_stats
        if stats is not None and stats.overflowed:
            detail = (f"{stats.num_overflow_voxels} of {stats.num_occupied_voxels} voxels and "
                      f"{stats.num_overflow_points} points dropped")
            self.accounting.events.record("voxel_overflow", arrival.time, detail)
            self._log("voxels").warning(f"voxel overflow: {detail} (the bundle's max_voxels is too small for this "
                                        "sensor, or the cloud is not in the trained range/units)",
                                        throttle_duration_sec=LOG_THROTTLE_S)
        self.accounting.processed()
        return result.detections

    def _publish(self, detections: Detections, header, stage_ms: dict[str, float], start: float, num_points: int,
                 ran: bool, arrival: Arrival) -> None:
        """Detections (+ markers while someone listens) and the frame's stage record, all with the input header."""
        t_publish = time.perf_counter()
        out_header = header
        if self.frames is not None and self.frames.target_frame:  # boxes are in target_frame, at the cloud's stamp
            out_header = Header(stamp=header.stamp, frame_id=self.frames.target_frame)
        try:
            self.detections_pub.publish(to_detection3d_array(detections, out_header))
            if self.publish_markers and self.markers_pub.get_subscription_count() > 0:
                self.markers_pub.publish(to_marker_array(detections, out_header, lifetime_s=self.marker_lifetime_s))
        except Exception as error:  # noqa: BLE001 - a publish failure must not stop the node
            self._log("publish").error(f"publishing failed: {error!r}", throttle_duration_sec=LOG_THROTTLE_S)
        end = time.perf_counter()
        stage_ms["publish"] = 1e3 * (end - t_publish)
        stage_ms["total"] = 1e3 * (end - start)
        self.accounting.published(stage_ms, ran, arrival)
        extra = {"num_points": num_points, "num_detections": len(detections), "processed": str(ran).lower()}
        if self.boxes.active:
            extra["points_outside_crop"] = self.accounting.points_outside_crop
            extra["points_excluded"] = self.accounting.points_excluded
        if arrival.age_s is not None:
            extra["input_age_ms"] = f"{1e3 * arrival.age_s:.3f}"
            extra["end_to_end_ms"] = f"{1e3 * arrival.age_s + stage_ms['total']:.3f}"
        try:
            stages = {k: stage_ms.get(k, 0.0) for k in STAGES}
            for stage in (FRAMES_STAGE, GROUND_STAGE):  # only on the frames that had that work
                if stage in stage_ms:
                    stages[stage] = stage_ms[stage]
            self.timing_pub.publish(stage_timing_message(stages, header,
                                                         self.hardware_id, extra))
        except Exception as error:  # noqa: BLE001
            self._log("publish").error(f"publishing stage latency failed: {error!r}",
                                       throttle_duration_sec=LOG_THROTTLE_S)

    def _check_contract(self, msg: PointCloud2) -> None:
        findings = check_input_contract(msg, self.contract, intensity_scale=self.intensity_scale)
        self.contract_findings = [(f.code, f.message) for f in findings if f.code != "empty"]
        self.contract_pending = any(f.code == "empty" for f in findings)  # check again on a non-empty cloud
        for code, message in self.contract_findings:
            self.get_logger().warning(f"input contract ({code}) on {self.input_topic} frame "
                                      f"'{msg.header.frame_id}': {message}")
        if not findings:
            self.get_logger().info(f"input contract OK on {self.input_topic} (frame '{msg.header.frame_id}')")

    def close(self) -> None:
        self._stop_tf()
        line = f"stopping: {self.accounting.summary_line()}"
        if self.context.ok():
            self.get_logger().info(line)
        else:  # after SIGINT the context is gone and /rosout with it
            print(f"[INFO] [{NODE_NAME}]: {line}", file=sys.stderr, flush=True)


class DetectorNode(DetectorCore, Node):
    """The plain node: loads the model, subscribes and reports from its constructor (see the module docstring)."""

    def __init__(self, pipeline_factory=None, **node_kwargs):
        Node.__init__(self, NODE_NAME, **node_kwargs)
        self._setup(pipeline_factory)
        self._load_model()
        self._create_publishers(self.create_publisher)
        self._subscribe()
        self._start_diagnostics()
        self._log_ready()


def spin_node(make_node, argv: Sequence[str] | None = None) -> int:
    """rclpy init, build the node, spin until SIGINT; a StartupError is one FATAL line and exit status 2."""
    argv = list(sys.argv if argv is None else argv)
    rclpy.init(args=argv)
    node = None
    code = 0
    try:
        node = make_node()
        rclpy.spin(node)
    except StartupError as error:
        # A clear line, no traceback: the bundle/backend/parameters cannot be used.
        print(f"[{NODE_NAME}] FATAL: {error}", file=sys.stderr, flush=True)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGINT shuts the context down from the signal handler; between two waits rclpy then raises RCLError
        # ("the given context is not valid") instead of ExternalShutdownException: still a clean stop
        if rclpy.ok():
            raise
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m clean_ros.detector_node` and the `detector_node` console script."""
    return spin_node(DetectorNode, argv)


if __name__ == "__main__":
    sys.exit(main())
