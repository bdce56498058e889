"""clean_ros.ros.tf_buffer: the TF buffer used where tf2_ros is not installed (interpolation, chains, static vs
dynamic, extrapolation errors, timeouts, bounded history), and its listener on /tf and /tf_static."""
import math
import os
import random
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid() + 7).randint(1, 100)))

pytest.importorskip("rclpy")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs interfaces not built (scripts/setup_env.sh builds ci/tf2_msgs)")

from clean_ros.cloud.transforms import Transform  # noqa: E402
from clean_ros.ros.tf_buffer import (Buffer, ConnectivityException, ExtrapolationException,  # noqa: E402
                                     LookupException, TransformException, transform_from_msg, transform_to_msg)

S = 1_000_000_000  # ns per second

# base_link -> lidar: rotated 90 deg about z, pitched 0.05 rad, lifted 1.8 m, 1 m forward
LIDAR_ON_BASE = Transform.from_euler(0.0, 0.05, math.pi / 2, (1.0, 0.0, 1.8))


def _vehicle_buffer():
    """odom -> base_link moving (x 0 -> 10 m, yaw 0 -> 90 deg over 1 s at t = 10..11 s); static lidar and radar."""
    buffer = Buffer()
    buffer.set_transform_static(transform_to_msg(LIDAR_ON_BASE, "base_link", "lidar"))
    buffer.set_transform_static(transform_to_msg(Transform.from_euler(0, 0, 0, (3.5, 0.0, 0.5)), "base_link",
                                                 "radar"))
    buffer.set_transform(transform_to_msg(Transform.identity(), "odom", "base_link", 10 * S))
    buffer.set_transform(transform_to_msg(Transform.from_euler(0, 0, math.pi / 2, (10.0, 0.0, 0.0)), "odom",
                                          "base_link", 11 * S))
    return buffer


