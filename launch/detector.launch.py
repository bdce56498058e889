"""Start the clean_ros detector node.

    ros2 launch clean_ros detector.launch.py bundle_path:=/path/to/bundle backend:=onnxruntime input_topic:=/lidar/points

Every argument has a default; `ros2 launch clean_ros detector.launch.py --show-args` lists them.
The Fast DDS large-data profile is applied to the node's process (see README, "Large clouds across processes").
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "clean_ros"


def _share_dir() -> str:
    try:
        from ament_index_python.packages import get_package_share_directory

        return get_package_share_directory(PACKAGE)
    except Exception:  # not installed (run from the source tree): use the tree itself
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def generate_launch_description() -> LaunchDescription:
    share = _share_dir()
    arguments = [
        DeclareLaunchArgument("input_topic", default_value="/points", description="sensor_msgs/PointCloud2 input"),
        DeclareLaunchArgument("output_topic", default_value="/detections", description="vision_msgs/Detection3DArray output"),
        DeclareLaunchArgument("bundle_path", default_value="", description="model bundle directory; empty = embedded default"),
        DeclareLaunchArgument("backend", default_value="auto", description="auto | torch | onnxruntime | tensorrt"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu | cuda"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "detector.yaml"),
                              description="node parameters YAML"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (ros2 bag play --clock)"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug | info | warn | error"),
        DeclareLaunchArgument("fastdds_profile", default_value=os.path.join(share, "config", "fastdds_large_data.xml"),
                              description="Fast DDS XML profile for large clouds; empty = DDS defaults"),
    ]
    node = Node(
        package=PACKAGE,
        executable="detector_node",
        name="clean_ros_detector",
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "input_topic": LaunchConfiguration("input_topic"),
                "output_topic": LaunchConfiguration("output_topic"),
                "bundle_path": LaunchConfiguration("bundle_path"),
                "backend": LaunchConfiguration("backend"),
                "device": LaunchConfiguration("device"),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            },
        ],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )
    return LaunchDescription(
        arguments
        + [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile")), node]
    )
