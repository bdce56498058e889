"""The detector node's 1 Hz health report: a pure assessment (testable without ROS) and its DiagnosticArray form.

``assess(snapshot)`` turns counters, rates, rolling percentiles and recent problems into a level, a one-line
message and ordered key/values. Levels follow diagnostic_msgs/DiagnosticStatus: 0 OK, 1 WARN, 2 ERROR.
Keys are stable (tests, dashboards and docs/NODE.md refer to them).
``HealthReport`` (a mixin of clean_ros.ros.detector_node.DetectorCore) fills the snapshot from the node's state
(``health_snapshot()``) and publishes the report on /diagnostics (``_publish_diagnostics``, the node's timer).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from clean_ros.metrics.latency import EventLog, Percentiles, percentile_items
from clean_ros.ros.frame_accounting import RATE_WINDOW_S

OK, WARN, ERROR = 0, 1, 2
PROBLEM_HOLD_S = 5.0         # a problem stays on /diagnostics this long after it last happened
LOG_THROTTLE_S = 5.0         # how long a node warning of one kind stays quiet after it was logged (seconds)
BUSY_UTILIZATION = 0.8       # callback time / wall time above which a low input rate is blamed on the node
STATUS_NAME = "clean_ros: detector"

FASTDDS_HINT = ("large best-effort clouds are probably being lost inside DDS: apply config/fastdds_large_data.xml "
                "in the PUBLISHING process (export FASTDDS_DEFAULT_PROFILES_FILE=<share>/config/fastdds_large_data.xml "
                "for the LiDAR driver), see docs/NODE.md 'Large clouds'")

# Problem kinds recorded by the node in its EventLog -> (level, what the message says).
PROBLEMS: Mapping[str, tuple[int, str]] = {
    "undecodable_input": (WARN, "undecodable input cloud"),
    "empty_input": (WARN, "empty input cloud (no finite points)"),
    "too_many_points": (WARN, "input cloud above max_points, decimated"),
    "voxel_overflow": (WARN, "voxel overflow (points dropped by max_voxels)"),
    "backend_error": (ERROR, "backend failed on a frame"),
    "stale_frame_dropped": (WARN, "frames older than max_input_age_s dropped"),
    "stamp_backwards": (WARN, "header stamps went backwards"),
    "frame_id_changed": (WARN, "input frame_id changed"),
    "tf_lookup_failed": (WARN, "TF lookup failed, frame skipped"),
}


@dataclass
class HealthSnapshot:
    """Everything the assessment reads; the node fills it once per report."""

    now: float                                  # seconds, same clock as last_input_time / started
    started: float
    input_topic: str
    expected_rate_hz: float
    received_rate_hz: float
    processed_rate_hz: float
    frames_received: int
    frames_processed: int
    frames_published: int
    dropped_sequence: int                       # missed publication sequence numbers (exact, where available)
    dropped_stamp_gaps: int                     # missing frames by header-stamp gaps vs expected rate
    dropped_stale: int
    last_input_time: float | None
    stale_timeout_s: float
    rate_window_s: float
    events: EventLog
    problem_hold_s: float                       # a problem stays in the report this long after it last happened
    stage_percentiles: Mapping[str, Percentiles]
    input_age: Percentiles | None               # ms, only frames whose stamp is comparable with the node clock
    clock_offset_s: float | None                # last (now - stamp) when NOT comparable, for the hint
    backend_requested: str
    backend_name: str
    device: str
    bundle: str
    num_threads: int
    contract_findings: Sequence[tuple[str, str]] = field(default_factory=tuple)   # (code, message)
    backend_reason: str = ""                    # why this backend runs (Pipeline's backend selection)
    low_rate_fraction: float = 0.8
    use_sim_time: bool = False
    int8: bool = False                          # the bundle's int8 dense part runs (node parameter int8)
    extra_items: Mapping[str, str] = field(default_factory=dict)   # appended as they are (e.g. the input boxes)
    mount_warning: str | None = None            # the mount check's text when the ground is not as trained (a WARN)


def assess(s: HealthSnapshot) -> tuple[int, str, dict[str, str]]:
    """(level, message, key/values) of the node's health."""
    problems: list[tuple[int, str]] = []
    silent_s = (s.now - s.last_input_time) if s.last_input_time is not None else (s.now - s.started)
    stale = silent_s > s.stale_timeout_s
    if stale:
        what = "no input received yet" if s.last_input_time is None else f"no input for {silent_s:.1f} s"
        problems.append((WARN, f"stale input: {what} on {s.input_topic}"))
    # Judge the rate only on a full window of a running stream (not at start-up, not while stale).
    running_long_enough = s.last_input_time is not None and (s.now - s.started) >= s.rate_window_s
    total = s.stage_percentiles.get("total")
    # Fraction of wall time spent inside the callback: near 1 means the node itself is the bottleneck (frames are
    # overwritten in the depth-1 queue while it works), not DDS.
    utilization = s.received_rate_hz * total.p50 / 1e3 if total is not None else 0.0
    if (not stale and running_long_enough and s.expected_rate_hz > 0
            and s.received_rate_hz < s.low_rate_fraction * s.expected_rate_hz):
        if utilization >= BUSY_UTILIZATION:
            problems.append((WARN, f"node cannot keep up: processing takes {total.p50:.0f} ms (p50) per frame, "
                                   f"so it takes {s.received_rate_hz:.1f} of the expected {s.expected_rate_hz:g} Hz "
                                   "and the rest are dropped (not queued): use a faster backend/device, or fewer "
                                   "torch threads on a CPU shared with other processes (num_threads)"))
        else:
            problems.append((WARN, f"input rate {s.received_rate_hz:.1f} Hz below the expected "
                                   f"{s.expected_rate_hz:g} Hz: {FASTDDS_HINT}"))
    for kind in s.events.recent(s.now, s.problem_hold_s):
        level, text = PROBLEMS.get(kind, (WARN, kind))
        detail = s.events.last_detail.get(kind)
        problems.append((level, f"{text}: {detail}" if detail else text))
    if s.backend_requested not in ("", "auto") and s.backend_name and s.backend_requested != s.backend_name:
        problems.append((WARN, f"backend fallback: '{s.backend_requested}' requested, '{s.backend_name}' running"))
    elif " failed: " in s.backend_reason:   # auto picked a backend that could not start and fell through
        problems.append((WARN, f"backend fallback: '{s.backend_name}' running ({s.backend_reason})"))
    for code, message in s.contract_findings:
        problems.append((WARN, f"input contract ({code}): {message}"))
    if s.mount_warning:
        problems.append((WARN, s.mount_warning))
    if s.clock_offset_s is not None:
        hint = ("is /clock being published (ros2 bag play --clock)?" if s.use_sim_time
                else "replaying a bag? use `ros2 bag play --clock` and use_sim_time:=true")
        problems.append((WARN, f"input stamps are {s.clock_offset_s:.3g} s away from the node clock "
                               f"(input age not comparable): {hint}"))

    level = max((lvl for lvl, _ in problems), default=OK)
    if problems:
        message = "; ".join(text for _, text in problems)
    else:
        message = (f"OK: {s.received_rate_hz:.1f} Hz in, {s.processed_rate_hz:.1f} Hz processed"
                   + (f", total p50 {total.p50:.1f} ms" if total else ""))

    items: dict[str, str] = {
        "input_topic": s.input_topic,
        "expected_rate_hz": f"{s.expected_rate_hz:g}",
        "received_rate_hz": f"{s.received_rate_hz:.2f}",
        "processed_rate_hz": f"{s.processed_rate_hz:.2f}",
        "utilization": f"{utilization:.2f}",
        "frames_received": str(s.frames_received),
        "frames_processed": str(s.frames_processed),
        "frames_published": str(s.frames_published),
        "dropped_frames": str(max(s.dropped_sequence, s.dropped_stamp_gaps) + s.dropped_stale),
        "dropped_sequence_gaps": str(s.dropped_sequence),
        "dropped_stamp_gaps": str(s.dropped_stamp_gaps),
        "dropped_stale": str(s.dropped_stale),
        "seconds_since_last_input": f"{silent_s:.2f}",
        "stale_input": str(stale).lower(),
    }
    for kind in PROBLEMS:
        items[f"{kind}_count"] = str(s.events.count(kind))
    items.update(percentile_items(s.stage_percentiles))
    if s.input_age is not None:
        items.update({"input_age_ms_p50": f"{s.input_age.p50:.3f}", "input_age_ms_p95": f"{s.input_age.p95:.3f}",
                      "input_age_ms_p99": f"{s.input_age.p99:.3f}"})
    items.update({
        "backend": s.backend_name,
        "backend_requested": s.backend_requested,
        "backend_reason": s.backend_reason,
        "device": s.device,
        "num_threads": str(s.num_threads),
        "int8": str(s.int8).lower(),
        "bundle": s.bundle,
        "contract": "ok" if not s.contract_findings else "; ".join(c for c, _ in s.contract_findings),
    })
    items.update(s.extra_items)
    return level, message, items


