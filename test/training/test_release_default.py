"""training/release_default.py: compress -> real-data check -> install the bundle with its README, by renames.

The end-to-end test runs the recipe on the smoke config (tiny simulated data, the shipped teacher) into a temporary
bundle folder; the others check the install step's all-or-nothing behaviour and the one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training import release_default

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "config" / "compress" / "smoke.yaml"


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_recipe_installs_a_loadable_bundle_with_its_report(tmp_path, kitti_sample):
    target = tmp_path / "default"
    target.mkdir()
    (target / "old.txt").write_text("the previous bundle")
    proc = subprocess.run([sys.executable, str(REPO / "training" / "release_default.py"), "--config", str(SMOKE),
                           "--out", str(tmp_path / "run"), "--bundle", str(target),
                           "--real", str(kitti_sample / "training"), "--set",
                           f"teacher.checkpoint={REPO / 'models' / 'teacher'}", "--set", "export.onnx=true",
                           "--set", "export.score_thresholds=calibrate", "--set", "export.operating_points=[8.0]"],
                          capture_output=True, text=True, timeout=900, env=_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from clean_ros.inference.bundle import load_bundle

    bundle = load_bundle(target)
    assert not (target / "old.txt").exists()  # replaced, not merged
    readme = (target / "README.md").read_text()
    assert "python training/release_default.py" in readme and "smoke.yaml" in readme
    assert "real_check.py" in readme and "BEV" in readme  # the real-data figures
    assert "Compression report" in readme  # the run's report
    assert "the shipped teacher `models/teacher`" in readme  # the teacher the run used, from its resolved config
    # the int8 dense part, calibrated on the run's own simulated val split, listed and described
    assert bundle.int8_onnx_path is not None
    calibration = bundle.manifest["int8"]["calibration"]
    assert calibration["data"] == str(tmp_path / "run" / "stages" / "data" / "dataset") and calibration["split"] == "val"
    assert "## int8 dense part" in readme and f"{calibration['frames']} frames" in readme
    assert json.loads((target / "manifest.json").read_text())["files"] == bundle.manifest["files"]
    # the operating points found on val, each checked on the real scans: the shipped one at the bundle's thresholds
    thresholds = json.loads((tmp_path / "run" / "stages" / "thresholds" / "thresholds.json").read_text())
    assert [p["max_false_positives_per_frame"] for p in thresholds["operating_points"]] == [2.0, 8.0]
    assert [(p.budget, p.shipped) for p in bundle.operating_points] == [(2.0, True), (8.0, False)]  # in the manifest
    section = readme.split("## Operating points on the real scans of", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith(("| 2 (shipped) |", "| 8 |"))]
    assert len(rows) == 2 and rows[0].startswith(
        f"| 2 (shipped) | [{', '.join(f'{t:g}' for t in bundle.postprocess.score_thresholds)}] | ")
    assert not list(tmp_path.glob(".default.*"))  # no staging / retired folder left behind


def test_install_keeps_the_old_bundle_when_the_new_one_does_not_load(tmp_path):
    source, target = tmp_path / "new", tmp_path / "default"
    source.mkdir()
    (source / "manifest.json").write_text("{not json")
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(release_default.ReleaseError, match="does not load"):
        release_default.install_bundle(source, target, "readme")
    assert (target / "keep.txt").read_text() == "old"
    assert not list(tmp_path.glob(".default.*"))


def test_missing_config_is_one_line_exit_2(tmp_path, capsys):
    assert release_default.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_dry_run_prints_the_commands_and_writes_nothing(tmp_path, capsys):
    assert release_default.main(["--dry-run", "--out", str(tmp_path / "run"), "--bundle", str(tmp_path / "b"),
                                 "--real", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "compress.py --config" in out and "release.yaml" in out and "real-data check skipped" in out
    assert "quantize_bundle.py" in out and "--split val" in out and "--method entropy" in out
    assert not any(tmp_path.iterdir())


def test_readme_names_the_runs_own_teacher_and_distillation(tmp_path):
    (tmp_path / "config.yaml").write_text("teacher:\n  checkpoint: models/teacher_realistic\n"
                                          "distill:\n  method: label_assign\n")
    teacher, distill = release_default._run_teacher_and_distill(tmp_path)
    readme = release_default.bundle_readme(Path("c.yaml"), tmp_path, "cmd", "# Compression report", None, None, "abc",
                                           teacher, distill)
    assert "taught by\nthe shipped teacher `models/teacher_realistic`" in readme and "360-degree teacher" not in readme
    assert "through label-assignment distillation only (no CaKD term)." in readme
    (tmp_path / "config.yaml").write_text("teacher:\n  checkpoint: ''\ndistill:\n  method: sparsekd\n")
    readme = release_default.bundle_readme(Path("c.yaml"), tmp_path, "cmd", "", None, None, None,
                                           *release_default._run_teacher_and_distill(tmp_path))
    assert "a teacher trained inside the run through `distill.method: sparsekd`." in readme
    # an unreadable run config: neither is claimed
    assert release_default._run_teacher_and_distill(tmp_path / "missing") == ("", "")
    assert " through " not in release_default.bundle_readme(Path("c.yaml"), tmp_path, "cmd", "", None, None, None)
