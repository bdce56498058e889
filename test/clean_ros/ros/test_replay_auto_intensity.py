"""Replay's --no-auto-intensity (clean_ros.ros.replay): fast mode sets automatic intensity on the Pipeline (on by
default; a bundle without a training level: one line on stderr), realtime mode passes auto_intensity to the node."""
from __future__ import annotations


import numpy as np
import pytest
from shared_helpers import bundle_with_intensity_level

pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

from clean_ros.ros import replay as replay_module  # noqa: E402

pytestmark = pytest.mark.ros
SCAN_LEVELS = (0.15, 0.6, 0.2)     # each scan's intensity: running median 0.15, 0.375, 0.2




@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    from clean_ros.ros.bag import POINTS_TYPE, BagWriter
    from clean_ros.ros.pointcloud_msg import make_pointcloud2

    path = tmp_path_factory.mktemp("bag") / "scans"
    rng = np.random.default_rng(0)
    with BagWriter(path) as writer:
        writer.add_topic("/points", POINTS_TYPE, best_effort=True)
        for index, level in enumerate(SCAN_LEVELS):
            radius = rng.uniform(5.0, 35.0, 2000)
            angle = rng.uniform(-np.pi, np.pi, 2000)
            points = np.column_stack([radius * np.cos(angle), radius * np.sin(angle), rng.uniform(-1.7, -1.5, 2000),
                                      np.full(2000, level)]).astype(np.float32)
            writer.write("/points", (index + 1) * 100_000_000,
                         make_pointcloud2(points, ("x", "y", "z", "intensity"), (0.1 * (index + 1), "lidar")))
    return path


@pytest.fixture
def pipelines(monkeypatch):
    """The Pipelines fast replay builds, and the points each one's voxels hold (the model's input, after automatic
    intensity)."""
    from clean_ros.inference.pipeline import Pipeline

    built, seen = [], []
    from_bundle = Pipeline.from_bundle.__func__
    preprocess = Pipeline.preprocess

    def recording_from_bundle(cls, *args, **kwargs):
        built.append(from_bundle(cls, *args, **kwargs))
        return built[-1]

    def recording_preprocess(self, points):
        voxels, stats = preprocess(self, points)
        seen.append(voxels.points.numpy().copy())
        return voxels, stats

    monkeypatch.setattr(Pipeline, "from_bundle", classmethod(recording_from_bundle))
    monkeypatch.setattr(Pipeline, "preprocess", recording_preprocess)
    return built, seen


def _fast(bag, bundle, *extra):
    return replay_module.main([str(bag), "--bundle", str(bundle), "--backend", "torch", "--num-threads", "1",
                               "--warmup", "1", *extra])


def test_fast_replay_scales_each_scan_by_default_and_not_with_the_flag(bag, default_bundle, tmp_path, pipelines,
                                                                      capsys):
    built, seen = pipelines
    bundle = bundle_with_intensity_level(default_bundle, tmp_path, 0.3)
    assert _fast(bag, bundle) == 0
    assert "automatic intensity" not in capsys.readouterr().err
    [pipeline] = built
    assert pipeline.auto_intensity is not None
    assert list(pipeline.auto_intensity.levels) == pytest.approx(SCAN_LEVELS)   # the bag's scans, no warm-up cloud
    scans = seen[-len(SCAN_LEVELS):]
    # factors 0.3 / 0.15, 0.3 / 0.375, 0.3 / 0.2 (median of 0.15, 0.6, 0.2)
    for points, want in zip(scans, (0.3, 0.6 * 0.8, 0.3)):
        np.testing.assert_allclose(points[:, 3], want, rtol=1e-5)

    built.clear()
    seen.clear()
    assert _fast(bag, bundle, "--no-auto-intensity") == 0
    assert built[0].auto_intensity is None
    for points, level in zip(seen[-len(SCAN_LEVELS):], SCAN_LEVELS):
        np.testing.assert_allclose(points[:, 3], level)


def test_fast_replay_of_a_bundle_without_a_level_says_so_in_one_line(bag, default_bundle, tmp_path, pipelines,
                                                                     capsys):
    built, seen = pipelines
    bundle = bundle_with_intensity_level(default_bundle, tmp_path, None)
    assert _fast(bag, bundle) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "automatic intensity" in line]
    assert len(lines) == 1 and lines[0].startswith("automatic intensity off: bundle ")
    assert built[0].auto_intensity is None
    for points, level in zip(seen[-len(SCAN_LEVELS):], SCAN_LEVELS):
        np.testing.assert_allclose(points[:, 3], level)
    assert _fast(bag, bundle, "--no-auto-intensity") == 0                      # off as asked: nothing to say
    assert "automatic intensity" not in capsys.readouterr().err


@pytest.mark.parametrize("flags, expected", [((), True), (("--no-auto-intensity",), False)])
def test_realtime_replay_passes_auto_intensity_to_the_node(bag, default_bundle, monkeypatch, flags, expected):
    given = {}

    def fake_run_realtime(reader, bundle, points_topic, *, node_parameters, **kwargs):
        given.update(node_parameters)
        raise replay_module.ReplayError("stop here")

    monkeypatch.setattr(replay_module, "run_realtime", fake_run_realtime)
    assert replay_module.main([str(bag), "--bundle", str(default_bundle), "--mode", "realtime", *flags]) == 2
    assert given["auto_intensity"] is expected
