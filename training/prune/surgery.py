"""Ranking and physical pruning: keep the top-rho filters globally, rebuild a smaller Detector from a config with
the new per-layer widths, and copy the surviving weights into it.

Weight mapping (graph in training.prune.graph):
  conv [out, in, kh, kw]            out sliced on the layer's kept filters, in on the producer's kept inputs
  transposed conv [in, out, kh, kw] the same with the two dims swapped
  linear [out, in]                  pillar PointNet; the next layer's input is [x ; pillar max] -> rows f, W + f
  sparse conv [out, kz, ky, kx, in] spconv layout
  BN weight, bias, running mean/var sliced on the kept filters
  deblock concat -> head            head input channel offset_i + f
  height compression                BEV input channels c * D + d (every d) of kept 3D channel c

Constant folding (fold_constants): a removed filter whose weights were zeroed outputs the constant
a_f = ReLU(beta - gamma * mu / sqrt(var + eps)) everywhere, and that constant still feeds its consumers; the
physically pruned network drops it. Its contribution to consumer output o is folded into the consumer's next BN
(eval-mode running_mean -= delta_o) or the consumer's bias (+= delta_o):
  linear:               delta_o = a_f * W[o, j]                               exact
  conv (k x k, pad p):  delta_o = a_f * sum_taps W[o, j]                      exact except within the zero-padded
                                                                              border band the kernel overlaps
  transposed conv (s):  delta_o = a_f * sum_taps W[j, o] / (s_h * s_w)        exact for kernel = stride = 1; for
                                                                              kernel = stride > 1 each output pixel
                                                                              sees one tap: this is the mean
No fold where the channel is not constant at the consumer input (after the pillar scatter, sparse convs).
Without folding, the pruned network equals the original with the removed filters' outputs forced to 0 exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from spconv.pytorch.conv import SparseConvolution
from torch import nn

from clean_ros.yaml_config import load_config, to_dict
from clean_ros.models.detector_config import DetectorConfig
from clean_ros.models.detector import Detector, build_detector
from clean_ros.models.flops import count_parameters
from training.prune.graph import Consumer, PrunableLayer
from training.prune.importance import ImportanceScores


@dataclass
class LayerChange:
    name: str
    group: str
    width_before: int
    width_after: int


@dataclass
class PruneReport:
    keep_ratio: float
    criterion: str
    layers: list[LayerChange]
    params_before: int
    params_after: int
    folded: list[str] = field(default_factory=list)  # "producer -> fold target" pairs that received a fold
    keep: dict[str, torch.Tensor] = field(default_factory=dict)  # kept filter indices per layer

    @property
    def filters_before(self) -> int:
        return sum(c.width_before for c in self.layers)

    @property
    def filters_after(self) -> int:
        return sum(c.width_after for c in self.layers)

    def to_markdown(self) -> str:
        lines = [f"Pruning ({self.criterion}, keep ratio {self.keep_ratio}): filters {self.filters_before} -> "
                 f"{self.filters_after}, parameters {self.params_before:,} -> {self.params_after:,}", "",
                 "| layer | group | width before | width after |", "|---|---|---:|---:|"]
        lines += [f"| {c.name} | {c.group} | {c.width_before} | {c.width_after} |" for c in self.layers]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict:
        return {"keep_ratio": self.keep_ratio, "criterion": self.criterion, "params_before": self.params_before,
                "params_after": self.params_after, "folded": list(self.folded),
                "keep": {k: v.tolist() for k, v in self.keep.items()},
                "layers": [vars(c).copy() for c in self.layers]}


def select_filters(scores: dict[str, torch.Tensor], keep_ratio: float) -> dict[str, torch.Tensor]:
    """Global ranking: keep the round(keep_ratio * N) most important filters over all layers (ties keep the
    earlier filter); a layer left without survivors keeps its most important filter. -> layer -> sorted indices."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    names = list(scores)
    flat = torch.cat([scores[n].double().flatten() for n in names])
    num_keep = max(1, int(round(keep_ratio * flat.numel())))
    order = torch.sort(flat, descending=True, stable=True).indices
    kept = torch.zeros(flat.numel(), dtype=torch.bool)
    kept[order[:num_keep]] = True
    result, start = {}, 0
    for name in names:
        n = scores[name].numel()
        idx = kept[start:start + n].nonzero().flatten()
        if idx.numel() == 0:
            idx = torch.argmax(scores[name].double()).view(1)
        result[name] = idx.sort().values
        start += n
    return result


