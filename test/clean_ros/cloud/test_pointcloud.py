"""PointCloud2 <-> numpy: exact round trips on a real KITTI frame in every layout drivers send, zero copy on the
plain layout, NaN handling, malformed headers, and the input-contract findings."""
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sensor_msgs")
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402

from clean_ros.cloud.pointcloud import (  # noqa: E402
    CloudFormatError, InputContract, check_input_contract, cloud_dtype, read_points)
from clean_ros.ros.pointcloud_msg import make_pointcloud2  # noqa: E402

FRAME = Path(__file__).resolve().parents[4] / "shared/data/kitti_sample/training/velodyne/000000.bin"
XYZI = ("x", "y", "z", "intensity")
KITTI_RANGE = (0.0, -39.68, -3.0, 69.12, 39.68, 1.0)


@pytest.fixture(scope="module")
def kitti_points() -> np.ndarray:
    if not FRAME.exists():
        pytest.skip(f"real KITTI frame not found at {FRAME}")
    return np.fromfile(FRAME, dtype=np.float32).reshape(-1, 4)


def _header(frame="velodyne"):
    return (1234.5, frame)


def _raw_cloud(fields, point_step, data, width, height=1, row_step=None, big_endian=False):
    """A PointCloud2 with whatever (possibly broken) layout a test needs."""
    msg = PointCloud2()
    msg.header.frame_id = "velodyne"
    msg.height, msg.width = height, width
    msg.fields = [PointField(name=n, offset=o, datatype=t, count=c) for n, o, t, c in fields]
    msg.is_bigendian = big_endian
    msg.point_step = point_step
    msg.row_step = width * point_step if row_step is None else row_step
    msg.data = bytes(data)
    return msg


F32 = PointField.FLOAT32
XYZ_FIELDS = [("x", 0, F32, 1), ("y", 4, F32, 1), ("z", 8, F32, 1)]


# ---------------------------------------------------------------------------------------------------- decoding

def test_kitti_round_trip_is_exact_and_zero_copy(kitti_points):
    msg = make_pointcloud2(kitti_points, XYZI, _header())
    assert isinstance(msg.data, (bytes, bytearray)) or msg.data.typecode == "B"
    assert msg.header.frame_id == "velodyne" and msg.header.stamp.sec == 1234 and msg.header.stamp.nanosec == 5e8
    points, info = read_points(msg)
    np.testing.assert_array_equal(points, kitti_points)
    assert points.dtype == np.float32 and points.flags.c_contiguous and points.shape == kitti_points.shape
    assert info.zero_copy and info.num_points == len(kitti_points) and info.num_nonfinite_removed == 0
    assert np.shares_memory(points, np.frombuffer(msg.data, np.uint8))


def test_round_trip_after_ros_serialisation(kitti_points):
    from rclpy.serialization import deserialize_message, serialize_message

    sent = make_pointcloud2(kitti_points[:5000], XYZI, _header())
    got = deserialize_message(serialize_message(sent), PointCloud2)
    points, info = read_points(got)
    np.testing.assert_array_equal(points, kitti_points[:5000])
    assert info.zero_copy and np.shares_memory(points, np.frombuffer(got.data, np.uint8))


def test_xyz_only_request_copies_the_block_exactly(kitti_points):
    msg = make_pointcloud2(kitti_points, XYZI, _header())
    points, info = read_points(msg, fields=("x", "y", "z"))
    np.testing.assert_array_equal(points, kitti_points[:, :3])
    assert not info.zero_copy and points.flags.c_contiguous


def test_uint8_intensity_with_scale(kitti_points):
    as_uint8 = kitti_points.copy()
    as_uint8[:, 3] = np.rint(kitti_points[:, 3] * 255)
    msg = make_pointcloud2(as_uint8, XYZI, _header(), dtypes={"intensity": "u1"})
    assert msg.point_step == 13 and msg.fields[3].datatype == PointField.UINT8
    points, info = read_points(msg, intensity_scale=1 / 255)
    np.testing.assert_array_equal(points[:, :3], kitti_points[:, :3])
    np.testing.assert_allclose(points[:, 3], as_uint8[:, 3] / 255, rtol=1e-6)
    assert np.abs(points[:, 3] - kitti_points[:, 3]).max() <= 0.5 / 255 + 1e-6
    assert info.field_dtypes["intensity"] == "u1"
    raw, _ = read_points(msg)  # no scale: the raw 0..255 values
    np.testing.assert_array_equal(raw[:, 3], as_uint8[:, 3])


