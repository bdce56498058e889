"""Trainer tests on a tiny simulated dataset (8 frames, coarse azimuth) generated once per session.

What they prove: the loop learns (loss falls, AP rises on the frames it trained on); 2 processes under torchrun
train exactly like 1 process with the same global batch; interrupt (max-iterations stop and SIGINT) + resume
reaches bit-identical weights; checkpoints load weights-only and a malicious pickle is refused unexecuted; user
errors exit 2 with one clear line.
"""
from __future__ import annotations

import csv
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "training" / "train.py"

from clean_ros.yaml_config import ConfigError, dump_yaml  # noqa: E402
from training import checkpoint as ckpt_io  # noqa: E402
from training.train_config import load_train_config, train_config_from_yaml_text  # noqa: E402
from training.distributed import GlobalBatchNorm, convert_batchnorm  # noqa: E402
from training.trainer import EpochSampler  # noqa: E402

# A micro PointPillars (38.4 m x 38.4 m, narrow) so that a step takes about a second on 2 shared cores.
MICRO_MODEL = {
    "_base_": str(REPO / "config" / "pointpillars_tiny.yaml"),
    "point_cloud_range": [0.0, -19.2, -3.0, 38.4, 19.2, 1.0],
    "max_voxels_train": 4000, "max_voxels_test": 4000,
    "encoder": {"widths": [16]},
    "bev_backbone": {"layer_widths": [[16, 16], [32, 32, 32], [64, 64, 64]], "num_upsample_filters": [32, 32, 32]},
}
NO_AUGMENT = {"gt_sampling": False, "global_rotation": False, "global_scaling": False, "random_flip_x": False,
              "shuffle_points": False}


@pytest.fixture(scope="session")
def sim_root(tmp_path_factory) -> Path:
    from training.sim.sim_config import config_from_dict
    from training.simulate import simulate_dataset

    out = tmp_path_factory.mktemp("sim8")
    cfg = config_from_dict({"sensor": {"azimuth_resolution_deg": 0.4}, "dataset": {"val_fraction": 0.25}})
    simulate_dataset(cfg, out, n_frames=8, seed=0, workers=1, progress=False)
    return out


