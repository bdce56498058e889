"""TrainConfig: everything one training run needs, loaded from one YAML (with `_base_`) plus `--set` overrides.

The model and data sections are the project's own dataclasses (DetectorConfig, DataConfig, AugmentConfig), so
the resolved config saved with a run (runs/NAME/config.yaml) records every value used, model widths included.
A training YAML usually pulls its model in by reference:

    model:
      _base_: ../pointpillars_tiny.yaml     # relative to this file
    data: {root: data/sim}

The model is the source of truth for the point-cloud range and class names; the data section follows it (a data
value that is set and differs from the model is an error, not silently replaced).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from clean_ros.yaml_config import ConfigError, load_config
from clean_ros.models.detector_config import DetectorConfig
from clean_ros.models.two_stage_config import TwoStageConfig
from training.data.data_config import AugmentConfig, DataConfig

_DATA_DEFAULTS = DataConfig()


@dataclass
class OptimizerConfig:
    """AdamW + one-cycle LR (METHOD.md section 1): LR rises from lr_max/div_factor to lr_max over pct_start of the
    steps, then anneals to lr_max/(div_factor*final_div_factor); Adam beta1 cycles beta1_max -> beta1_min -> back
    (the "momentum 0.95 -> 0.85" of the references). Decoupled weight decay; gradient-norm clipping."""

    lr_max: float = 0.003
    div_factor: float = 10.0
    final_div_factor: float = 1.0e4
    pct_start: float = 0.4
    beta1_max: float = 0.95
    beta1_min: float = 0.85
    beta2: float = 0.99
    weight_decay: float = 0.01
    grad_clip: float = 10.0  # max global gradient L2 norm; 0 = no clipping

    def __post_init__(self):
        if self.lr_max <= 0 or self.div_factor <= 0 or self.final_div_factor <= 0:
            raise ValueError("optimizer: lr_max, div_factor and final_div_factor must be > 0")
        if not 0.0 < self.pct_start < 1.0:
            raise ValueError(f"optimizer.pct_start must be in (0, 1), got {self.pct_start}")
        if not 0.0 <= self.beta1_min <= self.beta1_max < 1.0 or not 0.0 <= self.beta2 < 1.0:
            raise ValueError("optimizer: need 0 <= beta1_min <= beta1_max < 1 and 0 <= beta2 < 1")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("optimizer: weight_decay and grad_clip must be >= 0")


@dataclass
class TrainConfig:
    name: str = "run"
    model: DetectorConfig = field(default_factory=DetectorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    epochs: int = 80
    batch_size: int = 4  # per process; the global batch is batch_size * world size
    eval_batch_size: int = 0  # 0 = batch_size
    workers: int = 4  # DataLoader worker processes per training process
    seed: int = 0
    # torch threads of the training process (0 = torch's default). 1 on a 2-core machine: with more, OpenMP threads
    # spin against the data worker and other jobs (measured 0.4 s/it idle but 5-9 s/it under load with 2 threads,
    # 0.47 s/it with 1 thread under the same load)
    threads: int = 0
    amp: bool = True  # mixed precision (autocast + GradScaler); used on CUDA only, ignored on CPU
    deterministic: bool = False  # torch.use_deterministic_algorithms(True, warn_only=True) + cudnn deterministic
    sync_batchnorm: bool = True  # with more than one process: batch-norm statistics over the global batch
    # Running-statistics momentum of every batch norm during training; null = the model's own (0.01, as the
    # references). Short runs (tests, a few hundred steps) need ~0.1 or eval-mode statistics lag behind.
    batchnorm_momentum: float | None = None
    eval_interval: int = 1  # evaluate on data.val_split every N epochs (and after the last); 0 = never
    eval_max_frames: int = 0  # evaluate on the first N frames of the split only; 0 = all
    checkpoint_interval: int = 1  # save a checkpoint every N epochs (and after the last); always on interruption
    keep_checkpoints: int = 2  # epoch checkpoints kept besides last.pt and best.pt; 0 = keep all
    log_interval: int = 10  # iterations between CSV / TensorBoard loss rows
    # log each loss part's gradient norm over the trained parameters (one extra backward per part; single process
    # only) every grad_norm_interval steps, and on an epoch's last step when it has none yet; on logged steps also
    # the loss terms' / target hooks' diagnostics
    log_grad_norms: bool = True
    # Steps between them (on the first logged step at or after each multiple). Every 10 steps they added 16-23 % to
    # a step of the release recipe's training (docs/BENCH.md "Per-part gradient norms"); the trained weights do not
    # depend on this.
    grad_norm_interval: int = 100
    max_iterations: int = 0  # stop (with a checkpoint, as an interruption) after this many iterations; 0 = none
    init_checkpoint: str = ""  # start from these model weights (e.g. a pruned or teacher-initialised student)
    # Two-stage teacher (training.teacher_task.TeacherTask): set this and give `model` the same RPN config
    # (e.g. model: {_base_: ../second_tiny.yaml}, two_stage: {_base_: ../teacher_two_stage_tiny.yaml}).
    two_stage: Optional[TwoStageConfig] = None

    def __post_init__(self):
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("eval_batch_size", "workers", "eval_interval", "eval_max_frames", "checkpoint_interval",
                    "keep_checkpoints", "max_iterations", "seed"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.batchnorm_momentum is not None and not 0.0 < self.batchnorm_momentum <= 1.0:
            raise ValueError(f"batchnorm_momentum must be in (0, 1] or null, got {self.batchnorm_momentum}")
        if self.log_interval < 1:
            raise ValueError(f"log_interval must be >= 1, got {self.log_interval}")
        if self.grad_norm_interval < 1:
            raise ValueError(f"grad_norm_interval must be >= 1, got {self.grad_norm_interval}")
        if self.two_stage is not None and self.two_stage.rpn != self.model:
            raise ValueError("two_stage.rpn differs from model: `model` must be the teacher's RPN config (data and "
                             "evaluation follow it); load both from the same file and override both")
        self._sync_data_with_model()

    def _sync_data_with_model(self) -> None:
        """data.point_cloud_range / class_names follow the model unless set explicitly (then they must agree)."""
        model_range = tuple(float(v) for v in self.model.point_cloud_range)
        model_classes = tuple(self.model.class_names)
        data = self.data
        if data.point_cloud_range not in (model_range, _DATA_DEFAULTS.point_cloud_range):
            raise ValueError(f"data.point_cloud_range {list(data.point_cloud_range)} differs from "
                             f"model.point_cloud_range {list(model_range)}; leave it unset (it follows the model)")
        if data.class_names not in (model_classes, _DATA_DEFAULTS.class_names):
            raise ValueError(f"data.class_names {list(data.class_names)} differ from model.class_names "
                             f"{list(model_classes)}; leave them unset (they follow the model)")
        data.point_cloud_range = model_range
        data.class_names = model_classes
        if data.num_point_features != self.model.num_point_features:
            raise ValueError(f"data.num_point_features {data.num_point_features} differs from "
                             f"model.num_point_features {self.model.num_point_features}")

    @property
    def effective_eval_batch_size(self) -> int:
        return self.eval_batch_size or self.batch_size


def load_train_config(path: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
    """Load a training YAML; raises ConfigError with a readable message (missing file, unknown key, bad value)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    return load_config(TrainConfig, path, overrides)


def train_config_from_yaml_text(text: str, source: str = "<checkpoint>") -> TrainConfig:
    """Rebuild the resolved TrainConfig stored in a run folder or checkpoint (plain YAML, no `_base_`)."""
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: stored config is not valid YAML: {exc}") from None
    return load_config(TrainConfig, data=data)


__all__ = ["OptimizerConfig", "TrainConfig", "load_train_config", "train_config_from_yaml_text"]
