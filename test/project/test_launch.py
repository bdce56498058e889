"""launch/detector.launch.py: its arguments, defaults, the node it starts (package, executable, parameters) and
the Fast DDS profile handling.

`launch` / `launch_ros` are not on PyPI (and PyPI's `launch` is an unrelated package), so unless the real ones are
importable the launch file is loaded against minimal stand-in modules that record what it builds. The command the
node would run is then compared with clean_ros.ros.node_process.launch_command, which is how the node tests start the
node.
"""
from __future__ import annotations

import configparser
import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILE = ROOT / "launch" / "detector.launch.py"
EXPECTED_ARGUMENTS = {"input_topic": "/points", "output_topic": "/detections", "bundle_path": "", "backend": "auto",
                      "device": "cpu", "use_sim_time": "false", "log_level": "info", "lifecycle": "false"}


def _real_launch_available() -> bool:
    try:
        import launch  # noqa: F401
        import launch_ros  # noqa: F401
        from launch import LaunchDescription  # noqa: F401 - PyPI's unrelated `launch` has no LaunchDescription
    except Exception:  # noqa: BLE001
        return False
    return True


# ------------------------------------------------------------------------------------------------ stand-ins
class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


class ParameterValue:
    def __init__(self, value, value_type=None):
        self.value, self.value_type = value, value_type


class DeclareLaunchArgument(_Recorded):
    @property
    def name(self):
        return self.args[0]

    @property
    def default_value(self):
        return self.kwargs.get("default_value")


class SetEnvironmentVariable(_Recorded):
    pass


class UnsetEnvironmentVariable(_Recorded):
    pass


class OpaqueFunction(_Recorded):
    pass


class LogInfo(_Recorded):
    pass


class Node(_Recorded):
    pass


class IfCondition(_Recorded):
    pass


class UnlessCondition(_Recorded):
    pass


class LaunchDescription:
    def __init__(self, entities):
        self.entities = list(entities)


def _stand_in_modules() -> dict[str, types.ModuleType]:
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    return {
        "launch": module("launch", LaunchDescription=LaunchDescription),
        "launch.actions": module("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument,
                                 SetEnvironmentVariable=SetEnvironmentVariable,
                                 UnsetEnvironmentVariable=UnsetEnvironmentVariable, OpaqueFunction=OpaqueFunction,
                                 LogInfo=LogInfo),
        "launch.substitutions": module("launch.substitutions", LaunchConfiguration=LaunchConfiguration),
        "launch.conditions": module("launch.conditions", IfCondition=IfCondition, UnlessCondition=UnlessCondition),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", Node=Node),
        "launch_ros.parameter_descriptions": module("launch_ros.parameter_descriptions",
                                                    ParameterValue=ParameterValue),
    }


@pytest.fixture
def description(monkeypatch):
    """The LaunchDescription built by the launch file against the stand-ins (sys.modules restored afterwards)."""
    for name, module in _stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("detector_launch_under_test", LAUNCH_FILE)
    launch_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_module)
    return launch_module.generate_launch_description()


def _by_type(description, cls):
    return [e for e in description.entities if isinstance(e, cls)]


def _detector_node(description, lifecycle: bool = False) -> Node:
    """The plain detector node (lifecycle:=false, the default) or the managed one (lifecycle:=true)."""
    wanted = IfCondition if lifecycle else UnlessCondition
    [node] = [n for n in _by_type(description, Node) if isinstance(n.kwargs.get("condition"), wanted)]
    return node


def test_lifecycle_argument_picks_the_managed_node_with_the_same_parameters(description):
    plain, managed = _detector_node(description), _detector_node(description, lifecycle=True)
    assert len(_by_type(description, Node)) == 2
    assert (plain.kwargs["executable"], managed.kwargs["executable"]) == ("detector_node", "detector_lifecycle_node")
    for node in (plain, managed):
        assert node.kwargs["condition"].args[0].name == "lifecycle"
    same = {k: v for k, v in plain.kwargs.items() if k not in ("executable", "condition")}
    assert same == {k: v for k, v in managed.kwargs.items() if k not in ("executable", "condition")}
    text = (ROOT / "setup.py").read_text()
    assert re.search(r'"detector_lifecycle_node\s*=\s*clean_ros\.detector_lifecycle_node:main"', text)


def test_arguments_and_defaults(description):
    arguments = {a.name: a for a in _by_type(description, DeclareLaunchArgument)}
    assert set(arguments) == set(EXPECTED_ARGUMENTS) | {"params_file", "fastdds_profile", "rviz", "rviz_fixed_frame"}
    for name, default in EXPECTED_ARGUMENTS.items():
        assert arguments[name].default_value == default, name
        assert arguments[name].kwargs.get("description"), f"argument {name} has no description"
    # from the source tree the defaults point at the tree's own files
    assert Path(arguments["params_file"].default_value) == ROOT / "config" / "detector.yaml"
    assert Path(arguments["fastdds_profile"].default_value) == ROOT / "config" / "fastdds_large_data.xml"
    assert Path(arguments["params_file"].default_value).is_file()
    assert Path(arguments["fastdds_profile"].default_value).is_file()


