"""clean_ros/defaults.py is the one place for defaults that several tools write down: every copy that cannot import
it (config/detector.yaml) and every tool that reads it (node, replay, infer, bag topics, benchmarks) must agree.

The launch file's argument defaults are checked in test_launch.py (it has the stand-ins to load it)."""
from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from clean_ros import defaults

ROOT = Path(__file__).resolve().parents[2]

# node parameter -> the defaults name it must equal (in the node, config/detector.yaml and the launch file)
NODE_PARAMETERS = {"backend": "BACKEND", "device": "DEVICE", "num_threads": "NUM_THREADS",
                   "warmup_iterations": "WARMUP_ITERATIONS", "input_topic": "INPUT_TOPIC",
                   "output_topic": "OUTPUT_TOPIC", "intensity_scale": "INTENSITY_SCALE",
                   "expected_rate_hz": "EXPECTED_RATE_HZ", "target_frame": "TARGET_FRAME",
                   "model_frame": "MODEL_FRAME", "tf_timeout_s": "TF_TIMEOUT_S", "sensor_height": "SENSOR_HEIGHT",
                   "auto_intensity": "AUTO_INTENSITY", "ground_check": "GROUND_CHECK",
                   "auto_sensor_mount": "AUTO_SENSOR_MOUNT"}

# (file, option) -> the defaults name its default must equal; its help text, where it names a default, too
TOOL_OPTIONS = {
    ("clean_ros/ros/replay.py", "--backend"): "BACKEND",
    ("clean_ros/ros/replay.py", "--device"): "DEVICE",
    ("clean_ros/ros/replay.py", "--num-threads"): "NUM_THREADS",
    ("clean_ros/ros/replay.py", "--intensity-scale"): "INTENSITY_SCALE",
    ("clean_ros/ros/replay.py", "--warmup"): "WARMUP_ITERATIONS",
    ("clean_ros/tools/infer.py", "--backend"): "BACKEND",
    ("clean_ros/tools/infer.py", "--device"): "DEVICE",
    ("clean_ros/tools/infer.py", "--intensity-scale"): "INTENSITY_SCALE",
    # --sensor-height and the ground options of infer, replay and the real-data check (add_mount_options)
    ("clean_ros/tools/mount_options.py", "--sensor-height"): "SENSOR_HEIGHT",
    ("clean_ros/tools/mount_options.py", "--auto-sensor-mount"): "AUTO_SENSOR_MOUNT",
    ("clean_ros/tools/mount_options.py", "--no-ground-check"): "GROUND_CHECK",
    ("clean_ros/ros/replay.py", "--no-auto-intensity"): "AUTO_INTENSITY",
    ("clean_ros/tools/infer.py", "--no-auto-intensity"): "AUTO_INTENSITY",
    ("bench/bench_node.py", "--threads"): "NUM_THREADS",
    ("bench/bench_node.py", "--backend"): "BACKEND",
    ("bench/bench_node.py", "--rate"): "EXPECTED_RATE_HZ",
    ("bench/bench_replay.py", "--threads"): "NUM_THREADS",
    ("bench/bench_backends.py", "--threads"): "NUM_THREADS",
    ("bench/bench_scaling.py", "--threads"): "NUM_THREADS",
    ("bench/bench_suite_models.py", "--threads"): "NUM_THREADS",
    ("bench/bench_compress.py", "--threads"): "NUM_THREADS",
}


def _params_file() -> dict:
    yaml = pytest.importorskip("yaml")
    document = yaml.safe_load((ROOT / "config" / "detector.yaml").read_text())
    assert list(document) == [defaults.NODE_NAME]
    return document[defaults.NODE_NAME]["ros__parameters"]


def test_params_file_values_are_the_defaults():
    params = _params_file()
    for parameter, name in NODE_PARAMETERS.items():
        expected = getattr(defaults, name)
        assert params[parameter] == expected and type(params[parameter]) is type(expected), (
            f"config/detector.yaml {parameter}: {params[parameter]!r}, clean_ros/defaults.py {name}: {expected!r}")


def _add_argument_calls(path: Path) -> dict[str, ast.Call]:
    calls = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
                and node.args and isinstance(node.args[0], ast.Constant)):
            calls[node.args[0].value] = node
    return calls


def _evaluate(expression: ast.expr, where: str):
    """The value of a default / help expression written with literals and clean_ros.defaults names only."""
    namespace = {"defaults": defaults, **{k: v for k, v in vars(defaults).items() if not k.startswith("_")}}
    try:
        return eval(compile(ast.Expression(expression), where, "eval"), namespace)  # noqa: S307 - our own source
    except NameError as error:
        pytest.fail(f"{where}: write the default with clean_ros.defaults ({error})")


@pytest.mark.parametrize("path, option", sorted(TOOL_OPTIONS))
def test_tool_option_defaults_are_the_defaults(path, option):
    calls = _add_argument_calls(ROOT / path)
    assert option in calls, f"{path} has no option {option}"
    keywords = {k.arg: k.value for k in calls[option].keywords}
    name = TOOL_OPTIONS[(path, option)]
    expected = getattr(defaults, name)
    assert "default" in keywords, f"{path} {option}: no default (clean_ros/defaults.py {name} = {expected!r})"
    value = _evaluate(keywords["default"], f"{path} {option}")
    assert value == expected and type(value) is type(expected), (
        f"{path} {option}: default {value!r}, clean_ros/defaults.py {name}: {expected!r}")
    if isinstance(expected, bool):
        # a switch (--no-X, store_false): it can only move away from the default, so its action must match it; its
        # help says what the switch does ("by default ..." describes the other state, not a value to compare)
        action = _evaluate(keywords["action"], f"{path} {option} action") if "action" in keywords else None
        assert action == ("store_false" if expected else "store_true"), (
            f"{path} {option}: action {action!r} with default {expected!r} (clean_ros/defaults.py {name})")
        return
    if "help" in keywords:
        text = str(_evaluate(keywords["help"], f"{path} {option} help"))
        if "default" in text:
            assert str(expected) in text, f"{path} {option} help names another default: {text!r}"


def test_bag_topics_and_backend_names_are_the_defaults():
    from clean_ros.ros import bag
    from clean_ros.inference.backends import BACKEND_NAMES

    assert bag.POINTS_TOPIC == defaults.INPUT_TOPIC
    assert bag.DETECTIONS_TOPIC == defaults.OUTPUT_TOPIC
    assert bag.LATENCY_TOPIC == defaults.STAGE_LATENCY_TOPIC
    assert BACKEND_NAMES == defaults.BACKENDS and defaults.BACKEND in defaults.BACKENDS


@pytest.mark.ros
def test_node_declares_the_defaults_and_the_params_file_repeats_every_value(default_bundle):
    """A node started without a params file: its shared defaults are clean_ros.defaults, and every value that
    config/detector.yaml sets is the node's own default (the file documents the defaults, it changes none)."""
    rclpy = pytest.importorskip("rclpy")
    from clean_ros.ros.detector_node import DetectorNode

    params = _params_file()
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=random.SystemRandom().randint(1, 200))
    try:
        node = DetectorNode(context=context)
        try:
            declared = {name: node.get_parameter(name).value for name in params}
            assert node.get_name() == defaults.NODE_NAME
        finally:
            node.close()
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    for parameter, name in NODE_PARAMETERS.items():
        assert declared[parameter] == getattr(defaults, name), parameter
    differing = {name: (value, declared[name]) for name, value in params.items() if declared[name] != value}
    assert not differing, f"config/detector.yaml value vs the node's default: {differing}"
