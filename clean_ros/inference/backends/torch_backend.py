"""PyTorch backend: runs the bundle's Detector dense part in torch (CPU or CUDA, optional fp16 on CUDA)."""
from __future__ import annotations

import torch

from clean_ros.inference.backends.base import Backend, BackendError


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, detector, device: str | torch.device = "cpu", fp16: bool = False):
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("torch backend: device cuda requested but torch sees no CUDA device")
        if fp16 and device.type != "cuda":
            raise BackendError("torch backend: fp16 is only supported on CUDA (CPU half convolutions are slow and "
                               "less accurate); use fp16=False on CPU")
        super().__init__(detector.dense_output_names, device)
        self._device = device
        self.fp16 = fp16
        self.detector = detector.to(device).eval()
        # The dense part in its own copy when running fp16, so the fp32 encoder / head_output stay untouched.
        self.dense = detector.dense_module()
        if fp16:
            import copy

            self.dense = copy.deepcopy(self.dense).half()

    @property
    def device(self) -> str:
        return str(self._device) + (" fp16" if self.fp16 else "")

    @torch.inference_mode()
    def run(self, bev: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bev = bev.to(self._device, torch.float16 if self.fp16 else torch.float32)
        maps = self.dense(bev)
        return tuple(m.float() for m in maps)
