"""The RViz preset (config/clean_ros.rviz) and how `ros2 launch clean_ros detector.launch.py rviz:=true` starts rviz2.

The preset names the node's default topics (clean_ros/defaults.py). `rviz_launch` decides what rviz2 opens:
- the preset itself when the launch uses those topics and the vision_msgs RViz plugin is installed;
- otherwise an adapted copy (topics pointed at the launch's input_topic / output_topic, the Detection3DArray display
  dropped when the plugin is missing, so RViz shows no error for it), written atomically to a fresh temp folder.
The fixed frame goes on rviz2's command line (`-f <frame>`); empty = the preset's own (`velodyne`, the frame of the
bags that `python -m clean_ros.bag from-kitti` writes).

The launch file imports this module: standard library only at import time (PyYAML only when a copy is written).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clean_ros.atomic import atomic_write_text
from clean_ros.package_share import installed_share

PRESET_FILE = "clean_ros.rviz"              # in config/ of the source tree and of the installed share
RVIZ_PACKAGE = "rviz2"
PLUGIN_PACKAGE = "vision_msgs_rviz_plugins"
CLOUD_DISPLAY = "rviz_default_plugins/PointCloud2"
MARKERS_DISPLAY = "rviz_default_plugins/MarkerArray"
DETECTIONS_DISPLAY = PLUGIN_PACKAGE + "/Detection3DArray"


class RvizPresetError(ValueError):
    """The preset file is missing or not an RViz config (one line: file and what is wrong)."""


def markers_topic(output_topic: str) -> str:
    """The MarkerArray topic the node publishes beside its Detection3DArray: <output_topic>/markers."""
    return output_topic.rstrip("/") + "/markers"


def ros_package_installed(package: str) -> bool:
    """True when the ament index knows `package` (a ROS install with it sourced)."""
    return installed_share(package) is not None


def load_preset(path: Path) -> dict:
    """The preset parsed as YAML, checked to hold a `Visualization Manager` with a list of displays."""
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise RvizPresetError(f"{path}: cannot read the RViz preset ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise RvizPresetError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    displays = (config or {}).get("Visualization Manager", {}).get("Displays") if isinstance(config, dict) else None
    if not isinstance(displays, list):
        raise RvizPresetError(f"{path}: not an RViz config (no 'Visualization Manager: Displays:' list)")
    return config


def displays(config: dict, display_class: str) -> list[dict]:
    """The displays of `config` whose Class is `display_class`, in file order."""
    return [d for d in config["Visualization Manager"]["Displays"] if d.get("Class") == display_class]


def topic_of(display: dict) -> str:
    return display["Topic"]["Value"]


def adapted_preset(config: dict, input_topic: str, output_topic: str, with_detections: bool) -> dict:
    """A copy of `config` showing `input_topic`'s cloud and `output_topic`'s markers and detections (the
    Detection3DArray display removed when with_detections is False)."""
    import copy

    config = copy.deepcopy(config)
    topics = {CLOUD_DISPLAY: input_topic, MARKERS_DISPLAY: markers_topic(output_topic),
              DETECTIONS_DISPLAY: output_topic}
    manager = config["Visualization Manager"]
    manager["Displays"] = [d for d in manager["Displays"] if with_detections or d.get("Class") != DETECTIONS_DISPLAY]
    for display in manager["Displays"]:
        if display.get("Class") in topics:
            display.setdefault("Topic", {})["Value"] = topics[display["Class"]]
    return config


@dataclass(frozen=True)
class RvizLaunch:
    """What to start: rviz2 with `arguments` (config_path is the file they open), or nothing (`start` False) with
    `note` saying why. `note` also says what was adapted when a copy of the preset is opened."""

    start: bool
    config_path: Path | None
    arguments: list[str]
    note: str | None = None


def rviz_launch(preset: Path, input_topic: str, output_topic: str, fixed_frame: str = "",
                installed: Callable[[str], bool] = ros_package_installed,
                scratch_dir: Path | None = None) -> RvizLaunch:
    """Decide how rviz2 starts for a launch with these topics (see the module docstring). `installed(package)`
    answers whether a ROS package is installed (the ament index by default; tests pass their own)."""
    if not installed(RVIZ_PACKAGE):
        return RvizLaunch(False, None, [], "rviz:=true but rviz2 is not installed here (sudo apt install "
                                           "ros-$ROS_DISTRO-rviz2); the detector starts without it")
    config = load_preset(preset)
    with_detections = installed(PLUGIN_PACKAGE)
    changes = []
    if not with_detections:
        changes.append(f"Detection3DArray display left out ({PLUGIN_PACKAGE} is not installed: sudo apt install "
                       f"ros-$ROS_DISTRO-vision-msgs-rviz-plugins; the markers still show the boxes)")
    wanted = {CLOUD_DISPLAY: input_topic, MARKERS_DISPLAY: markers_topic(output_topic)}
    if with_detections:
        wanted[DETECTIONS_DISPLAY] = output_topic
    for display_class, topic in wanted.items():
        if any(topic_of(d) != topic for d in displays(config, display_class)):
            changes.append(f"{display_class.split('/')[-1]} on {topic}")
    path = Path(preset)
    if changes:
        folder = Path(scratch_dir) if scratch_dir is not None else Path(tempfile.mkdtemp(prefix="clean_ros_rviz_"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / PRESET_FILE
        import yaml

        atomic_write_text(path, f"# {preset} adapted by the clean_ros launch file: " + "; ".join(changes) + "\n"
                          + yaml.safe_dump(adapted_preset(config, input_topic, output_topic, with_detections),
                                           sort_keys=False))
    arguments = ["-d", str(path)] + (["-f", fixed_frame.strip()] if fixed_frame.strip() else [])
    return RvizLaunch(True, path, arguments, ("RViz preset: " + "; ".join(changes)) if changes else None)


def parse_launch_bool(name: str, text: str) -> bool:
    """A launch argument read as a boolean the way launch's IfCondition reads it (true/false/1/0, any case)."""
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0", ""):
        return False
    raise ValueError(f"launch argument {name}:={text!r}: expected true or false")


__all__ = ["PRESET_FILE", "RVIZ_PACKAGE", "PLUGIN_PACKAGE", "CLOUD_DISPLAY", "MARKERS_DISPLAY", "DETECTIONS_DISPLAY",
           "RvizPresetError", "RvizLaunch", "markers_topic", "ros_package_installed", "load_preset", "displays",
           "topic_of", "adapted_preset", "rviz_launch", "parse_launch_bool"]
