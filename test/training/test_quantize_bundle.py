"""training/quantize_bundle.py: an int8 dense part added to a bundle (calibrated on simulated frames) that the
Pipeline runs on onnxruntime with detections close to the float model's; bad input is one line and exit 2 and leaves
the bundle as it was; int8 never falls back to a float backend."""
import json
import shutil

import numpy as np
import pytest
import torch

from clean_ros.cloud import geometry
from clean_ros.cloud.kitti import read_velodyne
from clean_ros.inference.backends import BackendError
from clean_ros.inference.bundle import INT8_ONNX_NAME, load_bundle, sha256_file
from clean_ros.inference.pipeline import Pipeline
from training import quantize_bundle as tool

pytest.importorskip("onnxruntime")


def _without_int8(bundle, out):
    """A copy of `bundle` without model.int8.onnx (a bundle as saved by the export stage)."""
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    if manifest["files"].pop(INT8_ONNX_NAME, None) is not None:
        (out / INT8_ONNX_NAME).unlink()
    manifest.pop("int8", None)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="module")
def sim_dataset(tmp_path_factory):
    """Four realistic simulated frames (the calibration data a release uses is simulated, never real)."""
    from training import simulate

    root = tmp_path_factory.mktemp("sim")
    assert simulate.main(["--out", str(root / "data"), "--frames", "4", "--seed", "11", "--preset", "realistic",
                          "--workers", "1", "--quiet"]) == 0
    return root / "data"


@pytest.fixture(scope="module")
def int8_bundle(sim_dataset, default_bundle, tmp_path_factory):
    """The default bundle without its int8 file, quantized again on 3 simulated frames into another folder."""
    root = tmp_path_factory.mktemp("q")
    plain = _without_int8(default_bundle, root / "plain")
    out = root / "bundle"
    assert tool.main([str(plain), "--data", str(sim_dataset), "--split", "train", "--frames", "3",
                      "--out", str(out)]) == 0
    assert load_bundle(plain).int8_onnx_path is None  # --out: the source is left as it was
    return out


def test_the_bundle_gains_a_verified_int8_file_and_its_record(int8_bundle, default_bundle, sim_dataset):
    bundle = load_bundle(int8_bundle)  # every hash verifies, the new file's included
    assert bundle.int8_onnx_path == int8_bundle / INT8_ONNX_NAME
    entry = bundle.manifest["files"][INT8_ONNX_NAME]
    assert entry == {"sha256": sha256_file(int8_bundle / INT8_ONNX_NAME),
                     "bytes": (int8_bundle / INT8_ONNX_NAME).stat().st_size}
    record = bundle.manifest["int8"]
    assert record["calibration"]["frames"] == 3 and record["calibration"]["split"] == "train"
    assert record["calibration"]["data"] == str(sim_dataset)
    assert record["float32_nodes"] and all("head" in n for n in record["float32_nodes"])
    # everything else is the source bundle's, byte for byte
    source = load_bundle(default_bundle).manifest["files"]
    assert ({k: v for k, v in bundle.manifest["files"].items() if k != INT8_ONNX_NAME}
            == {k: v for k, v in source.items() if k != INT8_ONNX_NAME})
    # int8 weights: the file is several times smaller than the float one
    assert (int8_bundle / INT8_ONNX_NAME).stat().st_size < 0.5 * (int8_bundle / "model.onnx").stat().st_size


def test_int8_pipeline_detects_what_the_float_one_does(int8_bundle, kitti_sample, sim_dataset, one_thread):
    floats = Pipeline.from_bundle(int8_bundle, backend="onnxruntime", intra_op_threads=1)
    ints = Pipeline.from_bundle(int8_bundle, backend="auto", intra_op_threads=1, int8=True)
    assert ints.backend_name == "onnxruntime" and "int8" in ints.describe()
    scans = [read_velodyne(kitti_sample / "training/velodyne/000000.bin"),
             read_velodyne(sim_dataset / "training/velodyne/000003.bin")]  # not a calibration frame
    for points in scans:
        voxels, _ = floats.preprocess(points)
        with torch.inference_mode():
            float_maps, _ = floats.raw_outputs(voxels)
            int_maps, _ = ints.raw_outputs(voxels)
        cls_f, cls_i = float_maps[0], int_maps[0]
        assert not torch.equal(cls_f, cls_i)  # it is another model...
        assert float((cls_f - cls_i).abs().mean()) < 0.25 * float(cls_f.std())  # ...computing the same function
        a, b = floats(points).detections, ints(points).detections
        assert len(a) >= 5
        iou = geometry.bev_iou(torch.from_numpy(a.boxes).double(), torch.from_numpy(b.boxes).double())
        assert int((iou.max(dim=1).values >= 0.5).sum()) >= 0.8 * len(a)


