"""KITTI object-format files of a simulated dataset, each written atomically (temp name + rename)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from clean_ros.atomic import atomic_write_bytes
from clean_ros.cloud.kitti import write_labels
from training.sim.calib import KITTI_CALIB_TEXT
from training.sim.generate import Frame


ALL_AROUND_LABELS = "label_all"  # every object around the sensor; label_2 holds the camera-visible ones


def split_dirs(root: Path, split: str, labelled: bool, all_around: bool = False) -> dict[str, Path]:
    dirs = {"velodyne": root / split / "velodyne", "calib": root / split / "calib"}
    if labelled:
        dirs["label_2"] = root / split / "label_2"
    if labelled and all_around:
        dirs[ALL_AROUND_LABELS] = root / split / ALL_AROUND_LABELS
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def write_frame(root: Path, split: str, index: int, frame: Frame) -> None:
    """velodyne/%06d.bin (float32 x, y, z, reflectance), calib/%06d.txt and, for training, label_2/%06d.txt
    (and label_all/%06d.txt when the frame has all-around labels)."""
    labelled = split == "training"
    dirs = split_dirs(root, split, labelled, frame.labels_all is not None)
    name = f"{index:06d}"
    atomic_write_bytes(dirs["velodyne"] / f"{name}.bin", np.ascontiguousarray(frame.points, dtype="<f4").tobytes())
    atomic_write_bytes(dirs["calib"] / f"{name}.txt", KITTI_CALIB_TEXT.encode())
    if labelled:
        write_labels(dirs["label_2"] / f"{name}.txt", frame.labels.objects)
        if frame.labels_all is not None:
            write_labels(dirs[ALL_AROUND_LABELS] / f"{name}.txt", frame.labels_all.objects)


def split_indices(n_frames: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/val split: a seeded permutation, the first val_fraction of it for validation."""
    order = np.random.default_rng([int(seed), 2]).permutation(n_frames)
    n_val = int(round(n_frames * val_fraction))
    if n_frames >= 2 and val_fraction > 0:
        n_val = min(max(n_val, 1), n_frames - 1)  # both splits non-empty when possible
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def write_image_sets(root: Path, n_frames: int, val_fraction: float, seed: int, n_test: int) -> None:
    sets_dir = root / "ImageSets"
    sets_dir.mkdir(parents=True, exist_ok=True)
    train, val = split_indices(n_frames, val_fraction, seed)
    lists = {"train": train, "val": val, "trainval": list(range(n_frames))}
    if n_test:
        lists["test"] = list(range(n_test))
    for name, ids in lists.items():
        atomic_write_bytes(sets_dir / f"{name}.txt", "".join(f"{i:06d}\n" for i in ids).encode())