def _bn_constant(bn: nn.Module) -> torch.Tensor:
    """ReLU(BN(0)) per channel: what a filter with zeroed weights outputs (eval mode)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return torch.relu(bn.bias - scale * bn.running_mean)


def _tap_sums(module: nn.Module, kind: str) -> torch.Tensor:
    """(out, in) response of each consumer output to a unit constant on each input channel (interior)."""
    w = module.weight.detach()
    if kind == "linear":
        return w
    if kind == "conv":
        return w.sum(dim=tuple(range(2, w.dim())))
    if kind == "deconv":
        stride = module.stride[0] * module.stride[1]
        return w.sum(dim=tuple(range(2, w.dim()))).t() / stride
    raise ValueError(f"no constant fold for a {kind} consumer")


def _slice(t: torch.Tensor, dim: int, index: torch.Tensor | None) -> torch.Tensor:
    return t if index is None else t.index_select(dim, index.to(t.device))


def _in_out_dims(module: nn.Module) -> tuple[int, int]:
    """(input-channel dim, output-channel dim) of a layer's weight."""
    if isinstance(module, nn.ConvTranspose2d):
        return 0, 1
    if isinstance(module, SparseConvolution):
        return -1, 0  # spconv [out, kz, ky, kx, in]
    return 1, 0


def prune_with_keep(detector: Detector, layers: list[PrunableLayer], keep: dict[str, torch.Tensor],
                    fold_constants: bool = True) -> tuple[Detector, DetectorConfig, list[str]]:
    """Physically prune `detector` to the given kept filters per layer -> (new detector, its config, folds done)."""
    modules = dict(detector.named_modules())
    state = {k: v.detach().clone() for k, v in detector.state_dict().items()}
    out_index: dict[str, torch.Tensor] = {}
    in_keep: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    folded: list[str] = []
    for layer in layers:
        if layer.name not in keep:
            continue
        idx = torch.as_tensor(keep[layer.name], dtype=torch.long).flatten().cpu().sort().values
        if idx.numel() == 0 or idx.numel() != torch.unique(idx).numel() or idx[-1] >= layer.width or idx[0] < 0:
            raise ValueError(f"{layer.name}: kept indices must be distinct, non-empty and < {layer.width}")
        out_index[layer.name] = out_index[layer.norm] = idx
        removed = torch.ones(layer.width, dtype=torch.bool)
        removed[idx] = False
        if not removed.any():
            continue
        constant = _bn_constant(modules[layer.norm]).detach().cpu()
        for consumer in layer.consumers:
            module = modules[consumer.module]
            width_in = module.weight.shape[_in_out_dims(module)[0]]
            mask = in_keep.setdefault(consumer.module, torch.ones(width_in, dtype=torch.bool))
            mask[consumer.in_channels[removed].flatten()] = False
            if fold_constants and consumer.fold is not None:
                _add_fold(consumer, module, constant, removed, width_in, deltas)
                folded.append(f"{layer.name} -> {consumer.fold.split(':', 1)[1]}")
    for target, delta in deltas.items():  # fold on the full tensors, before slicing
        kind, name = target.split(":", 1)
        if kind == "bn":
            state[f"{name}.running_mean"] = state[f"{name}.running_mean"] - delta.to(state[f"{name}.running_mean"])
        else:
            state[f"{name}.bias"] = state[f"{name}.bias"] + delta.to(state[f"{name}.bias"])
    new_state = {}
    for key, tensor in state.items():
        module_name, _, param = key.rpartition(".")
        module = modules.get(module_name)
        out_idx = out_index.get(module_name)
        in_mask = in_keep.get(module_name)
        in_idx = in_mask.nonzero().flatten() if in_mask is not None else None
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            new_state[key] = tensor if param == "num_batches_tracked" else _slice(tensor, 0, out_idx)
        elif param == "weight" and (out_idx is not None or in_idx is not None):
            in_dim, out_dim = _in_out_dims(module)
            new_state[key] = _slice(_slice(tensor, out_dim, out_idx), in_dim, in_idx)
        elif param == "bias":
            new_state[key] = _slice(tensor, 0, out_idx)
        else:
            new_state[key] = tensor
    cfg_dict = to_dict(detector.cfg)
    for layer in layers:
        if layer.name in out_index:
            _set_path(cfg_dict, layer.config_path, int(out_index[layer.name].numel()))
    new_cfg = load_config(DetectorConfig, data=cfg_dict)
    pruned = build_detector(new_cfg)
    pruned.load_state_dict(new_state, strict=True)
    param = next(detector.parameters())
    pruned.to(device=param.device, dtype=param.dtype)
    pruned.train(detector.training)
    return pruned, new_cfg, folded


