"""TF without a ROS install: a small transform buffer behind the tf2_ros interface the detector node uses.

On a real Jazzy / Kilted install the node uses tf2_ros.Buffer + tf2_ros.TransformListener. The PyPI wheels this
project also runs on have no tf2_ros (tf2_msgs/TFMessage is built from its interface file, ci/tf2_msgs); there the
node uses this module's `Buffer` and `TransformListener`. `create_tf(node)` picks tf2_ros when it imports, else ours.

What is implemented (the subset of tf2 semantics the node needs):
- `TransformListener(buffer, node, spin_thread=True)` subscribes /tf (volatile, depth 100) and /tf_static
  (transient local, depth 100: late joiners get the latched static transforms), tf2_msgs/TFMessage, and feeds the
  buffer. With spin_thread the subscriptions live on a small node of their own, spun in a background thread, so a
  lookup that waits (timeout) inside the detector's callback still receives /tf.
- `Buffer.set_transform(TransformStamped, authority)` / `set_transform_static(...)`: one edge per child frame
  (child -> parent, as tf2). Dynamic edges keep a time history, bounded by `cache_time` (10 s, tf2's default) and
  MAX_ENTRIES_PER_EDGE; static edges hold one value valid at every time.
- `lookup_transform(target_frame, source_frame, time, timeout)` -> geometry_msgs/TransformStamped that maps
  coordinates in source_frame into target_frame; `can_transform(...)` -> bool. Chains of frames are walked up to
  their common ancestor; each dynamic edge is interpolated between the two stamps around `time` (translation
  linearly, rotation by slerp), all edges of the chain in one vectorised step. time 0 = the latest time every edge
  of the chain has data for. A time outside an edge's history raises ExtrapolationException (no extrapolation), an
  unknown frame LookupException, frames in different trees ConnectivityException; all are TransformException.
- timeout: a lookup of data that may still arrive (unknown frame, a time after the newest stamp) waits up to
  timeout for it; a time older than the history fails at once (waiting cannot help).

Not implemented: authority bookkeeping, frame-graph queries (all_frames_as_yaml), message filters, the async
waiting API (wait_for_transform_async), a parent that changes over time (the history of a child restarts).
"""
from __future__ import annotations

import bisect
import threading
import time as _time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clean_ros.cloud.transforms import Transform, matrix_to_quaternion, quaternion_to_matrix, slerp

DEFAULT_CACHE_TIME_S = 10.0
MAX_ENTRIES_PER_EDGE = 4096   # 100 Hz * 10 s = 1000; a safety bound when stamps are dense or the clock jumps
MAX_CHAIN_DEPTH = 1000        # tf2's limit: a deeper walk is a loop in the graph
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"


class TransformException(Exception):
    """Base of every lookup failure (tf2_ros.TransformException on a real install)."""


class LookupException(TransformException):
    """A frame the buffer has never heard of."""


class ConnectivityException(TransformException):
    """Both frames are known but belong to different trees."""


class ExtrapolationException(TransformException):
    """The requested time is outside the stored history of an edge of the chain."""


