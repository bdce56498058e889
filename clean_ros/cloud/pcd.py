"""A small reader for PCL .pcd files (DATA ascii or binary; binary_compressed is refused with a clear message).

    cloud = read_pcd("scan.pcd")              # fields x y z intensity by default
    cloud.points  (N, 4) float32; cloud.missing_fields (requested but absent: filled with 0)

Any field type / size PCL writes (F/I/U, 1/2/4/8 bytes) is converted to float32; fields with COUNT > 1 use their
first element. Rows with a non-finite x/y/z (organised clouds mark holes with NaN) are dropped. No Python loop over
points: binary data is one structured np.frombuffer, ascii one np.loadtxt-style parse of the data block.
Errors are PcdFormatError with "file:line: what is wrong".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from clean_ros.atomic import atomic_write_bytes

DEFAULT_FIELDS = ("x", "y", "z", "intensity")
_TYPE_CHARS = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
               ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}
_MAX_HEADER_LINES = 64


class PcdFormatError(ValueError):
    """A .pcd file that cannot be read; the message names the file, the line and the problem."""


@dataclass
class PcdCloud:
    points: np.ndarray  # (N, len(fields)) float32
    fields: tuple[str, ...]  # columns of points
    available_fields: tuple[str, ...]  # fields in the file
    missing_fields: tuple[str, ...]  # requested, absent in the file (column is 0)
    num_nonfinite_removed: int


@dataclass
class _Header:
    fields: list[str]
    sizes: list[int]
    types: list[str]
    counts: list[int]
    width: int
    height: int
    points: int
    data: str
    data_offset: int  # byte offset of the data block
    data_line: int  # line number where data starts (ascii error messages)


def _parse_header(raw: bytes, source: str) -> _Header:
    values: dict[str, list[str]] = {}
    offset = 0
    for lineno in range(1, _MAX_HEADER_LINES + 1):
        end = raw.find(b"\n", offset)
        if end < 0:
            raise PcdFormatError(f"{source}:{lineno}: header ends before a DATA line")
        line = raw[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *rest = line.split()
        key = key.upper()
        values[key] = rest
        if key == "DATA":
            return _check_header(values, source, lineno, offset)
    raise PcdFormatError(f"{source}: no DATA line in the first {_MAX_HEADER_LINES} lines: not a .pcd file?")


def _ints(values: dict[str, list[str]], key: str, source: str, lineno: int) -> list[int]:
    try:
        return [int(v) for v in values[key]]
    except ValueError:
        raise PcdFormatError(f"{source}: header {key} has a non-integer value: {' '.join(values[key])}") from None


def _check_header(values: dict[str, list[str]], source: str, lineno: int, offset: int) -> _Header:
    for key in ("FIELDS", "SIZE", "TYPE"):
        if key not in values:
            raise PcdFormatError(f"{source}: header lacks {key}")
    fields = values["FIELDS"]
    sizes = _ints(values, "SIZE", source, lineno)
    types = [t.upper() for t in values["TYPE"]]
    counts = _ints(values, "COUNT", source, lineno) if "COUNT" in values else [1] * len(fields)
    if not (len(fields) == len(sizes) == len(types) == len(counts)):
        raise PcdFormatError(f"{source}: FIELDS ({len(fields)}), SIZE ({len(sizes)}), TYPE ({len(types)}) and "
                             f"COUNT ({len(counts)}) differ in length")
    for name, t, s in zip(fields, types, sizes):
        if (t, s) not in _TYPE_CHARS:
            raise PcdFormatError(f"{source}: field {name!r} has unsupported TYPE {t} / SIZE {s}")
    width = _ints(values, "WIDTH", source, lineno)[0] if "WIDTH" in values else None
    height = _ints(values, "HEIGHT", source, lineno)[0] if "HEIGHT" in values else 1
    points = _ints(values, "POINTS", source, lineno)[0] if "POINTS" in values else None
    if points is None:
        if width is None:
            raise PcdFormatError(f"{source}: header has neither POINTS nor WIDTH")
        points = width * height
    data = (values["DATA"] or [""])[0].lower()
    if data not in ("ascii", "binary"):
        if data == "binary_compressed":
            raise PcdFormatError(f"{source}:{lineno}: DATA binary_compressed is not supported; convert with "
                                 f"`pcl_convert_pcd_ascii_binary IN OUT 1` (binary) first")
        raise PcdFormatError(f"{source}:{lineno}: unknown DATA kind {data!r} (ascii or binary)")
    if points < 0:
        raise PcdFormatError(f"{source}: POINTS {points} is negative")
    return _Header(fields, sizes, types, counts, width or points, height, points, data, offset, lineno + 1)


def _columns(header: _Header, matrix_or_struct, kind: str, wanted: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    n = header.points
    out = np.zeros((n, len(wanted)), dtype=np.float32)
    missing = []
    if kind == "ascii":
        starts = np.cumsum([0] + header.counts[:-1])
    for j, name in enumerate(wanted):
        if name not in header.fields:
            missing.append(name)
            continue
        i = header.fields.index(name)
        if kind == "binary":
            column = matrix_or_struct[f"f{i}"]
            out[:, j] = column[:, 0] if column.ndim > 1 else column
        else:
            out[:, j] = matrix_or_struct[:, starts[i]]
    return out, missing


def read_pcd(path: str | Path, fields: Sequence[str] = DEFAULT_FIELDS, remove_nonfinite: bool = True) -> PcdCloud:
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PcdFormatError(f"{source}: cannot read: {exc.strerror}") from None
    header = _parse_header(raw, source)
    for name in ("x", "y", "z"):
        if name in fields and name not in header.fields:
            raise PcdFormatError(f"{source}: no {name!r} field (fields: {' '.join(header.fields)})")
    body = raw[header.data_offset:]
    if header.data == "binary":
        dtype = np.dtype([(f"f{i}", "<" + _TYPE_CHARS[(t, s)], (c,) if c > 1 else ())
                          for i, (t, s, c) in enumerate(zip(header.types, header.sizes, header.counts))])
        need = dtype.itemsize * header.points
        if len(body) < need:
            raise PcdFormatError(f"{source}: binary data has {len(body)} bytes, header promises {header.points} "
                                 f"points x {dtype.itemsize} bytes = {need}")
        table = np.frombuffer(body, dtype=dtype, count=header.points)
        points, missing = _columns(header, table, "binary", fields)
    else:
        text = body.decode("ascii", errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) < header.points:
            raise PcdFormatError(f"{source}: ascii data has {len(lines)} rows, header promises {header.points}")
        width = sum(header.counts)
        try:
            matrix = np.array(" ".join(lines[: header.points]).split(), dtype=np.float64)
        except ValueError:
            bad = next(i for i, ln in enumerate(lines) if not _numeric(ln))
            raise PcdFormatError(f"{source}:{header.data_line + bad}: non-numeric value in {lines[bad][:60]!r}") \
                from None
        if matrix.size != header.points * width:
            bad = next((i for i, ln in enumerate(lines[: header.points]) if len(ln.split()) != width), 0)
            raise PcdFormatError(f"{source}:{header.data_line + bad}: expected {width} values per row, got "
                                 f"{len(lines[bad].split())}")
        points, missing = _columns(header, matrix.reshape(header.points, width), "ascii", fields)
    removed = 0
    if remove_nonfinite and len(points):
        xyz = [fields.index(a) for a in ("x", "y", "z") if a in fields]
        finite = np.isfinite(points[:, xyz]).all(axis=1)
        removed = int((~finite).sum())
        if removed:
            points = points[finite]
    return PcdCloud(np.ascontiguousarray(points), tuple(fields), tuple(header.fields), tuple(missing), removed)


def _numeric(line: str) -> bool:
    try:
        [float(v) for v in line.split()]
    except ValueError:
        return False
    return True


def write_pcd(path: str | Path, points: np.ndarray, fields: Sequence[str] = DEFAULT_FIELDS,
              binary: bool = True) -> None:
    """Write float32 columns as a .pcd (tests and conversions); atomic (temp name, then rename)."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    n = len(points)
    header = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
              f"FIELDS {' '.join(fields)}\nSIZE {' '.join(['4'] * len(fields))}\n"
              f"TYPE {' '.join(['F'] * len(fields))}\nCOUNT {' '.join(['1'] * len(fields))}\n"
              f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {'binary' if binary else 'ascii'}\n")
    body = points.astype("<f4").tobytes() if binary else \
        "".join(" ".join(f"{v:.9g}" for v in row) + "\n" for row in points.tolist()).encode()
    atomic_write_bytes(path, header.encode() + body)


__all__ = ["PcdFormatError", "PcdCloud", "read_pcd", "write_pcd", "DEFAULT_FIELDS"]
