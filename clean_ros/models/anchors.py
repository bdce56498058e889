"""Feature-map geometry and per-class anchors on it.

Position layout (shared by the anchor head, targets, post-processing and distillation):
position p = (row * W + col) * A + a, with a = class_index * R + rotation_index (A = C * R anchors per cell).
For the center head A = 1 and p = row * W + col. Row follows y, col follows x (BEV canvas [y, x]).
Anchor / cell centres sit at the middle of each feature cell.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from clean_ros.models.detector_config import AnchorClassConfig, DetectorConfig


class FeatureGrid(NamedTuple):
    """Where the head's feature map lies in the LiDAR frame."""

    height: int  # rows (y)
    width: int  # cols (x)
    x_min: float
    y_min: float
    cell_x: float  # metres per feature cell along x
    cell_y: float
    positions_per_cell: int  # anchors per cell (1 for the center head)

    @property
    def num_cells(self) -> int:
        return self.height * self.width

    @property
    def num_positions(self) -> int:
        return self.num_cells * self.positions_per_cell

    @property
    def x_max(self) -> float:
        return self.x_min + self.width * self.cell_x

    @property
    def y_max(self) -> float:
        return self.y_min + self.height * self.cell_y

    def centers_of(self, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y (float64) of the centres of the given cell indices (row * W + col)."""
        rows = torch.div(cells, self.width, rounding_mode="floor")
        x = self.x_min + ((cells - rows * self.width).to(torch.float64) + 0.5) * self.cell_x
        y = self.y_min + (rows.to(torch.float64) + 0.5) * self.cell_y
        return x, y

    def cell_centers(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(H * W, 2) x, y of each cell centre, row-major."""
        xs = self.x_min + (torch.arange(self.width, device=device, dtype=torch.float32) + 0.5) * self.cell_x
        ys = self.y_min + (torch.arange(self.height, device=device, dtype=torch.float32) + 0.5) * self.cell_y
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)

    def cell_of_position(self, positions: torch.Tensor) -> torch.Tensor:
        """Cell index (row * W + col) of position indices."""
        return torch.div(positions, self.positions_per_cell, rounding_mode="floor")


def feature_grid(cfg: DetectorConfig) -> FeatureGrid:
    height, width = cfg.feature_map_size
    r = cfg.point_cloud_range
    per_cell = len(cfg.head.anchors) and sum(len(a.rotations) for a in cfg.head.anchors)
    return FeatureGrid(height=height, width=width, x_min=float(r[0]), y_min=float(r[1]),
                       cell_x=(r[3] - r[0]) / width, cell_y=(r[4] - r[1]) / height,
                       positions_per_cell=per_cell if cfg.head.type == "anchor" else 1)


def generate_anchors(grid: FeatureGrid, classes: Sequence[AnchorClassConfig],
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors (P, 7) and their class index (P,) in the position layout above.

    Every class must have the same number of rotations (the head's conv channels assume it).
    """
    rotations = {len(c.rotations) for c in classes}
    if len(rotations) != 1:
        raise ValueError(f"all anchor classes need the same number of rotations, got {sorted(rotations)}")
    per_cell = []  # (A, 7) anchors relative to a cell: x = y = 0
    per_cell_class = []
    for class_index, c in enumerate(classes):
        l, w, h = c.size
        for yaw in c.rotations:
            per_cell.append([0.0, 0.0, c.bottom_z + h / 2.0, l, w, h, yaw])
            per_cell_class.append(class_index)
    template = torch.tensor(per_cell, dtype=torch.float32, device=device)  # (A, 7)
    centers = grid.cell_centers(device)  # (HW, 2)
    anchors = template.unsqueeze(0).repeat(centers.shape[0], 1, 1)  # (HW, A, 7)
    anchors[:, :, :2] = centers.unsqueeze(1)
    classes_t = torch.tensor(per_cell_class, dtype=torch.int64, device=device).repeat(centers.shape[0])
    return anchors.reshape(-1, 7), classes_t
