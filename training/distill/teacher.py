"""TeacherRunner: runs a frozen teacher at most once per training step and shares its outputs.

Hooks and loss terms of one step (label assignment, CaKD, logit / feature KD, PointDistiller) ask the runner
for what they need; the first request of a batch runs the teacher, later ones read the cache (keyed by the
batch's voxel tensor, so the next step's batch recomputes).

The teacher is either a two-stage detector (clean_ros.models.two_stage.TwoStageDetector: `rpn` = a one-stage
anchor Detector with the students' anchor layout, `roi_forward(rpn_output, rois)`, `predict(voxels, batch_size)`)
or a plain one-stage Detector (baselines). `dense` is the one-stage part either way.

Mode: the teacher is held in training.task.Frozen (not a sub-module of the task: never optimised, saved or
wrapped by DDP) and is put back in eval mode before every use. With bn_train=True its batch norms normalise
with the batch's statistics (the references' behaviour, as an option) but their running statistics are left
unchanged (momentum 0 during the call).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from clean_ros.models.detector import Detector, HeadOutput
from clean_ros.inference.postprocess import postprocess_tensors
from clean_ros.inference.voxelize import Voxelizer, Voxels
from training.data.sample import Batch
from training.task import Frozen


class TeacherBoxes(NamedTuple):
    """Final teacher detections of one frame as tensors on the batch's device."""

    boxes: torch.Tensor  # (K, 7)
    scores: torch.Tensor  # (K,)
    labels: torch.Tensor  # (K,) int64


@contextmanager
def teacher_mode(module: nn.Module, bn_train: bool = False) -> Iterator[None]:
    """Eval mode; with bn_train, batch norms use batch statistics without updating their running statistics."""
    module.eval()
    saved = []
    if bn_train:
        for m in module.modules():
            if isinstance(m, _BatchNorm):
                count = m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None
                saved.append((m, m.momentum, count))
                m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
                m.train()
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)
        module.eval()


TEACHER_VOXELS = "teacher"  # key of the teacher's own voxelisation in Batch.extra_voxels


def teacher_voxelizer(teacher_cfg) -> Voxelizer:
    """The teacher's own voxelisation of the raw points: its range, voxel size, points per voxel and its inference
    voxel cap (the teacher runs in eval mode), i.e. exactly what it sees when it runs alone."""
    return Voxelizer(teacher_cfg.point_cloud_range, teacher_cfg.voxel_size, teacher_cfg.max_points_per_voxel,
                     teacher_cfg.max_voxels_test)


def own_teacher_voxels(batch: Batch) -> Voxels:
    """The teacher's input: the batch's raw points voxelised with the teacher's settings by the collator."""
    try:
        return batch.extra_voxels[TEACHER_VOXELS]
    except KeyError:
        raise RuntimeError("the batch carries no teacher voxels: build the task with the distillation's "
                           "extra_voxelizers so the collator voxelises the raw points for the teacher too") from None


def _module_device(module: nn.Module) -> Optional[torch.device]:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return None


