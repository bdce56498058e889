"""`compress.py --plan`: check the dataset and the config before anything runs, and say what the run will do.

    plan = make_plan(cfg, graph, iterations=2)      # ConfigError (one line) on a bad dataset or config
    print(plan.to_text())

What it checks, each failure one line (compress.py prints `error: ...`, exit 2):
  - a KITTI root that is not the object layout (<root>/training/{velodyne,label_2,calib}), with a hint when the
    layout sits one folder down (e.g. <root>/object);
  - a missing ImageSets/<split>.txt of the train, val or reported split (KittiDataset would fall back to every
    frame, so training and evaluation would share frames), listed frames without a scan, an empty split, train
    frames that also appear in the evaluated split, unreadable label files (file:line);
  - a model class with no objects in the training split;
  - a teacher and student that distill.method cannot pair (training.distill.check_pairing: anchor layout, head
    type, voxel grid) or whose class lists differ (label assignment passes the teacher's boxes by class index).

What it prints: frames per split and objects per model class; the models' params and GMACs on the frame the
efficiency stage times (training.efficiency.measure_models, the report's own numbers), with their inference
latency; the prunable filters; every stage of training.compression.graph with its epochs, iterations and a time
estimate. The estimate times `iterations` training steps (after one warm-up step) of the student, of the student
with its distillation (teacher forward included) and of the teacher when this run trains it, on the run's device
with its thread count, on the first training frames (unaugmented), with the Trainer's per-part gradient norms
spread over their interval (train config grad_norm_interval); stages whose cost is not measured say so.

Nothing is written: not the run folder, not the dataset (no GT database). A simulated dataset that does not exist
yet is sized from its config; a few frames are simulated into a temporary folder for the timing.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

from clean_ros.yaml_config import ConfigError
from training.compression.compress_config import CompressConfig
from training.compression.plan_checks import (SplitPlan, check_distillable, check_kitti, check_simulated,
                                              simulated_splits, teacher_coverage)
from training.compression.stage_store import Stage, fmt_seconds

DEFAULT_ITERATIONS = 2


@dataclass
class ModelPlan:
    key: str
    kind: str
    params: int
    gmacs: float
    latency_ms: float | None  # batch-1 inference (voxelise + forward + post-processing), median


@dataclass
class StagePlan:
    name: str
    title: str
    epochs: int | None
    iterations: int | None
    seconds: float | None
    note: str = ""


@dataclass
class Plan:
    name: str
    run_folder: Path
    device: str
    threads: int
    world_size: int
    batch_size: int
    data: str
    splits: list[SplitPlan]
    models: list[ModelPlan]
    frame: str
    pruning: str
    stages: list[StagePlan]
    step_seconds: dict[str, float] = field(default_factory=dict)  # "student" / "kd" / "teacher" -> s per step
    warnings: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    plan_seconds: float = 0.0

    @property
    def total_seconds(self) -> float | None:
        known = [s.seconds for s in self.stages if s.seconds is not None]
        return sum(known) if known else None

    def to_text(self) -> str:
        lines = [f"plan of {self.name}: run folder {self.run_folder} (nothing written), device {self.device}, "
                 f"{self.threads} torch thread(s), {self.world_size} process(es) x batch {self.batch_size}",
                 f"data: {self.data}"]
        classes = list(next((s.objects for s in self.splits if s.objects is not None), {}) or {})
        lines.append("  " + f"{'split':<16}{'frames':>8}" + "".join(f"{c:>12}" for c in classes))
        for s in self.splits:
            counts = "".join(f"{(s.objects or {}).get(c, '-'):>12}" for c in classes)
            lines.append(f"  {s.role + ' ' + repr(s.name):<16}{s.frames:>8}{counts}")
        lines.append(f"models (params, GMACs and batch-1 latency on {self.frame}):")
        for m in self.models:
            latency = f"{m.latency_ms:9.1f} ms" if m.latency_ms is not None else "        - ms"
            lines.append(f"  {m.key:<18}{m.kind:<11}{m.params:>12,d} params{m.gmacs:>10.2f} GMACs{latency}")
        lines.append(f"  {self.pruning}")
        lines.append("stages:")
        lines.append(f"  {'#':>2} {'stage':<26}{'epochs':>7}{'iterations':>12}{'estimate':>10}  what")
        for i, s in enumerate(self.stages, 1):
            epochs = "-" if s.epochs is None else str(s.epochs)
            iters = "-" if s.iterations is None else f"{s.iterations:,d}"
            est = "?" if s.seconds is None else fmt_seconds(s.seconds)
            lines.append(f"  {i:>2} {s.name:<26}{epochs:>7}{iters:>12}{est:>10}  {s.title}"
                         + (f" [{s.note}]" if s.note else ""))
        total = self.total_seconds
        unknown = [s.name for s in self.stages if s.seconds is None]
        timed = ", ".join(f"{k} {v:.3f} s" for k, v in self.step_seconds.items())
        if not self.step_seconds:
            lines.append("estimate: not measured (--plan-iterations 0: no timing)")
        else:
            bounds = [s.name for s in self.stages if s.note.startswith("upper bound")]
            lines.append(f"estimate: ~{fmt_seconds(total or 0.0)} in all"
                         + (f" + the stages marked ? ({', '.join(unknown)})" if unknown else "")
                         + (f", {', '.join(bounds)} counted at its upper bound" if bounds else "")
                         + f" (one training step: {timed})")
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append(f"checks passed: {'; '.join(self.checks)} (plan took {self.plan_seconds:.1f} s)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- models
def _teacher_task(cfg: CompressConfig, run):
    """(TeacherTask, trained in this run?) without loading a checkpoint's weights (a teacher folder: with them)."""
    from training.teacher_package import TeacherPackageError, is_teacher_package, load_teacher_package
    from training.teacher_task import TeacherTask, build_task

    t = cfg.teacher
    if t.checkpoint and is_teacher_package(t.checkpoint):
        try:
            two_stage_cfg, model, _ = load_teacher_package(t.checkpoint)
        except TeacherPackageError as exc:
            raise ConfigError(f"teacher.checkpoint: {exc}") from None
        return TeacherTask(two_stage_cfg, model), False
    train_cfg = run.train_config(t.config, t.epochs, t.set)
    if train_cfg.two_stage is None:
        raise ConfigError(f"teacher.config {t.config}: needs a two_stage section (a two-stage teacher)")
    return build_task(train_cfg), not t.checkpoint


