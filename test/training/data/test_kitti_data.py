"""KITTI dataset on the six real frames: boxes, difficulty, crops, layout errors, collate and loader."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clean_ros.cloud.geometry import points_in_boxes
from clean_ros.cloud.kitti import (Calibration, KittiFormatError, boxes_camera_to_lidar, boxes_lidar_to_camera,
                                   difficulty_levels, normalize_yaw_np, read_labels)
from training.data.data_config import DataConfig, VoxelConfig
from training.data.kitti_dataset import (KittiDataset, KittiLayoutError, camera_fov_mask, crop_to_range,
                                         read_png_shape, read_velodyne)
from training.data.loader import Collator, make_dataloader, set_epoch

FRAMES = [f"{i:06d}" for i in range(6)]
# Non-DontCare rows of each label file, in file order (read by hand from training/label_2).
EXPECTED_NAMES = {
    "000000": ["Pedestrian"],
    "000001": ["Truck", "Car", "Cyclist"],
    "000002": ["Misc", "Car"],
    "000003": ["Car"],
    "000004": ["Car", "Car"],
    "000005": ["Pedestrian"],
}
# KITTI difficulty of every label row, by hand from bbox height (bottom - top), occlusion and truncation.
# easy: h >= 40, occ 0, trunc <= .15; moderate: h >= 25, occ <= 1, trunc <= .30; hard: h >= 25, occ <= 2, trunc <= .5
EXPECTED_DIFFICULTY = {
    "000000": [0],  # Ped h=164.92
    "000001": [1, -1, -1, -1, -1, -1, -1],  # Truck h=32.85; Car h=21.58 < 25; Cyclist occlusion 3; DontCare h<25
    "000002": [0, 1],  # Misc h=160.60; Car h=33.26
    "000003": [0, 0, -1],  # Car h=102.99; DontCare h=137.72 (occ/trunc -1 pass every level); DontCare h=17.36
    "000004": [1, -1, 1, -1, 0, -1, -1],  # Car h=30.49; Car h=20.66; DontCare h=31.29, 9.86, 100.04, 8.17, 6.77
    "000005": [0, -1, -1, -1, -1],  # Ped h=59.90; DontCare all < 25 px
}
SCAN_POINTS = {"000000": 115384}  # size of training/velodyne/000000.bin / 16


@pytest.fixture(scope="module")
def dataset(kitti_sample) -> KittiDataset:
    return KittiDataset(DataConfig(root=str(kitti_sample)), "train")


@pytest.fixture(scope="module")
def raw_dataset(kitti_sample) -> KittiDataset:
    return KittiDataset(DataConfig(root=str(kitti_sample), fov_crop=False), "train")


def test_labels_round_trip_camera_lidar(kitti_sample):
    for frame in FRAMES:
        calib = Calibration.from_file(kitti_sample / f"training/calib/{frame}.txt")
        objs = read_labels(kitti_sample / f"training/label_2/{frame}.txt")
        objs = objs.select(objs.names != "DontCare")
        boxes = boxes_camera_to_lidar(objs.location, objs.dimensions, objs.rotation_y, calib)
        location, dims, ry = boxes_lidar_to_camera(boxes, calib)
        np.testing.assert_allclose(location, objs.location, atol=1e-5)
        np.testing.assert_allclose(dims, objs.dimensions, atol=1e-5)
        np.testing.assert_allclose(normalize_yaw_np(ry - objs.rotation_y), 0.0, atol=1e-5)


def test_difficulty_matches_hand_values(kitti_sample):
    for frame, expected in EXPECTED_DIFFICULTY.items():
        objs = read_labels(kitti_sample / f"training/label_2/{frame}.txt")
        assert difficulty_levels(objs).tolist() == expected, frame


def test_dataset_loads_all_six_frames(dataset, raw_dataset):
    assert dataset.frame_ids == FRAMES
    for i, frame in enumerate(FRAMES):
        sample = dataset[i]
        raw = raw_dataset.load_frame(frame)
        assert sample.frame_id == frame
        assert 113_000 <= len(raw.points) <= 127_000  # full 360 degree scan
        assert 15_000 <= len(sample.points) < len(raw.points) // 4  # the front camera sees about a sixth
        assert sample.points.dtype == np.float32 and sample.points.shape[1] == 4
        assert sample.gt_boxes.dtype == np.float32
        # every object of these frames lies inside the range, so no target is cropped
        assert sample.gt_names.tolist() == EXPECTED_NAMES[frame]
        class_index = {"Car": 0, "Pedestrian": 1, "Cyclist": 2}
        assert sample.gt_labels.tolist() == [class_index.get(n, -1) for n in EXPECTED_NAMES[frame]]
        expected_difficulty = [d for d, n in zip(EXPECTED_DIFFICULTY[frame], sample.annotations.names)
                               if n != "DontCare"]
        assert sample.gt_difficulty.tolist() == expected_difficulty
        assert len(sample.annotations) == len(EXPECTED_DIFFICULTY[frame])  # DontCare rows kept for evaluation
    assert len(raw_dataset.load_frame("000000").points) == SCAN_POINTS["000000"]
    names = np.concatenate([dataset[i].gt_names for i in range(6)]).tolist()
    assert {n: names.count(n) for n in set(names)} == {"Car": 5, "Pedestrian": 2, "Cyclist": 1, "Truck": 1, "Misc": 1}


def test_car_box_contains_its_points(raw_dataset):
    sample = raw_dataset.load_frame("000003")  # one Car about 13.5 m ahead
    box = torch.from_numpy(sample.gt_boxes)
    points = torch.from_numpy(sample.points)
    assert sample.gt_boxes[0, 0] == pytest.approx(13.51, abs=0.01) and sample.gt_boxes[0, 1] == pytest.approx(-0.98, abs=0.01)
    inside = int(points_in_boxes(points, box).sum())
    assert inside >= 500  # 674 on this scan
    for shift in ((5.0, 0.0), (0.0, 5.0), (0.0, -5.0)):
        moved = box.clone()
        moved[:, :2] += torch.tensor(shift)
        assert int(points_in_boxes(points, moved).sum()) <= 10
    # the box sits on the ground: a slice just below its bottom holds ground points, its top slice almost none
    below = box.clone()
    below[:, 2] -= box[:, 5] / 2 + 0.1
    below[:, 5] = 0.2
    assert int(points_in_boxes(points, below).sum()) > 50


def test_fov_crop_keeps_points_projecting_inside_the_image(dataset, raw_dataset):
    sample = dataset.load_frame("000002")
    uv, depth = sample.calib.lidar_to_image(sample.points)
    assert (depth > 0).all() and (uv >= 0).all() and (uv[:, 0] < 1242).all() and (uv[:, 1] < 375).all()
    raw = raw_dataset.load_frame("000002")
    mask = camera_fov_mask(raw.points, raw.calib, (375, 1242))
    assert mask.sum() == len(sample.points)
    assert (raw.points[~mask, 0] < 0).sum() > 40_000  # everything behind the car is dropped


def test_range_crop_drops_points_and_targets(raw_dataset):
    sample = raw_dataset.load_frame("000001")  # Truck x=69.7, Car x=58.8 y=16.6, Cyclist x=46.1
    pc_range = (0.0, -10.0, -3.0, 50.0, 10.0, 1.0)
    cropped = crop_to_range(sample, pc_range)
    assert cropped.gt_names.tolist() == ["Cyclist"]
    assert cropped.gt_labels.tolist() == [2]
    p = cropped.points
    assert len(p) > 1000 and (p[:, 0] >= 0).all() and (p[:, 0] < 50).all() and (np.abs(p[:, 1]) <= 10).all()
    assert (p[:, 2] >= -3).all() and (p[:, 2] < 1).all()


def test_testing_split_has_no_labels(kitti_sample):
    ds = KittiDataset(DataConfig(root=str(kitti_sample)), "test")
    assert len(ds) == 6
    sample = ds[0]
    assert sample.gt_boxes.shape == (0, 7) and len(sample.annotations) == 0 and len(sample.points) > 10_000


def _copy_layout(src: Path, dst: Path, frames=FRAMES) -> Path:
    for sub in ("velodyne", "calib", "label_2"):
        (dst / "training" / sub).mkdir(parents=True)
        for f in frames:
            ext = "bin" if sub == "velodyne" else "txt"
            os.symlink(src / "training" / sub / f"{f}.{ext}", dst / "training" / sub / f"{f}.{ext}")
    return dst


def test_image_sets_select_the_split(kitti_sample, tmp_path):
    root = _copy_layout(kitti_sample, tmp_path / "kitti")
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("000001\n000004\n\n")
    (root / "ImageSets" / "val.txt").write_text("000002\n000009\n")
    assert KittiDataset(DataConfig(root=str(root)), "train").frame_ids == ["000001", "000004"]
    with pytest.raises(KittiLayoutError, match=r"val\.txt: 1 listed frame\(s\) have no scan.*000009"):
        KittiDataset(DataConfig(root=str(root)), "val")
    # without a listing: every scan of the split folder; an empty or non-UTF-8 listing: one clear error
    assert KittiDataset(DataConfig(root=str(root)), "trainval").frame_ids == FRAMES
    (root / "ImageSets" / "train.txt").write_bytes(b"\xff\xfe000001\n")
    with pytest.raises(KittiLayoutError, match=r"train\.txt: cannot read the frame list.*split 'train'"):
        KittiDataset(DataConfig(root=str(root)), "train")
    (root / "ImageSets" / "train.txt").write_text("\n\n")
    with pytest.raises(KittiLayoutError, match=r"train\.txt: no frames \(split 'train'\)"):
        KittiDataset(DataConfig(root=str(root)), "train")


def test_layout_and_file_errors_are_clear(kitti_sample, tmp_path):
    with pytest.raises(KittiLayoutError, match="KITTI root directory not found"):
        KittiDataset(DataConfig(root=str(tmp_path / "nowhere")), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KittiLayoutError, match=r"training/velodyne: missing"):
        KittiDataset(DataConfig(root=str(tmp_path / "empty")), "train")

    root = _copy_layout(kitti_sample, tmp_path / "kitti", frames=["000000"])
    bad_bin = root / "training/velodyne/000000.bin"
    bad_bin.unlink()
    bad_bin.write_bytes(np.zeros(10, np.float32).tobytes() + b"\x00\x00")  # 42 bytes
    ds = KittiDataset(DataConfig(root=str(root)), "train")
    with pytest.raises(KittiFormatError, match=r"000000\.bin: 42 bytes is not a multiple of 16"):
        ds[0]

    shutil.copy(kitti_sample / "training/velodyne/000000.bin", bad_bin.with_name("tmp.bin"))
    os.replace(bad_bin.with_name("tmp.bin"), bad_bin)
    label = root / "training/label_2/000000.txt"
    label.unlink()
    label.write_text("Car 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01\nCar 0 0\n")
    with pytest.raises(KittiFormatError, match=r"label_2/000000\.txt:2: expected 15 or 16 columns, got 3"):
        ds[0]


def test_read_helpers(kitti_sample, tmp_path):
    assert read_velodyne(kitti_sample / "training/velodyne/000000.bin").shape == (115384, 4)
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + (1224).to_bytes(4, "big") + (370).to_bytes(4, "big"))
    assert read_png_shape(png) == (370, 1224)
    assert read_png_shape(tmp_path / "absent.png") is None


def test_collate_pads_targets_and_voxelises_each_frame(dataset):
    samples = [dataset[1], dataset[3]]  # 3 and 1 targets
    collate = pickle.loads(pickle.dumps(Collator.from_config(VoxelConfig(), training=False,
                                                             point_cloud_range=dataset.config.point_cloud_range)))
    batch = collate(samples)
    assert batch.batch_size == 2 and batch.frame_ids == ["000001", "000003"]
    assert batch.gt_boxes.shape == (2, 3, 7) and batch.gt_labels.tolist() == [[-1, 0, 2], [0, -1, -1]]
    assert torch.equal(batch.gt_boxes[1, 1:], torch.zeros(2, 7))
    assert torch.allclose(batch.gt_boxes[0], torch.from_numpy(samples[0].gt_boxes))
    assert batch.num_gt.tolist() == [3, 1]
    coords = batch.voxels.coords
    for b, s in enumerate(samples):
        in_frame = coords[:, 0] == b
        assert int(batch.voxels.num_points[in_frame].sum()) == len(s.points) - batch_overflow_points(s, collate)
    assert coords[:, 1].max() < 40 and coords[:, 2].max() < 1600 and coords[:, 3].max() < 1408
    moved = batch.to("cpu")
    assert moved.voxels.features.shape == batch.voxels.features.shape


def batch_overflow_points(sample, collate):
    _, stats = collate.voxelizer(torch.from_numpy(sample.points))
    return stats.num_overflow_points + stats.num_dropped_points


def test_loader_is_deterministic_and_independent_of_workers(dataset):
    collate = Collator.from_config(VoxelConfig.pointpillars(), training=True,
                                   point_cloud_range=(0, -39.68, -3, 69.12, 39.68, 1))

    def epoch_order(num_workers, epoch):
        loader = make_dataloader(dataset, batch_size=2, shuffle=True, num_workers=num_workers, seed=7, collate=collate)
        set_epoch(loader, epoch)
        return [(b.frame_ids, int(b.voxels.num_points.sum())) for b in loader]

    first = epoch_order(0, 0)
    assert sorted(f for ids, _ in first for f in ids) == FRAMES
    assert epoch_order(2, 0) == first
    assert epoch_order(0, 1) != first  # a new epoch reshuffles
    with pytest.raises(ValueError, match="needs collate"):
        make_dataloader(dataset, 2, True, 0)


def test_distributed_loader_uses_a_distributed_sampler(dataset, tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        collate = Collator.from_config(VoxelConfig.pointpillars(), training=True,
                                       point_cloud_range=(0, -39.68, -3, 69.12, 39.68, 1))
        loader = make_dataloader(dataset, batch_size=3, shuffle=True, num_workers=0, seed=3, distributed=True,
                                 collate=collate)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        set_epoch(loader, 2)
        assert loader.sampler.epoch == 2 and dataset.epoch == 2
        ids = [f for b in loader for f in b.frame_ids]
        assert sorted(ids) == FRAMES
    finally:
        dist.destroy_process_group()
        dataset.set_epoch(0)


def test_gt_database_name_follows_the_label_folder_and_crop():
    """label_all (every object around the car, no camera crop) must not reuse the label_2 database of the same
    split; the KITTI defaults keep the old name."""
    from training.data.gt_database import label_source_tag

    assert label_source_tag(DataConfig()) == ""
    assert label_source_tag(DataConfig(fov_crop=False)) == "_no_fov_crop"
    assert label_source_tag(DataConfig(fov_crop=False, train_labels="label_all")) == "_label_all_no_fov_crop"


def test_camera_crop_only_for_front_models():
    from training.data.data_config import camera_crop_for

    assert camera_crop_for((0.0, -25.6, -3.0, 51.2, 25.6, 1.0))
    assert not camera_crop_for((-40.96, -40.96, -3.0, 40.96, 40.96, 1.0))
