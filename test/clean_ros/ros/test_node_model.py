"""The detector node's model life (clean_ros.ros.node_model), in process: load -> names, contract, backend reason,
warm-up; a failing load or warm-up is one StartupError line; free drops the model and the report says so.

TEST DOUBLE: `RecordingPipeline` stands in for clean_ros.inference.pipeline.Pipeline (its post-processing changes go
through the real validator, clean_ros.inference.postprocess_settings.updated_postprocess) so that load and warm-up
can be observed and made to fail; the node subprocess tests (test_detector_node.py, test_lifecycle_node.py) run the
real Pipeline through the same code.
"""
from __future__ import annotations

from contextlib import contextmanager

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402

from clean_ros.cloud.pointcloud import InputContract  # noqa: E402
from clean_ros.ros.node_diagnostics import assess  # noqa: E402
from clean_ros.ros.node_model import feature_names  # noqa: E402
from clean_ros.ros.node_parameters import StartupError  # noqa: E402
from clean_ros.ros.node_process import random_domain_id  # noqa: E402

pytestmark = pytest.mark.ros
CLASSES = ("Car", "Pedestrian", "Cyclist")


class RecordingPipeline:
    """TEST DOUBLE of Pipeline: records warm-ups and post-processing changes; `fail_warmup` makes warm-up raise."""

    backend_name = "onnxruntime"
    class_names = CLASSES
    bundle = None
    frames = None  # the Pipeline's sensor-mount transforms: none set

    def __init__(self, fail_warmup: str = ""):
        from clean_ros.models.detector_config import PostProcessConfig

        self.postprocess_settings = PostProcessConfig()
        self.point_features = ({"name": "x"}, {"name": "y"}, {"name": "z"}, {"name": "intensity"})
        self.warmups: list[int] = []
        self.changes: list[dict] = []
        self.fail_warmup = fail_warmup

    def update_postprocess(self, **changes):
        from clean_ros.inference.postprocess_settings import updated_postprocess

        self.postprocess_settings = updated_postprocess(self.postprocess_settings, changes, CLASSES, iou_branch=False)
        self.changes.append(changes)
        return self.postprocess_settings

    def warmup(self, iterations=3):
        if self.fail_warmup:
            raise RuntimeError(self.fail_warmup)
        self.warmups.append(iterations)

    def set_auto_intensity(self, enabled, window=None, strict=False):
        return "this test double records no intensity level"  # as a bundle without one: the node warns, runs on

    def set_ground_watch(self, enabled, window=None, every=None):
        pass  # measures no ground: the report's ground key stays "off"

    def input_contract(self):
        from clean_ros.cloud.pointcloud import InputContract

        return InputContract(point_features=("x", "y", "z", "intensity"), point_cloud_range=(-1e9,) * 3 + (1e9,) * 3)


@contextmanager
def in_process_node(factory, **overrides):
    """A DetectorNode on its own context and DDS domain, built with `factory` and the given parameter overrides."""
    from clean_ros.ros.detector_node import DetectorNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=random_domain_id())
    node = None
    try:
        node = DetectorNode(pipeline_factory=factory, context=context,
                            parameter_overrides=[Parameter(name, value=value) for name, value in overrides.items()])
        yield node
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=context)


def test_feature_names_from_names_dicts_and_objects():
    class Named:
        name = "ring"

    assert feature_names(["x", {"name": "y"}, Named(), 7]) == ["x", "y", "ring", "7"]
    assert feature_names(()) == []


def test_load_sets_names_contract_and_warm_up_then_free_drops_the_model():
    pipeline = RecordingPipeline()
    calls = []

    def factory(path, backend, device):
        calls.append((path, backend, device))
        return pipeline

    with in_process_node(factory, warmup_iterations=2, bundle_path="/some/bundle", backend="onnxruntime") as node:
        assert calls == [("/some/bundle", "onnxruntime", "cpu")]
        assert node.pipeline is pipeline and node.bundle_path == "/some/bundle"
        assert pipeline.warmups == [2]
        assert node.class_names == CLASSES
        assert node.point_features == ("x", "y", "z", "intensity")
        assert node.backend_reason == "requested explicitly"           # the double has no backend selection
        # no bundle: the contract is the feature names over an unbounded range
        assert node.contract == InputContract(point_features=("x", "y", "z", "intensity"),
                                              point_cloud_range=(-1e9,) * 3 + (1e9,) * 3)
        assert node.frames is not None and not node.frames.uses_tf
        _, _, items = assess(node.health_snapshot())
        assert items["backend"] == "onnxruntime" and items["bundle"] == "/some/bundle"
        node._free_model()
        assert node.pipeline is None and node.frames is None and node.tf is None
        _, _, items = assess(node.health_snapshot())
        assert items["backend"] == "none (no model loaded)"


def test_zero_warm_up_iterations_skip_the_warm_up():
    pipeline = RecordingPipeline()
    with in_process_node(lambda path, backend, device: pipeline, warmup_iterations=0) as node:
        assert node.pipeline is pipeline and pipeline.warmups == []


def test_a_bundle_that_cannot_load_is_one_startup_error_line():
    def factory(path, backend, device):
        raise FileNotFoundError(f"{path}/manifest.json: no such file")

    with pytest.raises(StartupError) as error:
        with in_process_node(factory, bundle_path="/missing"):
            pass
    message = str(error.value)
    assert message == ("cannot load the model bundle '/missing' (backend 'auto', device 'cpu'): "
                       "/missing/manifest.json: no such file")


def test_a_failing_warm_up_is_one_startup_error_line():
    pipeline = RecordingPipeline(fail_warmup="CUDA out of memory")
    with pytest.raises(StartupError, match=r"^warm-up of backend 'onnxruntime' failed: CUDA out of memory$"):
        with in_process_node(lambda path, backend, device: pipeline, warmup_iterations=1):
            pass
