"""config/compress/fine_grid.yaml (issue 13 item 8): the student on 0.32 m anchor cells, paired with the shipped
teacher's 0.64 m grid, reusing the default run's data and teacher stages; fine_grid_x4.yaml: the same on scale_x4's
1600 training frames."""
from __future__ import annotations

from pathlib import Path

import torch

from clean_ros.models.detector import Detector
from clean_ros.models.two_stage import TwoStageDetector
from clean_ros.models.two_stage_config import load_two_stage_config
from clean_ros.yaml_config import load_config
from training.compression.compress_config import CompressConfig
from training.compression.graph import CompressionGraph
from training.compression.stage_store import config_hash
from training.distill import check_pairing
from training.distill.cakd import map_cells
from training.train_config import load_train_config

REPO = Path(__file__).resolve().parents[2]
COMPRESS = REPO / "config" / "compress"


def _stages(name: str) -> dict:
    cfg = load_config(CompressConfig, COMPRESS / name, ["training.seed=2"])
    return {s.name: s for s in CompressionGraph(cfg, Path("unused"), log=lambda _: None, progress=False).stages()}


def test_fine_grid_reuses_the_default_runs_data_and_teacher_only():
    default, fine = _stages("default.yaml"), _stages("fine_grid.yaml")
    for name in ("data", "teacher"):
        assert config_hash(fine[name].config) == config_hash(default[name].config), name
    assert config_hash(fine["student_baseline"].config) != config_hash(default["student_baseline"].config)
    assert "baseline_width_only" not in fine and "baseline_width_only" in default


def test_fine_grid_x4_reuses_the_scale_x4_runs_data_and_teacher_with_the_fine_student():
    scale, fine, fine_x4 = _stages("scale_x4.yaml"), _stages("fine_grid.yaml"), _stages("fine_grid_x4.yaml")
    for name in ("data", "teacher"):
        assert config_hash(fine_x4[name].config) == config_hash(scale[name].config), name
    assert config_hash(fine_x4["data"].config) != config_hash(fine["data"].config)  # 1600 frames, not 400
    assert fine_x4["student_baseline"].config["student"] == fine["student_baseline"].config["student"]
    assert "baseline_width_only" not in fine_x4


def test_fine_student_has_half_the_cell_and_pairs_with_the_shipped_teacher():
    student = {n: Detector(load_train_config(REPO / "config" / "train" / f"{n}.yaml").model)
               for n in ("pointpillars_tiny", "pointpillars_tiny_fine")}
    coarse, fine = student["pointpillars_tiny"].grid, student["pointpillars_tiny_fine"].grid
    assert (coarse.cell_x, fine.cell_x) == (0.64, 0.32) and fine.num_cells == 4 * coarse.num_cells
    teacher = TwoStageDetector(load_two_stage_config(REPO / "models" / "teacher" / "teacher.yaml")).rpn
    assert teacher.grid.cell_x == 0.64
    check_pairing("clean", student["pointpillars_tiny_fine"], teacher)  # raises on a pair CaKD cannot distil
    # every teacher cell advises exactly the 2 x 2 fine cells inside it
    cells = map_cells(fine, teacher.grid, torch.arange(fine.num_cells))
    assert torch.bincount(cells, minlength=teacher.grid.num_cells).unique().tolist() == [4]


def test_fine_grid_x4_keep07_links_the_fine_grid_x4_runs_trained_student_and_prunes_less():
    fine_x4, keep07 = _stages("fine_grid_x4.yaml"), _stages("fine_grid_x4_keep07.yaml")
    for name in ("data", "teacher", "student_baseline"):
        assert config_hash(keep07[name].config) == config_hash(fine_x4[name].config), name
    for name in ("importance", "prune"):
        assert config_hash(keep07[name].config) != config_hash(fine_x4[name].config), name
    assert "prune" in keep07["finetune"].deps  # the fine-tune re-runs on the new prune stage's run id
    assert keep07["prune"].config["prune"].keep_ratio == 0.7 and fine_x4["prune"].config["prune"].keep_ratio == 0.5


def test_fine_grid_x4_keep07_ft8_changes_only_the_fine_tune_length():
    keep07, ft8 = _stages("fine_grid_x4_keep07.yaml"), _stages("fine_grid_x4_keep07_ft8.yaml")
    for name in ("data", "teacher", "student_baseline", "importance", "prune"):
        assert config_hash(ft8[name].config) == config_hash(keep07[name].config), name
    assert ft8["finetune"].config["finetune"].epochs == 8 and keep07["finetune"].config["finetune"].epochs == 6


def test_the_release_is_the_finer_360_student_and_the_previous_release_shares_its_data():
    release, previous = _stages("release.yaml"), _stages("release_p032.yaml")
    assert config_hash(previous["data"].config) == config_hash(release["data"].config)
    assert config_hash(previous["student_baseline"].config) != config_hash(release["student_baseline"].config)
    configs = {name: load_config(CompressConfig, COMPRESS / name) for name in ("release.yaml", "release_p032.yaml")}
    assert configs["release.yaml"].student.config.endswith("pointpillars_tiny_360_p024.yaml")
    assert configs["release_p032.yaml"].student.config.endswith("pointpillars_tiny_360.yaml")
    # the shipped run's torch threads (part of every training stage's hash): 2 for the release, 1 for the previous
    assert (configs["release.yaml"].training.threads, configs["release_p032.yaml"].training.threads) == (2, 1)
    grids = {n: Detector(load_train_config(REPO / "config" / "train" / f"{n}.yaml").model).grid
             for n in ("pointpillars_tiny_360", "pointpillars_tiny_360_p024")}
    coarse, fine = grids["pointpillars_tiny_360"], grids["pointpillars_tiny_360_p024"]
    assert coarse.cell_x == 0.64 and abs(fine.cell_x - 0.48) < 1e-9 and abs(fine.cell_y - 0.48) < 1e-9
    # all around the sensor, at least +-40 m (issue 14)
    assert max(fine.x_min, fine.y_min) <= -40.0 and min(fine.x_max, fine.y_max) >= 40.0
