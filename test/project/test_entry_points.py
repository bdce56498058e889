"""Every tool is a `ros2 run clean_ros <tool>` executable with the options of its `python -m clean_ros.<tool>` form.

setup.py's console_scripts are read with ast (setup() is not run); each must name an importable callable, and
running it the way its console script does (`sys.exit(func())`, options in sys.argv) with --help must exit 0 and
print exactly what `python -m clean_ros.<tool> --help` prints. test_package_build.py runs the colcon-installed
scripts in lib/clean_ros, which is where `ros2 run` looks.
"""
from __future__ import annotations

import ast
import configparser
import importlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("infer", "replay", "bag", "build_engine")
LIFECYCLE_MODULE = ROOT / "clean_ros" / "ros" / "lifecycle_node.py"
# an option each --help must list: proof that it is the tool's own parser, not some other one
HELP_MARKERS = {"detector_node": "--params-file", "infer": "--bundle", "replay": "--record", "bag": "from-kitti",
                "build_engine": "--fp16", "detector_lifecycle_node": "--params-file"}


def console_scripts() -> dict[str, str]:
    """name -> "module:function" from setup.py's entry_points, read without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    [call] = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"]
    [entry_points] = [k.value for k in call.keywords if k.arg == "entry_points"]
    scripts = ast.literal_eval(entry_points)["console_scripts"]
    pairs = [line.split("=", 1) for line in scripts]
    return {name.strip(): target.strip() for name, target in pairs}


def expected_scripts() -> set[str]:
    names = {"detector_node", *TOOLS}
    if LIFECYCLE_MODULE.exists():
        names.add("detector_lifecycle_node")
    return names


def test_every_tool_is_a_console_script_of_its_python_m_module():
    scripts = console_scripts()
    assert set(scripts) == expected_scripts()
    assert scripts["detector_node"] == "clean_ros.detector_node:main"
    for tool in TOOLS:
        assert scripts[tool] == f"clean_ros.{tool}:main", tool     # the same main as `python -m clean_ros.<tool>`
    if "detector_lifecycle_node" in scripts:
        assert scripts["detector_lifecycle_node"].endswith(":main")


def test_console_scripts_resolve_to_callables():
    for name, target in console_scripts().items():
        module_name, function = target.split(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, function)), name


def test_setup_cfg_installs_scripts_where_ros2_run_looks():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["develop"]["script_dir"] == "$base/lib/clean_ros"
    assert config["install"]["install_scripts"] == "$base/lib/clean_ros"


def _start(argv_tail: list[str], code: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", code, *argv_tail] if code else [sys.executable, *argv_tail]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def test_help_of_every_console_script_exits_0_and_equals_python_m():
    scripts = console_scripts()
    runs = {}
    for name, target in scripts.items():
        module_name, function = target.split(":")
        # what the generated console script does: import the function, call it with no arguments, exit with its code
        wrapper = f"import sys; from {module_name} import {function} as f; sys.exit(f())"
        runs[name] = (_start(["--help"], code=wrapper), _start(["-m", module_name, "--help"]))
    for name, (script, module) in runs.items():
        code, out, err = _finish(script)
        assert code == 0, f"{name} --help exited {code}: {err[-2000:]}"
        assert HELP_MARKERS[name] in out, f"{name} --help does not list {HELP_MARKERS[name]}:\n{out}"
        assert "Traceback" not in err, err
        module_code, module_out, _ = _finish(module)
        assert (module_code, module_out) == (0, out), f"{name}: console script and python -m differ"
