"""The node's auto_intensity parameter (clean_ros.ros.node_model, clean_ros.ros.node_diagnostics), in process with
the real Pipeline on a copy of the embedded default bundle:
- on with a bundle that records its training intensity level: each scan's intensity reaches the model scaled to that
  level (running median of the scans' levels, the warm-up's synthetic cloud not among them), /diagnostics reports
  the factor as "intensity_factor", and the input contract no longer asks for an intensity_scale;
- off: the intensity reaches the model as given, "intensity_factor" is "off";
- on (the default) with a bundle that records no level: the node starts with a warning, automatic intensity off;
- the lifecycle node sets it at configure, and the report says "off" again once the model is freed.
"""
from __future__ import annotations


import numpy as np
import pytest
from shared_helpers import bundle_with_intensity_level

rclpy = pytest.importorskip("rclpy")

from clean_ros.ros.node_diagnostics import assess  # noqa: E402
from clean_ros.ros.node_process import random_domain_id  # noqa: E402
from clean_ros.ros.pointcloud_msg import make_pointcloud2  # noqa: E402
from test_node_model import in_process_node  # noqa: E402

pytestmark = pytest.mark.ros
TRAINING_LEVEL = 0.3




@pytest.fixture(scope="module")
def leveled_bundle(default_bundle, tmp_path_factory):
    return bundle_with_intensity_level(default_bundle, tmp_path_factory.mktemp("leveled"), TRAINING_LEVEL)


@pytest.fixture(scope="module")
def unleveled_bundle(default_bundle, tmp_path_factory):
    return bundle_with_intensity_level(default_bundle, tmp_path_factory.mktemp("unleveled"), None)


def _scan(intensity: float, n: int = 3000, seed: int = 0) -> np.ndarray:
    """A ground ring 5-35 m away with one intensity, plus 200 bright returns within 3 m (outside the level's band)."""
    rng = np.random.default_rng(seed)
    radius = np.concatenate([rng.uniform(5.0, 35.0, n), rng.uniform(0.5, 2.5, 200)])
    angle = rng.uniform(-np.pi, np.pi, len(radius))
    return np.column_stack([radius * np.cos(angle), radius * np.sin(angle), rng.uniform(-1.7, -1.5, len(radius)),
                            np.r_[np.full(n, intensity), np.full(200, 0.95)]]).astype(np.float32)


def _cloud(points: np.ndarray, sec: int):
    return make_pointcloud2(points, ("x", "y", "z", "intensity"), (float(sec), "velodyne"))


def _model_inputs(node) -> list[np.ndarray]:
    """Record the points the model reads: those the Pipeline's voxels hold (after automatic intensity)."""
    seen = []
    preprocess = node.pipeline.preprocess

    def recording(points):
        voxels, stats = preprocess(points)
        seen.append(voxels.points.numpy().copy())
        return voxels, stats

    node.pipeline.preprocess = recording
    return seen


def _items(node) -> dict[str, str]:
    return assess(node.health_snapshot())[2]


def _parameters(bundle, **overrides):
    return dict(bundle_path=str(bundle), backend="torch", num_threads=1, warmup_iterations=1, **overrides)


def test_on_with_a_leveled_bundle_scales_each_scan_to_the_training_level(leveled_bundle):
    with in_process_node(None, **_parameters(leveled_bundle)) as node:
        assert node.get_parameter("auto_intensity").value is True      # the default
        assert node.pipeline.auto_intensity is not None
        assert node.pipeline.auto_intensity.training_level == pytest.approx(TRAINING_LEVEL)
        assert len(node.pipeline.auto_intensity.levels) == 0            # the warm-up's cloud is no scan of the sensor
        assert _items(node)["intensity_factor"] == "1"                  # no scan yet
        assert "intensity" not in node.contract.feature_ranges          # any scale is brought to the level
        published = []
        node.detections_pub.publish = published.append
        seen = _model_inputs(node)

        node._on_cloud(_cloud(_scan(0.15), 100), None)                  # level 0.15: x 2
        assert [m.header.stamp.sec for m in published] == [100]
        assert _items(node)["intensity_factor"] == "2"
        ring = np.hypot(seen[-1][:, 0], seen[-1][:, 1]) > 3.0
        np.testing.assert_allclose(seen[-1][ring, 3], 0.3, rtol=1e-5)
        np.testing.assert_allclose(seen[-1][~ring, 3], 1.0)             # 0.95 x 2, clipped to the feature range

        node._on_cloud(_cloud(_scan(0.6, seed=1), 101), None)           # running median of 0.15 and 0.6: 0.375
        assert _items(node)["intensity_factor"] == "0.8"
        ring = np.hypot(seen[-1][:, 0], seen[-1][:, 1]) > 3.0
        np.testing.assert_allclose(seen[-1][ring, 3], 0.48, rtol=1e-5)

        # a 0-255 sensor: no contract finding asks for an intensity_scale while automatic intensity is on
        node._check_contract(_cloud(_scan(80.0, seed=2), 102))
        assert not [code for code, _ in node.contract_findings if code.startswith("value_")]

        node._free_model()                                              # no model: nothing is scaled
        assert _items(node)["intensity_factor"] == "off"


