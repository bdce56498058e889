"""`torchrun training/compress.py` (issue 17): two gloo processes on the CPU against one process with the same global
batch, on config/compress/smoke.yaml with the shipped teacher (loaded, so every trained model is deterministic).

- The two-process run is killed (SIGKILL to the whole process group) in the middle of the finetune stage and started
  again with the same command: it resumes from the stage's trainer checkpoint on every rank and completes.
- Its models equal the one-process run's within the DDP tolerance of training/trainer.py (float summation order).
- Side effects happen once, on rank 0: one report, one bundle, one log that says the run had 2 ranks.
- Ranks with different configs stop at once with one line (training.compression.ranks, two spawned processes).
Budget: about 3-4 minutes on the shared 2-core machine.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]
COMPRESS = REPO / "training" / "compress.py"
SMOKE = REPO / "config" / "compress" / "smoke.yaml"
TEACHER = REPO / "models" / "teacher"
# the shipped teacher (inference only: deterministic), the global batch of 2 split over the ranks
COMMON = ["--set", f"teacher.checkpoint={TEACHER}", "--no-progress"]
TRAINED = ("student_baseline", "finetune")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
            "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{_free_port()}", str(COMPRESS),
            "--config", str(SMOKE), "--out", str(out), *COMMON, "--set", "training.batch_size=1"]


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its ranks in sessions of their own, so killpg misses them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and both ranks at once, as a crash or an out-of-memory kill would."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)


def _weights(run: Path, stage: str) -> dict[str, torch.Tensor]:
    return torch.load(run / "stages" / stage / "model.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(one-process run, two-process run, log of the resumed two-process run, killed mid-training)."""
    root = tmp_path_factory.mktemp("ddp")
    single = root / "single"
    one = subprocess.run([sys.executable, str(COMPRESS), "--config", str(SMOKE), "--out", str(single), *COMMON,
                          "--set", "training.batch_size=2"], capture_output=True, text=True, timeout=600,
                         env=_env(), cwd=REPO)
    assert one.returncode == 0, one.stderr[-4000:]

    ddp = root / "ddp"
    checkpoint = ddp / "stages" / "finetune" / "train" / "checkpoints" / "last.pt"
    log_path = root / "ddp_first.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(_torchrun(ddp), stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)
        deadline = time.monotonic() + 400
        try:
            while not checkpoint.is_file():  # the finetune stage's first epoch checkpoint (2 epochs: one is left)
                if proc.poll() is not None:
                    raise AssertionError(f"torchrun exited {proc.returncode} before finetune:\n"
                                         f"{log_path.read_text()[-4000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"finetune did not start within 400 s:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.05)
            _kill_tree(proc)
        finally:
            if proc.poll() is None:
                _kill_tree(proc)
    killed_mid_training = not (ddp / "stages" / "finetune" / "done.json").is_file()
    again = subprocess.run(_torchrun(ddp), capture_output=True, text=True, timeout=600, env=_env(), cwd=REPO)
    # on failure: the ranks' own tracebacks come before torchrun's summary, so show a long tail of both streams
    assert again.returncode == 0, again.stdout[-8000:] + again.stderr[-16000:]
    return single, ddp, again.stdout + again.stderr, killed_mid_training


@pytest.mark.slow
def test_killed_ddp_run_resumes_the_stage_on_every_rank(runs):
    _, ddp, log, killed_mid_training = runs
    assert killed_mid_training
    for stage in ("data", "teacher", "student_baseline", "importance", "prune"):
        assert f"{stage}: skipped (done, config unchanged" in log, stage
    assert "resuming the trainer from" in log and "finetune" in log
    assert json.loads((ddp / "stages" / "finetune" / "done.json").read_text())["stage"] == "finetune"


@pytest.mark.slow
def test_two_processes_train_the_same_models_as_one(runs):
    single, ddp, _, _ = runs
    for stage in TRAINED:
        a, b = _weights(single, stage), _weights(ddp, stage)
        assert a.keys() == b.keys()
        for name in a:
            if a[name].is_floating_point():
                torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4, msg=f"{stage}: {name}")
            else:
                assert torch.equal(a[name], b[name]), f"{stage}: {name}"
    # importance: every training frame scored once over the ranks, sums reduced -> the same scores
    imp_a = torch.load(single / "stages" / "importance" / "importance.pt", weights_only=True)
    imp_b = torch.load(ddp / "stages" / "importance" / "importance.pt", weights_only=True)
    assert imp_a["num_frames"] == imp_b["num_frames"] == 2
    for name in imp_a["scores"]:
        torch.testing.assert_close(imp_b["scores"][name], imp_a["scores"][name], rtol=1e-3, atol=1e-6)
    # evaluation: sharded and gathered -> every held-out frame once
    metrics_a = json.loads((single / "stages" / "evaluate" / "metrics.json").read_text())
    metrics_b = json.loads((ddp / "stages" / "evaluate" / "metrics.json").read_text())
    assert metrics_a.keys() == metrics_b.keys()
    for key in metrics_a:
        assert metrics_b[key]["frames"] == metrics_a[key]["frames"] == 2
    assert metrics_b["teacher"]["map3d_r40_moderate"] == metrics_a["teacher"]["map3d_r40_moderate"]


@pytest.mark.slow
def test_rank_zero_alone_writes_the_run_files(runs):
    _, ddp, _, _ = runs
    assert (ddp / "report.json").is_file() and (ddp / "bundle" / "manifest.json").is_file()
    assert sorted(p.name for p in ddp.iterdir() if p.name.startswith("report")) == ["report.json", "report.md"]
    log = (ddp / "compress.log").read_text()
    assert "2 ranks (torchrun)" in log
    # one writer: each stage's start line appears once per launch (2 launches: killed + resumed), never doubled
    assert log.count("] data:") == 2
    report = json.loads((ddp / "report.json").read_text())
    assert {"teacher", "student_baseline", "student_pruned", "student_final"} <= set(report["models"])


def _disagreeing_rank(rank: int, port: int, queue) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    from clean_ros.yaml_config import load_config
    from training.compression.compress_config import CompressConfig
    from training.compression.ranks import RanksDisagree, start_ranks
    from training.distributed import cleanup_distributed

    cfg = load_config(CompressConfig, SMOKE, [f"training.seed={rank}"])  # rank 1 was given another --set
    try:
        start_ranks(cfg, "cpu")
        queue.put((rank, "started"))
    except RanksDisagree as exc:
        queue.put((rank, str(exc)))
    finally:
        cleanup_distributed()


def test_ranks_with_different_configs_stop_with_one_line():
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_disagreeing_rank, args=(rank, port, queue)) for rank in (0, 1)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert set(results) == {0, 1}
    for rank, message in results.items():
        assert message.startswith("torchrun rank 1 has another resolved config"), (rank, message)
        assert "\n" not in message
