"""Collate Sample lists into Batch values, and the DataLoader around a dataset (workers, seeding, DDP sampler)."""
from __future__ import annotations

import random
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from clean_ros.inference.voxelize import Voxelizer
from training.data.sample import Batch, Sample


class Collator:
    """Picklable collate: voxelise each frame with its batch index, pad boxes (zeros) and labels (-1).

    Build it from the model config (anything with point_cloud_range, voxel_size, max_points_per_voxel,
    max_voxels_train, max_voxels_test) with Collator.from_config(cfg, training).
    """

    def __init__(self, point_cloud_range: Sequence[float], voxel_size: Sequence[float], max_points_per_voxel: int,
                 max_voxels: int, extra: Mapping[str, Voxelizer] | None = None):
        """extra: other voxelisations of the same raw points (Batch.extra_voxels), e.g. a teacher's own."""
        self.voxelizer = Voxelizer(point_cloud_range, voxel_size, max_points_per_voxel, max_voxels)
        self.extra = dict(extra or {})

    @classmethod
    def from_config(cls, config, training: bool, point_cloud_range: Sequence[float] | None = None,
                    extra: Mapping[str, Voxelizer] | None = None) -> "Collator":
        pc_range = point_cloud_range if point_cloud_range is not None else config.point_cloud_range
        max_voxels = config.max_voxels_train if training else config.max_voxels_test
        return cls(pc_range, config.voxel_size, config.max_points_per_voxel, max_voxels, extra)

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        if len(samples) == 0:
            raise ValueError("cannot collate an empty list of samples")
        clouds = [torch.from_numpy(np.ascontiguousarray(s.points)) for s in samples]
        voxels, stats = self.voxelizer.batch(clouds)
        extra_voxels = {name: voxelizer.batch(clouds)[0] for name, voxelizer in self.extra.items()}
        batch_size = len(samples)
        max_boxes = max(1, max(s.num_boxes for s in samples))  # width >= 1 keeps shapes valid for empty frames
        gt_boxes = torch.zeros((batch_size, max_boxes, 7), dtype=torch.float32)
        gt_labels = torch.full((batch_size, max_boxes), -1, dtype=torch.int64)
        for b, s in enumerate(samples):  # per frame, not per box
            gt_boxes[b, : s.num_boxes] = torch.from_numpy(np.asarray(s.gt_boxes, dtype=np.float32))
            gt_labels[b, : s.num_boxes] = torch.from_numpy(np.asarray(s.gt_labels, dtype=np.int64))
        return Batch(voxels=voxels, gt_boxes=gt_boxes, gt_labels=gt_labels, frame_ids=[s.frame_id for s in samples],
                     batch_size=batch_size, voxel_stats=stats, calibs=[s.calib for s in samples],
                     annotations=[s.annotations for s in samples], extra_voxels=extra_voxels)

    def __repr__(self) -> str:
        extra = "".join(f", {name}={v!r}" for name, v in self.extra.items())
        return f"Collator({self.voxelizer!r}{extra})"


class SeededShuffleSampler(Sampler[int]):
    """A permutation per epoch that depends only on (seed, epoch)."""

    def __init__(self, dataset_size: int, seed: int = 0):
        self.dataset_size = dataset_size
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.dataset_size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.dataset_size


class _WorkerSeeder:
    """worker_init_fn: seed the global generators of worker w from (seed, epoch, w) for any library that uses them.

    The dataset's own augmentation does not depend on this (it seeds per frame), so results do not depend on the
    number of workers.
    """

    def __init__(self, seed: int, dataset: Dataset):
        self.seed = int(seed)
        self.dataset = dataset

    def __call__(self, worker_id: int) -> None:
        epoch = getattr(torch.utils.data.get_worker_info().dataset, "epoch", 0)
        worker_seed = int(np.random.SeedSequence((self.seed, epoch, worker_id)).generate_state(1)[0])
        random.seed(worker_seed)
        np.random.seed(worker_seed)
        torch.manual_seed(worker_seed)


def make_dataloader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int = 0,
                    distributed: bool = False, collate: Collator | None = None, drop_last: bool = False,
                    pin_memory: bool = False) -> DataLoader:
    """DataLoader over `dataset` with `collate` (required; build it with Collator.from_config).

    Call set_epoch(loader, epoch) before each epoch: it reshuffles deterministically and re-seeds augmentation.
    Workers are not persistent so that the dataset's epoch reaches them.
    """
    if collate is None:
        raise ValueError("make_dataloader needs collate=Collator.from_config(model_config, training)")
    if distributed:
        sampler: Sampler[int] | None = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle:
        sampler = SeededShuffleSampler(len(dataset), seed)
    else:
        sampler = None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                      collate_fn=collate, drop_last=drop_last, pin_memory=pin_memory,
                      worker_init_fn=_WorkerSeeder(seed, dataset) if num_workers > 0 else None,
                      persistent_workers=False)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Propagate the epoch to the sampler (shuffle order) and the dataset (augmentation seeds)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
