"""Detections -> ROS messages (vision_msgs/Detection3DArray, visualization_msgs/MarkerArray, per-frame stage
latency) and back (Detection3DArray -> boxes, for replay ground truth).

Every output message carries the input cloud's header unchanged (stamp and frame_id): boxes are in that frame.

Speed: rosidl Python messages cost ~10-15 us per nested constructor, so each builder makes exactly one message
object per field group, converts numpy columns to Python floats once with ``tolist()`` (numpy float32 scalars are
rejected by the setters) and fills the default sub-messages in place instead of constructing replacements.
"""
from __future__ import annotations

import copy
import math
from typing import Mapping, Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Pose, Vector3
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray
from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

from clean_ros.types import Detections

# RGB per class index (KITTI order: Car, Pedestrian, Cyclist, then further classes), cycled when there are more.
CLASS_COLOURS = (
    (0.10, 0.60, 1.00), (1.00, 0.30, 0.30), (1.00, 0.80, 0.10), (0.30, 0.90, 0.40),
    (0.80, 0.40, 1.00), (1.00, 0.55, 0.10), (0.20, 0.90, 0.90), (0.95, 0.95, 0.95),
)


def _class_name(class_names: Sequence[str], label: int) -> str:
    return class_names[label] if 0 <= label < len(class_names) else f"class_{label}"


