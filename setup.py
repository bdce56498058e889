"""ament_python build of the clean_ros ROS 2 package (runtime wing only: training/ stays in the source tree)."""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "clean_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.launch.py")),
        # node parameters, the Fast DDS profile and the RViz preset (config/clean_ros.rviz, `rviz:=true`)
        ("share/" + PACKAGE + "/config", glob("config/*.yaml") + glob("config/*.xml") + glob("config/*.rviz")),
        # the embedded default model bundle: the node's default bundle_path
        ("share/" + PACKAGE + "/models/default", [f for f in glob("models/default/*") if os.path.isfile(f)]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="clean_ros developers",
    maintainer_email="dev@clean-ros.invalid",
    description="Compact LiDAR 3D object detection (CLEAN compression) and its ROS 2 detector node.",
    license="Apache-2.0",
    # `ros2 run clean_ros <name>` = `python -m clean_ros.<name>` (same options): setup.cfg puts them in lib/clean_ros
    entry_points={"console_scripts": [
        "detector_node = clean_ros.detector_node:main",
        "detector_lifecycle_node = clean_ros.detector_lifecycle_node:main",
        "infer = clean_ros.infer:main",
        "replay = clean_ros.replay:main",
        "bag = clean_ros.bag:main",
        "build_engine = clean_ros.build_engine:main",
    ]},
)
