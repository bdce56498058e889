"""Publish -> receive overhead of one 120k-point PointCloud2 (~1.8 MB), in-process and across processes.

    .venv/bin/python bench/bench_transport.py [--messages 30] [--rate 5]

The Fast DDS large-data profile (config/fastdds_large_data.xml) is applied to the publishing process (this one,
through FASTDDS_DEFAULT_PROFILES_FILE; ROS2_FROM_PYPI.md: it must be in effect on the publisher). Messages are
sent one at a time at `rate` Hz (no backlog), best effort, depth 1 on the publisher / 10 on the subscriber.
  in-process:    a subscription on the same node / context; latency = receive callback - just before publish
  cross-process: a subscriber subprocess (DDS defaults) prints CLOCK_MONOTONIC at each callback (same host clock)
Both include serialisation, transport and deserialisation into a Python message. A memcpy of the same bytes is
printed for scale. Discovery is waited for (subscription count), the subprocess stopped with SIGINT.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
import suite  # noqa: E402

BENCH = "node"
PROFILE = ROOT / "config" / "fastdds_large_data.xml"
TOPIC = "/bench_transport/points"

_SUBSCRIBER = r"""
import sys, time
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
rclpy.init()
node = rclpy.create_node("bench_transport_sub")
qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
node.create_subscription(PointCloud2, sys.argv[1],
                         lambda m: print("RECV", m.header.stamp.sec, time.monotonic(), flush=True), qos)
print("READY", flush=True)
try:
    while rclpy.ok():
        rclpy.spin_once(node, timeout_sec=0.05)
except BaseException:
    pass
"""


def _message(points: np.ndarray, stamp: int):
    from clean_ros.ros.pointcloud_msg import make_pointcloud2

    return make_pointcloud2(points, ("x", "y", "z", "intensity"), (float(stamp), "velodyne"))


def in_process(points: np.ndarray, args, domain: int) -> list[float]:
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("bench_transport_inproc", context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    received: dict[int, float] = {}
    qos_pub = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
    qos_sub = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
    pub = node.create_publisher(PointCloud2, TOPIC + "_inproc", qos_pub)
    node.create_subscription(PointCloud2, TOPIC + "_inproc",
                             lambda m: received.setdefault(m.header.stamp.sec, time.monotonic()), qos_sub)
    latencies = []
    try:
        deadline = time.monotonic() + 20
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        time.sleep(0.5)
        for i in range(1, args.messages + 1):
            msg = _message(points, i)
            sent = time.monotonic()
            pub.publish(msg)
            until = sent + 1.0 / args.rate
            while i not in received and time.monotonic() < sent + 2.0:
                executor.spin_once(timeout_sec=0.005)
            if i in received:
                latencies.append(1e3 * (received[i] - sent))
            while time.monotonic() < until:
                executor.spin_once(timeout_sec=max(0.0, min(0.01, until - time.monotonic())))
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
    return latencies


def cross_process(points: np.ndarray, args, domain: int) -> tuple[list[float], int]:
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    env = {k: v for k, v in os.environ.items() if k != "FASTDDS_DEFAULT_PROFILES_FILE"}  # receiver: DDS defaults
    env.update(ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    sub = subprocess.Popen([sys.executable, "-c", _SUBSCRIBER, TOPIC], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("bench_transport_pub", context=context)
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
    pub = node.create_publisher(PointCloud2, TOPIC, qos)
    sent: dict[int, float] = {}
    try:
        deadline = time.monotonic() + 60
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            if sub.poll() is not None:
                break
            time.sleep(0.05)
        if pub.get_subscription_count() == 0:
            print("cross-process: the subscriber was not discovered within 60 s")
            return [], 0
        time.sleep(1.0)  # the reader side's match completes a little after ours
        for i in range(1, args.messages + 1):
            msg = _message(points, i)
            due = time.monotonic() + 1.0 / args.rate
            sent[i] = time.monotonic()
            pub.publish(msg)
            time.sleep(max(0.0, due - time.monotonic()))
        time.sleep(1.0)
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
        if sub.poll() is None:
            os.killpg(sub.pid, signal.SIGINT)
        try:
            out, _ = sub.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(sub.pid, signal.SIGKILL)
            out, _ = sub.communicate()
    received = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "RECV":
            received.setdefault(int(parts[1]), float(parts[2]))
    latencies = [1e3 * (received[i] - sent[i]) for i in sorted(received) if i in sent]
    return latencies, len(received)


def main(argv: list[str] | None = None) -> int:
    quick = suite.quick()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=15 if quick else 50)
    ap.add_argument("--rate", type=float, default=5.0)
    args = ap.parse_args(argv)
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)  # before the first participant of this process
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    try:
        import rclpy  # noqa: F401
    except ImportError as exc:
        print(f"skipped: rclpy not importable ({exc})")
        return 0
    points, source = suite.load_frame()
    msg = _message(points, 0)
    raw = np.frombuffer(msg.data, np.uint8)
    dst = np.empty_like(raw)
    memcpy = suite.time_call(lambda: np.copyto(dst, raw), 20, 2)
    domain = random.SystemRandom().randint(1, 200)
    load = suite.load_average()
    print(f"frame {source}: {len(points)} points, {raw.size:,d} bytes; {args.messages} messages at {args.rate:g} Hz; "
          f"domain {domain}; load average {load}")
    print(f"memcpy of the same bytes: p50 {memcpy.p50:.3f} ms")
    inproc = in_process(points, args, domain)
    cross, got = cross_process(points, args, domain)
    print(f"{'path':32s} {'received':>9s} {'p50 ms':>8s} {'p95 ms':>8s} {'p50/memcpy':>11s}")
    for label, values, count in (("in-process (same context)", inproc, len(inproc)),
                                 ("cross-process (profile on pub)", cross, got)):
        if not values:
            print(f"{label:32s} {count:>4d}/{args.messages:<4d} nothing received")
            suite.emit(suite.figure(BENCH, f"publish->receive {label}", None, "ms", note="nothing received"))
            continue
        t = suite.Timing.of(values)
        print(f"{label:32s} {count:>4d}/{args.messages:<4d} {t.p50:8.2f} {t.p95:8.2f} {t.p50 / memcpy.p50:10.1f}x")
        suite.emit(suite.figure(BENCH, f"publish->receive {label}", t.p50, "ms", p95=t.p95,
                                received=f"{count}/{args.messages}", memcpy_ms=memcpy.p50, load=load))
    print(f"load average at the end {suite.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
