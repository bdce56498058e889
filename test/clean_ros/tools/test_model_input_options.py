"""The tools' options for the node's input boxes and range-dependent score thresholds
(clean_ros/tools/model_input_options.py): parsing, the node's validation and words, and the mapping onto the node's
parameters that realtime replay starts the node with."""
from __future__ import annotations

import argparse

import pytest

from clean_ros.inference.postprocess_settings import PostProcessConfig
from clean_ros.tools.model_input_options import ModelInputOptions, add_model_input_options, parse_number_list

CLASSES = ("Car", "Pedestrian", "Cyclist")


def _options(*argv: str) -> ModelInputOptions:
    parser = argparse.ArgumentParser()
    add_model_input_options(parser)
    return ModelInputOptions.from_args(parser.parse_args(list(argv)))


@pytest.mark.parametrize("text", ["[0, -40, -3.5, 70, 40, 1]", "0,-40,-3.5,70,40,1", " 0 -40 -3.5 70 40 1 ",
                                  "[0.0,-40.0, -3.5 ,70, 40,1.0]"])
def test_lists_are_read_as_in_a_params_file(text):
    assert parse_number_list("crop_box", text) == [0.0, -40.0, -3.5, 70.0, 40.0, 1.0]


def test_options_give_the_node_settings():
    options = _options("--crop-box=0,-40,-3,70,40,1", "--exclusion-box", "[-2.5, -1.2, -2.5, 2.5, 1.2, 0.5]",
                       "--range-breakpoints", "[30, 50]", "--range-score-thresholds",
                       "[0.0, 0.3, 0.5, 0.0, 0.4, 0.6, 0.0, 0.4, 0.6]")
    assert options.boxes.crop == (0.0, -40.0, -3.0, 70.0, 40.0, 1.0)
    assert options.boxes.exclusion == (-2.5, -1.2, -2.5, 2.5, 1.2, 0.5)
    assert options.range_changes == {"range_breakpoints": [30.0, 50.0],
                                     "range_score_thresholds": [0.0, 0.3, 0.5, 0.0, 0.4, 0.6, 0.0, 0.4, 0.6]}
    assert options.node_parameters() == {
        "crop_box_enabled": True, "crop_box": [0.0, -40.0, -3.0, 70.0, 40.0, 1.0],
        "exclusion_box_enabled": True, "exclusion_box": [-2.5, -1.2, -2.5, 2.5, 1.2, 0.5],
        "range_thresholds_enabled": True, "range_breakpoints": [30.0, 50.0],
        "range_score_thresholds": [0.0, 0.3, 0.5, 0.0, 0.4, 0.6, 0.0, 0.4, 0.6]}
    none = _options()
    assert not none.boxes.active and none.range_changes == {} and none.node_parameters() == {}
    assert none.describe() == "input boxes: crop off, exclusion off"


@pytest.mark.parametrize("argv, message", [
    (["--crop-box", "1,2,3"], "crop_box needs 6 values [x_min, y_min, z_min, x_max, y_max, z_max], got 3"),
    (["--exclusion-box=0,5,0,1,4,1"], "exclusion_box: min must be below max on every axis (not on y)"),
    (["--crop-box", "[0, a, 0, 1, 1, 1]"], "crop_box: 'a' is not a number"),
    (["--crop-box", "0,0,0,1,1,inf"], "crop_box values must be finite numbers"),
    (["--range-breakpoints", "30"], "--range-breakpoints and --range-score-thresholds go together"),
    (["--range-score-thresholds", "0.5,0.5,0.5"], "go together"),
    (["--range-breakpoints", "30,x", "--range-score-thresholds", "0"], "range_breakpoints: 'x' is not a number"),
])
def test_refused_values_name_the_node_parameter(argv, message):
    with pytest.raises(ValueError) as error:
        _options(*argv)
    assert message in str(error.value)


@pytest.mark.parametrize("breakpoints, table, message", [
    ("30", "0.1,0.2", "range_score_thresholds needs 6 values (3 classes (Car, Pedestrian, Cyclist) x 2 range bands "
                      "from 1 breakpoint(s), class-major), got 2"),
    ("50,30", "0,0,0,0,0,0,0,0,0", "range_breakpoints must be strictly ascending, got [50.0, 30.0]"),
    ("30", "0,1.5,0,0,0,0", "range_score_thresholds[1] = 1.5: must be a number in [0, 1]"),
])
def test_range_table_is_checked_by_the_one_validator(breakpoints, table, message):
    options = _options("--range-breakpoints", breakpoints, "--range-score-thresholds", table)
    with pytest.raises(ValueError) as error:
        options.validate_range(PostProcessConfig(), CLASSES, iou_branch=False)
    assert str(error.value) == message
    _options("--range-breakpoints", "30", "--range-score-thresholds", "0,0.5,0,0.5,0,0.5").validate_range(
        PostProcessConfig(), CLASSES, iou_branch=False)  # a fitting table passes


def test_node_parameters_read_back_by_the_node_give_the_same_settings():
    """Realtime replay starts the node with node_parameters(); the node's own readers (clean_ros.ros.
    node_parameters) must turn them into the boxes and range table that fast mode uses."""
    pytest.importorskip("rclpy")
    from clean_ros import defaults
    from clean_ros.ros.node_parameters import RANGE_PARAMS, box_filter, to_pipeline_changes

    options = _options("--exclusion-box", "[-2.5, -1.2, -2.5, 2.5, 1.2, 0.5]", "--range-breakpoints", "25",
                       "--range-score-thresholds", "0,0.6,0,0.7,0,0.7")
    parameters = options.node_parameters()
    node_defaults = {"crop_box_enabled": False, "crop_box": list(defaults.CROP_BOX),
                     "exclusion_box_enabled": False, "exclusion_box": list(defaults.EXCLUSION_BOX)}
    assert box_filter({**node_defaults, **parameters}) == options.boxes
    changes = to_pipeline_changes({k: v for k, v in parameters.items() if k in RANGE_PARAMS},
                                  {"range_thresholds_enabled": False, "range_breakpoints": [30.0, 50.0],
                                   "range_score_thresholds": [0.1] * 9})
    assert changes == options.range_changes
