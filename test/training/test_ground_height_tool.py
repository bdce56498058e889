"""training/ground_height.py: a dataset's ground height, recorded into a bundle's manifest without breaking it; bad
input is one line and exit 2, and leaves the bundle as it was."""
import shutil

import numpy as np
import pytest

from clean_ros.cloud.kitti import read_velodyne
from clean_ros.inference.bundle import load_bundle
from clean_ros.inference.ground_plane import fit_ground_plane
from training import ground_height as tool


def test_the_split_s_ground_height_is_recorded_in_the_bundle(kitti_sample, default_bundle, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle, bundle)
    split = kitti_sample / "training"
    assert tool.main([str(split), "--bundle", str(bundle)]) == 0
    heights = [fit_ground_plane(read_velodyne(p)).height for p in sorted((split / "velodyne").glob("*.bin"))]
    expected = float(np.median(heights))
    out = capsys.readouterr().out
    assert f"ground height of {len(heights)} scans" in out and f"{expected:.4f} m below the sensor" in out
    loaded = load_bundle(bundle)  # hashes still verify: only the manifest changed
    assert loaded.ground_height == pytest.approx(expected, abs=1e-6)
    assert "ground_height.py on 6 scans" in loaded.manifest["provenance"]["ground_height_from"]
    assert loaded.manifest["files"] == load_bundle(default_bundle).manifest["files"]


@pytest.mark.parametrize("case, message", [("no_folder", "no velodyne/ folder"), ("no_ground", "cannot measure the ground height"),
                                           ("bad_bundle", "")])
def test_bad_input_is_one_line_and_leaves_the_bundle(case, message, kitti_sample, default_bundle, tmp_path, capsys):
    split = tmp_path / "split"
    shutil.copytree(kitti_sample / "training" / "velodyne", split / "velodyne")
    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle, bundle)
    before = (bundle / "manifest.json").read_text()
    args = [str(split), "--bundle", str(bundle)]
    if case == "no_folder":
        args = [str(tmp_path / "missing"), "--bundle", str(bundle)]
    elif case == "no_ground":
        for scan in (split / "velodyne").glob("*.bin"):
            points = read_velodyne(scan)
            points[:, 2] = np.abs(points[:, 0])  # every return on a steep slope: no ground plane
            points.tofile(scan)
    else:
        (bundle / "weights.safetensors").write_bytes(b"not weights")
    assert tool.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert (bundle / "manifest.json").read_text() == before
