"""Replay's --auto-sensor-mount and --no-ground-check (clean_ros.ros.replay, clean_ros.tools.mount_options).

The bag: one cloud of the scene test_node_ground_check.py builds (KITTI scan 000000 levelled, its ground where the
bundle's training scans show theirs, seen by a sensor 2.5 m up and pitched 0.05 rad).
- fast mode, --auto-sensor-mount: the mount is measured from the scan (close to the true one) and gives the boxes
  --sensor-height / pitch / roll give at that mount; the last line says which mount it settled on;
- the ground check (on by default): the last line says the ground is as trained with the mount declared, and
  suggests sensor_height 2.x without one; --no-ground-check: no line, nothing measured;
- --auto-sensor-mount with --sensor-height: one error line, exit status 2, before the bag is read (both modes);
- realtime mode hands auto_sensor_mount and ground_check to the node.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

from clean_ros.inference.ground_plane import HEIGHT_TOLERANCE_M, TILT_TOLERANCE_RAD  # noqa: E402
from clean_ros.ros import replay as replay_module  # noqa: E402
from shared_helpers import assert_same_detections  # noqa: E402
from test_node_ground_check import TRUTH, seen_from_high  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def high_bag(kitti_sample, default_bundle, tmp_path_factory):
    from clean_ros.ros.bag import POINTS_TYPE, BagWriter
    from clean_ros.ros.pointcloud_msg import make_pointcloud2

    high = seen_from_high(kitti_sample, default_bundle)
    path = tmp_path_factory.mktemp("high") / "bag"
    with BagWriter(path) as writer:
        writer.add_topic("/points", POINTS_TYPE, best_effort=True)
        writer.write("/points", 1_000_000_000, make_pointcloud2(high, ("x", "y", "z", "intensity"), (1.0, "lidar")))
    return path


@pytest.fixture
def built(monkeypatch):
    """The Pipelines fast replay builds."""
    from clean_ros.inference.pipeline import Pipeline

    pipelines = []
    from_bundle = Pipeline.from_bundle.__func__

    def recording(cls, *args, **kwargs):
        pipelines.append(from_bundle(cls, *args, **kwargs))
        return pipelines[-1]

    monkeypatch.setattr(Pipeline, "from_bundle", classmethod(recording))
    return pipelines


def _fast(bag, bundle, *extra) -> int:
    return replay_module.main([str(bag), "--bundle", str(bundle), "--backend", "torch", "--num-threads", "1",
                               "--warmup", "0", "--no-auto-intensity", *extra])


def _mount_lines(out: str) -> list[str]:
    """The lines about the mount (after the report, before the notes on files written)."""
    return [line for line in out.splitlines() if line.startswith(("sensor mount", "ground check"))]


def _recorded(path) -> tuple:
    from vision_msgs.msg import Detection3DArray

    from clean_ros.ros.bag import BagReader
    from clean_ros.ros.messages import from_detection3d_array

    with BagReader(path) as reader:
        (_, msg), = list(reader.messages("/detections", Detection3DArray))
    boxes, scores, names = from_detection3d_array(msg)
    return boxes, scores, np.asarray(names)


def test_fast_auto_sensor_mount_gives_the_boxes_of_the_mount_it_measured(high_bag, default_bundle, tmp_path, built,
                                                                         capsys):
    assert _fast(high_bag, default_bundle, "--auto-sensor-mount", "--record", str(tmp_path / "auto")) == 0
    [pipeline] = built
    mount = pipeline.sensor_mount
    assert pipeline.auto_mount and mount is not None
    assert abs(mount.height - TRUTH.height) <= HEIGHT_TOLERANCE_M
    assert abs(mount.pitch - TRUTH.pitch) <= TILT_TOLERANCE_RAD and abs(mount.roll) <= TILT_TOLERANCE_RAD
    assert _mount_lines(capsys.readouterr().out) == [f"sensor mount measured from 1 scans: {mount.describe()}"]

    declared = ("--sensor-height", repr(mount.height), "--sensor-pitch", repr(mount.pitch),
                "--sensor-roll", repr(mount.roll))
    assert _fast(high_bag, default_bundle, *declared, "--record", str(tmp_path / "declared")) == 0
    [line] = _mount_lines(capsys.readouterr().out)
    assert line.startswith("ground check: ") and line.endswith(": as trained")   # the declared mount: ok
    thresholds = dict(zip(pipeline.class_names, pipeline.postprocess_settings.score_thresholds))
    want = _recorded(tmp_path / "declared")
    assert len(want[0]) > 0
    assert_same_detections(_recorded(tmp_path / "auto"), want, thresholds)


def test_fast_ground_check_suggests_the_mount_and_is_off_with_the_flag(high_bag, default_bundle, built, capsys):
    assert _fast(high_bag, default_bundle) == 0
    out = capsys.readouterr().out
    [line] = _mount_lines(out)
    assert out.strip().splitlines()[-1] == line                 # the last line
    assert line.startswith("ground check: ground 2.") and "set sensor_height 2." in line
    assert built[-1].sensor_mount is None                       # it says so, it changes nothing
    assert _fast(high_bag, default_bundle, "--no-ground-check") == 0
    assert not _mount_lines(capsys.readouterr().out) and built[-1].ground is None


@pytest.mark.parametrize("mode", ["fast", "realtime"])
def test_auto_sensor_mount_with_sensor_height_is_one_error_line(high_bag, default_bundle, built, capsys, mode):
    assert replay_module.main([str(high_bag), "--bundle", str(default_bundle), "--mode", mode,
                               "--auto-sensor-mount", "--sensor-height", "2"]) == replay_module.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --auto-sensor-mount and --sensor-height say where the sensor is twice: give one"]
    assert not built                                            # refused before the model was loaded


@pytest.mark.parametrize("flags, auto, check", [((), False, True), (("--auto-sensor-mount",), True, True),
                                                (("--no-ground-check",), False, False)])
def test_realtime_replay_passes_the_ground_parameters_to_the_node(high_bag, default_bundle, monkeypatch, flags, auto,
                                                                  check):
    given = {}

    def fake_run_realtime(reader, bundle, points_topic, *, node_parameters, **kwargs):
        given.update(node_parameters)
        raise replay_module.ReplayError("stop here")

    monkeypatch.setattr(replay_module, "run_realtime", fake_run_realtime)
    assert replay_module.main([str(high_bag), "--bundle", str(default_bundle), "--mode", "realtime", *flags]) == 2
    assert given["auto_sensor_mount"] is auto and given["ground_check"] is check
    assert "sensor_height" not in given


def test_realtime_last_line_is_the_nodes_report():
    line = replay_module.node_ground_line
    assert line({"ground": "off", "sensor_mount": "off"}, False) is None
    assert line({"ground": "ground 1.73 m below ...: as trained"}, False) == \
        "ground check (node): ground 1.73 m below ...: as trained"
    assert line({"ground": "g", "sensor_mount": "sensor 2.5 m above the ground, pitch 0.05 rad, roll 0 rad (auto)"},
                True) == "sensor mount (node): sensor 2.5 m above the ground, pitch 0.05 rad, roll 0 rad (auto)"
    assert line({}, True) is None
