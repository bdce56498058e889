"""scripts/setup_env.sh reports wrong states clearly and never marks a half-built environment as done.

Each case runs the script from a scratch copy of the repository files it reads, so the real .venv is untouched.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def scratch(tmp_path):
    for part in ("scripts", "requirements", "ci"):
        shutil.copytree(ROOT / part, tmp_path / part)
    return tmp_path


def _run(scratch, env_updates, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "CLEAN_ROS_", "PYTHON"))}
    env.update(env_updates)
    return subprocess.run(["bash", str(scratch / "scripts" / "setup_env.sh")], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _python311():
    exe = shutil.which("python3.11") or sys.executable
    out = subprocess.run([exe, "-c", "import sys;print(sys.version_info[:2]==(3,11))"], capture_output=True, text=True)
    return exe if out.stdout.strip() == "True" else None


def test_wrong_python_is_refused_before_anything_is_created(scratch):
    fake = scratch / "python-fake"
    fake.write_text("#!/bin/sh\necho 3.9\n")
    fake.chmod(0o755)
    result = _run(scratch, {"PYTHON": str(fake)})
    assert result.returncode != 0
    assert "Python 3.9" in result.stderr and "needs Python 3.11" in result.stderr
    assert not (scratch / ".venv").exists()


def test_unknown_cuda_tag_is_refused(scratch):
    result = _run(scratch, {"CLEAN_ROS_CUDA": "gpu-please"})
    assert result.returncode != 0 and "CLEAN_ROS_CUDA='gpu-please' is not understood" in result.stderr


def test_missing_cmake_is_named_with_the_fix(scratch, tmp_path):
    py = _python311()
    if py is None:
        pytest.skip("no Python 3.11 interpreter to run the check with")
    # a PATH with every tool of the machine except cmake
    bin_dir = tmp_path / "bin-without-cmake"
    bin_dir.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            if entry.name != "cmake" and not (bin_dir / entry.name).exists() and os.access(entry.path, os.X_OK):
                (bin_dir / entry.name).symlink_to(entry.path)
    result = _run(scratch, {"PATH": str(bin_dir), "PYTHON": py})
    assert result.returncode != 0
    assert "'cmake' not found" in result.stderr and "apt-get install" in result.stderr
    assert not (scratch / ".venv").exists()


def test_registry_failure_leaves_no_stamp_and_next_run_resumes(scratch):
    py = _python311()
    if py is None:
        pytest.skip("no Python 3.11 interpreter to run the check with")
    # an index that refuses at once: port 9 (discard) on loopback is closed
    broken = {"PYTHON": py, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "",
              "PIP_NO_INDEX": "", "PIP_RETRIES": "0"}
    first = _run(scratch, broken, timeout=300)
    assert first.returncode != 0
    assert "could not install the pinned set" in first.stderr and "resumes" in first.stderr
    assert (scratch / ".venv").exists()
    assert not list((scratch / ".venv").glob(".clean_ros-setup-stamp*"))
    second = _run(scratch, broken, timeout=300)
    assert "resuming an unfinished set-up" in second.stdout
    assert second.returncode != 0
