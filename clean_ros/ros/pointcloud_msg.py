"""Build a sensor_msgs/PointCloud2 from an (N, F) array (tests, tools, bag writing): every layout real drivers send.

The reading side (clean_ros.cloud.pointcloud.read_points) needs no ROS; this side builds ROS messages, so it lives in
clean_ros/ros/.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from clean_ros.cloud.pointcloud import NUMPY_TO_DATATYPE


def _header_of(header):
    from std_msgs.msg import Header
    from builtin_interfaces.msg import Time

    if isinstance(header, Header):
        return header
    stamp, frame_id = header
    if not isinstance(stamp, Time):
        seconds = float(stamp)
        sec = math.floor(seconds)
        stamp = Time(sec=int(sec), nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))
    return Header(stamp=stamp, frame_id=str(frame_id))


def make_pointcloud2(points: np.ndarray, field_names: Sequence[str], header, *,
                     dtypes: Mapping[str, str | np.dtype] | None = None, big_endian: bool = False,
                     height: int = 1, row_padding: int = 0, point_padding: int = 0,
                     is_dense: bool | None = None):
    """Build a sensor_msgs/PointCloud2 from an (N, F) array.

    header: a std_msgs/Header, or (stamp, frame_id) with stamp a builtin_interfaces/Time or float seconds.
    dtypes: per-field numpy dtype ("u1", "u2", "f8", ...; default float32), values are cast (ints rounded).
    big_endian, height (organised: N must divide), row_padding (extra bytes after each row) and point_padding
    (extra bytes after each point) exist to produce every layout real drivers send, for tests and tools.
    msg.data gets ``bytes`` (assigning a numpy array to it is ~150 ms slower for 2 MB).
    """
    from sensor_msgs.msg import PointCloud2, PointField

    points = np.asarray(points)
    field_names = tuple(field_names)
    if points.ndim != 2 or points.shape[1] != len(field_names):
        raise ValueError(f"points must be (N, {len(field_names)}) for fields {field_names}, got {points.shape}")
    n = len(points)
    if height < 1 or n % height:
        raise ValueError(f"cannot arrange {n} points in {height} rows")
    width = n // height
    dtypes = dict(dtypes or {})
    order = ">" if big_endian else "<"
    scalar = [np.dtype(dtypes.get(name, "f4")).newbyteorder(order) for name in field_names]
    offsets = np.concatenate([[0], np.cumsum([d.itemsize for d in scalar])]).astype(int)
    point_step = int(offsets[-1]) + int(point_padding)
    row_step = width * point_step + int(row_padding)

    msg = PointCloud2()
    msg.header = _header_of(header)
    msg.height, msg.width = int(height), int(width)
    msg.fields = [PointField(name=name, offset=int(off), datatype=NUMPY_TO_DATATYPE[d.str[1:]], count=1)
                  for name, off, d in zip(field_names, offsets, scalar)]
    msg.is_bigendian = bool(big_endian)
    msg.point_step, msg.row_step = point_step, row_step
    if is_dense is None:
        is_dense = bool(np.isfinite(points).all()) if points.dtype.kind == "f" else True
    msg.is_dense = bool(is_dense)

    plain = (not big_endian and not row_padding and not point_padding and all(d == np.float32 for d in scalar))
    if plain:
        msg.data = np.ascontiguousarray(points, dtype=np.float32).tobytes()
        return msg
    rows = np.zeros((height, row_step), np.uint8)
    structured = np.dtype({"names": list(field_names), "formats": scalar, "offsets": [int(o) for o in offsets[:-1]],
                           "itemsize": point_step})
    packed = np.zeros(n, structured)
    for j, (name, d) in enumerate(zip(field_names, scalar)):
        column = points[:, j]
        packed[name] = np.rint(column) if d.kind in "iu" else column
    rows[:, :width * point_step] = packed.view(np.uint8).reshape(height, width * point_step)
    msg.data = rows.tobytes()
    return msg
