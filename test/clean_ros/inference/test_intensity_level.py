"""Automatic intensity scale (clean_ros.inference.intensity_level) and the Pipeline applying it: a sensor whose
intensity is on another scale is brought to the bundle's training level, so the model sees the scan it was trained
for."""
import json

import numpy as np
import pytest
from shared_helpers import bundle_with_intensity_level

from clean_ros.cloud.kitti import read_velodyne
from clean_ros.inference.bundle import BundleError, load_bundle
from clean_ros.inference.intensity_level import (MIN_RETURNS, AutoIntensity, dataset_intensity_level,
                                                 scan_intensity_level)


def ring_scan(rng, n=4000, level=0.3, near=0):
    """n returns 5-35 m away with intensities around `level`, plus `near` bright returns within 2 m."""
    r = rng.uniform(5, 35, n)
    a = rng.uniform(-np.pi, np.pi, n)
    far = np.c_[r * np.cos(a), r * np.sin(a), rng.uniform(-1.7, 1, n), rng.uniform(0.5, 1.5, n) * level]
    close = np.c_[rng.uniform(-1.4, 1.4, (near, 2)), np.zeros(near), np.ones(near)]
    return np.concatenate([far, close]).astype(np.float32)


def _scaled(auto: AutoIntensity, points: np.ndarray) -> np.ndarray:
    """What the Pipeline does to a scan, on a copy of all of it: record its level, then scale (and clip) the
    intensity column by the factor."""
    import torch

    auto.update(points)
    out = np.array(points, dtype=np.float32, copy=True)
    auto.scale_(torch.from_numpy(out)[:, auto.column])
    return out


def test_the_level_is_the_median_of_the_returns_in_the_band_only(rng):
    scan = ring_scan(rng, near=3000)
    band = np.hypot(scan[:, 0], scan[:, 1]) >= 3
    assert scan_intensity_level(scan) == pytest.approx(float(np.median(scan[band, 3])), rel=1e-6)
    assert scan_intensity_level(scan * np.array([1, 1, 1, 255], np.float32)) == pytest.approx(
        255 * scan_intensity_level(scan), rel=1e-5)
    # too few returns with an intensity: no level (a scan of zeros says nothing of the sensor's scale)
    assert scan_intensity_level(scan * np.array([1, 1, 1, 0], np.float32)) is None
    assert scan_intensity_level(ring_scan(rng, n=MIN_RETURNS - 1)) is None
    assert scan_intensity_level(np.zeros((0, 4), np.float32)) is None
    assert scan_intensity_level(scan[:, :3]) is None  # no intensity column


def test_auto_intensity_brings_a_scaled_sensor_back_and_keeps_the_running_median(rng):
    scans = [ring_scan(rng) for _ in range(5)]
    training_level = dataset_intensity_level(scans)
    auto = AutoIntensity(training_level, window=3, clip=(0.0, 1.0))
    assert auto.factor == 1.0
    for scan in scans[:3]:
        other = scan * np.array([1, 1, 1, 0.6], np.float32)          # the same scenes, intensity x 0.6
        out = _scaled(auto, other)
        assert np.array_equal(out[:, :3], other[:, :3])              # only the intensity column changes
    assert auto.factor == pytest.approx(1 / 0.6, rel=0.06)
    assert scan_intensity_level(out) == pytest.approx(training_level, rel=0.06)
    # a 0-255 sensor: brought to [0, 1] and clipped to the feature's range, as training clipped
    out = _scaled(auto, scans[3] * np.array([1, 1, 1, 255], np.float32))
    assert out[:, 3].max() <= 1.0
    # the factor follows the median of the last `window` scans: one 0-255 scan among 0.6 ones does not take over
    assert auto.factor == pytest.approx(1 / 0.6, rel=0.1)
    # scans without a level keep the last factor
    before = auto.factor
    _scaled(auto, scans[4] * np.array([1, 1, 1, 0], np.float32))
    assert auto.factor == before
    # a 16-bit sensor (Ouster-like counts, here x 40000) is brought back as well
    out = _scaled(AutoIntensity(training_level, window=1), scans[0] * np.array([1, 1, 1, 40000], np.float32))
    assert scan_intensity_level(out) == pytest.approx(training_level, rel=0.06)
    with pytest.raises(ValueError, match="level must be a number > 0"):
        AutoIntensity(0.0)
    with pytest.raises(ValueError, match="no scan has"):
        dataset_intensity_level([np.zeros((10, 4), np.float32)])


@pytest.fixture
def level_bundle(default_bundle, tmp_path):
    """The default bundle with a recorded training level (the shipped one records 0.29)."""
    return bundle_with_intensity_level(default_bundle, tmp_path, 0.29)


