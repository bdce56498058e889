"""Simulator: determinism, KITTI file formats, boxes hold their points, occlusion is real, difficulties make sense."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clean_ros.cloud.geometry import points_in_boxes
from clean_ros.cloud.kitti import Calibration, boxes_camera_to_lidar, difficulty_levels, read_labels
from training.sim.calib import KITTI_CALIB_TEXT
from training.sim.sim_config import SimConfigError, config_from_dict, load_config
from training.sim.generate import generate_frame, scan_scene
from training.sim.ground import Ground
from training.sim.scene import SceneBuilder, model_parts
from training.simulate import simulate_dataset

REPO = Path(__file__).resolve().parents[3]
# coarse azimuth keeps a frame well under a second; everything else is the default sensor and scene
FAST = {"sensor": {"azimuth_resolution_deg": 0.4}, "dataset": {"val_fraction": 0.5, "test_frames": 1}}


@pytest.fixture(scope="module")
def fast_cfg():
    return config_from_dict(FAST)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, fast_cfg):
    out = tmp_path_factory.mktemp("sim") / "a"
    simulate_dataset(fast_cfg, out, n_frames=2, seed=7, workers=1, progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_other_seed_differs(dataset, fast_cfg, tmp_path):
    again = tmp_path / "b"
    simulate_dataset(fast_cfg, again, n_frames=2, seed=7, workers=2, progress=False)  # also: workers do not matter
    first, second = _files(dataset), _files(again)
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)
    other = tmp_path / "c"
    simulate_dataset(fast_cfg, other, n_frames=1, seed=8, workers=1, progress=False)
    assert (other / "training/velodyne/000000.bin").read_bytes() != first["training/velodyne/000000.bin"]
    assert (other / "training/label_2/000000.txt").read_bytes() != first["training/label_2/000000.txt"]


def test_dataset_has_kitti_layout_and_formats(dataset):
    expected = {f"training/{d}/00000{i}.{ext}" for d, ext in (("velodyne", "bin"), ("label_2", "txt"), ("calib", "txt"))
                for i in (0, 1)}
    expected |= {"testing/velodyne/000000.bin", "testing/calib/000000.txt"}
    expected |= {f"ImageSets/{s}.txt" for s in ("train", "val", "trainval", "test")}
    files = _files(dataset)
    assert set(files) == expected  # and no leftover temp files
    for i in (0, 1):
        raw = files[f"training/velodyne/00000{i}.bin"]
        assert len(raw) % 16 == 0
        points = np.frombuffer(raw, dtype="<f4").reshape(-1, 4)
        assert 20_000 < len(points) < 200_000
        assert np.isfinite(points).all()
        assert points[:, 3].min() >= 0 and points[:, 3].max() <= 1
        assert np.linalg.norm(points[:, :3], axis=1).max() < 120.5
        lines = files[f"training/label_2/00000{i}.txt"].decode().splitlines()
        assert lines and all(len(line.split()) == 15 for line in lines)
        calib_text = files[f"training/calib/00000{i}.txt"].decode()
        keys = [line.split(":")[0] for line in calib_text.splitlines() if line]
        assert keys == ["P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo"]
        Calibration.from_file(dataset / f"training/calib/00000{i}.txt")
    sets = {s: files[f"ImageSets/{s}.txt"].decode().split() for s in ("train", "val", "trainval")}
    assert sorted(sets["train"] + sets["val"]) == sets["trainval"] == ["000000", "000001"]
    assert len(sets["val"]) == 1


def test_embedded_calibration_is_kittis(kitti_sample):
    assert KITTI_CALIB_TEXT == (kitti_sample / "training/calib/000000.txt").read_text()


def test_every_label_box_contains_all_its_object_points(dataset, fast_cfg):
    calib = Calibration.from_file(dataset / "training/calib/000000.txt")
    for i in (0, 1):
        frame = generate_frame(fast_cfg, 7, i)  # the frame in memory knows which object each return belongs to
        written = np.fromfile(dataset / f"training/velodyne/00000{i}.bin", dtype=np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(written, frame.points)
        labels = read_labels(dataset / f"training/label_2/00000{i}.txt")
        assert list(labels.names) == list(frame.labels.objects.names)
        boxes = boxes_camera_to_lidar(labels.location, labels.dimensions, labels.rotation_y, calib)
        inside = points_in_boxes(torch.from_numpy(written[:, :3].astype(np.float64)), torch.from_numpy(boxes)).numpy()
        for k, obj in enumerate(frame.labels.object_index):
            mine = frame.point_owner == obj
            assert mine.sum() >= 1
            assert inside[mine, k].all(), f"frame {i} label {k} ({labels.names[k]}) misses some of its points"
            # tight: the box is not much bigger than the object's own extent
            assert (labels.dimensions[k] <= frame.scene.boxes[obj, [5, 4, 3]] + 0.12).all()


def test_labels_parse_and_difficulties_are_sane(dataset):
    all_labels = [read_labels(dataset / f"training/label_2/00000{i}.txt") for i in (0, 1)]
    names = np.concatenate([l.names for l in all_labels])
    assert {"Car", "Pedestrian", "Cyclist"} <= set(names)
    assert set(names) <= {"Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Misc", "DontCare"}
    for labels in all_labels:
        assert ((labels.truncation >= 0) & (labels.truncation <= 1)).all()
        assert set(labels.occlusion.tolist()) <= {0, 1, 2, 3}
        assert (labels.bbox[:, 2] > labels.bbox[:, 0]).all() and (labels.bbox[:, 3] > labels.bbox[:, 1]).all()
        assert (labels.bbox[:, [0, 2]] <= 1241).all() and (labels.bbox[:, [1, 3]] <= 374).all()
        assert (labels.location[:, 2] > 0).all()  # in front of the camera
        level = difficulty_levels(labels)
        height = labels.bbox[:, 3] - labels.bbox[:, 1]
        # the devkit's rules, checked on our own numbers
        assert ((level == 0) == ((height >= 40) & (labels.occlusion == 0) & (labels.truncation <= 0.15))).all()
        assert (labels.occlusion[level == 1] <= 1).all()
    levels = np.concatenate([difficulty_levels(l) for l in all_labels])
    occl = np.concatenate([l.occlusion for l in all_labels])
    assert (levels == 0).any() and (levels >= 1).any()
    assert (occl == 0).any() and (occl >= 1).any()


def _two_car_scene(with_front_car: bool, ground: Ground):
    rng = np.random.default_rng(0)
    builder = SceneBuilder(ground, rng)
    target_parts = model_parts("Car", np.random.default_rng(1))
    if with_front_car:
        builder.try_add(model_parts("Van", np.random.default_rng(2)), 12.0, -0.3, 0.0, "Van")  # hides most of it
    builder.try_add(target_parts, 22.0, 0.3, 0.0, "Car")
    return builder.build()


def test_occluded_object_gets_fewer_points_and_higher_occlusion(fast_cfg):
    ground = Ground(base=-1.73, slope=(0.0, 0.0), undulation=np.zeros((0, 4)), road_heading=0.0, road_centre=0.0,
                    n_lanes=4, lane_width=3.5, kerb_height=0.15, pavement_width=3.0)
    results = {}
    for occluded in (False, True):
        scene = _two_car_scene(occluded, ground)
        frame = scan_scene(scene, fast_cfg, np.random.default_rng(5))
        target = len(scene.names) - 1
        n_points = int((frame.point_owner == target).sum())
        k = list(frame.labels.object_index).index(target) if target in frame.labels.object_index else None
        occlusion = frame.labels.objects.occlusion[k] if k is not None else 3
        results[occluded] = (n_points, occlusion)
    (alone, occl_alone), (hidden, occl_hidden) = results[False], results[True]
    assert alone > 50, results
    assert hidden < 0.5 * alone, results
    assert occl_alone == 0 and occl_hidden >= 2, results


def test_car_is_more_than_a_box(fast_cfg):
    """Returns from a car side-on trace body, narrower cabin and wheels: not one cuboid."""
    ground = Ground(-1.73, (0.0, 0.0), np.zeros((0, 4)), 0.0, 0.0, 4, 3.5, 0.15, 3.0)
    builder = SceneBuilder(ground, np.random.default_rng(0))
    builder.try_add(model_parts("Car", np.random.default_rng(3)), 8.0, 0.0, np.pi / 2, "Car")  # side-on
    frame = scan_scene(builder.build(), config_from_dict({}), np.random.default_rng(0))
    pts = frame.points[frame.point_owner == 0]
    box = frame.scene.boxes[0]
    top = pts[pts[:, 2] > box[2] + 0.3 * box[5]]  # upper part: the cabin
    low = pts[(pts[:, 2] < box[2]) & (pts[:, 2] > box[2] - 0.2 * box[5])]  # lower body
    # the cabin is shorter than the body (y is along the car here)
    assert np.ptp(top[:, 1]) < 0.8 * np.ptp(low[:, 1])
    assert len(pts) > 300


def test_config_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sensor:\n  azimuth_resolution: 0.2\n")
    with pytest.raises(SimConfigError, match="unknown key.*azimuth_resolution"):
        load_config(bad)
    with pytest.raises(SimConfigError, match="val_fraction"):
        config_from_dict({"dataset": {"val_fraction": 1.5}})
    with pytest.raises(SimConfigError, match="expected a list of 2"):
        config_from_dict({"scene": {"cars": 5}})
    run = subprocess.run([sys.executable, str(REPO / "training/simulate.py"), "--out", str(tmp_path / "o"),
                          "--frames", "1", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "unknown key" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "o" / "training").exists()


def test_generated_dataset_loads_through_kitti_dataset(dataset):
    kitti_dataset = pytest.importorskip("training.data.kitti_dataset", reason="KITTI dataset class not in the tree")
    from training.data.data_config import DataConfig

    config = DataConfig(root=str(dataset))
    sizes = {split: len(kitti_dataset.KittiDataset(config, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 1, "val": 1, "test": 1}
    train = kitti_dataset.KittiDataset(config, "train")
    sample = train[0]
    assert sample.points.dtype == np.float32 and sample.points.shape[1] == 4 and len(sample.points) > 1000
    labels = read_labels(dataset / f"training/label_2/{sample.frame_id}.txt")
    wanted = np.isin(labels.names, list(config.class_names))
    assert wanted.any()
    assert len(sample.gt_boxes) >= 1 and (np.asarray(sample.gt_labels) >= 0).any()


@pytest.mark.parametrize("broken, message", [
    ("velodyne/000000.bin", "3 bytes is not a multiple of 16 bytes"),
    ("calib/000000.txt", "calib/000000.txt"),
])
def test_sim_real_plot_refuses_a_broken_real_frame_in_one_line(kitti_sample, tmp_path, capsys, broken, message):
    """training/sim/plot.py draws a real frame beside a simulated one; a truncated scan or a broken calibration is
    one 'error:' line and exit status 2, before anything is simulated or written."""
    import shutil

    from training.sim import plot

    root = tmp_path / "training"
    for sub in ("velodyne", "calib", "label_2"):
        shutil.copytree(kitti_sample / "training" / sub, root / sub)
    (root / broken).write_bytes(b"abc")
    assert plot.main(["--real-root", str(root), "--frame", "000000", "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "p.png").exists()
