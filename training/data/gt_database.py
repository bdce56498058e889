"""Ground-truth database: the objects of the training split with their points, and the sampler that pastes them.

Built once (build_gt_database), saved as a plain .npz (no pickle; np.load(allow_pickle=False) reads it).
Per object: its points relative to the box centre (translation only), its LiDAR box, class name, KITTI difficulty,
point count and source frame. Pasting puts an object back where it was recorded, as the references do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clean_ros.atomic import atomic_open
from clean_ros.cloud.geometry import bev_iou, points_in_boxes
from training.data.data_config import GTSamplingConfig
from training.data.sample import Sample, class_indices

FORMAT_VERSION = 1
_FIELDS = ("points", "offsets", "boxes", "names", "difficulty", "num_points", "frame_ids")


class GTDatabaseError(ValueError):
    """A database file that is missing, unreadable or inconsistent."""


@dataclass
class GTDatabase:
    points: np.ndarray  # (P, F) float32, xyz relative to the owning box centre
    offsets: np.ndarray  # (K+1,) int64: object k owns points[offsets[k]:offsets[k+1]]
    boxes: np.ndarray  # (K, 7) float32 LiDAR frame
    names: np.ndarray  # (K,) str
    difficulty: np.ndarray  # (K,) int64
    num_points: np.ndarray  # (K,) int64
    frame_ids: np.ndarray  # (K,) str

    def __len__(self) -> int:
        return len(self.boxes)

    def object_points(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Absolute points of the given objects concatenated, and each point's position in `indices`."""
        indices = np.asarray(indices, dtype=np.int64)
        counts = self.num_points[indices]
        starts = self.offsets[indices]
        owner = np.repeat(np.arange(len(indices)), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        rows = np.repeat(starts, counts) + (np.arange(counts.sum()) - first)
        pts = self.points[rows].copy()
        pts[:, :3] += self.boxes[indices][owner, :3]
        return pts, owner

    def save(self, path: str | Path) -> None:
        """Write atomically: a temp file renamed into place."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as f:
            np.savez(f, version=np.array(FORMAT_VERSION), points=self.points, offsets=self.offsets, boxes=self.boxes,
                     names=self.names.astype(str), difficulty=self.difficulty, num_points=self.num_points,
                     frame_ids=self.frame_ids.astype(str))

    @classmethod
    def load(cls, path: str | Path) -> "GTDatabase":
        path = Path(path)
        if not path.is_file():
            raise GTDatabaseError(f"{path}: GT database not found; build it from the training split first "
                                  f"(training.data.gt_database.build_gt_database)")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in ("version",) + _FIELDS if k not in data]
                if missing:
                    raise GTDatabaseError(f"{path}: not a GT database, lacks {missing}")
                if int(data["version"]) != FORMAT_VERSION:
                    raise GTDatabaseError(f"{path}: format version {int(data['version'])}, expected {FORMAT_VERSION}")
                db = cls(**{k: data[k] for k in _FIELDS})
        except (OSError, ValueError) as exc:
            if isinstance(exc, GTDatabaseError):
                raise
            raise GTDatabaseError(f"{path}: cannot read GT database: {exc}") from None
        k = len(db.boxes)
        if (db.offsets.shape != (k + 1,) or db.offsets[-1] != len(db.points) or db.boxes.shape != (k, 7)
                or not len(db.names) == len(db.difficulty) == len(db.num_points) == k
                or not np.array_equal(np.diff(db.offsets), db.num_points)):
            raise GTDatabaseError(f"{path}: inconsistent GT database arrays")
        return db


def build_gt_database(dataset, output_path: str | Path | None = None) -> GTDatabase:
    """Collect every non-DontCare object of `dataset` (a KittiDataset, read with load_frame: no augmentation)."""
    parts_points, parts_boxes, names, difficulty, counts, frame_ids = [], [], [], [], [], []
    for frame_id in dataset.frame_ids:
        sample = dataset.load_frame(frame_id)
        if sample.num_boxes == 0:
            continue
        inside = points_in_boxes(torch.from_numpy(sample.points), torch.from_numpy(sample.gt_boxes)).numpy()
        box_idx, point_idx = np.nonzero(inside.T)  # grouped by box, points in input order
        rel = sample.points[point_idx].copy()
        rel[:, :3] -= sample.gt_boxes[box_idx, :3]
        parts_points.append(rel)
        parts_boxes.append(sample.gt_boxes)
        names.append(sample.gt_names)
        difficulty.append(sample.gt_difficulty)
        counts.append(inside.sum(0))
        frame_ids.append(np.full(sample.num_boxes, frame_id))
    num_features = dataset.config.num_point_features
    if not parts_boxes:
        db = GTDatabase(np.zeros((0, num_features), np.float32), np.zeros(1, np.int64), np.zeros((0, 7), np.float32),
                        np.zeros(0, dtype="<U16"), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, dtype="<U16"))
    else:
        num_points = np.concatenate(counts).astype(np.int64)
        db = GTDatabase(points=np.concatenate(parts_points).astype(np.float32),
                        offsets=np.concatenate([[0], np.cumsum(num_points)]).astype(np.int64),
                        boxes=np.concatenate(parts_boxes).astype(np.float32), names=np.concatenate(names).astype(str),
                        difficulty=np.concatenate(difficulty).astype(np.int64), num_points=num_points,
                        frame_ids=np.concatenate(frame_ids).astype(str))
    if output_path is not None:
        db.save(output_path)
    return db


def _any_bev_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) bool: the BEV footprints of a[i] and b[j] overlap (IoU > 0)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=bool)
    return (bev_iou(torch.from_numpy(a).double(), torch.from_numpy(b).double()) > 0).numpy()


def collision_free_candidates(candidates: np.ndarray, existing: np.ndarray) -> np.ndarray:
    """(K,) bool: candidates kept so that no two kept boxes and no kept box and existing box overlap in BEV.

    Vectorised, conservative greedy: candidate i is dropped if it overlaps an existing box or any earlier candidate
    that itself does not overlap an existing box (even if that earlier one is dropped for another reason).
    """
    hits_existing = _any_bev_overlap(candidates, existing).any(1)
    pairwise = _any_bev_overlap(candidates, candidates)
    earlier = np.tril(np.ones_like(pairwise), -1)  # [i, j] = 1 where j < i
    hits_earlier = (pairwise & earlier & ~hits_existing[None, :]).any(1)
    return ~hits_existing & ~hits_earlier


class GTSampler:
    """Pastes database objects into a scene: per class, fill up to sample_counts[class] objects."""

    def __init__(self, database: GTDatabase, config: GTSamplingConfig, class_names: tuple[str, ...]):
        self.database = database
        self.config = config
        self.class_names = tuple(class_names)
        unknown = set(config.sample_counts) - set(self.class_names)
        if unknown:
            raise ValueError(f"gt sampling counts for classes not in class_names: {sorted(unknown)}")
        usable = ~np.isin(database.difficulty, np.asarray(config.excluded_difficulties, dtype=np.int64))
        self.pools: dict[str, np.ndarray] = {}
        for name in config.sample_counts:
            ok = usable & (database.names == name) & (database.num_points >= config.min_points.get(name, 0))
            self.pools[name] = np.flatnonzero(ok)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        chosen = []
        for name, target in self.config.sample_counts.items():
            need = target - int((sample.gt_names == name).sum())
            pool = self.pools[name]
            if need > 0 and len(pool):
                chosen.append(rng.choice(pool, size=min(need, len(pool)), replace=False))
        if not chosen:
            return sample
        chosen = np.concatenate(chosen)
        db = self.database
        keep = collision_free_candidates(db.boxes[chosen], sample.gt_boxes)
        chosen = chosen[keep]
        if len(chosen) == 0:
            return sample
        new_boxes = db.boxes[chosen]
        # The scene's points inside a pasted object's volume would otherwise sit inside it.
        inside = points_in_boxes(torch.from_numpy(sample.points), torch.from_numpy(new_boxes)).numpy().any(1)
        new_points, _ = db.object_points(chosen)
        points = np.concatenate([sample.points[~inside], new_points.astype(np.float32)])
        labels = class_indices(db.names[chosen], self.class_names)
        return Sample(frame_id=sample.frame_id, points=points,
                      gt_boxes=np.concatenate([sample.gt_boxes, new_boxes]).astype(np.float32),
                      gt_labels=np.concatenate([sample.gt_labels, labels]),
                      gt_names=np.concatenate([sample.gt_names.astype(str), db.names[chosen].astype(str)]),
                      gt_difficulty=np.concatenate([sample.gt_difficulty, db.difficulty[chosen]]),
                      calib=sample.calib, annotations=sample.annotations)


def label_source_tag(data) -> str:
    """What a GT database's objects depend on beyond the split, range and classes: the label folder and the camera
    crop (DataConfig.train_labels / fov_crop). "" for the KITTI defaults, so existing databases keep their names."""
    parts = [data.train_labels] if data.train_labels != "label_2" else []
    if not data.fov_crop:
        parts.append("no_fov_crop")
    return "".join(f"_{part}" for part in parts)


def main(argv: list[str] | None = None) -> int:
    """python -m training.data.gt_database --root data/kitti [--split train] [--output PATH]"""
    import argparse
    import sys

    from clean_ros.cloud.kitti import KittiFormatError
    from training.data.data_config import DataConfig
    from training.data.kitti_dataset import KittiDataset

    parser = argparse.ArgumentParser(description="Build the GT database of a KITTI split (saved as .npz).")
    parser.add_argument("--root", required=True, help="KITTI root (training/, testing/, ImageSets/)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--output", default=None, help="default: <root>/gt_database_<split>.npz")
    parser.add_argument("--no-fov-crop", action="store_true", help="use the full scan, not only the camera view")
    args = parser.parse_args(argv)
    output = Path(args.output) if args.output else Path(args.root) / f"gt_database_{args.split}.npz"
    try:
        dataset = KittiDataset(DataConfig(root=args.root, fov_crop=not args.no_fov_crop), args.split)
        db = build_gt_database(dataset, output)
    except (KittiFormatError, GTDatabaseError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names, counts = np.unique(db.names, return_counts=True)
    summary = ", ".join(f"{n} {c}" for n, c in zip(names, counts))
    print(f"{output}: {len(db)} objects from {len(dataset)} frames ({summary})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