def pruning_line(student, cfg: CompressConfig) -> tuple[str, int]:
    """(line, prunable filters): how many filters the keep ratio keeps, and the size of the uniform network of that
    width (training.compression.width_ladder; the importance ranking decides the real per-layer widths)."""
    from clean_ros.models.detector import build_detector
    from clean_ros.models.flops import count_parameters
    from training.compression.width_ladder import uniform_width_config
    from training.prune.graph import build_graph

    p = cfg.prune
    layers = build_graph(student, p.prune_encoder, p.prune_backbone_3d)
    filters = sum(layer.width for layer in layers)
    uniform = build_detector(uniform_width_config(student.cfg, p.keep_ratio, p.prune_encoder, p.prune_backbone_3d))
    return (f"pruning: {filters:,d} filters in {len(layers)} layers; keep {p.keep_ratio:g} -> "
            f"{int(round(filters * p.keep_ratio)):,d}, which ones by the importance ranking (the uniform "
            f"x{p.keep_ratio:g} network would have {count_parameters(uniform):,d} params)"), filters


# --------------------------------------------------------------------------- timing
def seconds_per_step(task, batch, iterations: int, device: torch.device, amp: bool,
                     grad_norm_interval: int = 0) -> float:
    """Median seconds of one training step (forward, losses, backward, optimiser) after one warm-up step.

    grad_norm_interval > 0: plus the Trainer's per-part gradient norms (one more backward per loss part, every
    grad_norm_interval steps), timed once and spread over the interval."""
    task.to(device).train()
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    batch = batch.to(device)

    def step() -> float:
        tic = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            result = task(batch)
        result.total.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - tic

    step()
    seconds = float(np.median([step() for _ in range(iterations)]))
    if grad_norm_interval > 0:
        from training.trainer import part_grad_norms

        result = task(batch)
        tic = time.perf_counter()
        part_grad_norms(result.parts, params)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += (time.perf_counter() - tic) / grad_norm_interval
    return seconds


