"""points_for_model: the one PointCloud2 -> model input path of the node and replay (decode, crop / exclusion boxes,
decimation)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sensor_msgs")
from clean_ros.cloud.model_input import BoxFilter, check_box, decimate, points_for_model  # noqa: E402
from clean_ros.ros.pointcloud_msg import make_pointcloud2  # noqa: E402

FIELDS = ("x", "y", "z", "intensity")


def _grid_cloud():
    """Points on a 1 m grid x, y in -5..5, z in {-1, 0, 1}: 11 * 11 * 3 = 363 points, intensity = x."""
    xs, ys, zs = np.meshgrid(np.arange(-5, 6), np.arange(-5, 6), np.array([-1, 0, 1]), indexing="ij")
    points = np.column_stack([xs.ravel(), ys.ravel(), zs.ravel(), xs.ravel() / 10.0]).astype(np.float32)
    return points, make_pointcloud2(points, FIELDS, (1.0, "lidar"))


def test_no_boxes_is_the_decoded_cloud():
    points, msg = _grid_cloud()
    prepared = points_for_model(msg, FIELDS)
    np.testing.assert_array_equal(prepared.points, points)
    assert (prepared.num_decoded, prepared.num_outside_crop, prepared.num_excluded) == (363, 0, 0)
    assert not prepared.decimated


def test_crop_and_exclusion_boxes_count_what_they_remove():
    points, msg = _grid_cloud()
    # crop x, y in [-2, 2] (5 x 5 columns, inclusive bounds), all z: 75 points kept, 288 outside
    boxes = BoxFilter(crop=(-2, -2, -1, 2, 2, 1), exclusion=(-1, -1, -0.5, 1, 1, 0.5))  # removes 3 x 3 at z = 0
    prepared = points_for_model(msg, FIELDS, boxes=boxes)
    assert (prepared.num_outside_crop, prepared.num_excluded) == (288, 9)
    assert len(prepared.points) == 75 - 9
    kept = prepared.points
    assert np.all(np.abs(kept[:, :2]) <= 2)
    inside_exclusion = (np.abs(kept[:, 0]) <= 1) & (np.abs(kept[:, 1]) <= 1) & (kept[:, 2] == 0)
    assert not inside_exclusion.any()
    np.testing.assert_allclose(kept[:, 3], kept[:, 0] / 10.0)          # rows stay whole (features follow)
    # exclusion only: the ego box
    only = points_for_model(msg, FIELDS, boxes=BoxFilter(exclusion=(-1, -1, -0.5, 1, 1, 0.5)))
    assert (only.num_outside_crop, only.num_excluded, len(only.points)) == (0, 9, 354)


def test_boxes_are_tested_in_the_model_frame():
    """A model frame 1.5 m below the sensor (model z = sensor z + 1.5): a box z in [1, 2] in the model frame keeps
    the sensor's z = 0 layer only; the points come back unchanged, in the input frame."""
    from clean_ros.cloud.transforms import Transform

    points, msg = _grid_cloud()
    lifted = Transform.from_euler(translation=(0.0, 0.0, 1.5))
    prepared = points_for_model(msg, FIELDS, boxes=BoxFilter(crop=(-5, -5, 1.0, 5, 5, 2.0)), model_from_input=lifted)
    assert len(prepared.points) == 121 and np.all(prepared.points[:, 2] == 0.0)
    # a rotation about z by 90 degrees: model x = -sensor y; crop model x in [3, 5] keeps sensor y in [-5, -3]
    turned = Transform.from_euler(yaw=np.pi / 2)
    prepared = points_for_model(msg, FIELDS, boxes=BoxFilter(crop=(3, -5, -1, 5, 5, 1)), model_from_input=turned)
    assert len(prepared.points) == 3 * 11 * 3 and np.all(prepared.points[:, 1] <= -3)


def test_decimation_after_the_boxes_and_intensity_scale():
    points, msg = _grid_cloud()
    prepared = points_for_model(msg, FIELDS, intensity_scale=2.0, max_points=100,
                                boxes=BoxFilter(crop=(-5, -5, -1, 5, 5, 0)))   # z = 1 cropped: 242 left
    assert prepared.num_before_decimation == 242 and prepared.decimated
    assert len(prepared.points) == 81                                  # every 3rd of 242
    assert prepared.points.flags.c_contiguous
    np.testing.assert_allclose(prepared.points[:, 3], prepared.points[:, 0] / 5.0)


def test_decimate_is_a_view_of_every_kth_point():
    points = np.arange(40, dtype=np.float32).reshape(10, 4)
    out = decimate(points, 4)
    assert np.shares_memory(out, points) and out[:, 0].tolist() == [0, 12, 24, 36]   # every 3rd row
    assert decimate(points, 0) is points


@pytest.mark.parametrize("box, message", [
    ((0, 0, 0, 1, 1), "needs 6 values"),
    ((0, 0, 0, 1, float("nan"), 1), "finite numbers"),
    ((0, 2, 0, 1, 1, 1), "not on y"),
])
def test_bad_boxes_are_refused_with_the_reason(box, message):
    with pytest.raises(ValueError, match=message):
        check_box("crop_box", box)
    with pytest.raises(ValueError, match=message):
        BoxFilter(exclusion=box)