def test_int8_never_runs_on_another_backend_or_without_the_file(int8_bundle, default_bundle, tmp_path):
    with pytest.raises(BackendError, match="not on backend 'torch'"):
        Pipeline.from_bundle(int8_bundle, backend="torch", int8=True)
    plain = _without_int8(default_bundle, tmp_path / "plain")
    assert load_bundle(plain).int8_onnx_path is None
    with pytest.raises(BackendError, match="no model.int8.onnx; add one with python training/quantize_bundle.py"):
        Pipeline.from_bundle(plain, backend="auto", int8=True)


@pytest.mark.parametrize("case", ["no_split", "no_frames", "bad_bundle", "no_scans", "out_is_a_file"])
def test_bad_input_is_one_line_and_leaves_the_bundle(case, default_bundle, sim_dataset, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle, bundle)
    data = sim_dataset
    args = [str(bundle), "--data", str(data), "--frames", "2"]
    if case == "no_split":
        args += ["--split", "nope"]
    elif case == "no_frames":
        args[-1] = "0"
    elif case == "out_is_a_file":
        (tmp_path / "file").write_text("mine")
        args += ["--out", str(tmp_path / "file")]
    elif case == "bad_bundle":
        (bundle / "weights.safetensors").write_bytes(b"not weights")
    else:
        data = tmp_path / "data"
        shutil.copytree(sim_dataset, data)
        for scan in (data / "training" / "velodyne").glob("*.bin"):
            scan.unlink()
        (data / "training" / "velodyne" / "keep.bin").write_bytes(b"")
        args[2] = str(data)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    assert tool.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert not list(tmp_path.glob(".bundle.int8-*"))  # no staging folder left behind
    json.loads((bundle / "manifest.json").read_text())


def test_range_batch_never_divides_the_frame_count():
    """onnxruntime's calibrator fails when the frame count is a multiple of its merge size (64 frames, 8 per merge:
    the release's own calibration hit it); the merge size is chosen so that it never is."""
    for frames in [*range(1, 200), 840, 2520]:
        batch = tool.range_batch(frames)
        assert batch >= tool.RANGE_BATCH and frames % batch != 0
    assert tool.range_batch(64) == 9 and tool.range_batch(3) == 8


def test_the_source_bundle_is_only_read(default_bundle, sim_dataset, tmp_path):
    """Nothing is written into the source, not even for a moment (onnxruntime writes a shape-inferred copy next to
    the model it quantizes): an installed share/clean_ros/models/default is read-only. The folder's mtime would move
    with any file created or removed in it."""
    source = _without_int8(default_bundle, tmp_path / "installed")
    before = (source.stat().st_mtime_ns, sorted(p.name for p in source.iterdir()))
    assert tool.main([str(source), "--data", str(sim_dataset), "--split", "train", "--frames", "2",
                      "--out", str(tmp_path / "out")]) == 0
    assert (source.stat().st_mtime_ns, sorted(p.name for p in source.iterdir())) == before
    assert load_bundle(tmp_path / "out").int8_onnx_path is not None


def test_the_calibration_method_sets_the_ranges_and_is_recorded(default_bundle, sim_dataset, tmp_path):
    """--method percentile clips the activation ranges at a percentile instead of the extremes: another int8 file
    from the same frames, and the record names the method; an unknown method is refused before anything is read."""
    source = _without_int8(default_bundle, tmp_path / "plain")
    files = {}
    for method in ("minmax", "percentile"):
        out = tmp_path / method
        assert tool.main([str(source), "--data", str(sim_dataset), "--split", "train", "--frames", "2",
                          "--method", method, "--out", str(out)]) == 0
        assert load_bundle(out).manifest["int8"]["calibration"]["method"] == method
        files[method] = (out / INT8_ONNX_NAME).read_bytes()
    assert files["minmax"] != files["percentile"]
    with pytest.raises(tool.QuantizeError, match="--method 'median': choose one of minmax, percentile, entropy"):
        tool.quantize_bundle(source, sim_dataset, "train", 2, tmp_path / "bad", method="median")
    assert not (tmp_path / "bad").exists()
