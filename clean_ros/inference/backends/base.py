"""The one interface every inference backend implements.

A backend runs the exported graph parts of a bundle:
- run(bev) -> raw head maps: the dense part (BEV backbone + head), always;
- encode_pillars(features, num_points, coords) -> (V, C) pillar features, when the backend also holds the pillar
  encoder (encoder.onnx); otherwise it returns None and the Pipeline runs the encoder in torch.

Inputs and outputs are torch tensors (float32 outputs on `output_device`), so the Pipeline's pre/post-processing
is the same code whatever runs in between. Everything that is not a graph (voxelisation, scatter, the sparse 3D
backbone of SECOND models, decoding, NMS) stays in the Pipeline, in torch.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch


class BackendError(RuntimeError):
    """A backend that cannot be created or run; the message says which backend and why."""


class BackendUnavailable(BackendError):
    """The backend's runtime (package, GPU, provider) is not present on this machine."""


class Backend(ABC):
    name: str = "?"
    # why this backend runs (set by clean_ros.inference.backends.open_backend; the node logs it)
    selection_reason: str = ""

    def __init__(self, output_names: Sequence[str], output_device: str | torch.device = "cpu"):
        self.output_names = tuple(output_names)
        self.output_device = torch.device(output_device)

    @property
    @abstractmethod
    def device(self) -> str:
        """Where the graph runs, in words: 'cpu', 'cuda:0', 'CUDAExecutionProvider', ..."""

    @property
    def has_encoder(self) -> bool:
        return False

    @abstractmethod
    def run(self, bev: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(1, C, ny, nx) float32 BEV canvas -> raw head maps (float32, on output_device), in output_names order."""

    def encode_pillars(self, features: torch.Tensor, num_points: torch.Tensor,
                       coords: torch.Tensor) -> torch.Tensor | None:
        """(V, T, F), (V,) int32, (V, 4) int32 -> (V, C) pillar features, or None: the caller encodes in torch."""
        return None

    def describe(self) -> str:
        return f"{self.name} on {self.device}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"
