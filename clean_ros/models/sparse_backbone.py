"""SECOND's sparse 3D backbone (stride 8 in x / y) and the height compression to a BEV canvas.

Layout (widths from Backbone3DConfig, one per conv, so a pruned network is rebuilt from its config alone; the
strided convs' kernel / stride / padding come from `clean_ros.models.sparse_layout`, which also gives the shapes):
  stage 0: SubM input conv (in -> widths[0][0]) then SubM convs             stride 1
  stage i = 1, 2, 3: SparseConv3d sparse_layout.down_conv(i), then SubM convs   stride 2, 4, 8
  out: SparseConv3d sparse_layout.OUT_CONV -> out_width (only shrinks z; skipped when out_width = 0)
Every conv is followed by BatchNorm1d on the active sites' features and ReLU; convs have no bias.
Module names are stable for pruning surgery: stages[i][j] = SparseSequential(conv, BatchNorm1d, ReLU), out the same.
SubM convs of a stage share an indice key (their neighbour pairs are computed once per stage).

Height compression: the dense output (B, C, D, H, W) becomes (B, C * D, H, W) with BEV channel index
**c * D + d** (3D channel c, depth index d counted from the bottom of the range). Pruning and teacher-guided
initialisation map a kept 3D channel c to BEV channels {c * D + d : d < D}; see `bev_channels_of`.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from clean_ros.models import sparse as sp
from clean_ros.models.detector_config import Backbone3DConfig
from clean_ros.models.sparse_layout import OUT_CONV, ConvSpec, down_conv, input_shape, output_shape


class SparseBackboneOutput(NamedTuple):
    """stages: output of each stage (strides 1, 2, 4, 8); out: the tensor that is height-compressed;
    bev: (B, C * D, H, W) canvas for the BEV backbone."""

    stages: list
    out: sp.SparseConvTensor
    bev: torch.Tensor


def _block(conv: nn.Module) -> sp.SparseSequential:
    return sp.SparseSequential(conv, nn.BatchNorm1d(conv.out_channels, eps=1e-3, momentum=0.01), nn.ReLU())


def _strided_conv(in_channels: int, out_channels: int, spec: ConvSpec, indice_key: str) -> sp.SparseConv3d:
    return sp.SparseConv3d(in_channels, out_channels, spec.kernel, stride=spec.stride, padding=spec.padding,
                           bias=False, indice_key=indice_key)


def height_compression(x: sp.SparseConvTensor) -> torch.Tensor:
    """Sparse (B, C, D, H, W) -> dense BEV (B, C * D, H, W); BEV channel c * D + d holds channel c at depth d."""
    dense = sp.to_dense(x)  # (B, C, D, H, W)
    b, c, d, h, w = dense.shape
    return dense.reshape(b, c * d, h, w)


def bev_channels_of(channels_3d: torch.Tensor | Sequence[int], depth: int) -> torch.Tensor:
    """BEV channel indices of 3D channels (in the given order): [c0*D, c0*D+1, ..., c0*D+D-1, c1*D, ...]."""
    c = torch.as_tensor(channels_3d, dtype=torch.long)
    return (c.unsqueeze(1) * depth + torch.arange(depth).unsqueeze(0)).reshape(-1)


class SparseBackbone3D(nn.Module):
    def __init__(self, cfg: Backbone3DConfig, in_channels: int, grid_size: tuple[int, int, int]):
        super().__init__()
        if cfg.type != "sparse":
            raise ValueError(f"SparseBackbone3D needs backbone_3d.type=sparse, got {cfg.type!r}")
        self.spatial_shape = list(input_shape(cfg, grid_size))  # (z, y, x)
        self.output_shape = output_shape(cfg, grid_size)
        self.stages = nn.ModuleList()
        channels = in_channels
        for i, widths in enumerate(cfg.widths):
            layers = []
            for j, width in enumerate(widths):
                if j == 0 and i == 0:
                    conv = sp.SubMConv3d(channels, width, 3, padding=1, bias=False, indice_key="subm1")
                elif j == 0:
                    conv = _strided_conv(channels, width, down_conv(i), f"down{i + 1}")
                else:
                    conv = sp.SubMConv3d(channels, width, 3, padding=1, bias=False, indice_key=f"subm{i + 1}")
                layers.append(_block(conv))
                channels = width
            self.stages.append(sp.SparseSequential(*layers))
        self.out = None
        if cfg.out_width:
            self.out = _block(_strided_conv(channels, cfg.out_width, OUT_CONV, "down_out"))
            channels = cfg.out_width
        self.out_channels = channels
        self.depth = self.output_shape[0]
        self.bev_channels = channels * self.depth

    @property
    def stage_channels(self) -> list[int]:
        return [stage[-1][0].out_channels for stage in self.stages]

    def forward(self, features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> SparseBackboneOutput:
        """features (V, C_in) of the voxels at coords (V, 4) [batch, z, y, x] -> SparseBackboneOutput."""
        x = sp.sparse_tensor(features, coords, self.spatial_shape, batch_size, check=False)
        stages = []
        for stage in self.stages:
            x = stage(x)
            stages.append(x)
        if self.out is not None:
            x = self.out(x)
        bev = height_compression(x)
        if tuple(bev.shape[2:]) != tuple(self.output_shape[1:]) or bev.shape[1] != self.bev_channels:
            raise RuntimeError(f"sparse output {tuple(bev.shape[1:])} differs from the expected "
                               f"({self.bev_channels}, {self.output_shape[1]}, {self.output_shape[2]})")
        return SparseBackboneOutput(stages, x, bev)


__all__ = ["SparseBackbone3D", "SparseBackboneOutput", "height_compression", "bev_channels_of"]
