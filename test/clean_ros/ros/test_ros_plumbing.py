"""The ROS 2 plumbing works here: rclpy + Fast DDS + sensor_msgs + our vision_msgs build, in one process."""
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest

# Isolate this run from anything else on the machine before rclpy reads its environment.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))

rclpy = pytest.importorskip("rclpy")
import rclpy.executors  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402
from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose  # noqa: E402

FRAME = Path(__file__).resolve().parents[4] / "shared/data/kitti_sample/training/velodyne/000000.bin"


def _cloud_message(points: np.ndarray, stamp_sec: int, frame_id: str) -> PointCloud2:
    msg = PointCloud2()
    msg.header.stamp.sec = stamp_sec
    msg.header.stamp.nanosec = 123
    msg.header.frame_id = frame_id
    msg.height, msg.width = 1, len(points)
    msg.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                  for i, n in enumerate(("x", "y", "z", "intensity"))]
    msg.is_bigendian = False
    msg.point_step, msg.row_step = 16, 16 * len(points)
    msg.is_dense = True
    msg.data = points.astype(np.float32).tobytes()
    return msg


def _spin_until(executor, predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return predicate()


@pytest.mark.ros
def test_pointcloud_in_detections_out_in_one_process():
    if not FRAME.exists():
        pytest.skip(f"real KITTI frame not found at {FRAME}")
    points = np.fromfile(FRAME, dtype=np.float32).reshape(-1, 4)
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("plumbing_test", context=context)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        sensor_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
        clouds, detections = [], []
        node.create_subscription(PointCloud2, "/test_points", clouds.append, sensor_qos)
        node.create_subscription(Detection3DArray, "/test_detections", detections.append, 10)
        cloud_pub = node.create_publisher(PointCloud2, "/test_points", sensor_qos)
        det_pub = node.create_publisher(Detection3DArray, "/test_detections", 10)

        sent = _cloud_message(points, 42, "velodyne")
        assert _spin_until(executor, lambda: cloud_pub.get_subscription_count() > 0)
        # best-effort: republish until one arrives
        assert _spin_until(executor, lambda: (cloud_pub.publish(sent), bool(clouds))[1])
        got = clouds[0]
        received = np.frombuffer(got.data, dtype=np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(received, points)
        assert got.header.frame_id == "velodyne" and got.header.stamp.sec == 42

        out = Detection3DArray()
        out.header = got.header
        det = Detection3D()
        det.header = got.header
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = "Car", 0.9
        det.results.append(hyp)
        det.bbox.center.position.x, det.bbox.size.x = 10.0, 3.9
        out.detections.append(det)
        assert _spin_until(executor, lambda: det_pub.get_subscription_count() > 0)
        det_pub.publish(out)
        assert _spin_until(executor, lambda: bool(detections))
        back = detections[0]
        assert back.header.stamp.sec == 42 and back.header.frame_id == "velodyne"
        assert back.detections[0].results[0].hypothesis.class_id == "Car"
        assert back.detections[0].bbox.size.x == pytest.approx(3.9)
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
