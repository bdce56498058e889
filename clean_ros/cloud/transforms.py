"""Rigid transforms between frames: quaternions, points and boxes (pure numpy, no ROS).

Conventions (REP 103 / tf2): a `Transform` T_ab maps coordinates given in frame b into frame a,
p_a = R @ p_b + t; `a.compose(b)` applies b first (T_ac = T_ab.compose(T_bc)). Quaternions are (x, y, z, w), as in
geometry_msgs/Quaternion. Euler angles are roll about x, pitch about y, yaw about z, applied as R = Rz Ry Rx (so a
positive pitch tilts the x axis down).

Boxes are (x, y, z centre, l, w, h, yaw about +z). A box has no roll or pitch: `transform_boxes` moves the centre by
the full rigid transform and adds the rotation's heading (the direction of its x axis projected on the xy plane) to
yaw. For transforms between level frames (a vehicle frame and a level sensor) this is exact; under a tilt (a pitched
sensor) the box keeps its size and stays upright in the new frame, i.e. the tilt of the box is dropped.

Used by the detector node (TF), the pipeline's sensor mount (clean_ros.inference.sensor_mount), infer and replay.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from clean_ros.cloud.kitti import normalize_yaw_np


# --------------------------------------------------------------------------------------------------- rotations
def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (x, y, z, w; normalised here) -> (..., 3, 3) rotation matrices."""
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(~np.isfinite(norm)) or np.any(norm < 1e-12):
        raise ValueError("quaternion with zero length or non-finite values")
    x, y, z, w = np.moveaxis(q / norm, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (x, y, z, w) with w >= 0.

    Computed from the largest of the four candidate diagonal terms for every matrix (no loss of precision near
    180-degree rotations); vectorised over the leading axes."""
    m = np.asarray(rotation, dtype=np.float64)
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4 * (w^2, x^2, y^2, z^2) - 1 ... pick the largest to divide by
    cand = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    pick = np.argmax(cand, axis=-1)
    s = np.sqrt(np.maximum(np.take_along_axis(cand, pick[..., None], -1)[..., 0], 1e-300)) * 2.0  # 4 * component
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s21, s02, s10 = m[..., 2, 1] + m[..., 1, 2], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1]
    by_pick = np.stack([
        np.stack([d21 / s, d02 / s, d10 / s, 0.25 * s], -1),      # w largest
        np.stack([0.25 * s, s10 / s, s02 / s, d21 / s], -1),      # x largest
        np.stack([s10 / s, 0.25 * s, s21 / s, d02 / s], -1),      # y largest
        np.stack([s02 / s, s21 / s, 0.25 * s, d10 / s], -1),      # z largest
    ], -2)
    q = np.take_along_axis(by_pick, pick[..., None, None], -2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:4] < 0, -q, q)


def euler_to_matrix(roll: float = 0.0, pitch: float = 0.0, yaw: float = 0.0) -> np.ndarray:
    """(3, 3) rotation R = Rz(yaw) Ry(pitch) Rx(roll) (fixed axes x, then y, then z)."""
    cr, sr, cp, sp, cy, sy = (np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw))
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]], dtype=np.float64)


def heading(rotation: np.ndarray) -> np.ndarray:
    """Yaw of (..., 3, 3) rotations: the direction of the rotated x axis in the xy plane, in [-pi, pi)."""
    r = np.asarray(rotation, dtype=np.float64)
    return normalize_yaw_np(np.arctan2(r[..., 1, 0], r[..., 0, 0]))


def slerp(q0: np.ndarray, q1: np.ndarray, fraction: np.ndarray | float) -> np.ndarray:
    """Spherical interpolation of (..., 4) unit quaternions (x, y, z, w) by fraction in [0, 1], along the shorter
    arc; normalised linear interpolation where the two are almost equal (the sine would divide by ~0)."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    f = np.asarray(fraction, dtype=np.float64)[..., None]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_theta = np.sin(theta)
    close = sin_theta < 1e-6
    safe = np.where(close, 1.0, sin_theta)
    w0 = np.where(close, 1.0 - f, np.sin((1.0 - f) * theta) / safe)
    w1 = np.where(close, f, np.sin(f * theta) / safe)
    q = w0 * q0 + w1 * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------------- Transform
class Transform(NamedTuple):
    """A rigid transform T_ab: p_a = rotation @ p_b + translation (rotation (3, 3), translation (3,), float64)."""

    rotation: np.ndarray
    translation: np.ndarray

    @classmethod
    def identity(cls) -> "Transform":
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def from_quaternion(cls, quaternion, translation) -> "Transform":
        """From (x, y, z, w) and (x, y, z), e.g. a geometry_msgs/Transform's rotation and translation."""
        t = np.asarray(translation, dtype=np.float64).reshape(3)
        if not np.all(np.isfinite(t)):
            raise ValueError(f"translation {t.tolist()} is not finite")
        return cls(quaternion_to_matrix(np.asarray(quaternion, dtype=np.float64).reshape(4)), t)

    @classmethod
    def from_euler(cls, roll: float = 0.0, pitch: float = 0.0, yaw: float = 0.0, translation=(0.0, 0.0, 0.0)
                   ) -> "Transform":
        return cls(euler_to_matrix(roll, pitch, yaw), np.asarray(translation, dtype=np.float64).reshape(3))

    @property
    def quaternion(self) -> np.ndarray:
        return matrix_to_quaternion(self.rotation)

    @property
    def matrix(self) -> np.ndarray:
        """(4, 4) homogeneous matrix."""
        out = np.eye(4)
        out[:3, :3] = self.rotation
        out[:3, 3] = self.translation
        return out

    @property
    def heading(self) -> float:
        return float(heading(self.rotation))

    def is_identity(self, atol: float = 1e-12) -> bool:
        return bool(np.allclose(self.rotation, np.eye(3), atol=atol) and np.allclose(self.translation, 0.0, atol=atol))

    def inverse(self) -> "Transform":
        r_t = self.rotation.T
        return Transform(r_t, -r_t @ self.translation)

    def compose(self, other: "Transform") -> "Transform":
        """self after other: T_ac = T_ab.compose(T_bc)."""
        return Transform(self.rotation @ other.rotation, self.rotation @ other.translation + self.translation)


# --------------------------------------------------------------------------------------------------- applying
def transform_points(points: np.ndarray, transform: Transform) -> np.ndarray:
    """(N, F) points (x, y, z first, any extra features after) -> a new (N, F) array of the same dtype in the
    target frame; extra features (intensity, time, ...) are copied unchanged."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be (N, F >= 3), got shape {points.shape}")
    dtype = points.dtype if points.dtype.kind == "f" else np.float64
    out = np.empty(points.shape, dtype=dtype)
    rotation = transform.rotation.astype(dtype)
    translation = transform.translation.astype(dtype)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    # column by column: ~2x faster than an (N, 3) @ (3, 3) matmul on one core (0.6 vs 1.4 ms for 120k points)
    for axis in range(3):
        column = out[:, axis]
        np.multiply(x, rotation[axis, 0], out=column)
        column += rotation[axis, 1] * y
        column += rotation[axis, 2] * z
        column += translation[axis]
    out[:, 3:] = points[:, 3:]
    return out


def transform_boxes(boxes: np.ndarray, transform: Transform) -> np.ndarray:
    """(N, 7) boxes (x, y, z, l, w, h, yaw) -> (N, 7) in the target frame: centre moved by the full transform,
    size kept, yaw + the transform's heading wrapped to [-pi, pi); roll / pitch of a box are not represented (see
    the module docstring). Extra columns beyond 7 (velocities, ...) are copied unchanged."""
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] < 7:
        raise ValueError(f"boxes must be (N, >= 7), got shape {boxes.shape}")
    dtype = boxes.dtype if boxes.dtype.kind == "f" else np.float64
    out = boxes.astype(dtype, copy=True)
    out[:, :3] = boxes[:, :3] @ transform.rotation.T.astype(dtype) + transform.translation.astype(dtype)
    out[:, 6] = normalize_yaw_np(boxes[:, 6].astype(np.float64) + transform.heading).astype(dtype)
    return out


__all__ = ["Transform", "quaternion_to_matrix", "matrix_to_quaternion", "euler_to_matrix", "heading", "slerp",
           "transform_points", "transform_boxes"]
