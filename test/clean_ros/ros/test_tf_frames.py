"""clean_ros.ros.tf_frames: the node's frame settings (target_frame, model_frame, tf_timeout_s, sensor mount)
resolved through a TF buffer into the transforms the Pipeline applies."""
import math
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time  # noqa: E402

from clean_ros.cloud.transforms import Transform  # noqa: E402
from clean_ros.inference.sensor_mount import ModelFrames, SensorMount  # noqa: E402
from clean_ros.ros.tf_buffer import Buffer, TfBackend, TransformException, transform_to_msg  # noqa: E402
from clean_ros.ros.tf_frames import FrameLookupError, FrameResolver, validate_frame_settings  # noqa: E402

S = 1_000_000_000
LIDAR_ON_BASE = Transform.from_euler(0.0, 0.0, math.pi / 2, (1.2, 0.0, 1.9))
VIRTUAL_ON_BASE = Transform.from_euler(0.0, 0.0, 0.0, (0.0, 0.0, 1.73))


def _tf():
    buffer = Buffer()
    buffer.set_transform_static(transform_to_msg(LIDAR_ON_BASE, "base_link", "lidar"))
    buffer.set_transform_static(transform_to_msg(VIRTUAL_ON_BASE, "base_link", "virtual_lidar"))
    buffer.set_transform(transform_to_msg(Transform.identity(), "odom", "base_link", 50 * S))
    buffer.set_transform(transform_to_msg(Transform.from_euler(0, 0, 0, (1.0, 0, 0)), "odom", "base_link", 51 * S))
    return TfBackend("clean_ros", buffer, None, TransformException)


def _stamp(ns):
    return Time(sec=ns // S, nanosec=ns % S)


def test_no_frames_set_means_no_transforms_or_only_the_mount():
    resolver = FrameResolver(None, "", "", 0.05, None)
    assert not resolver.uses_tf and resolver.frames_for("lidar", _stamp(0)) is None
    assert resolver.output_frame("lidar") == "lidar"
    mount = ModelFrames.from_mount(SensorMount(2.0))
    assert FrameResolver(None, "", "", 0.05, lambda: mount).frames_for("lidar", _stamp(0)) is mount


def test_the_mount_is_read_for_every_cloud():
    """The automatic sensor mount (auto_sensor_mount) moves as the ground estimate comes in: each cloud gets the
    Pipeline's mount as it is then, with the boxes still carried on to target_frame."""
    current = [None]
    resolver = FrameResolver(_tf(), "base_link", "", 0.05, lambda: current[0])
    first = resolver.frames_for("lidar", _stamp(50 * S))
    assert first.model_from_input.is_identity()                     # no estimate yet: no mount
    current[0] = ModelFrames.from_mount(SensorMount(2.4, pitch=0.03))
    second = resolver.frames_for("lidar", _stamp(50 * S))
    np.testing.assert_allclose(second.model_from_input.matrix, current[0].model_from_input.matrix)
    np.testing.assert_allclose(second.output_from_model.matrix,
                               LIDAR_ON_BASE.compose(current[0].output_from_model).matrix, atol=1e-12)


def test_target_frame_only_moves_the_boxes():
    resolver = FrameResolver(_tf(), "base_link", "", 0.05, None)
    frames = resolver.frames_for("lidar", _stamp(50 * S))
    assert frames.model_from_input.is_identity()
    np.testing.assert_allclose(frames.output_from_model.matrix, LIDAR_ON_BASE.matrix, atol=1e-12)
    assert resolver.output_frame("lidar") == "base_link"
    # a cloud already in the target frame needs nothing
    assert resolver.frames_for("base_link", _stamp(50 * S)) is None


def test_model_frame_and_a_moving_target_frame_at_the_cloud_stamp():
    resolver = FrameResolver(_tf(), "odom", "virtual_lidar", 0.05, None)
    frames = resolver.frames_for("lidar", _stamp(50 * S + S // 2))
    model_from_lidar = VIRTUAL_ON_BASE.inverse().compose(LIDAR_ON_BASE)
    np.testing.assert_allclose(frames.model_from_input.matrix, model_from_lidar.matrix, atol=1e-12)
    odom_from_base = Transform.from_euler(0, 0, 0, (0.5, 0, 0))        # interpolated at the cloud's stamp
    np.testing.assert_allclose(frames.output_from_model.matrix, odom_from_base.compose(VIRTUAL_ON_BASE).matrix,
                               atol=1e-12)


def test_a_target_frame_keeps_the_sensor_mount():
    mount = ModelFrames.from_mount(SensorMount(2.4, pitch=0.03))
    frames = FrameResolver(_tf(), "base_link", "", 0.05, lambda: mount).frames_for("lidar", _stamp(50 * S))
    np.testing.assert_allclose(frames.model_from_input.matrix, mount.model_from_input.matrix)
    np.testing.assert_allclose(frames.output_from_model.matrix,
                               LIDAR_ON_BASE.compose(mount.output_from_model).matrix, atol=1e-12)


def test_failed_lookups_say_which_transform_and_why_and_respect_the_timeout():
    resolver = FrameResolver(_tf(), "map", "", 0.0, None)
    with pytest.raises(FrameLookupError, match=r"no transform lidar -> map at the cloud's stamp 50\.000000000 "
                                               r"within tf_timeout_s=0 s: .*\"map\" passed to lookupTransform"):
        resolver.frames_for("lidar", _stamp(50 * S))
    resolver = FrameResolver(_tf(), "odom", "", 0.15, None)
    start = time.monotonic()
    with pytest.raises(FrameLookupError, match="extrapolation into the future"):
        resolver.frames_for("lidar", _stamp(60 * S))                   # TF stops at 51 s
    assert 0.14 <= time.monotonic() - start < 1.5


def test_settings_that_contradict_each_other_are_refused():
    mount = SensorMount(2.0)
    assert validate_frame_settings("base_link", "", 0.05, None) is None
    assert "say the same thing twice" in validate_frame_settings("", "virtual", 0.05, mount)
    assert "tf_timeout_s = -1" in validate_frame_settings("", "", -1.0, None)
    assert "no spaces" in validate_frame_settings("base link", "", 0.05, None)
    # auto_sensor_mount: a third way of saying where the sensor is; target_frame goes with it
    assert validate_frame_settings("base_link", "", 0.05, None, auto_mount=True) is None
    for model, given, name in (("", mount, "sensor_height"), ("virtual", None, "model_frame")):
        reason = validate_frame_settings("", model, 0.05, given, auto_mount=True)
        assert reason.startswith(f"auto_sensor_mount and {name} are both set: say where the sensor is once")
        assert "\n" not in reason
