"""CenterPoint-style head: shared conv, then a 2-conv branch per output (heatmap, offset, z, size, yaw, IoU)."""
from __future__ import annotations

import torch
from torch import nn

HEATMAP_PRIOR_BIAS = -2.19  # sigmoid(-2.19) ~ 0.1, CenterNet's heatmap initialisation
IOU_PRIOR_BIAS = -4.595  # sigmoid ~ 0.01: the IoU loss sums over all pixels, so start near its target 0
# Channels of the per-pixel regression, in HeadOutput.box_preds order.
CENTER_BOX_CHANNELS = ("offset_x", "offset_y", "z", "log_l", "log_w", "log_h", "sin_yaw", "cos_yaw")
REGRESSION_BRANCHES = (("offset", 2), ("z", 1), ("size", 3), ("rot", 2))


def _branch(in_channels: int, width: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                         nn.BatchNorm2d(width, eps=1e-3, momentum=0.01), nn.ReLU(),
                         nn.Conv2d(width, out_channels, 1))


class CenterHead(nn.Module):
    """Raw maps: heatmap (B, C, H, W), offset (B, 2, ...), z (B, 1), size (B, 3, log l w h), rot (B, 2, sin cos),
    iou (B, 1, H, W) when enabled."""

    def __init__(self, in_channels: int, num_classes: int, shared_width: int = 64, head_width: int = 64,
                 iou_branch: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.shared = nn.Sequential(nn.Conv2d(in_channels, shared_width, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(shared_width, eps=1e-3, momentum=0.01), nn.ReLU())
        self.heatmap = _branch(shared_width, head_width, num_classes)
        nn.init.constant_(self.heatmap[-1].bias, HEATMAP_PRIOR_BIAS)
        self.regression = nn.ModuleDict({name: _branch(shared_width, head_width, n) for name, n in REGRESSION_BRANCHES})
        self.iou = _branch(shared_width, head_width, 1) if iou_branch else None
        if self.iou is not None:
            nn.init.constant_(self.iou[-1].bias, IOU_PRIOR_BIAS)

    @property
    def output_names(self) -> tuple[str, ...]:
        names = ("heatmap",) + tuple(name for name, _ in REGRESSION_BRANCHES)
        return names + (("iou",) if self.iou is not None else ())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.shared(x)
        outputs = [self.heatmap(x)] + [self.regression[name](x) for name, _ in REGRESSION_BRANCHES]
        if self.iou is not None:
            outputs.append(self.iou(x))
        return tuple(outputs)
