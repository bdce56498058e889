"""Inference backends behind one interface (clean_ros.inference.backends.base.Backend), and `auto` selection.

auto = TensorRT if importable and a CUDA GPU is present, else ONNX Runtime (if installed and the bundle has
model.onnx), else PyTorch. The choice and the reason are logged in one line on logger "clean_ros.backends".
"""
from __future__ import annotations

import logging
from typing import NamedTuple

from clean_ros.inference.backends.base import Backend, BackendError, BackendUnavailable
from clean_ros.defaults import BACKENDS as BACKEND_NAMES

LOG = logging.getLogger("clean_ros.backends")  # the logger keeps its documented name from before the move to inference/


class BackendChoice(NamedTuple):
    name: str
    reason: str


def choose_backend(requested: str, bundle, device: str = "cpu") -> BackendChoice:
    """Resolve 'auto' (or check an explicit name) to a concrete backend name, with the reason."""
    if requested not in BACKEND_NAMES:
        raise BackendError(f"unknown backend {requested!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if requested != "auto":
        return BackendChoice(requested, "requested explicitly")
    from clean_ros.inference.backends.tensorrt_backend import tensorrt_unavailable_reason

    skipped = []
    trt_reason = tensorrt_unavailable_reason()
    if trt_reason is None and bundle.onnx_path is not None:
        return BackendChoice("tensorrt", "auto: tensorrt importable and a CUDA GPU present")
    skipped.append(f"tensorrt: {trt_reason or 'bundle has no model.onnx'}")
    try:
        import onnxruntime  # noqa: F401
        ort_reason = None if bundle.onnx_path is not None else "bundle has no model.onnx"
    except ImportError:
        ort_reason = "onnxruntime not installed"
    if ort_reason is None:
        return BackendChoice("onnxruntime", "auto: " + "; ".join(skipped))
    skipped.append(f"onnxruntime: {ort_reason}")
    return BackendChoice("torch", "auto: " + "; ".join(skipped))


def create_backend(name: str, bundle, detector, device: str = "cpu", *, fp16: bool | None = None,
                   intra_op_threads: int = 0, use_encoder_onnx: bool = True, int8: bool = False) -> Backend:
    """Instantiate backend `name` (not 'auto') for a loaded bundle and its torch detector.

    fp16: torch on CUDA (default off) / TensorRT (default on). int8: ONNX Runtime on the bundle's model.int8.onnx
    (training/quantize_bundle.py); any other backend, or a bundle without it, is an error, never a silent float run.
    Outputs land on `device`.
    """
    cfg = bundle.detector_config
    if int8:
        if name != "onnxruntime":
            raise BackendError(f"int8 runs on onnxruntime (the bundle's model.int8.onnx), not on backend {name!r}")
        if bundle.int8_onnx_path is None:
            raise BackendError(f"int8: bundle {bundle.path} has no model.int8.onnx; add one with python "
                               f"training/quantize_bundle.py {bundle.path} --data SIMULATED_DATASET")
    if name == "torch":
        return TorchBackend(detector, device, fp16=bool(fp16))
    if bundle.onnx_path is None:
        raise BackendError(f"backend {name}: bundle {bundle.path} has no model.onnx (saved with export_onnx=False)")
    encoder_onnx = bundle.encoder_onnx_path if use_encoder_onnx else None
    if name == "onnxruntime":
        from clean_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(bundle.int8_onnx_path if int8 else bundle.onnx_path, detector.dense_output_names,
                                  encoder_onnx, device=device, intra_op_threads=intra_op_threads,
                                  output_device=device, precision="int8" if int8 else "fp32")
    if name == "tensorrt":
        from clean_ros.inference.backends.tensorrt_backend import TensorRTBackend

        export = bundle.manifest["export"]
        bev_shape = export["dense_onnx"]["inputs"]["bev"]
        enc = export.get("encoder_onnx") or {}
        enc_shape = enc.get("inputs", {}).get("features", [None, cfg.max_points_per_voxel, cfg.num_point_features])
        return TensorRTBackend(bundle.onnx_path, detector.dense_output_names, bev_shape, encoder_onnx,
                               enc_shape[1:], cfg.max_voxels_test, precision="fp32" if fp16 is False else "fp16",
                               device=device if str(device).startswith("cuda") else "cuda",
                               output_device=device)
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")


def open_backend(requested: str, bundle, detector, device: str = "cpu", **kwargs) -> Backend:
    """choose_backend + create_backend; with 'auto', an unavailable choice falls through to the next one."""
    if kwargs.get("int8") and requested in ("auto", "onnxruntime"):
        choice = BackendChoice("onnxruntime", "int8: onnxruntime on model.int8.onnx" if requested == "auto"
                               else "requested explicitly")
        requested = "onnxruntime"  # no fallback: a float backend is not what int8 asked for
    else:
        choice = choose_backend(requested, bundle, device)
    order = [choice.name] + ([n for n in ("onnxruntime", "torch") if n != choice.name] if requested == "auto" else [])
    reasons = [choice.reason]
    for name in order:
        try:
            backend = create_backend(name, bundle, detector, device, **kwargs)
        except BackendError as exc:  # BackendUnavailable included
            if requested != "auto":
                raise
            reasons.append(f"{name} failed: {exc}")
            continue
        LOG.info("backend: %s on %s (%s)", backend.name, backend.device, "; ".join(reasons))
        backend.selection_reason = "; ".join(reasons)
        return backend
    raise BackendError("no backend could be created: " + "; ".join(reasons))


from clean_ros.inference.backends.torch_backend import TorchBackend  # noqa: E402

__all__ = ["Backend", "BackendError", "BackendUnavailable", "BackendChoice", "BACKEND_NAMES", "choose_backend",
           "create_backend", "open_backend", "TorchBackend"]
