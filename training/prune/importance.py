"""Filter importance by category knowledge (METHOD.md section 4): how much the class probabilities move when one
output filter of a prunable layer is zeroed.

For filter f: P = sigmoid(class logits) of the unpruned model, P^(f) = the same with f's conv weights zeroed
(BN untouched, so the channel becomes BN's constant after ReLU).
  masked (CLEAN):     I_f = sum_frames 1/|M| sum_{i in M} sum_c |P^(f)_ic - P_ic|,  M = positions kept by the
                      unpruned model's own post-processing (positions of
                      clean_ros.inference.postprocess.postprocess_tensors)
  unmasked (CaKDP):   the same mean over every position.
Frames where the unpruned model detects nothing contribute 0 to the masked criterion (counted in the result).
  l1 (ablation "L1-norm pruning instead of category importance"): I_f = ||W_f||_1 / mean_g ||W_g||_1 over the
                      filters g of the same layer; data-free (score_filters reads no batch). The ranking is global
                      (section 4), and raw L1 norms are not comparable across layers: they grow with the fan-in
                      (in_channels x kernel taps), so without the per-layer mean the widest-input layers would keep
                      everything. Same layers as the category criteria (build_graph), so surgery is unchanged.

Vectorised: the unpruned pass runs once per batch; K = filters_per_pass variants then share one forward pass as
K replicas along the batch dimension, and a forward hook multiplies the scored conv's OUTPUT (before its BN) by
a per-replica channel mask. Our prunable convs have no bias, so a zero in the mask is exactly "weights zeroed"
(test_prune checks this against really zeroed weights). For BEV layers the part of the network before the
scored block is computed once and replicated; for sparse 3D layers the stages before the scored one are computed
once and their sparse output is replicated (stage 0 and pillar encoder layers re-run from the voxels).
Scoring runs in eval mode (BN with running statistics; in training mode the replicas would share batch
statistics) and restores the model's mode afterwards.

Score on TRAINING frames only (METHOD.md section 9: the reference scores on the validation split). Pass the
training loader; a loader whose dataset is the val / test split is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from clean_ros.models import sparse as sp
from clean_ros.models.detector import Detector
from clean_ros.models.sparse_backbone import height_compression
from clean_ros.inference.postprocess import postprocess_tensors
from training.prune.prune_config import PruneConfig
from training.prune.graph import PrunableLayer, build_graph


@dataclass
class ImportanceScores:
    """Per-layer importance (float64, one value per output filter), in graph order."""

    layers: list[PrunableLayer]
    scores: dict[str, torch.Tensor]
    criterion: str
    num_frames: int = 0
    frames_without_detections: int = 0

    def layer(self, name: str) -> PrunableLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def check_training_split(batches: object) -> None:
    """Refuse a DataLoader over the evaluation split (val / test) of a KittiDataset-like dataset."""
    dataset = getattr(batches, "dataset", None)
    split, config = getattr(dataset, "split", None), getattr(dataset, "config", None)
    if split is None or config is None:
        return
    eval_splits = {getattr(config, "val_split", None), getattr(config, "test_split", None)}
    if split in eval_splits and split != getattr(config, "train_split", None):
        raise ValueError(f"pruning importance must be scored on training frames, but the loader reads split "
                         f"{split!r} (the evaluation split); pass the training loader")


class _ReplicaChannelMask:
    """Forward hook: output of replica k is multiplied by mask[k] along the channel dim (K replicas, B frames)."""

    def __init__(self, kind: str, mask: torch.Tensor, batch_size: int):
        self.kind, self.mask, self.batch_size = kind, mask, batch_size

    def __call__(self, module, inputs, output):
        k = self.mask.shape[0]
        if self.kind in ("conv", "deconv"):  # (K*B, C, H, W), replica-major
            shape = output.shape
            m = self.mask.to(output.dtype).view(k, 1, shape[1], *([1] * (output.dim() - 2)))
            return (output.view(k, shape[0] // k, *shape[1:]) * m).view(shape)
        if self.kind == "linear":  # pillar PointNet: (K*V, T, C) padded or (K*N, C) per point, replica-major
            shape = output.shape
            m = self.mask.to(output.dtype).view(k, *([1] * (output.dim() - 1)), shape[-1])
            return (output.view(k, shape[0] // k, *shape[1:]) * m).view(shape)
        # sparse: rows carry their batch index; replica = batch index // B
        replica = output.indices[:, 0].long() // self.batch_size
        return output.replace_feature(output.features * self.mask.to(output.features.dtype)[replica])


def _replicate_voxels(voxels, replicas: int, batch_size: int):
    coords = voxels.coords.repeat(replicas, 1)
    offsets = torch.arange(replicas, device=coords.device).repeat_interleave(voxels.coords.shape[0])
    coords[:, 0] += (offsets * batch_size).to(coords.dtype)
    return type(voxels)(voxels.features.repeat(replicas, 1, 1), voxels.num_points.repeat(replicas), coords)


def _repeat(x: torch.Tensor, k: int) -> torch.Tensor:
    return x.repeat(k, *([1] * (x.dim() - 1)))


class _BEVCache:
    """Block inputs / outputs and deblock outputs of the unpruned BEV backbone for one batch, and the sparse
    backbone's stage outputs (None for pillars)."""

    def __init__(self, detector: Detector, canvas: torch.Tensor, sparse_stages: list | None = None):
        self.sparse_stages = sparse_stages
        bev = detector.bev_backbone
        self.inputs, self.outputs, self.ups = [], [], []
        x = canvas
        for i, block in enumerate(bev.blocks):
            self.inputs.append(x)
            x = block(x)
            self.outputs.append(x)
            if len(bev.deblocks):
                self.ups.append(bev.deblocks[i](x))

    def features(self, detector: Detector, k: int, start_block: int | None = None, deblock: int | None = None
                 ) -> torch.Tensor:
        """BEV features of k replicas, recomputing from block `start_block` (or only deblock `deblock`)."""
        bev = detector.bev_backbone
        ups = [_repeat(u, k) for u in self.ups]
        if deblock is not None:
            ups[deblock] = bev.deblocks[deblock](_repeat(self.outputs[deblock], k))
            x = None
        else:
            x = _repeat(self.inputs[start_block], k)
            for i in range(start_block, len(bev.blocks)):
                x = bev.blocks[i](x)
                if len(bev.deblocks):
                    ups[i] = bev.deblocks[i](x)
        if not ups:
            return x
        return torch.cat(ups, dim=1) if len(ups) > 1 else ups[0]


