"""Bundle format: round trip, validation errors, hashes, schema versions, safe loading, atomic saving."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clean_ros.inference.bundle import (SCHEMA_VERSION, BundleError, load_bundle, manifest_field, save_bundle,
                                        sha256_file)
from clean_ros.models.detector_config import load_detector_config
from clean_ros.models.detector import build_detector
from clean_ros.inference.voxelize import voxelize_with_stats
from training.config_paths import find_config

# A 3-class PointPillars small enough to export in a second: 12.8 m x 12.8 m at 0.32 m, narrow widths.
SMALL = ["name=small", "point_cloud_range=[0.0, -6.4, -3.0, 12.8, 6.4, 1.0]", "max_points_per_voxel=4",
         "encoder.widths=[8]", "bev_backbone.layer_nums=[1, 1]", "bev_backbone.layer_strides=[2, 2]",
         "bev_backbone.layer_widths=[[8, 8], [12, 12]]", "bev_backbone.upsample_strides=[1, 2]",
         "bev_backbone.num_upsample_filters=[8, 8]", "max_voxels_test=2000"]


def small_config(extra=()):
    return load_detector_config(find_config("pointpillars_tiny"), SMALL + list(extra))


def trained_like(cfg, seed=0):
    """A detector with non-trivial weights and batch-norm statistics (not the init values)."""
    torch.manual_seed(seed)
    model = build_detector(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn_like(buf) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand_like(buf) + 0.5)
    return model.eval()


def cloud(cfg, n=1500, seed=3):
    rng = np.random.default_rng(seed)
    r = np.asarray(cfg.point_cloud_range, np.float32)
    xyz = r[:3] + rng.random((n, 3), dtype=np.float32) * (r[3:] - r[:3])
    return np.concatenate([xyz, rng.random((n, 1), dtype=np.float32)], 1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = small_config()
    model = trained_like(cfg)
    out = save_bundle(tmp_path_factory.mktemp("b") / "bundle", model, cfg,
                      training_config={"epochs": 3, "lr": 0.003},
                      provenance={"method": "test", "teacher": "none", "pruning_ratio": 0.25},
                      metrics={"mAP_3d_R40_moderate": 12.5})
    return out, model, cfg


@pytest.fixture
def copy_of(saved, tmp_path):
    def make() -> Path:
        dst = tmp_path / "copy"
        shutil.copytree(saved[0], dst)
        return dst
    return make


def _edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _rehash(path: Path, name: str) -> None:
    digest = sha256_file(path / name)
    _edit_manifest(path, lambda m: m["files"][name].update(sha256=digest))


# ------------------------------------------------------------------------------------------- round trip
def test_round_trip_gives_identical_outputs(saved):
    path, model, cfg = saved
    b = load_bundle(path)
    loaded = b.build_detector()
    voxels, _ = voxelize_with_stats(torch.from_numpy(cloud(cfg)), cfg.point_cloud_range, cfg.voxel_size,
                                    cfg.max_points_per_voxel, cfg.max_voxels_test)
    with torch.no_grad():
        a, c = model(voxels, 1), loaded(voxels, 1)
    for x, y in [(a.cls_logits, c.cls_logits), (a.box_preds, c.box_preds), (a.dir_logits, c.dir_logits)]:
        assert torch.equal(x, y)
    assert a.cls_logits.abs().max() > 0.1  # not a degenerate all-zero output
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_manifest_records_contract_geometry_and_provenance(saved):
    path, _, cfg = saved
    b = load_bundle(path)
    m = b.manifest
    assert m["schema_version"] == SCHEMA_VERSION
    assert b.class_names == ("Car", "Pedestrian", "Cyclist")
    assert b.point_features == ("x", "y", "z", "intensity")
    assert b.feature_ranges == {"intensity": (0.0, 1.0)}
    assert b.point_cloud_range == (0.0, -6.4, -3.0, 12.8, 6.4, 1.0)
    assert b.voxel_size == (0.32, 0.32, 4.0)
    assert m["detector_config"]["bev_backbone"]["layer_widths"] == [[8, 8], [12, 12]]
    assert m["postprocess"]["score_thresholds"] == cfg.postprocess.score_thresholds
    assert m["training_config"] == {"epochs": 3, "lr": 0.003}
    assert m["metrics"] == {"mAP_3d_R40_moderate": 12.5}
    prov = m["provenance"]
    assert (prov["method"], prov["teacher"], prov["pruning_ratio"]) == ("test", "none", 0.25)
    assert prov["clean_ros_version"] and prov["created_utc"].endswith("Z") and prov["source_git_commit"]
    assert set(m["files"]) == {"weights.safetensors", "model.onnx", "encoder.onnx"}
    for name, entry in m["files"].items():
        assert entry["sha256"] == sha256_file(path / name)
        assert entry["bytes"] == (path / name).stat().st_size
    assert m["export"]["dense_onnx"]["inputs"]["bev"] == [1, 8, 40, 40]
    assert b.input_contract().point_cloud_range == b.point_cloud_range
    assert m["sensor_height"] == 1.73 and b.sensor_height == 1.73   # the training mount height (default KITTI's)


def test_manifest_postprocess_section_is_authoritative(copy_of):
    path = copy_of()
    _edit_manifest(path, lambda m: m["postprocess"].update(score_thresholds=[0.7, 0.2, 0.3], nms_iou=0.2))
    cfg = load_bundle(path).detector_config
    assert cfg.postprocess.score_thresholds == [0.7, 0.2, 0.3] and cfg.postprocess.nms_iou == 0.2



def test_training_settings_stay_in_the_bundle_and_the_runtime_ignores_them(saved, copy_of, default_bundle):
    """docs/BUNDLE.md "Config schema": loss weights, target-assignment thresholds and max_voxels_train stay in
    detector_config (a bundle's model can be fine-tuned or its loss measured without its YAML; bundles written
    before this decision load unchanged), and nothing the runtime computes depends on them."""
    from clean_ros.inference.pipeline import Pipeline

    path, _, cfg = saved
    b = load_bundle(path)
    assert b.manifest["detector_config"]["head"]["loss"]["box_weight"] == cfg.head.loss.box_weight == 2.0
    assert b.detector_config.head.loss == cfg.head.loss
    assert [a.matched_threshold for a in b.detector_config.head.anchors] == [0.6, 0.5, 0.5]
    old = load_bundle(default_bundle).detector_config  # the shipped bundle, written with this layout
    assert old.head.loss.cls_weight == 1.0 and old.head.anchors[0].unmatched_threshold == 0.45

    edited = copy_of()

    def change_training_settings(m):
        head = m["detector_config"]["head"]
        head["loss"].update(cls_weight=7.0, box_weight=0.1, focal_gamma=3.0, code_weights=[2.0] * 7)
        for anchor in head["anchors"]:
            anchor.update(matched_threshold=0.9, unmatched_threshold=0.05)
        head.update(gaussian_overlap=0.5, min_radius=1, max_objects=3)
        m["detector_config"]["max_voxels_train"] = 5

    _edit_manifest(edited, change_training_settings)
    assert load_bundle(edited).detector_config.head.loss.cls_weight == 7.0
    points = cloud(cfg)
    detections = []
    for bundle in (path, edited):
        pipe = Pipeline.from_bundle(bundle, backend="torch")
        pipe.update_postprocess(score_thresholds=0.0)  # untrained weights score low: keep every box NMS keeps
        detections.append(pipe(points).detections)
    a, c = detections
    assert len(a) > 3
    for x, y in [(a.boxes, c.boxes), (a.scores, c.scores), (a.labels, c.labels)]:
        assert np.array_equal(x, y)


# ------------------------------------------------------------------------------------------- errors
def test_not_a_directory_and_missing_manifest(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="is a directory .*this is a file"):
        load_bundle(tmp_path / "file")
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{\n  \"format\": \n")
    with pytest.raises(BundleError, match=r"manifest.json:3: invalid JSON"):
        load_bundle(tmp_path)


def test_manifest_field_reads_one_field_or_gives_none(saved, tmp_path):
    bundle = saved[0]
    assert manifest_field(bundle, "format") == "clean_ros.bundle"
    assert manifest_field(bundle, "no_such_field") is None
    assert manifest_field(tmp_path / "missing", "format") is None           # no folder
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    assert manifest_field(broken, "format") is None                         # unreadable: no answer, no traceback
    (broken / "manifest.json").write_text("[1, 2]")
    assert manifest_field(broken, "format") is None                         # JSON, but not an object


def test_missing_manifest_fields_are_named(copy_of):
    path = copy_of()
    _edit_manifest(path, lambda m: (m.pop("voxel_size"), m.pop("provenance")))
    with pytest.raises(BundleError, match="missing required fields 'voxel_size', 'provenance'"):
        load_bundle(path)


def test_wrong_field_types_are_named(copy_of):
    path = copy_of()
    _edit_manifest(path, lambda m: m.update(point_cloud_range="0 0 0 1 1 1"))
    with pytest.raises(BundleError, match="field 'point_cloud_range' must be a list"):
        load_bundle(path)
    _edit_manifest(path, lambda m: m.update(point_cloud_range=[0, 1, 2]))
    with pytest.raises(BundleError, match="'point_cloud_range' must be a list of 6 numbers"):
        load_bundle(path)
    _edit_manifest(path, lambda m: m.update(schema_version="1"))
    with pytest.raises(BundleError, match="'schema_version' must be an integer"):
        load_bundle(path)


def test_detector_config_errors_name_the_key(copy_of):
    path = copy_of()
    _edit_manifest(path, lambda m: m["detector_config"]["encoder"].update(widthz=[3]))
    with pytest.raises(BundleError, match="unknown key 'widthz'"):
        load_bundle(path)


def test_future_schema_version_is_refused(copy_of):
    path = copy_of()
    _edit_manifest(path, lambda m: m.update(schema_version=SCHEMA_VERSION + 7))
    with pytest.raises(BundleError, match=rf"written by a newer clean_ros: schema {SCHEMA_VERSION + 7}, "
                                          rf"this build .* reads <= {SCHEMA_VERSION}"):
        load_bundle(path)


@pytest.mark.parametrize("name", ["weights.safetensors", "model.onnx", "encoder.onnx"])
def test_hash_mismatch_names_the_file(copy_of, name):
    path = copy_of()
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"hash mismatch for {name}"):
        load_bundle(path)
    load_bundle(path, verify=False)  # verify=False skips hashing (the torch path then still checks weights)


def test_listed_file_missing(copy_of):
    path = copy_of()
    (path / "model.onnx").unlink()
    with pytest.raises(BundleError, match="file model.onnx listed in the manifest is missing"):
        load_bundle(path)


def test_corrupt_weights_are_a_clean_error(copy_of):
    path = copy_of()
    (path / "weights.safetensors").write_bytes((path / "weights.safetensors").read_bytes()[:1000])
    _rehash(path, "weights.safetensors")
    b = load_bundle(path)
    with pytest.raises(BundleError, match="corrupt weights: not a readable safetensors file"):
        b.build_detector()


def test_weight_shapes_not_matching_config(copy_of):
    path = copy_of()
    _edit_manifest(path, lambda m: m["detector_config"]["bev_backbone"].update(layer_widths=[[8, 9], [12, 12]]))
    b = load_bundle(path)
    with pytest.raises(BundleError, match=r"weights do not match .* shapes differ \(first: "
                                          r"bev_backbone\.blocks\.0\.\d+\.weight: file \(8, 8, 3, 3\) vs config"):
        b.build_detector()


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_weights_are_never_executed(copy_of, tmp_path, writer):
    path = copy_of()
    marker = tmp_path / "marker.txt"
    payload = {"encoder.linears.0.weight": _Exploit(marker)}
    if writer == "pickle":
        (path / "weights.safetensors").write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path / "weights.safetensors")
    # Sanity: this payload really does run code when unpickled naively.
    probe = tmp_path / "probe.txt"
    pickle.loads(pickle.dumps({"x": _Exploit(probe)}))
    assert probe.exists()
    _rehash(path, "weights.safetensors")  # even with a matching hash the file is never unpickled
    for verify in (True, False):
        with pytest.raises(BundleError, match="corrupt weights"):
            load_bundle(path, verify=verify).build_detector()
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- saving
def test_save_is_atomic_and_replaces_only_when_complete(saved, tmp_path, monkeypatch):
    _, model, cfg = saved
    out = tmp_path / "b"
    save_bundle(out, model, cfg, export_onnx=False, provenance={"method": "first"})
    assert set(p.name for p in out.iterdir()) == {"manifest.json", "weights.safetensors"}
    assert load_bundle(out).onnx_path is None

    import clean_ros.inference.onnx_export as onnx_export

    def boom(*args, **kwargs):
        raise RuntimeError("export failed half way")

    monkeypatch.setattr(onnx_export, "export_dense_onnx", boom)
    with pytest.raises(RuntimeError, match="half way"):
        save_bundle(out, model, cfg, provenance={"method": "second"})
    assert load_bundle(out).manifest["provenance"]["method"] == "first"  # the old bundle is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary directory left behind
    monkeypatch.undo()
    save_bundle(out, model, cfg, export_onnx=False, provenance={"method": "third"})
    assert load_bundle(out).manifest["provenance"]["method"] == "third"
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_save_rejects_unserialisable_metadata(saved, tmp_path):
    _, model, cfg = saved
    with pytest.raises(BundleError, match=r"metrics.ap: object is not JSON-serialisable"):
        save_bundle(tmp_path / "b", model, cfg, metrics={"ap": object()}, export_onnx=False)
    assert not (tmp_path / "b").exists()



# ------------------------------------------------------------------------------------------- training/export.py
def test_export_cli_turns_a_trainer_checkpoint_into_a_bundle(saved, tmp_path, capsys):
    from clean_ros.yaml_config import save_yaml
    from training import export
    from training.checkpoint import TrainingState, atomic_torch_save, build_checkpoint

    _, model, cfg = saved
    ckpt = tmp_path / "last.pt"
    atomic_torch_save(build_checkpoint(model_state=model.state_dict(), loss_terms={}, optimizer_state={},
                                       scheduler_state={}, scaler_state={},
                                       state=TrainingState(global_step=42, metrics={"mAP": 3.5}), config_yaml=""),
                      ckpt)
    config = save_yaml(cfg, tmp_path / "detector.yaml")
    out = tmp_path / "bundle"
    assert export.main(["--checkpoint", str(ckpt), "--config", str(config), "--out", str(out),
                        "--method", "baseline", "--pruning-ratio", "0.5"]) == 0
    b = load_bundle(out)
    assert b.manifest["metrics"] == {"mAP": 3.5, "train_global_step": 42}
    assert b.manifest["provenance"]["pruning_ratio"] == 0.5 and b.manifest["provenance"]["checkpoint"] == str(ckpt)
    for k, v in model.state_dict().items():
        assert torch.equal(b.state_dict()[k], v)
    # A checkpoint that does not fit the config: one line, exit 2, nothing written.
    assert export.main(["--checkpoint", str(ckpt), "--config", str(config), "--out", str(tmp_path / "bad"),
                        "--set", "encoder.widths=[16]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "weights do not fit the model" in err and "encoder.linears.0.weight" in err
    assert not (tmp_path / "bad").exists()
