"""sensor_msgs/PointCloud2 -> numpy without ROS or sensor_msgs_py (not on PyPI), plus the input-contract check.

The decoder reads only the fields it is asked for, straight out of ``msg.data``:

* zero copy (``np.frombuffer`` view) when the requested fields are exactly the whole point as native float32
  (KITTI-style x, y, z, intensity at 0/4/8/12, point_step 16, no row padding);
* otherwise each run of requested float32 fields lying back to back in the point (x, y, z, ...) is copied as one
  opaque block per point (padding, extra fields, row padding; big-endian: a byteswap in place afterwards), and
  every other requested field (any datatype, any order) by one strided converting copy.

No Python loop runs over points. Every size is checked against ``len(msg.data)`` before anything is allocated, so a
hostile header (huge width, tiny data) is a ``CloudFormatError``, not a memory blow-up.

The writer (make_pointcloud2) builds ROS messages, so it lives in clean_ros.ros.pointcloud_msg.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

# PointField datatype constants (sensor_msgs/PointField); kept here so this module imports without ROS.
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
_POINTFIELD_DTYPES = {
    INT8: np.dtype("i1"), UINT8: np.dtype("u1"), INT16: np.dtype("i2"), UINT16: np.dtype("u2"),
    INT32: np.dtype("i4"), UINT32: np.dtype("u4"), FLOAT32: np.dtype("f4"), FLOAT64: np.dtype("f8"),
}
_DATATYPE_NAMES = {INT8: "INT8", UINT8: "UINT8", INT16: "INT16", UINT16: "UINT16", INT32: "INT32",
                   UINT32: "UINT32", FLOAT32: "FLOAT32", FLOAT64: "FLOAT64"}
NUMPY_TO_DATATYPE = {dt.str[1:]: code for code, dt in _POINTFIELD_DTYPES.items()}

REQUIRED_FIELDS = ("x", "y", "z")
DEFAULT_FIELDS = ("x", "y", "z", "intensity")
# Far beyond any real sensor (a 128-beam LiDAR gives ~0.3 M points per sweep); guards against nonsense headers.
MAX_POINTS = 1 << 26
MAX_POINT_STEP = 1 << 16


class CloudFormatError(ValueError):
    """The PointCloud2 cannot be decoded; the message says exactly what is wrong."""


@dataclass(frozen=True)
class CloudInfo:
    """What read_points saw and did, for logs, diagnostics and the contract check."""

    width: int
    height: int
    num_points_in: int                      # width * height
    num_points: int                         # rows returned
    num_nonfinite_removed: int              # rows dropped because a returned value was NaN/Inf
    missing_fields: tuple[str, ...]         # requested optional fields absent from the cloud (filled with 0)
    field_dtypes: Mapping[str, str]         # requested field -> numpy dtype string as found in the cloud ("u1", ">f4")
    available_fields: tuple[str, ...]       # every field name in the message
    zero_copy: bool                         # the returned array is a view of msg.data
    row_padding: bool                       # row_step > width * point_step
    big_endian: bool


class _Field(NamedTuple):
    name: str
    offset: int
    dtype: np.dtype                         # scalar dtype with the cloud's byte order
    count: int


def _datatype_name(datatype: int) -> str:
    return _DATATYPE_NAMES.get(datatype, str(datatype))


def _parse_fields(fields: Iterable, point_step: int, is_bigendian: bool) -> list[_Field]:
    """Validate msg.fields against point_step; returns them in message order."""
    order = ">" if is_bigendian else "<"
    parsed: list[_Field] = []
    seen: set[str] = set()
    for f in fields:
        name, offset, datatype, count = str(f.name), int(f.offset), int(f.datatype), int(f.count)
        if datatype not in _POINTFIELD_DTYPES:
            raise CloudFormatError(
                f"field '{name}' has unsupported PointField datatype {datatype} (valid: 1=INT8 .. 8=FLOAT64)")
        if not name:
            raise CloudFormatError("a PointField has an empty name")
        if name in seen:
            raise CloudFormatError(f"field '{name}' appears twice in msg.fields")
        seen.add(name)
        if count < 1:
            raise CloudFormatError(f"field '{name}' has count {count}; a PointField count must be >= 1")
        if offset < 0:
            raise CloudFormatError(f"field '{name}' has negative offset {offset}")
        dtype = _POINTFIELD_DTYPES[datatype].newbyteorder(order) if _POINTFIELD_DTYPES[datatype].itemsize > 1 \
            else _POINTFIELD_DTYPES[datatype]
        end = offset + dtype.itemsize * count
        if end > point_step:
            raise CloudFormatError(
                f"field '{name}' ({_datatype_name(datatype)} x{count} at offset {offset}) ends at byte {end}, "
                f"past point_step {point_step}: point_step is too small for the fields")
        parsed.append(_Field(name, offset, dtype, count))
    return parsed


def cloud_dtype(fields: Iterable, point_step: int, is_bigendian: bool = False) -> np.dtype:
    """Structured numpy dtype of one point: every field at its offset (count > 1 as a sub-array), itemsize =
    point_step so padding bytes are skipped, byte order from is_bigendian."""
    point_step = int(point_step)
    if point_step <= 0:
        raise CloudFormatError(f"point_step is {point_step}; it must be > 0")
    parsed = _parse_fields(fields, point_step, bool(is_bigendian))
    return np.dtype({
        "names": [f.name for f in parsed],
        "formats": [f.dtype if f.count == 1 else (f.dtype, (f.count,)) for f in parsed],
        "offsets": [f.offset for f in parsed],
        "itemsize": point_step,
    })


def _buffer_of(data) -> np.ndarray:
    """msg.data (array.array('B') after rclpy, bytes, bytearray, memoryview, or a numpy array) as a uint8 view."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        return np.asarray(data, dtype=np.uint8).reshape(-1)  # a plain list: unusual, but valid for rosidl


