"""The repository is a real ament_python package: colcon builds it and installs launch + config into share/."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    if (ROOT / "models" / "default" / "manifest.json").exists():
        assert (share / "models" / "default" / "manifest.json").is_file()
        assert (share / "models" / "default" / "weights.safetensors").is_file()
    assert (tmp_path / "install" / "clean_ros" / "share" / "ament_index" / "resource_index" / "packages" / "clean_ros").is_file()
    site = list((tmp_path / "install" / "clean_ros" / "lib").glob("python3*/site-packages/clean_ros/__init__.py"))
    assert site, "the clean_ros Python package was not installed"
    # the training wing is not part of the vehicle install
    assert not list((tmp_path / "install" / "clean_ros" / "lib").glob("python3*/site-packages/training"))
    shutil.rmtree(tmp_path / "build", ignore_errors=True)


def test_vision_msgs_interface_package_is_kept_out_of_colcon_workspaces():
    assert (ROOT / "ci" / "vision_msgs" / "COLCON_IGNORE").exists()
