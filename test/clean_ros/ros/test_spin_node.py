"""spin_node: SIGINT is a clean stop however rclpy reports it; a real failure while running still raises."""
import pytest

pytestmark = pytest.mark.ros


class _FakeNode:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True

    def destroy_node(self):
        pass


def test_an_error_after_the_context_was_shut_down_is_a_clean_stop(monkeypatch):
    import rclpy

    from clean_ros.ros import detector_node

    node = _FakeNode()

    def spin(_):
        rclpy.shutdown()  # what the SIGINT handler does, between two waits of the executor
        raise RuntimeError("failed to initialize wait set: the given context is not valid")  # what rclpy then raises

    monkeypatch.setattr(detector_node.rclpy, "spin", spin)
    assert detector_node.spin_node(lambda: node, ["detector_node"]) == 0
    assert node.closed


def test_an_error_while_the_context_is_valid_still_raises(monkeypatch):
    import rclpy

    from clean_ros.ros import detector_node

    node = _FakeNode()

    def spin(_):
        raise RuntimeError("a real failure")

    monkeypatch.setattr(detector_node.rclpy, "spin", spin)
    with pytest.raises(RuntimeError, match="a real failure"):
        detector_node.spin_node(lambda: node, ["detector_node"])
    assert node.closed and not rclpy.ok()  # closed and shut down on the way out
