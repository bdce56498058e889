"""Class-agnostic RoI head of the two-stage teacher: pool features inside each rotated RoI, a shared MLP, then an
IoU-quality logit and a 7-dof box residual w.r.t. the RoI (geometry.encode_boxes coder).

Pooling (vectorised over batch, RoIs and grid points; no loops over boxes):
- BEV grid pooling: a G x G grid of points at the cell centres of the RoI's rotated BEV rectangle (local
  u = ((i + 0.5) / G - 0.5) * l along the heading, v = ((j + 0.5) / G - 0.5) * w across it), bilinearly sampled from
  the BEV feature map with F.grid_sample. Feature cell (row, col) of the map covers [x_min + col * cell_x, + cell_x)
  (the FeatureGrid convention of the anchors), so its value sits at the cell centre.
- Voxel RoI grid pooling: a G x G x G grid in the 3D RoI, trilinearly sampled from one sparse backbone stage made
  dense (empty voxels are zeros, as for the sparse convs). A stage of stride s covers cells of s voxels in x / y
  and s voxels in z counted from the bottom of the range (z_padding layers above it included).
Samples of every source go through a point-wise linear + BN + ReLU, are flattened in grid order, concatenated with
the RoI's own geometry (z, log l, log w, log h: BEV samples are blind to z) and fed to the shared MLP. Points outside the map sample zeros.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from clean_ros.models.anchors import FeatureGrid
from clean_ros.models.two_stage_config import RoIHeadConfig


class VoxelVolume(NamedTuple):
    """A dense sparse-backbone stage for voxel pooling: features (B, C, D, H, W) covering
    [origin, origin + extent) in (x, y, z) metres."""

    features: torch.Tensor
    origin: tuple[float, float, float]
    extent: tuple[float, float, float]


def _local_offsets(grid_size: int, like: torch.Tensor) -> torch.Tensor:
    """(G,) cell-centre fractions in [-0.5, 0.5]."""
    return (torch.arange(grid_size, dtype=like.dtype, device=like.device) + 0.5) / grid_size - 0.5


def bev_grid_points(rois: torch.Tensor, grid_size: int) -> torch.Tensor:
    """RoIs (..., 7) -> (..., G * G, 2) x, y of the grid points; point index = i * G + j, i along the heading (l),
    j across it (w)."""
    f = _local_offsets(grid_size, rois)
    u = (f.view(-1, 1) * rois[..., 3, None, None]).expand(*rois.shape[:-1], grid_size, grid_size)
    v = (f.view(1, -1) * rois[..., 4, None, None]).expand(*rois.shape[:-1], grid_size, grid_size)
    cos, sin = torch.cos(rois[..., 6, None, None]), torch.sin(rois[..., 6, None, None])
    x = rois[..., 0, None, None] + u * cos - v * sin
    y = rois[..., 1, None, None] + u * sin + v * cos
    return torch.stack([x, y], dim=-1).flatten(-3, -2)


def voxel_grid_points(rois: torch.Tensor, grid_size: int) -> torch.Tensor:
    """RoIs (..., 7) -> (..., G^3, 3) x, y, z; point index = (i * G + j) * G + k, k along the height."""
    g = grid_size
    xy = bev_grid_points(rois, g)  # (..., G*G, 2)
    f = _local_offsets(g, rois)
    z = rois[..., 2, None] + f * rois[..., 5, None]  # (..., G)
    xy = xy.unsqueeze(-2).expand(*xy.shape[:-1], g, 2)
    z = z.unsqueeze(-2).expand(*rois.shape[:-1], g * g, g)
    return torch.cat([xy, z.unsqueeze(-1)], dim=-1).flatten(-3, -2)


def sample_bev(features: torch.Tensor, grid: FeatureGrid, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of a BEV map (B, C, H, W) at points (B, R, K, 2) -> (B, R, K, C)."""
    _, _, h, w = features.shape
    xn = 2.0 * (points[..., 0] - grid.x_min) / (w * grid.cell_x) - 1.0
    yn = 2.0 * (points[..., 1] - grid.y_min) / (h * grid.cell_y) - 1.0
    sampled = F.grid_sample(features, torch.stack([xn, yn], dim=-1).to(features.dtype), mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # (B, C, R, K)
    return sampled.permute(0, 2, 3, 1)


def sample_volume(volume: VoxelVolume, points: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of a dense volume at points (B, R, K, 3) -> (B, R, K, C)."""
    origin = points.new_tensor(volume.origin)
    extent = points.new_tensor(volume.extent)
    normalised = 2.0 * (points - origin) / extent - 1.0  # (x, y, z) -> grid_sample's (W, H, D) order
    sampled = F.grid_sample(volume.features, normalised.unsqueeze(-2).to(volume.features.dtype), mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # (B, C, R, K, 1)
    return sampled.squeeze(-1).permute(0, 2, 3, 1)


ROI_GEOMETRY_FEATURES = 4


def roi_geometry(rois: torch.Tensor) -> torch.Tensor:
    """(..., 4) what the pooled features cannot tell: the RoI's height above the sensor and its log size (l, w, h).
    BEV samples are blind to z, and the residual dz / dl / ... is relative to these."""
    return torch.cat([rois[..., 2:3], torch.log(rois[..., 3:6].clamp(min=1e-3))], dim=-1)


def _point_layer(in_channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_channels, width, bias=False), nn.BatchNorm1d(width, eps=1e-3, momentum=0.01),
                         nn.ReLU())


class RoIHead(nn.Module):
    """forward(rois (B, R, 7), bev_features, grid, volume=None) -> (iou_logits (B, R), box_residuals (B, R, 7))."""

    def __init__(self, cfg: RoIHeadConfig, bev_channels: int, voxel_channels: Optional[int] = None):
        super().__init__()
        self.cfg = cfg
        self.point_layers = nn.ModuleDict()
        in_dim = 0
        if "bev" in cfg.pool_sources:
            self.point_layers["bev"] = _point_layer(bev_channels, cfg.point_width)
            in_dim += cfg.point_width * cfg.bev_grid_size ** 2
        if "voxel" in cfg.pool_sources:
            if voxel_channels is None:
                raise ValueError("roi_head: voxel pooling needs the sparse stage's channel count")
            self.point_layers["voxel"] = _point_layer(voxel_channels, cfg.point_width)
            in_dim += cfg.point_width * cfg.voxel_grid_size ** 3
        in_dim += ROI_GEOMETRY_FEATURES
        layers: list[nn.Module] = []
        for width in cfg.mlp_widths:
            layers += [nn.Linear(in_dim, width, bias=False), nn.BatchNorm1d(width, eps=1e-3, momentum=0.01), nn.ReLU()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            in_dim = width
        self.shared = nn.Sequential(*layers)
        self.iou_out = nn.Linear(in_dim, 1)
        self.box_out = nn.Linear(in_dim, 7)
        nn.init.normal_(self.box_out.weight, mean=0.0, std=0.001)
        nn.init.zeros_(self.box_out.bias)

    def pool(self, rois: torch.Tensor, bev_features: torch.Tensor, grid: FeatureGrid,
             volume: Optional[VoxelVolume] = None) -> torch.Tensor:
        """(B, R, F) flattened per-RoI features (before the shared MLP)."""
        b, r = rois.shape[:2]
        parts = []
        for source, layer in self.point_layers.items():
            if source == "bev":
                samples = sample_bev(bev_features, grid, bev_grid_points(rois, self.cfg.bev_grid_size))
            else:
                if volume is None:
                    raise ValueError("roi_head: voxel pooling is configured but no voxel features were given "
                                     "(pass TwoStageOutput.voxel_features / rpn_forward's volume)")
                samples = sample_volume(volume, voxel_grid_points(rois, self.cfg.voxel_grid_size))
            k, c = samples.shape[2:]
            parts.append(layer(samples.reshape(-1, c)).reshape(b, r, -1))
        parts.append(roi_geometry(rois))
        return torch.cat(parts, dim=-1)

    def forward(self, rois: torch.Tensor, bev_features: torch.Tensor, grid: FeatureGrid,
                volume: Optional[VoxelVolume] = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, r = rois.shape[:2]
        pooled = self.pool(rois, bev_features, grid, volume)
        if b * r == 0:
            return rois.new_zeros((b, r)), rois.new_zeros((b, r, 7))
        hidden = self.shared(pooled.reshape(b * r, -1))
        return self.iou_out(hidden).reshape(b, r), self.box_out(hidden).reshape(b, r, 7)


__all__ = ["RoIHead", "VoxelVolume", "bev_grid_points", "voxel_grid_points", "sample_bev", "sample_volume"]
