"""training/intensity_level.py: a dataset's intensity level, recorded into a bundle's manifest without breaking it;
bad input is one line and exit 2, and leaves the bundle as it was."""
import json
import shutil

import numpy as np
import pytest

from clean_ros.cloud.kitti import read_velodyne
from clean_ros.inference.bundle import load_bundle
from clean_ros.inference.intensity_level import scan_intensity_level
from training import intensity_level as tool


def test_level_of_a_split_is_recorded_in_the_bundle(kitti_sample, default_bundle, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle, bundle)
    split = kitti_sample / "training"
    assert tool.main([str(split), "--bundle", str(bundle)]) == 0
    levels = [scan_intensity_level(read_velodyne(p)) for p in sorted((split / "velodyne").glob("*.bin"))]
    expected = float(np.median(levels))
    out = capsys.readouterr().out
    assert f"intensity level of {len(levels)} scans" in out and f"{expected:.4f}" in out
    loaded = load_bundle(bundle)  # hashes still verify: only the manifest changed
    assert loaded.intensity_level == pytest.approx(expected, abs=1e-6)
    assert "intensity_level.py on 6 scans" in loaded.manifest["provenance"]["intensity_level_from"]
    assert loaded.manifest["files"] == load_bundle(default_bundle).manifest["files"]


def test_a_root_with_a_split_listing(kitti_sample, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(kitti_sample / "training" / "velodyne", root / "training" / "velodyne")
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("000001\n000004\n")
    assert tool.main([str(root), "--split", "train"]) == 0
    levels = [scan_intensity_level(read_velodyne(root / "training" / "velodyne" / f"{i}.bin"))
              for i in ("000001", "000004")]
    out = capsys.readouterr().out
    assert "intensity level of 2 scans" in out and f"{float(np.median(levels)):.4f}" in out


@pytest.mark.parametrize("case", ["no_folder", "no_split", "no_intensity", "bad_bundle"])
def test_bad_input_is_one_line_and_leaves_the_bundle(case, kitti_sample, default_bundle, tmp_path, capsys):
    split = tmp_path / "split"
    shutil.copytree(kitti_sample / "training" / "velodyne", split / "velodyne")
    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle, bundle)
    args = [str(split)]
    if case == "no_folder":
        args = [str(tmp_path / "missing")]
    elif case == "no_split":
        args += ["--split", "val"]
    elif case == "no_intensity":
        for scan in (split / "velodyne").glob("*.bin"):
            points = read_velodyne(scan)
            points[:, 3] = 0
            points.tofile(scan)
        args += ["--bundle", str(bundle)]
    else:
        (bundle / "weights.safetensors").write_bytes(b"not weights")
        args += ["--bundle", str(bundle)]
    before = (bundle / "manifest.json").read_text()
    assert tool.main(args) == tool.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert (bundle / "manifest.json").read_text() == before
    assert json.loads(before).get("intensity_level") == load_bundle(default_bundle).intensity_level
