"""rosbag2 files for replay: the bag layout, the atomic writer and the reader, recording replayed detections
(record_detections), and the ``python -m clean_ros.bag`` command line. Writing a KITTI-layout dataset as a bag
(``from-kitti``) is clean_ros.ros.kitti_bag.

    python -m clean_ros.bag from-kitti KITTI_ROOT OUT_BAG [--split val] [--rate 10] [--format mcap|db3]
                                       [--distro kilted|humble] [--max-frames N] [--start-time S]
    python -m clean_ros.bag info BAG

Bag layout written by ``from-kitti`` (docs/REPLAY.md has the full description):

  /points        sensor_msgs/msg/PointCloud2     frame ``velodyne``, fields x y z intensity (float32, 16-byte
                                                 points, unorganised), offered QoS BEST_EFFORT / KEEP_LAST 1
  /ground_truth  vision_msgs/msg/Detection3DArray same stamps, boxes in the LiDAR frame (centre, size l w h, yaw as
                                                 a z quaternion); results[0] = KITTI class name, score 1.0;
                                                 Detection3D.id = the KITTI annotation (see KITTI_ID_PREFIX)
  /kitti/calib   std_msgs/msg/String             the frame's KITTI calib file text, verbatim (camera projection:
                                                 lets replay apply the image-height rule of the KITTI protocol)

Serialisation: rclpy messages through ``rclpy.serialization.serialize_message`` (byte-identical to what a ROS
node records); the rosbags typestore only supplies message definitions and type hashes (vision_msgs registered
from its .msg files). rosbag2 version 9 for Kilted/Jazzy, version 8 for Humble. The bag is written under a
temporary name and renamed when complete: an interrupted run never leaves a half-written bag.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from clean_ros import defaults
from clean_ros.package_share import SOURCE_ROOT, installed_share

POINTS_TOPIC = defaults.INPUT_TOPIC
GT_TOPIC = "/ground_truth"
CALIB_TOPIC = "/kitti/calib"
DETECTIONS_TOPIC = defaults.OUTPUT_TOPIC                  # recorded replay detections (record_detections)
LATENCY_TOPIC = defaults.STAGE_LATENCY_TOPIC              # the node's per-frame stage latency, also recorded
POINTS_TYPE = "sensor_msgs/msg/PointCloud2"
GT_TYPE = "vision_msgs/msg/Detection3DArray"
CALIB_TYPE = "std_msgs/msg/String"
KITTI_ID_PREFIX = "kitti"  # Detection3D.id = "kitti;diff=1;trunc=0.0;occ=0;bbox=l,t,r,b;alpha=a"
VISION_MSGS = ("ObjectHypothesis", "ObjectHypothesisWithPose", "BoundingBox3D", "Detection3D", "Detection3DArray")
DISTROS = {"kilted": ("ROS2_KILTED", 9), "jazzy": ("ROS2_JAZZY", 9), "humble": ("ROS2_HUMBLE", 8)}
FORMATS = ("mcap", "db3")


class BagError(ValueError):
    """A bag (or dataset) that cannot be used; the message names the file and what is wrong."""


# ------------------------------------------------------------------------------------------- KITTI annotation in id
@dataclass(frozen=True)
class KittiAnnotation:
    """The KITTI label fields a LiDAR box does not carry, as encoded in Detection3D.id."""

    difficulty: int            # 0 easy, 1 moderate, 2 hard, -1 none (clean_ros.cloud.kitti.difficulty_levels)
    truncation: float
    occlusion: int
    bbox: tuple[float, float, float, float]  # image box left, top, right, bottom (pixels)
    alpha: float


def encode_kitti_id(annotation: KittiAnnotation) -> str:
    """Exact (repr) text of the fields: decoding gives back the same floats."""
    bbox = ",".join(repr(float(v)) for v in annotation.bbox)
    return (f"{KITTI_ID_PREFIX};diff={int(annotation.difficulty)};trunc={float(annotation.truncation)!r};"
            f"occ={int(annotation.occlusion)};bbox={bbox};alpha={float(annotation.alpha)!r}")


def decode_kitti_id(text: str) -> KittiAnnotation | None:
    """The annotation encoded by encode_kitti_id, or None for any other id (e.g. a detector's index)."""
    parts = text.split(";")
    if not parts or parts[0] != KITTI_ID_PREFIX:
        return None
    try:
        fields = dict(part.split("=", 1) for part in parts[1:])
        bbox = tuple(float(v) for v in fields["bbox"].split(","))
        if len(bbox) != 4:
            return None
        return KittiAnnotation(int(fields["diff"]), float(fields["trunc"]), int(fields["occ"]), bbox,
                               float(fields["alpha"]))
    except (KeyError, ValueError):
        return None


# ------------------------------------------------------------------------------------------- typestore / writer
def _vision_msgs_dir() -> Path:
    """The vision_msgs .msg files: the installed package's share (ament index, or our venv build), else ci/."""
    for share in (installed_share("vision_msgs"), Path(sys.prefix) / "share" / "vision_msgs"):
        if share is not None and (share / "msg" / "Detection3DArray.msg").is_file():
            return share / "msg"
    return SOURCE_ROOT / "ci" / "vision_msgs" / "msg"


def make_typestore(distro: str = "kilted"):
    """rosbags typestore of the distro with vision_msgs registered from its .msg text."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    if distro not in DISTROS:
        raise BagError(f"unknown distro {distro!r}; choose one of {', '.join(DISTROS)}")
    store = get_typestore(getattr(Stores, DISTROS[distro][0]))
    msg_dir = _vision_msgs_dir()
    types: dict = {}
    for name in VISION_MSGS:
        path = msg_dir / f"{name}.msg"
        try:
            types.update(get_types_from_msg(path.read_text(), f"vision_msgs/msg/{name}"))
        except OSError as exc:
            raise BagError(f"{path}: cannot read the vision_msgs definition: {exc.strerror}") from None
    store.register(types)
    return store


def _sensor_qos():
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime)

    zero = QosTime(0, 0)
    return [Qos(QosHistory.KEEP_LAST, 1, QosReliability.BEST_EFFORT, QosDurability.VOLATILE, zero, zero,
                QosLiveliness.AUTOMATIC, zero, False)]


def _reliable_qos(depth: int = 10):
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime)

    zero = QosTime(0, 0)
    return [Qos(QosHistory.KEEP_LAST, depth, QosReliability.RELIABLE, QosDurability.VOLATILE, zero, zero,
                QosLiveliness.AUTOMATIC, zero, False)]


class BagWriter:
    """Atomic rosbag2 writer of rclpy messages: ``with BagWriter(out, fmt, distro) as w: w.add(...); w.write(...)``.

    The bag is built in a hidden sibling directory and renamed onto ``out`` only when the block ends without an
    exception; on error the partial bag is removed."""

    def __init__(self, out: str | os.PathLike, fmt: str = "mcap", distro: str = "kilted"):
        if fmt not in FORMATS:
            raise BagError(f"unknown bag format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.out = Path(out)
        if self.out.exists():
            raise BagError(f"{self.out}: exists already; choose a new path (bags are never overwritten)")
        if not self.out.parent.is_dir():
            raise BagError(f"{self.out.parent}: directory does not exist")
        self.fmt, self.distro = fmt, distro
        self.store = make_typestore(distro)
        self._tmp_parent = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.MCAP if fmt == "mcap" else StoragePlugin.SQLITE3
        # The storage file is named after the bag directory: build it under the final name inside the temp parent.
        self._writer = Writer(self._tmp_parent / self.out.name, version=DISTROS[distro][1], storage_plugin=plugin)
        self._connections: dict[str, object] = {}

    def __enter__(self) -> "BagWriter":
        self._writer.open()
        return self

    def add_topic(self, topic: str, msgtype: str, best_effort: bool = False) -> None:
        qos = _sensor_qos() if best_effort else _reliable_qos()
        self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self.store,
                                                               offered_qos_profiles=qos)

    def write(self, topic: str, time_ns: int, msg) -> None:
        from rclpy.serialization import serialize_message

        self.write_raw(topic, time_ns, serialize_message(msg))

    def write_raw(self, topic: str, time_ns: int, data: bytes) -> None:
        """Already serialised CDR bytes (tests use it to write damaged messages)."""
        self._writer.write(self._connections[topic], int(time_ns), data)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._writer.close()
            if exc_type is None:
                os.replace(self._tmp_parent / self.out.name, self.out)
        finally:
            shutil.rmtree(self._tmp_parent, ignore_errors=True)


# ------------------------------------------------------------------------------------------- recorded detections
def stamp_from_ns(time_ns: int):
    """builtin_interfaces/Time of a time in nanoseconds (the inverse of stamp_ns)."""
    from builtin_interfaces.msg import Time

    return Time(sec=time_ns // 1_000_000_000, nanosec=time_ns % 1_000_000_000)


def record_detections(out: str | os.PathLike, results, class_names: tuple[str, ...], fmt: str = "mcap") -> int:
    """Replayed detections (clean_ros.ros.replay_frames.FrameResult) as vision_msgs/Detection3DArray on /detections
    (+ per-frame stage latency), log time = stamp; answered frames only. Returns the number of frames written."""
    from std_msgs.msg import Header

    from clean_ros.ros.messages import stage_timing_message, to_detection3d_array
    from clean_ros.types import Detections

    names = tuple(dict.fromkeys([*class_names, *(n for r in results for n in r.names)]))
    written = 0
    with BagWriter(out, fmt) as bag:
        bag.add_topic(DETECTIONS_TOPIC, GT_TYPE)
        bag.add_topic(LATENCY_TOPIC, "diagnostic_msgs/msg/DiagnosticArray")
        for r in results:
            if not r.answered:
                continue
            header = Header(stamp=stamp_from_ns(r.stamp_ns), frame_id=r.frame_id)
            labels = np.array([names.index(n) for n in r.names], dtype=np.int64)
            bag.write(DETECTIONS_TOPIC, r.stamp_ns, to_detection3d_array(Detections(r.boxes, r.scores, labels, names),
                                                                         header))
            if r.timings_ms:
                bag.write(LATENCY_TOPIC, r.stamp_ns, stage_timing_message(r.timings_ms, header, "clean_ros_replay"))
            written += 1
    return written


# ------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int


class BagReader:
    """A rosbag2 (directory, or its .mcap/.db3 file) opened with every failure turned into a BagError.

    ``messages(topic, cls)`` yields (log time ns, rclpy message) in log-time order, deserialised with
    rclpy.serialization; a message that cannot be decoded as ``cls`` is a BagError naming topic and index."""

    def __init__(self, path: str | os.PathLike):
        from rosbags.rosbag2 import Reader

        path = Path(path)
        if not path.exists():
            raise BagError(f"{path}: no such bag (directory or file)")
        if path.is_file() and (path.parent / "metadata.yaml").is_file():
            path = path.parent  # the storage file of a bag directory: open the bag
        if path.is_dir() and not (path / "metadata.yaml").is_file():
            raise BagError(f"{path}: not a rosbag2 bag directory (no metadata.yaml)")
        self.path = path
        try:
            self._reader = Reader(path)
            self._reader.open()
            conns = self._reader.connections
        except Exception as exc:  # noqa: BLE001 - any failure to open is a bad bag for the user
            raise BagError(f"{path}: cannot open as a rosbag2 bag (missing, corrupt or truncated): "
                           f"{type(exc).__name__}: {exc}") from None
        counts: dict[str, int] = {}
        for c in conns:
            counts[c.topic] = counts.get(c.topic, 0) + int(getattr(c, "msgcount", 0) or 0)
        self.topics = {c.topic: TopicInfo(c.topic, c.msgtype, counts[c.topic]) for c in conns}

    def describe_topics(self) -> str:
        return ", ".join(f"{t.name} ({t.msgtype}, {t.count})" for t in self.topics.values()) or "no topics"

    def require(self, topic: str, msgtype: str) -> TopicInfo:
        info = self.topics.get(topic)
        if info is None:
            raise BagError(f"{self.path}: no topic {topic}; topics in the bag: {self.describe_topics()}")
        if info.msgtype != msgtype:
            raise BagError(f"{self.path}: topic {topic} has type {info.msgtype}, expected {msgtype}: cannot decode it")
        return info

    def messages(self, topic: str, cls) -> Iterator[tuple[int, object]]:
        from rclpy.serialization import deserialize_message

        conns = [c for c in self._reader.connections if c.topic == topic]
        index = -1
        try:
            for index, (_, time_ns, raw) in enumerate(self._reader.messages(connections=conns)):
                try:
                    msg = deserialize_message(bytes(raw), cls)
                except Exception as exc:  # noqa: BLE001
                    raise BagError(f"{self.path}: message {index} on {topic} cannot be decoded as "
                                   f"{cls.__module__.split('.')[0]}/{cls.__name__}: {exc}") from None
                yield time_ns, msg
        except BagError:
            raise
        except Exception as exc:  # noqa: BLE001 - rosbags/mcap/sqlite errors on damaged files
            raise BagError(f"{self.path}: reading {topic} failed after {index + 1} message(s) "
                           f"(corrupt or truncated bag): {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        try:
            self._reader.close()
        except Exception:  # noqa: BLE001 - closing a damaged bag must not hide the first error
            pass

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


# ------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    # imported here, not at the top: kitti_bag writes with this module's BagWriter (it imports this module)
    from clean_ros.ros.kitti_bag import DEFAULT_START_S, write_kitti_bag

    parser = argparse.ArgumentParser(prog="python -m clean_ros.bag", description="rosbag2 tools for replay.")
    sub = parser.add_subparsers(dest="command", required=True)
    kitti = sub.add_parser("from-kitti", help="write a KITTI-layout dataset (real or simulated) as a bag")
    kitti.add_argument("root", type=Path, help="dataset root (training/{velodyne,calib,label_2}, ImageSets/)")
    kitti.add_argument("out", type=Path, help="bag directory to create (must not exist)")
    kitti.add_argument("--split", default="val", help="ImageSets/<split>.txt (all frames when absent); "
                                                      "'test' reads testing/ (no ground truth)")
    kitti.add_argument("--rate", type=float, default=10.0, help="frames per second of the stamps (default 10)")
    kitti.add_argument("--format", choices=FORMATS, default="mcap", help="storage (default mcap)")
    kitti.add_argument("--distro", choices=tuple(DISTROS), default="kilted",
                       help="message definitions / bag version (humble: rosbag2 v8)")
    kitti.add_argument("--max-frames", type=int, default=0, help="only the first N frames (0 = all)")
    kitti.add_argument("--start-time", type=float, default=DEFAULT_START_S, help="stamp of frame 0, seconds")
    info = sub.add_parser("info", help="list the topics of a bag")
    info.add_argument("bag", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            with BagReader(args.bag) as reader:
                for t in reader.topics.values():
                    print(f"{t.name}  {t.msgtype}  {t.count} messages")
            return 0
        summary = write_kitti_bag(args.root, args.out, args.split, args.rate, args.format, args.distro,
                                  args.max_frames, args.start_time)
    except BagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    gt = f", {summary['boxes']} ground-truth boxes" if summary["ground_truth"] else ", no ground truth (no label_2)"
    print(f"wrote {args.out}: {summary['frames']} frames at {summary['rate_hz']:g} Hz{gt} "
          f"({summary['format']}, {summary['distro']}; {summary['note']})")
    return 0


if __name__ == "__main__":
    # Run as `python -m clean_ros.ros.bag`, this file is __main__, a second copy of the module: run the importable
    # clean_ros.ros.bag's main, whose BagError is the one clean_ros.ros.kitti_bag raises.
    from clean_ros.ros.bag import main as module_main

    sys.exit(module_main())
