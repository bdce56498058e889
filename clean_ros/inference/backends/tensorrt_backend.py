"""TensorRT backend, written against the official TensorRT Python API (tensorrt >= 8.6, 10.x preferred).

- Engines are built from the bundle's ONNX files (fp16 by default; fp32 on request), with an optimisation
  profile for every dynamic dimension (the encoder's pillar count: 1 .. max_voxels_test).
- Built engines are cached under ~/.cache/clean_ros/engines (CLEAN_ROS_ENGINE_CACHE overrides). The cache key is
  sha256(onnx) + tensorrt.__version__ + GPU compute capability + precision + shape profile; the full key is stored
  next to the engine and compared on load: an engine whose key differs in anything (built for another GPU,
  TensorRT version, precision, profile or model) is refused and rebuilt, never deserialised.
- I/O buffers are torch CUDA tensors (no pycuda); enqueue on torch's current stream.

`python -m clean_ros.build_engine BUNDLE` builds (or verifies) the cached engines ahead of time.
The cache logic (EngineCache, engine_key) is plain Python and tested without TensorRT.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

from clean_ros.atomic import atomic_write_bytes
from clean_ros.inference.backends.base import Backend, BackendError, BackendUnavailable
from clean_ros.inference.bundle import sha256_file
from clean_ros.inference.onnx_export import DENSE_INPUT, ENCODER_INPUTS

LOG = logging.getLogger("clean_ros.backends")
DEFAULT_CACHE_DIR = Path("~/.cache/clean_ros/engines")
CACHE_ENV = "CLEAN_ROS_ENGINE_CACHE"
KEY_VERSION = 1


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(f"tensorrt is not importable ({exc})") from None
    return trt


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT can run here, else why not (for `auto` selection logs and test skips)."""
    try:
        import_tensorrt()
    except BackendUnavailable as exc:
        return str(exc)
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None


def compute_capability(device_index: int = 0) -> str:
    major, minor = torch.cuda.get_device_capability(device_index)
    return f"{major}.{minor}"


# ----------------------------------------------------------------------------------------------- engine cache
def engine_key(onnx_sha256: str, tensorrt_version: str, compute_capability: str, precision: str,
               shape_profile: Mapping[str, Sequence[Sequence[int]]]) -> dict:
    """Everything an engine depends on. shape_profile: {input name: (min shape, opt shape, max shape)}."""
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision must be fp16 or fp32, got {precision!r}")
    profile = {name: [list(map(int, s)) for s in shapes] for name, shapes in sorted(shape_profile.items())}
    return {"key_version": KEY_VERSION, "onnx_sha256": onnx_sha256, "tensorrt": str(tensorrt_version),
            "compute_capability": str(compute_capability), "precision": precision, "shape_profile": profile}


def key_digest(key: Mapping) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class EngineCache:
    """Serialized engines on disk, each with its full key in a JSON sidecar that is checked before use."""

    def __init__(self, root: str | Path | None = None):
        root = root if root is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
        self.root = Path(root).expanduser()

    def paths(self, key: Mapping, stem: str = "model") -> tuple[Path, Path]:
        digest = key_digest(key)[:24]
        return self.root / f"{stem}-{digest}.engine", self.root / f"{stem}-{digest}.key.json"

    def load(self, key: Mapping, stem: str = "model") -> bytes | None:
        """The engine bytes if a cached engine has exactly this key; None (and a log line) otherwise."""
        engine_path, key_path = self.paths(key, stem)
        if not engine_path.is_file():
            return None
        try:
            stored = json.loads(key_path.read_text())
        except (OSError, json.JSONDecodeError):
            LOG.warning("engine cache: %s has no readable key file %s: refusing it (will rebuild)", engine_path,
                        key_path.name)
            return None
        if stored != dict(key):
            diff = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
            LOG.warning("engine cache: %s was built for a different %s: refusing it (will rebuild)", engine_path,
                        ", ".join(diff))
            return None
        return engine_path.read_bytes()

    def store(self, key: Mapping, engine: bytes, stem: str = "model") -> Path:
        """Write engine + key atomically (temp names, then rename; the key last, so a key always has its engine)."""
        engine_path, key_path = self.paths(key, stem)
        self.root.mkdir(parents=True, exist_ok=True)
        for path, data in ((engine_path, bytes(engine)), (key_path, json.dumps(dict(key), indent=2).encode())):
            atomic_write_bytes(path, data)
        return engine_path


