"""Anchor head: 1x1 convs for class logits, box residuals, direction bins and (optional) IoU quality."""
from __future__ import annotations

import math

import torch
from torch import nn

PRIOR_PROBABILITY = 0.01  # initial foreground probability of every class logit (focal-loss init)


class AnchorHead(nn.Module):
    """Raw maps: cls (B, A*C, H, W), box (B, A*7, H, W), dir (B, A*bins, H, W), iou (B, A, H, W).

    Channel layout inside a cell: anchor-major (channel = a * C + c, a * 7 + k, ...), matching the position
    layout of clean_ros.models.anchors.
    """

    def __init__(self, in_channels: int, num_classes: int, anchors_per_cell: int, num_dir_bins: int = 2,
                 iou_branch: bool = False):
        super().__init__()
        self.num_classes, self.anchors_per_cell, self.num_dir_bins = num_classes, anchors_per_cell, num_dir_bins
        a = anchors_per_cell
        self.conv_cls = nn.Conv2d(in_channels, a * num_classes, 1)
        self.conv_box = nn.Conv2d(in_channels, a * 7, 1)
        self.conv_dir = nn.Conv2d(in_channels, a * num_dir_bins, 1) if num_dir_bins > 0 else None
        self.conv_iou = nn.Conv2d(in_channels, a, 1) if iou_branch else None
        prior_bias = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
        nn.init.constant_(self.conv_cls.bias, prior_bias)
        if self.conv_iou is not None:
            # The IoU loss sums over all positions: start near 0 so it does not swamp the others at init.
            nn.init.constant_(self.conv_iou.bias, prior_bias)
        nn.init.normal_(self.conv_box.weight, mean=0.0, std=0.001)
        nn.init.zeros_(self.conv_box.bias)

    @property
    def output_names(self) -> tuple[str, ...]:
        names = ["cls", "box"] + (["dir"] if self.conv_dir is not None else [])
        return tuple(names + (["iou"] if self.conv_iou is not None else []))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = [self.conv_cls(x), self.conv_box(x)]
        if self.conv_dir is not None:
            outputs.append(self.conv_dir(x))
        if self.conv_iou is not None:
            outputs.append(self.conv_iou(x))
        return tuple(outputs)


def flatten_anchor_map(x: torch.Tensor, channels_per_anchor: int) -> torch.Tensor:
    """(B, A*K, H, W) -> (B, H*W*A, K) in position order."""
    b = x.shape[0]
    return x.permute(0, 2, 3, 1).reshape(b, -1, channels_per_anchor)
