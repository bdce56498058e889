"""From points to detections, no ROS: voxelisation (voxelize), the one Pipeline the node, replay and infer share
(pipeline), post-processing (postprocess), inference backends (backends/), the model bundle (bundle) and its ONNX
export (onnx_export). The networks themselves are in clean_ros.models."""
