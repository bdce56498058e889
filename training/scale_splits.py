"""Splits for a data-scaling run: a larger simulated root whose held-out frames are exactly a reference run's.

The simulator draws frame i from (seed, i) alone, so `simulate.py --frames 2000 --seed 0` repeats the 800 frames of
a results run (seed 0) as ids 0-799 and adds 1200 new ones. This writes the bigger root's ImageSets: every held-out
split of the reference (val, holdout, ...) copied as is, and `train` = every other frame of the bigger root, so the
extra frames only ever train and the reported numbers compare with the reference run's frame for frame.

    python training/scale_splits.py data/sim_x4 config/compress/results.yaml
    python training/scale_splits.py data/sim_x2 config/compress/results.yaml --train-frames 800
    python training/scale_splits.py data/sim_x4 runs/results/seed_0/stages/data/dataset

The reference is either a compress config with a data.simulate section (its splits are computed from frames, seed,
val_fraction and test_frames, exactly as its data stage writes them, without simulating or running anything) or a
dataset folder whose ImageSets are read.

--train-frames N keeps the reference's own training frames and the first new ones by frame id, N in all (a root
whose training/ folder links to a bigger root's gives the smaller steps of a scaling series).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clean_ros.atomic import atomic_write_text  # noqa: E402


def reference_splits(reference: Path) -> dict[str, list[str]]:
    """Frame ids per split of a reference: a compress config YAML with a data.simulate section, or a dataset folder
    (its ImageSets/*.txt). ValueError when neither gives any."""
    if reference.suffix in (".yaml", ".yml"):
        from clean_ros.yaml_config import ConfigError, load_config
        from training.compression.compress_config import CompressConfig
        from training.compression.stage_data import simulated_splits

        try:
            cfg = load_config(CompressConfig, reference, [])
        except (ConfigError, ValueError) as exc:
            raise ValueError(f"{reference}: {exc}") from None
        if cfg.data.source != "simulate":
            raise ValueError(f"{reference}: data.source is {cfg.data.source!r}; a config reference must simulate")
        return simulated_splits(cfg.data.simulate, cfg.data.report_split)
    ref_sets = reference / "ImageSets"
    return {p.stem: p.read_text().split() for p in sorted(ref_sets.glob("*.txt"))}


def scale_splits(root: Path, reference: Path, train_split: str = "train", train_frames: int = 0) -> dict[str, int]:
    """Write root/ImageSets from the reference's splits; returns frames per split. ValueError on a mismatch.
    train_frames > 0: the reference's training frames plus the first new ones, that many in all."""
    ref = reference_splits(reference)
    held = {name: ids for name, ids in ref.items() if name not in (train_split, "trainval", "test")}
    if not held:
        raise ValueError(f"{reference}: no held-out split lists (splits other than {train_split} / trainval)")
    frames = sorted(p.stem for p in (root / "training" / "velodyne").glob("*.bin"))
    have = set(frames)
    held_ids = set().union(*held.values())
    missing = sorted(held_ids - have)
    if missing:
        raise ValueError(f"{root}: {len(missing)} held-out frames of the reference are missing, e.g. {missing[0]}")
    ref_train = set(ref.get(train_split, []))
    if ref_train - have:
        raise ValueError(f"{root}: the reference's {train_split} frames are not all here; simulate at least as many "
                         "frames with the same seed")
    train = [f for f in frames if f not in held_ids]
    if train_frames:
        if not len(ref_train) <= train_frames <= len(train):
            raise ValueError(f"--train-frames {train_frames}: must be between the reference's {len(ref_train)} "
                             f"training frames and the {len(train)} available")
        extra = [f for f in train if f not in ref_train][:train_frames - len(ref_train)]
        train = sorted(ref_train | set(extra))
    sets = root / "ImageSets"
    sets.mkdir(parents=True, exist_ok=True)
    counts = {train_split: len(train)}
    for name, ids in {train_split: train, **held}.items():
        atomic_write_text(sets / f"{name}.txt", "\n".join(ids) + "\n")
        counts[name] = len(ids)
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="the bigger simulated dataset root (KITTI layout)")
    ap.add_argument("reference", type=Path, help="the reference: a compress config that simulates (e.g. config/compress/results.yaml) or a "
                    "dataset root whose ImageSets are copied")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--train-frames", type=int, default=0, help="0 = every frame that is not held out")
    args = ap.parse_args(argv)
    try:
        counts = scale_splits(args.root, args.reference, args.train_split, args.train_frames)
    except (OSError, ValueError) as exc:
        print(f"scale_splits: {exc}", file=sys.stderr)
        return 2
    print(", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