def _check_geometry(msg, num_bytes: int) -> tuple[int, int, int, int]:
    width, height = int(msg.width), int(msg.height)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if width < 0 or height < 0:
        raise CloudFormatError(f"negative cloud size width={width} height={height}")
    if point_step <= 0:
        raise CloudFormatError(f"point_step is {point_step}; it must be > 0 (the size of one point in bytes)")
    if point_step > MAX_POINT_STEP:
        raise CloudFormatError(f"point_step {point_step} is absurd (> {MAX_POINT_STEP} bytes per point)")
    if width * height > MAX_POINTS:
        raise CloudFormatError(f"cloud claims {width} x {height} = {width * height} points (> {MAX_POINTS}): "
                               "the header is corrupt")
    if row_step < width * point_step:
        raise CloudFormatError(f"row_step {row_step} < width {width} * point_step {point_step} = "
                               f"{width * point_step}: a row cannot hold its points")
    # The last row needs only width*point_step bytes; demanding height*row_step would reject clouds whose final
    # row padding was trimmed, which is harmless.
    needed = (height - 1) * row_step + width * point_step
    if num_bytes < needed:
        raise CloudFormatError(
            f"data has {num_bytes} bytes but width {width} x height {height} with point_step {point_step}, "
            f"row_step {row_step} needs {needed} (expected height*row_step = {height * row_step}): data too short")
    return width, height, point_step, row_step


def _strided(buf: np.ndarray, dtype: np.dtype, offset: int, height: int, width: int, row_step: int,
             point_step: int) -> np.ndarray:
    """(height, width) view of one scalar (or block) per point, no copy."""
    return np.ndarray((height, width), dtype=dtype, buffer=buf, offset=offset, strides=(row_step, point_step))


def _float32_runs(fields: Sequence[str], by_name: Mapping[str, _Field]) -> list[tuple[int, int, int]]:
    """(first output column, number of columns, byte offset) of each maximal run of requested float32 fields that
    sit back to back in the point in the requested order: each run is copied as one opaque block per point."""
    runs: list[tuple[int, int, int]] = []
    for column, name in enumerate(fields):
        f = by_name.get(name)
        if f is None or f.dtype.kind != "f" or f.dtype.itemsize != 4:
            continue
        if runs and runs[-1][0] + runs[-1][1] == column and runs[-1][2] + 4 * runs[-1][1] == f.offset:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, runs[-1][2])
        else:
            runs.append((column, 1, f.offset))
    return runs