def test_the_pipeline_sees_a_scaled_sensor_as_the_training_sensor(level_bundle, kitti_sample):
    import torch

    from clean_ros.inference.pipeline import Pipeline

    torch.set_num_threads(1)
    points = read_velodyne(kitti_sample / "training" / "velodyne" / "000003.bin")
    pipe = Pipeline.from_bundle(level_bundle, backend="torch")
    pipe.update_postprocess(score_thresholds=0.15)  # more boxes: a stronger comparison
    assert pipe.set_auto_intensity(True, strict=True) is None
    pipe.warmup(2)                                  # synthetic clouds do not count as the sensor's scans
    assert not pipe.auto_intensity.levels
    given = points.copy()
    reference = pipe(points).detections
    factor = pipe.intensity_factor
    assert factor != 1.0
    # the voxelised points are scaled in the voxeliser's copy: the caller's scan is untouched
    np.testing.assert_array_equal(points, given)
    voxels, _ = pipe.preprocess(points)                                  # the same scan again: the same factor
    assert pipe.intensity_factor == factor and np.array_equal(points, given)
    auto, pipe.auto_intensity = pipe.auto_intensity, None
    as_given, _ = pipe.preprocess(points)
    pipe.auto_intensity = auto
    np.testing.assert_array_equal(voxels.points[:, :3], as_given.points[:, :3])
    np.testing.assert_array_equal(voxels.points[:, 3], (as_given.points[:, 3] * factor).clamp(0.0, 1.0))
    dim = points * np.array([1, 1, 1, 0.5], np.float32)
    pipe.set_auto_intensity(True)                   # a fresh running median for the other sensor
    scaled = pipe(dim).detections
    assert pipe.intensity_factor == pytest.approx(2 * factor, rel=1e-3)
    assert len(reference) >= 3
    np.testing.assert_array_equal(scaled.labels, reference.labels)
    np.testing.assert_allclose(scaled.boxes, reference.boxes, atol=1e-3)
    np.testing.assert_allclose(scaled.scores, reference.scores, atol=1e-3)
    # without it the model sees the dim sensor differently (why the setting exists)
    pipe.set_auto_intensity(False)
    assert pipe.intensity_factor == 1.0
    plain = pipe(dim).detections
    assert len(plain) != len(reference) or not np.allclose(plain.scores, reference.scores, atol=1e-3)


def test_a_feature_scale_applies_before_the_level_and_the_range_after_it(level_bundle, kitti_sample, tmp_path):
    """A bundle whose intensity feature has a scale (a 0-255 input on a [0, 1] model): the level is measured on the
    input, the range (the model's units) clips the scaled values, and the model sees what the unscaled bundle shows
    it for the same scan given in [0, 1]."""
    import shutil

    import torch

    from clean_ros.inference.pipeline import Pipeline

    torch.set_num_threads(1)
    scaled_bundle = tmp_path / "scaled"
    shutil.copytree(level_bundle, scaled_bundle)
    manifest = json.loads((scaled_bundle / "manifest.json").read_text())
    [intensity] = [f for f in manifest["point_features"] if f["name"] == "intensity"]
    intensity["scale"] = 1 / 255
    (scaled_bundle / "manifest.json").write_text(json.dumps(manifest))
    points = read_velodyne(kitti_sample / "training" / "velodyne" / "000003.bin")
    pipes = {}
    for name, bundle in (("plain", level_bundle), ("scaled", scaled_bundle)):
        pipes[name] = Pipeline.from_bundle(bundle, backend="torch")
        assert pipes[name].set_auto_intensity(True, strict=True) is None
    want, _ = pipes["plain"].preprocess(points)
    got, _ = pipes["scaled"].preprocess(points * np.array([1, 1, 1, 255], np.float32))
    assert pipes["scaled"].intensity_factor == pytest.approx(pipes["plain"].intensity_factor, rel=1e-5)
    assert 0.5 < float(want.points[:, 3].max()) <= 1.0 and float(got.points[:, 3].max()) <= 1.0
    np.testing.assert_allclose(got.points[:, 3], want.points[:, 3], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got.points[:, :3], want.points[:, :3])


def test_bundles_without_a_level_leave_it_off_and_bad_levels_are_named(level_bundle):
    from clean_ros.inference.pipeline import Pipeline

    manifest = json.loads((level_bundle / "manifest.json").read_text())
    manifest.pop("intensity_level")
    (level_bundle / "manifest.json").write_text(json.dumps(manifest))
    pipe = Pipeline.from_bundle(level_bundle, backend="torch")
    assert pipe.bundle.intensity_level is None
    reason = pipe.set_auto_intensity(True)
    assert reason.startswith("automatic intensity off: bundle") and "intensity_level" in reason
    assert pipe.auto_intensity is None
    with pytest.raises(ValueError, match="records no training intensity level"):
        pipe.set_auto_intensity(True, strict=True)
    for bad in (-0.3, 0, "0.3", True):
        manifest["intensity_level"] = bad
        (level_bundle / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match="'intensity_level' must be"):
            load_bundle(level_bundle)


def test_the_shipped_default_records_its_training_level(default_bundle):
    level = load_bundle(default_bundle).intensity_level
    assert level is not None and 0.1 < level < 0.6


def test_a_bundle_that_scales_its_intensity_input_gets_the_level_in_input_units(level_bundle, kitti_sample):
    """A bundle whose intensity feature has scale 1/255 (it takes 0-255 input) still sees the training level."""
    import torch

    from clean_ros.inference.pipeline import Pipeline

    torch.set_num_threads(1)
    points = read_velodyne(kitti_sample / "training" / "velodyne" / "000003.bin")
    reference = Pipeline.from_bundle(level_bundle, backend="torch")
    reference.set_auto_intensity(True, strict=True)
    want = reference(points).detections
    manifest = json.loads((level_bundle / "manifest.json").read_text())
    intensity = next(f for f in manifest["point_features"] if f["name"] == "intensity")
    intensity["scale"], intensity["range"] = 1 / 255, [0, 255]
    (level_bundle / "manifest.json").write_text(json.dumps(manifest))
    scaled = Pipeline.from_bundle(level_bundle, backend="torch")
    scaled.set_auto_intensity(True, strict=True)
    got = scaled(points).detections
    assert scaled.intensity_factor == pytest.approx(255 * reference.intensity_factor, rel=1e-6)
    assert len(want) >= 3
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
