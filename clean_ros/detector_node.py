"""The detector node's public entry point: `python -m clean_ros.detector_node` and the `detector_node` console
script (setup.py) run clean_ros.ros.detector_node.main; the node lives in clean_ros/ros/detector_node.py.

Only a forward, so the documented command keeps working; import from clean_ros.ros.detector_node.
"""
import sys

from clean_ros.ros.detector_node import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