def _decode(buf: np.ndarray, fields: Sequence[str], by_name: Mapping[str, _Field], height: int, width: int,
            point_step: int, row_step: int, big_endian: bool, contiguous_rows: bool) -> tuple[np.ndarray, bool]:
    """(N, F) float32 from validated geometry; returns (points, is_view_of_buf)."""
    num_in, num_fields = height * width, len(fields)
    runs = _float32_runs(fields, by_name)
    whole = runs == [(0, num_fields, 0)] and contiguous_rows and point_step == 4 * num_fields
    if whole and not big_endian:
        return np.frombuffer(buf, dtype=np.float32, count=num_in * num_fields).reshape(num_in, num_fields), True
    points = np.empty((num_in, num_fields), np.float32)
    if whole:  # contiguous big-endian float32: one converting pass
        np.copyto(points, np.frombuffer(buf, dtype=">f4", count=num_in * num_fields).reshape(num_in, num_fields))
        return points, False
    in_runs = set()
    for column, length, offset in runs:
        # Copying 4*length opaque bytes per point is several times faster than a strided (N, length) float copy.
        chunk = np.dtype((np.void, 4 * length))
        dst = np.ndarray((height, width), dtype=chunk, buffer=points, offset=4 * column,
                         strides=(4 * num_fields * width, 4 * num_fields))
        np.copyto(dst, _strided(buf, chunk, offset, height, width, row_step, point_step))
        if big_endian:
            block = points if length == num_fields else points[:, column:column + length]
            block.byteswap(inplace=True)
        in_runs.update(range(column, column + length))
    grid = points.reshape(height, width, num_fields)  # a view: points is C-contiguous
    for column, name in enumerate(fields):
        if column in in_runs:
            continue
        f = by_name.get(name)
        if f is None:
            grid[:, :, column] = 0.0
        else:
            np.copyto(grid[:, :, column], _strided(buf, f.dtype, f.offset, height, width, row_step, point_step),
                      casting="unsafe")
    return points, False


def read_points(msg, fields: Sequence[str] = DEFAULT_FIELDS, intensity_scale: float = 1.0,
                remove_nan: bool = True, required: Sequence[str] = REQUIRED_FIELDS,
                intensity_field: str = "intensity") -> tuple[np.ndarray, CloudInfo]:
    """Decode a PointCloud2 into a C-contiguous (N, len(fields)) float32 array, columns in ``fields`` order.

    Fields in ``required`` must exist (CloudFormatError otherwise); any other requested field that the cloud lacks
    is filled with zeros and listed in ``info.missing_fields``. Integer fields (uint8 intensity, uint16 ring) are
    converted to float32 (exact up to 2**24); the ``intensity_field`` column is multiplied by ``intensity_scale``.
    With ``remove_nan`` rows holding any NaN/Inf are dropped (``info.num_nonfinite_removed``). Organised clouds
    come out row-major (row 0 first), row padding skipped.

    On the zero-copy path (``info.zero_copy``) the result is a view of ``msg.data``: do not write into it unless
    the message is yours. An empty cloud (width * height == 0) returns a (0, F) array.
    """
    fields = tuple(fields)
    if not fields:
        raise CloudFormatError("read_points was asked for no fields")
    if len(set(fields)) != len(fields):
        raise CloudFormatError(f"read_points was asked for a field twice: {fields}")
    width, height = int(msg.width), int(msg.height)
    big_endian = bool(msg.is_bigendian)
    if width * height == 0:
        names = tuple(str(f.name) for f in msg.fields)
        empty_info = CloudInfo(width, height, 0, 0, 0, tuple(f for f in fields if f not in names), {}, names,
                               False, False, big_endian)
        return np.zeros((0, len(fields)), np.float32), empty_info

    buf = _buffer_of(msg.data)
    width, height, point_step, row_step = _check_geometry(msg, buf.size)
    by_name = {f.name: f for f in _parse_fields(msg.fields, point_step, big_endian)}
    absent_required = [name for name in required if name not in by_name]
    if absent_required:
        raise CloudFormatError(f"cloud has no field {', '.join(repr(n) for n in absent_required)} "
                               f"(fields present: {', '.join(by_name) or 'none'})")
    for name in fields:
        if name in by_name and by_name[name].count != 1:
            raise CloudFormatError(f"field '{name}' has count {by_name[name].count}; read_points reads scalar "
                                   "fields (count 1) only")
    missing = tuple(name for name in fields if name not in by_name)
    present = [by_name[name] for name in fields if name in by_name]
    num_in = width * height
    row_padding = height > 1 and row_step > width * point_step
    contiguous_rows = height == 1 or row_step == width * point_step
    field_dtypes = {f.name: f.dtype.str if f.dtype.itemsize > 1 else f.dtype.str[1:] for f in present}

    points, zero_copy = _decode(buf, fields, by_name, height, width, point_step, row_step, big_endian,
                                contiguous_rows)

    if intensity_scale != 1.0 and intensity_field in fields and intensity_field not in missing:
        if zero_copy:
            points = points.copy()
            zero_copy = False
        points[:, fields.index(intensity_field)] *= np.float32(intensity_scale)

    removed = 0
    # A sum is NaN/Inf whenever any term is, so one cheap reduction clears the common all-finite case; a finite
    # cloud whose float32 sum overflows just takes the exact path below.
    if remove_nan and not np.isfinite(points.sum(dtype=np.float32)):
        finite = np.isfinite(points).all(axis=1)
        removed = int(num_in - np.count_nonzero(finite))
        if removed:
            points = points[finite]
            zero_copy = False

    info = CloudInfo(width, height, num_in, len(points), removed, missing, field_dtypes, tuple(by_name),
                     zero_copy, row_padding, big_endian)
    return points, info


