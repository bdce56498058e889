"""Installable dependencies: every third-party module that clean_ros/ (or the launch file) imports is installed on a
real ROS 2 machine either by rosdep (a key declared in package.xml) or by the pip step (requirements/ros-cpu.txt,
requirements/ros-cuda.txt; README "On your vehicle").

Imports are found with ast in every module, including imports inside functions (optional backends, plotting), so a
new undeclared import fails `test_every_third_party_import_is_installable` with the file that imports it.
"""
from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIP_FILES = {"cpu": ROOT / "requirements" / "ros-cpu.txt", "cuda": ROOT / "requirements" / "ros-cuda.txt"}

# Python module -> the rosdep key that installs it, where the names differ. Every other ROS module (rclpy, launch,
# *_msgs, *_interfaces, ament_index_python) is the ROS package of the same name.
ROSDEP_KEY_OF_MODULE = {"numpy": "python3-numpy", "yaml": "python3-yaml", "matplotlib": "python3-matplotlib",
                        "tf2_ros": "tf2_ros_py"}
# Every key package.xml may declare, and how it was checked to be a real rosdep key. Looked up in ros/rosdistro's
# release package lists: rviz2, rviz_default_plugins, launch, launch_ros (jazzy/distribution.yaml);
# vision_msgs_rviz_plugins (released with vision_msgs: kilted 4.2.0; jazzy 4.1.1 is packaged as
# ros-jazzy-vision-msgs-rviz-plugins); ament_index_python (kilted); tf2_ros_py is the package holding the tf2_ros
# Python module and tf2_ros its C++ counterpart (both packages of ros2/geometry2). rclpy, rcl_interfaces, builtin_interfaces, lifecycle_msgs, the common_interfaces
# messages and tf2_msgs are ROS 2 core packages (ros_core); python3-* are long-standing rosdep/python.yaml keys that
# ROS core packages depend on themselves. vision_msgs is in both distributions (kilted list above; jazzy: apt).
# A key outside this list fails the test until someone checks it and adds it here.
KNOWN_ROSDEP_KEYS = {
    # ROS packages (Jazzy and Kilted)
    "rclpy", "lifecycle_msgs", "rcl_interfaces", "builtin_interfaces", "ament_index_python",
    "sensor_msgs", "std_msgs", "geometry_msgs", "vision_msgs", "visualization_msgs", "diagnostic_msgs",
    "tf2_ros_py", "tf2_ros", "tf2_msgs", "launch", "launch_ros", "rviz2", "rviz_default_plugins", "vision_msgs_rviz_plugins",
    # rosdep system keys (rosdep/python.yaml)
    "python3-numpy", "python3-yaml", "python3-matplotlib", "python3-pytest",
}
# Python module -> the pip distributions that provide it (any one of them). cumm is spconv's kernel library: every
# spconv build pulls the matching cumm build (spconv -> cumm, spconv-cu126 -> cumm-cu126).
PIP_DISTRIBUTIONS_OF_MODULE = {
    "torch": {"torch"}, "onnxruntime": {"onnxruntime", "onnxruntime-gpu"}, "safetensors": {"safetensors"},
    "rosbags": {"rosbags"}, "spconv": {"spconv", "spconv-cu*"}, "cumm": {"spconv", "spconv-cu*"},
    "tensorrt": {"tensorrt"},
}
CUDA_ONLY = {"tensorrt"}       # the TensorRT backend: imported only when asked for, reports BackendUnavailable otherwise
# what rosdep installs from apt must not come from pip too: a pip numpy 2 would shadow the apt numpy that ROS's own
# extension modules were built against
APT_ONLY_DISTRIBUTIONS = {"numpy", "pyyaml", "matplotlib"}


