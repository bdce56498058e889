"""PointPillars encoder: a PointNet over the points of each pillar, then a scatter to the BEV canvas."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from clean_ros.inference.voxelize import PointVoxels


class PillarFeatureNet(nn.Module):
    """Per-pillar PointNet.

    Each point gets [its features ; offset to the mean of its pillar's points (xyz) ; offset to the pillar's
    geometric centre (xyz) ; optionally its range]; padding slots (index >= num_points) are zeroed. Each layer is
    linear (no bias) + BN + ReLU; the pillar feature is the max over its points. Layers before the last feed
    [per-point output ; pillar max] to the next.

    Two evaluations of the same function:
    - padded (training, ONNX export, tracing, FLOP counting): every (pillar, slot) of the (V, T) grid, padding zeroed
      after each ReLU. Only dense tensor ops, so it exports to ONNX as is.
    - per point (inference in torch): the layers run on the real points only, and the max is a scatter-max into
      zero-initialised pillars. ReLU outputs are >= 0, so the zeros stand for the padding slots exactly. On fine
      grids most slots are padding (0.16 m pillars hold a few points of T = 32): there the padded path took
      36-38 ms of a ~60 ms frame on CPU, the per-point one 8-13 (docs/results/fine_grid/README.md "Reading").
    """

    def __init__(self, num_point_features: int, widths: Sequence[int], voxel_size: Sequence[float],
                 point_cloud_range: Sequence[float], with_distance: bool = False):
        super().__init__()
        self.with_distance = with_distance
        self.register_buffer("voxel_size", torch.tensor(voxel_size[:3], dtype=torch.float32), persistent=False)
        # Centre of voxel (0, 0, 0); coords are (batch, z, y, x).
        origin = torch.tensor(point_cloud_range[:3], dtype=torch.float32) + self.voxel_size / 2
        self.register_buffer("origin", origin, persistent=False)
        in_channels = num_point_features + 6 + int(with_distance)
        self.in_channels = in_channels
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, width in enumerate(widths):
            self.linears.append(nn.Linear(in_channels, width, bias=False))
            self.norms.append(nn.BatchNorm1d(width, eps=1e-3, momentum=0.01))
            in_channels = 2 * width
        self.out_channels = int(widths[-1])
        # False: inference also runs the padded grid (FLOP counting uses it: the references count the padding)
        self.per_point_inference = True

    def augment(self, features: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, T, F) raw points -> ((V, T, F + 6 [+1]) decorated points with padding zeroed, (V, T, 1) mask)."""
        num_slots = features.shape[1]
        mask = (torch.arange(num_slots, device=features.device).unsqueeze(0) < num_points.unsqueeze(1))
        mask = mask.unsqueeze(2).to(features.dtype)
        xyz = features[:, :, :3]
        counts = num_points.to(features.dtype).clamp(min=1).view(-1, 1, 1)
        mean = (xyz * mask).sum(dim=1, keepdim=True) / counts
        centre = coords[:, [3, 2, 1]].to(features.dtype) * self.voxel_size + self.origin  # (V, 3) x, y, z
        parts = [features, xyz - mean, xyz - centre.unsqueeze(1)]
        if self.with_distance:
            parts.append(torch.linalg.vector_norm(xyz, dim=2, keepdim=True))
        return torch.cat(parts, dim=2) * mask, mask

    def forward(self, features: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """(V, T, F), (V,), (V, 4) -> (V, C) pillar features."""
        if not self._per_point():
            return self._forward_padded(features, num_points, coords)
        return self._forward_points(features, num_points, coords)

    def forward_point_voxels(self, voxels: PointVoxels) -> torch.Tensor:
        """The same (V, C) pillar features from voxels without the padded grid (the runtime's layout)."""
        if not self._per_point():
            return self._forward_padded(*voxels.padded())
        return self._encode_points(voxels.points, voxels.voxel, voxels.num_points, voxels.coords)

    def _per_point(self) -> bool:
        return not (self.training or not self.per_point_inference or torch.onnx.is_in_onnx_export()
                    or torch.jit.is_tracing() or any(norm.running_mean is None for norm in self.norms))

    def _forward_padded(self, features: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        x, mask = self.augment(features, num_points, coords)
        last = len(self.linears) - 1
        for i, (linear, norm) in enumerate(zip(self.linears, self.norms)):
            x = linear(x)  # (V, T, W)
            x = torch.relu(norm(x.transpose(1, 2)).transpose(1, 2)) * mask  # padding back to 0: max ignores it
            pooled = x.max(dim=1, keepdim=True).values
            if i == last:
                return pooled.squeeze(1)
            x = torch.cat([x, pooled.expand_as(x)], dim=2) * mask
        raise AssertionError("unreachable")

    def _forward_points(self, features: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Inference (BN with running statistics) on the real points only: _forward_padded's function, as close to its
        float64 value as the padded path is (the regrouped single layer rounds differently, not worse).

        The decoration is computed per real point (never on the padded (V, T, F + 6) grid: building that grid took
        15 ms of a 98k-point scan on one CPU thread, the rest of the encoder 10)."""
        num_voxels, num_slots, num_features = features.shape
        counts = num_points.long().clamp(min=0, max=num_slots)
        pillar = torch.repeat_interleave(torch.arange(num_voxels, device=features.device), counts)  # (N,)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(pillar.numel(), device=features.device) - starts.index_select(0, pillar)
        points = features.reshape(-1, num_features).index_select(0, pillar * num_slots + slot)  # (N, F)
        return self._encode_points(points, pillar, num_points, coords)

    def _encode_points(self, points: torch.Tensor, pillar: torch.Tensor, num_points: torch.Tensor,
                       coords: torch.Tensor) -> torch.Tensor:
        """(N, F) real points, (N,) their pillar, (V,), (V, 4) -> (V, C): the per-point evaluation."""
        num_voxels = num_points.numel()
        xyz = points[:, :3]
        divisor = num_points.to(xyz.dtype).clamp(min=1).unsqueeze(1)  # as augment(): the pillar's own count
        mean = xyz.new_zeros(num_voxels, 3).index_add_(0, pillar, xyz) / divisor
        centre = coords[:, [3, 2, 1]].to(points.dtype) * self.voxel_size + self.origin  # (V, 3) x, y, z
        if len(self.linears) == 1 and not self._hooked():
            return self._single_layer_folded(points, pillar, mean, centre, num_voxels)
        parts = [points, xyz - mean.index_select(0, pillar), xyz - centre.index_select(0, pillar)]
        if self.with_distance:
            parts.append(torch.linalg.vector_norm(xyz, dim=1, keepdim=True))
        x = torch.cat(parts, dim=1)  # (N, C_in): augment()'s columns, real points only
        last = len(self.linears) - 1
        for i, (linear, norm) in enumerate(zip(self.linears, self.norms)):
            x = torch.relu(norm(linear(x)))  # (N, W); the modules themselves, so that their hooks see it
            pooled = x.new_zeros(num_voxels, x.shape[1]).scatter_reduce_(
                0, pillar.unsqueeze(1).expand_as(x), x, "amax")
            if i == last:
                return pooled
            x = torch.cat([x, pooled[pillar]], dim=1)
        raise AssertionError("unreachable")

    def _hooked(self) -> bool:
        """Whether anything observes the layers (pruning masks, FLOP counters): then the modules themselves run."""
        return any(m._forward_hooks or m._forward_pre_hooks for m in (*self.linears, *self.norms))

    def _single_layer_folded(self, points: torch.Tensor, pillar: torch.Tensor, mean: torch.Tensor,
                             centre: torch.Tensor, num_voxels: int) -> torch.Tensor:
        """One PointNet layer, algebraically regrouped. With BN folded into the weights (scale g, shift b) and each
        point p written relative to its pillar's centre c (p' = p - c: small numbers, so no precision is lost to
        cancellation far from the sensor), the pre-activation is p' @ A^T + P[pillar], where A takes the offsets'
        columns into the point's own xyz columns and P = b + W_own c - W_mean (m - c) is constant within a pillar.
        ReLU and adding a per-pillar constant commute with the max over the pillar's points, so the pillar feature is
        relu(max(p' @ A^T) + P): one (N, F) x (F, W) product and one scatter-max per scan."""
        linear, norm = self.linears[0], self.norms[0]
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (W,)
        shift = norm.bias - norm.running_mean * scale
        weight = linear.weight * scale.unsqueeze(1)  # (W, C_in), BN scale folded
        f = points.shape[1]
        w_own, w_mean, w_centre = weight[:, :f], weight[:, f:f + 3], weight[:, f + 3:f + 6]
        w_local = w_own.clone()
        w_local[:, :3] += w_mean + w_centre  # p - m = p' - (m - c) and p - c = p'
        local = points.clone()
        local[:, :3] -= centre.index_select(0, pillar)
        z = local @ w_local.t()  # (N, W)
        if self.with_distance:
            z += torch.linalg.vector_norm(points[:, :3], dim=1, keepdim=True) * weight[:, f + 6].unsqueeze(0)
        per_pillar = shift + centre @ w_own[:, :3].t() - (mean - centre) @ w_mean.t()  # (V, W)
        pooled = z.new_full((num_voxels, z.shape[1]), float("-inf")).scatter_reduce_(
            0, pillar.unsqueeze(1).expand_as(z), z, "amax", include_self=False)
        return torch.relu(pooled + per_pillar)  # an empty pillar stays -inf before the ReLU: 0, as padding


class PillarScatter(nn.Module):
    """Scatter pillar features (V, C) to a dense BEV canvas (B, C, ny, nx) at their (y, x) coords.

    The canvas is written channel-major in place. A cell-major canvas needs a (B, ny, nx, C) -> (B, C, ny, nx) copy
    afterwards: that scatter took 13.4 ms per real KITTI scan on a 336 x 336 x 32 canvas on one CPU thread, this one
    1.9 ms (4.6 -> 1.6 ms at 256 x 256).
    """

    def __init__(self, nx: int, ny: int):
        super().__init__()
        self.nx, self.ny = int(nx), int(ny)

    def forward(self, pillar_features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        num_channels = pillar_features.shape[1]
        cell = coords[:, 2].long() * self.nx + coords[:, 3].long()
        canvas = pillar_features.new_zeros(batch_size, num_channels, self.ny * self.nx)
        # Two index tensors around a slice: the indexed view is (V, C), one row per pillar.
        canvas[coords[:, 0].long(), :, cell] = pillar_features
        return canvas.view(batch_size, num_channels, self.ny, self.nx)