def _samples(dataset, count: int) -> list:
    return [dataset[i] for i in range(min(count, len(dataset)))]


# --------------------------------------------------------------------------- stages
def stage_schedule(cfg: CompressConfig, graph, stage: Stage) -> tuple[int | None, str]:
    """(epochs, which timed step it repeats: "teacher" | "student" | "kd") of a training stage; (None, "") else."""
    c = cfg
    kd = "kd" if c.distill.method != "none" else "student"
    if stage.name == "teacher":
        return (0 if c.teacher.checkpoint else c.teacher.epochs), "teacher"
    if stage.name == "student_baseline":
        return c.student.epochs, "student"
    if stage.name == "student_cakd":
        return c.student.epochs, kd
    if stage.name == "finetune":
        return c.finetune.epochs, kd
    if stage.name == "iou_refine":
        return c.iou_refine.epochs, kd
    for baseline in c.baselines:
        if stage.name == f"baseline_{baseline.name}":
            return graph.baseline_epochs(baseline), ("kd" if baseline.method != "none" else "student")
    return None, ""


def _fixed_stage(stage: Stage, cfg: CompressConfig, infer: dict, n_models: int, eval_frames: int,
                 filters: int, sim_seconds_per_frame: float | None, val_frames: int = 0,
                 num_classes: int = 3) -> tuple[float | None, str]:
    """Estimate and note of a non-training stage from the measured inference times (None = not measured)."""
    teacher_ms, student_ms = infer.get("teacher"), infer.get("student")
    per_round = None if teacher_ms is None or student_ms is None else (teacher_ms + (n_models - 1) * student_ms) / 1e3
    if stage.name == "data":
        if cfg.data.source == "kitti":
            return 0.0, "checked above"
        if sim_seconds_per_frame is None:
            return None, "simulation not timed"
        return cfg.data.simulate.frames * sim_seconds_per_frame / cfg.data.simulate.workers, "simulate"
    if stage.name == "importance":
        if cfg.prune.criterion == "l1":
            return 0.0, "weights only"
        if student_ms is None:
            return None, ""
        frames = cfg.prune.num_frames
        return frames * filters * student_ms / 1e3, f"upper bound: {filters} filter-zeroed passes x {frames} frames"
    if stage.name == "evaluate":
        frames = min(eval_frames, cfg.evaluation.max_frames or eval_frames)
        return (None, "") if per_round is None else (frames * per_round, f"{n_models} models x {frames} frames")
    if stage.name == "efficiency":
        runs = cfg.efficiency.warmup + cfg.efficiency.repeats
        return (None, "") if per_round is None else (runs * per_round, f"{n_models} models x {runs} runs")
    if stage.name == "thresholds":  # stage_thresholds.search_thresholds: at most classes x rounds probes + 1
        from training.compression.stage_thresholds import MAX_ROUNDS

        passes = (num_classes * MAX_ROUNDS + 1) * (1 + len(cfg.export.operating_points))
        return (None, "") if student_ms is None else (
            passes * val_frames * student_ms / 1e3, f"upper bound: {passes} passes of the final student x "
                                                    f"{val_frames} val frames (student latency; matching not counted)")
    return 0.0, ""


@dataclass
class _DataSource:
    line: str  # what the plan prints about the dataset
    splits: list[SplitPlan]
    source: object  # a DatasetBuilder over the frames the timing reads
    train_split: str
    scan_split: str  # the split whose first full scan is timed (the efficiency stage's frame)
    checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tmp: tempfile.TemporaryDirectory | None = None  # simulated sample frames, removed after the timing
    sim_seconds: float | None = None  # simulation time per frame


