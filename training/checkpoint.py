"""Training checkpoints: everything needed to continue a run exactly, in a file that cannot run code when loaded.

A checkpoint is one `torch.save` of plain containers (dict / list / tuple / str / int / float / bool / None) and
tensors only, read back with `torch.load(weights_only=True)`: a pickle that asks to build any other object (a
malicious `__reduce__`, a custom class) is refused by torch's restricted unpickler before anything runs.

Keys (format "clean_ros.train_checkpoint", version 1):
  model         detector state_dict (tensors)
  loss_terms    {term name: state_dict} of trainable extra loss terms (adapters of feature KD, PointDistiller, ...)
  optimizer     torch optimizer state_dict
  scheduler     LR scheduler state_dict
  scaler        GradScaler state_dict ({} when AMP is off)
  rng           {"python": [...], "numpy": {...}, "torch": uint8 tensor, "cuda": [uint8 tensors]}
  epoch         epoch to continue in (0-based)
  iteration     batches of that epoch already done (0 = start of the epoch)
  global_step   optimiser steps done in total
  world_size    processes of the run that wrote it (the data order depends on it)
  best_metric   best evaluation metric so far (mAP 3D moderate R40), -1 if none
  metrics       last evaluation results {name: float}
  config        the resolved TrainConfig as YAML text
"""
from __future__ import annotations

import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clean_ros.atomic import atomic_open

FORMAT = "clean_ros.train_checkpoint"
VERSION = 1
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (missing, refused, wrong format); the message says which and why."""


@dataclass
class TrainingState:
    """Where a run stands; what `Trainer` writes and reads besides the module / optimiser states."""

    epoch: int = 0
    iteration: int = 0
    global_step: int = 0
    world_size: int = 1
    best_metric: float = -1.0
    metrics: dict[str, float] = field(default_factory=dict)
    # wall seconds of training behind this state, summed over every session of a resumed run (work lost to a kill
    # after the last checkpoint is not counted: the next session repeats it)
    train_seconds: float = 0.0


# --------------------------------------------------------------------------- RNG states as plain values
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (CPU and every CUDA device) generator states as tensors / lists / ints."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal.tolist()), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            cuda = cuda[: torch.cuda.device_count()]
        for device, s in enumerate(cuda):
            torch.cuda.set_rng_state(s, device)


# --------------------------------------------------------------------------- save / load
def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)
    return path


def read_weights_only(path: str | Path) -> Any:
    """torch.load with torch's restricted (weights-only) unpickler; CheckpointError (file: what is wrong) for a
    missing, unreadable or refused file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: refused: the file asks to build objects other than tensors and plain "
                              f"containers (weights-only load): {first}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint: {exc}") from None


def build_checkpoint(*, model_state: dict, loss_terms: dict[str, dict], optimizer_state: dict, scheduler_state: dict,
                     scaler_state: dict, state: TrainingState, config_yaml: str,
                     rng: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT, "version": VERSION,
        "model": model_state, "loss_terms": loss_terms, "optimizer": optimizer_state, "scheduler": scheduler_state,
        "scaler": scaler_state, "rng": capture_rng_state() if rng is None else rng,
        "epoch": int(state.epoch), "iteration": int(state.iteration), "global_step": int(state.global_step),
        "world_size": int(state.world_size), "best_metric": float(state.best_metric),
        "metrics": {str(k): float(v) for k, v in state.metrics.items()},
        "train_seconds": float(state.train_seconds),
        "config": config_yaml,
    }


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with torch's restricted (weights-only) unpickler and check its format."""
    path = Path(path)
    ckpt = read_weights_only(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a clean_ros training checkpoint (missing format {FORMAT!r})")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} is not supported (expected {VERSION})")
    return ckpt


def training_state(ckpt: dict[str, Any]) -> TrainingState:
    return TrainingState(epoch=int(ckpt["epoch"]), iteration=int(ckpt["iteration"]),
                         global_step=int(ckpt["global_step"]), world_size=int(ckpt.get("world_size", 1)),
                         best_metric=float(ckpt.get("best_metric", -1.0)), metrics=dict(ckpt.get("metrics", {})),
                         train_seconds=float(ckpt.get("train_seconds", 0.0)))


def resolve_resume_path(target: str | Path) -> Path:
    """--resume accepts a run folder (-> its checkpoints/last.pt) or a checkpoint file."""
    target = Path(target)
    if target.is_dir():
        candidate = target / CHECKPOINT_DIR / LAST_NAME
        if not candidate.is_file():
            raise CheckpointError(f"{target}: run folder has no checkpoint to resume from "
                                  f"(expected {candidate})")
        return candidate
    if not target.exists():
        raise CheckpointError(f"{target}: no such run folder or checkpoint file")
    return target


def load_model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Model weights from a training checkpoint, or from a weights-only file holding a bare state_dict."""
    path = Path(path)
    obj = read_weights_only(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj["model"]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(f"{path}: neither a training checkpoint nor a state_dict of tensors")


__all__ = ["CheckpointError", "TrainingState", "capture_rng_state", "restore_rng_state", "atomic_torch_save",
           "read_weights_only", "build_checkpoint", "load_checkpoint", "training_state", "resolve_resume_path",
           "load_model_weights", "LAST_NAME", "BEST_NAME", "CHECKPOINT_DIR"]