# ----------------------------------------------------------------------------------------------- build / run
def build_serialized_engine(onnx_path: str | Path, precision: str = "fp16",
                            shape_profile: Mapping[str, Sequence[Sequence[int]]] | None = None,
                            workspace_bytes: int = 1 << 30) -> bytes:
    """Parse an ONNX file and build a serialized TensorRT engine."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt, "NetworkDefinitionCreationFlag") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision == "fp16":
        if not getattr(builder, "platform_has_fast_fp16", True):  # deprecated in TensorRT 10
            LOG.warning("TensorRT: this GPU has no fast fp16; building fp16 anyway as requested")
        config.set_flag(trt.BuilderFlag.FP16)
    if shape_profile:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shape_profile.items():
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    return bytes(serialized)


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32, "INT64": torch.int64,
                 "BOOL": torch.bool, "INT8": torch.int8}


class _Engine:
    """One deserialized engine + execution context with torch-tensor I/O."""

    def __init__(self, trt, engine_bytes: bytes, device: torch.device):
        self.trt = trt
        self.device = device
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise BackendError("TensorRT could not deserialize the engine (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]

    def _dtype(self, name: str) -> torch.dtype:
        return _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name]

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keep = []
        for name in self.inputs:
            tensor = inputs[name].to(self.device, self._dtype(name)).contiguous()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._dtype(name), device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BackendError("TensorRT execute_async_v3 failed")
        return outputs


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, dense_onnx: str | Path, output_names, bev_shape: Sequence[int],
                 encoder_onnx: str | Path | None = None, encoder_input_shape: Sequence[int] | None = None,
                 max_pillars: int = 0, precision: str = "fp16", device: str = "cuda",
                 cache: EngineCache | None = None, output_device: str | torch.device | None = None):
        reason = tensorrt_unavailable_reason()
        if reason:
            raise BackendUnavailable(f"tensorrt backend: {reason}")
        trt = import_tensorrt()
        self._device = torch.device(device if str(device).startswith("cuda") else "cuda")
        super().__init__(output_names, output_device or self._device)
        self.precision = precision
        self.cache = cache or EngineCache()
        dense_profile = {DENSE_INPUT: (tuple(bev_shape),) * 3}
        self.dense = _Engine(trt, self._engine_bytes(trt, dense_onnx, dense_profile, "model"), self._device)
        self.encoder = None
        if encoder_onnx is not None:
            t, f = encoder_input_shape
            hi = max(int(max_pillars), 2)
            opt = max(hi // 2, 1)
            profile = {"features": ((1, t, f), (opt, t, f), (hi, t, f)), "num_points": ((1,), (opt,), (hi,)),
                       "coords": ((1, 4), (opt, 4), (hi, 4))}
            self.encoder = _Engine(trt, self._engine_bytes(trt, encoder_onnx, profile, "encoder"), self._device)
            self.max_pillars = hi

    def _engine_bytes(self, trt, onnx_path, profile, stem) -> bytes:
        key = engine_key(sha256_file(onnx_path), trt.__version__, compute_capability(self._device.index or 0),
                         self.precision, profile)
        cached = self.cache.load(key, stem)
        if cached is not None:
            LOG.info("TensorRT: using cached engine %s", self.cache.paths(key, stem)[0])
            return cached
        LOG.info("TensorRT: building %s engine from %s (once; cached in %s)", self.precision, onnx_path,
                 self.cache.root)
        dynamic = {k: v for k, v in profile.items() if v[0] != v[2]}
        engine = build_serialized_engine(onnx_path, self.precision, dynamic or None)
        self.cache.store(key, engine, stem)
        return engine

    @property
    def device(self) -> str:
        return f"{self._device} {self.precision}"

    @property
    def has_encoder(self) -> bool:
        return self.encoder is not None

    def run(self, bev: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.dense({DENSE_INPUT: bev})
        return tuple(out[n].float().to(self.output_device) for n in self.output_names)

    def encode_pillars(self, features, num_points, coords):
        if self.encoder is None:
            return None
        if features.shape[0] == 0:
            return None  # let torch handle the empty frame (zero-size shapes are outside the profile)
        if features.shape[0] > self.max_pillars:
            raise BackendError(f"tensorrt: {features.shape[0]} pillars exceed the engine profile ({self.max_pillars})")
        out = self.encoder(dict(zip(ENCODER_INPUTS, (features, num_points, coords))))
        return out[self.encoder.outputs[0]].float().to(self.output_device)
