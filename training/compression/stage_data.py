"""Stage `data`: simulate the dataset into the run folder (or check a KITTI root) and count each split's frames."""
from __future__ import annotations

import copy
from pathlib import Path

from clean_ros.yaml_config import ConfigError
from training.compression.run_context import CompressRun


def prepare_data(run: CompressRun, folder: Path) -> dict:
    d = run.cfg.data
    if d.source == "simulate":
        summary = _simulate(run)
    else:
        summary = {}
    counts = {}
    for split in dict.fromkeys((d.train_split, d.val_split, d.eval_split)):
        try:
            counts[split] = len(run.datasets.split(split))
        except Exception as exc:  # KittiLayoutError and friends: a user's dataset
            raise ConfigError(f"data: {exc}") from None
    summary["frames"] = counts
    return summary


def split_report_frames(held_out: list[str], test_frames: int) -> tuple[list[str], list[str]]:
    """(val, reported): the last test_frames held-out frames become the reported split, the rest stay val."""
    return held_out[:-test_frames], held_out[-test_frames:]


def simulated_splits(section, report_split: str = "holdout") -> dict[str, list[str]]:
    """The frame ids per split that the data stage gives a data.simulate section, computed without simulating
    (the simulator's train / val split is a seeded permutation of the frame ids alone)."""
    from training.sim.writer import split_indices

    train, val = split_indices(section.frames, section.val_fraction, section.seed)
    ids = lambda xs: [f"{i:06d}" for i in xs]  # noqa: E731
    splits = {"train": ids(train), "val": ids(val)}
    if section.test_frames:
        splits["val"], splits[report_split or "holdout"] = split_report_frames(splits["val"], section.test_frames)
    return splits


def simulator_config(section):
    """The training.sim SimConfig of a data.simulate section (its overrides + val_fraction); ConfigError if bad."""
    from training.sim.sim_config import SimConfigError, config_from_dict

    overrides = copy.deepcopy(section.overrides)
    overrides.setdefault("dataset", {})["val_fraction"] = section.val_fraction
    try:
        return config_from_dict(overrides, "data.simulate.overrides")
    except SimConfigError as exc:
        raise ConfigError(str(exc)) from None


def _simulate(run: CompressRun) -> dict:
    from training.simulate import simulate_dataset

    d, s = run.cfg.data, run.cfg.data.simulate
    sim_cfg = simulator_config(s)
    run.log(f"    simulating {s.frames} frames (seed {s.seed}, azimuth "
            f"{sim_cfg.sensor.azimuth_resolution_deg} deg) into {run.data_root}")
    stats = simulate_dataset(sim_cfg, run.data_root, s.frames, s.seed, s.workers, progress=run.progress)
    summary = {k: round(float(v), 3) for k, v in stats.items()}
    sets = run.data_root / "ImageSets"
    if s.test_frames:
        val, report = split_report_frames((sets / "val.txt").read_text().split(), s.test_frames)
        (sets / "val.txt").write_text("\n".join(val) + "\n")
        (sets / f"{d.report_split or 'holdout'}.txt").write_text("\n".join(report) + "\n")
    # the simulator names its splits train / val; honour other names by listing them too
    for wanted, have in ((d.train_split, "train"), (d.val_split, "val")):
        if wanted != have:
            (sets / f"{wanted}.txt").write_text((sets / f"{have}.txt").read_text())
    return summary


__all__ = ["prepare_data", "simulated_splits", "simulator_config", "split_report_frames"]
