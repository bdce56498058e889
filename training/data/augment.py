"""Training augmentation, applied consistently to points and boxes (numpy, LiDAR frame).

Order (each step a config switch): GT-database sampling -> sensor variation (beam reduction, density dropout,
intensity; training/data/sensor_variation.py) -> per-object noise -> x-flip -> global rotation about z -> global
scaling -> mounting change (height, pitch, roll) -> point shuffle. The pure transforms take explicit parameters; Augmentor draws them from the
generator it is given, so a frame's augmentation is a function of that generator's seed.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from clean_ros.cloud.geometry import bev_iou, points_in_boxes
from clean_ros.cloud.kitti import normalize_yaw_np
from training.data.data_config import AugmentConfig
from training.data.gt_database import GTDatabase, GTSampler
from training.data.sample import Sample
from training.data.sensor_variation import (assign_rows, change_mounting, drop_points, keep_rows, scale_intensity,
                                            sensor_rows)


# --------------------------------------------------------------------------- pure transforms
def flip_x(points: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror about the x axis (the driving direction): y -> -y, yaw -> -yaw."""
    points, boxes = points.copy(), boxes.copy()
    points[:, 1] = -points[:, 1]
    boxes[:, 1] = -boxes[:, 1]
    boxes[:, 6] = normalize_yaw_np(-boxes[:, 6])
    return points, boxes