# --------------------------------------------------------------------------------------------------------------
# Input contract: does this sensor's cloud look like what the model was trained on?

@dataclass(frozen=True)
class InputContract:
    """What the model bundle expects from its input cloud.

    point_features: the per-point features fed to the network, in order, e.g. ("x", "y", "z", "intensity").
    feature_ranges: expected value range of some features, e.g. {"intensity": (0.0, 1.0)}.
    point_cloud_range: (x_min, y_min, z_min, x_max, y_max, z_max) the model was trained on, metres.
    frame_id: the frame the model expects its input in (None: do not check).
    min_in_range_fraction: fewer points than this inside point_cloud_range is reported. A 360 degree sensor with a
    front-only range (KITTI) keeps ~40 %, so the default is well below that.
    """

    point_features: tuple[str, ...]
    point_cloud_range: tuple[float, float, float, float, float, float]
    feature_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    frame_id: str | None = None
    min_in_range_fraction: float = 0.10


class Finding(NamedTuple):
    """One contract problem: a stable code (for diagnostics keys and tests) and a sentence for the user."""

    code: str          # undecodable | empty | missing_field | value_scale | value_range | out_of_range | frame_id
    message: str

    def __str__(self) -> str:
        return self.message


def _value_findings(name: str, values: np.ndarray, expected: tuple[float, float], dtype: str,
                    intensity_scale: float) -> list[Finding]:
    lo, hi = float(expected[0]), float(expected[1])
    if values.size == 0:
        return []
    p01, p99, vmax = (float(v) for v in np.percentile(values, [1, 99, 100]))
    span = hi - lo
    tolerance = 0.05 * span if span > 0 else 1e-3
    if p01 >= lo - tolerance and p99 <= hi + tolerance:
        return []
    where = f"field '{name}' ({dtype}, intensity_scale {intensity_scale:g})" if name == "intensity" \
        else f"field '{name}' ({dtype})"
    if hi <= 1.0 + 1e-6 and 1.5 < vmax <= 255.5:
        suggested = intensity_scale / 255.0
        return [Finding("value_scale",
                        f"{where} looks 0-255 scaled (99th percentile {p99:.1f}, max {vmax:.1f}) but the model "
                        f"expects [{lo:g}, {hi:g}]: set intensity_scale to {suggested:.6g} (= current / 255)")]
    if hi >= 100.0 and vmax <= 1.0 + 1e-6:
        return [Finding("value_scale",
                        f"{where} lies in [0, 1] (max {vmax:.3f}) but the model expects [{lo:g}, {hi:g}]: "
                        f"set intensity_scale to {intensity_scale * hi:g} (= current * {hi:g})")]
    return [Finding("value_range",
                    f"{where} spans [{p01:.3g}, {p99:.3g}] (1st-99th percentile) outside the trained range "
                    f"[{lo:g}, {hi:g}]: check the sensor's intensity units and intensity_scale")]


def _range_findings(xyz: np.ndarray, pc_range: Sequence[float], min_fraction: float) -> list[Finding]:
    lo = np.asarray(pc_range[:3], np.float32)
    hi = np.asarray(pc_range[3:6], np.float32)
    inside_axis = (xyz >= lo) & (xyz < hi)
    fraction = float(inside_axis.all(axis=1).mean())
    if fraction >= min_fraction:
        return []
    per_axis = inside_axis.mean(axis=0)
    axes = ", ".join(f"{a}: {100 * p:.0f}%" for a, p in zip("xyz", per_axis))
    median_abs = float(np.median(np.linalg.norm(xyz.astype(np.float64), axis=1)))  # float64: no overflow on garbage
    extent = float(max(np.abs(lo).max(), np.abs(hi).max()))
    hints = []
    if median_abs > 20 * extent:
        hints.append(f"median point distance {median_abs:.0f} is far beyond the range: are the units millimetres "
                     "or centimetres instead of metres?")
    if per_axis[2] < min_fraction and min(per_axis[0], per_axis[1]) >= 0.5:
        hints.append(f"median z is {float(np.median(xyz[:, 2])):.2f} m while the range is z in "
                     f"[{lo[2]:g}, {hi[2]:g}]: is the cloud in a frame with another origin height (base_link vs "
                     "the sensor) or is the sensor mounted differently?")
    if not hints:
        hints.append("check the frame (axes: x forward, y left, z up), the units (metres) and the sensor mounting")
    return [Finding("out_of_range",
                    f"only {100 * fraction:.1f}% of {len(xyz)} points lie inside the trained point-cloud range "
                    f"{tuple(float(v) for v in pc_range)} (inside per axis: {axes}); " + "; ".join(hints))]


