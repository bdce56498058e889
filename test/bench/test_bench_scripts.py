"""Smoke runs of benchmark scripts that crashed in the suite once (bench_backends on the teacher package,
bench_distill without the teacher's own voxels): each runs to the end on the smallest settings."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stdout


def test_bench_distill_runs_every_teacher_method_that_needs_the_teachers_voxels():
    out = _run("bench_distill.py", "--iters", "1", "--batch", "1", "--points", "3000",
               "--methods", "none", "label_assign", "clean")
    for method in ("none", "label_assign", "clean"):
        assert f"  {method}" in out and "s/step" in out


@pytest.mark.parametrize("backends", [["torch", "onnxruntime-int8"]])
def test_bench_backends_times_the_default_and_skips_the_teacher_package(backends):
    pytest.importorskip("onnxruntime")
    out = _run("bench_backends.py", "--runs", "1", "--warmup", "0", "--threads", "1", "--backends", *backends)
    assert "teacher    skipped: " in out and "clean_ros.teacher package" in out
    assert "default    torch" in out
    assert "default    onnxruntime-int8" in out and "(int8 dense part)" in out
