"""Mean voxel feature encoder: a voxel's feature is the mean of its points (input of the sparse backbone)."""
from __future__ import annotations

import torch
from torch import nn


class MeanVFE(nn.Module):
    def __init__(self, num_point_features: int):
        super().__init__()
        self.out_channels = int(num_point_features)

    def forward(self, features: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor | None = None
                ) -> torch.Tensor:
        """(V, T, F) zero-padded points, (V,) counts -> (V, F) mean point."""
        counts = num_points.to(features.dtype).clamp(min=1).unsqueeze(1)
        return features.sum(dim=1) / counts
