"""`python -m clean_ros.replay` forwards to clean_ros.ros.replay.main (rosbag replay lives in clean_ros/ros/).

Only a forward, so the documented command keeps working; import from clean_ros.ros.replay.
"""
import sys

from clean_ros.ros.replay import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