def check_input_contract(msg, contract: InputContract, intensity_scale: float = 1.0) -> list[Finding]:
    """Compare one PointCloud2 (the first one the node sees) with what the model expects.

    Returns human-readable findings (empty list: all good). Never raises on a bad message: an undecodable cloud is
    itself a finding. Cost: one decode of the cloud plus a few percentiles; meant for the first message, not each.
    """
    findings: list[Finding] = []
    try:
        frame = str(msg.header.frame_id)
        if contract.frame_id is not None and frame != contract.frame_id:
            findings.append(Finding("frame_id", f"cloud frame_id '{frame}' differs from the expected "
                                                f"'{contract.frame_id}': boxes are published in '{frame}'; "
                                                "transform the cloud or check the driver's frame parameter"))
        wanted = tuple(dict.fromkeys((*REQUIRED_FIELDS, *contract.point_features)))
        try:
            points, info = read_points(msg, wanted, intensity_scale=intensity_scale, remove_nan=True)
        except CloudFormatError as error:
            findings.append(Finding("undecodable", f"cannot decode the cloud: {error}"))
            return findings
        if info.num_points_in == 0:
            findings.append(Finding("empty", "the cloud is empty (width * height = 0): fields and values could not "
                                             "be checked; checking again on the next non-empty cloud is advised"))
            return findings
        for name in info.missing_fields:
            findings.append(Finding("missing_field",
                                    f"the model uses point feature '{name}' but the cloud has no such field "
                                    f"(fields: {', '.join(info.available_fields)}); it will be fed zeros and "
                                    "detections will suffer: map the sensor's field or retrain without it"))
        if info.num_points == 0:
            findings.append(Finding("empty", f"the cloud has no finite points ({info.num_points_in} in, "
                                             f"{info.num_nonfinite_removed} NaN/Inf): the contract could not be "
                                             "checked on values"))
            return findings
        for name, expected in contract.feature_ranges.items():
            if name in wanted and name not in info.missing_fields:
                findings += _value_findings(name, points[:, wanted.index(name)], expected,
                                            info.field_dtypes.get(name, "?"), intensity_scale)
        findings += _range_findings(points[:, :3], contract.point_cloud_range, contract.min_in_range_fraction)
    except Exception as error:  # noqa: BLE001 - this check must never take the node down
        findings.append(Finding("undecodable", f"contract check failed on this message: {error!r}"))
    return findings


def check_points_contract(points: np.ndarray, contract: InputContract,
                          field_names: Sequence[str] | None = None) -> list[Finding]:
    """check_input_contract for an (N, F) numpy array already decoded (offline tools: .bin / .pcd files).

    field_names: the columns of `points` (default: contract.point_features). Same findings and messages as for a
    PointCloud2, minus the decoding ones.
    """
    names = tuple(field_names) if field_names is not None else tuple(contract.point_features)
    if len(points) == 0:
        return [Finding("empty", "the cloud is empty: fields and values could not be checked")]
    findings = [Finding("missing_field", f"the model uses point feature '{name}' but the input has no such field "
                                         f"(fields: {', '.join(names)})")
                for name in contract.point_features if name not in names]
    xyz = points[:, :3]
    finite = np.isfinite(xyz).all(axis=1)
    if not finite.any():
        return findings + [Finding("empty", f"the cloud has no finite points ({len(points)} in)")]
    for name, expected in contract.feature_ranges.items():
        if name in names:
            findings += _value_findings(name, points[finite, names.index(name)], expected,
                                        str(points.dtype), 1.0)
    findings += _range_findings(xyz[finite], contract.point_cloud_range, contract.min_in_range_fraction)
    return findings
