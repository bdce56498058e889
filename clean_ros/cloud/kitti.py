"""KITTI object-format I/O: scans, split listings, label files, calibration and camera <-> LiDAR box conversion.

Conventions (the field's, as in OpenPCDet):
- LiDAR box: (x, y, z, l, w, h, yaw), z is the box *centre*, yaw about +z, yaw 0 points l along +x.
- Camera (rect) box as written in label_2: location = *bottom* centre, dimensions (h, w, l),
  rotation_y about the camera's +y (which points down).
Pure numpy; the runtime needs it to write predictions, training to read data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clean_ros.atomic import atomic_write_text

CLASS_NAMES = ("Car", "Pedestrian", "Cyclist")
# Default KITTI image size, used to clip projected 2D boxes when the image is not at hand.
DEFAULT_IMAGE_SHAPE = (375, 1242)  # (height, width)


class KittiFormatError(ValueError):
    """A KITTI file that cannot be parsed; the message names the file and line."""


# --------------------------------------------------------------------------- point clouds
def read_velodyne(path: str | Path, num_features: int = 4) -> np.ndarray:
    """(N, num_features) float32 points of a KITTI .bin scan.

    The size is checked in bytes: np.fromfile alone drops a trailing partial value, so a truncated or foreign file
    would otherwise load as fewer (or no) points without a word.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise KittiFormatError(f"{path}: cannot read point cloud: {exc.strerror}") from None
    record = 4 * num_features
    if size % record:
        raise KittiFormatError(f"{path}: {size} bytes is not a multiple of {record} bytes "
                               f"({num_features} float32 values per point); not a KITTI velodyne scan?")
    return np.fromfile(path, dtype=np.float32).reshape(-1, num_features)


def split_frame_ids(folder: str | Path, split: str | None, listing_required: bool = True
                    ) -> tuple[Path, list[str], str]:
    """The frames of a KITTI-layout folder: (the split folder holding velodyne/, the frame ids, their source).

    folder: a split folder with velodyne/ (its listing in folder/ImageSets/ or folder.parent/ImageSets/) or a root
    with training/velodyne/ (its listing in root/ImageSets/). split: read ImageSets/<split>.txt (one id a line); None,
    or no listing while listing_required is false: every velodyne/*.bin, sorted. The source (the listing or the
    velodyne folder) is for messages. ValueError, one line naming the path: no velodyne folder, no listing (when
    required), a listing that cannot be read (or is not UTF-8), no frames, a listed id that is not a plain file name
    (a path, '..', a space). Whether each listed frame has its files is left to the caller.
    """
    folder = Path(folder)
    if (folder / "velodyne").is_dir():
        split_dir, listing_dirs = folder, (folder / "ImageSets", folder.parent / "ImageSets")
    elif (folder / "training" / "velodyne").is_dir():
        split_dir, listing_dirs = folder / "training", (folder / "ImageSets",)
    else:
        raise ValueError(f"{folder}: no velodyne/ folder (nor training/velodyne/); expected the KITTI layout with "
                         "velodyne/*.bin scans")
    candidates = [d / f"{split}.txt" for d in listing_dirs] if split is not None else []
    source = next((c for c in candidates if c.is_file()), None)
    if source is None and candidates and listing_required:
        raise ValueError(f"--split {split}: no {' or '.join(str(c) for c in candidates)}")
    if source is None:
        source = split_dir / "velodyne"
        frame_ids = sorted(p.stem for p in source.glob("*.bin"))
    else:
        try:
            frame_ids = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise ValueError(f"{source}: cannot read the frame list: {why}") from None
    if not frame_ids:
        raise ValueError(f"{source}: no frames")
    # ids name files under velodyne/, label_2/, calib/: a path in a listing would read (or write) outside them
    bad = next((i for i in frame_ids if any(c in "/\\" or c.isspace() for c in i) or i in (".", "..")), None)
    if bad is not None:
        raise ValueError(f"{source}: {bad!r} is not a frame id (one file name, without a folder or spaces, per line)")
    return split_dir, frame_ids, str(source)