# --------------------------------------------------------------------------------------------------- time values
def time_to_ns(value: Any) -> int:
    """rclpy Time / Duration (.nanoseconds), builtin_interfaces Time / Duration (sec, nanosec), int ns, float s,
    None (= 0)."""
    if value is None:
        return 0
    if hasattr(value, "nanoseconds"):
        return int(value.nanoseconds)
    if hasattr(value, "sec") and hasattr(value, "nanosec"):
        return int(value.sec) * 1_000_000_000 + int(value.nanosec)
    if isinstance(value, bool):
        raise TypeError(f"not a time: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(round(value * 1e9))
    raise TypeError(f"not a time: {value!r}")


def _seconds(ns: int) -> str:
    return f"{ns / 1e9:.6f}"


def _frame(name: str) -> str:
    return name[1:] if name.startswith("/") else name


# --------------------------------------------------------------------------------------------------- storage
@dataclass
class _Edge:
    """child -> parent transforms: a sorted time history (dynamic) or a single value (static)."""

    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)   # (7,) tx ty tz qx qy qz qw

    def insert(self, stamp: int, value: np.ndarray, cache_ns: int) -> None:
        if self.static:
            self.stamps, self.values = [stamp], [value]
            return
        if not self.stamps or stamp > self.stamps[-1]:
            self.stamps.append(stamp)
            self.values.append(value)
        else:
            i = bisect.bisect_left(self.stamps, stamp)
            if i < len(self.stamps) and self.stamps[i] == stamp:
                self.values[i] = value
            else:
                self.stamps.insert(i, stamp)
                self.values.insert(i, value)
        cut = bisect.bisect_left(self.stamps, self.stamps[-1] - cache_ns)
        cut = max(cut, len(self.stamps) - MAX_ENTRIES_PER_EDGE)
        if cut > 0:
            del self.stamps[:cut]
            del self.values[:cut]

    @property
    def newest(self) -> int:
        return self.stamps[-1]

    def bracket(self, stamp: int, child: str) -> tuple[np.ndarray, np.ndarray, float]:
        """(value before, value after, fraction) around stamp; ExtrapolationException outside the history."""
        if self.static or (len(self.stamps) == 1 and self.stamps[0] == stamp):
            return self.values[-1], self.values[-1], 0.0
        if stamp > self.stamps[-1]:
            raise ExtrapolationException(
                f"Lookup would require extrapolation into the future. Requested time {_seconds(stamp)} but the "
                f"latest data is at time {_seconds(self.stamps[-1])}, when looking up transform from frame "
                f"[{child}] to frame [{self.parent}]")
        if stamp < self.stamps[0]:
            raise _PastExtrapolation(
                f"Lookup would require extrapolation into the past. Requested time {_seconds(stamp)} but the "
                f"earliest data is at time {_seconds(self.stamps[0])}, when looking up transform from frame "
                f"[{child}] to frame [{self.parent}]")
        i = bisect.bisect_left(self.stamps, stamp)
        if self.stamps[i] == stamp:
            return self.values[i], self.values[i], 0.0
        t0, t1 = self.stamps[i - 1], self.stamps[i]
        return self.values[i - 1], self.values[i], (stamp - t0) / (t1 - t0)


class _PastExtrapolation(ExtrapolationException):
    """Too old: no later message can fill it, so a lookup with a timeout does not wait for it."""


def _value_of(transform) -> np.ndarray:
    t, q = transform.translation, transform.rotation
    value = np.array([t.x, t.y, t.z, q.x, q.y, q.z, q.w], dtype=np.float64)
    if not np.all(np.isfinite(value)):
        raise ValueError("transform with non-finite values")
    norm = np.linalg.norm(value[3:])
    if norm < 1e-9:
        raise ValueError("transform with a zero-length quaternion")
    value[3:] /= norm
    return value