def test_interpolation_lerps_translation_and_slerps_rotation():
    buffer = _vehicle_buffer()
    odom_from_base, stamp = buffer.lookup_core("odom", "base_link", 10 * S + S // 4)
    assert stamp == 10 * S + S // 4
    np.testing.assert_allclose(odom_from_base.translation, [2.5, 0.0, 0.0], atol=1e-12)
    assert odom_from_base.heading == pytest.approx(math.pi / 8, abs=1e-12)   # a quarter of 90 deg
    # exactly on a stored stamp: that value
    at_end, _ = buffer.lookup_core("odom", "base_link", 11 * S)
    np.testing.assert_allclose(at_end.translation, [10.0, 0.0, 0.0], atol=1e-12)


def test_chain_through_a_static_and_a_dynamic_edge_and_the_message_form():
    buffer = _vehicle_buffer()
    msg = buffer.lookup_transform("odom", "lidar", 10 * S + S // 2)
    assert (msg.header.frame_id, msg.child_frame_id) == ("odom", "lidar")
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (10, S // 2)
    odom_from_base = Transform.from_euler(0, 0, math.pi / 4, (5.0, 0.0, 0.0))
    expected = odom_from_base.compose(LIDAR_ON_BASE)
    np.testing.assert_allclose(transform_from_msg(msg).matrix, expected.matrix, atol=1e-9)
    # a point 10 m in front of the lidar, in odom
    point = transform_from_msg(msg).rotation @ [10.0, 0.0, 0.0] + transform_from_msg(msg).translation
    np.testing.assert_allclose(point, expected.rotation @ [10.0, 0.0, 0.0] + expected.translation, atol=1e-9)


def test_chain_between_siblings_goes_through_their_common_ancestor():
    buffer = _vehicle_buffer()
    radar_from_lidar, _ = buffer.lookup_core("radar", "lidar", 0)
    base_from_radar = Transform.from_euler(0, 0, 0, (3.5, 0.0, 0.5))
    np.testing.assert_allclose(radar_from_lidar.matrix, base_from_radar.inverse().compose(LIDAR_ON_BASE).matrix,
                               atol=1e-12)
    # and the reverse direction is its inverse
    lidar_from_radar, _ = buffer.lookup_core("lidar", "radar", 0)
    np.testing.assert_allclose(lidar_from_radar.matrix, np.linalg.inv(radar_from_lidar.matrix), atol=1e-12)
    identity, _ = buffer.lookup_core("lidar", "lidar", 5 * S)
    assert identity.is_identity()


def test_static_edges_hold_at_every_time_dynamic_ones_only_inside_their_history():
    buffer = _vehicle_buffer()
    for stamp in (0, 1, 10**6 * S):
        base_from_lidar, _ = buffer.lookup_core("base_link", "lidar", stamp)
        np.testing.assert_allclose(base_from_lidar.matrix, LIDAR_ON_BASE.matrix, atol=1e-12)
    with pytest.raises(ExtrapolationException, match="into the future.*latest data is at time 11.000000"):
        buffer.lookup_core("odom", "lidar", 12 * S)
    with pytest.raises(ExtrapolationException, match="into the past.*earliest data is at time 10.000000"):
        buffer.lookup_core("odom", "lidar", 9 * S)


def test_time_zero_is_the_latest_time_every_edge_of_the_chain_has():
    buffer = _vehicle_buffer()
    buffer.set_transform(transform_to_msg(Transform.identity(), "map", "odom", 10 * S + S // 2))
    buffer.set_transform(transform_to_msg(Transform.from_euler(0, 0, 0, (0.0, 4.0, 0.0)), "map", "odom", 9 * S))
    map_from_base, stamp = buffer.lookup_core("map", "base_link", 0)
    assert stamp == 10 * S + S // 2          # odom->base_link reaches 11 s, map->odom only 10.5 s
    np.testing.assert_allclose(map_from_base.translation, [5.0, 0.0, 0.0], atol=1e-12)


def test_unknown_and_disconnected_frames():
    buffer = _vehicle_buffer()
    buffer.set_transform_static(transform_to_msg(Transform.identity(), "world", "island"))
    with pytest.raises(LookupException, match='"camera" passed to lookupTransform argument source_frame'):
        buffer.lookup_core("odom", "camera", 0)
    with pytest.raises(ConnectivityException, match="not part of the same tree"):
        buffer.lookup_core("island", "lidar", 0)
    assert not buffer.can_transform("odom", "camera", 0)
    ok, why = buffer.can_transform("odom", "camera", 0, return_debug_tuple=True)
    assert not ok and "camera" in why
    assert buffer.can_transform("odom", "lidar", 10 * S)
    assert issubclass(ExtrapolationException, TransformException)


def test_bad_transforms_are_not_stored():
    buffer = Buffer()
    msg = transform_to_msg(Transform.identity(), "a", "b")
    msg.transform.rotation.w = 0.0
    assert not buffer.set_transform(msg)
    msg = transform_to_msg(Transform.identity(), "a", "a")
    assert not buffer.set_transform(msg)
    msg = transform_to_msg(Transform.identity(), "a", "b")
    msg.transform.translation.x = float("nan")
    assert not buffer.set_transform(msg)
    with pytest.raises(LookupException):
        buffer.lookup_core("a", "b", 0)


def test_history_is_bounded_by_cache_time_and_old_times_fail():
    buffer = Buffer(cache_time=1.0)
    for i in range(300):  # 3 s at 100 Hz
        buffer.set_transform(transform_to_msg(Transform.from_euler(0, 0, 0, (0.01 * i, 0, 0)), "odom", "base",
                                              i * S // 100))
    edge = buffer._edges["base"]
    assert len(edge.stamps) == 101 and edge.stamps[0] == 199 * S // 100
    with pytest.raises(ExtrapolationException, match="into the past"):
        buffer.lookup_core("odom", "base", S)
    t, _ = buffer.lookup_core("odom", "base", 2 * S + S // 200)   # between 2.00 and 2.01 s
    assert t.translation[0] == pytest.approx(2.005)
    # out-of-order arrival is placed by stamp
    buffer.set_transform(transform_to_msg(Transform.from_euler(0, 0, 0, (100.0, 0, 0)), "odom", "base",
                                          2 * S + S // 200))
    t, _ = buffer.lookup_core("odom", "base", 2 * S + S // 200)
    assert t.translation[0] == pytest.approx(100.0)


def test_timeout_waits_for_data_that_arrives_and_fails_after_it_otherwise():
    buffer = _vehicle_buffer()

    def publish_later():
        time.sleep(0.15)
        buffer.set_transform(transform_to_msg(Transform.from_euler(0, 0, 0, (20.0, 0, 0)), "odom", "base_link",
                                              12 * S))

    thread = threading.Thread(target=publish_later)
    start = time.monotonic()
    thread.start()
    msg = buffer.lookup_transform("odom", "base_link", 12 * S, timeout=3.0)
    waited = time.monotonic() - start
    thread.join()
    assert msg.transform.translation.x == pytest.approx(20.0)
    assert 0.1 <= waited < 2.0
    # nothing arrives: fails once the timeout has passed
    start = time.monotonic()
    with pytest.raises(ExtrapolationException, match="into the future"):
        buffer.lookup_transform("odom", "base_link", 13 * S, timeout=0.2)
    assert 0.19 <= time.monotonic() - start < 1.5
    # too old: no later message can help, so it fails at once even with a long timeout
    start = time.monotonic()
    with pytest.raises(ExtrapolationException, match="into the past"):
        buffer.lookup_transform("odom", "base_link", 5 * S, timeout=5.0)
    assert time.monotonic() - start < 0.5


@pytest.mark.ros
def test_listener_receives_latched_static_and_streamed_dynamic_transforms():
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from tf2_msgs.msg import TFMessage

    from clean_ros.ros.tf_buffer import TransformListener, tf_qos, tf_static_qos

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        talker = rclpy.create_node("tf_talker", context=context)
        static_pub = talker.create_publisher(TFMessage, "/tf_static", tf_static_qos())
        dynamic_pub = talker.create_publisher(TFMessage, "/tf", tf_qos())
        # our tf2_msgs build (ci/tf2_msgs) has the type hash a real Jazzy install shows for /tf (`ros2 topic info -v`),
        # so its /tf and /tf_static interoperate with real TF publishers and listeners
        assert str(talker.get_publishers_info_by_topic("/tf")[0].topic_type_hash) == (
            "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087")
        # published BEFORE the listener exists: transient local delivers it to the late joiner
        static_pub.publish(TFMessage(transforms=[transform_to_msg(LIDAR_ON_BASE, "base_link", "lidar")]))
        listener_node = rclpy.create_node("tf_listening", context=context)
        buffer = Buffer()
        listener = TransformListener(buffer, listener_node, spin_thread=True)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(talker)
        deadline = time.monotonic() + 10.0
        while not buffer.can_transform("base_link", "lidar", 0) and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert buffer.can_transform("base_link", "lidar", 0), "static transform not received"
        while dynamic_pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        for i in range(3):
            dynamic_pub.publish(TFMessage(transforms=[transform_to_msg(
                Transform.from_euler(0, 0, 0, (float(i), 0, 0)), "odom", "base_link", 100 * S + i * S // 10)]))
        # the listener spins in its own thread: a blocking lookup here receives the stream
        msg = buffer.lookup_transform("odom", "lidar", 100 * S + S // 20, timeout=5.0)
        expected = Transform.from_euler(0, 0, 0, (0.5, 0, 0)).compose(LIDAR_ON_BASE)
        np.testing.assert_allclose(transform_from_msg(msg).matrix, expected.matrix, atol=1e-9)
        spin_thread = listener._thread
        assert spin_thread.is_alive()
        listener.unregister()
        # joined, not left running: a daemon thread inside rclpy at interpreter exit aborts the process
        assert not spin_thread.is_alive() and listener._thread is None
        executor.shutdown()
        talker.destroy_node()
        listener_node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


@pytest.mark.ros
def test_unregister_after_the_context_is_shut_down_joins_the_thread_without_raising():
    """What SIGINT does to the node: the context goes first, then the node closes its TF listener."""
    import rclpy

    from clean_ros.ros.tf_buffer import TransformListener

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("tf_listening_late", context=context)
    listener = TransformListener(Buffer(), node, spin_thread=True)
    spin_thread = listener._thread
    rclpy.try_shutdown(context=context)
    listener.unregister()
    assert not spin_thread.is_alive()
