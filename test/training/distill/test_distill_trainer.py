"""Distillation inside the real Trainer: losses logged, the teacher unchanged and not saved, adapters
checkpointed."""
from __future__ import annotations

import pytest
import torch

from clean_ros.models.detector import build_detector
from training.distill import DistillConfig, build_distillation
from training.distill.distill_config import CaKDConfig
from training.task import DetectionTask

from distill_helpers import small_cfg, real_teacher

# the shared machine: one thread is much faster under load (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory):
    from training.sim.sim_config import config_from_dict
    from training.simulate import simulate_dataset

    out = tmp_path_factory.mktemp("sim_distill")
    cfg = config_from_dict({"sensor": {"azimuth_resolution_deg": 0.4}, "dataset": {"val_fraction": 0.25}})
    simulate_dataset(cfg, out, n_frames=4, seed=0, workers=1, progress=False)
    return out


@pytest.mark.parametrize("method", ["clean", "feature_kd"])
def test_distillation_runs_in_the_trainer_and_checkpoints_adapters(sim_root, tmp_path, method):
    from clean_ros.yaml_config import load_config, to_dict
    from training import checkpoint as ckpt_io
    from training.train_config import TrainConfig
    from training.data.kitti_dataset import KittiDataset
    from training.run_dir import RunDir
    from training.trainer import Trainer

    model = to_dict(small_cfg())
    cfg = load_config(TrainConfig, data={
        "name": "distill", "model": model, "epochs": 1, "batch_size": 2, "workers": 0, "eval_interval": 0,
        "log_interval": 1, "seed": 0, "max_iterations": 2,
        "data": {"root": str(sim_root), "train_split": "trainval", "val_split": "trainval"},
        "augment": {"gt_sampling": False, "global_rotation": False, "global_scaling": False, "random_flip_x": False,
                    "shuffle_points": False}})
    torch.manual_seed(14)
    teacher = real_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_detector(cfg.model)
    parts = build_distillation(DistillConfig(method=method, cakd=CaKDConfig(pre_nms_max=64)), teacher, student)
    task = DetectionTask(cfg.model, student, loss_terms=parts.loss_terms, target_hooks=parts.target_hooks,
                         extra_voxelizers=parts.voxelizers)
    train_set = KittiDataset(cfg.data, "trainval", training=True)
    result = Trainer(cfg, task, train_set, None, RunDir(tmp_path / "run", tensorboard=False), progress=False).fit()
    assert result.global_step == 2
    header = (tmp_path / "run" / "losses.csv").read_text().splitlines()[0]
    assert ("cakd" if method == "clean" else "feature_kd") in header
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    ckpt = ckpt_io.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert not any(k.startswith("rpn.") or "roi_head" in k for k in ckpt["model"])  # the teacher is not saved
    if method == "feature_kd":
        adapter = ckpt["loss_terms"]["feature_kd"]["adapter.weight"]
        assert torch.equal(adapter, parts.loss_terms[0].adapter.weight.detach())
