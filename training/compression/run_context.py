"""CompressRun: what every stage body reads. The compression config, the run folder and its stage folders, the
dataset (builder), the device, the process group (`ctx`: one process, or a torchrun rank), the log, and each training
stage's TrainConfig."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from clean_ros.models.detector_config import DetectorConfig
from clean_ros.yaml_config import ConfigError
from training.compression.compress_config import CompressConfig
from training.compression.datasets import DatasetBuilder
from training.compression.train_configs import stage_train_config
from training.distributed import DistContext


class CompressRun:
    def __init__(self, cfg: CompressConfig, root: Path, log: Callable[[str], None], progress: bool,
                 ctx: DistContext | None = None):
        self.cfg = cfg
        self.ctx = ctx or DistContext()
        self.root = Path(root)
        self.stages_dir = self.root / "stages"
        self.log = log  # compress.py points it at the run's logger once the run folder exists
        self.progress = progress
        self.datasets = DatasetBuilder(cfg.data, self.data_root, lambda line: self.log(line))
        self._device: torch.device | None = None

    @property
    def data_root(self) -> Path:
        return self.cfg.data.root_in(self.root)

    @property
    def device(self) -> torch.device:
        if self._device is None:
            want = self.cfg.training.device
            use_cuda = torch.cuda.is_available() if want == "auto" else want == "cuda"
            if use_cuda and not torch.cuda.is_available():
                raise ConfigError("training.device=cuda: no CUDA device available")
            self._device = torch.device("cuda", self.ctx.local_rank) if use_cuda else torch.device("cpu")
        return self._device

    def stage_dir(self, stage: str) -> Path:
        return self.stages_dir / stage

    def train_config(self, yaml_path: str, epochs: int, stage_set: list[str], model_cfg: DetectorConfig | None = None):
        """The stage's TrainConfig (training.compression.train_configs)."""
        return stage_train_config(self.cfg, self.data_root, self.stages_dir, yaml_path, epochs, stage_set, model_cfg)


__all__ = ["CompressRun"]
