"""Sensor-variation transforms: beam reduction halves the rows, dropout/intensity do what they say, a mounting
change moves points and boxes together and is undone by the Pipeline's SensorMount."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clean_ros.cloud.geometry import points_in_boxes
from clean_ros.cloud.transforms import transform_boxes, transform_points
from clean_ros.inference.sensor_mount import SensorMount
from training.data.sensor_variation import (change_mounting, drop_points, elevation_deg, elevation_rows, keep_rows,
                                            scale_intensity, scan_order_rows, sensor_rows)

HDL64_ELEVATIONS = np.concatenate([np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.9, 32)])


def scan(elevations=HDL64_ELEVATIONS, n_azimuth=90, seed=0):
    """A shuffled synthetic scan: one row per elevation, random ranges, intensity 0.5."""
    rng = np.random.default_rng(seed)
    el = np.deg2rad(np.repeat(elevations, n_azimuth))
    az = rng.uniform(-np.pi, np.pi, len(el))
    r = rng.uniform(4.0, 60.0, len(el))
    points = np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el),
                       np.full(len(el), 0.5)], 1).astype(np.float32)
    return points[rng.permutation(len(points))]


def test_beam_reduction_keeps_every_other_row():
    points = scan()
    rows = elevation_rows(points)
    assert rows.count == 64
    for phase in (0, 1):
        kept = keep_rows(points, rows.row, keep_every=2, phase=phase)
        assert len(kept) == len(points) // 2
        kept_rows = elevation_rows(kept)
        assert kept_rows.count == 32
        np.testing.assert_allclose(kept_rows.elevation_deg, np.sort(HDL64_ELEVATIONS)[phase::2], atol=0.02)
    with pytest.raises(ValueError, match="phase"):
        keep_rows(points, rows.row, keep_every=2, phase=2)


def test_sensor_rows_fall_back_to_elevation_for_a_shuffled_cloud():
    points = scan()
    np.testing.assert_array_equal(sensor_rows(points).row, elevation_rows(points).row)


def test_drop_points_keeps_the_fraction_and_is_seeded():
    points = scan()
    kept = drop_points(points, 0.3, np.random.default_rng(5))
    assert abs(len(kept) / len(points) - 0.3) < 0.02
    np.testing.assert_array_equal(kept, drop_points(points, 0.3, np.random.default_rng(5)))
    assert len(drop_points(points, 1.0, np.random.default_rng(0))) == len(points)
    assert len(drop_points(points, 0.0, np.random.default_rng(0))) == 0
    with pytest.raises(ValueError, match="keep_fraction"):
        drop_points(points, 1.5, np.random.default_rng(0))


def test_scale_intensity_scale_gamma_and_clip():
    points = np.array([[1, 0, 0, 0.25], [1, 0, 0, 0.81], [1, 0, 0, 1.0]], np.float32)
    out = scale_intensity(points, scale=1.5, gamma=0.5)
    np.testing.assert_allclose(out[:, 3], [0.75, 1.0, 1.0], atol=1e-6)  # 1.5 * sqrt(0.81) = 1.35 -> clipped
    np.testing.assert_array_equal(out[:, :3], points[:, :3])
    assert points[0, 3] == pytest.approx(0.25)  # input untouched
    with pytest.raises(ValueError, match="gamma"):
        scale_intensity(points, gamma=0.0)


def test_height_shift_lowers_points_and_boxes_together():
    points = np.array([[10.0, 2.0, -1.73, 0.3], [5.0, -1.0, -0.5, 0.7]], np.float32)
    boxes = np.array([[10.0, 2.0, -1.0, 4.0, 2.0, 1.5, 0.4]])
    p, b = change_mounting(points, boxes, height_shift=0.3)
    np.testing.assert_allclose(p[:, 2], points[:, 2] - 0.3, atol=1e-6)
    np.testing.assert_allclose(p[:, [0, 1, 3]], points[:, [0, 1, 3]])
    np.testing.assert_allclose(b[:, 2], -1.3)
    np.testing.assert_allclose(b[:, [0, 1, 3, 4, 5, 6]], boxes[:, [0, 1, 3, 4, 5, 6]])


def test_pitch_nose_down_raises_the_road_ahead_and_boxes_follow_their_points():
    rng = np.random.default_rng(0)
    boxes = np.array([[20.0, 3.0, -0.9, 4.0, 1.8, 1.6, 0.7], [12.0, -6.0, -0.8, 0.8, 0.8, 1.8, -1.2]])
    # points well inside each box (inner half), so a tilt of ~1 degree cannot move them out
    local = rng.uniform(-0.25, 0.25, (200, 3)) * boxes[[0] * 100 + [1] * 100, 3:6]
    owner = np.repeat([0, 1], 100)
    c, s = np.cos(boxes[owner, 6]), np.sin(boxes[owner, 6])
    xyz = boxes[owner, :3] + np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1],
                                       local[:, 2]], 1)
    road = np.array([[30.0, 0.0, -1.73, 0.2]])
    points = np.concatenate([np.c_[xyz, np.full(200, 0.5)], road]).astype(np.float32)
    pitch, roll = math.radians(1.5), math.radians(-1.0)
    p, b = change_mounting(points, boxes, height_shift=0.2, pitch=pitch, roll=roll)
    assert p[-1, 2] > -1.73 + 30 * math.sin(pitch) - 0.2 - 0.05  # nose down: the road 30 m ahead rises ~0.79 m
    inside = points_in_boxes(torch.from_numpy(p[:200, :3].astype(np.float64)), torch.from_numpy(b)).numpy()
    np.testing.assert_array_equal(inside.argmax(1), owner)
    assert inside.any(1).all()
    # the Pipeline's documented setting undoes it exactly (points) / up to the dropped box tilt (boxes)
    back = SensorMount(1.73 + 0.2, pitch, roll).model_from_sensor(1.73)
    np.testing.assert_allclose(transform_points(p, back), points, atol=1e-4)
    restored = transform_boxes(b, back)
    np.testing.assert_allclose(restored[:, :6], boxes[:, :6], atol=1e-6)
    np.testing.assert_allclose(restored[:, 6], boxes[:, 6], atol=1e-3)  # yaw: off by ~pitch * roll / 2 (heading)


def test_elevation_measured_from_a_raised_origin():
    points = np.array([[10.0, 0.0, 0.2, 0.0]], np.float32)
    assert elevation_deg(points, origin_height=0.2)[0] == pytest.approx(0.0, abs=1e-5)
    assert elevation_deg(points)[0] == pytest.approx(math.degrees(math.atan2(0.2, 10.0)), abs=1e-4)


# --------------------------------------------------------------------------- through the Augmentor and its config
from clean_ros.yaml_config import ConfigError, from_dict  # noqa: E402
from training.data.augment import Augmentor  # noqa: E402
from training.data.data_config import AugmentConfig, SensorVariationConfig  # noqa: E402
from training.data.sample import Sample  # noqa: E402

NO_AUG = dict(gt_sampling=False, random_flip_x=False, global_rotation=False, global_scaling=False,
              object_noise=False, shuffle_points=False)


def sample_of(points, boxes):
    m = len(boxes)
    return Sample("000000", points, boxes.astype(np.float32), np.zeros(m, np.int64), np.array(["Car"] * m),
                  np.zeros(m, np.int64))


def augment(sample, seed=0, **sensor):
    cfg = AugmentConfig(**NO_AUG, sensor=SensorVariationConfig(**sensor))
    return Augmentor(cfg, ("Car",))(sample, np.random.default_rng(seed))


BOX = np.array([[15.0, 2.0, -0.9, 4.0, 1.8, 1.6, 0.3]])


def test_defaults_are_off_and_leave_the_sample_unchanged():
    assert not AugmentConfig().sensor.any_enabled
    points = scan()
    out = augment(sample_of(points, BOX))
    np.testing.assert_array_equal(out.points, points)
    np.testing.assert_array_equal(out.gt_boxes, BOX.astype(np.float32))


def test_augmentor_beam_reduction_halves_the_rows():
    out = augment(sample_of(scan(), BOX), beam_reduction=True, beam_reduction_probability=1.0)
    assert elevation_rows(out.points).count == 32 and len(out.points) == len(scan()) // 2
    np.testing.assert_array_equal(out.gt_boxes, BOX.astype(np.float32))
    never = augment(sample_of(scan(), BOX), beam_reduction=True, beam_reduction_probability=0.0)
    assert len(never.points) == len(scan())


def test_augmentor_beam_reduction_draws_among_choices():
    """beam_keep_every [2, 4]: each reduced frame keeps 32 or 16 of the 64 rows, both over a few seeds; 4 alone keeps
    16; the YAML form loads; bad values are refused."""
    counts = {elevation_rows(augment(sample_of(scan(), BOX), seed=seed, beam_reduction=True,
                                     beam_reduction_probability=1.0, beam_keep_every=[2, 4]).points).count
              for seed in range(8)}
    assert counts == {32, 16}
    sixteen = augment(sample_of(scan(), BOX), beam_reduction=True, beam_reduction_probability=1.0, beam_keep_every=4)
    assert elevation_rows(sixteen.points).count == 16 and len(sixteen.points) == len(scan()) // 4
    for bad in (0, [], [2, 0]):
        with pytest.raises(ValueError, match="beam_keep_every"):
            SensorVariationConfig(beam_keep_every=bad)
    from clean_ros.yaml_config import from_dict
    assert from_dict(AugmentConfig, {"sensor": {"beam_keep_every": [2, 4]}}).sensor.beam_keep_every == [2, 4]
    assert from_dict(AugmentConfig, {"sensor": {"beam_keep_every": 4}}).sensor.beam_keep_every == 4


def test_augmentor_density_and_intensity():
    points = scan()
    out = augment(sample_of(points, BOX), density_dropout=True, density_keep_range=(0.5, 0.5))
    assert abs(len(out.points) / len(points) - 0.5) < 0.02
    out = augment(sample_of(points, BOX), intensity=True, intensity_scale_range=(0.4, 0.4),
                  intensity_gamma_range=(2.0, 2.0))
    np.testing.assert_allclose(out.points[:, 3], 0.4 * 0.5 ** 2, atol=1e-6)


def test_augmentor_mounting_moves_points_and_boxes_together():
    points = np.array([[15.0, 2.0, -0.9, 0.5], [15.5, 2.3, -0.5, 0.5], [30.0, 0.0, -1.73, 0.2]], np.float32)
    out = augment(sample_of(points, BOX), mounting_height=True, height_shift_range=(0.25, 0.25))
    np.testing.assert_allclose(out.points[:, 2], points[:, 2] - 0.25, atol=1e-6)
    np.testing.assert_allclose(out.gt_boxes[:, 2], BOX[:, 2] - 0.25, atol=1e-6)
    tilted = augment(sample_of(points, BOX), seed=3, mounting_tilt=True, pitch_range=(0.03, 0.03),
                     roll_range=(-0.02, -0.02))
    expected_points, expected_boxes = change_mounting(points, BOX, 0.0, 0.03, -0.02)
    np.testing.assert_allclose(tilted.points, expected_points, atol=1e-6)
    np.testing.assert_allclose(tilted.gt_boxes, expected_boxes, atol=1e-5)
    inside = points_in_boxes(torch.from_numpy(tilted.points[:2, :3].astype(np.float64)),
                             torch.from_numpy(tilted.gt_boxes.astype(np.float64)))
    assert inside.all()


def test_sensor_config_from_yaml_mapping_and_bad_values():
    cfg = from_dict(AugmentConfig, {"sensor": {"beam_reduction": True, "pitch_range": [-0.01, 0.02]}})
    assert cfg.sensor.beam_reduction and cfg.sensor.pitch_range == (-0.01, 0.02) and cfg.sensor.any_enabled
    assert AugmentConfig(sensor={"intensity": True}).sensor.intensity
    with pytest.raises(ValueError, match="density_keep_range must be"):
        SensorVariationConfig(density_keep_range=(0.8, 0.5))
    with pytest.raises(ValueError, match="pitch_range must be"):
        SensorVariationConfig(pitch_range=(-1.0, 0.0))
    with pytest.raises(ConfigError, match="beam_keep"):
        from_dict(AugmentConfig, {"sensor": {"beam_keep": 2}})


def test_rows_survive_gt_sampling_on_real_frames(kitti_sample, tmp_path):
    """Scene points keep their storage-order rows through the real GTSampler; pasted points get a row too."""
    from training.data.augment import rows_after_gt_sampling
    from training.data.data_config import DataConfig, GTSamplingConfig
    from training.data.gt_database import GTDatabase, GTSampler, build_gt_database
    from training.data.kitti_dataset import KittiDataset

    dataset = KittiDataset(DataConfig(root=str(kitti_sample), fov_crop=False), "train")
    build_gt_database(dataset, tmp_path / "db.npz")
    sampler = GTSampler(GTDatabase.load(tmp_path / "db.npz"),
                        GTSamplingConfig(sample_counts={"Car": 4}, min_points={"Car": 5}), ("Car",))
    scene = dataset.load_frame("000002")  # one Car and one Misc: room for pasted cars
    sampled = sampler(scene, np.random.default_rng(0))
    assert len(sampled.gt_boxes) > len(scene.gt_boxes)
    rows = rows_after_gt_sampling(scene, sampled)
    scene_rows = sensor_rows(scene.points)
    assert scene_rows.count == 65  # storage order: 65 runs in every shared KITTI frame
    assert len(rows) == len(sampled.points) and rows.min() >= 0 and rows.max() < scene_rows.count
    survived = ~points_in_boxes(torch.from_numpy(scene.points),
                                torch.from_numpy(sampled.gt_boxes[len(scene.gt_boxes):])).numpy().any(1)
    np.testing.assert_array_equal(rows[:survived.sum()], scene_rows.row[survived])
    # elevation peaks would disagree with the storage order on most real points (laser offsets)
    assert (elevation_rows(scene.points).row != scene_rows.row).mean() > 0.5


def test_scan_order_rows_of_a_camera_cropped_real_scan(kitti_sample):
    from clean_ros.cloud.kitti import DEFAULT_IMAGE_SHAPE, Calibration
    from training.data.kitti_dataset import camera_fov_mask, read_velodyne

    points = read_velodyne(kitti_sample / "training" / "velodyne" / "000000.bin")
    calib = Calibration.from_file(kitti_sample / "training" / "calib" / "000000.txt")
    full = scan_order_rows(points)
    cropped_mask = camera_fov_mask(points, calib, DEFAULT_IMAGE_SHAPE)
    cropped = scan_order_rows(points[cropped_mask])
    assert full.count == 65 and 40 <= cropped.count <= 50  # 65 runs (two partial); the lasers the camera sees
    pairs = np.unique(np.stack([cropped.row, full.row[cropped_mask]], 1), axis=0)
    assert (np.bincount(pairs[:, 0]) > 1).sum() <= 1  # each cropped run is one laser's run (but at most one)
    # the cropped scan ranks its lasers as the full revolution does (one rank step per laser)
    np.testing.assert_array_equal(np.diff(pairs[:, 1]), 1)


def test_laser_angles_remove_the_range_dependent_offset():
    from training.data.sensor_variation import laser_angles
    rng_h = np.array([5.0, 10.0, 40.0, 8.0, 30.0, 60.0])
    run = np.array([0, 0, 0, 1, 1, 1])
    el = np.where(run == 0, -2.0, -8.0) + 11.7 / rng_h  # a laser 0.2 m above the origin: +11.7 deg*m / range
    np.testing.assert_allclose(laser_angles(el, rng_h, run, 2), [-2.0, -8.0], atol=1e-9)
    same_range = laser_angles(np.array([1.0, 1.2]), np.array([10.0, 10.0]), np.array([0, 0]), 1)
    np.testing.assert_allclose(same_range, [1.1 - 0.0])  # no range spread: the mean elevation (b = 0)


def test_dataset_with_every_sensor_variation_on(kitti_sample):
    """Through KittiDataset (camera crop, augmentation, range crop): a 64-laser frame becomes a 32-laser one, the
    boxes are lowered with the points, and the frame is reproducible from its seed."""
    from training.data.data_config import DataConfig
    from training.data.kitti_dataset import KittiDataset

    sensor = SensorVariationConfig(beam_reduction=True, beam_reduction_probability=1.0, density_dropout=True,
                                   density_keep_range=(0.9, 0.9), intensity=True, mounting_height=True,
                                   height_shift_range=(0.4, 0.4))
    augmentor = Augmentor(AugmentConfig(**NO_AUG, sensor=sensor), ("Car", "Pedestrian", "Cyclist"))
    config = DataConfig(root=str(kitti_sample))
    plain = KittiDataset(config, "train")
    varied = KittiDataset(config, "train", training=True, augmentor=augmentor, seed=1)
    i = plain.frame_ids.index("000003")
    before, after = plain[i], varied[i]
    lasers_before = scan_order_rows(plain.load_frame("000003").points).count
    assert 40 <= lasers_before <= 50
    assert 0.40 < len(after.points) / len(before.points) < 0.50  # half the lasers, 90 % of their points
    assert scan_order_rows(after.points).count in (lasers_before // 2, (lasers_before + 1) // 2)
    np.testing.assert_allclose(after.gt_boxes[:, 2], before.gt_boxes[:, 2] - 0.4, atol=1e-5)
    np.testing.assert_array_equal(after.points, varied[i].points)
