"""The run folder and its logs (written by rank 0 only).

runs/NAME/
  config.yaml              the resolved TrainConfig, written at start (atomically)
  train.log                the console messages, timestamped
  losses.csv               one row per logged iteration: epoch, iteration, step, lr, beta1, losses, s/it
  epochs.csv               one row per epoch: mean losses, LR at the end, evaluation metrics, seconds (written before the
                           epoch's checkpoint: an epoch repeated after a kill has two rows; the last counts)
  tensorboard/             SummaryWriter scalars (loss/*, lr, eval/*)
  checkpoints/             last.pt, best.pt, epoch_XXXX.pt
"""
from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import Any, Mapping

from clean_ros.atomic import atomic_open
from clean_ros.yaml_config import save_yaml

LOGGER_NAME = "clean_ros.train"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logging(log_file: Path | None, enabled: bool) -> logging.Logger:
    """Console (stderr) + optional file handler; a disabled logger (non-zero rank) prints warnings only."""
    logger = get_logger()
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file is not None and enabled:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    return logger


class CsvLog:
    """Append rows to a CSV file; the header is the first row's keys (later rows may add none). Survives resume."""

    def __init__(self, path: Path):
        self.path = path
        self.fields: list[str] | None = None
        if path.is_file() and path.stat().st_size:
            with path.open(newline="") as handle:
                self.fields = next(csv.reader(handle), None)

    def write(self, row: Mapping[str, Any]) -> None:
        if self.fields is None:
            self.fields = list(row)
            with self.path.open("w", newline="") as handle:
                csv.writer(handle).writerow(self.fields)
        extra = [k for k in row if k not in self.fields]
        if extra:  # a new column (e.g. a metric that appears later): rewrite the file with the wider header
            self._widen(extra)
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.fields, restval="").writerow(
                {k: _fmt(v) for k, v in row.items()})

    def _widen(self, extra: list[str]) -> None:
        with self.path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        self.fields = [*self.fields, *extra]
        with atomic_open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields, restval="")
            writer.writeheader()
            writer.writerows(rows)


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


class RunDir:
    """Paths and writers of one run; `enabled=False` (ranks > 0) makes every write a no-op."""

    def __init__(self, root: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.root = Path(root)
        self.enabled = enabled
        self.checkpoints = self.root / "checkpoints"
        self._tensorboard = tensorboard
        self._writer = None
        self.losses: CsvLog | None = None
        self.epochs: CsvLog | None = None
        if enabled:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            self.losses = CsvLog(self.root / "losses.csv")
            self.epochs = CsvLog(self.root / "epochs.csv")

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log_file(self) -> Path:
        return self.root / "train.log"

    def save_config(self, cfg) -> None:
        if self.enabled:
            save_yaml(cfg, self.config_path)

    @property
    def writer(self):
        if not (self.enabled and self._tensorboard):
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow import

            self._writer = SummaryWriter(log_dir=str(self.root / "tensorboard"))
        return self._writer

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        writer = self.writer
        if writer is None:
            return
        for key, value in values.items():
            writer.add_scalar(f"{prefix}{key}", float(value), step)

    def log_iteration(self, row: Mapping[str, Any]) -> None:
        if self.losses is not None:
            self.losses.write(row)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        if self.epochs is not None:
            self.epochs.write(row)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


__all__ = ["RunDir", "CsvLog", "setup_logging", "get_logger"]
