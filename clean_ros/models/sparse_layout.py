"""SECOND's sparse 3D backbone layout, written once.

`clean_ros.models.sparse_backbone` builds its strided convs from these specs, and `stage_shapes` derives the
(z, y, x) extent of every stage from the same specs, so the config checks (`clean_ros.models.detector_config`) know the
output shape without importing spconv.

  stage 0: SubM convs (stride 1, shape unchanged)
  stage i = 1, 2, 3: opens with a SparseConv3d kernel 3, stride 2, padding (1, 1, 1); the last stage (0, 1, 1)
  out: SparseConv3d kernel (3, 1, 1), stride (2, 1, 1), no padding (only shrinks z; skipped when out_width = 0)
All triples are (z, y, x).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from clean_ros.models.detector_config import Backbone3DConfig

SPARSE_NUM_STAGES = 4

Triple = tuple[int, int, int]


class ConvSpec(NamedTuple):
    """Kernel, stride and padding of one strided sparse conv, each (z, y, x)."""

    kernel: Triple
    stride: Triple
    padding: Triple

    def output_shape(self, shape: Triple) -> Triple:
        """(z, y, x) extent after this conv (dilation 1)."""
        return tuple((size + 2 * pad - k) // s + 1  # type: ignore[return-value]
                     for size, k, s, pad in zip(shape, self.kernel, self.stride, self.padding))


OUT_CONV = ConvSpec(kernel=(3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))


def down_conv(stage: int) -> ConvSpec:
    """The strided conv that opens stage 1 .. SPARSE_NUM_STAGES - 1."""
    if not 1 <= stage < SPARSE_NUM_STAGES:
        raise ValueError(f"sparse stage {stage} has no strided conv (stages 1..{SPARSE_NUM_STAGES - 1} do)")
    z_pad = 0 if stage == SPARSE_NUM_STAGES - 1 else 1
    return ConvSpec(kernel=(3, 3, 3), stride=(2, 2, 2), padding=(z_pad, 1, 1))


def input_shape(cfg: Backbone3DConfig, grid_size: tuple[int, int, int]) -> Triple:
    """(z, y, x) extent of the sparse input for a voxel grid (nx, ny, nz): cfg.z_padding layers added above."""
    nx, ny, nz = grid_size
    return nz + cfg.z_padding, ny, nx


def stage_shapes(cfg: Backbone3DConfig, grid_size: tuple[int, int, int]) -> list[Triple]:
    """(z, y, x) extent of each stage's output (and of the output conv, last, when cfg.out_width) for a voxel grid
    (nx, ny, nz)."""
    shape = input_shape(cfg, grid_size)
    shapes = [shape]
    for stage in range(1, SPARSE_NUM_STAGES):
        shape = down_conv(stage).output_shape(shape)
        shapes.append(shape)
    if cfg.out_width:
        shapes.append(OUT_CONV.output_shape(shape))
    return shapes


def output_shape(cfg: Backbone3DConfig, grid_size: tuple[int, int, int]) -> Triple:
    """(D, H, W) of the dense 3D output that is height-compressed to BEV."""
    return stage_shapes(cfg, grid_size)[-1]


__all__ = ["SPARSE_NUM_STAGES", "ConvSpec", "OUT_CONV", "down_conv", "input_shape", "stage_shapes", "output_shape"]
