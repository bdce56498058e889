"""Realtime replay: the detector node runs as a subprocess, exactly as the launch file starts it
(clean_ros.ros.node_process: Fast DDS large-data profile, private ROS_DOMAIN_ID, localhost discovery); the bag's clouds
are published best-effort at the recorded rate and the node's Detection3DArray answers and ~/stage_latency records
are collected. A frame the node never answered is a drop and counts as a frame without detections in the AP (what a
vehicle would have had).

No step rests on a fixed delay. The first cloud goes out once (1) the node subscribed to it, (2) its detections,
stage-latency and /diagnostics publishers are matched to our subscriptions (discovery under load can take longer
than any constant) and (3) its first /diagnostics report arrived, i.e. its executor spins: a cloud sent between
its subscribing and its spinning can be replaced by the next one in its depth-1 queue, a start-up drop that the
node cannot count and that says nothing about its speed (seen once in 10 runs at load 4-5 before this check).
After the drain we wait for a /diagnostics report that counts every answer received (frames_published >= answers:
the node's final counts), not for a fixed 1.2 s that a starved node may miss.

The clouds reach the node intact only if this process's DDS participant uses the large-data profile
(clean_ros.ros.node_process sets FASTDDS_DEFAULT_PROFILES_FILE before it creates one). Fast DDS reads that file
once per process, at its first participant: in a process that created one before (a test run that started an
in-process node first), clouds travel on the default transports and some are lost before the node sees them (in 6
such runs, 1 to 5 of 6 clouds, 2.8 on average); they then count as drops. `python -m clean_ros.replay` is a fresh
process; the test suite sets the variable at start (test/clean_ros/ros/conftest.py)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from clean_ros import defaults
from clean_ros.ros.bag import LATENCY_TOPIC, POINTS_TYPE, BagReader, stamp_ns
from clean_ros.ros.replay_frames import FrameResult, ReplayError, cloud_messages

NODE_NAMESPACE = "/replay"
DIAGNOSTICS_WAIT_S = 10.0   # the node reports every diagnostics_period_s (1 s by default)


def run_realtime(reader: BagReader, bundle: Path, points_topic: str, *, backend: str = defaults.BACKEND,
                 device: str = defaults.DEVICE, num_threads: int = defaults.NUM_THREADS, rate_scale: float = 1.0,
                 startup_timeout_s: float = 180.0, drain_s: float = 10.0, domain_id: int | None = None,
                 log_path: Path | None = None, node_parameters: dict | None = None
                 ) -> tuple[list[FrameResult], dict]:
    """Publish the bag's clouds to a node subprocess at the recorded rate (x rate_scale); collect the answers."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    from vision_msgs.msg import Detection3DArray

    from clean_ros.ros.messages import from_detection3d_array, parse_stage_timing
    from clean_ros.ros.node_diagnostics import STATUS_NAME, parse_diagnostic_values
    from clean_ros.ros.node_process import DriverNode, NodeProcess

    reader.require(points_topic, POINTS_TYPE)
    input_topic, output_topic = f"{NODE_NAMESPACE}/points", f"{NODE_NAMESPACE}/detections"
    answers: dict[int, tuple[float, object]] = {}
    latencies: dict[int, dict[str, float]] = {}
    node_health: dict[str, str] = {}

    def on_detections(msg):
        answers.setdefault(stamp_ns(msg.header), (time.monotonic(), msg))

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name == STATUS_NAME:
                node_health.update(parse_diagnostic_values(status))

    def on_latency(msg):
        try:
            latencies[stamp_ns(msg.header)] = parse_stage_timing(msg)
        except ValueError:
            pass

    sent: list[tuple[int, float]] = []
    frame_id = ""
    with NodeProcess({"bundle_path": str(Path(bundle).resolve()), "backend": backend, "device": device,
                      "num_threads": int(num_threads), "input_topic": input_topic, "output_topic": output_topic,
                      "publish_markers": False, **(node_parameters or {})},  # e.g. sensor_height
                     domain_id=domain_id, log_path=log_path) as node_process:
        domain_id = node_process.domain_id
        client = DriverNode("clean_ros_replay", domain_id)
        try:
            qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
            publisher = client.node.create_publisher(PointCloud2, input_topic, qos)
            subscriptions = (
                client.node.create_subscription(Detection3DArray, output_topic, on_detections, 100),
                client.node.create_subscription(DiagnosticArray, LATENCY_TOPIC, on_latency, 100),
                client.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10))

            def node_ready() -> bool:
                # it hears our clouds, we hear all it publishes, and it is spinning: a /diagnostics report (its
                # timer) has arrived. The subscription exists before the node's executor spins; a cloud published
                # in between can be replaced in its depth-1 queue by the next one and never be seen by the node.
                return (publisher.get_subscription_count() > 0
                        and all(subscription.get_publisher_count() > 0 for subscription in subscriptions)
                        and bool(node_health))

            if not node_process.wait_ready(client, node_ready, startup_timeout_s):
                if node_process.process.poll() is None:
                    raise ReplayError(f"the detector node did not connect within {startup_timeout_s:g} s (it "
                                      f"subscribed: {publisher.get_subscription_count() > 0}; its publishers "
                                      f"matched: {[s.get_publisher_count() > 0 for s in subscriptions]}; "
                                      f"/diagnostics received: {bool(node_health)}); node output: "
                                      f"{node_process.failure_summary()}")
                raise ReplayError(f"the detector node did not start (exit status {node_process.process.poll()}; "
                                  f"command: {' '.join(node_process.command)}): {node_process.failure_summary()}")
            first_log = None
            start = time.monotonic()
            for log_ns, msg in cloud_messages(reader, points_topic):
                first_log = log_ns if first_log is None else first_log
                due = start + (log_ns - first_log) * 1e-9 / rate_scale
                client.spin_until(lambda: False, due - time.monotonic())
                publisher.publish(msg)
                sent.append((stamp_ns(msg.header), time.monotonic()))
                frame_id = msg.header.frame_id
            last = sent[-1][0] if sent else None
            client.spin_until(lambda: last is None or (last in answers and last in latencies), drain_s)
            # the node's final counts: a /diagnostics report made after it published every answer we received
            client.spin_until(lambda: int(node_health.get("frames_published", -1)) >= len(answers),
                              DIAGNOSTICS_WAIT_S)
        finally:
            client.close()
    results = []
    for stamp, published_at in sent:
        if stamp in answers:
            received_at, msg = answers[stamp]
            boxes, scores, names = from_detection3d_array(msg)
            timings = dict(latencies.get(stamp, {}))
            timings["replay_round_trip"] = 1e3 * (received_at - published_at)
            results.append(FrameResult(stamp, boxes, scores, names, timings, True, frame_id))
        else:
            results.append(FrameResult(stamp, np.zeros((0, 7), np.float32), np.zeros(0, np.float32), [], {}, False,
                                       frame_id))
    dropped = sum(not r.answered for r in results)
    stats = {"published": len(sent), "answered": len(sent) - dropped, "dropped": dropped,
             "drop_fraction": dropped / len(sent) if sent else 0.0, "domain_id": domain_id,
             "rate_scale": rate_scale, "num_threads": num_threads,
             "node_backend": node_health.get("backend", "unknown (no /diagnostics received)"),
             "node_dropped_frames": node_health.get("dropped_frames"),
             # the node's totals of points removed by its crop / exclusion boxes (its /diagnostics)
             "node_points_removed": {key: int(node_health[key]) for key in
                                     ("points_outside_crop_total", "points_excluded_total") if key in node_health},
             # its mount check and the mount in use (ground_check, auto_sensor_mount), as last reported
             "node_ground": {key: node_health[key] for key in ("ground", "sensor_mount") if key in node_health}}
    return results, stats
