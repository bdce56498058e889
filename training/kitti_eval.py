"""KITTI evaluation for the offline wing (training loops, the compression report, training/evaluate.py).

The implementation lives in clean_ros/kitti_eval.py because rosbag replay, a runtime tool, needs the same evaluator
and the runtime wing never imports training/. One implementation, two import paths.
"""
from clean_ros.kitti_eval import *  # noqa: F401,F403
from clean_ros.kitti_eval import __all__  # noqa: F401