# --------------------------------------------------------------------------------------------------- Buffer
class Buffer:
    """Stores transforms and answers lookups (see the module docstring); thread-safe."""

    def __init__(self, cache_time: Any = None, node: Any = None):  # node: accepted as tf2_ros.Buffer does
        self.cache_ns = time_to_ns(cache_time) if cache_time is not None else int(DEFAULT_CACHE_TIME_S * 1e9)
        if self.cache_ns <= 0:
            raise ValueError(f"cache_time must be > 0, got {cache_time!r}")
        self._edges: dict[str, _Edge] = {}
        self._changed = threading.Condition(threading.RLock())  # lookup_core re-enters it while waiting

    # -------------------------------------------------------------- writing
    def set_transform(self, transform, authority: str = "") -> bool:
        return self._set(transform, static=False)

    def set_transform_static(self, transform, authority: str = "") -> bool:
        return self._set(transform, static=True)

    def _set(self, transform, static: bool) -> bool:
        """Store one geometry_msgs/TransformStamped; False (and nothing stored) when it is unusable."""
        child, parent = _frame(transform.child_frame_id), _frame(transform.header.frame_id)
        if not child or not parent or child == parent:
            return False
        try:
            value = _value_of(transform.transform)
        except ValueError:
            return False
        stamp = time_to_ns(transform.header.stamp)
        with self._changed:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static:
                edge = self._edges[child] = _Edge(parent, static)
            edge.insert(stamp, value, self.cache_ns)
            self._changed.notify_all()
        return True

    def clear(self) -> None:
        with self._changed:
            self._edges.clear()

    # -------------------------------------------------------------- reading
    def _path_to_root(self, frame: str) -> list[str]:
        path = [frame]
        while path[-1] in self._edges:
            path.append(self._edges[path[-1]].parent)
            if len(path) > MAX_CHAIN_DEPTH:
                raise LookupException(f"the frames above '{frame}' form a loop (more than {MAX_CHAIN_DEPTH} "
                                      "parents)")
        return path

    def _known(self, frame: str) -> bool:
        return frame in self._edges or any(e.parent == frame for e in self._edges.values())

    def lookup_core(self, target_frame: str, source_frame: str, time: Any = 0) -> tuple[Transform, int]:
        """T(target <- source) at time (0 = latest common time) and the stamp it is valid at; raises
        TransformException. The numeric form of lookup_transform (no message), without waiting."""
        target, source = _frame(target_frame), _frame(source_frame)
        stamp = time_to_ns(time)
        with self._changed:
            for role, frame in (("target_frame", target), ("source_frame", source)):
                if not frame:
                    raise LookupException(f"Invalid argument passed to lookupTransform argument {role}: the frame "
                                          "id is empty")
                if not self._known(frame):
                    raise LookupException(f'"{frame}" passed to lookupTransform argument {role} does not exist. ')
            if target == source:
                return Transform.identity(), stamp
            up_source, up_target = self._path_to_root(source), self._path_to_root(target)
            on_target = {f: i for i, f in enumerate(up_target)}
            join = next((i for i, f in enumerate(up_source) if f in on_target), None)
            if join is None:
                raise ConnectivityException(
                    f"Could not find a connection between '{target}' and '{source}' because they are not part of "
                    "the same tree. Tf has two or more unconnected trees.")
            source_chain = up_source[:join]                      # children whose edges lead up to the ancestor
            target_chain = up_target[:on_target[up_source[join]]]
            chain = source_chain + target_chain
            edges = [self._edges[c] for c in chain]
            if stamp == 0:
                dynamic = [e.newest for e in edges if not e.static]
                stamp = min(dynamic) if dynamic else 0
            brackets = [e.bracket(stamp, c) for e, c in zip(edges, chain)]
        # every edge of the chain at once: lerp translations, slerp rotations, quaternions -> matrices
        before = np.stack([b[0] for b in brackets])
        after = np.stack([b[1] for b in brackets])
        fraction = np.array([b[2] for b in brackets])
        translations = before[:, :3] + fraction[:, None] * (after[:, :3] - before[:, :3])
        rotations = quaternion_to_matrix(slerp(before[:, 3:], after[:, 3:], fraction))
        parent_from_source = _chain_product(rotations[:len(source_chain)], translations[:len(source_chain)])
        parent_from_target = _chain_product(rotations[len(source_chain):], translations[len(source_chain):])
        return parent_from_target.inverse().compose(parent_from_source), stamp

    def _lookup_waiting(self, target_frame: str, source_frame: str, time: Any, timeout: Any
                        ) -> tuple[Transform, int]:
        deadline = _time.monotonic() + max(time_to_ns(timeout), 0) / 1e9
        with self._changed:  # held while checking, released while waiting: no insertion is missed in between
            while True:
                try:
                    return self.lookup_core(target_frame, source_frame, time)
                except _PastExtrapolation:
                    raise
                except TransformException:
                    remaining = deadline - _time.monotonic()
                    if remaining <= 0:
                        raise
                    self._changed.wait(remaining)

    def lookup_transform(self, target_frame: str, source_frame: str, time: Any, timeout: Any = None):
        """geometry_msgs/TransformStamped: header.frame_id = target_frame, child_frame_id = source_frame; it maps
        coordinates in source_frame into target_frame. Raises TransformException (see the module docstring)."""
        transform, stamp = self._lookup_waiting(target_frame, source_frame, time, timeout)
        return transform_to_msg(transform, target_frame, source_frame, stamp)

    def can_transform(self, target_frame: str, source_frame: str, time: Any, timeout: Any = None,
                      return_debug_tuple: bool = False):
        try:
            self._lookup_waiting(target_frame, source_frame, time, timeout)
            return (True, "") if return_debug_tuple else True
        except TransformException as error:
            return (False, str(error)) if return_debug_tuple else False


def _chain_product(rotations: np.ndarray, translations: np.ndarray) -> Transform:
    """T(top <- bottom) of a chain given bottom-up: edge k maps child k into its parent (k + 1)."""
    out = Transform.identity()
    for rotation, translation in zip(rotations, translations):  # a handful of frames, not points
        out = Transform(rotation, translation).compose(out)
    return out


def transform_from_msg(msg) -> Transform:
    """geometry_msgs/TransformStamped (or Transform) -> clean_ros.cloud.transforms.Transform."""
    tf = getattr(msg, "transform", msg)
    t, q = tf.translation, tf.rotation
    return Transform.from_quaternion((q.x, q.y, q.z, q.w), (t.x, t.y, t.z))


