"""Everything that imports rclpy or a ROS message package (test/project/test_layering.py guards that nothing else
does): the detector node (detector_node, lifecycle_node, node_model, node_parameters, node_parameter_changes,
node_diagnostics, frame_accounting, tf_frames, tf_buffer, node_process), message conversion (messages, pointcloud_msg),
rosbag2 I/O (bag) and rosbag replay (replay, replay_fast, replay_realtime, replay_frames, replay_eval)."""