def _data_source(cfg: CompressConfig, run, class_names: list[str]) -> _DataSource:
    d = cfg.data
    if d.source == "kitti":
        splits, warnings = check_kitti(cfg, run.datasets, class_names)
        return _DataSource(f"kitti {d.root}", splits, run.datasets, d.train_split, d.eval_split,
                           ["KITTI layout, ImageSets, labels, every class in the training split, disjoint splits"],
                           warnings)
    if (run.data_root / "ImageSets").is_dir():  # a finished data stage: count what was simulated
        splits, warnings = check_simulated(cfg, run, class_names)
        return _DataSource(f"simulated, {run.data_root} (already generated)", splits, run.datasets, d.train_split,
                           d.eval_split, ["simulated dataset: labels, every class in the training split"], warnings)
    tmp = tempfile.TemporaryDirectory(prefix="compress_plan_")
    source, seconds = _simulate_sample(cfg, Path(tmp.name), max(2, cfg.training.batch_size))
    return _DataSource(f"simulated ({d.simulate.frames} frames, seed {d.simulate.seed}; generated by the data stage, "
                       f"objects counted then)", simulated_splits(cfg), source, "trainval", "trainval", tmp=tmp,
                       sim_seconds=seconds)


# --------------------------------------------------------------------------- the plan
def make_plan(cfg: CompressConfig, graph, iterations: int = DEFAULT_ITERATIONS,
              log: Callable[[str], None] = lambda line: None) -> Plan:
    """Check the dataset and config of `graph` (a CompressionGraph) and estimate its run; writes nothing."""
    from training.efficiency import measure_models
    from clean_ros.models.detector import build_detector
    from training.task import DetectionTask

    start = time.perf_counter()
    run = graph.run
    stages = graph.stages()
    world_size = run.ctx.world_size  # torchrun: iterations per process
    student_cfg = run.train_config(cfg.student.config, cfg.student.epochs, cfg.student.set)
    model_cfg = student_cfg.model
    class_names = list(model_cfg.class_names)
    checks, warnings = [], []

    data = _data_source(cfg, run, class_names)
    checks += data.checks
    warnings += data.warnings
    splits, source, train_name, scan_split = data.splits, data.source, data.train_split, data.scan_split
    teacher_task, teacher_trained = _teacher_task(cfg, run)
    student = build_detector(model_cfg)
    check_distillable(cfg.distill.method, teacher_task.model, student)
    checks.append(f"teacher/student pairing for distill.method={cfg.distill.method}")
    coverage = teacher_coverage(teacher_task.model, student) if cfg.distill.method != "none" else 1.0
    if coverage < 0.999:
        warnings.append(f"the teacher's grid covers {coverage:.0%} of the student's: distillation teaches only there "
                        f"(the labels teach everywhere)")
    for baseline in cfg.baselines:
        if baseline.method != "none" and baseline.teacher == "teacher":
            try:
                check_distillable(baseline.method, teacher_task.model, student)
            except ConfigError as exc:
                warnings.append(f"baseline {baseline.name} will be reported as skipped: {exc}")

    train_frames = next(s.frames for s in splits if s.role == "train")
    eval_frames = next(s.frames for s in splits if s.name == cfg.evaluated_split)
    val_frames = next((s.frames for s in splits if s.name == cfg.data.val_split), 0)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.training.threads)
    try:
        device = run.device
        frame = source.first_scan(scan_split)
        student_task = DetectionTask(model_cfg, student)
        efficiency = SimpleNamespace(threads=cfg.training.threads, warmup=1 if iterations else 0,
                                     repeats=max(1, iterations))
        measured = measure_models({"teacher": teacher_task, "student": student_task}, frame, efficiency, device,
                                  log=log)["models"]
        infer = {k: v["latency_ms"]["p50"] for k, v in measured.items()} if iterations else {}
        models = [ModelPlan("teacher", "two-stage", measured["teacher"]["params"], measured["teacher"]["gflops"],
                            infer.get("teacher")),
                  ModelPlan("student", model_cfg.head.type, measured["student"]["params"],
                            measured["student"]["gflops"], infer.get("student"))]
        pruning, filters = pruning_line(student, cfg)
        steps = {}
        if iterations:
            steps = _time_steps(cfg, run, source, train_name, student_cfg, teacher_task, teacher_trained,
                                iterations, device)
    finally:
        torch.set_num_threads(threads_before)
        if data.tmp is not None:
            data.tmp.cleanup()

    per_epoch = math.ceil(math.ceil(train_frames / world_size) / cfg.training.batch_size)
    n_models = len(graph.model_refs())
    plans = []
    for stage in stages:
        epochs, kind = stage_schedule(cfg, graph, stage)
        if epochs is None:
            seconds, note = _fixed_stage(stage, cfg, infer, n_models, eval_frames, filters, data.sim_seconds,
                                         val_frames, len(model_cfg.class_names))
            plans.append(StagePlan(stage.name, stage.title, None, None, seconds, note))
            continue
        iters = epochs * per_epoch
        seconds = iters * steps[kind] if kind in steps else (0.0 if iters == 0 else None)
        note = "pruned widths: less than this" if stage.name in ("finetune", "iou_refine") else ""
        if stage.name.startswith("baseline_") and kind == "kd":
            note = "timed with distill.method's step"
        plans.append(StagePlan(stage.name, stage.title, epochs, iters, seconds, note))
    return Plan(name=cfg.name, run_folder=run.root, device=str(device), threads=cfg.training.threads,
                world_size=world_size, batch_size=cfg.training.batch_size, data=data.line, splits=splits,
                models=models, frame=f"{Path(frame).name} of split {scan_split!r}", pruning=pruning, stages=plans,
                step_seconds=steps, warnings=warnings, checks=checks, plan_seconds=time.perf_counter() - start)