def threshold_items(pipeline) -> dict[str, str]:
    """score_thresholds in force ('Car 0.331, Pedestrian 0.33, ...'), the operating point they are
    (clean_ros.inference.operating_points.thresholds_label) and the ground-contact gate ('0' = off); {} without a
    model."""
    settings = getattr(pipeline, "postprocess_settings", None)
    if settings is None:
        return {}
    from clean_ros.inference.operating_points import thresholds_label

    bundle = getattr(pipeline, "bundle", None)
    thresholds = [float(t) for t in settings.score_thresholds]
    return {"score_thresholds": ", ".join(f"{name} {t:g}" for name, t in zip(pipeline.class_names, thresholds)),
            "operating_point": thresholds_label(bundle.operating_points if bundle is not None else (), thresholds),
            "ground_gate_m": f"{float(getattr(pipeline, 'ground_gate_m', 0.0)):g}"}


def ground_items(pipeline, frames=None, mount=None) -> tuple[dict[str, str], str | None]:
    """The mount check (clean_ros.inference.ground_plane) as /diagnostics keys and its WARN text (None while there is
    nothing to warn of). `ground`: "off" while the Pipeline measures no ground (ground_check false, no model),
    "measuring ..." until a scan shows enough ground, then MountCheck.describe(). `sensor_mount`: the mount in use,
    "(auto)" when measured (auto_sensor_mount), else the sensor_height setting (`mount`) or "off". frames: the last
    cloud's TF transforms (model_frame), judged in that model frame; None: the Pipeline's own mount."""
    if getattr(pipeline, "auto_mount", False):
        used = pipeline.sensor_mount
        items = {"sensor_mount": "measuring (auto)" if used is None else f"{used.describe()} (auto)"}
    else:
        items = {"sensor_mount": mount.describe() if mount is not None else "off"}
    tracker = getattr(pipeline, "ground", None)
    if tracker is None:
        return {**items, "ground": "off"}, None
    check = pipeline.mount_check(frames)
    if check is None:
        return {**items, "ground": f"measuring ({tracker.scans} scans, none with enough ground yet)"}, None
    text = check.describe()
    return {**items, "ground": text}, None if check.ok else f"mount check: {text}"


