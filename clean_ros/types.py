"""Typed values passed between runtime stages."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Final detections of one frame, in the input cloud's frame.

    boxes: (N, 7) float32 x, y, z (centre), l, w, h, yaw; scores: (N,) float32; labels: (N,) int64 indices
    into class_names.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls, class_names: tuple[str, ...]) -> "Detections":
        return cls(np.zeros((0, 7), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), tuple(class_names))

    @property
    def names(self) -> np.ndarray:
        return np.asarray(self.class_names, dtype=object)[self.labels] if len(self) else np.zeros(0, dtype=object)