def write_config(folder: Path, sim_root: Path, **overrides) -> Path:
    data = {"name": "micro", "model": MICRO_MODEL,
            "data": {"root": str(sim_root), "train_split": "trainval", "val_split": "trainval"},
            "augment": dict(NO_AUGMENT), "epochs": 2, "batch_size": 2, "workers": 0, "eval_interval": 0,
            "log_interval": 1, "seed": 3, "batchnorm_momentum": 0.1}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(*args, env_extra=None, timeout=240, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, str(TRAIN), "--no-tensorboard", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py exited {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def model_weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt_io.load_checkpoint(run / "checkpoints" / "last.pt")["model"]


# --------------------------------------------------------------------------- (1) the loop learns
@pytest.mark.slow
def test_training_learns_tiny_overfit(sim_root, tmp_path, one_thread):
    """config/pointpillars_tiny.yaml on 8 frames, no augmentation, evaluated on the same frames: 120 steps take
    the loss down > 5x and the KITTI AP from 0 to well above chance (measured on the 2-core dev machine: Car 57.5, mAP 37.5, 16 s)."""
    from training.data.augment import Augmentor
    from training.data.kitti_dataset import KittiDataset
    from training.evaluate_task import evaluate_task
    from training.run_dir import RunDir
    from training.task import DetectionTask
    from training.trainer import METRIC_NAME, Trainer, seed_everything

    tiny = {"_base_": str(REPO / "config" / "pointpillars_tiny.yaml")}
    cfg = load_train_config(write_config(tmp_path, sim_root, model=tiny, epochs=30, eval_interval=30,
                                         log_interval=4, seed=0))
    seed_everything(cfg.seed)
    train_set = KittiDataset(cfg.data, "trainval", training=True,
                             augmentor=Augmentor(cfg.augment, tuple(cfg.model.class_names)), seed=cfg.seed)
    val_set = KittiDataset(cfg.data, "trainval", training=False)
    task = DetectionTask(cfg.model)
    before = evaluate_task(task, val_set, cfg, torch.device("cpu"))
    start = time.perf_counter()
    result = Trainer(cfg, task, train_set, val_set, RunDir(tmp_path / "run", tensorboard=False), progress=False).fit()
    seconds = time.perf_counter() - start
    rows = list(csv.DictReader((tmp_path / "run" / "epochs.csv").open()))
    first, last = float(rows[0]["loss_total"]), float(rows[-1]["loss_total"])
    m = result.metrics
    print(f"\noverfit: {result.global_step} steps in {seconds:.0f} s, loss {first:.3f} -> {last:.3f}, 3D R40 moderate "
          f"Car {before['Car/3d_R40/moderate']:.1f} -> {m['Car/3d_R40/moderate']:.1f}, Ped "
          f"{m['Pedestrian/3d_R40/moderate']:.1f}, Cyc {m['Cyclist/3d_R40/moderate']:.1f}, "
          f"{METRIC_NAME} {before[METRIC_NAME]:.1f} -> {m[METRIC_NAME]:.1f}")
    assert result.status == "finished" and result.global_step == 120
    assert last < 0.2 * first
    assert before[METRIC_NAME] < 1.0
    assert m["Car/3d_R40/moderate"] > 40.0 and m[METRIC_NAME] > 25.0
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    assert result.best_metric == pytest.approx(m[METRIC_NAME])


# --------------------------------------------------------------------------- (2) DDP = one process, same global batch
@pytest.mark.slow
def test_ddp_two_processes_match_single_process(sim_root, tmp_path):
    config = write_config(tmp_path, sim_root, max_iterations=3)
    single = tmp_path / "single"
    run_cli("--config", config, "--out", single, "--set", "batch_size=2")
    ddp = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(TRAIN), "--no-tensorboard", "--config", str(config), "--out", str(ddp),
                           "--set", "batch_size=1"],
                          capture_output=True, text=True, timeout=240, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    a, b = model_weights(single), model_weights(ddp)
    assert a.keys() == b.keys()
    moved = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    print(f"\nDDP vs single process: max weight difference {moved:.2e} after 3 steps")
    assert moved < 2e-4, f"DDP and single-process weights differ by {moved}"
    losses_single = [float(r["total"]) for r in csv.DictReader((single / "losses.csv").open())]
    losses_ddp = [float(r["total"]) for r in csv.DictReader((ddp / "losses.csv").open())]
    assert len(losses_single) == len(losses_ddp) == 3
    np.testing.assert_allclose(losses_ddp, losses_single, rtol=1e-4)


# --------------------------------------------------------------------------- (3) interrupt + resume is exact
@pytest.mark.slow
def test_interrupt_and_resume_reproduce_uninterrupted_weights(sim_root, tmp_path):
    augment = {"random_flip_x": True, "global_rotation": True, "global_scaling": True, "shuffle_points": True}
    config = write_config(tmp_path, sim_root, augment=augment, workers=1)
    reference = tmp_path / "reference"
    run_cli("--config", config, "--out", reference)

    run = tmp_path / "interrupted"
    run_cli("--config", config, "--out", run, "--set", "max_iterations=3", "--set", "workers=0")  # mid-epoch 0
    first_stop = ckpt_io.load_checkpoint(run / "checkpoints" / "last.pt")
    assert (first_stop["epoch"], first_stop["iteration"], first_stop["global_step"]) == (0, 3, 3)

    # Resume, then SIGINT while it runs: the step finishes, a checkpoint is written, exit status 130.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(TRAIN), "--no-tensorboard", "--resume", str(run),
                             "--set", "max_iterations=0"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    losses = run / "losses.csv"
    deadline = time.time() + 120
    while time.time() < deadline:
        rows = list(csv.DictReader(losses.open())) if losses.exists() else []
        if rows and int(rows[-1]["step"]) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "resume with: python training/train.py --resume" in err
    second_stop = ckpt_io.load_checkpoint(run / "checkpoints" / "last.pt")
    assert 5 <= second_stop["global_step"] < 8
    # the training time adds up over the sessions of the run (ship_teacher's provenance reads it)
    assert 0 < first_stop["train_seconds"] < second_stop["train_seconds"]

    run_cli("--resume", run)
    final = ckpt_io.load_checkpoint(run / "checkpoints" / "last.pt")
    assert (final["epoch"], final["iteration"], final["global_step"]) == (2, 0, 8)
    assert final["train_seconds"] > second_stop["train_seconds"]
    expected = model_weights(reference)
    for key, value in final["model"].items():
        assert torch.equal(value, expected[key]), f"{key} differs after interrupt + resume"
    ref_opt = ckpt_io.load_checkpoint(reference / "checkpoints" / "last.pt")["optimizer"]["state"]
    for index, state in final["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], ref_opt[index]["exp_avg"])
    # the logs of the three pieces form one run: one row per step
    steps = [int(r["step"]) for r in csv.DictReader(losses.open())]
    assert steps == list(range(1, 9))


# --------------------------------------------------------------------------- (4) checkpoints never run code
class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_roundtrip_weights_only(tmp_path):
    import random

    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    state = ckpt_io.TrainingState(epoch=2, iteration=5, global_step=21, world_size=1, best_metric=33.5,
                                  metrics={"m": 1.5})
    model = torch.nn.Linear(3, 2)
    ckpt = ckpt_io.build_checkpoint(model_state=model.state_dict(), loss_terms={}, optimizer_state={},
                                    scheduler_state={}, scaler_state={}, state=state, config_yaml="name: x\n")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    path = ckpt_io.atomic_torch_save(ckpt, tmp_path / "c.pt")
    torch.load(path, weights_only=True)  # plain tensors and containers only
    loaded = ckpt_io.load_checkpoint(path)
    assert ckpt_io.training_state(loaded) == state
    assert torch.equal(loaded["model"]["weight"], model.weight.detach())
    ckpt_io.restore_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_checkpoint_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"format": ckpt_io.FORMAT, "version": 1, "model": _Evil(marker)}
    if writer == "pickle":
        evil.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, evil)
    with pytest.raises(ckpt_io.CheckpointError, match="refused"):
        ckpt_io.load_checkpoint(evil)
    with pytest.raises(ckpt_io.CheckpointError, match="refused"):
        ckpt_io.load_model_weights(evil)
    assert not marker.exists()
    from training.train import main

    assert main(["--resume", str(evil)]) == 2
    assert not marker.exists()


