"""Sparse 3D convolution layers that are correct on CPU (and wherever spconv has no CUDA kernels).

Why this module exists (spconv 2.3.8, CPU-only wheel; evidence in test/clean_ros/models/test_sparse_cpu.py):
  * ``SpconvOps.scatter_add_cpu`` races when OpenMP runs more than one thread: its parallel loop shares
    the row pointers ``buf``/``out_ptr`` between threads (captured by reference), so with
    ``torch.set_num_threads(>1)`` some output rows of SparseConv3d / SubMConv3d silently receive
    another row's update. ``gather_cpu`` and the CPU indice-pair generation are correct (the latter is a
    sequential hash-map loop).
  * ``ops.indice_conv_backward`` calls ``torch.cuda.current_stream()`` unconditionally, so every CPU
    backward raises "Torch not compiled with CUDA enabled".
  * spconv's 1x1x1 shortcut multiplies by ``weight.view(in, out)`` although the parameter is laid out
    ``[out, 1, 1, 1, in]``: output channel ``o`` is not ``weight[o]``. Channel slicing (pruning, teacher-
    guided initialisation) relies on ``weight[o]`` being filter ``o``, so our layers use the true
    ``[out, kz, ky, kx, in]`` meaning for every kernel size, on every device. (A kernel-1 weight trained
    with raw spconv converts as ``w.reshape(in, out).t().reshape(out, 1, 1, 1, in)``.)

Design: the layers subclass spconv's own (same constructor, same ``weight``/``bias`` parameters with
spconv's KRSC layout ``[out, kz, ky, kx, in]``, so state dicts load either way; kernel 1: see above). Indice pairs come from
spconv's CPU generator and are cached in ``SparseConvTensor.indice_dict`` under ``indice_key`` exactly as
spconv does (SubM layers sharing a key reuse them; SparseInverseConv3d inverts the pairs of the strided
conv with the same key). The arithmetic, gather -> per-offset matmul -> scatter-add, is plain torch
(``index_select`` / ``mm`` / ``index_add_``): correct with any thread count, differentiable by autograd.
On a CUDA tensor with a CUDA build of spconv we call spconv's own kernels, except the 1x1x1 case.
No global monkey-patching.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch
from cumm import tensorview as tv
from spconv.core import ConvAlgo
from spconv.cppconstants import CPU_ONLY_BUILD
from spconv.pytorch import ops as _spconv_ops
from spconv.pytorch import conv as _spconv_conv
from spconv.pytorch.core import IndiceData, SparseConvTensor
from spconv.pytorch.modules import SparseModule, SparseSequential

__all__ = [
    "SparseConvTensor",
    "SparseSequential",
    "SparseModule",
    "SubMConv3d",
    "SparseConv3d",
    "SparseInverseConv3d",
    "sparse_tensor",
    "to_dense",
    "uses_torch_path",
]

_NO_ACTIVATION = tv.gemm.Activation.None_

# spconv's kernels are used only where they exist and are trusted: CUDA tensors on a CUDA build.
SPCONV_HAS_CUDA = not CPU_ONLY_BUILD


def uses_torch_path(features: torch.Tensor) -> bool:
    """True when our torch implementation (not spconv's kernels) computes a conv on ``features``."""
    return not (features.is_cuda and SPCONV_HAS_CUDA)


def sparse_tensor(features: torch.Tensor, coords: torch.Tensor, spatial_shape: Sequence[int],
                  batch_size: int, check: bool = True) -> SparseConvTensor:
    """Build a SparseConvTensor from voxel features (V, C) and coords (V, 4) = [batch, z, y, x].

    ``spatial_shape`` is (nz, ny, nx). With ``check`` the coords are validated (range, duplicates):
    spconv silently mis-computes on duplicated or out-of-grid sites, so we fail loudly instead.
    """
    if features.dim() != 2:
        raise ValueError(f"sparse_tensor: features must be (V, C), got shape {tuple(features.shape)}")
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"sparse_tensor: coords must be (V, 4) [batch, z, y, x], got {tuple(coords.shape)}")
    if coords.shape[0] != features.shape[0]:
        raise ValueError(f"sparse_tensor: {coords.shape[0]} coords but {features.shape[0]} feature rows")
    if len(spatial_shape) != 3:
        raise ValueError(f"sparse_tensor: spatial_shape must be (nz, ny, nx), got {list(spatial_shape)}")
    if coords.is_floating_point():
        raise ValueError(f"sparse_tensor: coords must be integer, got {coords.dtype}")
    spatial_shape = [int(s) for s in spatial_shape]
    coords = coords.to(torch.int32).contiguous()
    if check and coords.shape[0] > 0:
        upper = torch.tensor([batch_size, *spatial_shape], device=coords.device)
        bad = (coords < 0).any(1) | (coords >= upper).any(1)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"sparse_tensor: coord row {row} = {coords[row].tolist()} lies outside "
                             f"batch {batch_size} x grid {spatial_shape}")
        flat = _linear_index(coords.long(), spatial_shape)
        if torch.unique(flat).numel() != flat.numel():
            raise ValueError("sparse_tensor: duplicated voxel coords (each [batch, z, y, x] must appear once)")
    return SparseConvTensor(features, coords, spatial_shape, batch_size)