def test_big_endian_equals_little_endian(kitti_points):
    little = make_pointcloud2(kitti_points, XYZI, _header())
    big = make_pointcloud2(kitti_points, XYZI, _header(), big_endian=True)
    assert bytes(big.data) != bytes(little.data)
    points_big, info = read_points(big)
    np.testing.assert_array_equal(points_big, read_points(little)[0])
    assert info.big_endian and not info.zero_copy
    # mixed datatypes on the per-field path too
    mixed = make_pointcloud2(kitti_points, XYZI, _header(), big_endian=True, dtypes={"x": "f8", "intensity": "f8"})
    np.testing.assert_array_equal(read_points(mixed)[0], kitti_points)


def test_organised_cloud_with_row_padding_gives_exactly_the_valid_points(kitti_points):
    rows, width = 64, 1000
    grid = kitti_points[:rows * width]
    msg = make_pointcloud2(grid, XYZI, _header(), height=rows, row_padding=24, point_padding=4)
    assert msg.row_step == width * msg.point_step + 24 and len(msg.data) == rows * msg.row_step
    points, info = read_points(msg)
    np.testing.assert_array_equal(points, grid)
    assert info.row_padding and info.num_points == rows * width
    # per-field path (intensity before z, odd widths) over the same padded rows
    reordered, _ = read_points(msg, fields=("intensity", "x", "z", "y"))
    np.testing.assert_array_equal(reordered, grid[:, [3, 0, 2, 1]])
    big = make_pointcloud2(grid, XYZI, _header(), height=rows, row_padding=24, point_padding=4, big_endian=True)
    np.testing.assert_array_equal(read_points(big)[0], grid)
    np.testing.assert_array_equal(read_points(big, fields=("y", "z", "x"))[0], grid[:, [1, 2, 0]])


def test_trimmed_final_row_padding_is_accepted(kitti_points):
    grid = kitti_points[:400]
    msg = make_pointcloud2(grid, XYZI, _header(), height=4, row_padding=8)
    msg.data = bytes(msg.data)[:-8]  # (height-1)*row_step + width*point_step bytes are enough
    np.testing.assert_array_equal(read_points(msg)[0], grid)


def test_nan_and_inf_rows_removed_and_counted(kitti_points):
    pts = kitti_points[:2000].copy()
    pts[[3, 10, 11]] = np.nan               # organised "no return" points
    pts[500, 0] = np.inf
    pts[777, 3] = np.nan                    # a bad intensity spoils the row too
    msg = make_pointcloud2(pts, XYZI, _header(), height=2)
    points, info = read_points(msg)
    keep = np.ones(2000, bool)
    keep[[3, 10, 11, 500, 777]] = False
    np.testing.assert_array_equal(points, pts[keep])
    assert info.num_nonfinite_removed == 5 and info.num_points == 1995 and info.num_points_in == 2000
    kept_all, info_all = read_points(msg, remove_nan=False)
    assert len(kept_all) == 2000 and info_all.num_nonfinite_removed == 0 and np.isnan(kept_all[3]).all()


