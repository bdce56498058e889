"""Resumable stages: each stage owns runs/NAME/stages/<stage>/ and is finished when its done-marker holds the
stage's current hash.

    stage folder              what is in it
      started.json            {"hash": ...} written when the stage starts (a killed stage restarts or resumes)
      train/                  a training stage's trainer run folder (checkpoints/last.pt: resumed if the hash agrees)
      ...                     the stage's outputs, each written atomically (temp name + rename)
      done.json               {"hash", "run_id", "seconds", "finished_utc", "summary"}: written last, atomically

A stage's hash = sha256 of the config sections it reads + the run_ids of the stages it depends on, so a changed
value re-runs that stage and everything downstream, and a forced re-run of a stage (new run_id) re-runs its
dependants too. A started stage whose hash differs (config changed since) is wiped before it runs again.
A stage folder may be a symlink to another run's (to reuse a finished result); when stale or forced it is
unlinked, never emptied.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from clean_ros import atomic
from clean_ros.yaml_config import to_dict
from training.distributed import DistContext


def atomic_write_text(path: Path, text: str) -> Path:
    """clean_ros.atomic's write, creating the stage folder first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic.atomic_write_text(path, text)


def atomic_write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic.atomic_write_json(path, data)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def config_hash(parts: dict[str, Any]) -> str:
    text = json.dumps(to_dict(parts), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60:02d}:{seconds % 60:02d}"


@dataclass
class Stage:
    """One step of the pipeline. config: the config values it reads (hashed); deps: stages it needs;
    run(ctx, folder) -> summary dict (JSON-safe) stored in done.json; cost: work units for the ETA (e.g.
    frames x epochs of a training stage), unit: which measured rate applies ("teacher", "student", "fixed")."""

    name: str
    title: str
    run: Callable[[Path], dict]
    config: dict[str, Any] = field(default_factory=dict)
    deps: tuple[str, ...] = ()
    cost: float = 0.0
    unit: str = "fixed"
    parallel: bool = False  # under torchrun the body runs on every rank (it shards its work), else on rank 0 only


class StageSkipped(Exception):
    """Raised by a stage that cannot run yet (a part that has not landed); the reason goes into the report."""


class StageStore:
    def __init__(self, root: Path, log: Callable[[str], None] = print, ctx: DistContext | None = None):
        self.root = Path(root)
        self.ctx = ctx or DistContext()  # torchrun: every rank has a store over the same (shared) run folder
        self.folder = self.root / "stages"
        self.log = log
        self.start = time.perf_counter()
        self.rates: dict[str, float] = {}  # unit -> seconds per cost unit, measured in this run
        self.summaries: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def stage_dir(self, name: str) -> Path:
        return self.folder / name

    def done(self, name: str) -> dict | None:
        return read_json(self.stage_dir(name) / "done.json")

    def hash_of(self, stage: Stage) -> str:
        dep_ids = {}
        for dep in stage.deps:
            marker = self.done(dep)
            dep_ids[dep] = marker["run_id"] if marker else None
        return config_hash({"stage": stage.name, "config": stage.config, "deps": dep_ids})

    def force(self, names: list[str]) -> None:
        for name in names:  # the whole folder: a forced stage starts afresh (no trainer checkpoint resumed)
            _clear_stage_folder(self.stage_dir(name))

    def run_all(self, stages: list[Stage]) -> None:
        """Run the stages in order. Under torchrun every rank calls this: rank 0 alone decides (skip / run), prepares
        the stage folder and writes the markers; a `parallel` stage's body runs on every rank (data-parallel
        training, sharded scoring and evaluation), any other stage's on rank 0 while the others wait."""
        ctx = self.ctx
        total = len(stages)
        for index, stage in enumerate(stages, 1):
            folder = self.stage_dir(stage.name)
            plan = self._plan(stage, index, total, stages) if ctx.is_main else None
            plan = ctx.broadcast_object(plan)  # also the sync point: rank 0 has prepared the folder
            if plan["action"] == "skip":
                self.summaries[stage.name] = plan["summary"]
                self.seconds[stage.name] = plan["seconds"]
                continue
            tic = time.perf_counter()
            summary: dict = {}
            if stage.parallel or ctx.is_main:
                try:
                    summary = stage.run(folder) or {}
                except StageSkipped as exc:
                    summary = {"skipped": str(exc)}
                    self.log(f"    skipped: {exc}")
            ctx.barrier()  # every rank has finished the stage's body (rank 0's outputs are complete)
            seconds = time.perf_counter() - tic
            if stage.cost > 0 and stage.unit != "fixed" and not plan["resumed"]:
                self.rates[stage.unit] = seconds / stage.cost
            if ctx.is_main:
                atomic_write_json(folder / "done.json", {
                    "stage": stage.name, "hash": plan["hash"], "run_id": uuid.uuid4().hex,
                    "seconds": round(seconds, 2), "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "summary": summary})
                self.log(f"    {stage.name} finished in {fmt_seconds(seconds)}")
            self.summaries[stage.name] = ctx.broadcast_object(summary)
            self.seconds[stage.name] = seconds

    def _plan(self, stage: Stage, index: int, total: int, stages: list[Stage]) -> dict:
        """(rank 0) skip a done stage whose hash agrees; else prepare its folder (wiped when stale) for a run."""
        folder = self.stage_dir(stage.name)
        digest = self.hash_of(stage)
        marker = self.done(stage.name)
        if marker and marker.get("hash") == digest:
            self.log(f"[{index}/{total}] {stage.name}: skipped (done, config unchanged; "
                     f"took {fmt_seconds(marker.get('seconds', 0))} then)")
            return {"action": "skip", "summary": marker.get("summary", {}),
                    "seconds": float(marker.get("seconds", 0.0))}
        started = read_json(folder / "started.json")
        if folder.exists() and (started is None or started.get("hash") != digest or marker):
            _clear_stage_folder(folder)  # stale: another config, or a finished result we are told to redo
        resumed = folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "started.json", {"hash": digest, "stage": stage.name})
        elapsed = time.perf_counter() - self.start
        eta = self._eta(stages[index - 1:])
        self.log(f"[{index}/{total}] {stage.name}: {stage.title}{' (resuming)' if resumed else ''} | elapsed "
                 f"{fmt_seconds(elapsed)} | ETA {eta}")
        return {"action": "run", "hash": digest, "resumed": resumed}

    def _eta(self, remaining: list[Stage]) -> str:
        total = 0.0
        for stage in remaining:
            if stage.unit == "fixed" or stage.cost <= 0:
                continue
            rate = self.rates.get(stage.unit) or self.rates.get("student")
            if rate is None:
                return "unknown until the first training stage finishes"
            total += rate * stage.cost
        return f"~{fmt_seconds(total)} for the training stages left"


def _clear_stage_folder(folder: Path) -> None:
    """Make way for a fresh run of a stage. A stage folder linked from another run (to reuse its finished result)
    is unlinked, never emptied: the other run keeps its result, and this run computes its own."""
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)


def progress_enabled() -> bool:
    return sys.stderr.isatty()


__all__ = ["Stage", "StageStore", "StageSkipped", "atomic_write_json", "atomic_write_text", "read_json",
           "config_hash", "fmt_seconds", "progress_enabled"]
