"""The managed (lifecycle) detector node's public entry point: `python -m clean_ros.detector_lifecycle_node` and the
`detector_lifecycle_node` console script (setup.py; launch argument lifecycle:=true) run
clean_ros.ros.lifecycle_node.main; the node lives in clean_ros/ros/lifecycle_node.py.

A forward, like clean_ros/detector_node.py, plus `--help` (clean_ros/ros/node_cli.py) without loading rclpy or a model.
"""
import sys

SUMMARY = ("The clean_ros detector as a managed (lifecycle) node: the same parameters and topics as detector_node;\n"
           "it starts unconfigured: `ros2 lifecycle set /clean_ros_detector configure` loads the model bundle,\n"
           "`activate` subscribes, `deactivate` stops processing, `cleanup` frees the model, `shutdown` ends it.")


def main(argv=None) -> int:
    from clean_ros.ros.node_cli import node_help, node_help_requested

    argv = list(sys.argv if argv is None else argv)
    if node_help_requested(argv):
        print(node_help("detector_lifecycle_node", SUMMARY))
        return 0
    from clean_ros.ros.lifecycle_node import main as node_main  # rclpy and the model only when the node starts

    return node_main(argv)


__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
