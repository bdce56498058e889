"""CompressConfig: one compression run, from data to bundle. Loaded with clean_ros.yaml_config.load_config (YAML with
`_base_`, `--set a.b=value` overrides, unknown keys rejected); the resolved config is saved as runs/NAME/config.yaml.

Models come from the project's own training YAMLs (teacher: config/train/teacher_two_stage_tiny.yaml, student:
config/train/pointpillars_tiny.yaml); `set` lists are `--set`-style overrides applied to those TrainConfigs, and
`training` holds what every training stage shares (batch size, threads, ...). Distillation and pruning use the
teammates' own config dataclasses (training.distill.DistillConfig, training.prune.PruneConfig) unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Optional

from clean_ros.models.detector_config import IoUGateConfig
from clean_ros.yaml_config import to_dict
from training.distill.distill_config import DistillConfig
from training.prune.prune_config import PruneConfig


@dataclass
class SimulateConfig:
    """Simulated KITTI-layout data (training/sim), generated on first run into runs/NAME/stages/data/dataset."""

    frames: int = 200  # labelled frames, split into train / held-out by val_fraction
    seed: int = 0
    val_fraction: float = 0.2
    # of the held-out frames, this many form the separate reported split (data.report_split, default name
    # "holdout"; not "test", which KITTI reserves for the unlabelled testing/ folder); the rest stay `val` (tuning)
    test_frames: int = 0
    workers: int = 1  # processes generating frames
    overrides: dict[str, Any] = field(default_factory=dict)  # training.sim SimConfig values, e.g. {sensor: {...}}

    def __post_init__(self):
        if self.frames < 2:
            raise ValueError(f"simulate.frames must be >= 2 (train and val), got {self.frames}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"simulate.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.workers < 1 or self.seed < 0:
            raise ValueError("simulate.workers must be >= 1 and simulate.seed >= 0")
        held_out = self.frames - int(round(self.frames * (1.0 - self.val_fraction)))
        if self.test_frames < 0 or (self.test_frames and self.test_frames >= held_out):
            raise ValueError(f"simulate.test_frames must be >= 0 and leave some of the ~{held_out} held-out frames "
                             f"for validation, got {self.test_frames}")


@dataclass
class DataSection:
    source: Literal["simulate", "kitti"] = "simulate"
    root: str = ""  # kitti: the dataset root (KITTI object layout); simulate: ignored
    train_split: str = "train"
    val_split: str = "val"  # held-out frames for tuning
    # the held-out split the evaluate stage reports every model on ("" = val_split); tune on val, report on test
    report_split: str = ""
    simulate: SimulateConfig = field(default_factory=SimulateConfig)

    @property
    def eval_split(self) -> str:
        return self.report_split or self.val_split

    def root_in(self, run_dir: Path) -> Path:
        """The dataset root of a run in run_dir: simulated into run_dir/stages/data/dataset, else data.root."""
        return Path(run_dir) / "stages" / "data" / "dataset" if self.source == "simulate" else Path(self.root)

    def __post_init__(self):
        if self.source == "kitti" and not self.root:
            raise ValueError("data.root is required when data.source is 'kitti'")
        if self.train_split == self.val_split:
            raise ValueError(f"data.train_split and data.val_split must differ (held-out evaluation), both are "
                             f"{self.train_split!r}")
        if self.source == "simulate" and self.report_split == "test":
            raise ValueError("data.report_split 'test' names KITTI's unlabelled testing/ folder; call the simulated "
                             "held-out split something else, e.g. 'holdout'")
        if self.report_split == self.train_split:
            raise ValueError(f"data.report_split must be a held-out split, not the training split {self.train_split!r}")


@dataclass
class TeacherSection:
    config: str = "config/train/teacher_two_stage_tiny.yaml"  # training YAML with a `two_stage` section
    epochs: int = 20
    # load instead of training: a teacher folder (models/teacher: its own config + safetensors weights) or a training
    # checkpoint / state_dict of `config`'s model; "" = train `config` for `epochs`
    checkpoint: str = ""
    set: list[str] = field(default_factory=list)  # overrides of the teacher's TrainConfig

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"teacher.epochs must be >= 1, got {self.epochs}")


@dataclass
class StudentSection:
    config: str = "config/train/pointpillars_tiny.yaml"  # training YAML of the one-stage student
    epochs: int = 20  # the full-width student without KD (what importance is scored on and pruning inherits)
    set: list[str] = field(default_factory=list)
    # Also train the full-width student with distill.method from the trained baseline's weights ("student_cakd"):
    # a comparison row only, not on the path to the final student (METHOD.md section 4, order of stages).
    kd_row: bool = False

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"student.epochs must be >= 1, got {self.epochs}")


@dataclass
class TrainingSection:
    """Shared by every training stage (applied after the model YAML, before the stage's own `set`)."""

    batch_size: int = 2
    workers: int = 0  # DataLoader worker processes (0 = in the main process)
    threads: int = 1  # torch threads while training (1 is fastest on a shared 2-core CPU)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batchnorm_momentum: Optional[float] = 0.1  # short runs: running statistics must keep up
    log_interval: int = 10
    seed: int = 0
    tensorboard: bool = True  # TensorBoard event files in each training stage's train/ folder (besides CSVs)
    set: list[str] = field(default_factory=list)  # more TrainConfig overrides for every stage

    def __post_init__(self):
        if self.batch_size < 1 or self.workers < 0 or self.threads < 1 or self.log_interval < 1:
            raise ValueError("training: need batch_size >= 1, workers >= 0, threads >= 1, log_interval >= 1")


@dataclass
class PruneSection(PruneConfig):
    """training.prune.PruneConfig plus how the scoring frames are batched (always the TRAIN split)."""

    batch_size: int = 2

    def __post_init__(self):
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError(f"prune.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class FinetuneSection:
    """KD fine-tune of the pruned student from its inherited weights (the full KD schedule of `distill`)."""

    epochs: int = 20
    set: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"finetune.epochs must be >= 1, got {self.epochs}")


@dataclass
class IoURefineSection:
    """IoU-aware redundancy elimination: the pruned student has an IoU branch, trained with the same distillation
    (its targets include the label-assignment boxes); the gate rescores before NMS.

    epochs 0 (default): the branch is trained jointly with the pruned student's KD schedule (finetune stage), and
    "student_pruned" is that model without the gate. epochs > 0: a separate stage adds the branch to the fine-tuned
    student afterwards and trains it for that many epochs (the earlier pipeline)."""

    enabled: bool = True
    epochs: int = 0
    gate: IoUGateConfig = field(default_factory=lambda: IoUGateConfig(mode="hard"))
    set: list[str] = field(default_factory=list)
    compare_soft: bool = False  # also report the final student with the soft gate (gate.alphas): an ablation row

    @property
    def joint(self) -> bool:
        return self.enabled and self.epochs == 0

    def training_identity(self) -> "IoURefineSection":
        """This section as a training stage hashes it: compare_soft only adds an evaluation row, so turning it on
        must not re-train the students (the results table re-uses the default runs' stages)."""
        return replace(self, compare_soft=False)

    def __post_init__(self):
        if self.epochs < 0:
            raise ValueError(f"iou_refine.epochs must be >= 0, got {self.epochs}")
        if self.enabled and self.gate.mode == "none":
            raise ValueError("iou_refine.gate.mode must be 'hard' or 'soft' (or set iou_refine.enabled=false)")


@dataclass
class BaselineConfig:
    """A comparison student. method: a DistillConfig method (none = no KD); architecture: `student` (the student
    YAML) or `pruned` (the per-layer widths the prune stage chose, trained from scratch: the width-only student of
    the final student's size). distill: `--set`-style overrides of this baseline's DistillConfig. A baseline that its
    method refuses at run time (e.g. PointDistiller with a teacher on another voxel grid) is reported as skipped."""

    name: str = ""
    method: str = "none"
    architecture: Literal["student", "pruned"] = "student"
    # scratch: random weights; pruned: the pruned network's inherited weights (as the final student), so a KD
    # method is compared with CLEAN's at the same size, from the same start, with the same schedule
    init: Literal["scratch", "pruned"] = "scratch"
    # 0 = the schedule of the model it is compared with: student.epochs (full width), student.epochs +
    # finetune.epochs (pruned widths from scratch: same total epochs as the final student), finetune.epochs (init pruned)
    epochs: int = 0
    distill: list[str] = field(default_factory=list)
    # train with the IoU branch and evaluate with iou_refine.gate, as the final student (ablations of CLEAN's KD)
    iou_gate: bool = False
    # the stage whose model teaches this baseline: "teacher" (the two-stage teacher) or another model stage, e.g.
    # "student_baseline" (PointDistiller needs a teacher that encodes the student's own voxels / pillars)
    teacher: str = "teacher"

    def __post_init__(self):
        from training.distill.distill_config import METHODS

        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"baseline name must be a non-empty identifier (letters, digits, _), got {self.name!r}")
        if self.method not in METHODS:
            raise ValueError(f"baseline {self.name}: method must be one of {list(METHODS)}, got {self.method!r}")
        if self.epochs < 0:
            raise ValueError(f"baseline {self.name}: epochs must be >= 0")
        if self.init == "pruned" and self.architecture != "pruned":
            raise ValueError(f"baseline {self.name}: init 'pruned' needs architecture 'pruned'")


