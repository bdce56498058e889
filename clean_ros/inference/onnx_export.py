"""ONNX export of a Detector's graph parts, used by clean_ros.inference.bundle.save_bundle.

What goes to ONNX and what stays in torch (docs/BUNDLE.md, "Export"):
- model.onnx: Detector.dense_module() = BEV backbone + head. Input "bev" (1, C, ny, nx) float32, outputs the head's
  raw maps named Detector.dense_output_names. Static shape: the BEV grid is fixed by the config, batch 1.
- encoder.onnx (pillar models only): PillarFeatureNet. Inputs "features" (V, T, F) float32, "num_points" (V,)
  int32, "coords" (V, 4) int32; output "pillar_features" (V, C). V (the number of pillars) is dynamic.
- The scatter of pillar features to the BEV canvas stays in torch: it is one index_put of a data-dependent
  index list, as cheap in torch as in any engine, and keeping it out keeps both graphs free of ScatterND with
  data-dependent shapes (fragile across ONNX Runtime / TensorRT versions).
- Sparse-3D models (SECOND): voxel encoder + sparse convolution stay in torch (clean_ros.models.sparse); only
  the dense part after to_dense + BEV reshape is exported. Detector.encode() is whatever runs in torch.

Exports use the TorchScript exporter (dynamo=False, opset 17), in eval mode, on CPU, without touching the caller's
module (a deep copy is exported).
"""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import torch

from clean_ros.models.detector_config import DetectorConfig
from clean_ros.inference.voxelize import voxelize_with_stats

OPSET = 17
ENCODER_INPUTS = ("features", "num_points", "coords")
ENCODER_OUTPUT = "pillar_features"
DENSE_INPUT = "bev"


def example_cloud(cfg: DetectorConfig, num_points: int = 2000, seed: int = 0) -> torch.Tensor:
    """A random cloud inside the config's range (with the config's feature count), for tracing and warm-up."""
    rng = np.random.default_rng(seed)
    r = np.asarray(cfg.point_cloud_range, dtype=np.float32)
    xyz = r[:3] + rng.random((num_points, 3), dtype=np.float32) * (r[3:] - r[:3]) * 0.999
    extra = rng.random((num_points, cfg.num_point_features - 3), dtype=np.float32)
    return torch.from_numpy(np.concatenate([xyz, extra], axis=1))


def example_voxels(cfg: DetectorConfig, num_points: int = 2000):
    voxels, _ = voxelize_with_stats(example_cloud(cfg, num_points), cfg.point_cloud_range, cfg.voxel_size,
                                    cfg.max_points_per_voxel, cfg.max_voxels_test)
    return voxels


def _cpu_eval_copy(detector):
    return copy.deepcopy(detector).to("cpu").float().eval()


def _export(module, inputs: tuple, path: Path, input_names, output_names, dynamic_axes=None) -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python values are expected here
        torch.onnx.export(module, inputs, buffer, input_names=list(input_names), output_names=list(output_names),
                          opset_version=OPSET, dynamo=False, dynamic_axes=dynamic_axes, do_constant_folding=True)
    Path(path).write_bytes(buffer.getvalue())


def export_dense_onnx(detector, cfg: DetectorConfig, path: str | Path) -> dict:
    """Write the dense part to `path`; returns the manifest's export entry (names and shapes)."""
    model = _cpu_eval_copy(detector)
    with torch.no_grad():
        bev = model.encode(example_voxels(cfg), 1)
    names = tuple(model.dense_output_names)
    _export(model.dense_module(), (bev,), Path(path), [DENSE_INPUT], names)
    with torch.no_grad():
        outputs = model.forward_dense(bev)
    return {"file": Path(path).name, "opset": OPSET, "inputs": {DENSE_INPUT: list(bev.shape)},
            "outputs": {n: list(o.shape) for n, o in zip(names, outputs)}}


def export_encoder_onnx(detector, cfg: DetectorConfig, path: str | Path) -> dict:
    """Write the pillar feature net to `path` with a dynamic pillar count; returns the export entry."""
    model = _cpu_eval_copy(detector)
    voxels = example_voxels(cfg)
    dynamic = {name: {0: "num_pillars"} for name in (*ENCODER_INPUTS, ENCODER_OUTPUT)}
    _export(model.encoder, tuple(voxels), Path(path), ENCODER_INPUTS, [ENCODER_OUTPUT], dynamic)
    t, f = voxels.features.shape[1:]
    return {"file": Path(path).name, "opset": OPSET,
            "inputs": {"features": ["num_pillars", int(t), int(f)], "num_points": ["num_pillars"],
                       "coords": ["num_pillars", 4]},
            "outputs": {ENCODER_OUTPUT: ["num_pillars", int(model.encoder.out_channels)]},
            "max_pillars": int(cfg.max_voxels_test)}


__all__ = ["OPSET", "ENCODER_INPUTS", "ENCODER_OUTPUT", "DENSE_INPUT", "example_cloud", "example_voxels",
           "export_dense_onnx", "export_encoder_onnx"]
