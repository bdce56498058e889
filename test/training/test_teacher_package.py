"""The teacher folder (training/teacher_package.py): weights-only, verified, loads without executing code."""
from __future__ import annotations

import json

import pytest
import torch

from distill_helpers import real_teacher
from training.teacher_package import (TeacherPackageError, is_teacher_package, load_teacher_package,
                                      save_teacher_package)


@pytest.fixture
def package(tmp_path):
    torch.manual_seed(3)
    model = real_teacher()
    out = save_teacher_package(tmp_path / "teacher", model, model.cfg, {"command": "test"}, {"map3d_r40_moderate": 1.0},
                               readme="# teacher\n")
    return out, model


def test_round_trip_gives_the_same_weights_and_config(package):
    out, model = package
    assert is_teacher_package(out) and not is_teacher_package(out.parent)
    cfg, loaded, manifest = load_teacher_package(out)
    assert cfg == model.cfg and not loaded.training
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert manifest["params"] == sum(p.numel() for p in model.parameters())
    assert manifest["provenance"] == {"command": "test"} and manifest["metrics"]["map3d_r40_moderate"] == 1.0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "manifest.json", "teacher.yaml",
                                                     "weights.safetensors"]
    assert not list(out.parent.glob(".teacher.tmp-*"))  # the temporary folder was renamed into place


def test_tampered_weights_are_refused_by_hash(package):
    out, _ = package
    data = bytearray((out / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(TeacherPackageError, match="hash mismatch for weights.safetensors"):
        load_teacher_package(out)


def test_a_pickle_planted_as_weights_is_never_unpickled(package, tmp_path):
    import hashlib
    import pickle

    out, _ = package
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (out / "weights.safetensors").write_bytes(pickle.dumps(Payload()))
    manifest = json.loads((out / "manifest.json").read_text())  # an attacker also fixes the hash
    manifest["files"]["weights.safetensors"]["sha256"] = hashlib.sha256(
        (out / "weights.safetensors").read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TeacherPackageError, match="does not fit"):
        load_teacher_package(out)
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda out: (out / "manifest.json").unlink(), "not a clean_ros teacher folder"),
    (lambda out: (out / "manifest.json").write_text("{"), "invalid JSON"),
    (lambda out: (out / "teacher.yaml").unlink(), "missing"),
])
def test_broken_folders_give_one_clear_error(package, damage, message):
    out, _ = package
    damage(out)
    with pytest.raises(TeacherPackageError, match=message):
        load_teacher_package(out)


def test_compress_loads_a_teacher_folder_with_its_own_config(package, tmp_path):
    """teacher.checkpoint may name a teacher folder: the stage stores exactly those weights and that config."""
    from clean_ros.yaml_config import load_config
    from training.compression.compress_config import CompressConfig
    from training.compression.run_context import CompressRun
    from training.compression.stage_teacher import teacher
    from training.compression.stored_models import load_model

    out, model = package
    cfg = load_config(CompressConfig, data={"teacher": {"checkpoint": str(out)}})
    run = CompressRun(cfg, tmp_path / "run", log=lambda line: None, progress=False)
    folder = tmp_path / "run" / "stages" / "teacher"
    folder.mkdir(parents=True)
    summary = teacher(run, folder)
    assert summary["loaded"] == str(out) and summary["teacher_metrics"]["map3d_r40_moderate"] == 1.0
    kind, stored_cfg, stored = load_model(folder)
    assert kind == "two_stage" and stored_cfg == model.cfg
    assert all(torch.equal(stored.state_dict()[k], v) for k, v in model.state_dict().items())


def test_the_folder_gets_ordinary_permissions(package):
    import os
    import stat

    out, _ = package
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


def test_the_shipped_teacher_loads_and_pairs_with_the_default_student():
    """models/teacher (what make compress loads) verifies, is markedly heavier than the student, and has the
    student's anchor layout, so CaKD and label assignment accept the pair."""
    from pathlib import Path

    from clean_ros.models.detector import build_detector
    from clean_ros.models.detector_config import load_detector_config
    from training.config_paths import find_config
    from training.distill import DistillConfig, build_distillation

    folder = Path(__file__).resolve().parents[2] / "models" / "teacher"
    cfg, teacher, manifest = load_teacher_package(folder)
    student = build_detector(load_detector_config(find_config("pointpillars_tiny")))
    student_params = sum(p.numel() for p in student.parameters())
    assert manifest["params"] == sum(p.numel() for p in teacher.parameters()) >= 4 * student_params
    assert teacher.rpn.grid == student.grid
    assert cfg.roi_head.score_rule == "iou"  # the reference's final score
    assert manifest["metrics"]["map3d_r40_moderate"] >= 60.0 and manifest["metrics"]["frames"] >= 300
    parts = build_distillation(DistillConfig(method="clean"), teacher, student)
    assert parts.runner.is_two_stage and len(parts.loss_terms) == 1 and len(parts.target_hooks) == 1


def test_the_teacher_stage_hash_follows_the_weights_not_the_folders_path(package, tmp_path):
    import shutil

    from clean_ros.yaml_config import load_config
    from training.compression.compress_config import CompressConfig
    from training.compression.graph import CompressionGraph
    from training.teacher_package import save_teacher_package

    out, model = package
    copy = tmp_path / "elsewhere" / "teacher"
    shutil.copytree(out, copy)

    def teacher_config(path):
        cfg = load_config(CompressConfig, data={"teacher": {"checkpoint": str(path)}})
        graph = CompressionGraph(cfg, tmp_path / "run", log=lambda line: None, progress=False)
        return next(s for s in graph.stages() if s.name == "teacher").config

    assert teacher_config(out) == teacher_config(copy)  # same weights, another path: same stage
    torch.manual_seed(99)
    other = real_teacher()
    save_teacher_package(copy, other, other.cfg, {"command": "test"})
    assert teacher_config(out) != teacher_config(copy)  # other weights: the stage re-runs