def _position_weights(output, cfg, criterion: str) -> tuple[torch.Tensor, int]:
    """(B, P) weights: 1/|M_b| on frame b's kept positions (masked) or 1/P everywhere (unmasked)."""
    b, p = output.cls_logits.shape[:2]
    if criterion == "unmasked":
        return output.cls_logits.new_full((b, p), 1.0 / p, dtype=torch.float64), 0
    weights = torch.zeros((b, p), dtype=torch.float64, device=output.cls_logits.device)
    empty = 0
    for i, frame in enumerate(postprocess_tensors(output, cfg)):
        positions = torch.unique(frame.positions)  # class-aware NMS may keep one position twice
        if positions.numel() == 0:
            empty += 1
            continue
        weights[i, positions] = 1.0 / positions.numel()
    return weights, empty


@torch.no_grad()
def score_filters(detector: Detector, batches: Iterable, cfg: PruneConfig | None = None,
                  layers: list[PrunableLayer] | None = None) -> ImportanceScores:
    """Importance of every prunable filter over the first cfg.num_frames frames of `batches` (training frames).

    batches: an iterable of training.data.sample.Batch (e.g. the training DataLoader). layers: the pruning
    graph (default build_graph(detector, cfg.prune_encoder, cfg.prune_backbone_3d)). With cfg.criterion "l1"
    the scores come from the weights alone (l1_scores) and `batches` is not iterated.
    """
    cfg = cfg or PruneConfig()
    check_training_split(batches)
    layers = layers if layers is not None else build_graph(detector, cfg.prune_encoder, cfg.prune_backbone_3d)
    if cfg.criterion == "l1":  # weights only: the batches are never iterated
        return l1_scores(detector, layers)
    modules = dict(detector.named_modules())
    device = next(detector.parameters()).device
    scores = {layer.name: torch.zeros(layer.width, dtype=torch.float64, device=device) for layer in layers}
    was_training = detector.training
    detector.eval()
    frames = empty = 0
    try:
        for batch in batches:
            if frames >= cfg.num_frames:
                break
            if hasattr(batch, "to"):
                batch = batch.to(device)
            voxels, b = batch.voxels, batch.batch_size
            canvas, sparse_out = detector.encode_with_3d(voxels, b)
            cache = _BEVCache(detector, canvas, sparse_out.stages if sparse_out is not None else None)
            bev_features = _concat(cache, canvas)
            base = detector.head_output(detector.head(bev_features), bev_features)
            weights, batch_empty = _position_weights(base, detector.cfg, cfg.criterion)
            use = min(b, cfg.num_frames - frames)
            weights[use:] = 0.0  # frames beyond the requested subset
            frames += use
            empty += min(batch_empty, use)
            probs = torch.sigmoid(base.cls_logits.float())
            for layer in layers:
                _score_layer(detector, modules, layer, voxels, b, cache, probs, weights, cfg.filters_per_pass,
                             scores[layer.name])
    finally:
        detector.train(was_training)
    return ImportanceScores(layers, {k: v.cpu() for k, v in scores.items()}, cfg.criterion, frames, empty)


def _output_dim(kind: str) -> int:
    """The output-filter dim of a prunable layer's weight: transposed conv [in, out, kh, kw]; conv [out, in, kh, kw],
    linear [out, in] and spconv [out, kz, ky, kx, in] have it first."""
    return 1 if kind == "deconv" else 0


