"""`training/compress.py --plan` (training/compression/plan.py) on a tiny KITTI-layout folder built from the six
shared KITTI frames (symlinks), and on broken copies of it: each mistake is one `error:` line, exit 2, and the run
folder is never created."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from training.compress import main as compress_main

REPO = Path(__file__).resolve().parents[3]
SMOKE = REPO / "config" / "compress" / "smoke.yaml"
# the shared frames' label rows of the model classes: 000000 Ped + Car, 000001 Cyclist + Car, 000002-000004 Cars,
# 000005 Ped + Car (DontCare, Misc and Truck rows are not counted)
TRAIN, VAL = ("000000", "000001", "000002", "000003"), ("000004", "000005")


def make_kitti(root: Path, source: Path, train=TRAIN, val=VAL) -> Path:
    for sub in ("velodyne", "label_2", "calib"):
        (root / "training" / sub).mkdir(parents=True)
        for path in sorted((source / "training" / sub).iterdir()):
            (root / "training" / sub / path.name).symlink_to(path)
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("\n".join(train) + "\n")
    (root / "ImageSets" / "val.txt").write_text("\n".join(val) + "\n")
    return root


@pytest.fixture
def kitti(tmp_path, kitti_sample) -> Path:
    return make_kitti(tmp_path / "kitti", kitti_sample)


def plan(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(SMOKE), "--set", "data.source=kitti", "--set", f"data.root={root}", "--out", str(out),
            "--plan", *extra]


def run_plan(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = compress_main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plan_on_a_kitti_folder_prints_data_models_stages_and_estimate(kitti, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    code, text, err = run_plan(capsys, plan(kitti, out, "--plan-iterations", "1"))
    assert code == 0, err
    assert not out.exists(), "--plan must not create the run folder"
    lines = text.splitlines()
    # frames per split, objects per model class (label rows of the real frames)
    assert re.search(r"train 'train'\s+4\s+3\s+1\s+1$", text, re.M), text
    assert re.search(r"val 'val'\s+2\s+2\s+1\s+0$", text, re.M), text
    assert "warning: class 'Cyclist' has no objects in split 'val'" in text
    # params of the smoke models (teacher_two_stage_tiny; pointpillars_tiny narrowed by smoke.yaml's student.set)
    assert re.search(r"teacher\s+two-stage\s+550,864 params\s+\d+\.\d\d GMACs\s+\d+\.\d ms", text), text
    assert re.search(r"student\s+anchor\s+57,976 params", text), text
    assert "pruning: 248 filters in 11 layers; keep 0.5 -> 124, which ones by the importance ranking (the uniform " \
           "x0.5 network would have 16,256 params)" in text
    # every stage of the graph in order; 4 training frames at batch 2 = 2 iterations per epoch
    names = [m.group(1) for m in (re.match(r"\s+\d+ (\w+)\s", line) for line in lines) if m]
    assert names == ["data", "teacher", "student_baseline", "importance", "prune", "finetune", "evaluate",
                     "efficiency", "export", "report"]
    assert re.search(r"\d+ teacher\s+1\s+2\s+\d\d:\d\d", text), text
    assert re.search(r"\d+ student_baseline\s+2\s+4\s+\d\d:\d\d", text), text
    assert re.search(r"\d+ finetune\s+2\s+4\s+\d\d:\d\d", text), text
    steps = re.search(r"one training step: student ([\d.]+) s, teacher ([\d.]+) s, kd ([\d.]+) s", text)
    assert steps and all(float(v) > 0 for v in steps.groups()), text
    assert re.search(r"^estimate: ~\d\d:\d\d in all, importance counted at its upper bound \(one training step",
                     text, re.M), text
    assert "checks passed: KITTI layout" in text


def test_plan_without_timing_reports_not_measured(kitti, tmp_path, capsys, one_thread):
    code, text, err = run_plan(capsys, plan(kitti, tmp_path / "run", "--plan-iterations", "0"))
    assert code == 0, err
    assert "estimate: not measured (--plan-iterations 0: no timing)" in text
    assert re.search(r"\d+ student_baseline\s+2\s+4\s+\?", text), text


def _assert_one_line_error(code: int, err: str, out: Path, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists()


def test_wrong_kitti_root_is_one_line_with_a_hint(kitti, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_plan(capsys, plan(kitti.parent, out))  # one folder too high: <root>/kitti/training
    _assert_one_line_error(code, err, out, "no training/velodyne folder, not a KITTI object root",
                           f"did you mean data.root={kitti}?")
    code, _, err = run_plan(capsys, plan(tmp_path / "nowhere", out))
    _assert_one_line_error(code, err, out, "dataset folder not found")


def test_missing_image_sets_file(kitti, tmp_path, capsys):
    (kitti / "ImageSets" / "val.txt").unlink()
    out = tmp_path / "run"
    code, _, err = run_plan(capsys, plan(kitti, out))
    _assert_one_line_error(code, err, out, "ImageSets/val.txt missing (data.val_split='val')")


def test_listed_frame_without_scan_and_bad_label_line(kitti, tmp_path, capsys):
    out = tmp_path / "run"
    (kitti / "ImageSets" / "val.txt").write_text("000004\n000009\n")
    code, _, err = run_plan(capsys, plan(kitti, out))
    _assert_one_line_error(code, err, out, "have no scan", "000009")
    (kitti / "ImageSets" / "val.txt").write_text("000004\n000005\n")
    label = kitti / "training" / "label_2" / "000002.txt"
    label.unlink()
    label.write_text("Car 0.00 0 -1.5 1 2 3\n")
    code, _, err = run_plan(capsys, plan(kitti, out))
    _assert_one_line_error(code, err, out, "000002.txt:1")


def test_empty_class_in_the_training_split(tmp_path, kitti_sample, capsys):
    root = make_kitti(tmp_path / "kitti", kitti_sample, train=("000002", "000003", "000004"), val=("000000",))
    out = tmp_path / "run"
    code, _, err = run_plan(capsys, plan(root, out))
    _assert_one_line_error(code, err, out, "class 'Pedestrian' has no objects in the training split 'train' (3 frames")


def test_training_frames_in_the_evaluated_split(tmp_path, kitti_sample, capsys):
    root = make_kitti(tmp_path / "kitti", kitti_sample, val=("000003", "000004"))
    out = tmp_path / "run"
    code, _, err = run_plan(capsys, plan(root, out))
    _assert_one_line_error(code, err, out, "1 frame(s) of the training split are also in the evaluated split",
                           "000003")


def test_teacher_and_student_that_cannot_be_distilled(kitti, tmp_path, capsys):
    out = tmp_path / "run"
    # PointDistiller pairs encoder outputs voxel by voxel: the SECOND teacher's 0.16 m voxels vs 0.32 m pillars
    code, _, err = run_plan(capsys, plan(kitti, out, "--set", "distill.method=pointdistiller"))
    _assert_one_line_error(code, err, out, "distill.method=pointdistiller: this teacher and student cannot be "
                                           "distilled", "one voxel grid")
    # CaKD matches positions by anchor: one rotation per class in the student, two in the teacher
    anchors = "".join(f"\n    - {{name: {name}, size: {size}, bottom_z: {z}, rotations: [0.0]}}" for name, size, z in (
        ("Car", [3.9, 1.6, 1.56], -1.78), ("Pedestrian", [0.8, 0.6, 1.73], -0.6), ("Cyclist", [1.76, 0.6, 1.73], -0.6)))
    student = tmp_path / "one_rotation.yaml"
    base = REPO / "config" / "train" / "pointpillars_tiny.yaml"
    student.write_text(f"_base_: {base}\nmodel:\n  head:\n    anchors:{anchors}\n")
    code, _, err = run_plan(capsys, plan(kitti, out, "--set", f"student.config={student}"))
    _assert_one_line_error(code, err, out, "distill.method=clean: this teacher and student cannot be distilled",
                           "anchor layouts must match")


def test_plan_of_a_simulated_dataset_sizes_it_from_the_config(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    code, text, err = run_plan(capsys, ["--config", str(SMOKE), "--out", str(out), "--plan", "--plan-iterations", "1"])
    assert code == 0, err
    assert not out.exists()
    assert "data: simulated (8 frames, seed 0; generated by the data stage" in text
    assert re.search(r"train 'train'\s+6$", text, re.M) and re.search(r"val 'val'\s+2$", text, re.M), text
    # two frames were simulated into a temporary folder to time the data stage and the models
    assert re.search(r"\d+ data\s+-\s+-\s+\d\d:\d\d  simulate the dataset \[simulate\]", text), text
    assert re.search(r"\d+ teacher\s+1\s+3\s+\d\d:\d\d", text), text  # 6 frames at batch 2


def test_plan_counts_an_already_simulated_dataset_and_writes_nothing(kitti, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    (out / "stages" / "data").mkdir(parents=True)
    (out / "stages" / "data" / "dataset").symlink_to(kitti, target_is_directory=True)  # a finished data stage
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    kitti_before = sorted(p.relative_to(kitti) for p in kitti.rglob("*"))
    code, text, err = run_plan(capsys, ["--config", str(SMOKE), "--out", str(out), "--plan", "--plan-iterations", "0"])
    assert code == 0, err
    assert f"data: simulated, {out / 'stages' / 'data' / 'dataset'} (already generated)" in text
    assert re.search(r"train 'train'\s+4\s+3\s+1\s+1$", text, re.M), text
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.relative_to(kitti) for p in kitti.rglob("*")) == kitti_before  # no GT database, nothing


def test_teacher_coverage_of_a_360_student_by_a_front_teacher():
    """The shipped front teacher (x in [0, 51.2), |y| < 25.6) covers 40.96 x 51.2 m of a +-40.96 m student's
    81.92 x 81.92 m: 31 %; a teacher on the student's own grid covers all of it."""
    from types import SimpleNamespace

    from clean_ros.models.anchors import FeatureGrid
    from training.compression.plan_checks import teacher_coverage

    front = FeatureGrid(80, 80, 0.0, -25.6, 0.64, 0.64, 6)
    around = FeatureGrid(128, 128, -40.96, -40.96, 0.64, 0.64, 6)
    student = SimpleNamespace(grid=around)
    assert abs(teacher_coverage(SimpleNamespace(rpn=SimpleNamespace(grid=front)), student)
               - (40.96 * 51.2) / (81.92 * 81.92)) < 1e-9
    assert teacher_coverage(SimpleNamespace(rpn=SimpleNamespace(grid=around)), student) == 1.0
