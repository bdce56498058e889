"""DetectionTask: the glue between a Batch and the numbers the trainer needs, so the training loop knows no model.

    task = DetectionTask(model_cfg)                   # builds the detector from its config
    result = task(batch)                              # StepResult: total loss, named parts, head output, targets
    detections = task.predict(batch)                  # list[Detections], one per frame (eval mode, no grad)

Later methods plug in through two explicit hook lists, applied in order:

- target_hooks: TargetHook(batch, gt_boxes, gt_labels) -> (gt_boxes, gt_labels). Edit the ground truth that the
  head's targets are assigned from (label-assignment distillation puts accepted teacher boxes in front of the GT).
  The Batch itself is left untouched.
- loss_terms: LossTerm with a `name` and `__call__(ctx: LossContext) -> Tensor | Mapping[str, Tensor]`, returning
  already-weighted losses that are added to the total and logged as "<name>" or "<name>/<key>" (CaKD, logit /
  feature KD, PointDistiller, ...). A term that is an nn.Module is registered here, so its trainable parameters
  (adapters) are optimised, wrapped by DDP and saved in checkpoints (`loss_terms` entry).

A frozen teacher must not become part of the student's parameters or checkpoint: hold it in `Frozen(teacher)`
(not registered as a sub-module; kept in eval mode with gradients off unless told otherwise).
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from clean_ros.models.detector_config import DetectorConfig
from clean_ros.models.detector import Detector, HeadOutput, build_detector
from clean_ros.inference.postprocess import postprocess
from clean_ros.types import Detections
from clean_ros.inference.voxelize import Voxelizer
from training.data.sample import Batch
from training.losses import LossBreakdown, compute_losses
from training.targets import Targets, build_targets


class LossContext(NamedTuple):
    """What an extra loss term may read for one training step."""

    batch: Batch
    output: HeadOutput  # the student's head output (with bev_features)
    targets: Targets  # targets assigned from gt_boxes / gt_labels below
    gt_boxes: torch.Tensor  # (B, M', 7) ground truth after the target hooks
    gt_labels: torch.Tensor  # (B, M')
    detection: LossBreakdown  # the head's own weighted losses
    model: Detector  # the student (unwrapped)


@runtime_checkable
class LossTerm(Protocol):
    name: str

    def __call__(self, ctx: LossContext) -> torch.Tensor | Mapping[str, torch.Tensor]: ...


TargetHook = Callable[[Batch, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


class StepResult(NamedTuple):
    """One forward pass of the task. parts: name -> weighted scalar loss (detection parts and extra terms)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]
    output: HeadOutput
    targets: Targets

    def as_floats(self) -> dict[str, float]:
        return {"total": float(self.total.detach()), **{k: float(v.detach()) for k, v in self.parts.items()}}


class Frozen:
    """Holds a module (e.g. a teacher) without registering it: not optimised, not saved, not wrapped by DDP."""

    def __init__(self, module: nn.Module, eval_mode: bool = True):
        self.module = module
        module.requires_grad_(False)
        if eval_mode:
            module.eval()

    def __call__(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def to(self, device) -> "Frozen":
        self.module.to(device)
        return self


class DetectionTask(nn.Module):
    def __init__(self, cfg: DetectorConfig, model: Detector | None = None, loss_terms: Sequence[LossTerm] = (),
                 target_hooks: Sequence[TargetHook] = (), extra_voxelizers: Mapping[str, Voxelizer] | None = None):
        """extra_voxelizers: other voxelisations the loss terms / hooks read from Batch.extra_voxels (e.g. the
        distillation teacher's own); the trainer's collator produces them from the raw points."""
        super().__init__()
        self.extra_voxelizers = dict(extra_voxelizers or {})
        self.cfg = cfg
        self.model = model if model is not None else build_detector(cfg)
        names = [t.name for t in loss_terms]
        if len(set(names)) != len(names):
            raise ValueError(f"loss term names must be unique, got {names}")
        reserved = {"total"}
        if reserved & set(names):
            raise ValueError(f"loss term name {sorted(reserved & set(names))[0]!r} is reserved")
        self.loss_terms = list(loss_terms)
        # Modules among the terms are registered so their parameters are trained and checkpointed.
        self.loss_modules = nn.ModuleDict({t.name: t for t in loss_terms if isinstance(t, nn.Module)})
        self.target_hooks = list(target_hooks)

    def forward(self, batch: Batch) -> StepResult:
        output = self.model(batch.voxels, batch.batch_size)
        ctx = self.loss_context(batch, output)
        parts = dict(ctx.detection.parts)
        total = add_loss_terms(self.loss_terms, ctx, parts, ctx.detection.total)
        return StepResult(total, parts, output, ctx.targets)

    def step_diagnostics(self) -> dict[str, float]:
        """What the loss terms and target hooks report of the step just run (their optional `diagnostics()`); the
        trainer asks only on logged steps, so the terms compute them only then."""
        out = {}
        for part in (*self.loss_terms, *self.target_hooks):
            report = getattr(part, "diagnostics", None)
            if callable(report):
                name = getattr(part, "name", type(part).__name__)
                out.update({f"{name}/{key}": float(value) for key, value in report().items()})
        return out

    def loss_context(self, batch: Batch, output: HeadOutput) -> LossContext:
        """The start of every task's step: the target hooks edit the ground truth, the head's targets are assigned
        from it and its own weighted losses computed (in float32); the result is what extra loss terms see."""
        gt_boxes, gt_labels = batch.gt_boxes, batch.gt_labels
        for hook in self.target_hooks:
            gt_boxes, gt_labels = hook(batch, gt_boxes, gt_labels)
        targets = build_targets(output, gt_boxes, gt_labels, self.cfg)
        detection = compute_losses(output.float32(), targets, self.cfg.head.loss)
        return LossContext(batch, output, targets, gt_boxes, gt_labels, detection, self.model)

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Detections]:
        """Detections per frame of the batch (the model is put in eval mode and restored afterwards)."""
        was_training = self.model.training
        self.model.eval()
        try:
            output = self.model(batch.voxels, batch.batch_size)
            return postprocess(output.float32(), self.cfg)
        finally:
            self.model.train(was_training)

    def loss_term_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: module.state_dict() for name, module in self.loss_modules.items()}

    def load_loss_term_state(self, states: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        missing = set(self.loss_modules) - set(states)
        if missing:
            raise KeyError(f"checkpoint has no state for loss term(s) {sorted(missing)}")
        for name, module in self.loss_modules.items():
            module.load_state_dict(states[name])


def add_loss_terms(loss_terms: Sequence[LossTerm], ctx: LossContext, parts: dict[str, torch.Tensor],
                   total: torch.Tensor) -> torch.Tensor:
    """Evaluate the extra loss terms on ctx, record each under "<name>" or "<name>/<key>" in parts (a name may not
    repeat), and return total plus all of them."""
    for term in loss_terms:
        value = term(ctx)
        named = {term.name: value} if isinstance(value, torch.Tensor) else {
            f"{term.name}/{k}": v for k, v in value.items()}
        for key, loss in named.items():
            if key in parts:
                raise ValueError(f"loss term {term.name!r} returns {key!r}, which already exists")
            parts[key] = loss
            total = total + loss
    return total


__all__ = ["DetectionTask", "LossContext", "LossTerm", "TargetHook", "StepResult", "Frozen"]
