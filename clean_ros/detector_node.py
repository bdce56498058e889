"""The detector node's public entry point: `python -m clean_ros.detector_node` and the `detector_node` console
script (setup.py) run clean_ros.ros.detector_node.main; the node lives in clean_ros/ros/detector_node.py.

A forward, so the documented command keeps working (import from clean_ros.ros.detector_node), plus `--help`
(clean_ros/ros/node_cli.py), which prints how to pass parameters instead of starting the node.
"""
import sys

SUMMARY = ("The clean_ros detector node: a model bundle run on every sensor_msgs/PointCloud2, publishing\n"
           "vision_msgs/Detection3DArray, box markers, per-stage latency and /diagnostics.")


def main(argv=None) -> int:
    from clean_ros.ros.node_cli import node_help, node_help_requested

    argv = list(sys.argv if argv is None else argv)
    if node_help_requested(argv):
        print(node_help("detector_node", SUMMARY))
        return 0
    from clean_ros.ros.detector_node import main as node_main  # rclpy and the model only when the node starts

    return node_main(argv)


__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