# --------------------------------------------------------------------------- (5) user errors: exit 2, one line
def test_cli_user_errors_exit_2(sim_root, tmp_path, capsys):
    from training.train import main

    config = write_config(tmp_path, sim_root)
    cases = [
        (["--config", str(tmp_path / "nope.yaml")], "config file not found"),
        (["--config", str(config), "--set", "optimizer.lr=0.1"], "unknown key 'lr'"),
        (["--config", str(config), "--set", "epochs=zero"], "epochs: expected an integer"),
        (["--config", str(config), "--set", f"data.root={tmp_path / 'missing'}"], "dataset folder not found"),
        (["--resume", str(tmp_path)], "has no checkpoint to resume from"),
        (["--resume", str(tmp_path / "nothing")], "no such run folder or checkpoint file"),
        ([], "--config is required"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert "Traceback" not in err and err.count("\n") == 1, err
    # the real process: exit status 2, no traceback
    proc = run_cli("--config", tmp_path / "nope.yaml", check=False, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "config file not found" in proc.stderr


def test_resume_refuses_overrides_that_change_the_run(sim_root, tmp_path, capsys):
    from training.train import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = ckpt_io.build_checkpoint(model_state={}, loss_terms={}, optimizer_state={}, scheduler_state={},
                                    scaler_state={}, state=ckpt_io.TrainingState(), config_yaml="{}")
    ckpt_io.atomic_torch_save(ckpt, run / "checkpoints" / "last.pt")
    assert main(["--resume", str(run), "--set", "optimizer.lr_max=1.0"]) == 2
    assert "cannot be changed when resuming" in capsys.readouterr().err


# --------------------------------------------------------------------------- pieces
def test_epoch_sampler_global_batches_do_not_depend_on_world_size():
    single = EpochSampler(10, seed=5, world_size=1)
    single.set_epoch(3)
    order = single.rank_indices()
    assert sorted(order) == list(range(10))
    ranks = [EpochSampler(10, seed=5, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    per_rank = [s.rank_indices() for s in ranks]
    batch = 2  # per process: global batch i = order[4i : 4i + 4]
    for i in range(2):
        merged = sorted(per_rank[0][i * batch:(i + 1) * batch] + per_rank[1][i * batch:(i + 1) * batch])
        assert merged == sorted(order[4 * i: 4 * i + 4])
    other = EpochSampler(10, seed=5)
    other.set_epoch(4)
    assert other.rank_indices() != order
    single.set_start(4)
    assert list(single) == order[4:] and len(single) == 6


def test_global_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, eps=1e-3, momentum=0.01))
    x = torch.randn(2, 3, 8, 8)
    expected = net(x)
    converted = convert_batchnorm(net, torch.device("cpu"))
    assert isinstance(converted[1], GlobalBatchNorm)
    assert converted.state_dict().keys() == net.state_dict().keys()
    torch.testing.assert_close(converted(x), expected)


def test_config_data_follows_model_and_rejects_conflicts(sim_root, tmp_path):
    cfg = load_train_config(write_config(tmp_path, sim_root))
    assert cfg.data.point_cloud_range == tuple(MICRO_MODEL["point_cloud_range"])
    with pytest.raises(ConfigError, match="differs from model.point_cloud_range"):
        load_train_config(write_config(tmp_path, sim_root), ["data.point_cloud_range=[0, -10, -3, 10, 10, 1]"])
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        load_train_config(write_config(tmp_path, sim_root), ["batch_size=0"])
    assert train_config_from_yaml_text(dump_yaml(cfg)) == cfg  # the resolved config saved with a run rebuilds it
