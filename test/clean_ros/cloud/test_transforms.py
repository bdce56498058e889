"""clean_ros.cloud.transforms: quaternions, rigid transforms of points (extra features kept) and boxes."""
import math

import numpy as np
import pytest
import torch

from clean_ros.cloud.geometry import boxes_to_corners_3d
from clean_ros.cloud.transforms import (Transform, euler_to_matrix, heading, matrix_to_quaternion,
                                        quaternion_to_matrix, slerp, transform_boxes, transform_points)


def _random_quaternions(rng, n):
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_quaternion_of_a_quarter_turn_about_z_maps_x_to_y():
    rotation = quaternion_to_matrix([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)])
    np.testing.assert_allclose(rotation @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(rotation @ [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], atol=1e-12)


def test_quaternion_matrix_round_trip_vectorised_including_half_turns(rng):
    q = _random_quaternions(rng, 500)
    # half turns about each axis: w = 0, where the naive (w-based) formula loses all precision
    q = np.vstack([q, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0.6, 0.8, 0, 0]]])
    rotation = quaternion_to_matrix(q)
    np.testing.assert_allclose(rotation @ np.swapaxes(rotation, -1, -2), np.broadcast_to(np.eye(3), rotation.shape),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-12)
    back = matrix_to_quaternion(rotation)
    same_sign = np.where(q[:, 3:4] < 0, -q, q)  # q and -q are the same rotation; ours has w >= 0
    np.testing.assert_allclose(np.abs(np.sum(back * same_sign, axis=1)), 1.0, atol=1e-9)
    np.testing.assert_allclose(quaternion_to_matrix(back), rotation, atol=1e-12)


def test_zero_quaternion_is_refused():
    with pytest.raises(ValueError, match="zero length"):
        quaternion_to_matrix([0.0, 0.0, 0.0, 0.0])


def test_euler_order_and_the_sign_of_pitch():
    # positive pitch tilts the x axis down (REP 103: rotation about +y)
    np.testing.assert_allclose(euler_to_matrix(pitch=0.3) @ [1, 0, 0], [math.cos(0.3), 0, -math.sin(0.3)], atol=1e-12)
    # positive roll lifts +y
    np.testing.assert_allclose(euler_to_matrix(roll=0.2) @ [0, 1, 0], [0, math.cos(0.2), math.sin(0.2)], atol=1e-12)
    r, p, y = 0.1, -0.2, 2.5
    rx = euler_to_matrix(roll=r)
    ry = euler_to_matrix(pitch=p)
    rz = euler_to_matrix(yaw=y)
    np.testing.assert_allclose(euler_to_matrix(r, p, y), rz @ ry @ rx, atol=1e-12)
    assert heading(euler_to_matrix(0.05, 0.1, 2.5)) == pytest.approx(2.5, abs=1e-12)


def test_slerp_midpoint_endpoints_and_shorter_arc():
    q0 = np.array([0.0, 0.0, 0.0, 1.0])
    q1 = np.array([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)])  # 90 deg about z
    mid = slerp(q0, q1, 0.5)
    assert heading(quaternion_to_matrix(mid)) == pytest.approx(math.pi / 4, abs=1e-12)
    np.testing.assert_allclose(slerp(q0, q1, 0.0), q0, atol=1e-12)
    np.testing.assert_allclose(slerp(q0, q1, 1.0), q1, atol=1e-12)
    # -q1 is the same rotation: the interpolation must still take the 45-degree path, not the 315-degree one
    assert heading(quaternion_to_matrix(slerp(q0, -q1, 0.5))) == pytest.approx(math.pi / 4, abs=1e-12)
    # vectorised over fractions, and (almost) equal quaternions do not divide by zero
    fractions = np.array([0.25, 0.75])
    yaws = heading(quaternion_to_matrix(slerp(np.stack([q0, q0]), np.stack([q1, q1]), fractions)))
    np.testing.assert_allclose(yaws, [math.pi / 8, 3 * math.pi / 8], atol=1e-12)
    np.testing.assert_allclose(slerp(q0, q0, 0.3), q0, atol=1e-12)


