"""What a replay reads from a bag and what it produces, frame by frame (shared by fast and realtime replay, the
evaluation and the detections recorder).

Matching: detections belong to the ground-truth message with the same header stamp (ns).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clean_ros.ros.bag import CALIB_TOPIC, CALIB_TYPE, GT_TYPE, POINTS_TYPE, BagReader, decode_kitti_id, stamp_ns


class ReplayError(Exception):
    """Input the user has to fix; the message says what."""


@dataclass
class FrameResult:
    stamp_ns: int
    boxes: np.ndarray                 # (N, 7) float32, LiDAR frame
    scores: np.ndarray                # (N,) float32
    names: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)
    answered: bool = True             # realtime: the node published an answer for this frame
    frame_id: str = ""


@dataclass
class GroundTruthFrame:
    boxes: np.ndarray                 # (M, 7) float32, LiDAR frame
    names: list[str]
    annotations: list                 # KittiAnnotation or None per box


def load_side_topics(reader: BagReader, gt_topic: str) -> tuple[dict[int, GroundTruthFrame] | None, dict[int, str],
                                                                 str]:
    """Ground truth by stamp (None when the bag has none), calib text by log time, and a note."""
    from std_msgs.msg import String
    from vision_msgs.msg import Detection3DArray

    from clean_ros.ros.messages import from_detection3d_array

    calibs: dict[int, str] = {}
    if CALIB_TOPIC in reader.topics and reader.topics[CALIB_TOPIC].msgtype == CALIB_TYPE:
        calibs = {t: m.data for t, m in reader.messages(CALIB_TOPIC, String)}
    if gt_topic not in reader.topics:
        return None, calibs, (f"the bag has no ground truth ({gt_topic} absent; topics: {reader.describe_topics()}): "
                              "latency only, no AP")
    reader.require(gt_topic, GT_TYPE)
    gt: dict[int, GroundTruthFrame] = {}
    for _, msg in reader.messages(gt_topic, Detection3DArray):
        boxes, _, names = from_detection3d_array(msg)
        gt[stamp_ns(msg.header)] = GroundTruthFrame(boxes, names, [decode_kitti_id(d.id) for d in msg.detections])
    return gt, calibs, f"{len(gt)} ground-truth frames on {gt_topic}"


def cloud_messages(reader: BagReader, topic: str):
    """(log time ns, PointCloud2) of the topic, in log-time order."""
    from sensor_msgs.msg import PointCloud2

    reader.require(topic, POINTS_TYPE)
    return reader.messages(topic, PointCloud2)