def third_party_imports(paths) -> dict[str, set[str]]:
    """Top-level module -> files importing it (absolute imports only; the standard library and clean_ros left out)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "clean_ros":
                    found.setdefault(top, set()).add(str(Path(path).relative_to(ROOT) if Path(path).is_relative_to(
                        ROOT) else path))
    return found


def exec_depends() -> set[str]:
    root = ET.parse(ROOT / "package.xml").getroot()
    return {e.text.strip() for e in root.findall("exec_depend")}


def requirement_names(path: Path) -> dict[str, str]:
    """distribution name (lower case, no extras) -> its requirement line, following `-r` includes."""
    names = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r"):
            names.update(requirement_names(path.parent / line[2:].strip()))
        elif not line.startswith("-"):
            name = re.match(r"[A-Za-z0-9_.\-]+", line).group(0).lower().replace("_", "-")
            names[name] = line
    return names


def _provided_by_pip(module: str, distributions: set[str]) -> bool:
    wanted = PIP_DISTRIBUTIONS_OF_MODULE.get(module, set())
    return any(re.fullmatch(pattern.replace("*", r"\d+"), name) for pattern in wanted for name in distributions)


def undeclared(imports: dict[str, set[str]], rosdep_keys: set[str], pip_files: dict[str, Path]) -> list[str]:
    """One line per module that neither rosdep nor the pip step (of every variant that needs it) installs."""
    problems = []
    pip = {variant: set(requirement_names(path)) for variant, path in pip_files.items()}
    for module, files in sorted(imports.items()):
        if ROSDEP_KEY_OF_MODULE.get(module, module) in rosdep_keys:
            continue
        variants = ["cuda"] if module in CUDA_ONLY else sorted(pip)
        missing = [v for v in variants if not _provided_by_pip(module, pip[v])]
        if missing:
            problems.append(f"{module} (imported by {', '.join(sorted(files))}) is neither a package.xml "
                            f"exec_depend nor in the pip step for {', '.join(missing)}")
    return problems


def _runtime_modules():
    return sorted((ROOT / "clean_ros").rglob("*.py")) + sorted((ROOT / "launch").glob("*.py"))


def test_every_third_party_import_is_installable():
    imports = third_party_imports(_runtime_modules())
    assert {"numpy", "torch", "rclpy", "vision_msgs", "spconv", "launch"} <= set(imports)  # the scan sees them
    assert undeclared(imports, exec_depends(), PIP_FILES) == []


def test_a_new_undeclared_import_fails(tmp_path):
    """The check itself: a module importing something nobody installs is reported, declared ones are not."""
    module = tmp_path / "new_feature.py"
    module.write_text("import numpy as np\nimport os\nfrom tf2_ros import Buffer\n\n"
                      "def plot():\n    import scipy.spatial\n    from .local import thing\n")
    imports = third_party_imports([module])
    assert set(imports) == {"numpy", "tf2_ros", "scipy"}
    [problem] = undeclared(imports, exec_depends(), PIP_FILES)
    assert problem.startswith("scipy (imported by ") and "for cpu, cuda" in problem
    # and without tf2_ros_py in package.xml, tf2_ros would be reported too
    assert len(undeclared(imports, exec_depends() - {"tf2_ros_py"}, PIP_FILES)) == 2


def test_package_xml_keys_are_known_rosdep_keys():
    root = ET.parse(ROOT / "package.xml").getroot()
    declared = {e.text.strip() for tag in ("buildtool_depend", "exec_depend", "depend", "test_depend")
                for e in root.findall(tag)}
    assert declared - KNOWN_ROSDEP_KEYS == set(), "check these keys in ros/rosdistro, then add them to the list"
    listed = [e.text.strip() for e in root.findall("exec_depend")]
    assert sorted({k for k in listed if listed.count(k) > 1}) == [], "declared twice"
    # the build type is not a key: rosdep install stops on it (ros2/ros2_documentation#508, ros2cli#428)
    assert "ament_python" not in declared and root.findtext("export/build_type") == "ament_python"
    for key in ("rclpy", "sensor_msgs", "vision_msgs", "visualization_msgs", "diagnostic_msgs", "tf2_ros_py",
                "tf2_msgs", "lifecycle_msgs", "launch", "launch_ros", "rviz2", "python3-numpy", "python3-yaml"):
        assert key in exec_depends(), key


def test_pip_step_pins_the_tested_versions_and_leaves_apt_packages_alone():
    cpu, cuda = (requirement_names(PIP_FILES[v]) for v in ("cpu", "cuda"))
    dev = requirement_names(ROOT / "requirements" / "cpu.txt")
    # the vehicle gets the versions the tests ran with (torch: same release, CPU build from PyTorch's index)
    for name in ("spconv", "onnxruntime", "safetensors", "rosbags"):
        assert cpu[name] == dev[name], name
    assert cpu["torch"] == dev["torch"] + "+cpu"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in PIP_FILES["cpu"].read_text().splitlines()
    assert cuda["torch"] == dev["torch"]
    assert cuda["spconv-cu126"].endswith("==" + dev["spconv"].split("==")[1])
    for names in (cpu, cuda):
        assert APT_ONLY_DISTRIBUTIONS.isdisjoint(names), "rosdep installs these from apt"
