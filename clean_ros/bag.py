"""`python -m clean_ros.bag` forwards to clean_ros.ros.bag.main (KITTI folder -> rosbag2; lives in clean_ros/ros/).

Only a forward, so the documented command keeps working; import from clean_ros.ros.bag.
"""
import sys

from clean_ros.ros.bag import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