def frames_without(split_dir: str | Path, frame_ids: list[str], sub: str = "velodyne", suffix: str = ".bin"
                   ) -> list[str]:
    """The frame ids of a split_frame_ids listing that have no split_dir/sub/<id><suffix> file, in listing order
    (each caller says what a missing file means for it)."""
    folder = Path(split_dir) / sub
    return [i for i in frame_ids if not (folder / f"{i}{suffix}").is_file()]


# --------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Calibration:
    """KITTI calib: P2 (3x4), R0_rect (3x3), Tr_velo_to_cam (3x4)."""

    P2: np.ndarray
    R0: np.ndarray
    V2C: np.ndarray

    @classmethod
    def from_file(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise KittiFormatError(f"{path}: cannot read calibration: {exc.strerror}") from None
        return cls.from_text(text, source=str(path))

    @classmethod
    def from_text(cls, text: str, source: str = "<calib>") -> "Calibration":
        values: dict[str, np.ndarray] = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            key, sep, rest = line.partition(":")
            if not sep:
                raise KittiFormatError(f"{source}:{lineno}: expected 'KEY: values', got {line[:60]!r}")
            try:
                values[key.strip()] = np.array([float(v) for v in rest.split()], dtype=np.float64)
            except ValueError:
                raise KittiFormatError(f"{source}:{lineno}: non-numeric value in {key.strip()!r}") from None
        # Some KITTI derivatives name the keys R_rect / Tr_velo_cam.
        aliases = {"R0_rect": ("R0_rect", "R_rect"), "Tr_velo_to_cam": ("Tr_velo_to_cam", "Tr_velo_cam"), "P2": ("P2",)}
        sizes = {"P2": 12, "R0_rect": 9, "Tr_velo_to_cam": 12}
        found = {}
        for name, keys in aliases.items():
            key = next((k for k in keys if k in values), None)
            if key is None:
                raise KittiFormatError(f"{source}: calibration lacks {name}")
            if values[key].size != sizes[name]:
                raise KittiFormatError(f"{source}: {key} has {values[key].size} values, expected {sizes[name]}")
            found[name] = values[key]
        return cls(P2=found["P2"].reshape(3, 4), R0=found["R0_rect"].reshape(3, 3), V2C=found["Tr_velo_to_cam"].reshape(3, 4))

    def to_text(self) -> str:
        def row(name: str, m: np.ndarray) -> str:
            return name + ": " + " ".join(f"{v:.12e}" for v in m.ravel())

        eye34 = np.hstack([np.eye(3), np.zeros((3, 1))])
        # Only P2 matters to us; the other cameras are written as P2 so the file has every key the format has.
        lines = [row("P0", self.P2), row("P1", self.P2), row("P2", self.P2), row("P3", self.P2),
                 row("R0_rect", self.R0), row("Tr_velo_to_cam", self.V2C), row("Tr_imu_to_velo", eye34)]
        return "\n".join(lines) + "\n"

    # 4x4 LiDAR -> rect transform, and its inverse (computed, not cached: the object is tiny and frozen)
    def _lidar_to_rect_matrix(self) -> np.ndarray:
        r0 = np.eye(4)
        r0[:3, :3] = self.R0
        v2c = np.eye(4)
        v2c[:3, :] = self.V2C
        return r0 @ v2c

    def lidar_to_rect(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) LiDAR points -> (N, 3) rectified camera coordinates."""
        m = self._lidar_to_rect_matrix()
        return points[:, :3] @ m[:3, :3].T + m[:3, 3]

    def rect_to_lidar(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) rectified camera points -> (N, 3) LiDAR coordinates."""
        m = np.linalg.inv(self._lidar_to_rect_matrix())
        return points[:, :3] @ m[:3, :3].T + m[:3, 3]

    def rect_to_image(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project rect points with P2 -> (N, 2) pixel coordinates and (N,) depth."""
        hom = np.hstack([points[:, :3], np.ones((len(points), 1))])
        proj = hom @ self.P2.T
        depth = proj[:, 2] - self.P2[2, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = proj[:, :2] / proj[:, 2:3]
        return uv, depth

    def lidar_to_image(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.rect_to_image(self.lidar_to_rect(points))


# --------------------------------------------------------------------------- labels
@dataclass
class KittiObjects:
    """Columnar KITTI label rows of one frame (camera frame, as in the file)."""

    names: np.ndarray  # (N,) str
    truncation: np.ndarray  # (N,) float
    occlusion: np.ndarray  # (N,) int
    alpha: np.ndarray  # (N,) float
    bbox: np.ndarray  # (N, 4) left, top, right, bottom
    dimensions: np.ndarray  # (N, 3) h, w, l
    location: np.ndarray  # (N, 3) bottom centre in rect camera frame
    rotation_y: np.ndarray  # (N,)
    score: np.ndarray = field(default=None)  # (N,) or None for ground truth

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def empty(cls, with_score: bool = False) -> "KittiObjects":
        return cls(np.zeros(0, dtype="<U16"), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros((0, 4)),
                   np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0) if with_score else None)

    def select(self, mask: np.ndarray) -> "KittiObjects":
        return KittiObjects(self.names[mask], self.truncation[mask], self.occlusion[mask], self.alpha[mask], self.bbox[mask],
                            self.dimensions[mask], self.location[mask], self.rotation_y[mask],
                            None if self.score is None else self.score[mask])


def parse_labels(text: str, source: str = "<labels>", require_score: bool = False) -> KittiObjects:
    """Parse KITTI label text (15 columns, or 16 with a score). Errors name file and line."""
    rows, scores, names = [], [], []
    has_score = None
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (15, 16):
            raise KittiFormatError(f"{source}:{lineno}: expected 15 or 16 columns, got {len(parts)}")
        if require_score and len(parts) != 16:
            raise KittiFormatError(f"{source}:{lineno}: prediction line lacks the 16th column 'score'")
        try:
            values = [float(v) for v in parts[1:]]
        except ValueError:
            raise KittiFormatError(f"{source}:{lineno}: non-numeric value in {line.strip()[:80]!r}") from None
        if not all(np.isfinite(values)):
            raise KittiFormatError(f"{source}:{lineno}: non-finite value in {line.strip()[:80]!r}")
        row_has_score = len(parts) == 16
        if has_score is not None and row_has_score != has_score:
            raise KittiFormatError(f"{source}:{lineno}: mixed 15- and 16-column lines")
        has_score = row_has_score
        names.append(parts[0])
        rows.append(values[:14])
        scores.append(values[14] if row_has_score else np.nan)
    if not rows:
        return KittiObjects.empty(with_score=require_score)
    a = np.asarray(rows, dtype=np.float64)
    return KittiObjects(
        names=np.asarray(names),
        truncation=a[:, 0],
        occlusion=a[:, 1].astype(np.int64),
        alpha=a[:, 2],
        bbox=a[:, 3:7],
        dimensions=a[:, 7:10],
        location=a[:, 10:13],
        rotation_y=a[:, 13],
        score=np.asarray(scores) if has_score else None,
    )


def read_labels(path: str | Path, require_score: bool = False) -> KittiObjects:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise KittiFormatError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KittiFormatError(f"{path}: not a text file") from None
    return parse_labels(text, source=str(path), require_score=require_score)


def format_labels(objs: KittiObjects) -> str:
    lines = []
    for i in range(len(objs)):
        cols = [objs.names[i], f"{objs.truncation[i]:.2f}", str(int(objs.occlusion[i])), f"{objs.alpha[i]:.2f}"]
        cols += [f"{v:.2f}" for v in objs.bbox[i]]
        cols += [f"{v:.2f}" for v in objs.dimensions[i]]
        cols += [f"{v:.2f}" for v in objs.location[i]]
        cols.append(f"{objs.rotation_y[i]:.2f}")
        if objs.score is not None:
            cols.append(f"{objs.score[i]:.4f}")
        lines.append(" ".join(cols))
    return "\n".join(lines) + ("\n" if lines else "")


def write_labels(path: str | Path, objs: KittiObjects) -> None:
    """Write atomically (temp file + rename): a crash never leaves a half-written label file."""
    atomic_write_text(path, format_labels(objs))


# --------------------------------------------------------------------------- box conversion
def boxes_camera_to_lidar(location: np.ndarray, dimensions_hwl: np.ndarray, rotation_y: np.ndarray,
                          calib: Calibration) -> np.ndarray:
    """Camera-frame label boxes -> (N, 7) LiDAR boxes (x, y, z centre, l, w, h, yaw)."""
    h, w, l = dimensions_hwl[:, 0:1], dimensions_hwl[:, 1:2], dimensions_hwl[:, 2:3]
    xyz = calib.rect_to_lidar(location)
    xyz[:, 2:3] += h / 2.0  # bottom centre -> box centre
    yaw = -(np.pi / 2.0 + rotation_y[:, None])
    return np.hstack([xyz, l, w, h, normalize_yaw_np(yaw)])


def boxes_lidar_to_camera(boxes: np.ndarray, calib: Calibration) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 7) LiDAR boxes -> (location bottom centre (N,3), dimensions h,w,l (N,3), rotation_y (N,))."""
    bottom = boxes[:, :3].copy()
    bottom[:, 2] -= boxes[:, 5] / 2.0
    location = calib.lidar_to_rect(bottom)
    dims = boxes[:, [5, 4, 3]]
    rotation_y = normalize_yaw_np(-boxes[:, 6] - np.pi / 2.0)
    return location, dims, rotation_y


def normalize_yaw_np(yaw: np.ndarray) -> np.ndarray:
    """Wrap angles to [-pi, pi)."""
    return (yaw + np.pi) % (2.0 * np.pi) - np.pi


IN_FRONT_DEPTH = 0.1  # m: points closer to the camera plane (or behind it) do not project into the image


def box_corners_camera(location: np.ndarray, dimensions_hwl: np.ndarray, rotation_y: np.ndarray) -> np.ndarray:
    """(N, 8, 3) corners of camera-frame boxes (location = bottom centre, y down)."""
    h, w, l = dimensions_hwl[:, 0], dimensions_hwl[:, 1], dimensions_hwl[:, 2]
    x_c = np.stack([l, l, -l, -l, l, l, -l, -l], 1) / 2
    y_c = np.stack([np.zeros_like(h)] * 4 + [-h] * 4, 1)
    z_c = np.stack([w, -w, -w, w, w, -w, -w, w], 1) / 2
    c, s = np.cos(rotation_y)[:, None], np.sin(rotation_y)[:, None]
    x = c * x_c + s * z_c
    z = -s * x_c + c * z_c
    return np.stack([x, y_c, z], -1) + location[:, None, :]


def project_boxes_to_image(location: np.ndarray, dimensions_hwl: np.ndarray, rotation_y: np.ndarray, calib: Calibration,
                           image_shape: tuple[int, int] = DEFAULT_IMAGE_SHAPE) -> np.ndarray:
    """2D image boxes (N, 4) of 3D camera boxes, clipped to the image. Boxes behind the camera get a zero box."""
    n = len(location)
    if n == 0:
        return np.zeros((0, 4))
    corners = box_corners_camera(location, dimensions_hwl, rotation_y).reshape(-1, 3)
    uv, depth = calib.rect_to_image(corners)
    uv = uv.reshape(n, 8, 2)
    in_front = (depth.reshape(n, 8) > IN_FRONT_DEPTH).all(1)
    box = np.concatenate([uv.min(1), uv.max(1)], 1)
    box[:, [0, 2]] = box[:, [0, 2]].clip(0, image_shape[1] - 1)
    box[:, [1, 3]] = box[:, [1, 3]].clip(0, image_shape[0] - 1)
    box[~in_front] = 0.0
    return box


def boxes_in_image(bbox: np.ndarray) -> np.ndarray:
    """(N,) True where a projected 2D box (project_boxes_to_image: clipped, zero behind the camera) keeps a
    positive area, i.e. part of the 3D box is in the camera's view. KITTI labels only cover such boxes; a box
    beside the image would otherwise reach the evaluator as a zero-width box of full height."""
    bbox = np.asarray(bbox, dtype=np.float64).reshape(-1, 4)
    return (bbox[:, 2] > bbox[:, 0]) & (bbox[:, 3] > bbox[:, 1])


def centres_in_image(location: np.ndarray, dimensions_hwl: np.ndarray, calib: Calibration,
                     image_shape: tuple[int, int] = DEFAULT_IMAGE_SHAPE) -> np.ndarray:
    """(N,) True where a camera-frame box's 3D centre (location = bottom centre, y down) projects into the image
    in front of the camera. boxes_in_image also keeps a box of which only a corner is in view; this says whether the
    object is mostly in the camera's view, where labels drawn on the image can hold it."""
    location = np.asarray(location, dtype=np.float64).reshape(-1, 3)
    if not len(location):
        return np.zeros(0, dtype=bool)
    centre = location.copy()
    centre[:, 1] -= np.asarray(dimensions_hwl, dtype=np.float64).reshape(-1, 3)[:, 0] / 2  # y points down
    uv, depth = calib.rect_to_image(centre)
    with np.errstate(invalid="ignore"):
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < image_shape[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < image_shape[0])
    return inside & (depth > IN_FRONT_DEPTH)


def observation_angle(location: np.ndarray, rotation_y: np.ndarray) -> np.ndarray:
    """KITTI alpha = rotation_y minus the viewing-ray angle, wrapped to [-pi, pi)."""
    return normalize_yaw_np(rotation_y - np.arctan2(location[:, 0], location[:, 2]))


def difficulty_levels(objs: KittiObjects) -> np.ndarray:
    """KITTI difficulty per object: 0 easy, 1 moderate, 2 hard, -1 none of them (as the devkit filters)."""
    height = objs.bbox[:, 3] - objs.bbox[:, 1]
    min_height = np.array([40, 25, 25])
    max_occlusion = np.array([0, 1, 2])
    max_truncation = np.array([0.15, 0.30, 0.50])
    level = np.full(len(objs), -1, dtype=np.int64)
    for d in (2, 1, 0):  # hardest first, easier levels overwrite
        ok = (height >= min_height[d]) & (objs.occlusion <= max_occlusion[d]) & (objs.truncation <= max_truncation[d])
        level[ok] = d
    return level


def labels_from_lidar_boxes(boxes: np.ndarray, names: np.ndarray, scores: np.ndarray | None, calib: Calibration,
                            image_shape: tuple[int, int] = DEFAULT_IMAGE_SHAPE) -> KittiObjects:
    """Predictions in the LiDAR frame -> KITTI label rows (with projected 2D box and alpha)."""
    if len(boxes) == 0:
        return KittiObjects.empty(with_score=scores is not None)
    location, dims, ry = boxes_lidar_to_camera(np.asarray(boxes, dtype=np.float64), calib)
    bbox = project_boxes_to_image(location, dims, ry, calib, image_shape)
    n = len(boxes)
    return KittiObjects(np.asarray(names), np.zeros(n), np.zeros(n, dtype=np.int64), observation_angle(location, ry), bbox,
                        dims, location, ry, None if scores is None else np.asarray(scores, dtype=np.float64))