def _add_fold(consumer: Consumer, module: nn.Module, constant: torch.Tensor, removed: torch.Tensor,
              width_in: int, deltas: dict[str, torch.Tensor]) -> None:
    const_in = torch.zeros(width_in, dtype=torch.float64)
    rows = consumer.in_channels[removed]  # (R, m)
    const_in[rows.flatten()] = constant[removed].double().repeat_interleave(rows.shape[1])
    delta = _tap_sums(module, consumer.kind).detach().cpu().double() @ const_in
    deltas[consumer.fold] = deltas.get(consumer.fold, 0) + delta


def _set_path(data: dict, path: tuple, value: int) -> None:
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _check_scores_match(importance: ImportanceScores) -> None:
    """The scores must cover exactly the graph's layers, one value per filter (e.g. after loading them from disk)."""
    names = [layer.name for layer in importance.layers]
    if set(names) != set(importance.scores):
        missing, extra = sorted(set(names) - set(importance.scores)), sorted(set(importance.scores) - set(names))
        raise ValueError(f"importance scores do not match the pruning graph: missing {missing}, unexpected {extra} "
                         f"(were they scored with other prune_encoder / prune_backbone_3d settings?)")
    for layer in importance.layers:
        if importance.scores[layer.name].numel() != layer.width:
            raise ValueError(f"importance scores of {layer.name}: {importance.scores[layer.name].numel()} values "
                             f"for {layer.width} filters")


def prune_detector(detector: Detector, importance: ImportanceScores, keep_ratio: float,
                   fold_constants: bool = True) -> tuple[Detector, DetectorConfig, PruneReport]:
    """One-shot pruning: global top-`keep_ratio` filters by `importance` -> (pruned detector, its config, report).

    The pruned detector rebuilds from the returned config alone (every width is in it) and holds the inherited
    weights; the original detector is not modified.
    """
    _check_scores_match(importance)
    keep = select_filters(importance.scores, keep_ratio)
    pruned, cfg, folded = prune_with_keep(detector, importance.layers, keep, fold_constants)
    changes = [LayerChange(layer.name, layer.group, layer.width, int(keep[layer.name].numel()))
               for layer in importance.layers]
    report = PruneReport(keep_ratio, importance.criterion, changes, count_parameters(detector),
                         count_parameters(pruned), folded, keep)
    return pruned, cfg, report


__all__ = ["select_filters", "prune_with_keep", "prune_detector", "PruneReport", "LayerChange"]