def transform_to_msg(transform: Transform, parent: str, child: str, stamp: Any = 0):
    """clean_ros Transform T(parent <- child) -> geometry_msgs/TransformStamped (what a broadcaster sends)."""
    from geometry_msgs.msg import TransformStamped

    msg = TransformStamped()
    msg.header.frame_id, msg.child_frame_id = parent, child
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time_to_ns(stamp), 1_000_000_000)
    t, q = msg.transform.translation, msg.transform.rotation
    t.x, t.y, t.z = (float(v) for v in transform.translation)
    q.x, q.y, q.z, q.w = (float(v) for v in matrix_to_quaternion(transform.rotation))
    return msg


# --------------------------------------------------------------------------------------------------- listener
def tf_qos():
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def tf_static_qos():
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


class TransformListener:
    """Feeds a Buffer from /tf and /tf_static (tf2_msgs/TFMessage). spin_thread=True: on a node of its own,
    spun in a daemon thread (a blocking lookup in another callback still receives transforms)."""

    def __init__(self, buffer: Buffer, node, *, spin_thread: bool = True, qos=None, static_qos=None):
        from tf2_msgs.msg import TFMessage

        self.buffer = buffer
        self._executor = self._thread = None
        self._own_node = None
        if spin_thread:
            from rclpy.executors import SingleThreadedExecutor
            from rclpy.node import Node

            self._own_node = Node(f"{node.get_name()}_tf_listener", namespace=node.get_namespace(),
                                  context=node.context, start_parameter_services=False)
            target = self._own_node
        else:
            target = node
        self.node = target
        self.tf_sub = target.create_subscription(TFMessage, TF_TOPIC, self._on_tf, qos or tf_qos())
        self.tf_static_sub = target.create_subscription(TFMessage, TF_STATIC_TOPIC, self._on_tf_static,
                                                        static_qos or tf_static_qos())
        if spin_thread:
            self._executor = SingleThreadedExecutor(context=node.context)
            self._executor.add_node(self._own_node)
            self._thread = threading.Thread(target=self._spin, name="tf_listener", daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception:  # noqa: BLE001 - the context was shut down: the thread just ends
            pass

    def _on_tf(self, msg) -> None:
        for transform in msg.transforms:
            self.buffer.set_transform(transform, "default_authority")

    def _on_tf_static(self, msg) -> None:
        for transform in msg.transforms:
            self.buffer.set_transform_static(transform, "default_authority")

    def unregister(self) -> None:
        """Stop the listener: the spin thread is shut down and joined, so no thread of ours is inside rclpy when the
        process exits (a daemon thread still in C++ code at interpreter exit aborts the process: "terminate called
        without an active exception")."""
        if self._executor is not None:
            try:
                self._executor.shutdown(timeout_sec=1.0)
            except Exception:  # noqa: BLE001 - the context may already be shut down (SIGINT): the spin ends anyway
                pass
            self._executor = None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._own_node is not None:
            try:
                self._own_node.destroy_node()
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
            self._own_node = None
        elif self.node is not None:
            self.node.destroy_subscription(self.tf_sub)
            self.node.destroy_subscription(self.tf_static_sub)
        self.node = None


# --------------------------------------------------------------------------------------------------- choice
@dataclass
class TfBackend:
    """What create_tf chose: buffer and listener with the tf2_ros interface, the exception base to catch."""

    name: str               # "tf2_ros" or "clean_ros"
    buffer: Any
    listener: Any
    exception: type[Exception]

    def close(self) -> None:
        unregister = getattr(self.listener, "unregister", None)
        if callable(unregister):
            unregister()


def create_tf(node, cache_time_s: float = DEFAULT_CACHE_TIME_S, prefer: str = "auto") -> TfBackend:
    """tf2_ros.Buffer + TransformListener when tf2_ros imports (a real ROS install) and prefer is 'auto', else
    this module's. prefer='clean_ros' forces ours (tests)."""
    if prefer == "auto":
        try:
            import tf2_ros
            from rclpy.duration import Duration
        except ImportError:
            pass
        else:
            buffer = tf2_ros.Buffer(cache_time=Duration(nanoseconds=int(cache_time_s * 1e9)), node=node)
            listener = tf2_ros.TransformListener(buffer, node, spin_thread=True)
            return TfBackend("tf2_ros", buffer, listener, tf2_ros.TransformException)
    buffer = Buffer(cache_time=float(cache_time_s))
    return TfBackend("clean_ros", buffer, TransformListener(buffer, node, spin_thread=True), TransformException)


__all__ = ["Buffer", "TransformListener", "TransformException", "LookupException", "ConnectivityException",
           "ExtrapolationException", "TfBackend", "create_tf", "time_to_ns", "transform_from_msg",
           "transform_to_msg", "tf_qos", "tf_static_qos", "DEFAULT_CACHE_TIME_S", "MAX_ENTRIES_PER_EDGE"]
