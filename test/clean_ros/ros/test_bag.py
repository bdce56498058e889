"""clean_ros.ros.kitti_bag and clean_ros.ros.bag: a KITTI folder written as a rosbag2 (.mcap and .db3) reads back
with identical clouds and boxes."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy")
pytest.importorskip("rosbags")
from rosbags.interfaces import QosReliability  # noqa: E402
from rosbags.rosbag2.metadata import parse_qos  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from vision_msgs.msg import Detection3DArray  # noqa: E402

from clean_ros.ros.bag import (CALIB_TOPIC, GT_TOPIC, POINTS_TOPIC, BagError, BagReader,  # noqa: E402
                               KittiAnnotation, decode_kitti_id, encode_kitti_id, main, stamp_ns)
from clean_ros.ros.kitti_bag import DEFAULT_START_S, write_kitti_bag  # noqa: E402
from clean_ros.cloud.kitti import Calibration, boxes_camera_to_lidar, difficulty_levels, read_labels  # noqa: E402
from clean_ros.ros.messages import from_detection3d_array  # noqa: E402
from clean_ros.cloud.pointcloud import read_points  # noqa: E402

pytestmark = pytest.mark.ros


def _type_description(package: str, name: str) -> dict | None:
    """rosidl's type description (with the RIHS01 hash) from the ament index, else the venv's share/."""
    candidates = [Path(sys.prefix) / "share" / package / "msg" / f"{name}.json"]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.insert(0, Path(get_package_share_directory(package)) / "msg" / f"{name}.json")
    except Exception:  # noqa: BLE001 - no ament index
        pass
    path = next((c for c in candidates if c.is_file()), None)
    return json.loads(path.read_text()) if path is not None else None


@pytest.mark.parametrize("fmt,distro,version", [("mcap", "kilted", 9), ("db3", "humble", 8)])
def test_kitti_bag_reads_back_identical(kitti_sample, tmp_path, fmt, distro, version):
    out = tmp_path / "kitti_bag"
    summary = write_kitti_bag(kitti_sample, out, split="val", rate_hz=10.0, fmt=fmt, distro=distro)
    ids = summary["ids"]
    assert ids == [f"{i:06d}" for i in range(6)]  # no ImageSets in the sample: every training frame
    meta = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == version and meta["storage_identifier"] == {"mcap": "mcap", "db3": "sqlite3"}[fmt]
    topics = {t["topic_metadata"]["name"]: t for t in meta["topics_with_message_count"]}
    assert {n: t["message_count"] for n, t in topics.items()} == {POINTS_TOPIC: 6, GT_TOPIC: 6, CALIB_TOPIC: 6}
    qos = {n: parse_qos(t["topic_metadata"]["offered_qos_profiles"]) for n, t in topics.items()}
    assert [(q.reliability, q.depth) for q in qos[POINTS_TOPIC]] == [(QosReliability.BEST_EFFORT, 1)]
    assert [q.reliability for q in qos[GT_TOPIC]] == [QosReliability.RELIABLE]
    if version == 9:  # the type hashes a ROS install computes (our vision_msgs build records them in share/)
        for topic, package, name in ((POINTS_TOPIC, "sensor_msgs", "PointCloud2"),
                                     (GT_TOPIC, "vision_msgs", "Detection3DArray")):
            description = _type_description(package, name)
            if description is not None:
                expected = next(h["hash_string"] for h in description["type_hashes"]
                                if h["type_name"] == f"{package}/msg/{name}")
                assert topics[topic]["topic_metadata"]["type_description_hash"] == expected

    base = kitti_sample / "training"
    with BagReader(out) as reader:
        clouds = list(reader.messages(POINTS_TOPIC, PointCloud2))
        truths = list(reader.messages(GT_TOPIC, Detection3DArray))
        calibs = list(reader.messages(CALIB_TOPIC, String))
    assert len(clouds) == len(truths) == len(calibs) == 6
    for k, frame in enumerate(ids):
        expected_ns = int(DEFAULT_START_S * 1e9) + k * 100_000_000
        (t_cloud, cloud), (t_gt, gt), (t_calib, calib) = clouds[k], truths[k], calibs[k]
        assert t_cloud == t_gt == t_calib == expected_ns
        assert stamp_ns(cloud.header) == stamp_ns(gt.header) == expected_ns
        assert cloud.header.frame_id == gt.header.frame_id == "velodyne"
        assert [f.name for f in cloud.fields] == ["x", "y", "z", "intensity"] and cloud.point_step == 16
        points, _ = read_points(cloud, ("x", "y", "z", "intensity"), remove_nan=False)
        original = np.fromfile(base / "velodyne" / f"{frame}.bin", dtype=np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(points, original)  # bit-identical cloud

        calib_text = (base / "calib" / f"{frame}.txt").read_text()
        assert calib.data == calib_text
        labels = read_labels(base / "label_2" / f"{frame}.txt")
        kept = labels.select(labels.names != "DontCare")
        expected = boxes_camera_to_lidar(kept.location, kept.dimensions, kept.rotation_y,
                                         Calibration.from_text(calib_text))
        boxes, scores, names = from_detection3d_array(gt)
        assert names == kept.names.tolist()
        np.testing.assert_allclose(boxes[:, :6], expected[:, :6], atol=1e-5)
        yaw_error = (boxes[:, 6] - expected[:, 6] + np.pi) % (2 * np.pi) - np.pi
        np.testing.assert_allclose(yaw_error, 0.0, atol=1e-5)
        np.testing.assert_array_equal(scores, 1.0)
        annotations = [decode_kitti_id(d.id) for d in gt.detections]
        assert [a.difficulty for a in annotations] == difficulty_levels(kept).tolist()
        np.testing.assert_array_equal([a.truncation for a in annotations], kept.truncation)
        np.testing.assert_array_equal([a.occlusion for a in annotations], kept.occlusion)
        np.testing.assert_array_equal([a.bbox for a in annotations], kept.bbox.reshape(-1, 4))
        np.testing.assert_array_equal([a.alpha for a in annotations], kept.alpha)
    assert summary["boxes"] == sum(len(t.detections) for _, t in truths) > 0


def test_kitti_id_encoding_is_exact_and_ignores_other_ids():
    ann = KittiAnnotation(2, 0.33, 1, (614.24, 181.78, 727.31, 284.77), -1.5707963)
    assert decode_kitti_id(encode_kitti_id(ann)) == ann
    assert decode_kitti_id("0") is None and decode_kitti_id("kitti;diff=x") is None


def test_testing_split_has_no_ground_truth(kitti_sample, tmp_path):
    summary = write_kitti_bag(kitti_sample, tmp_path / "test_bag", split="test", max_frames=2)
    assert summary["frames"] == 2 and not summary["ground_truth"]
    with BagReader(tmp_path / "test_bag") as reader:
        assert set(reader.topics) == {POINTS_TOPIC, CALIB_TOPIC}


def test_bad_dataset_leaves_no_bag(kitti_sample, tmp_path, capsys):
    root = tmp_path / "kitti"
    shutil.copytree(kitti_sample / "training", root / "training")
    (root / "training/label_2/000003.txt").write_text("Car 0.0 0 oops\n")
    out = tmp_path / "bad_bag"
    assert main(["from-kitti", str(root), str(out)]) == 2
    err = capsys.readouterr().err
    assert "000003.txt:1" in err and "Traceback" not in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["kitti"]  # no partial or temp bag
    with pytest.raises(BagError, match="exists already"):
        write_kitti_bag(kitti_sample, root, max_frames=1)


def test_reader_errors_are_clear(kitti_sample, tmp_path):
    with pytest.raises(BagError, match="no such bag"):
        BagReader(tmp_path / "missing")
    with pytest.raises(BagError, match="no metadata.yaml"):
        BagReader(kitti_sample)
    out = tmp_path / "bag"
    write_kitti_bag(kitti_sample, out, max_frames=2)
    storage = next(out.glob("*.mcap"))
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
    with pytest.raises(BagError, match="corrupt or truncated"):
        BagReader(out)
