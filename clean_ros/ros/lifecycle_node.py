"""The detector as a managed (lifecycle) node: the same work and parameters as clean_ros.ros.detector_node, with
its start-up spread over the ROS 2 lifecycle transitions.

    python -m clean_ros.detector_lifecycle_node --ros-args --params-file config/detector.yaml
    ros2 launch clean_ros detector.launch.py lifecycle:=true                (console script detector_lifecycle_node)
    ros2 lifecycle set /clean_ros_detector configure      # then: activate, deactivate, cleanup, shutdown

- constructed (unconfigured): the static parameters are declared and checked (a bad one: FATAL, exit status 2);
- configure: load and verify the bundle (backend selection, TensorRT engine where used), declare the
  post-processing parameters, warm up; create the (lifecycle) publishers and the diagnostics timer. A bundle that
  cannot be used fails the transition with the reason logged; the node stays unconfigured;
- activate: publishers on, subscribe to the input; deactivate: unsubscribe (no processing), publishers off;
- cleanup: publishers, timer and model freed (back to unconfigured; configure loads the bundle again);
- shutdown (from any state): everything released.
Runtime parameter changes (``ros2 param set``) are validated exactly as in the plain node, in every state; the
post-processing ones exist once the node has been configured.
"""
from __future__ import annotations

import sys
from typing import Sequence

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from clean_ros.defaults import NODE_NAME
from clean_ros.ros.detector_node import DetectorCore, spin_node
from clean_ros.ros.node_parameters import StartupError


class LifecycleDetectorNode(DetectorCore, LifecycleNode):
    def __init__(self, pipeline_factory=None, **node_kwargs):
        LifecycleNode.__init__(self, NODE_NAME, **node_kwargs)
        self._setup(pipeline_factory)
        self._publishers_created = False
        self.get_logger().info(f"unconfigured: `ros2 lifecycle set {self.get_fully_qualified_name()} configure` "
                               "loads the model, `activate` starts detection")

    # ------------------------------------------------------------------------------------------ transitions
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._load_model()
        except StartupError as error:
            self.get_logger().error(f"configure failed: {error}")
            self._free_model()
            return TransitionCallbackReturn.FAILURE
        self._create_publishers(self.create_lifecycle_publisher)
        self._publishers_created = True
        self._start_diagnostics()
        self.get_logger().info(f"configured: model loaded (backend '{self.pipeline.backend_name}'); inactive")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # the lifecycle publishers
        self._subscribe()
        self._log_ready()
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        self.get_logger().info(f"inactive: unsubscribed from {self.input_topic}")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up: model freed; unconfigured")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info(f"shut down from {state.label}")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().error(f"error in {state.label}: released everything; unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Subscription, timer, publishers and model: whatever exists (safe from any state)."""
        self._unsubscribe()
        self._stop_diagnostics()
        if self._publishers_created:
            for publisher in (self.detections_pub, self.markers_pub, self.timing_pub, self.diagnostics_pub):
                self.destroy_lifecycle_publisher(publisher)
            self._publishers_created = False
        self._free_model()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m clean_ros.detector_lifecycle_node` and the `detector_lifecycle_node` console script."""
    return spin_node(LifecycleDetectorNode, argv)


if __name__ == "__main__":
    sys.exit(main())
