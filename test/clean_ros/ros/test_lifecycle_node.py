"""The managed (lifecycle) detector node, driven over its ROS services (lifecycle_msgs/srv/ChangeState, GetState)
against a real node SUBPROCESS started as the launch file starts it with lifecycle:=true
(`python -m clean_ros.detector_lifecycle_node --ros-args --params-file config/detector.yaml -p ...`)."""
from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
lifecycle_msgs = pytest.importorskip("lifecycle_msgs")
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402

from clean_ros.defaults import NODE_NAME  # noqa: E402
from clean_ros.ros.node_process import NodeProcess, launch_command  # noqa: E402
from test_detector_node import NS, REPO, Harness, _cloud, bundle_path  # noqa: E402,F401 - the node tests' harness

pytestmark = pytest.mark.ros


def _present(harness: Harness) -> bool:
    return NODE_NAME in harness.node.get_node_names()


def _state(harness: Harness) -> int:
    return harness.call(GetState, f"/{NODE_NAME}/get_state", GetState.Request()).current_state.id


def _change(harness: Harness, transition: int) -> bool:
    request = ChangeState.Request()
    request.transition.id = transition
    return harness.call(ChangeState, f"/{NODE_NAME}/change_state", request, timeout_s=120.0).success


def _subscribed(harness: Harness, expected: bool, timeout_s: float = 10.0) -> bool:
    return harness.spin_until(lambda: (harness.cloud_pub.get_subscription_count() > 0) == expected, timeout_s)


def _node(bundle, log_path):
    return NodeProcess({"bundle_path": str(bundle), "input_topic": f"{NS}/points", "output_topic": f"{NS}/detections",
                        "num_threads": 1, "warmup_iterations": 1, "diagnostics_period_s": 0.5},
                       params_file=REPO / "config" / "detector.yaml", log_path=log_path, cwd=REPO,
                       executable="detector_lifecycle_node")


def test_transitions_over_services_load_subscribe_stop_and_free(kitti_sample, bundle_path, tmp_path):
    points = np.fromfile(kitti_sample / "training/velodyne/000000.bin", dtype=np.float32).reshape(-1, 4)
    log_path = tmp_path / "node.log"
    with _node(bundle_path, log_path) as node_process:
        harness = Harness(node_process.domain_id)
        try:
            assert node_process.wait_ready(harness, lambda: _present(harness), 120.0), node_process.log_tail()
            assert _state(harness) == State.PRIMARY_STATE_UNCONFIGURED
            assert not _subscribed(harness, True, 1.0)                     # no model, no subscription yet
            # a post-processing parameter does not exist before configure
            [result] = harness.set_parameters(nms_iou=0.2)
            assert not result.successful

            assert _change(harness, Transition.TRANSITION_CONFIGURE)
            assert _state(harness) == State.PRIMARY_STATE_INACTIVE
            assert "configured: model loaded" in log_path.read_text()
            assert not _subscribed(harness, True, 1.0)                     # inactive: still not subscribed
            [result] = harness.set_parameters(nms_iou=1.5)                 # validated like the plain node
            assert not result.successful and "nms_iou" in result.reason

            assert _change(harness, Transition.TRANSITION_ACTIVATE)
            assert _state(harness) == State.PRIMARY_STATE_ACTIVE
            assert _subscribed(harness, True)
            answer = harness.send_and_wait(_cloud(points, 100))
            assert answer.header.frame_id == "velodyne" and len(answer.detections) > 0

            assert _change(harness, Transition.TRANSITION_DEACTIVATE)
            assert _state(harness) == State.PRIMARY_STATE_INACTIVE
            assert _subscribed(harness, False)                             # deactivate stops processing
            harness.cloud_pub.publish(_cloud(points, 101))
            harness.spin_until(lambda: False, 2.0)
            assert harness.answer(101) is None

            assert _change(harness, Transition.TRANSITION_CLEANUP)
            assert _state(harness) == State.PRIMARY_STATE_UNCONFIGURED
            assert "cleaned up: model freed" in log_path.read_text()
            [result] = harness.set_parameters(score_thresholds=[0.99, 0.99, 0.99])
            assert not result.successful and "configure" in result.reason

            # configure again (the bundle is loaded again), activate, detect
            assert _change(harness, Transition.TRANSITION_CONFIGURE)
            assert _change(harness, Transition.TRANSITION_ACTIVATE)
            assert harness.send_and_wait(_cloud(points, 102)).header.stamp.sec == 102

            # shutdown straight from active
            assert _change(harness, Transition.TRANSITION_ACTIVE_SHUTDOWN)
            assert _state(harness) == State.PRIMARY_STATE_FINALIZED
            assert _subscribed(harness, False)
            assert node_process.process.poll() is None
        finally:
            harness.close()
        assert node_process.stop() == 0
    log = log_path.read_text()
    assert "shut down from active" in log and "Traceback" not in log, log[-3000:]


def test_a_bundle_it_cannot_load_fails_configure_and_the_node_stays_unconfigured():
    """In process (the transitions' services are covered above): configure fails with the reason logged, the node
    stays unconfigured, and shutdown works from there."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter as RclpyParameter

    from clean_ros.ros.lifecycle_node import LifecycleDetectorNode
    from clean_ros.ros.node_process import random_domain_id

    def missing_bundle(path, backend, device):
        raise FileNotFoundError(f"{path}: no manifest.json")

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=random_domain_id())
    try:
        node = LifecycleDetectorNode(pipeline_factory=missing_bundle, context=context,
                                     parameter_overrides=[RclpyParameter("bundle_path", value="/nowhere")])
        errors = []
        node.get_logger().error = lambda message, **kwargs: errors.append(message)
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node._state_machine.current_state[1] == "unconfigured"
        assert errors and "configure failed: cannot load the model bundle '/nowhere'" in errors[0]
        assert "no manifest.json" in errors[0] and node.pipeline is None
        assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
        assert node._state_machine.current_state[1] == "finalized"
        node.close()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_launch_command_of_the_lifecycle_node():
    command = launch_command("cfg.yaml", {"bundle_path": ""}, "info", "PY", executable="detector_lifecycle_node")
    assert command[:6] == ["PY", "-m", "clean_ros.detector_lifecycle_node", "--ros-args", "--params-file", "cfg.yaml"]