@dataclass
class EvaluationSection:
    max_frames: int = 0  # first N frames of the held-out split; 0 = all
    batch_size: int = 2
    # "report": the reported held-out split (data.eval_split); "val": the tuning split (data.val_split), for runs that
    # choose settings (e.g. the CaKD weight) on val and leave the reported split untouched. Only the evaluate stage
    # re-runs when this changes.
    split: str = "report"

    def __post_init__(self):
        if self.max_frames < 0 or self.batch_size < 1:
            raise ValueError("evaluation: need max_frames >= 0 and batch_size >= 1")
        if self.split not in ("report", "val"):
            raise ValueError(f"evaluation.split must be 'report' or 'val', got {self.split!r}")

    def stage_identity(self) -> dict:
        """What the evaluate stage hashes: the default split adds nothing, so runs from before the option keep
        their stage hashes."""
        values = {"max_frames": self.max_frames, "batch_size": self.batch_size}
        return values if self.split == "report" else {**values, "split": self.split}


@dataclass
class EfficiencySection:
    """Params, GFLOPs (multiply-accumulates, clean_ros.models.flops) and CPU latency at batch 1 on one frame:
    voxelisation + forward + post-processing, warm-up excluded, models measured round-robin in the same run."""

    threads: int = 1
    warmup: int = 3
    repeats: int = 20
    frame: str = ""  # a KITTI .bin scan; "" = the first frame of the held-out split, full scan (no FOV crop)

    def __post_init__(self):
        if self.threads < 1 or self.warmup < 0 or self.repeats < 1:
            raise ValueError("efficiency: need threads >= 1, warmup >= 0, repeats >= 1")


