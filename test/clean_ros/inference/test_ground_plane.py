"""clean_ros.inference.ground_plane: the ground's height and tilt measured from scans, the running estimate, the mount
check, and the Pipeline's ground watch and automatic mount."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from clean_ros.cloud.transforms import transform_boxes, transform_points
from clean_ros.inference import ground_plane as gp
from clean_ros.inference.bundle import BundleError, load_bundle
from clean_ros.inference.sensor_mount import SensorMount
from shared_helpers import read_velodyne


def street(rng: np.random.Generator, n_ground: int = 60000) -> np.ndarray:
    """A level street seen from 1.73 m: ground returns (2 cm noise, a few stray returns below the road), car-sized
    blocks standing on it and a building wall along one side; (N, 4) float32."""
    r = np.sqrt(rng.uniform(2.0 ** 2, 40.0 ** 2, n_ground))
    a = rng.uniform(-math.pi, math.pi, n_ground)
    ground = np.stack([r * np.cos(a), r * np.sin(a), -1.73 + rng.normal(0, 0.02, n_ground)], 1)
    ground[rng.random(n_ground) < 0.002, 2] -= rng.uniform(0.2, 1.0)  # multipath below the road
    blocks = []
    for cx, cy in rng.uniform(-20, 20, (25, 2)):
        m = 800
        blocks.append(np.stack([cx + rng.uniform(-2, 2, m), cy + rng.uniform(-0.9, 0.9, m),
                                -1.73 + rng.uniform(0.3, 1.5, m)], 1))  # bodies: no returns below the sills
    wall = np.stack([rng.uniform(-30, 30, 20000), np.full(20000, 12.0) + rng.normal(0, 0.02, 20000),
                     rng.uniform(-1.7, 6.0, 20000)], 1)
    xyz = np.concatenate([ground, *blocks, wall])
    return np.concatenate([xyz, rng.uniform(0, 1, (len(xyz), 1))], 1).astype(np.float32)


def seen_from(points: np.ndarray, mount: SensorMount) -> np.ndarray:
    """The 1.73 m level sensor's scene as a sensor mounted as `mount` records it."""
    return transform_points(points, mount.model_from_sensor(1.73).inverse()).astype(np.float32)


@pytest.mark.parametrize("mount", [SensorMount(1.73), SensorMount(2.4, 0.05, -0.02), SensorMount(1.1, -0.03, 0.04),
                                   SensorMount(3.5, 0.3, 0.1)])
def test_a_fit_recovers_the_mount_of_a_street_scan(mount):
    fit = gp.fit_ground_plane(seen_from(street(np.random.default_rng(1)), mount))
    assert fit is not None and fit.inliers >= gp.MIN_INLIERS
    assert fit.height == pytest.approx(mount.height, abs=0.03)  # cell minima sit ~1 noise sigma under the road
    assert fit.pitch == pytest.approx(mount.pitch, abs=0.003)
    assert fit.roll == pytest.approx(mount.roll, abs=0.003)
    assert np.linalg.norm(fit.normal) == pytest.approx(1.0)


def test_the_same_scan_gives_the_same_fit():
    points = street(np.random.default_rng(2))
    assert gp.fit_ground_plane(points) == gp.fit_ground_plane(points.copy())


def test_the_real_kitti_scans_show_their_ground_about_where_kitti_mounts_the_sensor(kitti_sample):
    fits = [gp.fit_ground_plane(read_velodyne(p)) for p in sorted((kitti_sample / "training" / "velodyne").glob("*.bin"))]
    assert all(f is not None for f in fits)
    heights = [f.height for f in fits]
    assert 1.65 < float(np.median(heights)) < 1.85  # KITTI's HDL-64 is 1.73 m above the road
    assert all(abs(f.pitch) < 0.03 and abs(f.roll) < 0.06 for f in fits)