@torch.no_grad()
def l1_scores(detector: Detector, layers: list[PrunableLayer]) -> ImportanceScores:
    """L1-norm criterion: each filter's weight L1 norm divided by its layer's mean filter norm (float64).

    Per-layer normalisation because the ranking is global: a layer's raw norms scale with its fan-in, so they are
    not comparable with another layer's. A layer whose weights are all zero keeps scores of 0."""
    modules = dict(detector.named_modules())
    scores = {}
    for layer in layers:
        weight = modules[layer.name].weight.detach().double()
        dim = _output_dim(layer.kind)
        norms = weight.abs().transpose(0, dim).reshape(weight.shape[dim], -1).sum(dim=1)
        if norms.numel() != layer.width:
            raise ValueError(f"{layer.name}: weight has {norms.numel()} output filters, the graph says {layer.width}")
        mean = norms.mean()
        scores[layer.name] = (norms / mean if mean > 0 else norms).cpu()
    return ImportanceScores(layers, scores, "l1", num_frames=0, frames_without_detections=0)


def _concat(cache: _BEVCache, canvas: torch.Tensor) -> torch.Tensor:
    """The unpruned BEV backbone output from the cache (same ops as BEVBackbone.forward)."""
    if cache.ups:
        return torch.cat(cache.ups, dim=1) if len(cache.ups) > 1 else cache.ups[0]
    return cache.outputs[-1] if cache.outputs else canvas


def _layer_position(layer: PrunableLayer) -> tuple[int | None, int | None]:
    """(start_block, deblock) of a BEV layer."""
    parts = layer.name.split(".")
    index = int(parts[2])
    return (index, None) if parts[1] == "blocks" else (None, index)


def _sparse_start(layer: PrunableLayer) -> int | None:
    """Stage index of a sparse layer; None for the z-downsampling output conv."""
    parts = layer.name.split(".")
    return int(parts[2]) if parts[1] == "stages" else None


def _replicate_sparse(x: sp.SparseConvTensor, k: int, batch_size: int) -> sp.SparseConvTensor:
    """k replicas of a sparse batch (replica r holds batch indices r*B .. r*B + B - 1), with no cached pairs."""
    coords = x.indices.repeat(k, 1)
    replica = torch.arange(k, device=coords.device).repeat_interleave(x.indices.shape[0])
    coords[:, 0] += (replica * batch_size).to(coords.dtype)
    return sp.sparse_tensor(x.features.repeat(k, 1), coords, x.spatial_shape, k * batch_size, check=False)


def _sparse_tail(detector: Detector, stages: list, start: int | None, k: int, batch_size: int) -> torch.Tensor:
    """BEV canvas of k replicas, re-running the sparse backbone from stage `start` (None: only the output conv)
    on the cached output of the stage before (same ops as SparseBackbone3D.forward)."""
    backbone = detector.backbone_3d
    first = len(backbone.stages) if start is None else start
    x = _replicate_sparse(stages[first - 1], k, batch_size)
    for stage in list(backbone.stages)[first:]:
        x = stage(x)
    if backbone.out is not None:
        x = backbone.out(x)
    return height_compression(x)


def _score_layer(detector: Detector, modules: dict[str, nn.Module], layer: PrunableLayer, voxels, batch_size: int,
                 cache: _BEVCache, probs: torch.Tensor, weights: torch.Tensor, per_pass: int,
                 out: torch.Tensor) -> None:
    module = modules[layer.name]
    device = probs.device
    for start in range(0, layer.width, per_pass):
        filters = torch.arange(start, min(start + per_pass, layer.width), device=device)
        k = filters.numel()
        mask = torch.ones((k, layer.width), device=device)
        mask[torch.arange(k, device=device), filters] = 0.0
        handle = module.register_forward_hook(_ReplicaChannelMask(layer.kind, mask, batch_size))
        try:
            if layer.group == "bev":
                start_block, deblock = _layer_position(layer)
                features = cache.features(detector, k, start_block=start_block, deblock=deblock)
                logits = detector.head_output(detector.head(features), features).cls_logits
            elif layer.group == "backbone_3d" and _sparse_start(layer) != 0:
                features = detector.bev_backbone(_sparse_tail(detector, cache.sparse_stages, _sparse_start(layer),
                                                              k, batch_size))
                logits = detector.head_output(detector.head(features), features).cls_logits
            else:
                logits = detector(_replicate_voxels(voxels, k, batch_size), k * batch_size).cls_logits
        finally:
            handle.remove()
        variant = torch.sigmoid(logits.float()).view(k, *probs.shape)
        change = (variant - probs.unsqueeze(0)).abs().sum(-1).double()  # (K, B, P)
        out[filters] += (change * weights.unsqueeze(0)).sum(dim=(1, 2))


__all__ = ["ImportanceScores", "score_filters", "l1_scores", "check_training_split"]
