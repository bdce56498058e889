"""The repository is a real ament_python package: colcon builds it and installs launch + config into share/."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_package_xml_declares_runtime_dependencies():
    import xml.etree.ElementTree as ET

    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("export/build_type") == "ament_python"
    exec_deps = {e.text for e in root.findall("exec_depend")}
    for dep in ("rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "vision_msgs", "visualization_msgs",
                "diagnostic_msgs", "launch", "launch_ros", "python3-numpy"):
        assert dep in exec_deps, dep
    assert "python3-pytest" in {e.text for e in root.findall("test_depend")}


def test_colcon_build_installs_launch_and_config(tmp_path):
    colcon = Path(sys.executable).with_name("colcon")
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment")
    result = subprocess.run(
        [str(colcon), "--log-base", str(tmp_path / "log"), "build", "--paths", str(ROOT),
         "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    share = tmp_path / "install" / "clean_ros" / "share" / "clean_ros"
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "detector.launch.py").is_file()
    assert (share / "config" / "detector.yaml").is_file()
    assert (share / "config" / "fastdds_large_data.xml").is_file()
    assert (share / "config" / "clean_ros.rviz").is_file()              # the RViz preset (rviz:=true)
    if (ROOT / "models" / "default" / "manifest.json").exists():
        assert (share / "models" / "default" / "manifest.json").is_file()
        assert (share / "models" / "default" / "weights.safetensors").is_file()
    assert (tmp_path / "install" / "clean_ros" / "share" / "ament_index" / "resource_index" / "packages" / "clean_ros").is_file()
    site = list((tmp_path / "install" / "clean_ros" / "lib").glob("python3*/site-packages/clean_ros/__init__.py"))
    assert site, "the clean_ros Python package was not installed"
    # the training wing is not part of the vehicle install
    assert not list((tmp_path / "install" / "clean_ros" / "lib").glob("python3*/site-packages/training"))
    # the installed launch file imports clean_ros.package_share from the install and points at the installed share
    env = {**os.environ, "PYTHONPATH": str(site[0].parents[1]), "AMENT_PREFIX_PATH": str(tmp_path / "install" /
                                                                                            "clean_ros")}
    loaded = subprocess.run([sys.executable, "-c", _LOAD_LAUNCH_FILE, str(share / "launch" / "detector.launch.py")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    found = json.loads(loaded.stdout.splitlines()[-1])
    assert Path(found["package_share"]).is_relative_to(tmp_path / "install"), found
    assert found["params_file"] == str(share / "config" / "detector.yaml")
    assert found["fastdds_profile"] == str(share / "config" / "fastdds_large_data.xml")
    # `ros2 run clean_ros <tool>` runs lib/clean_ros/<tool>: every console script is there and answers --help
    from test_entry_points import HELP_MARKERS, expected_scripts

    scripts = tmp_path / "install" / "clean_ros" / "lib" / "clean_ros"
    assert {p.name for p in scripts.iterdir()} == expected_scripts()
    runs = {name: subprocess.Popen([str(scripts / name), "--help"], cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in sorted(expected_scripts())}
    for name, process in runs.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0 and HELP_MARKERS[name] in out, f"installed {name} --help: {err[-2000:]}"
    shutil.rmtree(tmp_path / "build", ignore_errors=True)


# Runs the launch file against stand-in launch / launch_ros modules (the real ones are not on PyPI) and prints
# where clean_ros.package_share came from and the file defaults of the launch arguments.
_LOAD_LAUNCH_FILE = """
import importlib.util, json, sys
from unittest import mock
stand_ins = {name: mock.MagicMock() for name in ("launch", "launch.actions", "launch.conditions", "launch.substitutions",
                                                  "launch_ros", "launch_ros.actions",
                                                  "launch_ros.parameter_descriptions")}
sys.modules.update(stand_ins)
spec = importlib.util.spec_from_file_location("installed_launch", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.generate_launch_description()
defaults = {c.args[0]: c.kwargs.get("default_value") for c in stand_ins["launch.actions"].DeclareLaunchArgument.call_args_list}
print(json.dumps({"package_share": sys.modules["clean_ros.package_share"].__file__,
                  "params_file": defaults["params_file"], "fastdds_profile": defaults["fastdds_profile"]}))
"""


def test_vision_msgs_interface_package_is_kept_out_of_colcon_workspaces():
    assert (ROOT / "ci" / "vision_msgs" / "COLCON_IGNORE").exists()