def test_off_gives_the_intensity_as_given_and_reports_off(leveled_bundle):
    with in_process_node(None, **_parameters(leveled_bundle, auto_intensity=False)) as node:
        assert node.pipeline.auto_intensity is None and node.pipeline.intensity_factor == 1.0
        assert "intensity" in node.contract.feature_ranges
        node.detections_pub.publish = lambda msg: None
        seen = _model_inputs(node)
        node._on_cloud(_cloud(_scan(0.15), 200), None)
        ring = np.hypot(seen[-1][:, 0], seen[-1][:, 1]) > 3.0
        np.testing.assert_allclose(seen[-1][ring, 3], 0.15)
        assert _items(node)["intensity_factor"] == "off"
        # the contract check still points a 0-255 sensor at intensity_scale
        node._check_contract(_cloud(_scan(80.0, seed=2), 201))
        assert [code for code, _ in node.contract_findings] == ["value_scale"]


def test_a_bundle_without_a_level_starts_with_a_warning_and_automatic_intensity_off(unleveled_bundle, monkeypatch):
    from rclpy.impl.rcutils_logger import RcutilsLogger

    warnings = []
    warning = RcutilsLogger.warning

    def recording(self, message, **kwargs):
        warnings.append(message)
        return warning(self, message, **kwargs)

    monkeypatch.setattr(RcutilsLogger, "warning", recording)
    with in_process_node(None, **_parameters(unleveled_bundle)) as node:
        assert node.get_parameter("auto_intensity").value is True
        assert node.pipeline.bundle.intensity_level is None
        assert node.pipeline.auto_intensity is None
        assert _items(node)["intensity_factor"] == "off"
        node.detections_pub.publish = lambda msg: None
        node._on_cloud(_cloud(_scan(0.15), 300), None)                  # and it runs
        assert node.accounting.frames_processed == 1 and _items(node)["intensity_factor"] == "off"
    [line] = [w for w in warnings if "automatic intensity" in w]
    assert line.startswith("automatic intensity off: bundle ") and "records no training intensity level" in line
    assert "intensity_scale=1" in line


def test_the_lifecycle_node_sets_it_at_configure(leveled_bundle):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from clean_ros.ros.lifecycle_node import LifecycleDetectorNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=random_domain_id())
    try:
        node = LifecycleDetectorNode(context=context, parameter_overrides=[
            Parameter(name, value=value) for name, value in _parameters(leveled_bundle).items()])
        infos = []
        info = node.get_logger().info
        node.get_logger().info = lambda message, **kwargs: (infos.append(message), info(message, **kwargs))[1]
        assert _items(node)["intensity_factor"] == "off"                # unconfigured: no model
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.pipeline.auto_intensity is not None
        assert any(m.startswith("automatic intensity on") and "training level 0.3" in m for m in infos), infos
        node.detections_pub.publish = lambda msg: None
        node._on_cloud(_cloud(_scan(0.6), 400), None)
        assert _items(node)["intensity_factor"] == "0.5"
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.pipeline is None and _items(node)["intensity_factor"] == "off"
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS   # a fresh model, a fresh median
        assert len(node.pipeline.auto_intensity.levels) == 0
        assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
        node.close()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
