"""clean_ros.cloud.kitti: the frames of a KITTI-layout folder (split_frame_ids)."""
from __future__ import annotations

from pathlib import Path

import pytest

from clean_ros.cloud.kitti import split_frame_ids


def _split_folder(path: Path, stems=("000003", "000000", "000001")) -> Path:
    (path / "velodyne").mkdir(parents=True)
    for stem in stems:
        (path / "velodyne" / f"{stem}.bin").write_bytes(b"")
    (path / "velodyne" / "notes.txt").write_text("not a scan")
    return path


def test_a_split_folder_lists_its_scans_or_reads_a_listing_beside_or_above_it(tmp_path):
    split = _split_folder(tmp_path / "kitti" / "training")
    assert split_frame_ids(split, None) == (split, ["000000", "000001", "000003"], str(split / "velodyne"))
    (tmp_path / "kitti" / "ImageSets").mkdir()
    (tmp_path / "kitti" / "ImageSets" / "val.txt").write_text("000003\n\n  000001  \n")
    above = tmp_path / "kitti" / "ImageSets" / "val.txt"
    assert split_frame_ids(split, "val") == (split, ["000003", "000001"], str(above))
    (split / "ImageSets").mkdir()
    (split / "ImageSets" / "val.txt").write_text("000000\n")  # the split folder's own listing comes first
    assert split_frame_ids(str(split), "val") == (split, ["000000"], str(split / "ImageSets" / "val.txt"))


def test_a_root_with_training_velodyne(tmp_path):
    root = tmp_path / "kitti"
    split = _split_folder(root / "training")
    assert split_frame_ids(root, None) == (split, ["000000", "000001", "000003"], str(split / "velodyne"))
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("000001\n000000\n")
    assert split_frame_ids(root, "train") == (split, ["000001", "000000"], str(root / "ImageSets" / "train.txt"))


def _message(folder, split) -> str:
    with pytest.raises(ValueError) as info:
        split_frame_ids(folder, split)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_errors_are_one_line_naming_the_path(tmp_path):
    root = tmp_path / "kitti"
    split = _split_folder(root / "training")
    # a root's listing is read from root/ImageSets only; a split folder's from beside and above it
    assert _message(root, "val") == f"--split val: no {root / 'ImageSets' / 'val.txt'}"
    assert _message(split, "val") == (f"--split val: no {split / 'ImageSets' / 'val.txt'} or "
                                      f"{root / 'ImageSets' / 'val.txt'}")
    (root / "ImageSets").mkdir()
    listing = root / "ImageSets" / "val.txt"
    listing.write_text("\n  \n")
    assert _message(root, "val") == f"{listing}: no frames"
    listing.write_bytes(b"000000\n\xff\xfe\n")
    text = _message(root, "val")
    assert text.startswith(f"{listing}: cannot read the frame list: ") and "utf-8" in text
    listing.unlink()
    listing.mkdir()  # not a file: the listing is missing
    assert _message(root, "val").startswith("--split val: no ")
    empty = tmp_path / "empty"
    (empty / "velodyne").mkdir(parents=True)
    assert _message(empty, None) == f"{empty / 'velodyne'}: no frames"
    assert _message(tmp_path / "nowhere", None).startswith(f"{tmp_path / 'nowhere'}: no velodyne/ folder "
                                                           "(nor training/velodyne/)")


@pytest.mark.parametrize("line", ["../../etc/passwd", "sub/000001", "..", "000001 000002", "000001\t2", "a\\b"])
def test_a_listed_path_is_not_a_frame_id(tmp_path, line):
    root = tmp_path / "kitti"
    _split_folder(root / "training")
    (root / "ImageSets").mkdir()
    listing = root / "ImageSets" / "val.txt"
    listing.write_text(f"000000\n{line}\n")
    assert _message(root, "val").startswith(f"{listing}: {line!r} is not a frame id")


def test_an_optional_listing_falls_back_to_every_scan(tmp_path):
    root = tmp_path / "kitti"
    split = _split_folder(root / "training")
    every = (split, ["000000", "000001", "000003"], str(split / "velodyne"))
    assert split_frame_ids(root, "val", listing_required=False) == every
    assert split_frame_ids(split, "val", listing_required=False) == every
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "val.txt").write_text("000001\n")
    assert split_frame_ids(split, "val", listing_required=False) == (split, ["000001"],
                                                                     str(root / "ImageSets" / "val.txt"))
    (root / "ImageSets" / "val.txt").write_text("\n")  # a listing that is there but empty is still an error
    with pytest.raises(ValueError, match="val.txt: no frames"):
        split_frame_ids(split, "val", listing_required=False)


def test_frames_without_names_the_listed_frames_lacking_a_file(tmp_path):
    """One check of 'every listed frame has its file', shared by the bag writer, KittiDataset and real_check."""
    from clean_ros.cloud.kitti import frames_without

    (tmp_path / "velodyne").mkdir()
    (tmp_path / "label_2").mkdir()
    for i in ("000000", "000002"):
        (tmp_path / "velodyne" / f"{i}.bin").write_bytes(b"")
    (tmp_path / "label_2" / "000002.txt").write_text("")
    ids = ["000002", "000001", "000000", "000003"]
    assert frames_without(tmp_path, ids) == ["000001", "000003"]  # listing order
    assert frames_without(tmp_path, ids, "label_2", ".txt") == ["000001", "000000", "000003"]
    assert frames_without(tmp_path, ["000000"]) == []
