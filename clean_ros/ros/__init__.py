"""Everything that imports rclpy or a ROS message package (test/project/test_layering.py guards that nothing else
does): the detector node (detector_node, node_diagnostics, node_process), message conversion (messages, pointcloud_msg),
rosbag2 I/O (bag) and rosbag replay (replay, replay_fast, replay_realtime, replay_frames, replay_eval)."""
