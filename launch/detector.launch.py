"""Start the clean_ros detector node.

    ros2 launch clean_ros detector.launch.py bundle_path:=/path/to/bundle backend:=onnxruntime
    ros2 launch clean_ros detector.launch.py input_topic:=/lidar/points output_topic:=/lidar/detections
    ros2 launch clean_ros detector.launch.py use_sim_time:=true        # with `ros2 bag play <bag> --clock`
    ros2 launch clean_ros detector.launch.py rviz:=true rviz_fixed_frame:=base_link   # + RViz with our preset
    ros2 launch clean_ros detector.launch.py lifecycle:=true        # the managed node: ros2 lifecycle set ... configure

Every argument has a default; `ros2 launch clean_ros detector.launch.py --show-args` lists them.
The node runs the `detector_node` console script (= `python -m clean_ros.detector_node`) with
`--ros-args --params-file <params_file> -p <argument>:=<value> ... --log-level <log_level>`.
The Fast DDS large-data profile is made the default profile of the node's process through
FASTDDS_DEFAULT_PROFILES_FILE (see docs/NODE.md, "Large clouds"); fastdds_profile:='' means DDS defaults (the
variable is then removed, not set to an empty string).
lifecycle:=true starts the managed node instead (console script `detector_lifecycle_node` = `python -m
clean_ros.detector_lifecycle_node`, same parameters; it waits unconfigured for `ros2 lifecycle set`, docs/NODE.md "Lifecycle").
rviz:=true also starts rviz2 with config/clean_ros.rviz, pointed at this launch's topics (clean_ros/ros/rviz_preset.py,
docs/NODE.md "RViz preset").
"""
import os
import sys

from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, LogInfo, OpaqueFunction, SetEnvironmentVariable,
                            UnsetEnvironmentVariable)
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

try:
    from clean_ros.package_share import PACKAGE, package_path
except ImportError:  # launched from a source checkout that is not on the Python path: the package sits beside launch/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from clean_ros.package_share import PACKAGE, package_path
from clean_ros.defaults import BACKEND, BACKENDS, DEVICE, INPUT_TOPIC, NODE_NAME, OUTPUT_TOPIC  # noqa: E402
from clean_ros.ros.rviz_preset import PRESET_FILE, parse_launch_bool, rviz_launch  # noqa: E402

PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
# Launch arguments passed to the node as parameters (after the params file, so they override it).
NODE_PARAMETER_ARGUMENTS = ("input_topic", "output_topic", "bundle_path", "backend", "device")


def _fastdds_profile(context, *args, **kwargs):
    """Set the profile variable for the processes started after it, or remove it when the argument is empty."""
    profile = LaunchConfiguration("fastdds_profile").perform(context).strip()
    if not profile:
        return [UnsetEnvironmentVariable(PROFILE_VARIABLE)]
    return [SetEnvironmentVariable(PROFILE_VARIABLE, profile)]


def _rviz(context, *args, **kwargs):
    """rviz:=true: rviz2 on the preset (or a copy adapted to this launch's topics), else nothing."""
    def value(name):
        return LaunchConfiguration(name).perform(context)

    if not parse_launch_bool("rviz", value("rviz")):
        return []
    plan = rviz_launch(package_path("config/" + PRESET_FILE), value("input_topic"), value("output_topic"),
                       value("rviz_fixed_frame"))
    actions = [LogInfo(msg=plan.note)] if plan.note else []
    if plan.start:
        actions.append(Node(package="rviz2", executable="rviz2", output="screen", arguments=plan.arguments,
                            parameters=[{"use_sim_time": parse_launch_bool("use_sim_time", value("use_sim_time"))}]))
    return actions


def generate_launch_description() -> LaunchDescription:
    share = package_path()  # the installed package share (colcon), else the source tree
    arguments = [
        DeclareLaunchArgument("input_topic", default_value=INPUT_TOPIC, description="sensor_msgs/PointCloud2 input"),
        DeclareLaunchArgument("output_topic", default_value=OUTPUT_TOPIC,
                              description="vision_msgs/Detection3DArray output (markers on <output_topic>/markers)"),
        DeclareLaunchArgument("bundle_path", default_value="",
                              description="model bundle directory; empty = embedded default (models/default)"),
        DeclareLaunchArgument("backend", default_value=BACKEND, description=" | ".join(BACKENDS)),
        DeclareLaunchArgument("device", default_value=DEVICE, description="cpu | cuda"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "detector.yaml"),
                              description="node parameters YAML (every parameter documented there)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (ros2 bag play --clock)"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug | info | warn | error"),
        DeclareLaunchArgument("fastdds_profile", default_value=os.path.join(share, "config", "fastdds_large_data.xml"),
                              description="Fast DDS XML profile for large clouds; empty = DDS defaults"),
        DeclareLaunchArgument("lifecycle", default_value="false",
                              description="true: the managed (lifecycle) node, unconfigured until `ros2 lifecycle set`"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="true: also start rviz2 with config/clean_ros.rviz (cloud, markers, boxes)"),
        DeclareLaunchArgument("rviz_fixed_frame", default_value="",
                              description="RViz fixed frame (e.g. base_link); empty = the preset's (velodyne)"),
    ]
    # value_type=str: keep strings strings (an empty bundle_path would otherwise be YAML-evaluated to null).
    overrides = {name: ParameterValue(LaunchConfiguration(name), value_type=str) for name in NODE_PARAMETER_ARGUMENTS}
    overrides["use_sim_time"] = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    node = dict(package=PACKAGE, name=NODE_NAME, output="screen", emulate_tty=True,
                parameters=[LaunchConfiguration("params_file"), overrides],
                arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")])
    lifecycle = LaunchConfiguration("lifecycle")
    plain_node = Node(executable="detector_node", condition=UnlessCondition(lifecycle), **node)
    managed_node = Node(executable="detector_lifecycle_node", condition=IfCondition(lifecycle), **node)
    return LaunchDescription(arguments + [OpaqueFunction(function=_fastdds_profile), plain_node, managed_node,
                                          OpaqueFunction(function=_rviz)])