def test_extra_fields_in_odd_order_ring_and_time(kitti_points):
    n = 3000
    ring = np.arange(n) % 64
    stamps = np.linspace(0.0, 0.1, n, dtype=np.float32)
    cols = np.column_stack([stamps, kitti_points[:n, 3], ring, kitti_points[:n, 2], kitti_points[:n, 0],
                            kitti_points[:n, 1]]).astype(np.float64)
    names = ("time", "intensity", "ring", "z", "x", "y")
    cols[:, 1] = np.rint(kitti_points[:n, 3] * 255)
    msg = make_pointcloud2(cols, names, _header(), dtypes={"ring": "u2", "intensity": "u1", "time": "f4"},
                           point_padding=3)
    points, info = read_points(msg, fields=("x", "y", "z", "intensity", "ring", "time"), intensity_scale=1 / 255)
    np.testing.assert_array_equal(points[:, :3], kitti_points[:n, :3])
    np.testing.assert_allclose(points[:, 3], cols[:, 1] / 255, rtol=1e-6)
    np.testing.assert_array_equal(points[:, 4], ring.astype(np.float32))
    np.testing.assert_array_equal(points[:, 5], stamps)
    assert info.field_dtypes == {"x": "<f4", "y": "<f4", "z": "<f4", "intensity": "u1", "ring": "<u2",
                                 "time": "<f4"}


def test_missing_optional_field_is_zero_filled_and_reported(kitti_points):
    msg = make_pointcloud2(kitti_points[:100, :3], ("x", "y", "z"), _header())
    points, info = read_points(msg)
    np.testing.assert_array_equal(points[:, :3], kitti_points[:100, :3])
    assert (points[:, 3] == 0).all() and info.missing_fields == ("intensity",)


def test_empty_cloud_is_valid_and_gives_empty_array():
    empty = PointCloud2()  # width = height = 0, no fields, point_step 0
    points, info = read_points(empty)
    assert points.shape == (0, 4) and points.dtype == np.float32 and info.num_points == 0
    built = make_pointcloud2(np.zeros((0, 4), np.float32), XYZI, _header())
    assert read_points(built)[0].shape == (0, 4)


def test_cloud_dtype_all_datatypes_counts_offsets_and_padding():
    fields = [PointField(name=f"f{t}", offset=8 * (t - 1), datatype=t, count=1) for t in range(1, 9)]
    fields.append(PointField(name="normal", offset=64, datatype=PointField.FLOAT32, count=3))
    dt = cloud_dtype(fields, point_step=80, is_bigendian=False)
    assert dt.itemsize == 80
    assert [dt.fields[f"f{t}"][0].str for t in range(1, 9)] == ["|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<f4",
                                                                "<f8"]
    assert dt.fields["normal"][0].shape == (3,) and dt.fields["normal"][1] == 64
    big = cloud_dtype(fields, point_step=80, is_bigendian=True)
    assert big.fields["f8"][0].str == ">f8" and big.fields["f3"][0].str == ">i2"
    record = np.zeros(2, dt)
    record["f5"] = [-7, 9]
    record["normal"][1] = (1, 2, 3)
    back = np.frombuffer(record.tobytes(), dt)
    assert back["f5"].tolist() == [-7, 9] and back["normal"][1].tolist() == [1, 2, 3]


# ---------------------------------------------------------------------------------------------------- malformed

def _xyz_data(n):
    return np.arange(3 * n, dtype=np.float32).tobytes()


@pytest.mark.parametrize("make, expected", [
    (lambda: _raw_cloud([("y", 0, F32, 1), ("z", 4, F32, 1), ("i", 8, F32, 1)], 12, _xyz_data(4), 4),
     r"no field 'x' \(fields present: y, z, i\)"),
    (lambda: _raw_cloud(XYZ_FIELDS, 8, _xyz_data(4), 4),
     r"field 'z' \(FLOAT32 x1 at offset 8\) ends at byte 12, past point_step 8"),
    (lambda: _raw_cloud(XYZ_FIELDS, 12, _xyz_data(4)[:-1], 4),
     r"data has 47 bytes .* needs 48 .*data too short"),
    (lambda: _raw_cloud(XYZ_FIELDS[:2] + [("z", 8, 9, 1)], 12, _xyz_data(4), 4),
     r"field 'z' has unsupported PointField datatype 9"),
    (lambda: _raw_cloud(XYZ_FIELDS, 12, _xyz_data(4), 4_000_000_000),
     r"cloud claims 4000000000 x 1 .*corrupt"),
    (lambda: _raw_cloud(XYZ_FIELDS, 12, _xyz_data(4), 50_000_000),
     r"data has 48 bytes but width 50000000 .*data too short"),
    (lambda: _raw_cloud(XYZ_FIELDS, 12, _xyz_data(8), 4, height=2, row_step=40),
     r"row_step 40 < width 4 \* point_step 12 = 48"),
    (lambda: _raw_cloud(XYZ_FIELDS, 0, _xyz_data(4), 4),
     r"point_step is 0; it must be > 0"),
    (lambda: _raw_cloud(XYZ_FIELDS + [("x", 0, F32, 1)], 12, _xyz_data(4), 4),
     r"field 'x' appears twice"),
])
def test_malformed_clouds_give_clear_errors(make, expected):
    with pytest.raises(CloudFormatError, match=expected):
        read_points(make())


