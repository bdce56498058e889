"""ONNX Runtime backend: the bundle's model.onnx (and encoder.onnx when present) in onnxruntime sessions.

CPUExecutionProvider always; CUDAExecutionProvider first when the device is cuda and the provider is available
(onnxruntime-gpu). intra_op_threads (0 = onnxruntime's default, one per physical core) is a session option.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clean_ros.inference.backends.base import Backend, BackendError, BackendUnavailable
from clean_ros.inference.onnx_export import ENCODER_INPUTS, DENSE_INPUT


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from None
    return onnxruntime


def available_providers() -> list[str]:
    try:
        return list(_ort().get_available_providers())
    except BackendUnavailable:
        return []


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, dense_onnx: str | Path, output_names, encoder_onnx: str | Path | None = None,
                 device: str = "cpu", intra_op_threads: int = 0, output_device: str | torch.device = "cpu",
                 precision: str = "fp32"):
        ort = _ort()
        super().__init__(output_names, output_device)
        self.precision = precision  # "int8": dense_onnx is the bundle's model.int8.onnx
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("onnxruntime: device cuda requested but CUDAExecutionProvider is not "
                                         f"available (providers: {', '.join(ort.get_available_providers())}); "
                                         "install onnxruntime-gpu or use device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.intra_op_threads = int(intra_op_threads)
        self.dense = self._session(ort, dense_onnx, options, providers)
        got = [o.name for o in self.dense.get_outputs()]
        if tuple(got) != self.output_names:
            raise BackendError(f"{dense_onnx}: graph outputs {got} differ from the detector's {list(self.output_names)}")
        self.encoder = self._session(ort, encoder_onnx, options, providers) if encoder_onnx else None
        self.encoder_width = int(self.encoder.get_outputs()[0].shape[1]) if self.encoder else 0
        self.providers = self.dense.get_providers()

    @staticmethod
    def _session(ort, path, options, providers):
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, NoSuchFile)
            raise BackendError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None

    @property
    def device(self) -> str:
        return self.providers[0]

    def describe(self) -> str:
        return f"{self.name} on {self.device}" + (" (int8 dense part)" if self.precision == "int8" else "")

    @property
    def has_encoder(self) -> bool:
        return self.encoder is not None

    def _to_torch(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.output_device)

    def run(self, bev: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = {DENSE_INPUT: bev.detach().to("cpu", torch.float32).contiguous().numpy()}
        return tuple(self._to_torch(m) for m in self.dense.run(None, inputs))

    def encode_pillars(self, features, num_points, coords):
        if self.encoder is None:
            return None
        if features.shape[0] == 0:  # zero-size dims are not worth a graph call
            return torch.zeros((0, self.encoder_width), dtype=torch.float32, device=self.output_device)
        arrays = [features.detach().cpu().float(), num_points.detach().cpu().int(), coords.detach().cpu().int()]
        inputs = {name: t.contiguous().numpy() for name, t in zip(ENCODER_INPUTS, arrays)}
        return self._to_torch(self.encoder.run(None, inputs)[0])
