"""Parameter and FLOP counting for every model, from hooks on a real forward pass.

FLOPs here are multiply-accumulates (MACs), the convention of the reference tables (PointPillars KITTI:
34.3 "GFLOPs" = 34.3 G multiply-accumulates; METHOD.md §8). Counted: Conv1d/2d/3d, ConvTranspose1d/2d/3d,
Linear, and sparse convolutions (active output sites x kernel volume x Cin x Cout / groups). Norms,
activations, pooling and scatter are not counted (as in the references).

Other layer types plug in with `register_flop_counter(module_type, fn)`, fn(module, inputs, output) -> MACs.
spconv's SparseConvolution (and every subclass, e.g. our CPU-corrected layers if they subclass it) is
registered when spconv is importable; a layer that wraps rather than subclasses it should register itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

FlopCounter = Callable[[nn.Module, tuple, Any], int]
_COUNTERS: dict[type, FlopCounter] = {}


def register_flop_counter(module_type: type, counter: FlopCounter) -> None:
    """Count `module_type` (and subclasses) with `counter(module, inputs, output) -> MACs`."""
    _COUNTERS[module_type] = counter


def _conv_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    # Each output element sums Cin/groups x kernel products.
    kernel = math.prod(module.kernel_size)
    return output.numel() * (module.in_channels // module.groups) * kernel


def _deconv_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    # Each input element is multiplied into Cout/groups x kernel outputs.
    kernel = math.prod(module.kernel_size)
    return inputs[0].numel() * (module.out_channels // module.groups) * kernel


def _linear_macs(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> int:
    return output.numel() * module.in_features


def sparse_conv_macs(num_active_sites: int, kernel_volume: int, in_channels: int, out_channels: int,
                     groups: int = 1) -> int:
    """MACs of a sparse conv counted the references' way: active output sites x kernel volume x Cin x Cout."""
    return num_active_sites * kernel_volume * (in_channels // groups) * out_channels


def _spconv_macs(module: nn.Module, inputs: tuple, output: Any) -> int:
    kernel = module.kernel_size
    volume = math.prod(kernel) if isinstance(kernel, (tuple, list)) else int(kernel) ** 3
    features = output.features if hasattr(output, "features") else output
    return sparse_conv_macs(features.shape[0], volume, module.in_channels, module.out_channels,
                            getattr(module, "groups", 1))


for _type in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_flop_counter(_type, _conv_macs)
for _type in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_flop_counter(_type, _deconv_macs)
register_flop_counter(nn.Linear, _linear_macs)
try:  # pragma: no branch - spconv is an optional runtime dependency
    from spconv.pytorch.conv import SparseConvolution as _SparseConvolution

    register_flop_counter(_SparseConvolution, _spconv_macs)
except ImportError:  # no spconv: pillar models need none
    pass


def _counter_for(module: nn.Module) -> FlopCounter | None:
    for klass in type(module).__mro__:
        if klass in _COUNTERS:
            return _COUNTERS[klass]
    return None


@dataclass
class FlopReport:
    """MACs of one forward, total and per layer (qualified module name)."""

    flops: int
    params: int
    by_layer: dict[str, int] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def by_prefix(self, depth: int = 1) -> dict[str, int]:
        """Totals grouped by the first `depth` components of the layer name (e.g. 'bev_backbone')."""
        out: dict[str, int] = {}
        for name, value in self.by_layer.items():
            key = ".".join(name.split(".")[:depth])
            out[key] = out.get(key, 0) + value
        return out


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, *args, forward: Callable[..., Any] | None = None, **kwargs) -> FlopReport:
    """Run `forward(*args, **kwargs)` (default: model(*args, **kwargs)) under no_grad and count MACs.

    Every call of a layer counts (a layer used twice counts twice). Pillar encoders are counted over their padded
    (V, T) point grid, the references' convention, also where inference runs on the real points only.
    """
    by_layer: dict[str, int] = {}
    handles = []
    padded = {m: m.per_point_inference for m in model.modules() if hasattr(m, "per_point_inference")}
    for module in padded:
        module.per_point_inference = False

    def make_hook(name: str, counter: FlopCounter):
        def hook(module, inputs, output):
            by_layer[name] = by_layer.get(name, 0) + int(counter(module, inputs, output))
        return hook

    for name, module in model.named_modules():
        counter = _counter_for(module)
        if counter is not None:
            handles.append(module.register_forward_hook(make_hook(name, counter)))
    try:
        with torch.no_grad():
            (forward or model)(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        for module, before in padded.items():
            module.per_point_inference = before
    return FlopReport(flops=sum(by_layer.values()), params=count_parameters(model), by_layer=by_layer)