def _simulate_sample(cfg: CompressConfig, folder: Path, frames: int):
    """Simulate `frames` frames with the run's simulator settings into `folder`: (DatasetBuilder, s per frame)."""
    from training.compression.datasets import DatasetBuilder
    from training.compression.stage_data import simulator_config
    from training.simulate import simulate_dataset

    s = cfg.data.simulate
    stats = simulate_dataset(simulator_config(s), folder, frames, s.seed, 1, progress=False)
    return DatasetBuilder(cfg.data, folder, lambda line: None), stats["seconds"] / max(stats["frames"], 1)


def _time_steps(cfg: CompressConfig, run, source, train_name: str, student_cfg, teacher_task, teacher_trained: bool,
                iterations: int, device: torch.device) -> dict[str, float]:
    """Seconds per training step of the student, the student with its distillation, and the teacher if trained."""
    from clean_ros.models.detector import build_detector
    from training.data.loader import Collator
    from training.distill import build_distillation
    from training.task import DetectionTask

    model_cfg = student_cfg.model
    samples = _samples(source.split(train_name, model_cfg), cfg.training.batch_size)
    amp = bool(student_cfg.amp)
    # the Trainer's per-part gradient norms (single process only), as the stages will log them
    norms = student_cfg.grad_norm_interval if student_cfg.log_grad_norms and run.ctx.world_size == 1 else 0
    steps = {"student": seconds_per_step(DetectionTask(model_cfg, build_detector(model_cfg)),
                                         Collator.from_config(model_cfg, training=True)(samples), iterations,
                                         device, amp, norms)}
    if teacher_trained:  # before the distillation freezes the teacher
        rpn = teacher_task.cfg
        t_samples = _samples(source.split(train_name, rpn), cfg.training.batch_size)
        steps["teacher"] = seconds_per_step(teacher_task, Collator.from_config(rpn, training=True)(t_samples),
                                            iterations, device, amp, norms)
    if cfg.distill.method != "none":
        student = build_detector(model_cfg)
        teacher_task.model.to(device).eval()
        try:
            parts = build_distillation(cfg.distill, teacher_task.model, student)
        except ValueError as exc:
            raise ConfigError(f"distill: {exc}") from None
        task = DetectionTask(model_cfg, student, loss_terms=parts.loss_terms, target_hooks=parts.target_hooks,
                             extra_voxelizers=parts.voxelizers)
        batch = Collator.from_config(model_cfg, training=True, extra=parts.voxelizers)(samples)
        steps["kd"] = seconds_per_step(task, batch, iterations, device, amp, norms)
    return steps


__all__ = ["Plan", "ModelPlan", "StagePlan", "make_plan", "stage_schedule", "seconds_per_step", "DEFAULT_ITERATIONS"]
