"""Augmentation and GT database: points and boxes move together, sampled boxes do not collide, seeds decide."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clean_ros.cloud.geometry import bev_iou, points_in_boxes
from training.data.augment import Augmentor, draw_object_noise, flip_x, move_objects, rotate_z, scale
from training.data.data_config import AugmentConfig, DataConfig, GTSamplingConfig
from training.data.gt_database import (GTDatabase, GTDatabaseError, GTSampler, build_gt_database,
                                       collision_free_candidates)
from training.data.kitti_dataset import KittiDataset

NO_AUG = dict(gt_sampling=False, random_flip_x=False, global_rotation=False, global_scaling=False,
              object_noise=False, shuffle_points=False)


def membership(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    return points_in_boxes(torch.from_numpy(points), torch.from_numpy(boxes)).numpy()


def box(x, y, yaw=0.0, l=4.0, w=2.0, z=-1.0, h=1.5):
    return [x, y, z, l, w, h, yaw]


@pytest.fixture(scope="module")
def dataset(kitti_sample) -> KittiDataset:
    return KittiDataset(DataConfig(root=str(kitti_sample)), "train")


@pytest.fixture(scope="module")
def database_path(dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("gtdb") / "gt_database_train.npz"
    build_gt_database(dataset, path)
    return path


@pytest.fixture(scope="module")
def frame(dataset):
    return dataset.load_frame("000004")  # two cars, 19k points


def test_global_transforms_on_hand_values():
    points = np.array([[1.0, 2.0, 0.5, 0.3]], np.float32)
    boxes = np.array([box(10.0, 0.0, yaw=0.5)], np.float32)
    p, b = flip_x(points, boxes)
    assert p[0].tolist() == pytest.approx([1.0, -2.0, 0.5, 0.3]) and b[0, 6] == pytest.approx(-0.5)
    p, b = rotate_z(points, boxes, math.pi / 2)
    assert p[0, :3].tolist() == pytest.approx([-2.0, 1.0, 0.5], abs=1e-6)
    assert b[0, :2].tolist() == pytest.approx([0.0, 10.0], abs=1e-5) and b[0, 6] == pytest.approx(0.5 + math.pi / 2)
    p, b = rotate_z(points, boxes, 3.0)
    assert -math.pi <= b[0, 6] < math.pi and b[0, 6] == pytest.approx(3.5 - 2 * math.pi, abs=1e-6)
    p, b = scale(points, boxes, 1.05)
    assert p[0].tolist() == pytest.approx([1.05, 2.1, 0.525, 0.3]) and b[0, 3:6].tolist() == pytest.approx([4.2, 2.1, 1.575])
    assert points[0, 1] == 2.0 and boxes[0, 0] == 10.0  # inputs untouched


def test_global_transforms_keep_points_in_their_boxes(frame):
    points, boxes = frame.points, frame.gt_boxes
    before = membership(points, boxes)
    assert before.sum(0).min() >= 20
    for transform in (lambda p, b: flip_x(p, b), lambda p, b: rotate_z(p, b, 0.7), lambda p, b: rotate_z(p, b, -0.78),
                      lambda p, b: scale(p, b, 0.95), lambda p, b: scale(p, b, 1.05)):
        p, b = transform(points, boxes)
        after = membership(p, b)
        assert (after != before).sum() <= 1  # float32 rounding may move a point that sits on a face


def test_object_noise_moves_boxes_with_their_points_without_collisions(frame, rng):
    points, boxes = frame.points, frame.gt_boxes
    before = membership(points, boxes)
    translation, rotation = draw_object_noise(boxes, rng, (0.25, 0.25, 0.25), (-math.pi / 20, math.pi / 20), 10)
    assert np.abs(translation).sum() > 0
    p, b = move_objects(points, boxes, translation, rotation)
    np.testing.assert_allclose(b[:, :3], boxes[:, :3] + translation, atol=1e-5)
    after = membership(p, b)
    assert (after[before.any(1)] == before[before.any(1)]).all()  # each object's points stay in it
    outside = ~before.any(1)
    np.testing.assert_array_equal(p[outside], points[outside])  # background untouched
    iou = bev_iou(torch.from_numpy(b).double(), torch.from_numpy(b).double()).numpy()
    np.fill_diagonal(iou, 0)
    assert (iou == 0).all()


def _assert_no_overlap(boxes, translation, rotation):
    moved = boxes.astype(np.float64).copy()
    moved[:, :3] += translation
    moved[:, 6] += rotation
    iou = bev_iou(torch.from_numpy(moved), torch.from_numpy(moved)).numpy()
    np.fill_diagonal(iou, 0)
    assert (iou == 0).all()


def test_object_noise_keeps_crowded_boxes_apart(rng):
    # 5 cm gaps: a move towards a neighbour hits its original place and is refused
    boxes = np.array([box(0, 0), box(4.05, 0), box(0, 2.05)], np.float32)
    for _ in range(10):
        _assert_no_overlap(boxes, *draw_object_noise(boxes, rng, (0.25, 0.25, 0.0), (-0.3, 0.3), 4))
    # a 0.8 m gap that two boxes moving towards each other can both enter without touching the other's original
    # place: such pairs must both stay put
    pair = np.array([box(0, 0), box(4.8, 0)], np.float32)
    towards = 0
    for _ in range(200):
        t, r = draw_object_noise(pair, rng, (0.6, 0.0, 0.0), (0.0, 0.0), 1)
        _assert_no_overlap(pair, t, r)
        towards += bool(t[0, 0] > 0.3 and t[1, 0] < -0.3)
    assert towards > 0  # the case was exercised


def test_collision_free_candidates_hand_case():
    existing = np.array([box(0, 0)], np.float32)
    candidates = np.array([box(1, 0.5), box(10, 0), box(11, 0), box(20, 0), box(10.5, 0.5)], np.float32)
    # 0 hits the existing box; 2 and 4 hit the earlier valid candidate 1; 3 is clear
    assert collision_free_candidates(candidates, existing).tolist() == [False, True, False, True, False]
    assert collision_free_candidates(candidates[:0], existing).tolist() == []


def test_database_round_trip_and_contents(database_path, dataset):
    db = GTDatabase.load(database_path)
    assert len(db) == 10 and db.names.tolist().count("Car") == 5
    assert np.load(database_path, allow_pickle=False)["names"].dtype.kind == "U"  # no object arrays, no pickle
    car = int(np.flatnonzero(db.frame_ids == "000003")[0])
    assert db.num_points[car] == 674 and db.difficulty[car] == 0
    pts, owner = db.object_points(np.array([car]))
    assert (owner == 0).all() and len(pts) == 674
    assert membership(pts, db.boxes[[car]]).all()  # absolute points come back inside their box
    sample = dataset.load_frame("000003")
    np.testing.assert_array_equal(np.sort(pts[:, 0]), np.sort(sample.points[membership(sample.points, sample.gt_boxes)[:, 0], 0]))


def test_database_errors(tmp_path, database_path):
    with pytest.raises(GTDatabaseError, match="GT database not found; build it"):
        GTDatabase.load(tmp_path / "absent.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(GTDatabaseError, match="cannot read GT database"):
        GTDatabase.load(bad)
    db = GTDatabase.load(database_path)
    db.num_points = db.num_points + 1
    db.save(tmp_path / "inconsistent.npz")
    with pytest.raises(GTDatabaseError, match="inconsistent"):
        GTDatabase.load(tmp_path / "inconsistent.npz")


def test_gt_sampling_adds_non_colliding_objects_with_their_points(database_path, frame):
    config = GTSamplingConfig(database_path=str(database_path))
    db = GTDatabase.load(database_path)
    sampler = GTSampler(db, config, ("Car", "Pedestrian", "Cyclist"))
    # usable: Cars of difficulty >= 0 with >= 5 points (frames 2, 3, 4 first car), both Pedestrians; no Cyclist
    assert {k: len(v) for k, v in sampler.pools.items()} == {"Car": 3, "Pedestrian": 2, "Cyclist": 0}
    out = sampler(frame, np.random.default_rng(0))
    n_old = frame.num_boxes
    new = out.gt_boxes[n_old:]
    assert len(new) >= 2 and out.gt_names[n_old:].tolist().count("Pedestrian") == 2
    assert out.gt_labels.tolist() == [{"Car": 0, "Pedestrian": 1}[n] for n in out.gt_names]
    iou = bev_iou(torch.from_numpy(out.gt_boxes).double(), torch.from_numpy(out.gt_boxes).double()).numpy()
    np.fill_diagonal(iou, 0)
    assert (iou == 0).all()
    # each pasted box holds exactly its database points: the scene's points in that volume were removed first
    pasted = [int(np.flatnonzero((np.abs(db.boxes - b) < 1e-6).all(1))[0]) for b in new]
    inside = membership(out.points, new).sum(0)
    assert inside.tolist() == db.num_points[pasted].tolist()
    assert (inside >= 5).all()
    # scene points outside the pasted boxes are all still there
    kept = ~membership(frame.points, new).any(1)
    assert len(out.points) == kept.sum() + db.num_points[pasted].sum()


def test_gt_sampling_fills_up_to_the_target_count(database_path, frame):
    config = GTSamplingConfig(database_path=str(database_path), sample_counts={"Car": 2, "Pedestrian": 1})
    out = GTSampler(GTDatabase.load(database_path), config, ("Car", "Pedestrian", "Cyclist"))(
        frame, np.random.default_rng(1))
    assert out.gt_names.tolist().count("Car") == 2  # the frame already has two: nothing added
    assert out.gt_names.tolist().count("Pedestrian") == 1


def test_augmentor_is_deterministic_under_a_seed(database_path, kitti_sample):
    config = AugmentConfig(gt_sampling_config=GTSamplingConfig(database_path=str(database_path)), object_noise=True)
    data_config = DataConfig(root=str(kitti_sample))
    augmentor = Augmentor(config, data_config.class_names)
    a = KittiDataset(data_config, "train", training=True, augmentor=augmentor, seed=5)
    b = KittiDataset(data_config, "train", training=True, augmentor=augmentor, seed=5)
    first, again = a[2], b[2]
    np.testing.assert_array_equal(first.points, again.points)
    np.testing.assert_array_equal(first.gt_boxes, again.gt_boxes)
    assert first.num_boxes > 2  # GT sampling added objects
    b.set_epoch(1)
    assert not np.array_equal(b[2].gt_boxes, first.gt_boxes)
    # with every switch off the training sample equals the evaluation sample
    plain = KittiDataset(data_config, "train", training=True, augmentor=Augmentor(AugmentConfig(**NO_AUG), ()), seed=5)
    ref = KittiDataset(data_config, "train")
    np.testing.assert_array_equal(plain[2].points, ref[2].points)


def test_augmented_sample_keeps_membership(database_path, kitti_sample):
    """End to end: after every augmentation, each box still contains points and targets stay in range."""
    config = AugmentConfig(gt_sampling_config=GTSamplingConfig(database_path=str(database_path)), object_noise=True)
    data_config = DataConfig(root=str(kitti_sample))
    ds = KittiDataset(data_config, "train", training=True, augmentor=Augmentor(config, data_config.class_names), seed=0)
    sample = ds[3]
    counts = membership(sample.points, sample.gt_boxes).sum(0)
    assert (counts >= 5).all(), counts
    r = data_config.point_cloud_range
    assert ((sample.gt_boxes[:, 0] >= r[0]) & (sample.gt_boxes[:, 0] <= r[3])).all()


def test_database_command_line(kitti_sample, tmp_path, capsys):
    from training.data.gt_database import main

    out = tmp_path / "db.npz"
    assert main(["--root", str(kitti_sample), "--output", str(out)]) == 0
    assert len(GTDatabase.load(out)) == 10 and "Car 5" in capsys.readouterr().out
    assert main(["--root", str(tmp_path / "absent"), "--output", str(out)]) == 2
    assert "KITTI root directory not found" in capsys.readouterr().err
