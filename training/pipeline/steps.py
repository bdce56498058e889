"""The stages of the compression pipeline, in order (METHOD.md sections 2-7):

  data              simulate the dataset (or check a KITTI root)
  teacher           train the two-stage teacher (TeacherTask) or load its weights
  student_baseline  the one-stage student without KD
  student_cakd      the student with distill.method (default clean = CaKD + label-assignment KD)
  importance        masked (or unmasked) category-knowledge filter importance on TRAIN frames
  prune             global top-rho filters -> physically smaller student with inherited weights
  finetune          KD fine-tune of the pruned student from its inherited weights  -> "student_pruned"
  iou_refine        IoU branch added and trained (same KD), hard / soft gate set    -> "student_final"
  baseline_<name>   comparison students (compare config)
  evaluate          every model on the same held-out split (KITTI AP R40, training.kitti_eval)
  efficiency        params, GFLOPs, CPU latency p50/p95 at batch 1 (training.efficiency)
  export            the final student as a bundle (clean_ros.bundle.save_bundle)
  report            report.json, report.md, plots

Each training stage runs the project's Trainer in-process with a DetectionTask carrying the stage's loss terms and
target hooks (training.distill.build_distillation); a killed training stage resumes from its trainer checkpoint.
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from clean_ros.config import ConfigError, load_config, save_yaml, to_dict
from clean_ros.models.configs import DetectorConfig
from clean_ros.models.two_stage_config import TwoStageConfig
from training.pipeline.config import CompressConfig
from training.pipeline.stages import Stage, StageSkipped, atomic_write_json, read_json
from training.teacher_package import TeacherPackageError, is_teacher_package, load_teacher_package, read_manifest

MODEL_FILE = "model.pt"
MODEL_CONFIG = "model.yaml"
MODEL_INFO = "model.json"

# Report keys of the CLEAN models, in report order (student_cakd only with student.kd_row).
CLEAN_MODELS = ("teacher", "student_baseline", "student_cakd", "student_pruned", "student_final")


@dataclass(frozen=True)
class ModelRef:
    """A reported model: the stage that stores it and, optionally, the IoU gate mode it is evaluated with
    (None = as stored; "none" = gate off; "soft" = the soft gate with iou_refine.gate's alphas)."""

    stage: str
    gate: str | None = None


class PipelineInterrupted(Exception):
    """SIGINT / SIGTERM during a training stage: the trainer saved a checkpoint; re-running resumes."""


# --------------------------------------------------------------------------- stored models
def save_model(folder: Path, module: torch.nn.Module, cfg: Any, kind: str, extra: dict | None = None) -> None:
    """weights (atomic torch.save of the state_dict), the model config YAML, then model.json (kind)."""
    from training.checkpoint import atomic_torch_save

    atomic_torch_save({k: v.detach().cpu() for k, v in module.state_dict().items()}, folder / MODEL_FILE)
    save_yaml(cfg, folder / MODEL_CONFIG)
    atomic_write_json(folder / MODEL_INFO, {"kind": kind, **(extra or {})})


def with_gate(cfg: DetectorConfig, gate: str | None, template) -> DetectorConfig:
    """cfg (in place: the module built from it shares it) with its IoU gate mode replaced for evaluation."""
    if gate is not None:
        cfg.postprocess.iou_gate = type(template)(mode=gate, thresholds=list(template.thresholds),
                                                  alphas=list(template.alphas))
    return cfg


def load_model(folder: Path) -> tuple[str, Any, torch.nn.Module]:
    """(kind "two_stage" | "detector", config, module with weights) of a stage's stored model."""
    from clean_ros.models.detector import build_detector
    from clean_ros.models.two_stage import TwoStageDetector

    info = read_json(folder / MODEL_INFO)
    if not info:
        raise FileNotFoundError(f"{folder}: no stored model ({MODEL_INFO} missing)")
    state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
    if info["kind"] == "two_stage":
        cfg = load_config(TwoStageConfig, folder / MODEL_CONFIG)
        module = TwoStageDetector(cfg)
    else:
        cfg = load_config(DetectorConfig, folder / MODEL_CONFIG)
        module = build_detector(cfg)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise ConfigError(f"{folder / MODEL_FILE}: the stored model does not fit the current code ({detail}); "
                          f"re-run that stage with --force {folder.name}") from None
    return info["kind"], cfg, module.eval()


def make_task(kind: str, cfg: Any, module: torch.nn.Module):
    from training.task import DetectionTask
    from training.teacher_task import TeacherTask

    return TeacherTask(cfg, module) if kind == "two_stage" else DetectionTask(cfg, module)


# --------------------------------------------------------------------------- the pipeline
@dataclass
class ModelEntry:
    key: str  # report key
    stage: str  # stage holding the model


class CompressPipeline:
    def __init__(self, cfg: CompressConfig, root: Path, log: Callable[[str], None], progress: bool):
        self.cfg = cfg
        self.root = Path(root)
        self.stages_dir = self.root / "stages"
        self.log = log
        self.progress = progress
        self._device: torch.device | None = None

    # ------------------------------------------------------------------ paths / shared pieces
    @property
    def data_root(self) -> Path:
        if self.cfg.data.source == "simulate":
            return self.stages_dir / "data" / "dataset"
        return Path(self.cfg.data.root)

    @property
    def device(self) -> torch.device:
        if self._device is None:
            want = self.cfg.training.device
            use_cuda = torch.cuda.is_available() if want == "auto" else want == "cuda"
            if use_cuda and not torch.cuda.is_available():
                raise ConfigError("training.device=cuda: no CUDA device available")
            self._device = torch.device("cuda" if use_cuda else "cpu")
        return self._device

    def train_config(self, yaml_path: str, epochs: int, stage_set: list[str], model_cfg: DetectorConfig | None = None):
        """The stage's TrainConfig: the model's training YAML + the shared training section + the stage's set."""
        from training.config import load_train_config

        t, d = self.cfg.training, self.cfg.data
        overrides = [f"data.root={self.data_root}", f"data.train_split={d.train_split}",
                     f"data.val_split={d.val_split}", f"epochs={epochs}", f"batch_size={t.batch_size}",
                     f"workers={t.workers}", f"log_interval={t.log_interval}", f"seed={t.seed}", "eval_interval=0",
                     f"batchnorm_momentum={'null' if t.batchnorm_momentum is None else t.batchnorm_momentum}",
                     *t.set, *stage_set]
        cfg = load_train_config(yaml_path, overrides)
        if model_cfg is not None:
            if cfg.two_stage is not None:
                raise ConfigError(f"{yaml_path}: a student config must not have a two_stage section")
            cfg.model = model_cfg
        # One GT database per (range, classes), next to the data stage's outputs (never inside a user's dataset).
        key = json.dumps([list(cfg.model.point_cloud_range), list(cfg.model.class_names), d.train_split])
        import hashlib

        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        cfg.augment.gt_sampling_config.database_path = str(self.stages_dir / "data" / f"gt_database_{digest}.npz")
        return cfg

    def _datasets(self, train_cfg):
        from training.data.augment import Augmentor
        from training.data.gt_database import GTDatabaseError, build_gt_database
        from training.data.kitti_dataset import KittiDataset

        gt_db = Path(train_cfg.augment.gt_sampling_config.database_path)
        try:
            if train_cfg.augment.gt_sampling and not gt_db.is_file():
                self.log(f"    building GT database {gt_db.name} from split {train_cfg.data.train_split!r}")
                build_gt_database(KittiDataset(train_cfg.data, train_cfg.data.train_split, training=False), gt_db)
            augmentor = Augmentor(train_cfg.augment, tuple(train_cfg.model.class_names))
        except GTDatabaseError as exc:
            raise ConfigError(str(exc)) from None
        return KittiDataset(train_cfg.data, train_cfg.data.train_split, training=True, augmentor=augmentor,
                            seed=train_cfg.seed)

    def fit(self, folder: Path, train_cfg, task) -> dict:
        """Run the Trainer for a stage (resuming its checkpoint when there is one); returns a summary."""
        from clean_ros.config import dump_yaml
        from training import checkpoint as ckpt_io
        from training.distributed import DistContext
        from training.run_dir import RunDir
        from training.trainer import Trainer, seed_everything

        run_root = folder / "train"
        last = run_root / "checkpoints" / ckpt_io.LAST_NAME
        resume = ckpt_io.load_checkpoint(last) if last.is_file() else None
        if resume is not None:
            self.log(f"    resuming the trainer from {last} (epoch {resume['epoch']}, iteration "
                     f"{resume['iteration']})")
        seed_everything(train_cfg.seed, train_cfg.deterministic)
        train_set = self._datasets(train_cfg)
        run_dir = RunDir(run_root, tensorboard=self.cfg.training.tensorboard)
        run_dir.save_config(train_cfg)
        ctx = DistContext(device=self.device)
        try:
            trainer = Trainer(train_cfg, task, train_set, None, run_dir, ctx, progress=self.progress,
                              resume=resume, config_yaml=dump_yaml(train_cfg))
        except (RuntimeError, KeyError, ckpt_io.CheckpointError) as exc:
            if resume is None:
                raise
            first = str(exc).strip().splitlines()[0]
            self.log(f"    cannot resume from {last} ({first}): starting the stage's training afresh")
            run_dir.close()
            shutil.rmtree(run_root)
            return self.fit(folder, train_cfg, task)
        result = trainer.fit()
        run_dir.close()
        if result.status != "finished":
            raise PipelineInterrupted(f"training interrupted ({trainer.stop.reason or 'stopped'}); checkpoint "
                                      f"{result.checkpoint}")
        losses = read_last_losses(run_root / "epochs.csv")
        return {"frames": len(train_set), "epochs": train_cfg.epochs, "steps": result.global_step,
                "train_seconds": round(result.seconds, 1), "final_losses": losses,
                "per_epoch": epoch_diagnostics(run_root / "epochs.csv")}

    def load_teacher(self, stage: str = "teacher"):
        kind, cfg, module = load_model(self.stages_dir / stage)
        return module

    def distill_parts(self, distill_cfg, student, teacher_stage: str = "teacher"):
        from training.distill import build_distillation

        teacher = self.load_teacher(teacher_stage)
        try:
            return build_distillation(distill_cfg, teacher, student)
        except ValueError as exc:
            raise ConfigError(f"distill: {exc}") from None

    def train_student(self, folder: Path, epochs: int, stage_set: list[str], distill_cfg=None,
                      model_cfg: DetectorConfig | None = None, init_state: dict | None = None,
                      strict: bool = True, kind_extra: dict | None = None, teacher_stage: str = "teacher",
                      init_from: str = "random") -> dict:
        """Train a one-stage student; init_state (the weights of stage `init_from`) replaces the random init."""
        from clean_ros.models.detector import build_detector
        from training.task import DetectionTask

        from training.trainer import seed_everything

        train_cfg = self.train_config(self.cfg.student.config, epochs, [*self.cfg.student.set, *stage_set],
                                      model_cfg=model_cfg)
        seed_everything(train_cfg.seed, train_cfg.deterministic)  # the init must not depend on earlier stages
        student = build_detector(train_cfg.model)
        if init_state is not None:
            missing, unexpected = student.load_state_dict(init_state, strict=strict)
            if unexpected or any("iou" not in name for name in missing):
                raise RuntimeError(f"inherited weights do not fit: missing {missing}, unexpected {unexpected}")
        terms, hooks, voxelizers = [], [], {}
        if distill_cfg is not None and distill_cfg.method != "none":
            parts = self.distill_parts(distill_cfg, student, teacher_stage)
            terms, hooks, voxelizers = parts.loss_terms, parts.target_hooks, parts.voxelizers
        task = DetectionTask(train_cfg.model, student, loss_terms=terms, target_hooks=hooks,
                             extra_voxelizers=voxelizers)
        summary = self.fit(folder, train_cfg, task)
        save_model(folder, task.model, train_cfg.model, "detector", kind_extra)
        from clean_ros.models.flops import count_parameters

        summary["params"] = count_parameters(task.model)
        summary["initial_weights"] = init_from if init_state is not None else "random"
        return summary

    # ------------------------------------------------------------------ stage list
    def stages(self) -> list[Stage]:
        c = self.cfg
        train_frames = self._train_frames_estimate()
        common = {"training": c.training, "data": c.data}
        stages = [
            Stage("data", "simulate the dataset" if c.data.source == "simulate" else "check the KITTI dataset",
                  self.stage_data, {"data": c.data}),
            Stage("teacher", "two-stage teacher (train)" if not c.teacher.checkpoint else "two-stage teacher (load)",
                  self.stage_teacher, {**common, "teacher": c.teacher, "weights": self._teacher_fingerprint()},
                  ("data",),
                  0 if c.teacher.checkpoint else train_frames * c.teacher.epochs, "teacher"),
            Stage("student_baseline", "full-width student without KD", self.stage_student_baseline,
                  {**common, "student": c.student}, ("data",), train_frames * c.student.epochs, "student"),
        ]
        if c.student.kd_row:
            stages.append(Stage("student_cakd", f"full-width student, method {c.distill.method!r}, from the trained "
                                "baseline (comparison row)", self.stage_student_cakd,
                                {**common, "student": c.student, "distill": c.distill},
                                ("data", "teacher", "student_baseline"), train_frames * c.student.epochs * 1.5,
                                "student"))
        joint = {"iou_refine": c.iou_refine} if c.iou_refine.joint else {}
        stages += [
            Stage("importance", f"{c.prune.criterion} filter importance of the trained student on training frames",
                  self.stage_importance, {"prune": c.prune, "data": c.data}, ("student_baseline",)),
            Stage("prune", f"keep {c.prune.keep_ratio:.0%} of the filters (physical surgery)", self.stage_prune,
                  {"prune": c.prune}, ("importance", "student_baseline")),
            Stage("finetune", f"pruned student, method {c.distill.method!r}, from its inherited weights"
                  + (f" (+ IoU branch, {c.iou_refine.gate.mode} gate)" if joint else ""), self.stage_finetune,
                  {**common, "student": c.student, "distill": c.distill, "finetune": c.finetune, **joint},
                  ("prune", "teacher"), train_frames * c.finetune.epochs * 1.5, "student"),
        ]
        if c.iou_refine.enabled and not c.iou_refine.joint:
            stages.append(Stage("iou_refine", f"IoU branch + {c.iou_refine.gate.mode} gate", self.stage_iou_refine,
                                {**common, "student": c.student, "distill": c.distill, "iou_refine": c.iou_refine},
                                ("finetune", "teacher"), train_frames * c.iou_refine.epochs * 1.5, "student"))
        known = {"teacher", "student_baseline", "finetune"} | ({"student_cakd"} if c.student.kd_row else set()) | (
            {"iou_refine"} if c.iou_refine.enabled and not c.iou_refine.joint else set())
        for baseline in c.baselines:
            if baseline.method != "none" and baseline.teacher not in known:
                raise ConfigError(f"baselines[{baseline.name}].teacher {baseline.teacher!r}: not a model stage before "
                                  f"it; one of {sorted(known)}")
            known.add(f"baseline_{baseline.name}")
            deps = ["data"]
            if baseline.method != "none":
                deps.append(baseline.teacher)
            if baseline.architecture == "pruned":
                deps.append("prune")
            epochs = self.baseline_epochs(baseline)
            stages.append(Stage(f"baseline_{baseline.name}",
                                f"baseline {baseline.name} ({baseline.method}, {baseline.architecture} widths)",
                                lambda folder, b=baseline: self.stage_baseline(folder, b),
                                {**common, "student": c.student, "distill": c.distill, "baseline": baseline,
                                 **({"iou_refine": c.iou_refine} if baseline.iou_gate else {})},
                                tuple(deps), train_frames * epochs * (1.5 if baseline.method != "none" else 1.0),
                                "student"))
        model_stages = tuple(stage for stage in self.model_stages().values())
        stages += [
            Stage("evaluate", f"every model on split {c.data.eval_split!r} (KITTI AP R40)", self.stage_evaluate,
                  {"evaluation": c.evaluation, "data": c.data}, ("data", *model_stages)),
            Stage("efficiency", "params, GFLOPs, CPU latency at batch 1", self.stage_efficiency,
                  {"efficiency": c.efficiency}, ("data", *model_stages)),
        ]
        if c.export.enabled:
            stages.append(Stage("export", "final student -> bundle", self.stage_export, {"export": c.export},
                                (self.model_stages()["student_final"], "evaluate", "efficiency")))
        stages.append(Stage("report", "report.json, report.md, plots", self.stage_report, {},
                            tuple(s.name for s in stages)))
        return stages

    def _teacher_fingerprint(self) -> str:
        """The shipped teacher's weights hash (a new teacher in the same folder re-runs the stage), else ""."""
        path = self.cfg.teacher.checkpoint
        if path and is_teacher_package(path):
            try:
                return read_manifest(path)["files"]["weights.safetensors"]["sha256"]
            except (TeacherPackageError, KeyError, TypeError):
                return "unreadable"  # the stage itself reports what is wrong
        return ""

    def baseline_epochs(self, baseline) -> int:
        """A baseline's epochs; 0 = the schedule of the model it is compared with (see BaselineConfig.epochs)."""
        if baseline.epochs:
            return baseline.epochs
        c = self.cfg
        if baseline.init == "pruned":
            return c.finetune.epochs
        return c.student.epochs + c.finetune.epochs if baseline.architecture == "pruned" else c.student.epochs

    def model_refs(self) -> dict[str, ModelRef]:
        """report key -> (stage, gate override) of every model this config reports, in report order."""
        c = self.cfg
        refs = {"teacher": ModelRef("teacher"), "student_baseline": ModelRef("student_baseline")}
        if c.student.kd_row:
            refs["student_cakd"] = ModelRef("student_cakd")
        if c.iou_refine.joint:  # one trained model, evaluated without and with its gate
            refs["student_pruned"] = ModelRef("finetune", gate="none")
            refs["student_final"] = ModelRef("finetune")
        else:
            refs["student_pruned"] = ModelRef("finetune")
            refs["student_final"] = ModelRef("iou_refine" if c.iou_refine.enabled else "finetune")
        if c.iou_refine.enabled and c.iou_refine.compare_soft:
            refs["student_final_soft_gate"] = ModelRef(refs["student_final"].stage, gate="soft")
        for baseline in c.baselines:
            refs[f"baseline_{baseline.name}"] = ModelRef(f"baseline_{baseline.name}")
        return refs

    def model_stages(self) -> dict[str, str]:
        """report key -> stage of every model this config produces."""
        return {key: ref.stage for key, ref in self.model_refs().items()}

    def load_reported(self, key: str) -> tuple[str, Any, torch.nn.Module]:
        """(kind, config, module) of a reported model, with its evaluation gate applied."""
        ref = self.model_refs()[key]
        kind, cfg, module = load_model(self.stages_dir / ref.stage)
        if kind != "two_stage":
            with_gate(cfg, ref.gate, self.cfg.iou_refine.gate)
        return kind, cfg, module

    def _train_frames_estimate(self) -> float:
        if self.cfg.data.source == "simulate":
            return self.cfg.data.simulate.frames * (1.0 - self.cfg.data.simulate.val_fraction)
        listing = Path(self.cfg.data.root) / "ImageSets" / f"{self.cfg.data.train_split}.txt"
        try:
            return float(len([line for line in listing.read_text().splitlines() if line.strip()]))
        except OSError:
            return 0.0

    # ------------------------------------------------------------------ stages
    def stage_data(self, folder: Path) -> dict:
        from training.data.config import DataConfig
        from training.data.kitti_dataset import KittiDataset

        d = self.cfg.data
        if d.source == "simulate":
            from training.sim.config import SimConfigError, config_from_dict
            from training.simulate import simulate_dataset

            s = d.simulate
            overrides = copy.deepcopy(s.overrides)
            overrides.setdefault("dataset", {})["val_fraction"] = s.val_fraction
            try:
                sim_cfg = config_from_dict(overrides, "data.simulate.overrides")
            except SimConfigError as exc:
                raise ConfigError(str(exc)) from None
            self.log(f"    simulating {s.frames} frames (seed {s.seed}, azimuth "
                     f"{sim_cfg.sensor.azimuth_resolution_deg} deg) into {self.data_root}")
            stats = simulate_dataset(sim_cfg, self.data_root, s.frames, s.seed, s.workers, progress=self.progress)
            summary = {k: round(float(v), 3) for k, v in stats.items()}
            sets = self.data_root / "ImageSets"
            if s.test_frames:  # the last test_frames held-out frames become the reported split
                held_out = (sets / "val.txt").read_text().split()
                (sets / "val.txt").write_text("\n".join(held_out[:-s.test_frames]) + "\n")
                (sets / f"{d.report_split or 'holdout'}.txt").write_text("\n".join(held_out[-s.test_frames:]) + "\n")
            # the simulator names its splits train / val; honour other names by listing them too
            for wanted, have in ((d.train_split, "train"), (d.val_split, "val")):
                if wanted != have:
                    (sets / f"{wanted}.txt").write_text((sets / f"{have}.txt").read_text())
        else:
            summary = {}
        counts = {}
        for split in dict.fromkeys((d.train_split, d.val_split, d.eval_split)):
            try:
                counts[split] = len(KittiDataset(DataConfig(root=str(self.data_root)), split))
            except Exception as exc:  # KittiLayoutError and friends: a user's dataset
                raise ConfigError(f"data: {exc}") from None
        summary["frames"] = counts
        return summary

    def stage_teacher(self, folder: Path) -> dict:
        from training.teacher_task import build_task

        t = self.cfg.teacher
        if t.checkpoint and is_teacher_package(t.checkpoint):  # a shipped teacher: its own config and weights
            try:
                cfg, model, manifest = load_teacher_package(t.checkpoint)
            except TeacherPackageError as exc:
                raise ConfigError(f"teacher.checkpoint: {exc}") from None
            save_model(folder, model, cfg, "two_stage")
            return {"loaded": t.checkpoint, "params": manifest["params"],
                    "teacher_metrics": manifest.get("metrics", {})}
        train_cfg = self.train_config(t.config, t.epochs, t.set)
        if train_cfg.two_stage is None:
            raise ConfigError(f"teacher.config {t.config}: needs a two_stage section (a two-stage teacher)")
        from training.trainer import seed_everything

        seed_everything(train_cfg.seed, train_cfg.deterministic)  # the init must not depend on earlier stages
        task = build_task(train_cfg)
        if t.checkpoint:
            from training.checkpoint import CheckpointError, load_model_weights

            try:
                task.model.load_state_dict(load_model_weights(t.checkpoint))
            except (CheckpointError, RuntimeError) as exc:
                raise ConfigError(f"teacher.checkpoint {t.checkpoint}: {str(exc).splitlines()[0]}") from None
            summary = {"loaded": t.checkpoint}
        else:
            summary = self.fit(folder, train_cfg, task)
        save_model(folder, task.model, train_cfg.two_stage, "two_stage")
        from clean_ros.models.flops import count_parameters

        summary["params"] = count_parameters(task.model)
        return summary

    def stage_student_baseline(self, folder: Path) -> dict:
        return self.train_student(folder, self.cfg.student.epochs, [])

    def stage_student_cakd(self, folder: Path) -> dict:
        _, _, trained = load_model(self.stages_dir / "student_baseline")
        return self.train_student(folder, self.cfg.student.epochs, [], distill_cfg=self.cfg.distill,
                                  init_state=trained.state_dict(), init_from="student_baseline")

    def stage_importance(self, folder: Path) -> dict:
        from training.data.config import DataConfig
        from training.data.kitti_dataset import KittiDataset
        from training.data.loader import Collator, make_dataloader
        from training.checkpoint import atomic_torch_save
        from training.prune import score_filters

        from training.trainer import seed_everything

        seed_everything(self.cfg.training.seed)
        kind, model_cfg, detector = load_model(self.stages_dir / "student_baseline")  # the trained student
        p, d = self.cfg.prune, self.cfg.data
        data_cfg = DataConfig(root=str(self.data_root), train_split=d.train_split, val_split=d.val_split,
                              class_names=tuple(model_cfg.class_names),
                              point_cloud_range=tuple(model_cfg.point_cloud_range),
                              num_point_features=model_cfg.num_point_features)
        train_set = KittiDataset(data_cfg, d.train_split, training=False)  # TRAIN frames, never the eval split
        loader = make_dataloader(train_set, batch_size=p.batch_size, shuffle=False, num_workers=0,
                                 collate=Collator.from_config(model_cfg, training=False))
        scores = score_filters(detector.to(self.device), _progress(loader, self.progress, "importance"), p)
        atomic_torch_save({"scores": scores.scores, "criterion": scores.criterion, "num_frames": scores.num_frames,
                           "frames_without_detections": scores.frames_without_detections},
                          folder / "importance.pt")
        return {"scored": "student_baseline", "criterion": scores.criterion, "num_frames": scores.num_frames,
                "frames_without_detections": scores.frames_without_detections,
                "layers": len(scores.layers), "filters": int(sum(v.numel() for v in scores.scores.values()))}

    def stage_prune(self, folder: Path) -> dict:
        from training.prune import ImportanceScores, build_graph, prune_detector

        kind, model_cfg, detector = load_model(self.stages_dir / "student_baseline")  # inherits its weights
        p = self.cfg.prune
        stored = torch.load(self.stages_dir / "importance" / "importance.pt", map_location="cpu", weights_only=True)
        layers = build_graph(detector, p.prune_encoder, p.prune_backbone_3d)
        importance = ImportanceScores(layers, stored["scores"], stored["criterion"], int(stored["num_frames"]),
                                      int(stored["frames_without_detections"]))
        pruned, pruned_cfg, report = prune_detector(detector, importance, p.keep_ratio, p.fold_constants)
        save_model(folder, pruned, pruned_cfg, "detector", {"keep_ratio": p.keep_ratio})
        atomic_write_json(folder / "prune_report.json", report.as_dict())
        (folder / "prune_report.md").write_text(report.to_markdown())
        return {"params_before": report.params_before, "params_after": report.params_after,
                "filters_before": report.filters_before, "filters_after": report.filters_after,
                "layers": [vars(change).copy() for change in report.layers]}

    def stage_finetune(self, folder: Path) -> dict:
        _, pruned_cfg, pruned = load_model(self.stages_dir / "prune")
        joint = self.cfg.iou_refine.joint
        model_cfg = self.with_iou_branch(pruned_cfg) if joint else pruned_cfg
        return self.train_student(folder, self.cfg.finetune.epochs,
                                  [*self.cfg.finetune.set, *(self.cfg.iou_refine.set if joint else [])],
                                  distill_cfg=self.cfg.distill, model_cfg=model_cfg, init_state=pruned.state_dict(),
                                  strict=not joint, init_from="prune")

    def with_iou_branch(self, cfg: DetectorConfig) -> DetectorConfig:
        data = to_dict(cfg)
        data["head"]["iou_branch"] = True
        data["postprocess"]["iou_gate"] = to_dict(self.cfg.iou_refine.gate)
        try:
            return load_config(DetectorConfig, data=data)
        except ConfigError as exc:
            raise ConfigError(f"iou_refine.gate: {exc}") from None

    def stage_iou_refine(self, folder: Path) -> dict:
        _, cfg, model = load_model(self.stages_dir / "finetune")
        return self.train_student(folder, self.cfg.iou_refine.epochs, self.cfg.iou_refine.set,
                                  distill_cfg=self.cfg.distill, model_cfg=self.with_iou_branch(cfg),
                                  init_state=model.state_dict(), strict=False, init_from="finetune")

    def stage_baseline(self, folder: Path, baseline) -> dict:
        from training.distill.config import DistillConfig

        try:
            distill_cfg = load_config(DistillConfig, data=to_dict(self.cfg.distill),
                                      overrides=[f"method={baseline.method}", *baseline.distill])
        except ConfigError as exc:
            raise ConfigError(f"baselines[{baseline.name}].distill: {exc}") from None
        model_cfg, init_state = None, None
        if baseline.architecture == "pruned":
            _, model_cfg, pruned = load_model(self.stages_dir / "prune")
            if baseline.init == "pruned":  # the final student's start: inherited weights
                init_state = pruned.state_dict()
        if baseline.iou_gate:
            if model_cfg is None:
                model_cfg = self.train_config(self.cfg.student.config, 1, list(self.cfg.student.set)).model
            model_cfg = self.with_iou_branch(model_cfg)
        try:
            return self.train_student(folder, self.baseline_epochs(baseline), [], distill_cfg=distill_cfg,
                                      model_cfg=model_cfg, init_state=init_state, teacher_stage=baseline.teacher,
                                      init_from="prune", strict=not baseline.iou_gate)
        except (ValueError, ConfigError) as exc:  # the method refuses this teacher / student pairing
            shutil.rmtree(folder / "train", ignore_errors=True)
            first = str(exc).strip().splitlines()[0]
            raise StageSkipped(f"{baseline.method} with teacher {baseline.teacher!r}: {first}") from None

    # ------------------------------------------------------------------ evaluation / efficiency / export / report
    def available_models(self) -> dict[str, Path]:
        out = {}
        for key, stage in self.model_stages().items():
            folder = self.stages_dir / stage
            if (folder / MODEL_INFO).is_file():
                out[key] = folder
        return out

    def _eval_dataset(self, model_cfg: DetectorConfig, fov_crop: bool = True):
        from training.data.config import DataConfig
        from training.data.kitti_dataset import KittiDataset

        d = self.cfg.data
        data_cfg = DataConfig(root=str(self.data_root), train_split=d.train_split, val_split=d.val_split,
                              class_names=tuple(model_cfg.class_names),
                              point_cloud_range=tuple(model_cfg.point_cloud_range),
                              num_point_features=model_cfg.num_point_features, fov_crop=fov_crop)
        return KittiDataset(data_cfg, d.eval_split, training=False)

    def stage_evaluate(self, folder: Path) -> dict:
        from training import kitti_eval
        from training.evaluation import kitti_metrics, predict_annotations

        results = {}
        e = self.cfg.evaluation
        for key in self.available_models():
            kind, cfg, module = self.load_reported(key)
            task = make_task(kind, cfg, module).to(self.device)
            dense_cfg = cfg.rpn if kind == "two_stage" else cfg
            dataset = self._eval_dataset(dense_cfg)
            gt, dt, _ = predict_annotations(task, dataset, e.batch_size, 0, self.device, e.max_frames,
                                            progress=self.progress)
            result = kitti_eval.evaluate(gt, dt, classes=tuple(dense_cfg.class_names))
            ap = {cls: float(result[cls]["3d_R40"][1]) for cls in dense_cfg.class_names}
            results[key] = {"ap3d_r40_moderate": ap, "map3d_r40_moderate": float(sum(ap.values()) / len(ap)),
                            "frames": len(gt), "detections_per_frame": sum(len(x) for x in dt) / max(len(dt), 1),
                            "kitti": kitti_metrics(result)}
            self.log(f"    {key}: mAP {results[key]['map3d_r40_moderate']:.2f} "
                     f"({', '.join(f'{c} {v:.2f}' for c, v in ap.items())}) on {len(gt)} frames")
        atomic_write_json(folder / "metrics.json", results)
        return {"models": sorted(results)}

    def stage_efficiency(self, folder: Path) -> dict:
        from training.efficiency import measure_models

        models = {}
        for key in self.available_models():
            kind, cfg, module = self.load_reported(key)
            models[key] = make_task(kind, cfg, module)
        frame_path = self._efficiency_frame()
        result = measure_models(models, frame_path, self.cfg.efficiency, log=self.log)
        atomic_write_json(folder / "efficiency.json", result)
        return {"frame": str(frame_path), "points": result["frame_points"]}

    def _efficiency_frame(self) -> Path:
        if self.cfg.efficiency.frame:
            path = Path(self.cfg.efficiency.frame)
            if not path.is_file():
                raise ConfigError(f"efficiency.frame {path}: file not found")
            return path
        from training.data.config import DataConfig
        from training.data.kitti_dataset import KittiDataset

        d = self.cfg.data
        dataset = KittiDataset(DataConfig(root=str(self.data_root), train_split=d.train_split,
                                          val_split=d.eval_split), d.eval_split, training=False)
        return dataset.split_dir / "velodyne" / f"{dataset.frame_ids[0]}.bin"

    def stage_export(self, folder: Path) -> dict:
        try:
            from clean_ros.bundle import load_bundle, save_bundle
        except ImportError:
            raise StageSkipped("bundle (clean_ros.bundle) not available yet") from None
        kind, cfg, module = self.load_reported("student_final")
        row = build_rows(self.stages_dir, self.model_stages()).get("student_final", {})
        out = self.root / "bundle"
        save_bundle(out, module.eval(), cfg, training_config=to_dict(self.cfg),
                    provenance={"method": f"compress:{self.cfg.distill.method}+prune+iou_gate",
                                "teacher": Path(self.cfg.teacher.config).stem,
                                "pruning_ratio": round(1.0 - self.cfg.prune.keep_ratio, 6)},
                    metrics=row, export_onnx=self.cfg.export.onnx)
        bundle = load_bundle(out)  # proves it loads (manifest, hashes, weights)
        return {"bundle": str(out), "files": sorted(bundle.manifest["files"])}

    def stage_report(self, folder: Path) -> dict:
        from training.report import write_report

        paths = write_report(self.root, self.cfg, self.stages_dir, self.model_stages(),
                             [stage.name for stage in self.stages()])
        return {"files": [str(p.relative_to(self.root)) for p in paths]}


def build_rows(stages_dir: Path, model_stages: dict[str, str]) -> dict[str, dict]:
    """report.json's model rows from the evaluate and efficiency stages' outputs."""
    metrics = read_json(stages_dir / "evaluate" / "metrics.json") or {}
    efficiency = (read_json(stages_dir / "efficiency" / "efficiency.json") or {}).get("models", {})
    rows = {}
    for key in model_stages:
        if key not in metrics or key not in efficiency:
            continue
        m, e = metrics[key], efficiency[key]
        rows[key] = {"ap3d_r40_moderate": m["ap3d_r40_moderate"], "map3d_r40_moderate": m["map3d_r40_moderate"],
                     "params": e["params"], "gflops": e["gflops"], "latency_ms": e["latency_ms"]}
    return rows


def read_last_losses(path: Path) -> dict:
    import csv

    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return {}
    if not rows:
        return {}
    out = {}
    for key, value in rows[-1].items():
        if key.startswith("loss_"):
            try:
                out[key[5:]] = round(float(value), 5)
            except ValueError:
                pass
    return out


def epoch_diagnostics(path: Path) -> list[dict]:
    """Per epoch of a training stage (means over its logged steps, from the trainer's epochs.csv): every loss part,
    each part's gradient norm, the KD terms' diagnostics and, with label assignment, the pseudo boxes accepted per
    frame and their precision at BEV IoU 0.5 / 0.7 against the ground truth."""
    import csv

    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return []
    out = []
    for row in rows:
        values = {}
        for key, text in row.items():
            try:
                values[key] = float(text)
            except (TypeError, ValueError):
                continue
        entry = {"epoch": int(values.get("epoch", len(out) + 1)),
                 "loss": {k[5:]: round(v, 5) for k, v in values.items()
                          if k.startswith("loss_") and "/" not in k[5:] and k != "loss_grad_norm"},
                 "grad_norm": {k[10:]: round(v, 5) for k, v in values.items() if k.startswith("loss_grad/")},
                 "kd": {k[10:]: round(v, 4) for k, v in values.items() if k.startswith("loss_diag/")}}
        accepted = entry["kd"].get("label_assign/accepted_per_frame")
        if accepted:
            entry["pseudo_box_precision"] = {
                f"iou{t}": round(entry["kd"].get(f"label_assign/right_iou{t}_per_frame", 0.0) / accepted, 4)
                for t in (50, 70)}
        out.append(entry)
    return out


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    class _Wrapped:  # keeps .dataset visible (score_filters refuses an evaluation-split loader)
        def __init__(self, inner):
            self.inner, self.dataset = inner, getattr(inner, "dataset", None)

        def __iter__(self):
            return iter(tqdm(self.inner, desc=desc, leave=False, dynamic_ncols=True))

    return _Wrapped(iterable)


__all__ = ["CompressPipeline", "PipelineInterrupted", "load_model", "save_model", "make_task", "build_rows",
           "CLEAN_MODELS"]