def test_scans_without_ground_give_no_fit():
    rng = np.random.default_rng(3)
    wall = np.stack([np.full(30000, 8.0), rng.uniform(-20, 20, 30000), rng.uniform(-1.7, 5, 30000),
                     np.zeros(30000)], 1).astype(np.float32)
    assert gp.fit_ground_plane(wall) is None  # a vertical plane is no ground
    assert gp.fit_ground_plane(street(rng)[:200]) is None  # too little of it
    for bad in (np.zeros((0, 4), np.float32), np.zeros(10, np.float32), np.zeros((100, 2), np.float32), None, "x"):
        assert gp.fit_ground_plane(bad) is None
    roof = street(rng)
    roof[:, 2] += 3.0  # "ground" above the sensor: not what a sensor looking down at a road sees
    assert gp.fit_ground_plane(roof) is None


def test_non_finite_points_are_ignored():
    points = street(np.random.default_rng(4))
    clean = gp.fit_ground_plane(points)
    dirty = points.copy()
    dirty[::7, :3] = np.nan
    dirty[1::11, 2] = np.inf
    fit = gp.fit_ground_plane(dirty)
    assert fit is not None and fit.height == pytest.approx(clean.height, abs=0.01)


def test_a_plane_moves_with_its_frame_and_tilts_round_trip():
    for h, p, r in [(1.9, 0.04, -0.01), (2.5, -0.2, 0.3)]:
        plane = gp.ground_from_tilt(h, p, r)
        assert (plane.height, plane.pitch, plane.roll) == pytest.approx((h, p, r), abs=1e-9)
        mount = SensorMount(h, p, r)
        in_model = plane.transformed(mount.model_from_sensor(1.73))  # the Pipeline's model frame
        assert in_model.height == pytest.approx(1.73, abs=1e-9)
        np.testing.assert_allclose(in_model.normal, (0, 0, 1), atol=1e-9)


def test_the_tracker_fits_every_scan_until_warm_then_every_nth_and_takes_medians():
    rng = np.random.default_rng(5)
    scans = [seen_from(street(rng, 30000), SensorMount(2.0, 0.02, 0.0)) for _ in range(3)]
    tracker = gp.GroundTracker(window=10, every=3)
    fitted = [tracker.observe(scans[i % 3]) for i in range(gp.WARM_FITS + 7)]
    assert fitted[:gp.WARM_FITS] == [True] * gp.WARM_FITS
    assert fitted[gp.WARM_FITS:] == [(gp.WARM_FITS + i) % 3 == 0 for i in range(7)]
    tracker.update(seen_from(street(rng, 30000), SensorMount(3.0, 0.2, 0.0)))  # one odd scan (a ramp, a bus)
    estimate = tracker.estimate
    assert estimate.height == pytest.approx(2.0, abs=0.03) and estimate.pitch == pytest.approx(0.02, abs=0.003)
    tracker.reset()
    assert tracker.estimate is None and tracker.scans == 0
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            gp.GroundTracker(window=bad)


def test_the_check_says_as_trained_within_the_tolerances_and_gives_the_setting_otherwise():
    reference, training = 1.68, 1.73
    fine = gp.check_mount(gp.ground_from_tilt(1.68 + 0.15, 0.02, 0.0), None, reference, training, 30)
    assert fine.ok and fine.describe().endswith("as trained")
    high = gp.check_mount(gp.ground_from_tilt(2.45, 0.05, -0.01), None, reference, training, 30)
    assert not high.ok and high.height_error == pytest.approx(0.77)
    assert "set sensor_height 2.50, sensor_pitch 0.050, sensor_roll -0.010" in high.describe()
    tilted = gp.check_mount(gp.ground_from_tilt(1.68, 0.05, 0.0), None, reference, training, 30)
    assert not tilted.ok and tilted.tilt == pytest.approx(0.05)
    # the suggested mount, applied, puts the ground at the reference in the model frame
    applied = gp.check_mount(gp.ground_from_tilt(2.45, 0.05, -0.01),
                             high.suggested.model_from_sensor(training), reference, training, 30)
    assert applied.ok and applied.height_error == pytest.approx(0.0, abs=1e-9)
    assert gp.mount_for(gp.ground_from_tilt(0.01, 0, 0), 1.80, 1.73) is None  # no valid mount: said, not raised


