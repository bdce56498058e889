"""Which filters of a Detector can be pruned, and where each one's output channel goes (the pruning graph).

A PrunableLayer is one conv / linear whose output filters are scored and removed, with its BatchNorm (always
followed by ReLU in our networks) and its Consumers: every layer that reads its output, with the input channels
of the consumer that producer channel f feeds (`in_channels[f]`, one row per producer channel):
  - plain chain / deblock input:  [f]
  - deblock concat -> head:       [offset_i + f]   (offset = widths of the deblocks before it)
  - pillar PointNet [x ; max]:    [f, W + f]
  - height compression (3D->BEV): [f * D + d for d in range(D)]   (BEV channel = c * D + d)
A consumer's `fold` names where a removed filter's constant output can be folded ("bn:<module>" = the BN
right after the consumer, eval-mode running mean; "bias:<module>" = the consumer's own bias), or None when the
channel is not constant at the consumer's input (after the pillar scatter or a sparse conv the channel is the
constant only on occupied sites and 0 elsewhere).
The head is never pruned; its input width follows the deblocks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from clean_ros.models.anchor_head import AnchorHead
from clean_ros.models.pillar import PillarFeatureNet

LayerKind = Literal["linear", "conv", "deconv", "sparse"]


@dataclass
class Consumer:
    module: str
    kind: LayerKind
    in_channels: torch.Tensor  # (producer width, m) long: consumer input channels fed by each producer channel
    fold: str | None  # "bn:<module>" | "bias:<module>" | None (channel not constant at the consumer's input)


@dataclass
class PrunableLayer:
    name: str  # the conv / linear module
    norm: str  # its BatchNorm module
    kind: LayerKind
    width: int
    group: Literal["encoder", "backbone_3d", "bev"]
    config_path: tuple  # where the width lives in the DetectorConfig dict, e.g. ("bev_backbone", "layer_widths", 1, 2)
    consumers: list[Consumer] = field(default_factory=list)


def _rows(width: int, offsets=(0,), scale: int = 1, repeats: int = 1) -> torch.Tensor:
    """in_channels table: row f = [off + f * scale + d for off in offsets for d in range(repeats)]."""
    f = torch.arange(width).unsqueeze(1)
    cols = [off + f * scale + d for off in offsets for d in range(repeats)]
    return torch.cat(cols, dim=1).long()


def _bev_first_conv_consumer(channel_rows: torch.Tensor) -> Consumer:
    """The first BEV conv reads a scattered / height-compressed canvas: no fold (not constant off the sites)."""
    return Consumer("bev_backbone.blocks.0.0", "conv", channel_rows, fold=None)


def _head_consumers(detector: nn.Module, width: int, offset: int) -> list[Consumer]:
    rows = _rows(width, offsets=(offset,))
    head = detector.head
    if isinstance(head, AnchorHead):
        names = [n for n in ("conv_cls", "conv_box", "conv_dir", "conv_iou") if getattr(head, n) is not None]
        return [Consumer(f"head.{n}", "conv", rows, fold=f"bias:head.{n}") for n in names]
    return [Consumer("head.shared.0", "conv", rows, fold="bn:head.shared.1")]


def _conv_kind(module: nn.Module) -> LayerKind:
    return "deconv" if isinstance(module, nn.ConvTranspose2d) else "conv"


def build_graph(detector: nn.Module, prune_encoder: bool = False, prune_backbone_3d: bool = True
                ) -> list[PrunableLayer]:
    """Prunable layers of `detector` in forward order (encoder, sparse 3D backbone, BEV blocks and deblocks)."""
    layers: list[PrunableLayer] = []
    encoder = detector.encoder
    if prune_encoder and isinstance(encoder, PillarFeatureNet):
        last = len(encoder.linears) - 1
        for i, linear in enumerate(encoder.linears):
            w = linear.out_features
            if i < last:  # next layer reads [per-point x ; pillar max]
                consumers = [Consumer(f"encoder.linears.{i + 1}", "linear", _rows(w, offsets=(0, w)),
                                      fold=f"bn:encoder.norms.{i + 1}")]
            else:  # scattered to the BEV canvas: the constant sits on occupied pillars only -> no fold
                consumers = [_bev_first_conv_consumer(_rows(w))]
            layers.append(PrunableLayer(f"encoder.linears.{i}", f"encoder.norms.{i}", "linear", w, "encoder",
                                        ("encoder", "widths", i), consumers))
    backbone_3d = getattr(detector, "backbone_3d", None)
    if backbone_3d is not None and prune_backbone_3d:
        layers += _sparse_layers(detector)

    bev = detector.bev_backbone
    num_blocks = len(bev.blocks)
    has_deblocks = len(bev.deblocks) > 0
    deblock_widths = [d[0].out_channels for d in bev.deblocks]
    for i, block in enumerate(bev.blocks):
        conv_positions = list(range(0, len(block), 3))
        for jj, j in enumerate(conv_positions):
            conv = block[j]
            if not (isinstance(block[j + 1], nn.BatchNorm2d) and isinstance(block[j + 2], nn.ReLU)):
                raise TypeError(f"bev_backbone.blocks.{i}: expected (conv, BN, ReLU) triples")
            w = conv.out_channels
            consumers: list[Consumer] = []
            if jj + 1 < len(conv_positions):
                consumers.append(Consumer(f"bev_backbone.blocks.{i}.{j + 3}", "conv", _rows(w),
                                          fold=f"bn:bev_backbone.blocks.{i}.{j + 4}"))
            else:
                if has_deblocks:
                    consumers.append(Consumer(f"bev_backbone.deblocks.{i}.0", _conv_kind(bev.deblocks[i][0]),
                                              _rows(w), fold=f"bn:bev_backbone.deblocks.{i}.1"))
                if i + 1 < num_blocks:
                    consumers.append(Consumer(f"bev_backbone.blocks.{i + 1}.0", "conv", _rows(w),
                                              fold=f"bn:bev_backbone.blocks.{i + 1}.1"))
                elif not has_deblocks:
                    consumers += _head_consumers(detector, w, 0)
            layers.append(PrunableLayer(f"bev_backbone.blocks.{i}.{j}", f"bev_backbone.blocks.{i}.{j + 1}",
                                        "conv", w, "bev", ("bev_backbone", "layer_widths", i, jj), consumers))
    for i, deblock in enumerate(bev.deblocks):
        w = deblock[0].out_channels
        offset = sum(deblock_widths[:i])
        layers.append(PrunableLayer(f"bev_backbone.deblocks.{i}.0", f"bev_backbone.deblocks.{i}.1",
                                    _conv_kind(deblock[0]), w, "bev", ("bev_backbone", "num_upsample_filters", i),
                                    _head_consumers(detector, w, offset)))
    return layers


def _sparse_layers(detector: nn.Module) -> list[PrunableLayer]:
    """SECOND's sparse 3D backbone: every conv of every stage and the z-downsampling output conv.

    Consumers are the next sparse conv (a chain) and, for the last one, the first BEV conv through the height
    compression: kept 3D channel c feeds BEV channels c * D + d for every depth d. No fold: after a sparse conv
    a removed channel is its constant only on active sites (0 elsewhere), so its contribution is not constant.
    """
    backbone = detector.backbone_3d
    convs: list[tuple[str, str, int, tuple]] = []  # (conv name, BN name, width, config path)
    for i, stage in enumerate(backbone.stages):
        for j, block in enumerate(stage):
            if not (isinstance(block[1], nn.BatchNorm1d) and isinstance(block[2], nn.ReLU)):
                raise TypeError(f"backbone_3d.stages.{i}.{j}: expected (sparse conv, BatchNorm1d, ReLU)")
            convs.append((f"backbone_3d.stages.{i}.{j}.0", f"backbone_3d.stages.{i}.{j}.1", block[0].out_channels,
                          ("backbone_3d", "widths", i, j)))
    if backbone.out is not None:
        convs.append(("backbone_3d.out.0", "backbone_3d.out.1", backbone.out[0].out_channels,
                      ("backbone_3d", "out_width")))
    layers = []
    for k, (name, norm, width, path) in enumerate(convs):
        if k + 1 < len(convs):
            consumers = [Consumer(convs[k + 1][0], "sparse", _rows(width), fold=None)]
        else:  # height compression: BEV channel = c * D + d
            consumers = [_bev_first_conv_consumer(_rows(width, scale=backbone.depth, repeats=backbone.depth))]
        layers.append(PrunableLayer(name, norm, "sparse", width, "backbone_3d", path, consumers))
    return layers


__all__ = ["Consumer", "PrunableLayer", "build_graph"]
