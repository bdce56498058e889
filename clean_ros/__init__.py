"""clean_ros: compact LiDAR 3D object detection for ROS 2 (runtime wing)."""

__version__ = "0.1.0"