def rotate_z(points: np.ndarray, boxes: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the scene by `angle` (radians, counter-clockwise seen from above) about the sensor's z axis."""
    c, s = np.cos(angle), np.sin(angle)
    points, boxes = points.copy(), boxes.copy()
    for array in (points, boxes):  # element-wise, not a BLAS matmul (which stalls when the machine is busy)
        x, y = array[:, 0].astype(np.float64), array[:, 1].astype(np.float64)
        array[:, 0] = c * x - s * y
        array[:, 1] = s * x + c * y
    boxes[:, 6] = normalize_yaw_np(boxes[:, 6] + angle)
    return points, boxes


def scale(points: np.ndarray, boxes: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale the scene about the sensor origin: coordinates and box sizes by `factor`."""
    points, boxes = points.copy(), boxes.copy()
    points[:, :3] *= factor
    boxes[:, :6] *= factor
    return points, boxes


def first_box_of_point(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) index of the first box containing each point, -1 for none."""
    inside = points_in_boxes(torch.from_numpy(points[:, :3]), torch.from_numpy(boxes)).numpy()
    return np.where(inside.any(1), inside.argmax(1), -1) if inside.shape[1] else np.full(len(points), -1)


def move_objects(points: np.ndarray, boxes: np.ndarray, translation: np.ndarray,
                 rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate each box about its centre by rotation[i] and shift it by translation[i], with the points inside it."""
    owner = first_box_of_point(points, boxes)
    points, new_boxes = points.copy(), boxes.copy()
    moved = np.flatnonzero(owner >= 0)
    o = owner[moved]
    c, s = np.cos(rotation[o]), np.sin(rotation[o])
    rel = points[moved, :3].astype(np.float64) - boxes[o, :3]
    rx = c * rel[:, 0] - s * rel[:, 1]
    ry = s * rel[:, 0] + c * rel[:, 1]
    points[moved, 0] = rx + boxes[o, 0] + translation[o, 0]
    points[moved, 1] = ry + boxes[o, 1] + translation[o, 1]
    points[moved, 2] = rel[:, 2] + boxes[o, 2] + translation[o, 2]
    new_boxes[:, :3] += translation
    new_boxes[:, 6] = normalize_yaw_np(new_boxes[:, 6] + rotation)
    return points, new_boxes


def draw_object_noise(boxes: np.ndarray, rng: np.random.Generator, translation_std, rotation_range,
                      attempts: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-box (translation (M,3), rotation (M,)) that keeps every box clear of every other box in BEV.

    Each box gets `attempts` random draws; the first whose moved box overlaps no other box's original footprint is
    taken. Two moved boxes that then overlap each other both stay put. A box with no valid draw stays put.
    """
    m = len(boxes)
    translation = rng.normal(0.0, 1.0, size=(m, attempts, 3)) * np.asarray(translation_std, dtype=np.float64)
    rotation = rng.uniform(rotation_range[0], rotation_range[1], size=(m, attempts))
    if m == 0:
        return np.zeros((0, 3)), np.zeros(0)
    trials = np.repeat(boxes[:, None, :].astype(np.float64), attempts, axis=1)
    trials[..., :3] += translation
    trials[..., 6] += rotation
    overlap = bev_iou(torch.from_numpy(trials.reshape(-1, 7)), torch.from_numpy(boxes.astype(np.float64))).numpy() > 0
    overlap = overlap.reshape(m, attempts, m)
    overlap[np.arange(m), :, np.arange(m)] = False  # a box may overlap its own original place
    valid = ~overlap.any(2)  # (M, attempts)
    has_valid = valid.any(1)
    pick = valid.argmax(1)
    chosen_t = np.where(has_valid[:, None], translation[np.arange(m), pick], 0.0)
    chosen_r = np.where(has_valid, rotation[np.arange(m), pick], 0.0)
    moved = trials[np.arange(m), pick]
    clash = bev_iou(torch.from_numpy(moved), torch.from_numpy(moved)).numpy() > 0
    np.fill_diagonal(clash, False)
    clash &= has_valid[:, None] & has_valid[None, :]
    stay = clash.any(1)
    chosen_t[stay] = 0.0
    chosen_r[stay] = 0.0
    return chosen_t, chosen_r


def rows_after_gt_sampling(scene: Sample, sampled: Sample) -> np.ndarray:
    """(N,) laser row of every point of `sampled` (= `scene` after GT sampling).

    The scene's rows are read before sampling, while the scan keeps its storage order (sensor_rows: exact for raw
    KITTI and simulated scans, lasers offset or not). GTSampler's output is the scene's points outside the pasted
    boxes, in order, then the pasted objects' points; those get the row whose elevation is nearest.
    """
    rows = sensor_rows(scene.points)
    n_scene_boxes = len(scene.gt_boxes)
    if len(sampled.gt_boxes) == n_scene_boxes:
        return rows.row
    pasted = sampled.gt_boxes[n_scene_boxes:]
    survived = ~points_in_boxes(torch.from_numpy(scene.points), torch.from_numpy(pasted)).numpy().any(1)
    n = int(survived.sum())
    if not np.array_equal(sampled.points[:n], scene.points[survived]):  # not GTSampler's layout: by elevation
        return assign_rows(sampled.points, rows.elevation_deg)
    return np.concatenate([rows.row[survived], assign_rows(sampled.points[n:], rows.elevation_deg)])


# --------------------------------------------------------------------------- the pipeline
class Augmentor:
    """Callable (Sample, np.random.Generator) -> Sample applying the enabled augmentations in order."""

    def __init__(self, config: AugmentConfig, class_names: tuple[str, ...], gt_sampler: GTSampler | None = None):
        self.config = config
        self.class_names = tuple(class_names)
        if config.gt_sampling and gt_sampler is None:
            gt_sampler = GTSampler(GTDatabase.load(config.gt_sampling_config.database_path),
                                   config.gt_sampling_config, self.class_names)
        self.gt_sampler = gt_sampler if config.gt_sampling else None

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        cfg = self.config
        scene = sample
        if self.gt_sampler is not None:
            sample = self.gt_sampler(sample, rng)
        points, boxes = sample.points, sample.gt_boxes
        if cfg.sensor.any_enabled:
            points = self._vary_sensor(scene, sample, rng)
        if cfg.object_noise and len(boxes):
            t, r = draw_object_noise(boxes, rng, cfg.object_translation_std, cfg.object_rotation_range,
                                     cfg.object_noise_attempts)
            points, boxes = move_objects(points, boxes, t, r)
        if cfg.random_flip_x and rng.random() < 0.5:
            points, boxes = flip_x(points, boxes)
        if cfg.global_rotation:
            points, boxes = rotate_z(points, boxes, rng.uniform(*cfg.rotation_range))
        if cfg.global_scaling:
            points, boxes = scale(points, boxes, rng.uniform(*cfg.scaling_range))
        if cfg.sensor.mounting_height or cfg.sensor.mounting_tilt:
            points, boxes = self._vary_mounting(points, boxes, rng)
        if cfg.shuffle_points:
            points = points[rng.permutation(len(points))]
        return replace(sample, points=points.astype(np.float32, copy=False), gt_boxes=boxes.astype(np.float32))

    def _vary_sensor(self, scene: Sample, sampled: Sample, rng: np.random.Generator) -> np.ndarray:
        """Beam reduction, density dropout, intensity response on the sampled frame's points; a draw only for the
        enabled steps. Runs after GT sampling, so pasted objects lose rows too (see rows_after_gt_sampling)."""
        s = self.config.sensor
        points = sampled.points
        if s.beam_reduction and rng.random() < s.beam_reduction_probability:
            choices = s.beam_keep_choices  # drawn only for a list setting: an integer setting keeps its draws
            keep = int(choices[int(rng.integers(len(choices)))] if isinstance(s.beam_keep_every, (list, tuple))
                       else choices[0])
            phase = int(rng.integers(keep))
            points = keep_rows(points, rows_after_gt_sampling(scene, sampled), keep, phase)
        if s.density_dropout:
            points = drop_points(points, rng.uniform(*s.density_keep_range), rng)
        if s.intensity:
            points = scale_intensity(points, rng.uniform(*s.intensity_scale_range), rng.uniform(*s.intensity_gamma_range))
        return points

    def _vary_mounting(self, points: np.ndarray, boxes: np.ndarray,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s = self.config.sensor
        height = rng.uniform(*s.height_shift_range) if s.mounting_height else 0.0
        pitch, roll = (rng.uniform(*s.pitch_range), rng.uniform(*s.roll_range)) if s.mounting_tilt else (0.0, 0.0)
        return change_mounting(points, boxes, height, pitch, roll)