def test_huge_width_with_tiny_data_does_not_allocate():
    import tracemalloc

    msg = _raw_cloud(XYZ_FIELDS, 12, _xyz_data(4), 50_000_000, height=3)
    tracemalloc.start()
    with pytest.raises(CloudFormatError):
        read_points(msg)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


def test_cloud_format_error_is_a_value_error():
    assert issubclass(CloudFormatError, ValueError)


# ---------------------------------------------------------------------------------------------------- contract

CONTRACT = InputContract(point_features=XYZI, point_cloud_range=KITTI_RANGE,
                         feature_ranges={"intensity": (0.0, 1.0)}, frame_id="velodyne")


def test_contract_clean_on_real_kitti_frame(kitti_points):
    assert check_input_contract(make_pointcloud2(kitti_points, XYZI, _header()), CONTRACT) == []


def test_contract_flags_0_255_intensity_and_suggests_scale(kitti_points):
    scaled = kitti_points.copy()
    scaled[:, 3] = np.rint(scaled[:, 3] * 255)
    msg = make_pointcloud2(scaled, XYZI, _header(), dtypes={"intensity": "u1"})
    findings = check_input_contract(msg, CONTRACT)
    assert [f.code for f in findings] == ["value_scale"]
    assert "0-255" in findings[0].message and "intensity_scale to 0.00392157" in findings[0].message
    assert "u1" in findings[0].message
    assert check_input_contract(msg, CONTRACT, intensity_scale=1 / 255) == []


def test_contract_flags_cloud_far_outside_range(kitti_points):
    in_mm = kitti_points.copy()
    in_mm[:, :3] *= 1000.0
    findings = check_input_contract(make_pointcloud2(in_mm, XYZI, _header()), CONTRACT)
    assert [f.code for f in findings] == ["out_of_range"]
    assert "millimetres" in findings[0].message and "inside the trained point-cloud range" in findings[0].message

    huge = kitti_points.copy()
    huge[:, :3] = 1e30  # garbage coordinates: still one finding, and no overflow warning from the distance
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        findings = check_input_contract(make_pointcloud2(huge, XYZI, _header()), CONTRACT)
    assert "millimetres" in findings[0].message

    lifted = kitti_points.copy()
    lifted[:, 2] += 4.0  # a base_link-like origin below the sensor pushes everything above z_max
    findings = check_input_contract(make_pointcloud2(lifted, XYZI, _header()), CONTRACT)
    assert [f.code for f in findings] == ["out_of_range"] and "origin height" in findings[0].message


def test_contract_flags_missing_intensity_and_frame(kitti_points):
    msg = make_pointcloud2(kitti_points[:, :3], ("x", "y", "z"), _header("os_sensor"))
    findings = check_input_contract(msg, CONTRACT)
    codes = {f.code: f.message for f in findings}
    assert set(codes) == {"missing_field", "frame_id"}
    assert "'intensity'" in codes["missing_field"] and "fields: x, y, z" in codes["missing_field"]
    assert "'os_sensor'" in codes["frame_id"] and "'velodyne'" in codes["frame_id"]


def test_contract_never_raises_on_garbage():
    msg = _raw_cloud(XYZ_FIELDS, 12, _xyz_data(4), 50_000_000)
    findings = check_input_contract(msg, CONTRACT)
    assert [f.code for f in findings] == ["undecodable"] and "data too short" in str(findings[0])
    assert [f.code for f in check_input_contract(PointCloud2(), CONTRACT)] == ["frame_id", "empty"]