def test_compose_inverse_and_matrix():
    a = Transform.from_euler(0.1, -0.2, 0.7, (1.0, 2.0, 3.0))
    b = Transform.from_euler(-0.3, 0.05, -1.2, (-4.0, 0.5, 0.25))
    np.testing.assert_allclose(a.compose(b).matrix, a.matrix @ b.matrix, atol=1e-12)
    assert a.compose(a.inverse()).is_identity(atol=1e-12)
    assert not a.is_identity()
    q = a.quaternion
    again = Transform.from_quaternion(q, a.translation)
    np.testing.assert_allclose(again.matrix, a.matrix, atol=1e-12)


def test_transform_points_keeps_features_dtype_and_matches_the_matrix(rng):
    points = rng.uniform(-50, 50, size=(1000, 5)).astype(np.float32)
    points[:, 3] = rng.uniform(0, 1, 1000)
    points[:, 4] = rng.uniform(0, 0.1, 1000)
    t = Transform.from_euler(0.02, 0.1, 1.3, (0.5, -1.0, 1.8))
    out = transform_points(points, t)
    assert out.dtype == np.float32 and out.shape == points.shape
    expected = points[:, :3].astype(np.float64) @ t.rotation.T + t.translation
    np.testing.assert_allclose(out[:, :3], expected, atol=1e-4)
    np.testing.assert_array_equal(out[:, 3:], points[:, 3:])
    # non-contiguous input (a column slice) and float64 input work the same
    np.testing.assert_allclose(transform_points(points[:, :4], t)[:, :3], expected, atol=1e-4)
    assert transform_points(points.astype(np.float64), t).dtype == np.float64
    with pytest.raises(ValueError, match=r"\(N, F >= 3\)"):
        transform_points(points[:, :2], t)


def test_transform_boxes_equals_transforming_their_corners_for_a_level_transform():
    boxes = np.array([[10.0, 2.0, -0.8, 4.0, 1.8, 1.5, 0.3],
                      [-5.0, 7.0, -1.0, 0.8, 0.6, 1.7, -2.9]], dtype=np.float32)
    t = Transform.from_euler(0.0, 0.0, 2.0, (3.0, -1.0, 1.2))
    moved = transform_boxes(boxes, t)
    assert moved.dtype == np.float32
    np.testing.assert_allclose(moved[:, 3:6], boxes[:, 3:6])          # size kept
    np.testing.assert_allclose(moved[1, 6], ((-2.9 + 2.0 + math.pi) % (2 * math.pi)) - math.pi, atol=1e-6)
    corners = boxes_to_corners_3d(torch.from_numpy(boxes)).numpy().reshape(-1, 3)
    expected = (corners.astype(np.float64) @ t.rotation.T + t.translation).reshape(2, 8, 3)
    got = boxes_to_corners_3d(torch.from_numpy(moved)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_transform_boxes_under_a_tilt_moves_the_centre_exactly_and_keeps_the_box_upright():
    box = np.array([[20.0, 0.0, 0.0, 4.0, 1.8, 1.5, 0.0]])
    t = Transform.from_euler(0.0, 0.1, 0.0, (0.0, 0.0, 0.2))     # pitched 0.1 rad nose down, lifted 0.2 m
    moved = transform_boxes(box, t)
    np.testing.assert_allclose(moved[0, :3], t.rotation @ box[0, :3] + t.translation, atol=1e-12)
    assert moved[0, 2] == pytest.approx(-20.0 * math.sin(0.1) + 0.2)
    assert moved[0, 6] == pytest.approx(0.0, abs=1e-12)              # heading of a pure pitch is 0
    np.testing.assert_allclose(moved[0, 3:6], box[0, 3:6])
    with pytest.raises(ValueError, match="boxes must be"):
        transform_boxes(box[:, :6], t)