def yaw_to_quaternion(yaw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z, w) of the rotation by yaw about +z (x = y = 0)."""
    half = 0.5 * np.asarray(yaw, dtype=np.float64)
    return np.sin(half), np.cos(half)


def quaternion_to_yaw(x, y, z, w) -> np.ndarray:
    """Yaw (rotation about +z) of quaternions, in [-pi, pi). Exact for pure z-rotations; for others it is the
    heading of the rotated x axis projected on the xy plane."""
    x, y, z, w = (np.asarray(v, dtype=np.float64) for v in (x, y, z, w))
    yaw = np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    return np.where(yaw >= math.pi, yaw - 2.0 * math.pi, yaw)  # atan2 gives (-pi, pi]; house range is [-pi, pi)


def to_detection3d_array(detections: Detections, header) -> Detection3DArray:
    """vision_msgs/Detection3DArray of one frame.

    The array and every Detection3D carry ``header`` (the input cloud's). Per detection: one
    ObjectHypothesisWithPose (class_id = class name, score); bbox.center = (x, y, z) with orientation the yaw as a
    z-rotation quaternion; bbox.size = (l, w, h); results[0].pose.pose = the bbox centre pose (the same Pose object:
    treat the built message as read-only); id = the detection's index as a string. Empty detections give an empty
    array that still carries the header, so every processed frame is published.
    """
    out = Detection3DArray()
    out.header = header
    n = len(detections)
    if n == 0:
        return out
    boxes = np.asarray(detections.boxes, dtype=np.float64).reshape(n, 7)
    qz, qw = yaw_to_quaternion(boxes[:, 6])
    rows = zip(boxes[:, :6].tolist(), qz.tolist(), qw.tolist(),
               np.asarray(detections.scores, dtype=np.float64).tolist(),
               np.asarray(detections.labels).astype(np.int64).tolist())
    names = detections.class_names
    built = []
    for index, ((x, y, z, length, width, height), oz, ow, score, label) in enumerate(rows):
        det = Detection3D()
        det.header = header
        det.id = str(index)
        center = det.bbox.center
        position = center.position
        position.x, position.y, position.z = x, y, z
        orientation = center.orientation
        orientation.z, orientation.w = oz, ow
        size = det.bbox.size
        size.x, size.y, size.z = length, width, height
        result = ObjectHypothesisWithPose()
        result.hypothesis.class_id = _class_name(names, label)
        result.hypothesis.score = score
        result.pose.pose = center
        det.results = [result]
        built.append(det)
    out.detections = built
    return out


def from_detection3d_array(msg: Detection3DArray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Inverse of to_detection3d_array: boxes (N, 7) float32 (x, y, z, l, w, h, yaw in [-pi, pi)), scores (N,)
    float32 and class names. Of several hypotheses the highest-scoring one is taken; a detection without any has
    class '' and score NaN."""
    n = len(msg.detections)
    values = np.empty((n, 11), np.float64)  # x y z l w h qx qy qz qw score
    names: list[str] = []
    for row, det in zip(values, msg.detections):
        c, s = det.bbox.center, det.bbox.size
        best = max(det.results, key=lambda r: r.hypothesis.score, default=None)
        row[:] = (c.position.x, c.position.y, c.position.z, s.x, s.y, s.z,
                  c.orientation.x, c.orientation.y, c.orientation.z, c.orientation.w,
                  best.hypothesis.score if best is not None else math.nan)
        names.append(best.hypothesis.class_id if best is not None else "")
    boxes = np.empty((n, 7), np.float32)
    boxes[:, :6] = values[:, :6]
    boxes[:, 6] = quaternion_to_yaw(values[:, 6], values[:, 7], values[:, 8], values[:, 9])
    return boxes, values[:, 10].astype(np.float32), names


def _duration(seconds: float) -> Duration:
    sec = math.floor(seconds)
    return Duration(sec=int(sec), nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


def _pose(x: float, y: float, z: float, oz: float, ow: float) -> Pose:
    pose = Pose()
    position = pose.position
    position.x, position.y, position.z = x, y, z
    orientation = pose.orientation
    orientation.z, orientation.w = oz, ow
    return pose


def _colour(r: float, g: float, b: float, a: float) -> ColorRGBA:
    colour = ColorRGBA()
    colour.r, colour.g, colour.b, colour.a = r, g, b, a
    return colour


def to_marker_array(detections: Detections, header, lifetime_s: float = 0.2, namespace: str = "clean_ros",
                    alpha: float = 0.45, text_height: float = 0.6) -> MarkerArray:
    """visualization_msgs/MarkerArray for RViz without plugins.

    First a DELETEALL (so boxes of the previous frame disappear even when this frame has fewer), then per detection
    a translucent CUBE (id 2i) coloured by class and a TEXT_VIEW_FACING label "Car 0.87" (id 2i+1) above it. All
    markers carry ``header`` and expire after ``lifetime_s`` (0 = never), so boxes vanish if the node stops.

    A Marker() costs ~75 us (it builds a CompressedImage texture, a MeshFile, ...), so markers are shallow copies of
    one template that share the untouched sub-messages (header, lifetime, texture, mesh, per-class colours); each
    gets its own pose and scale. Treat the result as read-only.
    """
    clear = Marker()
    clear.header = header
    clear.ns = namespace
    clear.action = Marker.DELETEALL
    markers = [clear]
    n = len(detections)
    if n:
        template = Marker()
        template.header, template.ns, template.action = header, namespace, Marker.ADD
        template.lifetime = _duration(lifetime_s)
        box_colours = [_colour(*rgb, alpha) for rgb in CLASS_COLOURS]
        text_colours = [_colour(*rgb, 1.0) for rgb in CLASS_COLOURS]
        text_scale = Vector3()
        text_scale.z = float(text_height)
        boxes = np.asarray(detections.boxes, dtype=np.float64).reshape(n, 7)
        qz, qw = yaw_to_quaternion(boxes[:, 6])
        dims = np.maximum(boxes[:, 3:6], 1e-3).tolist()  # RViz rejects zero scales
        labels = np.asarray(detections.labels).astype(np.int64).tolist()
        scores = np.asarray(detections.scores, dtype=np.float64).tolist()
        for i, ((x, y, z), (length, width, height), oz, ow, score, label) in enumerate(
                zip(boxes[:, :3].tolist(), dims, qz.tolist(), qw.tolist(), scores, labels)):
            colour_index = label % len(CLASS_COLOURS)
            cube = copy.copy(template)
            cube.id, cube.type = 2 * i, Marker.CUBE
            cube.pose = _pose(x, y, z, oz, ow)
            scale = Vector3()
            scale.x, scale.y, scale.z = length, width, height
            cube.scale = scale
            cube.color = box_colours[colour_index]

            text = copy.copy(template)
            text.id, text.type = 2 * i + 1, Marker.TEXT_VIEW_FACING
            text.pose = _pose(x, y, z + 0.5 * height + 0.5 * text_height, 0.0, 1.0)
            text.scale = text_scale
            text.color = text_colours[colour_index]
            text.text = f"{_class_name(detections.class_names, label)} {score:.2f}"
            markers += (cube, text)
    out = MarkerArray()
    out.markers = markers
    return out


STAGE_TIMING_NAME = "clean_ros: stage latency"


def stage_timing_message(stage_ms: Mapping[str, float], header, hardware_id: str = "",
                         extra: Mapping[str, str] | None = None,
                         level: bytes = DiagnosticStatus.OK) -> DiagnosticArray:
    """Per-frame stage latency as a diagnostic_msgs/DiagnosticArray with one DiagnosticStatus.

    Why this type: it is a standard message every ROS install has (no custom interface to build or to install on
    the viewer's side); unlike std_msgs/Float64MultiArray it has a Header, so header = the input cloud's header ties
    each timing record to its frame (and to input age) in a bag; its key/value pairs name the stages explicitly
    ("decode_ms" -> "0.213"), which ``ros2 topic echo``, rqt_runtime_monitor and PlotJuggler's diagnostics parser
    read without a schema, whereas a MultiArrayLayout's dim labels would be a misuse of the layout to carry names.
    The cost (a few formatted floats per frame) is negligible. Publish it on its own topic (e.g. ~/stage_latency),
    not on /diagnostics, which carries the 1 Hz aggregated health and rolling percentiles.

    stage_ms: ordered stage -> milliseconds (e.g. decode, preprocess, inference, postprocess, publish, total); keys
    become "<stage>_ms", values are written with 0.1 us resolution. extra: further key/values (e.g. num_points).
    """
    status = DiagnosticStatus()
    status.level = level
    status.name = STAGE_TIMING_NAME
    status.hardware_id = hardware_id
    values = [KeyValue(key=f"{stage}_ms", value=f"{float(ms):.4f}") for stage, ms in stage_ms.items()]
    if extra:
        values += [KeyValue(key=str(k), value=str(v)) for k, v in extra.items()]
    status.values = values
    if "total" in stage_ms:
        status.message = f"total {float(stage_ms['total']):.2f} ms"
    else:
        status.message = f"sum {sum(float(v) for v in stage_ms.values()):.2f} ms"
    out = DiagnosticArray()
    out.header = header
    out.status = [status]
    return out


def parse_stage_timing(msg: DiagnosticArray) -> dict[str, float]:
    """stage -> milliseconds from a message built by stage_timing_message (keys without the "_ms" suffix;
    other key/values are ignored)."""
    for status in msg.status:
        if status.name == STAGE_TIMING_NAME:
            return {kv.key[:-3]: float(kv.value) for kv in status.values if kv.key.endswith("_ms")}
    raise ValueError(f"no '{STAGE_TIMING_NAME}' status in this DiagnosticArray")
