"""Teacher-guided initialisation (SparseKD, METHOD.md section 6): copy the teacher's leading channels into a
narrower student of the same structure.

Every parameter and buffer of the student takes the teacher's entry of the same name, sliced: output channels
[0, C_s), input channels the leading ones, except where a layer's input is a concatenation or a flattening:
- PointNet layers after the first read [per-point (w) ; pillar max (w)]: the kept inputs are the leading w_s of
  each half (j and w_t + j);
- the head's first convs read the concatenated deblock outputs: the leading widths of each deblock's segment;
- the first BEV conv after a sparse 3D backbone reads the height-compressed map whose channel c * D + d holds 3D
  channel c at height d: kept 3D channels c < C_s map to every c * D + d (sparse_backbone.bev_channels_of).
Spatial kernel dimensions must match. Sparse (spconv) conv weights are [out, kz, ky, kx, in]: their input channel
is the last dimension. A TwoStageDetector teacher gives its RPN.
"""
from __future__ import annotations

import torch
from torch import nn

from clean_ros.models.detector import Detector
from clean_ros.models.sparse_backbone import bev_channels_of


def concat_channels(teacher_widths: list[int], student_widths: list[int]) -> torch.Tensor:
    """Input channels of a concatenation [seg_0 ; seg_1 ; ...] kept by the leading student width of each segment."""
    if len(teacher_widths) != len(student_widths):
        raise ValueError(f"concatenation of {len(student_widths)} segments in the student, {len(teacher_widths)} in "
                         f"the teacher")
    starts = torch.tensor([0] + list(teacher_widths[:-1])).cumsum(0)
    return torch.cat([start + torch.arange(w) for start, w in zip(starts.tolist(), student_widths)])


def _bev_segments(model: Detector) -> list[int]:
    cfg = model.cfg.bev_backbone
    return list(cfg.num_upsample_filters) if cfg.upsample_strides else [cfg.layer_widths[-1][-1]]


def _input_maps(student: Detector, teacher: Detector) -> dict[str, torch.Tensor]:
    """Parameter name -> the teacher input-channel (dim 1) indices it takes, where that is not the leading slice."""
    maps: dict[str, torch.Tensor] = {}
    s_enc, t_enc = student.cfg.encoder, teacher.cfg.encoder
    if s_enc.type == "pillar":
        for i in range(1, len(s_enc.widths)):
            maps[f"encoder.linears.{i}.weight"] = concat_channels([t_enc.widths[i - 1]] * 2, [s_enc.widths[i - 1]] * 2)
    head_inputs = concat_channels(_bev_segments(teacher), _bev_segments(student))
    if student.cfg.head.type == "anchor":
        for name in ("conv_cls", "conv_box", "conv_dir", "conv_iou"):
            maps[f"head.{name}.weight"] = head_inputs
    else:
        maps["head.shared.0.weight"] = head_inputs
    if student.cfg.backbone_3d.type == "sparse":
        depth = teacher.backbone_3d.depth
        if student.backbone_3d.depth != depth:
            raise ValueError(f"teacher_guided_init: height-compression depth {student.backbone_3d.depth} in the "
                             f"student, {depth} in the teacher (same grid and z strides needed)")
        maps["bev_backbone.blocks.0.0.weight"] = bev_channels_of(torch.arange(student.backbone_3d.out_channels), depth)
    return maps


def _sparse_weights(model: nn.Module) -> set[str]:
    """Names of spconv conv weights ([out, kz, ky, kx, in] layout)."""
    try:
        from spconv.pytorch.conv import SparseConvolution
    except ImportError:  # pragma: no cover - spconv is a dependency, but pillar-only installs need no sparse path
        return set()
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, SparseConvolution)}


def _slice(name: str, t: torch.Tensor, s: torch.Tensor, input_index: torch.Tensor | None,
           input_dim: int = 1) -> torch.Tensor:
    if t.dim() != s.dim():
        raise ValueError(f"teacher_guided_init: {name} has shape {tuple(t.shape)} in the teacher, {tuple(s.shape)} "
                         f"in the student")
    if t.dim() == 0:
        return t
    out = t
    input_dim = input_dim % t.dim() if t.dim() > 1 else 1
    channel_dims = {0, input_dim}
    for dim, size in enumerate(s.shape):
        if dim == input_dim and input_index is not None:
            index = input_index.to(t.device)
        else:
            if dim not in channel_dims and t.shape[dim] != size:
                raise ValueError(f"teacher_guided_init: {name} kernel sizes differ: teacher {tuple(t.shape)}, "
                                 f"student {tuple(s.shape)}")
            if size > t.shape[dim]:
                raise ValueError(f"teacher_guided_init: {name} dim {dim} is wider in the student ({size}) than in "
                                 f"the teacher ({t.shape[dim]})")
            index = torch.arange(size, device=t.device)
        if index.numel() != size or (index.numel() and int(index.max()) >= t.shape[dim]):
            raise ValueError(f"teacher_guided_init: {name} input channel map does not fit ({index.numel()} for "
                             f"{size}, teacher {t.shape[dim]})")
        out = out.index_select(dim, index)
    return out


@torch.no_grad()
def teacher_guided_init(student: Detector, teacher: nn.Module) -> list[str]:
    """Copy the teacher's leading slices into the student in place; returns the names copied."""
    teacher = getattr(teacher, "rpn", teacher)
    s_state = student.state_dict()
    t_state = teacher.state_dict()
    missing = sorted(set(s_state) - set(t_state))
    if missing:
        raise ValueError(f"teacher_guided_init: the teacher has no {missing[:5]}{' ...' if len(missing) > 5 else ''}: "
                         f"student and teacher must have the same structure")
    maps = _input_maps(student, teacher)
    sparse = _sparse_weights(student)
    copied = []
    for name, s in s_state.items():
        s.copy_(_slice(name, t_state[name], s, maps.get(name), -1 if name in sparse else 1).to(s.dtype))
        copied.append(name)
    return copied


__all__ = ["teacher_guided_init", "concat_channels"]
