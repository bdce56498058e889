"""A training stage's TrainConfig, derived from the compression config.

Layers, later ones winning: the model's training YAML (teacher.config / student.config), then what the
compression config decides for every stage (its dataset, the stage's epochs, the shared `training` section), then
the user's own `set` lists (training.set, then the stage's). The shared values are set on the typed config; the
`set` lists are the user's `--set`-style strings, so a key they name keeps the user's value.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from clean_ros.models.detector_config import DetectorConfig
from clean_ros.yaml_config import ConfigError, parse_override
from training.compression.compress_config import CompressConfig
from training.data.gt_database import label_source_tag


def _shared_values(cfg: CompressConfig, data_root: Path, epochs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TrainConfig fields, TrainConfig.data fields) every training stage of this run gets."""
    t, d = cfg.training, cfg.data
    top = {"epochs": epochs, "batch_size": t.batch_size, "workers": t.workers, "log_interval": t.log_interval,
           "seed": t.seed, "eval_interval": 0,  # the evaluate stage evaluates every model once, on the same frames
           "batchnorm_momentum": t.batchnorm_momentum}
    data = {"root": str(data_root), "train_split": d.train_split, "val_split": d.val_split}
    return top, data


def stage_train_config(cfg: CompressConfig, data_root: Path, stages_dir: Path, yaml_path: str, epochs: int,
                       stage_set: list[str], model_cfg: DetectorConfig | None = None):
    """The stage's TrainConfig: the model's training YAML + the shared training section + the stage's set;
    model_cfg (a pruned student's widths, an IoU branch) replaces the YAML's model."""
    from training.train_config import load_train_config

    user = [*cfg.training.set, *stage_set]
    train_cfg = load_train_config(yaml_path, user)
    named = [parse_override(text)[0] for text in user]

    def free(*key: str) -> bool:  # not named by the user's overrides (nor a section above it)
        return not any(list(key[:len(keys)]) == keys for keys in named)

    top, data = _shared_values(cfg, data_root, epochs)
    try:
        data_cfg = dataclasses.replace(train_cfg.data, **{k: v for k, v in data.items() if free("data", k)})
        train_cfg = dataclasses.replace(train_cfg, data=data_cfg, **{k: v for k, v in top.items() if free(k)})
    except ValueError as exc:  # a shared value the TrainConfig refuses, e.g. training.batchnorm_momentum
        raise ConfigError(f"{yaml_path}: <root>: {exc}") from None
    if model_cfg is not None:
        if train_cfg.two_stage is not None:
            raise ConfigError(f"{yaml_path}: a student config must not have a two_stage section")
        train_cfg.model = model_cfg
    # One GT database per (range, classes), next to the data stage's outputs (never inside a user's dataset).
    key = json.dumps([list(train_cfg.model.point_cloud_range), list(train_cfg.model.class_names),
                      cfg.data.train_split]) + label_source_tag(train_cfg.data)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    train_cfg.augment.gt_sampling_config.database_path = str(stages_dir / "data" / f"gt_database_{digest}.npz")
    return train_cfg


__all__ = ["stage_train_config"]
