"""KITTI labels of a simulated scan: which objects are labelled, their boxes, occlusion, truncation, 2D boxes.

Like KITTI, only objects seen in the camera image get a label: an object needs returns that project into the
image. Its 3D box is the object's tight box, widened to hold every one of its returns (range noise can push a
return a few cm out of the geometry) and padded so the two-decimal label format never cuts a point off.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from clean_ros.cloud.kitti import (Calibration, KittiObjects, boxes_lidar_to_camera, normalize_yaw_np,
                                   observation_angle, project_boxes_to_image)
from training.sim.sim_config import LabelConfig
from training.sim.shapes import Primitives, extents_along_axes


class FrameLabels(NamedTuple):
    objects: KittiObjects  # label rows (camera frame), as written to label_2
    boxes: np.ndarray  # (K, 7) the same boxes in the LiDAR frame
    object_index: np.ndarray  # (K,) scene object of each label


def in_image(points_xyz: np.ndarray, calib: Calibration, image_shape: tuple[int, int]) -> np.ndarray:
    uv, depth = calib.lidar_to_image(points_xyz.reshape(-1, 3))
    h, w = image_shape
    ok = (depth > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    return ok.reshape(points_xyz.shape[:-1])


def occlusion_levels(unobstructed: np.ndarray, visible: np.ndarray, thresholds) -> np.ndarray:
    """KITTI occlusion 0..3 from the fraction of the object's rays that other geometry blocks."""
    blocked = 1.0 - visible / np.maximum(unobstructed, 1)
    return np.searchsorted(np.asarray(thresholds), blocked, side="right").astype(np.int64)


def label_boxes(prims: Primitives, object_yaw: np.ndarray, points: np.ndarray, point_owner: np.ndarray,
                padding: float, min_length: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(M, 7) LiDAR boxes holding each object's primitives and returns, yaw rounded as the label file will hold it;
    min_length (M,): grow a box along its heading, about its centre, to at least this length (an annotator's box).

    Returns (boxes, rotation_y) with rotation_y already at two decimals.
    """
    m = len(object_yaw)
    rotation_y = np.round(normalize_yaw_np(-object_yaw - np.pi / 2), 2)
    yaw = -rotation_y - np.pi / 2
    c, s = np.cos(yaw), np.sin(yaw)
    zero, one = np.zeros(m), np.ones(m)
    axes = np.stack([np.stack([c, s, zero], 1), np.stack([-s, c, zero], 1), np.stack([zero, zero, one], 1)], 1)

    lo, hi = np.full((m, 3), np.inf), np.full((m, 3), -np.inf)
    mine = prims.owner >= 0
    owner = prims.owner[mine]
    prim_axes = axes[owner]
    centre = np.einsum("pij,pj->pi", prim_axes, prims.centre[mine])
    rot = np.einsum("pij,pjk->pik", prim_axes, prims.rotation[mine])
    ext = extents_along_axes(prims.select(mine)._replace(rotation=rot))
    np.minimum.at(lo, owner, centre - ext)
    np.maximum.at(hi, owner, centre + ext)
    has = point_owner >= 0
    local_pts = np.einsum("pij,pj->pi", axes[point_owner[has]], points[has, :3].astype(np.float64))
    np.minimum.at(lo, point_owner[has], local_pts)
    np.maximum.at(hi, point_owner[has], local_pts)

    if min_length is not None:
        grow = np.maximum(np.asarray(min_length, np.float64) - (hi[:, 0] - lo[:, 0]) - padding, 0.0) / 2
        lo[:, 0] -= grow
        hi[:, 0] += grow
    centre_local = (lo + hi) / 2
    centre_world = np.einsum("mji,mj->mi", axes, centre_local)
    size = np.ceil((hi - lo + padding) * 100.0) / 100.0
    return np.concatenate([centre_world, size, normalize_yaw_np(yaw)[:, None]], 1), rotation_y


def _truncation_and_bbox(boxes: np.ndarray, location, dims, rotation_y, calib: Calibration,
                         image_shape) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of a 5x5x5 grid through each box that falls outside the image, and the clipped 2D box."""
    g = np.linspace(-0.5, 0.5, 5)
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)  # (125, 3) in box units
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    local = grid[None] * boxes[:, None, 3:6]
    pts = np.stack([c[:, None] * local[..., 0] - s[:, None] * local[..., 1],
                    s[:, None] * local[..., 0] + c[:, None] * local[..., 1], local[..., 2]], -1) + boxes[:, None, :3]
    inside = in_image(pts, calib, image_shape)
    truncation = 1.0 - inside.mean(1)

    bbox = project_boxes_to_image(location, dims, rotation_y, calib, image_shape)
    # boxes reaching behind the camera: bound the grid points in front of it instead
    partial = ~bbox.any(1)
    if partial.any():
        uv, depth = calib.lidar_to_image(pts[partial].reshape(-1, 3))
        uv = uv.reshape(partial.sum(), -1, 2)
        front = (depth.reshape(partial.sum(), -1) > 0.1)[..., None]
        lo = np.where(front, uv, np.inf).min(1)
        hi = np.where(front, uv, -np.inf).max(1)
        box = np.concatenate([lo, hi], 1)
        box[:, [0, 2]] = box[:, [0, 2]].clip(0, image_shape[1] - 1)
        box[:, [1, 3]] = box[:, [1, 3]].clip(0, image_shape[0] - 1)
        bbox[partial] = np.nan_to_num(box)
    return truncation, bbox


def make_labels(prims: Primitives, names: np.ndarray, object_boxes: np.ndarray, points: np.ndarray,
                point_owner: np.ndarray, unobstructed: np.ndarray, visible: np.ndarray, calib: Calibration,
                cfg: LabelConfig, image_shape: tuple[int, int], all_around: bool = False,
                annotated_length: np.ndarray | None = None) -> FrameLabels:
    """Labels of the objects with at least cfg.min_points returns: inside the camera image (KITTI's label_2), or
    anywhere around the sensor with all_around (label_all; rows of objects outside the image have truncation 1 and
    an empty 2D box). annotated_length (M,): Scene.annotated_length, used when cfg.annotated_length is on."""
    m = len(names)
    of_object = point_owner >= 0
    if all_around:
        counted = np.bincount(point_owner[of_object], minlength=m)[:m]
    else:
        seen = in_image(points[of_object, :3].astype(np.float64), calib, image_shape)
        counted = np.bincount(point_owner[of_object][seen], minlength=m)[:m]
    keep = np.flatnonzero(counted >= cfg.min_points)
    min_length = annotated_length if cfg.annotated_length and annotated_length is not None else None
    boxes, rotation_y = label_boxes(prims, object_boxes[:, 6], points, point_owner, cfg.box_padding, min_length)
    boxes, rotation_y = boxes[keep], rotation_y[keep]
    location, dims, _ = boxes_lidar_to_camera(boxes, calib)
    truncation, bbox = _truncation_and_bbox(boxes, location, dims, rotation_y, calib, image_shape)
    if all_around:
        outside = truncation >= 1.0
        bbox[outside] = 0.0
    occlusion = occlusion_levels(unobstructed[keep], visible[keep], cfg.occlusion_thresholds)
    objects = KittiObjects(names=names[keep], truncation=np.round(truncation, 2), occlusion=occlusion,
                           alpha=observation_angle(location, rotation_y), bbox=bbox, dimensions=dims,
                           location=location, rotation_y=rotation_y)
    return FrameLabels(objects, boxes, keep)
