"""Command-line tools without ROS: offline inference on files (infer) and TensorRT engine building (build_engine).
`python -m clean_ros.infer` / `python -m clean_ros.build_engine` forward here."""
