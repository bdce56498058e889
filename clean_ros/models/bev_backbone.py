"""2D BEV backbone: strided blocks of conv-BN-ReLU, deblocks to a common stride, concatenated.

Layer names are stable for pruning surgery: blocks[i] is a Sequential of (Conv2d, BN, ReLU) triples, the
first conv strided; deblocks[i] is (ConvTranspose2d | Conv2d, BN, ReLU). Widths come from the config.
"""
from __future__ import annotations

import torch
from torch import nn

from clean_ros.models.detector_config import BEVBackboneConfig


def _conv_bn_relu(conv: nn.Module, width: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(width, eps=1e-3, momentum=0.01), nn.ReLU()]


class BEVBackbone(nn.Module):
    def __init__(self, cfg: BEVBackboneConfig, in_channels: int):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.deblocks = nn.ModuleList()
        channels = in_channels
        for widths, stride in zip(cfg.layer_widths, cfg.layer_strides):
            layers: list[nn.Module] = []
            for j, width in enumerate(widths):
                conv = nn.Conv2d(channels, width, 3, stride=stride if j == 0 else 1, padding=1, bias=False)
                layers += _conv_bn_relu(conv, width)
                channels = width
            self.blocks.append(nn.Sequential(*layers))
        for widths, up, width in zip(cfg.layer_widths, cfg.upsample_strides, cfg.num_upsample_filters):
            if up >= 1:
                k = int(round(up))
                conv = nn.ConvTranspose2d(widths[-1], width, k, stride=k, bias=False)
            else:
                k = int(round(1 / up))
                conv = nn.Conv2d(widths[-1], width, k, stride=k, bias=False)
            self.deblocks.append(nn.Sequential(*_conv_bn_relu(conv, width)))
        self.out_channels = cfg.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ups = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if len(self.deblocks):
                ups.append(self.deblocks[i](x))
        return torch.cat(ups, dim=1) if len(ups) > 1 else (ups[0] if ups else x)
