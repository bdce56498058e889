"""training/compress.py: the whole pipeline on config/compress/smoke.yaml (tiny simulated data, 1-2 epochs).

One smoke run (module fixture) is started as a subprocess and killed with SIGKILL in the middle of a training
stage (detected through the stage's marker / checkpoint files), then re-run: the finished stages are skipped,
the killed stage resumes from its trainer checkpoint and the run completes. The tests then check the report
(every field of every CLEAN model), the bundle of the final student, a no-change re-run (everything skipped), a
changed value (only that stage and its dependants re-run) and user errors (exit 2, one line, no traceback).
Budget: about 1.5-3 minutes on the shared 2-core machine.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
COMPRESS = REPO / "training" / "compress.py"
SMOKE = REPO / "config" / "compress" / "smoke.yaml"
CLEAN_MODELS = ("teacher", "student_baseline", "student_pruned", "student_final")
# The reference order (METHOD.md section 4): trained full-width student -> importance on it -> pruned network with
# its weights -> KD training of the pruned student (with the IoU branch) -> gate at inference.
STAGES = ("data", "teacher", "student_baseline", "importance", "prune", "finetune", "evaluate", "efficiency",
          "export", "report")
KILL_STAGE = "finetune"


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_compress(out: Path, *extra: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(COMPRESS), "--config", str(SMOKE), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(run folder, log of the resumed run, whether the kill hit mid-training) after a SIGKILL and a re-run."""
    out = tmp_path_factory.mktemp("compress") / "run"
    log_path = out.parent / "first.log"
    stage = out / "stages" / KILL_STAGE
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, str(COMPRESS), "--config", str(SMOKE), "--out", str(out)],
                                stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)
        deadline = time.monotonic() + 300
        try:
            # Kill once the stage's trainer has written its first epoch checkpoint (2 epochs: one is left).
            while not (stage / "train" / "checkpoints" / "last.pt").is_file():
                if proc.poll() is not None:
                    raise AssertionError(f"compress.py exited {proc.returncode} before {KILL_STAGE}:\n"
                                         f"{log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{KILL_STAGE} did not start within 300 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    mid_training = not (stage / "done.json").is_file()
    second = run_compress(out)
    assert second.returncode == 0, second.stderr[-4000:]
    return out, second.stderr, mid_training


@pytest.mark.slow
def test_resume_after_sigkill_skips_finished_stages(smoke):
    out, log, mid_training = smoke
    assert mid_training, "the kill came after the stage had finished: the resume path was not exercised"
    for name in ("data", "teacher", "student_baseline"):
        assert f"] {name}: skipped (done, config unchanged" in log, log[-3000:]
    assert f"] {KILL_STAGE}: " in log and "(resuming)" in log
    assert f"resuming the trainer from {out / 'stages' / KILL_STAGE / 'train' / 'checkpoints' / 'last.pt'}" in log
    for name in STAGES:
        marker = json.loads((out / "stages" / name / "done.json").read_text())
        assert marker["stage"] == name and len(marker["hash"]) == 16
    assert (out / "report.md").is_file() and (out / "config.yaml").is_file() and (out / "compress.log").is_file()


@pytest.mark.slow
def test_report_json_has_every_field(smoke):
    out = smoke[0]
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == list(CLEAN_MODELS)
    for key, m in report["models"].items():
        assert set(m) == {"ap3d_r40_moderate", "map3d_r40_moderate", "params", "gflops", "latency_ms"}, key
        assert set(m["ap3d_r40_moderate"]) == {"Car", "Pedestrian", "Cyclist"}
        aps = list(m["ap3d_r40_moderate"].values())
        assert all(isinstance(v, float) and 0.0 <= v <= 100.0 for v in aps)
        assert m["map3d_r40_moderate"] == pytest.approx(sum(aps) / 3)
        assert isinstance(m["params"], int) and m["params"] > 0
        assert m["gflops"] > 0
        assert 0 < m["latency_ms"]["p50"] <= m["latency_ms"]["p95"]
    models = report["models"]
    # the pruned students are physically smaller; student_pruned is the final model without its gate, and the IoU
    # branch adds one 1x1 conv (anchors per cell outputs) to the pruned network
    assert models["student_pruned"]["params"] < models["student_baseline"]["params"]
    assert models["student_pruned"]["gflops"] < models["student_baseline"]["gflops"]
    assert models["student_final"]["params"] == models["student_pruned"]["params"]
    assert models["teacher"]["params"] > models["student_baseline"]["params"]
    assert report["skipped"] == {}
    assert report["machine"]["threads"] == 1 and report["efficiency_frame"]["points"] > 1000
    prune = json.loads((out / "stages" / "prune" / "prune_report.json").read_text())
    assert 0 < models["student_pruned"]["params"] - prune["params_after"] < 1000
    for name in ("ap_vs_gflops", "ap_vs_latency", "widths"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "report.md").read_text()
    for key in CLEAN_MODELS:
        assert f"| {key} |" in table


@pytest.mark.slow
def test_distillation_diagnostics_are_logged_per_epoch(smoke):
    """report.json `diagnostics`: per epoch of the KD stage every loss part and its gradient norm, CaKD's selected
    positions, label assignment's accepted pseudo boxes and their precision against the ground truth."""
    out = smoke[0]
    report = json.loads((out / "report.json").read_text())
    epochs = report["diagnostics"]["training"]["finetune"]
    assert [e["epoch"] for e in epochs] == sorted({e["epoch"] for e in epochs}) and len(epochs) == 2
    for entry in epochs:
        assert set(entry["loss"]) >= {"total", "cls", "box", "dir", "cakd"}
        assert set(entry["grad_norm"]) >= {"cls", "box", "dir", "cakd"}
        assert entry["grad_norm"]["box"] > 0 and entry["grad_norm"]["cls"] > 0
        assert "cakd/selected_per_frame" in entry["kd"] and "label_assign/accepted_per_frame" in entry["kd"]
        if entry["kd"]["label_assign/accepted_per_frame"] > 0:
            precision = entry["pseudo_box_precision"]
            assert 0.0 <= precision["iou70"] <= precision["iou50"] <= 1.0
    assert "Distillation diagnostics" in (out / "report.md").read_text()
    assert "kd" not in report["diagnostics"]["training"]["student_baseline"][-1] or not \
        report["diagnostics"]["training"]["student_baseline"][-1]["kd"]


@pytest.mark.slow
def test_pruning_and_kd_start_from_the_trained_full_width_student(smoke):
    """Importance is scored on the trained no-KD student, the pruned network inherits its weights (every kept BN
    statistic is one of the trained student's), and the KD stage starts from the pruned network's weights."""
    import torch

    out = smoke[0]
    stages = out / "stages"
    trained = torch.load(stages / "student_baseline" / "model.pt", weights_only=True)
    pruned = torch.load(stages / "prune" / "model.pt", weights_only=True)
    checked = 0
    for name, value in pruned.items():
        if name.endswith("running_var") and value.numel() < trained[name].numel():
            assert torch.isin(value, trained[name]).all(), name  # kept channels, trained statistics
            checked += 1
    assert checked > 0
    importance = json.loads((stages / "importance" / "done.json").read_text())
    assert importance["summary"]["scored"] == "student_baseline"
    finetune = json.loads((stages / "finetune" / "done.json").read_text())
    assert finetune["summary"]["initial_weights"] == "prune"
    assert json.loads((stages / "student_baseline" / "done.json").read_text())["summary"]["initial_weights"] == "random"


@pytest.mark.slow
def test_final_student_bundle_loads_and_detects(smoke):
    import numpy as np
    import torch

    from clean_ros.inference.bundle import load_bundle
    from training.data.kitti_dataset import read_velodyne

    out = smoke[0]
    bundle = load_bundle(out / "bundle")
    cfg = bundle.detector_config
    assert cfg.head.iou_branch and cfg.postprocess.iou_gate.mode == "hard"
    assert bundle.manifest["provenance"]["pruning_ratio"] == pytest.approx(0.5)
    assert bundle.manifest["metrics"]["params"] == json.loads((out / "report.json").read_text())[
        "models"]["student_final"]["params"]
    # the training split's intensity level, for the automatic intensity scale of other sensors
    from clean_ros.inference.intensity_level import dataset_intensity_level
    from training.bundle_fields import split_scans

    data_root = out / "stages" / "data" / "dataset"
    assert bundle.intensity_level == pytest.approx(dataset_intensity_level(split_scans(data_root, "train")[1]),
                                                   abs=1e-6)
    # and its ground as the mount check measures it (the node's ground_check / auto_sensor_mount compare with it)
    from clean_ros.inference.ground_plane import dataset_ground_height

    assert "ground_height" in bundle.manifest
    assert bundle.ground_height == pytest.approx(dataset_ground_height(split_scans(data_root, "train")[1]), abs=1e-6)
    detector = bundle.build_detector()
    stored = torch.load(out / "stages" / "finetune" / "model.pt", weights_only=True)
    for name, tensor in detector.state_dict().items():
        assert torch.equal(tensor, stored[name]), name
    # its widths are the pruned ones, not the student YAML's
    pruned_cfg = (out / "stages" / "prune" / "model.yaml").read_text()
    assert str(cfg.bev_backbone.layer_widths[0][0]) in pruned_cfg
    from training.data.loader import Collator
    from training.efficiency import _sample

    scan = sorted((out / "stages" / "data" / "dataset" / "training" / "velodyne").glob("*.bin"))[0]
    batch = Collator.from_config(cfg, training=False)([_sample(read_velodyne(scan))])
    from clean_ros.inference.postprocess import postprocess

    with torch.no_grad():
        detections = postprocess(detector.eval()(batch.voxels, 1), cfg)
    assert len(detections) == 1 and np.isfinite(detections[0].boxes.numpy() if hasattr(
        detections[0].boxes, "numpy") else detections[0].boxes).all()


@pytest.mark.slow
def test_rerun_without_changes_skips_every_stage(smoke):
    out = smoke[0]
    before = (out / "report.json").stat().st_mtime_ns
    proc = run_compress(out, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for index, name in enumerate(STAGES, 1):
        assert f"[{index}/{len(STAGES)}] {name}: skipped (done, config unchanged" in proc.stderr
    assert (out / "report.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_changed_value_reruns_that_stage_and_its_dependants_only(smoke):
    out = smoke[0]
    proc = run_compress(out, "--set", "efficiency.repeats=2", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in STAGES[:STAGES.index("evaluate") + 1]:
        assert f"] {name}: skipped (done" in proc.stderr, name
    for name in ("efficiency", "export", "report"):
        assert f"] {name}: skipped" not in proc.stderr and f"] {name}: " in proc.stderr, name
    efficiency = json.loads((out / "stages" / "efficiency" / "efficiency.json").read_text())
    assert efficiency["repeats"] == 2 and all(m["runs"] == 2 for m in efficiency["models"].values())


@pytest.mark.parametrize("extra, message", [
    (["--set", "prune.keep_ratio=1.5"], "prune.keep_ratio must be in (0, 1]"),
    (["--set", "prune.no_such_key=1"], "no_such_key"),
    (["--set", "teacher.config=config/train/missing.yaml"], "teacher.config config/train/missing.yaml: file not found"),
    (["--set", "data.source=kitti", "--set", "data.root=/nonexistent/kitti"], "data.root /nonexistent/kitti"),
    (["--set", "iou_refine.gate.mode=none"], "iou_refine.gate.mode"),
    (["--force", "nonsense"], "--force nonsense: no such stage"),
    pytest.param(["--set", "training.device=cuda"], "training.device=cuda: no CUDA device available",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device exists")),
])
def test_bad_config_exits_2_with_one_clear_line(tmp_path, extra, message):
    proc = run_compress(tmp_path / "run", *extra, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "stages").exists()  # nothing was started


def test_missing_config_file_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, str(COMPRESS), "--config", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, timeout=60, env=_env(), cwd=REPO)
    assert proc.returncode == 2 and "nope.yaml: config file not found" in proc.stderr


def test_stage_store_hashes_skip_force_and_dependants(tmp_path):
    """The resumable-stage bookkeeping on its own: skip when unchanged, re-run a changed stage and its
    dependants, --force re-runs a stage and (new run_id) its dependants."""
    from training.compression.stage_store import Stage, StageStore

    calls: list[str] = []

    def stages(value_a: int, value_b: int):
        def make(name):
            def run(folder: Path) -> dict:
                calls.append(name)
                (folder / "out.txt").write_text(name)
                return {"name": name}
            return run
        return [Stage("a", "first", make("a"), {"v": value_a}),
                Stage("b", "second", make("b"), {"v": value_b}, ("a",)),
                Stage("c", "third", make("c"), {}, ("b",))]

    lines: list[str] = []
    store = StageStore(tmp_path, log=lines.append)
    store.run_all(stages(1, 1))
    assert calls == ["a", "b", "c"]
    StageStore(tmp_path, log=lines.append).run_all(stages(1, 1))
    assert calls == ["a", "b", "c"]  # nothing re-ran
    StageStore(tmp_path, log=lines.append).run_all(stages(1, 2))
    assert calls == ["a", "b", "c", "b", "c"]  # b changed: b and its dependant c
    store = StageStore(tmp_path, log=lines.append)
    store.force(["a"])
    store.run_all(stages(1, 2))
    assert calls[-3:] == ["a", "b", "c"]
    assert (tmp_path / "stages" / "c" / "out.txt").read_text() == "c"


def test_a_stale_stage_linked_from_another_run_is_unlinked_not_emptied(tmp_path):
    """Runs share finished stages by symlink (docs/RELEASE.md). When a linked stage is stale in the new run (a value
    it reads changed), the new run drops the link and computes its own; the other run's result stays whole. Before,
    the wipe raised 'Cannot call rmtree on a symbolic link' as a traceback. --force on a linked stage does the same."""
    from training.compression.stage_store import Stage, StageStore

    def stages(value: int):
        def run(folder: Path) -> dict:
            (folder / "out.txt").write_text(f"v{value}")
            return {}
        return [Stage("a", "first", run, {"v": value})]

    first, second = tmp_path / "first", tmp_path / "second"
    StageStore(first, log=lambda _: None).run_all(stages(1))
    (second / "stages").mkdir(parents=True)
    (second / "stages" / "a").symlink_to(first / "stages" / "a")
    StageStore(second, log=lambda _: None).run_all(stages(1))  # same hash: the linked result is reused
    assert (second / "stages" / "a").is_symlink()
    StageStore(second, log=lambda _: None).run_all(stages(2))  # stale: a folder of its own
    assert not (second / "stages" / "a").is_symlink()
    assert (second / "stages" / "a" / "out.txt").read_text() == "v2"
    assert (first / "stages" / "a" / "out.txt").read_text() == "v1" and (first / "stages" / "a" / "done.json").is_file()
    (second / "stages" / "a").rename(tmp_path / "moved")
    (second / "stages" / "a").symlink_to(first / "stages" / "a")
    store = StageStore(second, log=lambda _: None)
    store.force(["a"])
    assert not (second / "stages" / "a").exists() and (first / "stages" / "a" / "out.txt").read_text() == "v1"


def test_second_process_on_the_same_run_folder_is_refused(tmp_path):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with (out / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running compress.py holds it
        proc = run_compress(out, timeout=120)
    assert proc.returncode == 2 and "another training/compress.py is already running" in proc.stderr
    assert not (out / "stages").exists()


def test_until_stops_after_that_stage(tmp_path):
    """--until data: the data stage runs (and is kept, resumable), nothing after it; an unknown stage is one line."""
    out = tmp_path / "run"
    proc = run_compress(out, "--until", "data", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "stages" / "data" / "done.json").is_file()
    assert not (out / "stages" / "teacher").exists() and not (out / "report.md").exists()
    assert "stopped after data (--until)" in (out / "compress.log").read_text()
    proc = run_compress(tmp_path / "other", "--until", "nosuch", timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --until nosuch: no such stage; stages: data")
    assert not (tmp_path / "other").exists()


def test_simulated_data_gets_disjoint_train_val_and_test_splits(tmp_path):
    """Tune on val, report on holdout: the data stage splits the held-out frames into both and reports on holdout."""
    from clean_ros.yaml_config import load_config
    from training.compression.compress_config import CompressConfig
    from training.compression.run_context import CompressRun
    from training.compression.stage_data import prepare_data

    cfg = load_config(CompressConfig, data={"data": {"report_split": "holdout", "simulate": {
        "frames": 12, "val_fraction": 0.5, "test_frames": 4, "overrides": {"sensor": {"azimuth_resolution_deg": 2.0}}}}})
    run = CompressRun(cfg, tmp_path / "run", log=lambda line: None, progress=False)
    folder = tmp_path / "run" / "stages" / "data"
    folder.mkdir(parents=True)
    summary = prepare_data(run, folder)
    sets = {name: (run.data_root / "ImageSets" / f"{name}.txt").read_text().split()
            for name in ("train", "val", "holdout")}
    assert [len(sets[n]) for n in ("train", "val", "holdout")] == [6, 2, 4]
    assert not (set(sets["train"]) & set(sets["val"]) or set(sets["train"]) & set(sets["holdout"])
                or set(sets["val"]) & set(sets["holdout"]))
    assert summary["frames"] == {"train": 6, "val": 2, "holdout": 4}
    from training.compression.stage_data import simulated_splits

    # scale_splits derives a reference's splits from its config alone: they must be the ones the stage wrote
    assert simulated_splits(cfg.data.simulate, cfg.data.report_split) == sets
    from clean_ros.models.detector_config import load_detector_config
    from training.config_paths import find_config

    student_cfg = load_detector_config(find_config("pointpillars_tiny"))
    assert list(run.datasets.split(cfg.data.eval_split, student_cfg).frame_ids) == sets["holdout"]


def test_test_frames_must_leave_validation_frames():
    from clean_ros.yaml_config import ConfigError, load_config
    from training.compression.compress_config import CompressConfig

    with pytest.raises(ConfigError, match="test_frames"):
        load_config(CompressConfig, data={"data": {"simulate": {"frames": 10, "val_fraction": 0.4, "test_frames": 4}}})


@pytest.mark.slow
def test_a_seeded_training_stage_repeats_exactly_whatever_ran_before(tmp_path):
    """Issue 13 item 6: two identical runs gave different teachers because the model was built from whatever RNG
    state earlier stages left. Each training stage now seeds before building its model: the teacher stage run after
    different amounts of earlier random work gives bit-identical weights."""
    import torch

    from clean_ros.yaml_config import load_config
    from training.compression.compress_config import CompressConfig
    from training.compression.run_context import CompressRun
    from training.compression.stage_data import prepare_data
    from training.compression.stage_teacher import teacher

    cfg = load_config(CompressConfig, SMOKE, ["data.simulate.frames=4", "data.simulate.val_fraction=0.5"])
    run = CompressRun(cfg, tmp_path / "run", log=lambda line: None, progress=False)
    (tmp_path / "run" / "stages" / "data").mkdir(parents=True)
    prepare_data(run, tmp_path / "run" / "stages" / "data")
    weights = []
    for draws in (3, 11):
        torch.rand(draws)  # earlier work consumed the global generator differently
        folder = tmp_path / f"teacher_{draws}"
        folder.mkdir()
        teacher(run, folder)
        weights.append(torch.load(folder / "model.pt", weights_only=True))
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_bundle_records_the_simulated_sensor_height():
    """The exported bundle's sensor_height is the simulated sensor's mount (what infer / the node move a user's
    mount to); a KITTI root leaves the bundle default (None here)."""
    from types import SimpleNamespace

    from clean_ros.yaml_config import load_config
    from training.compression.compress_config import CompressConfig
    from training.compression.stage_outputs import _training_sensor_height

    cfg = load_config(CompressConfig, SMOKE, ["data.simulate.overrides={sensor: {mount_height: 1.95}}"])
    assert _training_sensor_height(SimpleNamespace(cfg=cfg)) == pytest.approx(1.95)
    cfg = load_config(CompressConfig, SMOKE, [])
    assert _training_sensor_height(SimpleNamespace(cfg=cfg)) == pytest.approx(1.73)
    cfg = load_config(CompressConfig, SMOKE, ["data.source=kitti", "data.root=/nonexistent"])
    assert _training_sensor_height(SimpleNamespace(cfg=cfg)) is None


def test_epoch_diagnostics_keep_the_last_row_of_a_repeated_epoch(tmp_path):
    """A kill between an epoch's row and its checkpoint repeats that epoch on resume: one entry per epoch, the last."""
    from training.compression.report_rows import epoch_diagnostics

    path = tmp_path / "epochs.csv"
    path.write_text("epoch,step,loss_total\n0,3,2.0\n0,3,1.5\n1,6,1.0\n")
    entries = epoch_diagnostics(path)
    assert [e["epoch"] for e in entries] == [0, 1]
    assert [e["loss"]["total"] for e in entries] == [1.5, 1.0]