def to_diagnostic_array(level: int, message: str, items: Mapping[str, str], stamp, hardware_id: str,
                        name: str = STATUS_NAME):
    """diagnostic_msgs/DiagnosticArray with one status (imported lazily so assess() needs no ROS)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    status = DiagnosticStatus()
    status.level = bytes([int(level)])
    status.name = name
    status.message = message[:2000]
    status.hardware_id = hardware_id
    status.values = [KeyValue(key=k, value=str(v)) for k, v in items.items()]
    out = DiagnosticArray()
    out.header.stamp = stamp
    out.status = [status]
    return out


def parse_diagnostic_values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


class HealthReport:
    """The node's side of the report: its state as a HealthSnapshot, assessed and published (see the module
    docstring). Reads the frame accounting, the input boxes, the frame settings, the model's backend, its
    automatic intensity factor and its mount check."""

    def health_snapshot(self) -> HealthSnapshot:
        a = self.accounting
        received, processed = a.rates()
        boxes = self.boxes
        input_boxes = {
            "crop_box": "off" if boxes.crop is None else " ".join(f"{v:g}" for v in boxes.crop),
            "exclusion_box": "off" if boxes.exclusion is None else " ".join(f"{v:g}" for v in boxes.exclusion),
            "points_outside_crop_total": str(a.points_outside_crop_total),
            "points_excluded_total": str(a.points_excluded_total),
        }
        target, model, _, mount = self.frame_settings
        input_boxes.update({"target_frame": target or "(cloud frame)", "model_frame": model or "(cloud frame)",
                            "tf": self.tf.name if self.tf is not None else "off"})
        pipeline = self.pipeline
        ground, mount_warning = ground_items(pipeline, self.cloud_frames, mount)
        input_boxes.update(ground)
        # the factor the last scan's intensity was multiplied by (auto_intensity; "off" also without a model)
        input_boxes["intensity_factor"] = (f"{pipeline.intensity_factor:.3g}"
                                           if getattr(pipeline, "auto_intensity", None) is not None else "off")
        input_boxes.update(threshold_items(pipeline))
        return HealthSnapshot(
            now=time.monotonic(), started=a.started, input_topic=self.input_topic,
            expected_rate_hz=a.expected_rate_hz, received_rate_hz=received, processed_rate_hz=processed,
            frames_received=a.frames_received, frames_processed=a.frames_processed,
            frames_published=a.frames_published, dropped_sequence=a.sequence_gaps.dropped,
            dropped_stamp_gaps=a.stamp_gaps.dropped, dropped_stale=a.dropped_stale,
            last_input_time=a.last_input_time, stale_timeout_s=a.stale_timeout_s,
            rate_window_s=RATE_WINDOW_S, events=a.events, problem_hold_s=PROBLEM_HOLD_S,
            stage_percentiles=a.stage_stats.summary(), input_age=a.age_stats.percentiles("input_age"),
            clock_offset_s=a.clock_offset_s, backend_requested=self.backend_requested,
            backend_name=str(getattr(self.pipeline, "backend_name", "none (no model loaded)")),
            device=self.device, bundle=str(self.bundle_path), num_threads=self.num_threads,
            contract_findings=tuple(self.contract_findings), use_sim_time=self.use_sim_time,
            backend_reason=self.backend_reason, int8=self.int8, extra_items=input_boxes,
            mount_warning=mount_warning)

    def _publish_diagnostics(self) -> None:
        try:
            level, message, items = assess(self.health_snapshot())
            self.diagnostics_pub.publish(to_diagnostic_array(level, message, items, self.get_clock().now().to_msg(),
                                                             self.hardware_id))
        except Exception as error:  # noqa: BLE001 - diagnostics must never stop detection
            self._log("diagnostics").error(f"diagnostics failed: {error!r}", throttle_duration_sec=LOG_THROTTLE_S)
