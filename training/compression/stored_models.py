"""The models a compression run stores and reports: one per model stage, in stages/<stage>/.

    model.pt    the state_dict (weights only, atomic torch.save)
    model.yaml  its DetectorConfig (one-stage) or TwoStageConfig (teacher)
    model.json  {"kind": "detector" | "two_stage", ...}, written last: a stage folder without it holds no model

A reported model is a ModelRef: the stage that stores it and, optionally, the IoU gate mode it is evaluated with,
so one trained network can be reported with and without its gate.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clean_ros.models.detector_config import DetectorConfig, IoUGateConfig
from clean_ros.models.two_stage_config import TwoStageConfig
from clean_ros.yaml_config import ConfigError, load_config, save_yaml, to_dict
from training.compression.stage_store import atomic_write_json, read_json

MODEL_FILE = "model.pt"
MODEL_CONFIG = "model.yaml"
MODEL_INFO = "model.json"

# Report keys of the CLEAN models, in report order (student_cakd only with student.kd_row).
CLEAN_MODELS = ("teacher", "student_baseline", "student_cakd", "student_pruned", "student_final")


@dataclass(frozen=True)
class ModelRef:
    """A reported model: the stage that stores it and, optionally, the IoU gate mode it is evaluated with
    (None = as stored; "none" = gate off; "soft" = the soft gate with iou_refine.gate's alphas)."""

    stage: str
    gate: str | None = None


def save_model(folder: Path, module: torch.nn.Module, cfg: Any, kind: str, extra: dict | None = None) -> None:
    """weights (atomic torch.save of the state_dict), the model config YAML, then model.json (kind)."""
    from training.checkpoint import atomic_torch_save

    atomic_torch_save({k: v.detach().cpu() for k, v in module.state_dict().items()}, folder / MODEL_FILE)
    save_yaml(cfg, folder / MODEL_CONFIG)
    atomic_write_json(folder / MODEL_INFO, {"kind": kind, **(extra or {})})


def load_model(folder: Path) -> tuple[str, Any, torch.nn.Module]:
    """(kind "two_stage" | "detector", config, module with weights) of a stage's stored model."""
    from clean_ros.models.detector import build_detector
    from clean_ros.models.two_stage import TwoStageDetector

    info = read_json(folder / MODEL_INFO)
    if not info:
        raise FileNotFoundError(f"{folder}: no stored model ({MODEL_INFO} missing)")
    state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
    if info["kind"] == "two_stage":
        cfg = load_config(TwoStageConfig, folder / MODEL_CONFIG)
        module = TwoStageDetector(cfg)
    else:
        cfg = load_config(DetectorConfig, folder / MODEL_CONFIG)
        module = build_detector(cfg)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise ConfigError(f"{folder / MODEL_FILE}: the stored model does not fit the current code ({detail}); "
                          f"re-run that stage with --force {folder.name}") from None
    return info["kind"], cfg, module.eval()


def make_task(kind: str, cfg: Any, module: torch.nn.Module):
    from training.task import DetectionTask
    from training.teacher_task import TeacherTask

    return TeacherTask(cfg, module) if kind == "two_stage" else DetectionTask(cfg, module)


def with_gate(cfg: DetectorConfig, gate: str | None, template) -> DetectorConfig:
    """cfg (in place: the module built from it shares it) with its IoU gate mode replaced for evaluation."""
    if gate is not None:
        cfg.postprocess.iou_gate = type(template)(mode=gate, thresholds=list(template.thresholds),
                                                  alphas=list(template.alphas))
    return cfg


def with_iou_branch(cfg: DetectorConfig, gate: IoUGateConfig) -> DetectorConfig:
    """A copy of cfg with the anchor head's IoU branch on and `gate` in its post-processing (iou_refine.gate)."""
    data = to_dict(cfg)
    data["head"]["iou_branch"] = True
    data["postprocess"]["iou_gate"] = to_dict(gate)
    try:
        return load_config(DetectorConfig, data=data)
    except ConfigError as exc:
        raise ConfigError(f"iou_refine.gate: {exc}") from None


def available_models(stages_dir: Path, refs: dict[str, ModelRef]) -> dict[str, Path]:
    """report key -> stage folder of every reported model whose stage stored one, in report order."""
    out = {}
    for key, ref in refs.items():
        folder = stages_dir / ref.stage
        if (folder / MODEL_INFO).is_file():
            out[key] = folder
    return out


def load_reported(stages_dir: Path, ref: ModelRef, gate_template: IoUGateConfig) -> tuple[str, Any, torch.nn.Module]:
    """(kind, config, module) of a reported model, with its evaluation gate applied."""
    kind, cfg, module = load_model(stages_dir / ref.stage)
    if kind != "two_stage":
        with_gate(cfg, ref.gate, gate_template)
    return kind, cfg, module


__all__ = ["ModelRef", "CLEAN_MODELS", "MODEL_FILE", "MODEL_CONFIG", "MODEL_INFO", "save_model", "load_model",
           "make_task", "with_gate", "with_iou_branch", "available_models", "load_reported"]
