"""bench/gpu_check.sh and bench/gpu_check.py without a GPU: the script parses, refuses cleanly when no CUDA device is
visible (one line, exit 2, nothing written), the parity code compares backends (on the CPU here), and the BENCH.md
record inserts a subsection under its marker."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"
sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402


def test_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_refuses_without_a_cuda_device(tmp_path):
    bench_md = (REPO / "docs" / "BENCH.md").read_bytes()
    out = tmp_path / "gpu_check"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT), "--out", str(out)], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("gpu_check: torch ") and "sees no CUDA device" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == "" and not out.exists()
    assert (REPO / "docs" / "BENCH.md").read_bytes() == bench_md
    bad = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("gpu_check: unknown argument '--bogus'")


def test_parity_compares_every_started_backend(default_bundle, kitti_sample, capsys, one_thread):
    pytest.importorskip("onnxruntime")
    frame = kitti_sample / "training" / "velodyne" / "000000.bin"
    args = ["parity", "--bundle", str(default_bundle), "--device", "cpu", "--frame", str(frame)]
    code = gpu_check.main(args)
    text = capsys.readouterr().out
    assert code == 0, text
    rows = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert rows["torch-cpu"].split()[1:5] == ["0.00e+00"] * 4  # the reference against itself: cls, box, dir, iou
    onnx = rows["onnxruntime-cpu"].split()
    assert all(float(v) < 1e-4 for v in onnx[1:5]) and "ok" in onnx
    assert rows["tensorrt-fp16-cpu"].split()[1] == "skipped:"
    # a tolerance no backend can meet makes the comparison fail (the verdict is computed, not printed blindly)
    assert gpu_check.main([*args, "--tolerance", "-1"]) == 1
    assert "DIFFERS" in capsys.readouterr().out


def test_record_inserts_newest_first_under_the_marker(tmp_path, capsys):
    bench_md = tmp_path / "BENCH.md"
    bench_md.write_text(f"# Benchmarks\n\n## GPU check\n\ntext\n\n{gpu_check.MARKER}\n")
    log_a, log_b = tmp_path / "1_a.log", tmp_path / "2_b.log"
    log_a.write_text("first log\n")
    log_b.write_text("second log\n")
    assert gpu_check.main(["record", "--bench-md", str(bench_md), "--title", "run 1", str(log_a)]) == 0
    assert gpu_check.main(["record", "--bench-md", str(bench_md), "--title", "run 2", str(log_a), str(log_b)]) == 0
    text = bench_md.read_text()
    assert text.startswith(f"# Benchmarks\n\n## GPU check\n\ntext\n\n{gpu_check.MARKER}\n\n### run 2\n")
    assert text.index("### run 2") < text.index("### run 1")
    assert "`2_b.log`:\n\n```\nsecond log\n```" in text and text.count("first log") == 2
    no_marker = tmp_path / "OTHER.md"
    no_marker.write_text("# nothing here\n")
    capsys.readouterr()
    assert gpu_check.main(["record", "--bench-md", str(no_marker), "--title", "x", str(log_a)]) == 2
    assert "GPU check section of BENCH.md is missing" in capsys.readouterr().err
    assert no_marker.read_text() == "# nothing here\n"
