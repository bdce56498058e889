"""ship_teacher's provenance: training time over every session of a resumed run, a README naming its own folder."""
from pathlib import Path

from training.ship_teacher import _train_seconds, readme

LOG = """\
2026-12-05 10:05:56 GT database ... not found: building it from split 'train'
2026-12-05 10:06:54 training t: 1200 frames, 600 iterations/epoch x 3 epochs, batch 2; starting at epoch 0 iteration 0; run folder r
2026-12-05 10:20:21 epoch 1/3: loss 2.7762
2026-12-05 10:31:49 epoch 2/3: loss 2.4285
2026-12-05 11:08:34 training t: 1200 frames, 600 iterations/epoch x 3 epochs, batch 2; resuming at epoch 2 iteration 0; run folder r
2026-12-05 11:19:08 epoch 3/3: loss 1.8369
2026-12-05 11:19:08 finished 3 epochs (1800 steps) in 634.0 s; checkpoints in r/checkpoints
"""


def test_train_seconds_sums_every_session_not_only_the_last(tmp_path: Path):
    (tmp_path / "train.log").write_text(LOG)
    first = (31 * 60 + 49) - (6 * 60 + 54)   # 10:06:54 -> 10:31:49
    second = (19 * 60 + 8) - (8 * 60 + 34)   # 11:08:34 -> 11:19:08
    assert _train_seconds(tmp_path) == first + second  # not the last session's 634 s


def test_train_seconds_prefers_the_checkpoints_own_count(tmp_path: Path):
    from training.checkpoint import TrainingState, atomic_torch_save, build_checkpoint

    (tmp_path / "train.log").write_text(LOG)
    ckpt = build_checkpoint(model_state={}, loss_terms={}, optimizer_state={}, scheduler_state={}, scaler_state={},
                            state=TrainingState(epoch=3, train_seconds=1234.56), config_yaml="", rng={})
    (tmp_path / "checkpoints").mkdir()
    atomic_torch_save(ckpt, tmp_path / "checkpoints" / "last.pt")
    assert _train_seconds(tmp_path) == 1234.6  # not the log's sum
    # the checkpoint the caller already read is used as is: last.pt is not read a second time
    (tmp_path / "checkpoints" / "last.pt").unlink()
    assert _train_seconds(tmp_path, {"train_seconds": 99.94}) == 99.9


def test_train_seconds_is_none_without_a_log_or_a_finished_epoch(tmp_path: Path):
    assert _train_seconds(tmp_path) is None
    (tmp_path / "train.log").write_text(LOG.splitlines()[1] + "\n")
    assert _train_seconds(tmp_path) is None


def test_readme_names_the_folder_it_is_shipped_in():
    manifest = {"name": "teacher_x", "params": 12, "metrics": {"ap3d_r40_moderate": {"Car": 1.0}, "frames": 3},
                "provenance": {"epochs": 2, "train_seconds": 5.0}}
    text = readme(manifest, Path("models/teacher_realistic"))
    assert "teacher.checkpoint: models/teacher_realistic" in text
    assert "models/teacher`" not in text
    assert "5.0 s of training (all sessions of the run)" in text


def test_ship_teacher_packages_the_runs_weights_and_training_time(tmp_path: Path, kitti_sample: Path):
    """End to end on a tiny two-stage run: the package holds the checkpoint's weights (weights-only) and the
    checkpoint's training time, read from one load of last.pt."""
    import torch

    from clean_ros.models.two_stage import TwoStageDetector
    from clean_ros.yaml_config import save_yaml
    from training.checkpoint import TrainingState, atomic_torch_save, build_checkpoint
    from training.ship_teacher import main
    from training.teacher_package import load_teacher_package
    from training.train_config import load_train_config

    repo = Path(__file__).resolve().parents[2]
    cfg = load_train_config(repo / "config" / "train" / "teacher_two_stage_tiny.yaml")
    torch.manual_seed(0)
    model = TwoStageDetector(cfg.two_stage)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_yaml(cfg, run / "config.yaml")
    atomic_torch_save(build_checkpoint(model_state=model.state_dict(), loss_terms={}, optimizer_state={},
                                       scheduler_state={}, scaler_state={},
                                       state=TrainingState(epoch=1, train_seconds=42.04), config_yaml="", rng={}),
                      run / "checkpoints" / "last.pt")
    out = tmp_path / "teacher"
    assert main(["--run", str(run), "--out", str(out), "--eval-root", str(kitti_sample),
                 "--eval-split", "train"]) == 0
    _, shipped, manifest = load_teacher_package(out)
    assert manifest["provenance"]["train_seconds"] == 42.0
    assert manifest["metrics"]["frames"] == 6
    for name, tensor in model.state_dict().items():
        assert torch.equal(shipped.state_dict()[name], tensor), name
