"""Pipeline = bundle + backend + pre/post-processing: the ONE object that the node, replay and infer share.

    pipe = Pipeline.from_bundle("models/default", backend="auto", device="cpu")
    pipe.warmup()
    result = pipe(points)            # (N, F) float32, columns in pipe.point_features order
    result.detections, result.timings_ms, result.voxel_stats

Stages (timed, after CUDA synchronisation when on GPU):
  preprocess   points -> voxels (clean_ros.inference.voxelize, with overflow stats; without the padded grid when
               the torch pillar encoder reads them, PointVoxels)
  inference    voxels -> BEV canvas (pillar encoder: on a GPU the backend's encoder.onnx/engine if it has one,
               else torch, whose inference path runs on the real points only and beat ONNX Runtime's padded
               encoder 3x on CPU; scatter and any sparse 3D backbone: torch) -> backend dense part -> raw head maps
  postprocess  raw maps -> HeadOutput (Detector.head_output) -> decode, IoU gate, NMS (clean_ros.inference.postprocess)
               -> ground-contact gate on the model-frame points (clean_ros.inference.ground_gate; the bundle's
               ground_gate_m, set_ground_gate / update_postprocess(ground_gate_m=...), 0 = off)
The hybrid path for sparse-3D (SECOND) students is the same code: Detector.encode runs the voxel encoder and the
sparse backbone in torch, the backend runs only the dense BEV part.

Frames: `set_sensor_mount(SensorMount(height, pitch, roll))` (clean_ros.inference.sensor_mount) makes every call move
the points into a virtual level sensor at the bundle's training height (`bundle.sensor_height`) and the boxes back;
`pipe(points, frames=ModelFrames(...))` gives the two transforms for one call instead (the node's TF case).
Detections come back in the output frame; moving points and boxes is timed as its own stage, "frames" (present only
when a transform was applied).

Ground: `set_ground_watch(True)` fits the ground plane of the scans as given (clean_ros.inference.ground_plane: every
scan at first, then every 5th; timed as its own stage, "ground", when it runs) and `mount_check()` compares the
running estimate, in the model's frame, with the training scans' ground (`bundle.ground_height`): is the sensor where
the model expects it? `set_auto_mount(True)` also applies the estimate as the sensor mount, from the first scan that
shows enough ground (that scan included).

Intensity: `set_auto_intensity(True)` scales each scan's intensity to the bundle's training level before the model
sees it (clean_ros.inference.intensity_level: the running median of recent scans' levels; timed in "preprocess";
the factor of the last call is `intensity_factor`). For sensors whose intensity scale differs from the training one.

Post-processing settings come from the bundle and can be changed at run time through `update_postprocess`
(validated by clean_ros.inference.postprocess_settings, the one validator; the old settings stay in force when a
change is refused).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clean_ros.inference.backends import Backend, open_backend
from clean_ros.inference.bundle import Bundle, load_bundle
from clean_ros.inference.ground_gate import GroundGate, check_max_gap
from clean_ros.inference.ground_plane import DEFAULT_WINDOW as GROUND_WINDOW
from clean_ros.inference.ground_plane import GROUND_EVERY, GroundTracker, MountCheck, check_mount, mount_for
from clean_ros.inference.intensity_level import DEFAULT_WINDOW, AutoIntensity
from clean_ros.models.detector_config import DetectorConfig
from clean_ros.inference.postprocess import postprocess
from clean_ros.inference.sensor_mount import ModelFrames, SensorMount
from clean_ros.cloud.transforms import transform_boxes, transform_points
# The one post-processing validator; POSTPROCESS_KEYS are the flat names update_postprocess accepts.
from clean_ros.inference.postprocess_settings import POSTPROCESS_KEYS, PostProcessConfig, updated_postprocess
from clean_ros.types import Detections
from clean_ros.inference.voxelize import PointVoxels, Voxels, VoxelStats, as_padded, voxelize_points_with_stats

STAGES = ("preprocess", "inference", "postprocess")


@dataclass
class PipelineResult:
    detections: Detections
    timings_ms: dict[str, float]  # preprocess / inference / postprocess
    voxel_stats: VoxelStats


# ------------------------------------------------------------------------------------------- the pipeline
class Pipeline:
    def __init__(self, bundle: Bundle, backend: str = "auto", device: str = "cpu", *, fp16: bool | None = None,
                 intra_op_threads: int = 0, use_encoder_onnx: bool = True, int8: bool = False):
        self.bundle = bundle
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device}: torch sees no CUDA device; use device cpu")
        self.detector_config: DetectorConfig = copy.deepcopy(bundle.detector_config)
        self.detector = bundle.build_detector(self.device)
        self.backend: Backend = open_backend(backend, bundle, self.detector, str(self.device), fp16=fp16,
                                             intra_op_threads=intra_op_threads, use_encoder_onnx=use_encoder_onnx,
                                             int8=int8)
        self.backend_name = self.backend.name
        self.class_names = bundle.class_names
        self.point_features = bundle.point_features
        cfg = self.detector_config
        self._voxel_args = (tuple(cfg.point_cloud_range), tuple(cfg.voxel_size), cfg.max_points_per_voxel,
                            cfg.max_voxels_test)
        # On CPU the torch encoder's per-point path is faster than the backend's padded encoder.onnx (see above).
        self._pillar_encoder_on_backend = (self.backend.has_encoder and cfg.encoder.type == "pillar"
                                           and cfg.backbone_3d.type == "none" and self.device.type != "cpu")
        # The torch pillar encoder reads the voxels without the padded grid (PointVoxels): building and filling that
        # grid was ~2-5 ms of the 360-degree default's voxelisation per real scan; other encoders get it padded.
        self._point_voxels = cfg.encoder.type == "pillar" and not self._pillar_encoder_on_backend
        self._sync = self.device.type == "cuda"
        # Per-feature factors recorded in the bundle (point_features[i].scale), applied before voxelisation.
        scales = [float(f.get("scale", 1.0)) for f in bundle.manifest["point_features"]]
        self._feature_scale = (torch.tensor(scales, dtype=torch.float32, device=self.device)
                               if any(s != 1.0 for s in scales) else None)
        self.sensor_mount: SensorMount | None = None
        self.frames: ModelFrames | None = None   # applied when a call gives none (set_sensor_mount)
        self.auto_intensity: AutoIntensity | None = None  # set_auto_intensity
        self.ground: GroundTracker | None = None  # set_ground_watch / set_auto_mount
        self.auto_mount = False  # the ground estimate is the sensor mount (set_auto_mount)
        self.ground_gate: GroundGate | None = None  # the bundle's ground_gate_m, or set_ground_gate's
        self.set_ground_gate(bundle.ground_gate_m)

    @classmethod
    def from_bundle(cls, path: str | Path, backend: str = "auto", device: str = "cpu", *, verify: bool = True,
                    **kwargs) -> "Pipeline":
        return cls(load_bundle(path, verify=verify), backend, device, **kwargs)

    # -------------------------------------------------------------- settings
    @property
    def postprocess_settings(self) -> PostProcessConfig:
        """The post-processing settings in force (a copy is not made: change them through update_postprocess)."""
        return self.detector_config.postprocess

    def update_postprocess(self, **changes) -> PostProcessConfig:
        """Apply validated changes, e.g. score_thresholds={"Car": 0.4}, nms_iou=0.1, ground_gate_m=0.5 (the
        ground-contact gate, not a PostProcessConfig field); ValueError if refused, and then nothing changes."""
        cfg = self.detector_config
        gate = changes.pop("ground_gate_m", None)
        gate = None if gate is None else check_max_gap(gate)
        new = updated_postprocess(cfg.postprocess, changes, cfg.class_names, iou_branch=cfg.head.iou_branch)
        self.detector_config = dataclasses.replace(self.detector_config, postprocess=new)
        if gate is not None:
            self.set_ground_gate(gate)
        return new

    @property
    def ground_gate_m(self) -> float:
        """The ground-contact gate's largest gap in force (metres; 0 = off)."""
        return 0.0 if self.ground_gate is None else self.ground_gate.max_gap_m

    def set_ground_gate(self, max_gap_m: float) -> None:
        """Drop boxes whose bottom is more than max_gap_m above the local ground (clean_ros.inference.ground_gate);
        0 = off. ValueError for a negative or non-finite value."""
        max_gap_m = check_max_gap(max_gap_m)
        self.ground_gate = GroundGate(max_gap_m) if max_gap_m > 0 else None

    @property
    def training_sensor_height(self) -> float:
        """Height above the ground (m) of the sensor the model was trained with (the bundle's manifest)."""
        return self.bundle.sensor_height

    def set_sensor_mount(self, mount: SensorMount | None) -> None:
        """Where the real sensor is (None: points are given to the model as they are); see the module docstring.
        Ends the automatic mount, if on (the mount given wins)."""
        self.auto_mount = False
        self._apply_mount(mount)

    def _apply_mount(self, mount: SensorMount | None) -> None:
        self.sensor_mount = mount
        self.frames = None if mount is None else ModelFrames.from_mount(mount, self.training_sensor_height)

    def set_ground_watch(self, enabled: bool, window: int = GROUND_WINDOW, every: int = GROUND_EVERY) -> None:
        """Fit the ground of the scans (see the module docstring) for mount_check(), or stop (which also ends the
        automatic mount and drops the mount it set). ValueError for a window or cadence < 1."""
        if not enabled:
            if self.auto_mount:
                self._apply_mount(None)
            self.ground, self.auto_mount = None, False
            return
        self.ground = GroundTracker(window, every)

    def set_auto_mount(self, enabled: bool, window: int = GROUND_WINDOW, every: int = GROUND_EVERY) -> None:
        """Use the running ground estimate as the sensor mount (replacing one set before), or stop (the estimate
        keeps being measured for mount_check; the mount it set is dropped)."""
        if not enabled:
            if self.auto_mount:
                self.auto_mount = False
                self._apply_mount(None)
            return
        self.set_ground_watch(True, window, every)
        self.auto_mount = True
        self._apply_mount(None)

    @property
    def ground_reference(self) -> float:
        """The training scans' ground below the sensor, as clean_ros.inference.ground_plane measures it."""
        return self.bundle.ground_height

    def mount_check(self, frames: ModelFrames | None = None) -> MountCheck | None:
        """The running ground estimate in the model's frame (frames: those of the last call when the caller gives
        them, e.g. the node's TF; None: the sensor mount's) against the training scans' ground; None while the
        ground watch is off or no scan has shown enough ground."""
        estimate = None if self.ground is None else self.ground.estimate
        if estimate is None:
            return None
        frames = self.frames if frames is None else frames
        return check_mount(estimate, None if frames is None else frames.model_from_input, self.ground_reference,
                           self.training_sensor_height, len(self.ground.fits))

    def _observe_ground(self, points: np.ndarray) -> float | None:
        """Fit this scan's ground when due (and move the automatic mount); milliseconds spent, None when not due."""
        t0 = self._now()
        if not self.ground.observe(points):
            return None
        if self.auto_mount:
            estimate = self.ground.estimate
            if estimate is not None:
                self._apply_mount(mount_for(estimate, self.ground_reference, self.training_sensor_height))
        return (self._now() - t0) * 1e3

    @property
    def intensity_factor(self) -> float:
        """The factor the last call multiplied the intensity by (1.0 when automatic intensity is off)."""
        return self.auto_intensity.factor if self.auto_intensity is not None else 1.0

    def set_auto_intensity(self, enabled: bool, window: int = DEFAULT_WINDOW, *, strict: bool = False) -> str | None:
        """Scale every scan's intensity to the bundle's training level (see the module docstring), or stop.

        Impossible when the model reads no intensity or the bundle records no training level (written before the
        manifest field existed): then it stays off and the reason is returned (ValueError instead when strict).
        Returns None when the setting took effect."""
        self.auto_intensity = None
        if not enabled:
            return None
        reason = None
        if "intensity" not in self.point_features:
            reason = f"the model reads no intensity (point features {', '.join(self.point_features)})"
        elif self.bundle.intensity_level is None:
            reason = (f"bundle {self.bundle.path} records no training intensity level (manifest field "
                      "'intensity_level'; add it with training/intensity_level.py)")
        if reason is not None:
            if strict:
                raise ValueError(f"automatic intensity: {reason}")
            return f"automatic intensity off: {reason}"
        column = self.point_features.index("intensity")
        # the level and the range are in the model's units; the input is multiplied by the feature's scale before
        # voxelisation, so the level is measured on the input (level / scale) and the range applies to the voxels
        scale = float(self.bundle.manifest["point_features"][column].get("scale", 1.0))
        self.auto_intensity = AutoIntensity(self.bundle.intensity_level / scale, window, column=column,
                                            clip=self.bundle.feature_ranges.get("intensity"))
        return None

    def input_contract(self):
        """The bundle's input contract as this Pipeline applies it: while automatic intensity is on, without the
        intensity's range (any scale is brought to the training level, so the values as given are not what the
        model sees)."""
        contract = self.bundle.input_contract()
        if self.auto_intensity is None or "intensity" not in contract.feature_ranges:
            return contract
        return dataclasses.replace(contract, feature_ranges={
            name: span for name, span in contract.feature_ranges.items() if name != "intensity"})

    # -------------------------------------------------------------- stages
    def _now(self) -> float:
        if self._sync:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _checked(self, points: np.ndarray) -> np.ndarray:
        """The model's columns of a (N, F) array; ValueError for anything else."""
        if not isinstance(points, np.ndarray) or points.ndim != 2:
            raise ValueError(f"points must be a 2-D numpy array (N, F), got "
                             f"{type(points).__name__} {getattr(points, 'shape', '')}")
        need = len(self.point_features)
        if points.shape[1] < need:
            raise ValueError(f"points have {points.shape[1]} columns but the model needs {need} "
                             f"({', '.join(self.point_features)})")
        return points[:, :need]

    def _points_tensor(self, points: np.ndarray) -> torch.Tensor:
        points = self._checked(points)
        if points.dtype != np.float32 or not points.flags.c_contiguous:
            points = np.ascontiguousarray(points, dtype=np.float32)
        tensor = torch.from_numpy(points).to(self.device)
        return tensor * self._feature_scale if self._feature_scale is not None else tensor

    def preprocess(self, points: np.ndarray) -> tuple[Voxels | PointVoxels, VoxelStats]:
        """Points -> the voxels in the layout this pipeline's encoder reads (as_padded gives Voxels from either),
        with automatic intensity (when on) measuring this scan's level and scaling the kept points' intensity: only
        the points the model reads are scaled, in the voxeliser's own copy, not a copy of the whole scan (0.4 ms
        of the node's budget per 120k points)."""
        if self.auto_intensity is not None:
            self.auto_intensity.update(self._checked(points))
        voxels, stats = voxelize_points_with_stats(self._points_tensor(points), *self._voxel_args)
        if self.auto_intensity is not None:
            self.auto_intensity.scale_(voxels.points[:, self.auto_intensity.column])
        return (voxels if self._point_voxels else voxels.padded()), stats

    @torch.inference_mode()
    def bev_input(self, voxels: Voxels | PointVoxels) -> torch.Tensor:
        """Voxels (either layout) -> the dense part's input canvas (1, C, ny, nx); see the module docstring for who
        runs what."""
        if self._pillar_encoder_on_backend:
            voxels = as_padded(voxels)
            features = self.backend.encode_pillars(voxels.features, voxels.num_points, voxels.coords)
            if features is not None:
                return self.detector.scatter(features.to(self.device), voxels.coords, 1)
        return self.detector.encode(voxels, 1)

    @torch.inference_mode()
    def raw_outputs(self, voxels: Voxels | PointVoxels) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Voxels -> (raw head maps in Detector.dense_output_names order, BEV canvas)."""
        bev = self.bev_input(voxels)
        return self.backend.run(bev), bev

    @torch.inference_mode()
    def postprocess(self, maps: tuple[torch.Tensor, ...], bev: torch.Tensor) -> Detections:
        # HeadOutput.bev_features gets the canvas: the backend does not return backbone features (only KD reads them).
        output = self.detector.head_output(tuple(m.to(self.device) for m in maps), bev)
        return postprocess(output, self.detector_config)[0]

    def __call__(self, points: np.ndarray, frames: ModelFrames | None = None) -> PipelineResult:
        """points (N, F) in the input frame -> detections in the output frame (frames: this call's transforms;
        None: the sensor mount's, if one is set, else none)."""
        ground_ms = self._observe_ground(points) if self.ground is not None else None
        frames = self.frames if frames is None else frames
        to_model = None if frames is None or frames.model_from_input.is_identity() else frames.model_from_input
        to_output = None if frames is None or frames.output_from_model.is_identity() else frames.output_from_model
        t_in = self._now()
        if to_model is not None:
            points = transform_points(points, to_model)
        t0 = self._now()
        voxels, stats = self.preprocess(points)
        t1 = self._now()
        maps, bev = self.raw_outputs(voxels)
        t2 = self._now()
        detections = self.postprocess(maps, bev)
        if self.ground_gate is not None:  # in the model's frame, where the points are
            detections = self.ground_gate(points, detections)
        t3 = self._now()
        if to_output is not None and len(detections):
            detections = dataclasses.replace(detections,
                                             boxes=transform_boxes(detections.boxes, to_output).astype(np.float32))
        t_out = self._now()
        timings = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3}
        if to_model is not None or to_output is not None:
            timings["frames"] = (t0 - t_in + t_out - t3) * 1e3
        if ground_ms is not None:
            timings["ground"] = ground_ms
        return PipelineResult(detections, timings, stats)

    def warmup(self, iterations: int = 3, num_points: int = 20000) -> None:
        """Run a few synthetic frames (allocations, kernel selection, engine start-up), results discarded."""
        from clean_ros.inference.onnx_export import example_cloud

        cloud = example_cloud(self.detector_config, num_points).numpy()
        # a synthetic cloud says nothing of the sensor's intensity level or mount
        auto, self.auto_intensity = self.auto_intensity, None
        ground, self.ground = self.ground, None
        try:
            for _ in range(max(int(iterations), 0)):
                self(cloud)
        finally:
            self.auto_intensity, self.ground = auto, ground

    def describe(self) -> str:
        return f"{self.bundle.summary()}; backend {self.backend.describe()}"


__all__ = ["Pipeline", "PipelineResult", "STAGES", "POSTPROCESS_KEYS", "updated_postprocess"]
