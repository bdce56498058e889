"""The RViz preset (config/clean_ros.rviz) and `rviz:=true` in launch/detector.launch.py.

The launch file is loaded against test_launch.py's stand-ins for launch / launch_ros (the real ones are not on PyPI);
the rviz2 action is built by calling the launch file's OpaqueFunction with a launch context, as launch would.
Whether rviz2 and the vision_msgs RViz plugin are installed is answered by a fake ament index (monkeypatched).
"""
from __future__ import annotations

import types
from pathlib import Path

import pytest
import yaml

from clean_ros import defaults
from clean_ros.ros import rviz_preset
from clean_ros.ros.kitti_bag import FRAME_ID
from clean_ros.ros.rviz_preset import (CLOUD_DISPLAY, DETECTIONS_DISPLAY, MARKERS_DISPLAY, RvizPresetError,
                                       adapted_preset, displays, load_preset, rviz_launch, topic_of)
from test_launch import DeclareLaunchArgument, LogInfo, Node, OpaqueFunction, _by_type, description  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "config" / "clean_ros.rviz"
MARKERS_TOPIC = defaults.OUTPUT_TOPIC + "/markers"


def _installed(*packages):
    return lambda name: name in packages


# ------------------------------------------------------------------------------------------------ the preset file
def test_preset_is_yaml_with_the_node_default_topics_and_frame():
    config = yaml.safe_load(PRESET.read_text())
    manager = config["Visualization Manager"]
    [cloud] = displays(config, CLOUD_DISPLAY)
    [markers] = displays(config, MARKERS_DISPLAY)
    [boxes] = displays(config, DETECTIONS_DISPLAY)
    assert topic_of(cloud) == defaults.INPUT_TOPIC == "/points"
    assert topic_of(markers) == MARKERS_TOPIC == "/detections/markers"
    assert topic_of(boxes) == defaults.OUTPUT_TOPIC
    assert all(d["Enabled"] for d in (cloud, markers, boxes))
    # the node's input QoS is best effort by default: a reliable RViz reader would get nothing from such a driver
    assert cloud["Topic"]["Reliability Policy"] == "Best Effort"
    assert cloud["Color Transformer"] == "Intensity" and cloud["Channel Name"] == "intensity"
    # the frame of the bags `python -m clean_ros.bag from-kitti` writes, so replaying one shows at once
    assert manager["Global Options"]["Fixed Frame"] == FRAME_ID == "velodyne"
    assert rviz_preset.markers_topic(defaults.OUTPUT_TOPIC + "/") == MARKERS_TOPIC


def test_markers_topic_matches_the_node():
    """The node builds its markers topic as <output_topic>/markers; the preset must name the same topic."""
    source = (ROOT / "clean_ros" / "ros" / "detector_node.py").read_text()
    assert 'output_topic.rstrip("/") + "/markers"' in source or "markers_topic(" in source


def test_load_preset_errors_are_one_clear_line(tmp_path):
    with pytest.raises(RvizPresetError, match=r"missing\.rviz: cannot read the RViz preset"):
        load_preset(tmp_path / "missing.rviz")
    broken = tmp_path / "broken.rviz"
    broken.write_text("Panels:\n  - Class: a\n Visualization Manager: [\n")
    with pytest.raises(RvizPresetError, match=r"broken\.rviz:\d+: not valid YAML") as error:
        load_preset(broken)
    assert "\n" not in str(error.value)
    other = tmp_path / "other.rviz"
    other.write_text("just: a mapping\n")
    with pytest.raises(RvizPresetError, match="not an RViz config"):
        load_preset(other)


def test_adapted_preset_changes_only_topics_and_the_plugin_display():
    config = load_preset(PRESET)
    adapted = adapted_preset(config, "/lidar/points", "/perception/objects", with_detections=False)
    assert [topic_of(d) for d in displays(adapted, CLOUD_DISPLAY)] == ["/lidar/points"]
    assert [topic_of(d) for d in displays(adapted, MARKERS_DISPLAY)] == ["/perception/objects/markers"]
    assert displays(adapted, DETECTIONS_DISPLAY) == []
    assert displays(config, DETECTIONS_DISPLAY), "the original must not be modified"
    kept = [d for d in config["Visualization Manager"]["Displays"] if d["Class"] != DETECTIONS_DISPLAY]
    assert [d["Class"] for d in adapted["Visualization Manager"]["Displays"]] == [d["Class"] for d in kept]
    for key in ("Global Options", "Views", "Tools"):
        assert adapted["Visualization Manager"][key] == config["Visualization Manager"][key]


# ------------------------------------------------------------------------------------------------ rviz_launch
def test_default_topics_with_plugin_open_the_preset_itself(tmp_path):
    plan = rviz_launch(PRESET, defaults.INPUT_TOPIC, defaults.OUTPUT_TOPIC, "",
                       installed=_installed("rviz2", "vision_msgs_rviz_plugins"), scratch_dir=tmp_path)
    assert plan.start and plan.note is None
    assert plan.arguments == ["-d", str(PRESET)]
    assert list(tmp_path.iterdir()) == [], "nothing is written when the preset fits"
    framed = rviz_launch(PRESET, defaults.INPUT_TOPIC, defaults.OUTPUT_TOPIC, " base_link ",
                         installed=_installed("rviz2", "vision_msgs_rviz_plugins"), scratch_dir=tmp_path)
    assert framed.arguments == ["-d", str(PRESET), "-f", "base_link"]