class TeacherRunner:
    def __init__(self, teacher: nn.Module, bn_train: bool = False,
                 teacher_voxels: Callable[[Batch], Voxels] = own_teacher_voxels):
        """teacher_voxels: the teacher's input from a batch; by default its own voxelisation of the raw points
        (Batch.extra_voxels["teacher"]), never the student's voxels, whose caps drop points."""
        self.frozen = Frozen(teacher)
        self.bn_train = bn_train
        self.teacher_voxels = teacher_voxels
        self._key: torch.Tensor | None = None
        self._cache: dict[str, object] = {}
        self._encoder_features: torch.Tensor | None = None
        self.dense.encoder.register_forward_hook(self._capture_encoder)

    # ------------------------------------------------------------------ what the teacher is
    @property
    def module(self) -> nn.Module:
        return self.frozen.module

    @property
    def dense(self) -> Detector:
        """The one-stage (dense head) part: the RPN of a two-stage teacher, or the teacher itself."""
        return getattr(self.module, "rpn", self.module)

    @property
    def is_two_stage(self) -> bool:
        return hasattr(self.module, "roi_forward")

    # ------------------------------------------------------------------ cached outputs
    def _capture_encoder(self, module, inputs, output) -> None:
        self._encoder_features = output

    def _cached(self, batch: Batch, name: str, compute: Callable[[], object]):
        if self._key is not batch.voxels.features:
            self._key, self._cache = batch.voxels.features, {}
        if name not in self._cache:
            device = batch.voxels.features.device
            if _module_device(self.module) not in (None, device):
                self.module.to(device)
            with torch.no_grad(), teacher_mode(self.module, self.bn_train):
                self._cache[name] = compute()
        return self._cache[name]

    def _dense_entry(self, batch: Batch, compute: Callable[[], tuple]) -> tuple:
        """(rpn HeadOutput, extra second-stage input or None, encoder features) from `compute`'s first pass."""
        def run():
            self._encoder_features = None
            rpn, extra = compute()
            features, self._encoder_features = self._encoder_features, None
            return rpn, extra, features
        return self._cached(batch, "dense", run)

    def _run_dense(self, batch: Batch) -> tuple:
        voxels = self.teacher_voxels(batch)
        if hasattr(self.module, "rpn_forward"):  # TwoStageDetector: also what roi_forward pools from
            return self.module.rpn_forward(voxels, batch.batch_size)
        return self.dense(voxels, batch.batch_size), None

    def dense_output(self, batch: Batch) -> HeadOutput:
        """The teacher's one-stage head output (RPN output of a two-stage teacher)."""
        return self._dense_entry(batch, lambda: self._run_dense(batch))[0]

    def encoder_features(self, batch: Batch) -> torch.Tensor:
        """(V, C) pillar / voxel features of the teacher's encoder for this batch."""
        features = self._dense_entry(batch, lambda: self._run_dense(batch))[2]
        if features is None:
            raise RuntimeError("the teacher's encoder produced no features (forward hook did not fire)")
        return features

    def final_detections(self, batch: Batch) -> list[TeacherBoxes]:
        """Final (second-stage, post-NMS) teacher detections per frame; for a one-stage teacher its
        post-processed detections. A TwoStageDetector runs once: its RPN output is cached for the other users."""
        def run():
            device = batch.voxels.features.device
            module = self.module
            if self.is_two_stage and hasattr(module, "select"):
                self._encoder_features = None
                output = module(self.teacher_voxels(batch), batch.batch_size)
                if "dense" not in self._cache:
                    self._cache["dense"] = (output.rpn, getattr(output, "voxel_features", None),
                                            self._encoder_features)
                self._encoder_features = None
                return [TeacherBoxes(f.boxes.float(), f.scores.float(), f.labels.long()) for f in module.select(output)]
            if self.is_two_stage:
                detections = module.predict(self.teacher_voxels(batch), batch.batch_size)
                return [TeacherBoxes(torch.as_tensor(d.boxes, dtype=torch.float32, device=device).reshape(-1, 7),
                                     torch.as_tensor(d.scores, dtype=torch.float32, device=device).reshape(-1),
                                     torch.as_tensor(d.labels, dtype=torch.long, device=device).reshape(-1))
                        for d in detections]
            frames = postprocess_tensors(self.dense_output(batch), self.dense.cfg)
            return [TeacherBoxes(f.boxes.float(), f.scores.float(), f.labels.long()) for f in frames]
        return self._cached(batch, "final", run)

    def roi_iou_logits(self, batch: Batch, rois: list[torch.Tensor]) -> list[torch.Tensor]:
        """Teacher second-stage IoU logits of per-frame RoIs (R_b, 7) -> list of (R_b,). Not cached (the RoIs
        come from the student)."""
        if not self.is_two_stage:
            raise TypeError("CaKD needs a two-stage teacher with roi_forward(rpn_output, rois)")
        rpn, extra, _ = self._dense_entry(batch, lambda: self._run_dense(batch))
        counts = [int(r.shape[0]) for r in rois]
        width = max(counts) if counts else 0
        if width == 0:
            return [r.new_zeros(0) for r in rois]
        padded = torch.stack([_pad_rois(r, width, rpn) for r in rois])
        with torch.no_grad(), teacher_mode(self.module, self.bn_train):
            if extra is not None:
                iou_logits, _ = self.module.roi_forward(rpn, padded, extra)
            else:
                iou_logits, _ = self.module.roi_forward(rpn, padded)
        return [iou_logits[b, :n].float() for b, n in enumerate(counts)]


def load_teacher(config: str, checkpoint: str = "") -> nn.Module:
    """The teacher named by a config (name under config/ or a YAML path) with weights from a training checkpoint
    (or a bare state_dict). A config with an `rpn` section is a TwoStageDetector, anything else a Detector."""
    from clean_ros.yaml_config import read_yaml
    from clean_ros.models.detector_config import load_detector_config
    from clean_ros.models.detector import build_detector
    from clean_ros.models.two_stage_config import load_two_stage_config
    from training.checkpoint import load_model_weights
    from training.config_paths import find_config

    from training.teacher_package import is_teacher_package, load_teacher_package

    if checkpoint and is_teacher_package(checkpoint):  # a shipped teacher folder carries its own config
        return load_teacher_package(checkpoint)[1]
    if not config:
        raise ValueError("distill.teacher_config is empty: name the teacher's config")
    path = find_config(config)
    if "rpn" in read_yaml(path):
        from clean_ros.models.two_stage import TwoStageDetector
        model: nn.Module = TwoStageDetector(load_two_stage_config(path))
    else:
        model = build_detector(load_detector_config(path))
    if checkpoint:
        state = load_model_weights(checkpoint)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{checkpoint}: weights do not fit the teacher config {path}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    return model


def _pad_rois(rois: torch.Tensor, width: int, rpn: HeadOutput) -> torch.Tensor:
    """Pad a frame's RoIs to `width` rows with copies of a harmless box (its results are discarded)."""
    if rois.shape[0] == width:
        return rois
    if rois.shape[0]:
        filler = rois[:1]
    else:  # a car-sized box at the middle of the feature grid
        g = rpn.grid
        filler = rois.new_tensor([[g.x_min + g.width * g.cell_x / 2, g.y_min + g.height * g.cell_y / 2, -1.0,
                                   3.9, 1.6, 1.56, 0.0]])
    return torch.cat([rois, filler.expand(width - rois.shape[0], 7)], dim=0)


__all__ = ["TeacherRunner", "TeacherBoxes", "TEACHER_VOXELS", "teacher_voxelizer", "own_teacher_voxels",
           "teacher_mode", "load_teacher"]
