"""The house rule: training/ imports clean_ros/, never the reverse (the vehicle install has no training/)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_runtime_wing_never_imports_the_training_wing():
    offenders = {str(path.relative_to(ROOT)): sorted(m for m in _imported_modules(path)
                                                     if m == "training" or m.startswith("training."))
                 for path in sorted((ROOT / "clean_ros").rglob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}


def test_training_kitti_eval_is_the_runtime_evaluator():
    """One KITTI evaluator: training/ keeps no copy or re-export of its own; its CLI uses clean_ros's."""
    import clean_ros.metrics.kitti_eval as runtime
    import training.evaluate as offline

    assert not (ROOT / "training" / "kitti_eval.py").exists()
    for name in ("CLASSES", "evaluate", "format_results", "mean_ap_3d_moderate"):
        assert getattr(offline, name) is getattr(runtime, name), name


# rclpy, the ROS client libraries and tools, and every ROS interface package (std_msgs, sensor_msgs, vision_msgs,
# builtin_interfaces, ...: their names end in _msgs / _srvs / _interfaces by ROS convention). Not ament_index_python:
# clean_ros/package_share.py asks it, when present, where the package is installed and falls back to the source tree.
ROS_MODULES = {"rclpy", "rosbags", "rosidl_runtime_py", "rosidl_parser", "launch", "launch_ros", "message_filters",
               "tf2_ros", "rosbag2_py"}
ROS_SUFFIXES = ("_msgs", "_srvs", "_interfaces")


def _is_ros(module: str) -> bool:
    top = module.split(".")[0]
    return top in ROS_MODULES or top.endswith(ROS_SUFFIXES)


def test_ros_imports_stay_in_the_ros_package():
    """Everything that needs ROS lives in clean_ros/ros/; the rest of the runtime imports without it (imports inside
    functions count too: ast walks the whole module)."""
    outside = [path for path in sorted((ROOT / "clean_ros").rglob("*.py"))
               if (ROOT / "clean_ros" / "ros") not in path.parents]
    offenders = {str(path.relative_to(ROOT)): sorted(m for m in _imported_modules(path) if _is_ros(m))
                 for path in outside}
    assert not {k: v for k, v in offenders.items() if v}
    assert len(outside) > 20  # the walk really saw the runtime wing


def test_the_ros_guard_recognises_ros_imports(tmp_path):
    path = tmp_path / "sample.py"
    path.write_text("import numpy\nimport rclpy.node\n\ndef f():\n    from sensor_msgs.msg import PointCloud2\n"
                    "    from builtin_interfaces.msg import Time\n    from rosbags.rosbag2 import Reader\n")
    assert sorted(m for m in _imported_modules(path) if _is_ros(m)) == [
        "builtin_interfaces.msg", "rclpy.node", "rosbags.rosbag2", "sensor_msgs.msg"]
