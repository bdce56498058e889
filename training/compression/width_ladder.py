"""The reference width ladders (x1.0 / 0.75 / 0.5 / 0.3 of every prunable layer's width) as pruning keep ratios.

The references build their smaller students with width multipliers; the prune stage's `prune.keep_ratio` is the
fraction of all prunable filters that survive, so ladder step x m is `prune.keep_ratio: m`
(config/compress/kitti_x075.yaml, kitti_x050.yaml, kitti_x030.yaml; x1.0 = config/compress/kitti.yaml's student
before pruning, i.e. its `student_baseline` row). Global ranking decides how the kept filters spread over the
layers, so a pruned student's size differs from the uniform one; `uniform_width_config` gives the uniform network
of a step (every prunable layer, as training.prune.graph.build_graph lists them, at round(width x m)) as the size
reference the tests and docs/COMPRESS.md quote.
"""
from __future__ import annotations

from clean_ros.models.detector import build_detector
from clean_ros.models.detector_config import DetectorConfig
from clean_ros.yaml_config import load_config, to_dict
from training.prune.graph import build_graph
from training.prune.surgery import _set_path

LADDER = (1.0, 0.75, 0.5, 0.3)


def uniform_width_config(cfg: DetectorConfig, multiplier: float, prune_encoder: bool = False,
                         prune_backbone_3d: bool = True) -> DetectorConfig:
    """`cfg` with every prunable layer at max(1, round(width x multiplier)); the head keeps its own widths (its
    input follows the BEV backbone), as in pruning."""
    if not 0.0 < multiplier <= 1.0:
        raise ValueError(f"width multiplier must be in (0, 1], got {multiplier}")
    data = to_dict(cfg)
    for layer in build_graph(build_detector(cfg), prune_encoder, prune_backbone_3d):
        _set_path(data, layer.config_path, max(1, int(round(layer.width * multiplier))))
    return load_config(DetectorConfig, data=data)


__all__ = ["LADDER", "uniform_width_config"]
