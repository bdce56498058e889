"""`--help` for the node executables (`ros2 run clean_ros detector_node --help`, `python -m clean_ros.detector_node -h`).

A node takes its settings as ROS parameters (`--ros-args --params-file FILE -p name:=value`), not as options, so
without this a `--help` would start the node and spin. `node_help_requested` looks only at the arguments before
`--ros-args` (and after the `--` that may close them); `node_help` prints how to pass parameters and where each one
is documented. Standard library only: asking for help loads no model and no rclpy.
"""
from __future__ import annotations

from typing import Sequence

from clean_ros import defaults
from clean_ros.package_share import package_path

HELP_FLAGS = ("-h", "--help")


def user_arguments(argv: Sequence[str]) -> list[str]:
    """argv[1:] without the ROS arguments (`--ros-args ... [--]`, repeatable)."""
    kept, in_ros = [], False
    for arg in list(argv)[1:]:
        if arg == "--ros-args":
            in_ros = True
        elif in_ros and arg == "--":
            in_ros = False
        elif not in_ros:
            kept.append(arg)
    return kept


def node_help_requested(argv: Sequence[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in user_arguments(argv))


def node_help(executable: str, summary: str) -> str:
    """The text `<executable> --help` prints."""
    params = package_path("config/detector.yaml")
    return f"""usage: ros2 run clean_ros {executable} [--ros-args [--params-file FILE] [-p NAME:=VALUE ...] [-r __node:=NAME]
                                     [--log-level LEVEL]]
       (same as: python -m clean_ros.{executable} ...)

{summary}

Settings are ROS parameters, not options:
  --params-file FILE   a parameters YAML; {params} documents every parameter
  -p NAME:=VALUE       one parameter, e.g. -p input_topic:=/lidar/points -p bundle_path:=/path/to/bundle
  -r __node:=NAME      run under another node name (the params file is keyed by the name, default {defaults.NODE_NAME})
While it runs: `ros2 param list /{defaults.NODE_NAME}`, `ros2 param describe /{defaults.NODE_NAME} <name>`.
Topics: {defaults.INPUT_TOPIC} (sensor_msgs/PointCloud2) in; {defaults.OUTPUT_TOPIC} (vision_msgs/Detection3DArray)
and {defaults.OUTPUT_TOPIC}/markers (visualization_msgs/MarkerArray) out. docs/NODE.md has the full reference.
Usually started by: ros2 launch clean_ros detector.launch.py [rviz:=true] (--show-args lists its arguments)."""


__all__ = ["HELP_FLAGS", "user_arguments", "node_help_requested", "node_help"]
