"""Export parity (PyTorch vs ONNX Runtime, and TensorRT where present), backend selection, engine cache keys,
runtime post-processing settings.

Raw head maps are compared with a scale-floored relative error:
    |other - torch| <= RTOL * max(|torch|, rms(torch map))      (RTOL = 1e-4)
i.e. relative to the value itself, but never relative to less than the map's RMS: near-zero entries (a box
offset of 1e-7) are compared at the scale the map lives at instead of demanding a meaningless 1e-11.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from clean_ros.cloud import geometry
from clean_ros.inference.backends import BackendError, choose_backend
from clean_ros.inference.backends.tensorrt_backend import EngineCache, engine_key, tensorrt_unavailable_reason
from clean_ros.inference.bundle import load_bundle
from clean_ros.cloud.kitti import Calibration, labels_from_lidar_boxes, read_labels
from clean_ros.inference.pipeline import Pipeline
from clean_ros.inference.voxelize import PointVoxels, as_padded
from clean_ros.metrics.kitti_eval import evaluate

from shared_helpers import read_velodyne

RTOL = 1e-4
SIM_SEED = 123  # the default bundle was trained on seed 0: these frames are unseen


def scaled_relative_error(other: torch.Tensor, ref: torch.Tensor) -> float:
    floor = ref.float().pow(2).mean().sqrt().clamp(min=1e-12)
    return float(((other - ref).abs() / torch.maximum(ref.abs(), floor)).max())


@pytest.fixture(scope="module")
def bundle_path(default_bundle) -> Path:
    return default_bundle


@pytest.fixture(scope="module")
def pipelines(bundle_path):
    pytest.importorskip("onnxruntime")
    return {name: Pipeline.from_bundle(bundle_path, backend=name) for name in ("torch", "onnxruntime")}


@pytest.fixture(scope="module")
def sim_frames(tmp_path_factory):
    """Two simulated, labelled frames (points, labels, calib), generated with an unseen seed."""
    from training.sim.sim_config import SimConfig
    from training.sim.generate import generate_frame
    from training.sim.writer import write_frame

    root = tmp_path_factory.mktemp("sim")
    frames = []
    for index in range(2):
        write_frame(root, "training", index, generate_frame(SimConfig(), SIM_SEED, index, "training"))
        stem = f"{index:06d}"
        frames.append((read_velodyne(root / "training/velodyne" / f"{stem}.bin"),
                       read_labels(root / "training/label_2" / f"{stem}.txt"),
                       Calibration.from_file(root / "training/calib" / f"{stem}.txt")))
    return frames


@pytest.fixture(scope="module")
def kitti_frames(kitti_sample):
    out = []
    for path in sorted((kitti_sample / "training/velodyne").glob("*.bin")):
        out.append((read_velodyne(path), read_labels(kitti_sample / "training/label_2" / f"{path.stem}.txt"),
                    Calibration.from_file(kitti_sample / "training/calib" / f"{path.stem}.txt")))
    return out


def _check_maps(pipelines, points):
    packed, _ = pipelines["torch"].preprocess(points)
    # CPU pipelines voxelise without the padded grid for their torch pillar encoder; the canvas is the same bits
    # as from the padded voxels
    assert isinstance(packed, PointVoxels) and isinstance(pipelines["onnxruntime"].preprocess(points)[0], PointVoxels)
    voxels = as_padded(packed)
    ref_maps, ref_bev = pipelines["torch"].raw_outputs(packed)
    assert torch.equal(pipelines["torch"].bev_input(voxels), ref_bev)
    maps, bev = pipelines["onnxruntime"].raw_outputs(packed)
    assert scaled_relative_error(bev, ref_bev) <= RTOL
    # encoder.onnx (dynamic pillar count; what a GPU backend runs: on CPU the Pipeline keeps torch's faster per-point
    # encoder) against the torch encoder's inference path and its padded path
    onnx = pipelines["onnxruntime"]
    assert onnx.backend.has_encoder and not onnx._pillar_encoder_on_backend
    with torch.inference_mode():
        from_onnx = onnx.backend.encode_pillars(voxels.features, voxels.num_points, voxels.coords)
        encoder = pipelines["torch"].detector.encoder
        per_point = encoder(voxels.features, voxels.num_points, voxels.coords)
        padded = encoder._forward_padded(voxels.features, voxels.num_points, voxels.coords)
        # float64 truth: the per-point path regroups the arithmetic (BN folded, points relative to their pillar), so it
        # must be as close to the truth as the padded path is, not bit-equal to it
        exact = copy.deepcopy(encoder).double()._forward_padded(voxels.features.double(), voxels.num_points,
                                                                voxels.coords)
    assert scaled_relative_error(from_onnx, per_point) <= RTOL and scaled_relative_error(padded, per_point) <= 1e-4
    padded_error = scaled_relative_error(padded.double(), exact)
    assert padded_error < 1e-4 and scaled_relative_error(per_point.double(), exact) <= 1.5 * padded_error
    assert per_point.abs().max() > 0.1
    # cls, box, dir (+ iou for a bundle with an IoU branch): every head map of the bundle's detector
    assert len(maps) == len(ref_maps) == len(pipelines["torch"].detector.dense_output_names) >= 3
    for name, m, r in zip(pipelines["torch"].detector.dense_output_names, maps, ref_maps):
        assert m.shape == r.shape, name
        assert scaled_relative_error(m, r) <= RTOL, name
    assert ref_maps[0].abs().max() > 1.0  # real logits, not an empty graph


def _check_detections(a, b):
    assert len(a) == len(b)
    assert np.array_equal(np.sort(a.labels), np.sort(b.labels))
    if len(a) == 0:
        return
    iou = geometry.iou_3d(torch.from_numpy(a.boxes), torch.from_numpy(b.boxes)).numpy()
    best = iou.argmax(axis=1)
    assert len(set(best.tolist())) == len(a)  # one-to-one
    assert iou.max(axis=1).min() >= 0.99
    assert np.array_equal(a.labels, b.labels[best])
    assert np.allclose(a.scores, b.scores[best], rtol=1e-4, atol=1e-6)


def test_onnxruntime_matches_torch_on_a_real_kitti_frame(pipelines, kitti_frames):
    points = kitti_frames[0][0]
    assert len(points) > 100_000
    _check_maps(pipelines, points)
    _check_detections(pipelines["torch"](points).detections, pipelines["onnxruntime"](points).detections)


def test_onnxruntime_matches_torch_on_a_simulated_frame(pipelines, sim_frames):
    points = sim_frames[0][0]
    _check_maps(pipelines, points)
    a, b = pipelines["torch"](points).detections, pipelines["onnxruntime"](points).detections
    assert len(a) > 0  # the default bundle finds objects in simulated scenes
    _check_detections(a, b)


def _average_precisions(pipeline, frames) -> dict:
    gts, dts = [], []
    for points, gt, calib in frames:
        det = pipeline(points).detections
        gts.append(gt)
        dts.append(labels_from_lidar_boxes(det.boxes, det.names, det.scores, calib))
    return evaluate(gts, dts)


def test_kitti_ap_agrees_between_backends(pipelines, kitti_frames, sim_frames):
    frames = kitti_frames + sim_frames
    ref = _average_precisions(pipelines["torch"], frames)
    got = _average_precisions(pipelines["onnxruntime"], frames)
    for cls in ref:
        for metric in ("3d_R40", "bev_R40"):
            assert np.allclose(ref[cls][metric], got[cls][metric], atol=0.1), (cls, metric)
    assert max(ref["Car"]["bev_R40"]) > 0  # not a vacuous 0 == 0 comparison


@pytest.mark.skipif(tensorrt_unavailable_reason() is not None,
                    reason=f"TensorRT parity needs tensorrt and a CUDA GPU: {tensorrt_unavailable_reason()}")
def test_tensorrt_matches_torch(bundle_path, kitti_frames, tmp_path, monkeypatch):
    monkeypatch.setenv("CLEAN_ROS_ENGINE_CACHE", str(tmp_path))
    ref = Pipeline.from_bundle(bundle_path, backend="torch", device="cuda")
    trt = Pipeline.from_bundle(bundle_path, backend="tensorrt", device="cuda", fp16=False)
    points = kitti_frames[0][0]
    voxels, _ = ref.preprocess(points)
    ref_maps, _ = ref.raw_outputs(voxels)
    maps, _ = trt.raw_outputs(voxels)
    for m, r in zip(maps, ref_maps):
        assert scaled_relative_error(m, r) <= 1e-3  # fp32 engine: TF32 / tactic differences allowed for
    _check_detections(ref(points).detections, trt(points).detections)


# ------------------------------------------------------------------------------------------- selection
def test_auto_selection_logs_choice_and_reason(bundle_path, caplog):
    b = load_bundle(bundle_path)
    choice = choose_backend("auto", b)
    if tensorrt_unavailable_reason() is not None:
        assert choice.name == "onnxruntime"
        assert "tensorrt" in choice.reason
    with caplog.at_level(logging.INFO, logger="clean_ros.backends"):
        pipe = Pipeline(b, backend="auto")
    lines = [r.getMessage() for r in caplog.records if r.name == "clean_ros.backends"]
    assert len(lines) == 1 and lines[0].startswith(f"backend: {pipe.backend_name} on ")
    with pytest.raises(BackendError, match="unknown backend 'cuda'"):
        choose_backend("cuda", b)


def test_torch_fp16_on_cpu_is_refused(bundle_path):
    with pytest.raises(BackendError, match="fp16 is only supported on CUDA"):
        Pipeline.from_bundle(bundle_path, backend="torch", fp16=True)


# ------------------------------------------------------------------------------------------- engine cache
def _key(**changes):
    base = dict(onnx_sha256="a" * 64, tensorrt_version="10.3.0", compute_capability="8.6", precision="fp16",
                shape_profile={"bev": [[1, 32, 160, 160]] * 3})
    base.update(changes)
    return engine_key(**base)


def test_engine_cache_refuses_an_engine_whose_key_differs(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    key = _key()
    engine_path = cache.store(key, b"ENGINE-BYTES")
    assert cache.load(key) == b"ENGINE-BYTES"
    for changed in (_key(tensorrt_version="10.4.0"), _key(compute_capability="8.9"), _key(precision="fp32"),
                    _key(onnx_sha256="b" * 64), _key(shape_profile={"bev": [[1, 32, 160, 160]] * 2 + [[2, 32, 160, 160]]})):
        assert cache.paths(changed)[0] != engine_path
        assert cache.load(changed) is None
    # An engine file under the right name whose stored key says something else (copied from another machine,
    # tampered, or a digest collision) is refused, not deserialised.
    _, key_path = cache.paths(key)
    stored = json.loads(key_path.read_text())
    stored["compute_capability"] = "7.5"
    key_path.write_text(json.dumps(stored))
    with caplog.at_level(logging.WARNING, logger="clean_ros.backends"):
        assert cache.load(key) is None
    assert "built for a different compute_capability" in caplog.text
    key_path.unlink()
    assert cache.load(key) is None
    with pytest.raises(ValueError, match="precision must be fp16 or fp32"):
        _key(precision="int8")


def test_engine_cache_location_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEAN_ROS_ENGINE_CACHE", str(tmp_path / "c"))
    assert EngineCache().root == tmp_path / "c"
    monkeypatch.delenv("CLEAN_ROS_ENGINE_CACHE")
    assert EngineCache().root == Path("~/.cache/clean_ros/engines").expanduser()


# ------------------------------------------------------------------------------------------- settings
def test_update_postprocess_validates_and_applies(pipelines, sim_frames):
    pipe = pipelines["torch"]
    before = pipe.postprocess_settings
    points = sim_frames[0][0]
    n_default = len(pipe(points).detections)
    try:
        pipe.update_postprocess(score_thresholds={"Car": 0.99, "Pedestrian": 0.99, "Cyclist": 0.99})
        assert pipe.postprocess_settings.score_thresholds == [0.99, 0.99, 0.99]
        assert len(pipe(points).detections) < n_default
        pipe.update_postprocess(score_thresholds=0.05, nms_post_max=3)
        assert len(pipe(points).detections) == 3
        for bad, message in [({"score_thresholds": [0.1, 0.2]}, "needs 3 values"),
                             ({"score_thresholds": {"Truck": 0.3}}, "unknown class 'Truck'"),
                             ({"nms_iou": 1.5}, r"nms_iou = 1.5: must be a number in \[0, 1\]"),
                             ({"nms_pre_max": -1}, "must be an integer >= 0"),
                             ({"peak_kernel": 4}, "must be odd"),
                             ({"nms_radius": 2}, "unknown post-processing setting 'nms_radius'")] + (
                [] if pipe.detector.cfg.head.iou_branch else [({"iou_gate_mode": "soft"}, "no IoU branch")]):
            current = pipe.postprocess_settings
            with pytest.raises(ValueError, match=message):
                pipe.update_postprocess(**bad)
            assert pipe.postprocess_settings == current  # a refused change leaves the settings untouched
        if pipe.detector.cfg.head.iou_branch:  # a bundle with an IoU branch may switch gate modes at runtime
            pipe.update_postprocess(iou_gate_mode="soft")
            assert pipe.postprocess_settings.iou_gate.mode == "soft"
    finally:
        pipe.update_postprocess(score_thresholds=before.score_thresholds, nms_post_max=before.nms_post_max,
                                iou_gate_mode=before.iou_gate.mode)
    assert pipe.postprocess_settings == before


def test_pipeline_timings_and_input_checks(pipelines, kitti_frames):
    pipe = pipelines["onnxruntime"]
    points = kitti_frames[0][0]
    result = pipe(points)
    assert set(result.timings_ms) == {"preprocess", "inference", "postprocess"}
    assert all(v > 0 for v in result.timings_ms.values())
    assert result.voxel_stats.num_input_points == len(points)
    assert result.detections.class_names == pipe.class_names == ("Car", "Pedestrian", "Cyclist")
    assert pipe.point_features == ("x", "y", "z", "intensity")
    empty = pipe(np.zeros((0, 4), np.float32))
    assert result.voxel_stats.num_occupied_voxels > 0 and empty.voxel_stats.num_occupied_voxels == 0
    with pytest.raises(ValueError, match="points have 3 columns but the model needs 4"):
        pipe(points[:, :3])
    extra = np.hstack([points, np.zeros((len(points), 1), np.float32)])  # a ring/time column is ignored
    assert len(pipe(extra).detections) == len(result.detections)


# ------------------------------------------------------------------------------------------- hybrid path
SECOND_SMALL = ["name=second_small", "point_cloud_range=[0.0, -6.4, -3.0, 12.8, 6.4, 1.0]", "max_voxels_test=4000"]


def test_hybrid_sparse_student_torch_sparse_part_onnx_dense_part(kitti_frames, tmp_path):
    """SECOND: voxel encoder + sparse 3D backbone stay in torch, only the dense BEV part is in model.onnx."""
    pytest.importorskip("onnxruntime")
    from clean_ros.models.detector_config import load_detector_config
    from clean_ros.inference.bundle import save_bundle
    from test_bundle import trained_like
    from training.config_paths import find_config

    try:
        cfg = load_detector_config(find_config("second_tiny"), SECOND_SMALL)
    except FileNotFoundError:
        pytest.skip("the sparse (SECOND) student config has not landed")
    model = trained_like(cfg)
    b = load_bundle(save_bundle(tmp_path / "second", model, cfg))
    assert b.onnx_path is not None and b.encoder_onnx_path is None  # nothing sparse went to ONNX
    assert b.manifest["export"]["dense_onnx"]["inputs"]["bev"][2:] == [10, 10]  # stride-8 sparse output
    ref, ort = Pipeline(b, backend="torch"), Pipeline(b, backend="onnxruntime")
    points = kitti_frames[0][0]
    voxels, stats = ref.preprocess(points)
    assert stats.num_occupied_voxels > 500
    ref_maps, ref_bev = ref.raw_outputs(voxels)
    maps, bev = ort.raw_outputs(voxels)
    assert torch.equal(bev, ref_bev)  # the same torch code made the canvas
    assert ref_bev.abs().max() > 0
    for m, r in zip(maps, ref_maps):
        assert scaled_relative_error(m, r) <= RTOL
    with torch.no_grad():
        direct = model(voxels, 1)  # the training-time forward agrees with the split pipeline
    assert torch.allclose(direct.cls_logits, ref.detector.head_output(ref_maps, ref_bev).cls_logits)
    _check_detections(ref(points).detections, ort(points).detections)


def test_auto_falls_through_when_a_backend_cannot_start(bundle_path, monkeypatch):
    import clean_ros.inference.backends as backends
    from clean_ros.inference.backends import BackendUnavailable

    real = backends.create_backend

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise BackendUnavailable("onnxruntime session could not be created (simulated)")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(backends, "create_backend", no_onnxruntime)
    pipe = Pipeline.from_bundle(bundle_path, backend="auto")
    assert pipe.backend_name == "torch"
    assert "onnxruntime failed: onnxruntime session could not be created (simulated)" in pipe.backend.selection_reason
    with pytest.raises(BackendUnavailable, match="simulated"):
        Pipeline.from_bundle(bundle_path, backend="onnxruntime")  # an explicit request does not fall back


def test_feature_scale_from_the_manifest_is_applied(bundle_path, kitti_frames, tmp_path):
    import shutil

    shutil.copytree(bundle_path, tmp_path / "b")
    manifest = json.loads((tmp_path / "b/manifest.json").read_text())
    manifest["point_features"][3]["scale"] = 1.0 / 255.0  # a bundle for a sensor reporting 0-255 intensity
    (tmp_path / "b/manifest.json").write_text(json.dumps(manifest))
    scaled = Pipeline.from_bundle(tmp_path / "b", backend="torch")
    plain = Pipeline.from_bundle(bundle_path, backend="torch")
    points = kitti_frames[0][0]
    raw255 = points.copy()
    raw255[:, 3] *= 255.0
    a, b = scaled(raw255).detections, plain(points).detections
    assert len(a) == len(b) > 0 and np.allclose(a.boxes, b.boxes, atol=1e-4)
