"""Where the sensor is (clean_ros.inference.sensor_mount) and the Pipeline applying it: a sensor mounted at another
height / pitch gives the boxes the model gives at its training height, reported back in the sensor's own frame."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from clean_ros.cloud.transforms import Transform, transform_boxes, transform_points
from clean_ros.inference.bundle import BundleError, load_bundle
from clean_ros.inference.sensor_mount import TRAINING_SENSOR_HEIGHT_M, ModelFrames, SensorMount
from shared_helpers import assert_same_detections, read_velodyne


def test_mount_validation_and_the_off_setting():
    assert SensorMount.from_settings(0.0) is None
    assert SensorMount.from_settings(2.1, 0.05) == SensorMount(2.1, 0.05, 0.0)
    for kwargs, message in (({"height": -1.0}, "sensor_height = -1.0"), ({"height": float("nan")}, "finite"),
                            ({"height": 1.8, "pitch": 1.0}, "within"), ({"height": True}, "finite number")):
        with pytest.raises(ValueError, match=message):
            SensorMount(**kwargs)
    with pytest.raises(ValueError, match="sensor_height is 0"):
        SensorMount.from_settings(0.0, pitch=0.1)


def test_ground_under_a_higher_tilted_sensor_lands_where_the_model_saw_ground():
    height, pitch = 2.4, 0.08
    mount = SensorMount(height, pitch=pitch)
    model_from_sensor = mount.model_from_sensor(TRAINING_SENSOR_HEIGHT_M)
    # ground points of a level world, seen by the tilted sensor: level = R_pitch @ sensor
    ground_level = np.array([[5.0, 0.0, -height], [20.0, 3.0, -height], [40.0, -8.0, -height]])
    in_sensor = ground_level @ mount.level_from_sensor().rotation        # R^T p, row form
    in_model = transform_points(in_sensor, model_from_sensor)
    np.testing.assert_allclose(in_model[:, 2], -TRAINING_SENSOR_HEIGHT_M, atol=1e-12)
    np.testing.assert_allclose(in_model[:, :2], ground_level[:, :2], atol=1e-12)
    frames = ModelFrames.from_mount(mount)
    assert frames.output_from_model.compose(frames.model_from_input).is_identity(atol=1e-12)
    shifted = frames.with_output(Transform.from_euler(0, 0, 0, (1.0, 0, 0)))
    np.testing.assert_allclose(shifted.output_from_model.translation,
                               frames.output_from_model.translation + [1.0, 0, 0], atol=1e-12)


@pytest.fixture(scope="module")
def pipeline(default_bundle):
    import torch

    from clean_ros.inference.pipeline import Pipeline

    torch.set_num_threads(1)
    pipe = Pipeline.from_bundle(default_bundle, backend="torch")
    pipe.update_postprocess(score_thresholds=0.15)  # more boxes: a stronger comparison
    return pipe


def test_pipeline_with_the_mount_reproduces_the_training_height_boxes_in_the_sensor_frame(pipeline, kitti_sample):
    points = read_velodyne(kitti_sample / "training" / "velodyne" / "000000.bin")
    reference = pipeline(points).detections                      # KITTI's own sensor, 1.73 m
    assert len(reference) >= 2
    mount = SensorMount(2.5, pitch=0.06, roll=-0.02)             # another vehicle: higher, pitched, rolled
    kitti_from_other = mount.model_from_sensor(pipeline.training_sensor_height)
    other_points = transform_points(points, kitti_from_other.inverse())   # the same scene seen by that sensor

    pipeline.set_sensor_mount(mount)
    try:
        result = pipeline(other_points)
    finally:
        pipeline.set_sensor_mount(None)
    mounted = result.detections
    assert result.timings_ms["frames"] > 0                      # moving points and boxes is timed on its own
    assert "frames" not in pipeline(points).timings_ms
    # boxes come back in the other sensor's frame: moved into the KITTI frame they are the reference boxes
    moved = transform_boxes(mounted.boxes, kitti_from_other)
    assert_same_detections((moved, mounted.scores, mounted.labels),
                           (reference.boxes, reference.scores, reference.labels), threshold=0.15)
    # and without the setting the model sees that scene differently (why the setting exists)
    unmounted = pipeline(other_points).detections
    z_of_unmounted = transform_boxes(unmounted.boxes, kitti_from_other)[:, 2] if len(unmounted) else np.zeros(0)
    assert len(unmounted) != len(reference) or not np.allclose(np.sort(z_of_unmounted),
                                                               np.sort(reference.boxes[:, 2]), atol=0.1)


def test_explicit_frames_override_the_mount_for_one_call(pipeline, kitti_sample):
    points = read_velodyne(kitti_sample / "training" / "velodyne" / "000001.bin")
    reference = pipeline(points).detections
    # target frame = base_link 1.2 m behind and 1.73 m below the sensor, turned 90 deg: boxes published there
    base_from_sensor = Transform.from_euler(0, 0, math.pi / 2, (-1.2, 0.0, 1.73))
    frames = ModelFrames.identity().with_output(base_from_sensor)
    pipeline.set_sensor_mount(SensorMount(3.0))
    try:
        moved = pipeline(points, frames=frames).detections
    finally:
        pipeline.set_sensor_mount(None)
    np.testing.assert_allclose(moved.boxes, transform_boxes(reference.boxes, base_from_sensor), atol=1e-5)
    np.testing.assert_array_equal(moved.labels, reference.labels)


def test_bundles_without_the_field_are_kitti_height_and_bad_values_are_named(default_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(default_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.pop("sensor_height", None)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(copy).sensor_height == pytest.approx(1.73)
    manifest["sensor_height"] = 1.95
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(copy).sensor_height == pytest.approx(1.95)
    manifest["sensor_height"] = -2
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="'sensor_height' must be the training sensor's height"):
        load_bundle(copy)