def test_argument_defaults_and_node_name_are_clean_ros_defaults(description):
    """The launch file's defaults are the node's (clean_ros/defaults.py), so launching changes nothing by itself."""
    from clean_ros import defaults

    arguments = {a.name: a.default_value for a in _by_type(description, DeclareLaunchArgument)}
    assert {name: arguments[name] for name in ("input_topic", "output_topic", "backend", "device")} == {
        "input_topic": defaults.INPUT_TOPIC, "output_topic": defaults.OUTPUT_TOPIC, "backend": defaults.BACKEND,
        "device": defaults.DEVICE}
    node = _detector_node(description)
    assert node.kwargs["name"] == defaults.NODE_NAME


def test_node_package_executable_and_parameters(description):
    node = _detector_node(description)
    kw = node.kwargs
    assert (kw["package"], kw["executable"], kw["name"]) == ("clean_ros", "detector_node", "clean_ros_detector")
    params_file, overrides = kw["parameters"]
    assert isinstance(params_file, LaunchConfiguration) and params_file.name == "params_file"
    strings = {k: v for k, v in overrides.items() if k != "use_sim_time"}
    assert {k: (v.value.name, v.value_type) for k, v in strings.items()} == {
        n: (n, str) for n in ("input_topic", "output_topic", "bundle_path", "backend", "device")}
    sim = overrides["use_sim_time"]
    assert isinstance(sim, ParameterValue) and sim.value.name == "use_sim_time" and sim.value_type is bool
    assert kw["arguments"][:2] == ["--ros-args", "--log-level"] and kw["arguments"][2].name == "log_level"
    # the node's name is the key of the params file, so the file applies to the node the launch file starts
    yaml = pytest.importorskip("yaml")
    assert list(yaml.safe_load((ROOT / "config" / "detector.yaml").read_text())) == [kw["name"]]


def test_executable_is_the_console_script_of_detector_node_main():
    text = (ROOT / "setup.py").read_text()
    assert re.search(r'"detector_node\s*=\s*clean_ros\.detector_node:main"', text)
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["install"]["install_scripts"] == "$base/lib/clean_ros"   # where ros2 launch looks for it
    from clean_ros.ros import detector_node

    assert callable(detector_node.main)


def _resolve(value, context):
    if isinstance(value, LaunchConfiguration):
        return value.perform(context)
    if isinstance(value, ParameterValue):
        text = _resolve(value.value, context)
        return text.lower() == "true" if value.value_type is bool else value.value_type(text)
    return value


def test_node_command_equals_what_the_tests_run(description):
    """What launch_ros would execute (resolved with the defaults plus some overrides) is the command line of
    clean_ros.ros.node_process.launch_command with the same parameters, which test_detector_node and bench_node use."""
    from clean_ros.ros.node_process import launch_command

    arguments = {a.name: a.default_value for a in _by_type(description, DeclareLaunchArgument)}
    context = types.SimpleNamespace(launch_configurations={**arguments, "input_topic": "/lidar/points",
                                                           "use_sim_time": "true", "log_level": "warn"})
    node = _detector_node(description)
    params_file, overrides = node.kwargs["parameters"]
    resolved = {name: _resolve(value, context) for name, value in overrides.items()}
    log_level = _resolve(node.kwargs["arguments"][2], context)
    expected = launch_command(_resolve(params_file, context), resolved, log_level, python="PY")
    # launch_ros: <lib/clean_ros/detector_node> <arguments> --ros-args -r __node:=<name> --params-file <file>
    #             --params-file <overrides as YAML>; the console script is `python -m clean_ros.detector_node`.
    assert expected[:3] == ["PY", "-m", "clean_ros.detector_node"]
    assert expected[3:6] == ["--ros-args", "--params-file", str(ROOT / "config" / "detector.yaml")]
    assert set(expected[6:-2:2]) == {"-p"}
    assert expected[7:-2:2] == ["input_topic:=/lidar/points", "output_topic:=/detections", "bundle_path:=''",
                                "backend:=auto", "device:=cpu", "use_sim_time:=true"]
    assert expected[-2:] == ["--log-level", "warn"]


def test_fastdds_profile_set_by_default_and_unset_when_empty(description):
    [opaque] = [f for f in _by_type(description, OpaqueFunction) if f.kwargs["function"].__name__ == "_fastdds_profile"]
    entities = description.entities
    assert entities.index(opaque) < entities.index(_by_type(description, Node)[0])  # before the node starts
    function = opaque.kwargs["function"]
    arguments = {a.name: a.default_value for a in _by_type(description, DeclareLaunchArgument)}

    [action] = function(types.SimpleNamespace(launch_configurations=arguments))
    assert isinstance(action, SetEnvironmentVariable)
    assert action.args == ("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_large_data.xml"))

    for empty in ("", "  "):
        [action] = function(types.SimpleNamespace(launch_configurations={**arguments, "fastdds_profile": empty}))
        assert isinstance(action, UnsetEnvironmentVariable), "an empty profile must not set an empty variable"
        assert action.args == ("FASTDDS_DEFAULT_PROFILES_FILE",)


@pytest.mark.skipif(not _real_launch_available(), reason="the real launch / launch_ros are not importable here "
                                                          "(not on PyPI); checked against stand-ins above")
def test_real_launch_description_loads():
    from launch.launch_description_sources import get_launch_description_from_python_launch_file

    description = get_launch_description_from_python_launch_file(str(LAUNCH_FILE))
    names = {a.name for a in description.get_launch_arguments()}
    assert set(EXPECTED_ARGUMENTS) | {"params_file", "fastdds_profile", "rviz", "rviz_fixed_frame"} == names
