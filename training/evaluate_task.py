"""Evaluate a DetectionTask on a split: predictions -> KITTI label rows -> clean_ros.metrics.kitti_eval (AP R40 /
R11).

Predictions come from the task's own post-processing (the one the vehicle runs) and are written in the camera
frame with clean_ros.cloud.kitti.labels_from_lidar_boxes; the ground truth is each frame's untouched label file
(DontCare included), so the official difficulty / ignore rules apply.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from clean_ros.cloud.kitti import KittiObjects, boxes_in_image, labels_from_lidar_boxes
from training.data.loader import Collator, make_dataloader
from training.task import DetectionTask


def predict_annotations(task: DetectionTask, dataset: Dataset, batch_size: int, workers: int,
                        device: torch.device, max_frames: int = 0,
                        progress: bool = False) -> tuple[list[KittiObjects], list[KittiObjects], list[str]]:
    """(ground-truth annotations, predicted annotations with scores, frame ids) for the frames of `dataset`."""
    if max_frames and max_frames < len(dataset):
        dataset = Subset(dataset, range(max_frames))
        dataset.set_epoch = lambda epoch: None  # evaluation has no augmentation
    loader = make_dataloader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                             collate=Collator.from_config(task.cfg, training=False))
    gt_annos: list[KittiObjects] = []
    dt_annos: list[KittiObjects] = []
    frame_ids: list[str] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(loader), desc="evaluate", leave=False, dynamic_ncols=True, file=sys.stderr)
    for batch in loader:
        detections = task.predict(batch.to(device))
        for frame_id, det, calib, annos in zip(batch.frame_ids, detections, batch.calibs, batch.annotations):
            if calib is None or annos is None:
                raise ValueError(f"frame {frame_id}: evaluation needs calibration and labels")
            gt_annos.append(annos)
            rows = labels_from_lidar_boxes(det.boxes, det.names, det.scores, calib)
            dt_annos.append(rows.select(boxes_in_image(rows.bbox)))  # what the camera sees, as KITTI files hold
            frame_ids.append(frame_id)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return gt_annos, dt_annos, frame_ids


def evaluate_task(task: DetectionTask, dataset: Dataset, cfg, device: torch.device,
                  progress: bool = False) -> dict[str, float]:
    """KITTI metrics of `task` on `dataset` as a flat {name: float} dict, incl. trainer.METRIC_NAME."""
    from clean_ros.metrics import kitti_eval

    gt_annos, dt_annos, _ = predict_annotations(task, dataset, cfg.effective_eval_batch_size, cfg.workers, device,
                                                cfg.eval_max_frames, progress)
    result = kitti_eval.evaluate(gt_annos, dt_annos, classes=tuple(cfg.model.class_names))
    metrics = kitti_metrics(result)
    metrics["mAP_3d_moderate_R40"] = float(kitti_eval.mean_ap_3d_moderate(result))
    metrics["num_detections_per_frame"] = float(np.mean([len(d) for d in dt_annos])) if dt_annos else 0.0
    return metrics


DIFFICULTIES = ("easy", "moderate", "hard")


def kitti_metrics(result: dict) -> dict[str, float]:
    """kitti_eval.evaluate's {class: {"3d_R40": [e, m, h], ...}} -> {"Car/3d_R40/moderate": AP, ...}."""
    out: dict[str, float] = {}
    for cls, entry in result.items():
        for metric, values in entry.items():
            if values is None:
                continue
            for level, value in zip(DIFFICULTIES, values):
                if value is not None:
                    out[f"{cls}/{metric}/{level}"] = float(value)
    return out


def flatten_metrics(result: Any, prefix: str = "") -> dict[str, float]:
    """Nested dicts / dataclasses of numbers -> {"a/b/c": float}; non-numeric leaves are skipped."""
    if hasattr(result, "__dataclass_fields__"):
        result = {k: getattr(result, k) for k in result.__dataclass_fields__}
    if isinstance(result, dict):
        out: dict[str, float] = {}
        for key, value in result.items():
            out.update(flatten_metrics(value, f"{prefix}{key}/"))
        return out
    if isinstance(result, (int, float, np.integer, np.floating)) and not isinstance(result, bool):
        return {prefix.rstrip("/"): float(result)}
    if isinstance(result, np.ndarray) and result.size == 1:
        return {prefix.rstrip("/"): float(result.reshape(-1)[0])}
    return {}


__all__ = ["predict_annotations", "evaluate_task", "kitti_metrics", "flatten_metrics"]
