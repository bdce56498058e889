"""PruneConfig: every knob of masked category-knowledge structured pruning (METHOD.md section 4)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# masked / unmasked: category-knowledge importance (frames); l1: weight magnitude (the L1-norm pruning ablation)
CRITERIA = ("masked", "unmasked", "l1")


@dataclass
class PruneConfig:
    """One-shot structured pruning.

    keep_ratio: fraction rho of all prunable filters that survive (global ranking, no per-layer normalisation).
    criterion: "masked" (CLEAN: mean over the unpruned model's own post-processed detections per frame),
        "unmasked" (CaKDP ablation: mean over every position) or "l1" (ablation: the L1 norm of each filter's
        weights, divided by its layer's mean norm; data-free, no frames are read).
    num_frames: how many training frames are scored (the first `num_frames` of the batches given; unused by l1).
    filters_per_pass: how many filter-zeroed variants share one forward pass (replicas along the batch dim).
    prune_encoder: also score / prune the pillar encoder's linear layers.
    prune_backbone_3d: score / prune the sparse 3D backbone convs (when the detector has one).
    fold_constants: fold the constant output of every removed filter (ReLU of its BN constant) into the consumer's
        next BN running mean or bias, so the pruned net matches the "filter zeroed" net that was scored.
    """

    keep_ratio: float = 0.75
    criterion: Literal["masked", "unmasked", "l1"] = "masked"
    num_frames: int = 64
    filters_per_pass: int = 8
    prune_encoder: bool = False
    prune_backbone_3d: bool = True
    fold_constants: bool = True

    def __post_init__(self):
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"prune.keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"prune.criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if self.num_frames < 1:
            raise ValueError(f"prune.num_frames must be >= 1, got {self.num_frames}")
        if self.filters_per_pass < 1:
            raise ValueError(f"prune.filters_per_pass must be >= 1, got {self.filters_per_pass}")


__all__ = ["PruneConfig", "CRITERIA"]