def to_dense(x: SparseConvTensor, channels_first: bool = True) -> torch.Tensor:
    """Dense copy of ``x``: (B, C, nz, ny, nx) (or (B, nz, ny, nx, C)); differentiable w.r.t. features.

    Same result as spconv's ``x.dense()`` (plain torch indexing, correct with any thread count) without its
    deprecated list-indexing warning. Height compression to BEV is ``to_dense(x).flatten(1, 2)``, i.e.
    BEV channel ``c * nz + z``.
    """
    b, c = x.batch_size, x.features.shape[1]
    nz, ny, nx = x.spatial_shape
    idx = x.indices.to(x.features.device).long()
    out = x.features.new_zeros((b, nz, ny, nx, c))
    out = out.index_put((idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]), x.features)
    return out.permute(0, 4, 1, 2, 3).contiguous() if channels_first else out


def _kernel_volume(kernel_size: Sequence[int]) -> int:
    volume = 1
    for k in kernel_size:
        volume *= int(k)
    return volume


def _linear_index(coords: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    nz, ny, nx = spatial_shape
    return ((coords[:, 0] * nz + coords[:, 1]) * ny + coords[:, 2]) * nx + coords[:, 3]


class _FlatPairs(NamedTuple):
    """Valid (input row, output row) pairs of one indice-pair table, grouped by kernel offset."""
    in_rows: torch.Tensor    # (P,) int64
    out_rows: torch.Tensor   # (P,) int64
    counts: List[int]        # pairs per kernel offset, len kv (SubM centre offset counted as 0)


def _flat_pairs(data: IndiceData, inverse: bool, device: torch.device) -> _FlatPairs:
    """Flatten spconv's padded pair table [2, kv, N] into grouped index vectors; cached on ``data``.

    spconv's SubM table stores counts only for the first half of the offsets; offset k > centre has the
    count of its mirror kv-1-k, and the centre (identity) is left implicit. We skip the centre here and
    apply it as one dense matmul instead.
    """
    cache_name = "_clean_ros_flat_pairs_inverse" if inverse else "_clean_ros_flat_pairs"
    cached = getattr(data, cache_name, None)
    if cached is not None and cached.in_rows.device == device:
        return cached
    pairs = data.indice_pairs.long()
    counts = data.indice_pair_num.long().cpu()
    kv = pairs.shape[1]
    if data.is_subm:
        centre = kv // 2
        counts = torch.cat([counts[:centre], counts.new_zeros(1), counts[:centre].flip(0)])
    mask = torch.arange(pairs.shape[2])[None, :] < counts[:, None]
    mask = mask.to(pairs.device)
    src, dst = (1, 0) if inverse else (0, 1)
    flat = _FlatPairs(pairs[src][mask].to(device), pairs[dst][mask].to(device), counts.tolist())
    setattr(data, cache_name, flat)
    return flat


class _GatherMatmulScatter(torch.autograd.Function):
    """out[o] = sum over pairs (i -> o, offset k) of features[i] @ W_k^T, plus features @ W_centre^T for SubM.

    A custom Function (not autograd over index_select / mm / index_add_) so that the forward writes each
    offset's product straight into one preallocated buffer and the backward recomputes the gathered input
    instead of keeping it alive: ~2x faster than the autograd-composed version and lighter on memory.
    Every op is a plain torch op, correct with any thread count.
    """

    @staticmethod
    def forward(ctx, features, weight, in_rows, out_rows, counts: List[int], num_out: int, subm: bool):
        out_ch, in_ch = weight.shape[0], weight.shape[-1]
        w = weight.reshape(out_ch, -1, in_ch).permute(1, 2, 0).contiguous()  # [kv, in, out]: dense mm operands
        if subm:
            out = torch.mm(features, w[w.shape[0] // 2])
        else:
            out = features.new_zeros((num_out, out_ch))
        if in_rows.numel() > 0:
            gathered = features.index_select(0, in_rows)
            products = features.new_empty((in_rows.numel(), out_ch))
            for k, start, stop in _offset_spans(counts):
                torch.mm(gathered[start:stop], w[k], out=products[start:stop])
            out.index_add_(0, out_rows, products)
        ctx.save_for_backward(features, weight, in_rows, out_rows)
        ctx.counts, ctx.subm = counts, subm
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        features, weight, in_rows, out_rows = ctx.saved_tensors
        out_ch, in_ch = weight.shape[0], weight.shape[-1]
        w = weight.reshape(out_ch, -1, in_ch).transpose(0, 1).contiguous()  # [kv, out, in]
        centre = w.shape[0] // 2
        grad_out = grad_out.contiguous()
        grad_out_pairs = grad_out.index_select(0, out_rows)
        spans = _offset_spans(ctx.counts)
        grad_features = grad_weight = None
        if ctx.needs_input_grad[0]:
            if ctx.subm:
                grad_features = torch.mm(grad_out, w[centre])
            else:
                grad_features = features.new_zeros(features.shape)
            grad_in_pairs = features.new_empty((in_rows.numel(), in_ch))
            for k, start, stop in spans:
                torch.mm(grad_out_pairs[start:stop], w[k], out=grad_in_pairs[start:stop])
            grad_features.index_add_(0, in_rows, grad_in_pairs)
        if ctx.needs_input_grad[1]:
            grad_w = weight.new_zeros(weight.reshape(out_ch, -1, in_ch).shape)
            gathered = features.index_select(0, in_rows)
            for k, start, stop in spans:
                grad_w[:, k] = torch.mm(grad_out_pairs[start:stop].t(), gathered[start:stop])
            if ctx.subm:
                grad_w[:, centre] = torch.mm(grad_out.t(), features)
            grad_weight = grad_w.reshape(weight.shape)
        return grad_features, grad_weight, None, None, None, None, None


def _offset_spans(counts: List[int]):
    """(offset k, start, stop) row spans of the flattened pairs, for offsets that have pairs."""
    spans, start = [], 0
    for k, n in enumerate(counts):
        if n > 0:
            spans.append((k, start, start + n))
            start += n
    return spans


class _TorchPathConv:
    """Mixin: replaces spconv's forward with the torch gather-mm-scatter path where needed."""

    def forward(self, input: SparseConvTensor, add_input: Optional[SparseConvTensor] = None):
        if not isinstance(input, SparseConvTensor):
            raise TypeError(f"{type(self).__name__} expects a SparseConvTensor, got {type(input).__name__}")
        if input.features.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: input has {input.features.shape[1]} channels, "
                             f"layer expects {self.in_channels}")
        if not (self.conv1x1 and not self.inverse) and not uses_torch_path(input.features):
            return super().forward(input, add_input)
        if self.act_type != _NO_ACTIVATION:
            raise NotImplementedError(f"{type(self).__name__}: fused activation (act_type) is only "
                                      "available on spconv's CUDA kernels; apply the activation separately")
        return self._torch_forward(input, add_input)

    def _torch_forward(self, input: SparseConvTensor, add_input: Optional[SparseConvTensor]):
        features = input.features
        if self.conv1x1 and not self.inverse:
            # kernel 1 (and stride 1, or SubM): a per-site linear map, no pairs needed.
            out_features = torch.mm(features, self.weight.reshape(self.out_channels, self.in_channels).t())
            out = input.shadow_copy()
            out.spatial_shape = self._out_spatial_shape(input.spatial_shape)
            return self._finish(out, out_features, add_input)
        data, out_indices, out_shape, indice_dict = self._indice_data(input)
        pairs = _flat_pairs(data, self.inverse, features.device)
        out_features = _GatherMatmulScatter.apply(features, self.weight, pairs.in_rows, pairs.out_rows,
                                                  pairs.counts, out_indices.shape[0], self.subm)
        out = input.shadow_copy()
        out.indices = out_indices
        out.spatial_shape = out_shape
        out.indice_dict = indice_dict
        return self._finish(out, out_features, add_input)

    def _finish(self, out: SparseConvTensor, out_features: torch.Tensor,
                add_input: Optional[SparseConvTensor]) -> SparseConvTensor:
        if self.bias is not None:
            out_features = out_features + self.bias
        if add_input is not None:
            out_features = out_features + add_input.features
        out = out.replace_feature(out_features)
        return out

    def _out_spatial_shape(self, spatial_shape: List[int]) -> List[int]:
        if self.subm:
            return list(spatial_shape)
        return _spconv_ops.get_conv_output_size(spatial_shape, self.kernel_size, self.stride,
                                                self.padding, self.dilation)

    def _indice_data(self, input: SparseConvTensor):
        """(IndiceData, output indices, output spatial shape, indice_dict for the output)."""
        indice_dict = input.indice_dict.copy()
        cached = input.find_indice_pair(self.indice_key)
        if cached is not None and not isinstance(cached, IndiceData):
            raise TypeError(f"indice_key {self.indice_key!r} holds {type(cached).__name__} pairs (spconv "
                            "implicit-gemm); layers sharing a key must all run on the same path")
        if self.inverse:
            if cached is None:
                raise KeyError(f"SparseInverseConv3d: no pairs under indice_key {self.indice_key!r}; "
                               "it must follow a SparseConv3d with the same indice_key")
            if cached.is_subm:
                raise ValueError(f"SparseInverseConv3d: indice_key {self.indice_key!r} belongs to a SubM "
                                 "layer; inverse needs a strided/regular SparseConv3d")
            self._check_inverse_reuse_valid(input, input.spatial_shape, cached)
            return cached, cached.indices, list(cached.spatial_shape), indice_dict
        if cached is not None:
            if not self.subm:
                raise ValueError(f"indice_key {self.indice_key!r} is already used; only SubM layers may "
                                 "share pairs (give each SparseConv3d its own key)")
            self._check_subm_reuse_valid(input, input.spatial_shape, cached)
            return cached, cached.out_indices, list(input.spatial_shape), indice_dict
        out_shape = self._out_spatial_shape(input.spatial_shape)
        if any(s <= 0 for s in out_shape):
            raise ValueError(f"{type(self).__name__}: output grid {out_shape} is empty for input grid "
                             f"{list(input.spatial_shape)}")
        indices_cpu = input.indices.cpu()
        if indices_cpu.shape[0] == 0:
            # an empty cloud gives an empty output (spconv's generator cannot handle zero sites)
            kv = _kernel_volume(self.kernel_size)
            out_indices = indices_cpu
            indice_pairs = torch.zeros((2, kv, 0), dtype=indices_cpu.dtype)
            indice_pair_num = torch.zeros((kv,), dtype=indices_cpu.dtype)
        else:
            out_indices, indice_pairs, indice_pair_num = _spconv_ops.get_indice_pairs(
                indices_cpu, input.batch_size, list(input.spatial_shape), ConvAlgo.Native,
                self.kernel_size, self.stride, self.padding, self.dilation, self.output_padding,
                self.subm, self.transposed)
        out_indices = out_indices.to(input.indices.device)
        data = IndiceData(out_indices, input.indices, indice_pairs, indice_pair_num,
                          list(input.spatial_shape), out_shape, is_subm=self.subm, algo=ConvAlgo.Native,
                          ksize=self.kernel_size, stride=self.stride, padding=self.padding,
                          dilation=self.dilation)
        if self.indice_key is not None:
            indice_dict[self.indice_key] = data
        return data, out_indices, out_shape, indice_dict


def _torch_only_algo(algo: Optional[ConvAlgo]) -> Optional[ConvAlgo]:
    # A CPU-only spconv build accepts only the native algorithm; a CUDA build keeps its default.
    return ConvAlgo.Native if CPU_ONLY_BUILD else algo


class SubMConv3d(_TorchPathConv, _spconv_conv.SubMConv3d):
    """Submanifold 3D conv: output sites = input sites. Args as spconv.SubMConv3d
    (in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
    indice_key=None, algo=None). Weight [out, kz, ky, kx, in]."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, indice_key=None, algo: Optional[ConvAlgo] = None, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         indice_key=indice_key, algo=_torch_only_algo(algo), **kwargs)


class SparseConv3d(_TorchPathConv, _spconv_conv.SparseConv3d):
    """Regular (strided) sparse 3D conv: output sites = every site reached by an active input.
    Args as spconv.SparseConv3d (in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
    groups=1, bias=True, indice_key=None, algo=None). Weight [out, kz, ky, kx, in]."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, indice_key=None, algo: Optional[ConvAlgo] = None, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         indice_key=indice_key, algo=_torch_only_algo(algo), **kwargs)


class SparseInverseConv3d(_TorchPathConv, _spconv_conv.SparseInverseConv3d):
    """Inverse of the SparseConv3d registered under ``indice_key``: maps its output sites back to its input
    sites (a transposed conv restricted to those sites). Args as spconv.SparseInverseConv3d
    (in_channels, out_channels, kernel_size, indice_key, bias=True, algo=None)."""

    def __init__(self, in_channels, out_channels, kernel_size, indice_key, bias=True,
                 algo: Optional[ConvAlgo] = None, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, indice_key, bias,
                         algo=_torch_only_algo(algo), **kwargs)
