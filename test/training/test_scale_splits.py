"""scale_splits: the bigger root keeps the reference's held-out frames and trains on every other frame."""
from pathlib import Path

import pytest

from training.scale_splits import main, scale_splits


def _root(tmp: Path, name: str, n: int) -> Path:
    velo = tmp / name / "training" / "velodyne"
    velo.mkdir(parents=True)
    for i in range(n):
        (velo / f"{i:06d}.bin").write_bytes(b"")
    return tmp / name


def _sets(root: Path, **splits) -> None:
    (root / "ImageSets").mkdir()
    for name, ids in splits.items():
        (root / "ImageSets" / f"{name}.txt").write_text("\n".join(f"{i:06d}" for i in ids) + "\n")


def test_held_out_splits_copied_and_extra_frames_train(tmp_path):
    ref = _root(tmp_path, "ref", 8)
    _sets(ref, train=[0, 3, 5, 6], val=[1, 7], holdout=[2, 4], trainval=range(8))
    big = _root(tmp_path, "big", 12)
    counts = scale_splits(big, ref)
    read = lambda s: (big / "ImageSets" / f"{s}.txt").read_text().split()  # noqa: E731
    assert read("val") == ["000001", "000007"] and read("holdout") == ["000002", "000004"]
    assert read("train") == [f"{i:06d}" for i in (0, 3, 5, 6, 8, 9, 10, 11)]
    assert counts == {"train": 8, "val": 2, "holdout": 2}
    assert not (big / "ImageSets" / "trainval.txt").exists()


def test_too_few_frames_is_a_one_line_error(tmp_path, capsys):
    ref = _root(tmp_path, "ref", 8)
    _sets(ref, train=[0, 3, 5, 6], val=[1, 7], holdout=[2, 4])
    small = _root(tmp_path, "small", 5)
    with pytest.raises(ValueError, match="held-out frames of the reference are missing"):
        scale_splits(small, ref)
    assert main([str(small), str(ref)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err


def test_train_frames_keeps_the_reference_training_frames_then_the_first_new_ones(tmp_path):
    ref = _root(tmp_path, "ref", 8)
    _sets(ref, train=[0, 3, 5, 6], val=[1, 7], holdout=[2, 4])
    big = _root(tmp_path, "big", 12)
    assert scale_splits(big, ref, train_frames=6)["train"] == 6
    assert (big / "ImageSets" / "train.txt").read_text().split() == [f"{i:06d}" for i in (0, 3, 5, 6, 8, 9)]
    with pytest.raises(ValueError, match="between the reference's 4 training frames and the 8 available"):
        scale_splits(big, ref, train_frames=3)


def test_a_config_reference_gives_the_splits_its_data_stage_writes(tmp_path):
    """A fresh clone has no reference run: the splits of config/compress/results.yaml are computed from its
    data.simulate section (800 frames, seed 0, val_fraction 0.5, 300 reported)."""
    from training.sim.writer import split_indices

    cfg = tmp_path / "ref.yaml"
    cfg.write_text("data:\n  report_split: holdout\n  simulate: {frames: 10, seed: 3, val_fraction: 0.5, test_frames: 3}\n")
    big = _root(tmp_path, "big", 14)
    assert scale_splits(big, cfg) == {"train": 9, "val": 2, "holdout": 3}
    train, val = split_indices(10, 0.5, 3)
    read = lambda s: (big / "ImageSets" / f"{s}.txt").read_text().split()  # noqa: E731
    assert read("val") + read("holdout") == [f"{i:06d}" for i in val]
    assert read("train") == [f"{i:06d}" for i in train] + [f"{i:06d}" for i in range(10, 14)]


def test_a_config_reference_that_does_not_simulate_is_a_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "ref.yaml"
    cfg.write_text("data:\n  source: kitti\n  root: somewhere\n")
    big = _root(tmp_path, "big", 4)
    assert main([str(big), str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must simulate" in err