@dataclass
class ExportSection:
    """The bundle of the final student. score_thresholds: `fixed` ships the student config's per-class score
    thresholds; `calibrate` adds the `thresholds` stage (training/compression/stage_thresholds.py), which picks each
    class's threshold on the VAL split so that the false positives per frame there stay <=
    max_false_positives_per_frame in all (threshold_split: `even`, each class its share; `max_mean_recall`, the split
    with the best mean per-class val recall), and ships those."""

    enabled: bool = True
    onnx: bool = True  # also write model.onnx (+ encoder.onnx) into the bundle
    score_thresholds: Literal["fixed", "calibrate"] = "fixed"
    max_false_positives_per_frame: float = 2.0  # calibrate: the budget over all classes
    # calibrate: how the budget is shared among the classes: `even` (each class budget / classes) or
    # `max_mean_recall` (the thresholds with the best mean per-class val recall within the total budget)
    threshold_split: Literal["even", "max_mean_recall"] = "even"
    calibration_min_threshold: float = 0.05  # calibrate: the student runs on val at this score; no lower threshold
    # calibrate: further total budgets whose thresholds the same rule finds on val; listed (with what they keep) in
    # thresholds.json, the report and the bundle's README, for users who want fewer false positives or more recall
    # than the shipped operating point. The bundle ships max_false_positives_per_frame's.
    operating_points: list[float] = field(default_factory=list)

    def stage_identity(self) -> dict:
        """What the export and thresholds stages hash: with `fixed`, only enabled / onnx (the hash of every config
        from before the calibration options existed stays the same, so finished runs are not re-exported); without
        operating points, the section without that key (likewise for the configs from before it)."""
        if self.score_thresholds == "fixed":
            return {"enabled": self.enabled, "onnx": self.onnx}
        identity = to_dict(self)
        if not self.operating_points:
            identity.pop("operating_points")
        if self.threshold_split == "even":  # configs from before the option keep their hashes
            identity.pop("threshold_split")
        return identity

    def __post_init__(self):
        if not self.max_false_positives_per_frame > 0:
            raise ValueError(f"export.max_false_positives_per_frame must be > 0, got "
                             f"{self.max_false_positives_per_frame}")
        if not 0.0 < self.calibration_min_threshold < 1.0:
            raise ValueError(f"export.calibration_min_threshold must be in (0, 1), got "
                             f"{self.calibration_min_threshold} (0 would keep boxes the hard IoU gate zeroed)")
        budgets = list(self.operating_points)
        if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0 for b in budgets):
            raise ValueError(f"export.operating_points must be false positives per frame > 0, got {budgets}")
        if len(set(budgets)) != len(budgets) or self.max_false_positives_per_frame in budgets:
            raise ValueError(f"export.operating_points {budgets}: each budget once, and not "
                             f"max_false_positives_per_frame ({self.max_false_positives_per_frame:g}) again")


@dataclass
class CompressConfig:
    name: str = "compress_default"
    data: DataSection = field(default_factory=DataSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(method="clean"))
    prune: PruneSection = field(default_factory=PruneSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    iou_refine: IoURefineSection = field(default_factory=IoURefineSection)
    baselines: list[BaselineConfig] = field(default_factory=list)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    efficiency: EfficiencySection = field(default_factory=EfficiencySection)
    export: ExportSection = field(default_factory=ExportSection)

    @property
    def evaluated_split(self) -> str:
        """The split the evaluate stage scores every model on (evaluation.split)."""
        return self.data.val_split if self.evaluation.split == "val" else self.data.eval_split

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a plain folder name, got {self.name!r}")
        names = [b.name for b in self.baselines]
        if len(set(names)) != len(names):
            raise ValueError(f"baseline names must be unique, got {names}")
        if self.distill.method == "none":
            raise ValueError("distill.method is 'none': the distilled student needs a method (clean = CaKD + "
                             "label assignment)")


__all__ = ["CompressConfig", "DataSection", "SimulateConfig", "TeacherSection", "StudentSection",
           "TrainingSection", "PruneSection", "FinetuneSection", "IoURefineSection", "BaselineConfig",
           "EvaluationSection", "EfficiencySection", "ExportSection"]
