"""The checks of `compress.py --plan` (training/compression/plan.py): is the dataset what the run needs, and can
the teacher be distilled into the student. Each failure is a ConfigError with one line (exit 2 in compress.py).

    check_kitti(cfg, datasets, class_names) -> (splits, warnings)   layout, ImageSets, frames, labels, classes, overlap
    simulated_splits(cfg) -> splits                                  a simulated dataset's split sizes from its config
    check_distillable(method, teacher, student)                      class lists + training.distill.check_pairing
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from clean_ros.yaml_config import ConfigError
from training.compression.compress_config import CompressConfig

KITTI_LAYOUT = "<root>/training/{velodyne,label_2,calib} and <root>/ImageSets/<split>.txt"


@dataclass
class SplitPlan:
    role: str  # "train" | "val" | "report"
    name: str
    frames: int
    objects: dict[str, int] | None  # model class -> label rows; None = not known yet (simulated later)


def kitti_layout_problem(root: Path) -> str | None:
    """Why `root` is not a KITTI object root (None when it is), with a hint when the layout is one folder down."""
    if not root.is_dir():
        return f"data.root {root}: dataset folder not found (expected {KITTI_LAYOUT})"
    missing = [sub for sub in ("velodyne", "label_2", "calib") if not (root / "training" / sub).is_dir()]
    if not missing:
        return None
    below = sorted(p.name for p in root.iterdir() if (p / "training" / "velodyne").is_dir())
    hint = f"; did you mean data.root={root / below[0]}?" if below else ""
    return f"data.root {root}: no training/{missing[0]} folder, not a KITTI object root (expected {KITTI_LAYOUT}){hint}"


def _split_roles(cfg: CompressConfig) -> list[tuple[str, str]]:
    d = cfg.data
    roles = [("train", d.train_split), ("val", d.val_split)]
    if d.eval_split != d.val_split:
        roles.append(("report", d.eval_split))
    return roles


def count_objects(dataset, class_names: list[str]) -> dict[str, int]:
    """Label rows per model class over every frame of a KittiDataset split (DontCare and other types not counted)."""
    from clean_ros.cloud.kitti import read_labels

    label_dir = dataset.split_dir / "label_2"
    names = [read_labels(label_dir / f"{frame}.txt").names for frame in dataset.frame_ids]  # one file per frame
    found, counts = np.unique(np.concatenate(names) if names else np.zeros(0, dtype=str), return_counts=True)
    table = dict(zip(found.tolist(), counts.tolist()))
    return {name: int(table.get(name, 0)) for name in class_names}


def check_kitti(cfg: CompressConfig, datasets, class_names: list[str]) -> tuple[list[SplitPlan], list[str]]:
    """Frames and objects of every split the run reads; ConfigError on a layout, listing or label problem."""
    from clean_ros.cloud.kitti import KittiFormatError

    root = Path(cfg.data.root)
    problem = kitti_layout_problem(root)
    if problem:
        raise ConfigError(problem)
    splits, frame_sets, warnings = [], {}, []
    for role, name in _split_roles(cfg):
        listing = root / "ImageSets" / f"{name}.txt"
        if not listing.is_file():
            raise ConfigError(f"data.root {root}: {listing.relative_to(root)} missing (data.{role}_split={name!r}); "
                              f"without it the split would be every frame, shared by training and evaluation")
        try:
            dataset = datasets.split(name)
            objects = count_objects(dataset, class_names)
        except KittiFormatError as exc:
            raise ConfigError(f"data: {exc}") from None
        frame_sets[role] = set(dataset.frame_ids)
        splits.append(SplitPlan(role, name, len(dataset), objects))
        empty = [c for c, n in objects.items() if n == 0]
        if empty and role == "train":
            raise ConfigError(f"data: class {empty[0]!r} has no objects in the training split {name!r} "
                              f"({len(dataset)} frames of {listing}); the models cannot learn it: fix the split or "
                              f"drop the class from the model's class_names")
        if empty:
            warnings.append(f"class {empty[0]!r} has no objects in split {name!r}: its AP is undefined there")
    evaluated = "report" if "report" in frame_sets else "val"
    shared = sorted(frame_sets["train"] & frame_sets[evaluated])
    if shared:
        raise ConfigError(f"data: {len(shared)} frame(s) of the training split are also in the evaluated split "
                          f"{cfg.data.eval_split!r}, e.g. {shared[:3]}: the report would score training frames")
    return splits, warnings


def simulated_splits(cfg: CompressConfig) -> list[SplitPlan]:
    """Frames per split of a simulated dataset from its config (the simulator's own split rule)."""
    from training.sim.writer import split_indices

    s, d = cfg.data.simulate, cfg.data
    train, val = split_indices(s.frames, s.val_fraction, s.seed)
    counts = {"train": len(train), "val": len(val) - s.test_frames, "report": s.test_frames or len(val)}
    return [SplitPlan(role, name, counts[role], None) for role, name in _split_roles(cfg)]


def check_simulated(cfg: CompressConfig, run, class_names: list[str]):
    """An already simulated dataset is counted like a KITTI root."""
    data = replace(cfg.data, source="kitti", root=str(run.data_root))
    return check_kitti(replace(cfg, data=data), run.datasets, class_names)


def check_distillable(method: str, teacher, student) -> None:
    """ConfigError when `method` cannot distil this teacher (TwoStageDetector) into this student (Detector)."""
    from training.distill import check_pairing

    if method == "none":
        return
    t_classes, s_classes = list(teacher.rpn.cfg.class_names), list(student.cfg.class_names)
    if t_classes != s_classes:
        raise ConfigError(f"distill.method={method}: teacher classes {t_classes} != student classes {s_classes}; "
                          f"the teacher's boxes reach the student by class index, so both need one class list")
    try:
        check_pairing(method, student, teacher.rpn)
    except ValueError as exc:
        raise ConfigError(f"distill.method={method}: this teacher and student cannot be distilled: {exc}") from None


def teacher_coverage(teacher, student) -> float:
    """Share (0-1) of the student's BEV area that the teacher's grid covers: CaKD advises only there
    (training.distill.cakd.inside_teacher_grid), and label assignment finds boxes only there."""
    s, t = student.grid, teacher.rpn.grid
    width = max(0.0, min(s.x_max, t.x_max) - max(s.x_min, t.x_min))
    height = max(0.0, min(s.y_max, t.y_max) - max(s.y_min, t.y_min))
    return width * height / ((s.x_max - s.x_min) * (s.y_max - s.y_min))


__all__ = ["SplitPlan", "KITTI_LAYOUT", "kitti_layout_problem", "count_objects", "check_kitti", "simulated_splits",
           "check_simulated", "check_distillable", "teacher_coverage"]
