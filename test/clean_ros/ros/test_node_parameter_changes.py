"""Runtime parameter changes of the detector node (clean_ros.ros.node_parameter_changes), in process through rclpy's
own set_parameters (the path `ros2 param set` takes): accepted values reach the node, a refused change names its
reason and leaves everything as it was; post-processing overrides from the params file apply at load or stop it.

Uses test_node_model.py's RecordingPipeline TEST DOUBLE (real post-processing validator); the subprocess tests in
test_detector_node.py change the same parameters on a node running the real Pipeline.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_node_model import RecordingPipeline, in_process_node  # noqa: E402

from clean_ros.ros.node_diagnostics import assess  # noqa: E402
from clean_ros.ros.node_parameters import StartupError  # noqa: E402

pytestmark = pytest.mark.ros


def _set(node, **values):
    return node.set_parameters([Parameter(name, value=value) for name, value in values.items()])


def test_plain_and_accounting_parameters_reach_the_node():
    with in_process_node(lambda path, backend, device: RecordingPipeline(), warmup_iterations=0) as node:
        node.contract_pending = False
        results = _set(node, max_points=5000, intensity_scale=0.5, expected_rate_hz=20.0, stale_timeout_s=3.0,
                       hardware_id="roof_lidar", publish_markers=False)
        assert all(r.successful for r in results)
        assert (node.max_points, node.intensity_scale, node.publish_markers) == (5000, 0.5, False)
        assert node.contract_pending                      # a new intensity scale re-checks the input contract
        assert node.accounting.expected_rate_hz == 20.0 and node.accounting.stale_timeout_s == 3.0
        assert node.hardware_id == "roof_lidar"
        [result] = _set(node, hardware_id="")
        assert result.successful and node.hardware_id == node.get_fully_qualified_name()


def test_postprocess_change_goes_through_the_one_validator():
    pipeline = RecordingPipeline()
    with in_process_node(lambda path, backend, device: pipeline, warmup_iterations=0) as node:
        [result] = _set(node, nms_iou=0.3)
        assert result.successful and pipeline.postprocess_settings.nms_iou == pytest.approx(0.3)
        [result] = _set(node, score_thresholds=[0.5])
        assert not result.successful
        assert "score_thresholds" in result.reason and "3" in result.reason
        assert pipeline.postprocess_settings.score_thresholds == [0.1, 0.1, 0.1]
        assert list(node.get_parameter("score_thresholds").value) == [0.1, 0.1, 0.1]


def test_a_refused_box_leaves_boxes_and_other_values_unchanged():
    with in_process_node(lambda path, backend, device: RecordingPipeline(), warmup_iterations=0) as node:
        before = node.boxes
        # min > max on x, in one atomic request: all of it is refused, max_points included
        result = node.set_parameters_atomically([Parameter("crop_box", value=[10.0, -5.0, -2.0, 0.0, 5.0, 2.0]),
                                                 Parameter("crop_box_enabled", value=True),
                                                 Parameter("max_points", value=7)])
        assert not result.successful and "crop_box" in result.reason
        assert node.boxes == before and node.boxes.crop is None and node.max_points != 7
        assert node.get_parameter("crop_box_enabled").value is False
        [result] = _set(node, crop_box=[0.0, -5.0, -2.0, 10.0, 5.0, 2.0])
        assert result.successful and node.boxes.crop is None       # a new box, still disabled
        [result] = _set(node, crop_box_enabled=True)
        assert result.successful and tuple(node.boxes.crop) == (0.0, -5.0, -2.0, 10.0, 5.0, 2.0)


def test_postprocess_overrides_from_the_params_file_apply_at_load_or_stop_the_node():
    pipeline = RecordingPipeline()
    with in_process_node(lambda path, backend, device: pipeline, warmup_iterations=0, nms_post_max=77) as node:
        assert pipeline.changes == [{"nms_post_max": 77}]
        assert pipeline.postprocess_settings.nms_post_max == 77 and node.get_parameter("nms_post_max").value == 77
    with pytest.raises(StartupError, match=r"^post-processing parameters from the params file: .*score_thresholds"):
        with in_process_node(lambda path, backend, device: RecordingPipeline(), warmup_iterations=0,
                             score_thresholds=[0.2, 0.2]):
            pass


def _pipeline_with_operating_points():
    from types import SimpleNamespace

    from clean_ros.inference.operating_points import parse_operating_points

    pipeline = RecordingPipeline()
    pipeline.bundle = SimpleNamespace(operating_points=parse_operating_points([
        {"max_false_positives_per_frame": 0.6, "score_thresholds": [0.5, 0.45, 0.4]},
        {"max_false_positives_per_frame": 1.3, "score_thresholds": [0.1, 0.1, 0.1], "shipped": True}],
        ("Car", "Pedestrian", "Cyclist")))
    return pipeline


def test_operating_point_picks_the_bundles_thresholds_at_that_budget():
    pipeline = _pipeline_with_operating_points()
    with in_process_node(lambda path, backend, device: pipeline, warmup_iterations=0, operating_point=0.6) as node:
        assert pipeline.postprocess_settings.score_thresholds == [0.5, 0.45, 0.4]
        # the score_thresholds parameter starts from them, and stays editable at run time
        assert list(node.get_parameter("score_thresholds").value) == [0.5, 0.45, 0.4]
        items = assess(node.health_snapshot())[2]  # /diagnostics says what is in force
        assert (items["operating_point"], items["score_thresholds"]) == ("0.6", "Car 0.5, Pedestrian 0.45, Cyclist 0.4")
        [result] = _set(node, score_thresholds=[0.6, 0.45, 0.4])
        assert result.successful and pipeline.postprocess_settings.score_thresholds == [0.6, 0.45, 0.4]
        assert assess(node.health_snapshot())[2]["operating_point"] == "custom"
        [result] = _set(node, score_thresholds=[0.1, 0.1, 0.1])
        assert assess(node.health_snapshot())[2]["operating_point"] == "1.3 (shipped)"
    with in_process_node(lambda path, backend, device: _pipeline_with_operating_points(), warmup_iterations=0) as node:
        assert list(node.get_parameter("score_thresholds").value) == [0.1, 0.1, 0.1]  # 0: the shipped thresholds


@pytest.mark.parametrize("pipeline, overrides, message", [
    (_pipeline_with_operating_points, dict(operating_point=0.7),
     r"^parameter 'operating_point': operating point 0.7: this bundle has 0.6, 1.3 \(shipped\) false positives"),
    (RecordingPipeline, dict(operating_point=0.6), "this bundle lists no operating points"),
    (_pipeline_with_operating_points, dict(operating_point=0.6, score_thresholds=[0.2, 0.2, 0.2]),
     "operating_point 0.6 and score_thresholds are both set: give one"),
])
def test_an_operating_point_the_bundle_lacks_stops_the_node_with_one_line(pipeline, overrides, message):
    with pytest.raises(StartupError, match=message):
        with in_process_node(lambda path, backend, device: pipeline(), warmup_iterations=0, **overrides):
            pass


def test_ground_gate_starts_at_the_bundles_value_and_changes_at_run_time(default_bundle):
    from clean_ros.inference.bundle import load_bundle
    from clean_ros.inference.pipeline import Pipeline

    pipeline = Pipeline.from_bundle(default_bundle, backend="torch")
    with in_process_node(lambda path, backend, device: pipeline, warmup_iterations=0) as node:
        shipped = load_bundle(default_bundle).ground_gate_m
        assert node.get_parameter("ground_gate_m").value == shipped == pipeline.ground_gate_m
        [result] = _set(node, ground_gate_m=0.3)
        assert result.successful and pipeline.ground_gate_m == pytest.approx(0.3)
        assert assess(node.health_snapshot())[2]["ground_gate_m"] == "0.3"
        [result] = _set(node, ground_gate_m=-1.0)  # out of the declared range: refused, the gate stays
        assert not result.successful and pipeline.ground_gate_m == pytest.approx(0.3)
        [result] = _set(node, ground_gate_m=0.0)
        assert result.successful and pipeline.ground_gate is None
        assert assess(node.health_snapshot())[2]["ground_gate_m"] == "0"