def test_dataset_ground_height_is_the_median_fit_and_needs_ground():
    rng = np.random.default_rng(6)
    scans = [seen_from(street(rng, 30000), SensorMount(h)) for h in (1.7, 1.8, 2.6)]
    assert gp.dataset_ground_height(iter(scans)) == pytest.approx(1.8, abs=0.03)
    with pytest.raises(ValueError, match="cannot measure the ground height"):
        gp.dataset_ground_height([np.zeros((10, 4), np.float32)])


@pytest.fixture(scope="module")
def pipeline(default_bundle):
    import torch

    from clean_ros.inference.pipeline import Pipeline

    torch.set_num_threads(1)
    return Pipeline.from_bundle(default_bundle, backend="torch")


def test_the_pipeline_watches_the_ground_and_mounts_itself(pipeline, kitti_sample):
    points = read_velodyne(kitti_sample / "training" / "velodyne" / "000000.bin")
    own = gp.fit_ground_plane(points)  # KITTI's own ground and tilt in this scan
    truth = SensorMount(2.5, 0.06, -0.02)
    other = seen_from(points, truth)
    try:
        pipeline.set_ground_watch(True)
        assert pipeline.mount_check() is None  # nothing measured yet
        pipeline.warmup(1)  # a synthetic cloud is no sensor's ground
        assert not pipeline.ground.fits
        result = pipeline(other)
        assert result.timings_ms["ground"] > 0 and pipeline.sensor_mount is None  # watched, not applied
        check = pipeline.mount_check()
        # one scan's fit against another's: each within a few cm and mrad (bench/bench_ground_plane.py)
        assert not check.ok and check.height_error == pytest.approx(2.5 - 1.73 + own.height - pipeline.ground_reference,
                                                                     abs=0.05)

        pipeline.set_auto_mount(True)
        mounted = pipeline(other)
        mount = pipeline.sensor_mount
        assert mount is not None and "frames" in mounted.timings_ms
        # the model frame holds the scene with its ground where the training scans' is
        assert mount.height == pytest.approx(truth.height + own.height - pipeline.ground_reference, abs=0.05)
        assert mount.pitch == pytest.approx(truth.pitch + own.pitch, abs=0.01)
        assert mount.roll == pytest.approx(truth.roll + own.roll, abs=0.01)
        assert pipeline.mount_check().ok
        # what ran is that mount, as if given (the Pipeline's tested sensor-mount path: boxes in the input frame)
        pipeline.set_sensor_mount(mount)
        given = pipeline(other).detections
        np.testing.assert_array_equal(given.boxes, mounted.detections.boxes)
        np.testing.assert_array_equal(given.scores, mounted.detections.scores)
        # (Not compared with KITTI's own sensor mounted automatically: levelling two differently tilted sensors agrees
        # only up to ~1 mrad of yaw and ~1 cm, which moves some boxes' scores by more than any fixed tolerance.)
        pipeline.set_sensor_mount(SensorMount(1.9))  # a mount given wins
        assert not pipeline.auto_mount and pipeline.sensor_mount == SensorMount(1.9)
        pipeline.set_auto_mount(True)
        pipeline.set_ground_watch(False)  # off ends the automatic mount and drops its mount
        assert pipeline.sensor_mount is None and pipeline.ground is None and pipeline.frames is None
        assert "ground" not in pipeline(points).timings_ms
    finally:
        pipeline.set_ground_watch(False)
        pipeline.set_sensor_mount(None)


def test_the_bundle_field_is_optional_and_checked(default_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(default_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.pop("ground_height", None)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(copy).ground_height == load_bundle(copy).sensor_height  # older bundles
    manifest["ground_height"] = 1.68
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(copy).ground_height == pytest.approx(1.68)
    for bad in (0, -1.0, "1.7", True, 1e9):
        manifest["ground_height"] = bad
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match="'ground_height' must be the training scans' ground distance"):
            load_bundle(copy)