def test_other_topics_or_no_plugin_open_an_adapted_copy(tmp_path):
    plan = rviz_launch(PRESET, "/lidar/points", "/objects", "", installed=_installed("rviz2"), scratch_dir=tmp_path)
    assert plan.start and plan.config_path == tmp_path / "clean_ros.rviz"
    assert plan.arguments == ["-d", str(tmp_path / "clean_ros.rviz")]
    assert "PointCloud2 on /lidar/points" in plan.note and "MarkerArray on /objects/markers" in plan.note
    assert "vision-msgs-rviz-plugins" in plan.note
    written = load_preset(plan.config_path)
    assert [topic_of(d) for d in displays(written, CLOUD_DISPLAY)] == ["/lidar/points"]
    assert [topic_of(d) for d in displays(written, MARKERS_DISPLAY)] == ["/objects/markers"]
    assert displays(written, DETECTIONS_DISPLAY) == []
    assert [p.name for p in tmp_path.iterdir()] == ["clean_ros.rviz"], "no temporary file left behind"

    with_plugin = rviz_launch(PRESET, "/lidar/points", "/objects", "", installed=_installed("rviz2", rviz_preset.
                                                                                          PLUGIN_PACKAGE),
                              scratch_dir=tmp_path / "second")
    [boxes] = displays(load_preset(with_plugin.config_path), DETECTIONS_DISPLAY)
    assert topic_of(boxes) == "/objects"


def test_no_rviz2_installed_starts_nothing_and_says_why(tmp_path):
    plan = rviz_launch(PRESET, defaults.INPUT_TOPIC, defaults.OUTPUT_TOPIC, "", installed=_installed(),
                       scratch_dir=tmp_path)
    assert not plan.start and plan.arguments == []
    assert "rviz2 is not installed" in plan.note and "ros-$ROS_DISTRO-rviz2" in plan.note


# ------------------------------------------------------------------------------------------------ the launch file
def _launch_arguments(description):
    return {a.name: a for a in _by_type(description, DeclareLaunchArgument)}


def _rviz_function(description):
    [opaque] = [f for f in _by_type(description, OpaqueFunction) if f.kwargs["function"].__name__ == "_rviz"]
    return opaque.kwargs["function"]


def _context(description, **overrides):
    values = {name: a.default_value for name, a in _launch_arguments(description).items()}
    return types.SimpleNamespace(launch_configurations={**values, **overrides})


@pytest.fixture
def fake_ament_index(monkeypatch, tmp_path):
    """rviz2 and the plugin 'installed'; adapted copies go to tmp_path."""
    packages = {"rviz2", rviz_preset.PLUGIN_PACKAGE}
    monkeypatch.setattr(rviz_preset, "installed_share", lambda name: tmp_path if name in packages else None)
    monkeypatch.setattr(rviz_preset.tempfile, "tempdir", str(tmp_path))
    return packages


def test_launch_declares_rviz_arguments_off_by_default(description):
    arguments = _launch_arguments(description)
    assert arguments["rviz"].default_value == "false"
    assert arguments["rviz_fixed_frame"].default_value == ""
    assert arguments["rviz"].kwargs["description"] and arguments["rviz_fixed_frame"].kwargs["description"]
    assert _rviz_function(description)(_context(description)) == []


def test_launch_rviz_true_starts_rviz2_on_the_preset(description, fake_ament_index):
    [node] = _rviz_function(description)(_context(description, rviz="true"))
    assert isinstance(node, Node)
    assert (node.kwargs["package"], node.kwargs["executable"]) == ("rviz2", "rviz2")
    assert node.kwargs["arguments"] == ["-d", str(PRESET)]      # from the source tree: the tree's own preset
    assert node.kwargs["parameters"] == [{"use_sim_time": False}]

    [node] = _rviz_function(description)(_context(description, rviz="True", rviz_fixed_frame="base_link",
                                                  use_sim_time="true"))
    assert node.kwargs["arguments"] == ["-d", str(PRESET), "-f", "base_link"]
    assert node.kwargs["parameters"] == [{"use_sim_time": True}]


def test_launch_rviz_follows_the_launch_topics(description, fake_ament_index, tmp_path):
    fake_ament_index.discard(rviz_preset.PLUGIN_PACKAGE)
    log, node = _rviz_function(description)(_context(description, rviz="1", input_topic="/velodyne_points"))
    assert isinstance(log, LogInfo) and "PointCloud2 on /velodyne_points" in log.kwargs["msg"]
    [flag, path] = node.kwargs["arguments"]
    assert flag == "-d" and Path(path).is_relative_to(tmp_path) and Path(path).name == "clean_ros.rviz"
    written = load_preset(Path(path))
    assert [topic_of(d) for d in displays(written, CLOUD_DISPLAY)] == ["/velodyne_points"]
    assert displays(written, DETECTIONS_DISPLAY) == []


def test_launch_without_rviz2_logs_and_starts_only_the_detector(description, fake_ament_index):
    fake_ament_index.clear()
    [log] = _rviz_function(description)(_context(description, rviz="true"))
    assert isinstance(log, LogInfo) and "rviz2 is not installed" in log.kwargs["msg"]


def test_launch_rviz_rejects_a_non_boolean(description):
    with pytest.raises(ValueError, match=r"rviz:='yes please': expected true or false"):
        _rviz_function(description)(_context(description, rviz="yes please"))
