"""The stage graph of one compression run, in order (METHOD.md sections 2-7, section 4 for the order):

  data              simulate the dataset (or check a KITTI root)                       stage_data
  teacher           train the two-stage teacher or load it (a teacher folder)          stage_teacher
  student_baseline  the full-width student without KD (importance is scored on it)     stage_students
  student_cakd      optional (student.kd_row): full width with distill.method, from student_baseline's weights
  importance        masked / unmasked / l1 filter importance of the trained student    stage_pruning
  prune             global top-rho filters -> smaller student with inherited weights
  finetune          the pruned student with distill.method from its inherited weights  stage_students
                    (+ the IoU branch when iou_refine.epochs is 0) -> "student_pruned" (gate off), "student_final"
  iou_refine        optional (iou_refine.epochs > 0): the IoU branch trained afterwards -> "student_final"
  baseline_<name>   comparison students (baselines)
  evaluate          every model on the same held-out split (KITTI AP R40)              stage_outputs
  efficiency        params, GFLOPs, CPU latency p50/p95 at batch 1
  thresholds        only with export.score_thresholds: calibrate: per-class score thresholds  stage_thresholds
                    of the final student on the VAL split (false positives per frame budget)
  export            the final student as a bundle (with the calibrated thresholds when present)
  report            report.json, report.md, plots

Under torchrun every rank builds the same graph; the stages marked `parallel` (training, importance, evaluate) run on
every rank and shard their work, the others run on rank 0 alone (stage_store.StageStore.run_all).

Each Stage carries the config values it reads (hashed with its dependencies' run ids, stage_store.StageStore) and
calls its body with the run's CompressRun. model_refs() names the reported models and the stages that store them.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from clean_ros.yaml_config import ConfigError
from training.compression import (stage_data, stage_outputs, stage_pruning, stage_students, stage_teacher,
                                  stage_thresholds)
from training.compression.compress_config import BaselineConfig, CompressConfig
from training.compression.run_context import CompressRun
from training.compression.stage_store import Stage
from training.compression.stored_models import ModelRef, available_models, load_reported
from training.distributed import DistContext


class CompressionGraph:
    def __init__(self, cfg: CompressConfig, root: Path, log: Callable[[str], None], progress: bool,
                 ctx: DistContext | None = None):
        self.cfg = cfg
        self.run = CompressRun(cfg, root, log, progress, ctx)

    def stages(self) -> list[Stage]:
        c, run = self.cfg, self.run
        train_frames = self._train_frames_estimate()
        common = {"training": c.training, "data": c.data}
        stages = [
            Stage("data", "simulate the dataset" if c.data.source == "simulate" else "check the KITTI dataset",
                  partial(stage_data.prepare_data, run), {"data": c.data}),
            Stage("teacher", "two-stage teacher (train)" if not c.teacher.checkpoint else "two-stage teacher (load)",
                  partial(stage_teacher.teacher, run),
                  {**common, **stage_teacher.teacher_identity(c.teacher)},
                  ("data",),
                  0 if c.teacher.checkpoint else train_frames * c.teacher.epochs, "teacher",
                  parallel=not c.teacher.checkpoint),
            Stage("student_baseline", "full-width student without KD", partial(stage_students.student_baseline, run),
                  {**common, "student": c.student}, ("data",), train_frames * c.student.epochs, "student",
                  parallel=True),
        ]
        if c.student.kd_row:
            stages.append(Stage("student_cakd", f"full-width student, method {c.distill.method!r}, from the trained "
                                "baseline (comparison row)", partial(stage_students.student_cakd, run),
                                {**common, "student": c.student, "distill": c.distill.stage_identity()},
                                ("data", "teacher", "student_baseline"), train_frames * c.student.epochs * 1.5,
                                "student", parallel=True))
        joint = {"iou_refine": c.iou_refine.training_identity()} if c.iou_refine.joint else {}
        stages += [
            Stage("importance", f"{c.prune.criterion} filter importance of the trained student on training frames",
                  partial(stage_pruning.importance, run), {"prune": c.prune, "data": c.data}, ("student_baseline",),
                  parallel=True),
            Stage("prune", f"keep {c.prune.keep_ratio:.0%} of the filters (physical surgery)",
                  partial(stage_pruning.prune, run), {"prune": c.prune}, ("importance", "student_baseline")),
            Stage("finetune", f"pruned student, method {c.distill.method!r}, from its inherited weights"
                  + (f" (+ IoU branch, {c.iou_refine.gate.mode} gate)" if joint else ""),
                  partial(stage_students.finetune, run),
                  {**common, "student": c.student, "distill": c.distill.stage_identity(), "finetune": c.finetune,
                   **joint},
                  ("prune", "teacher"), train_frames * c.finetune.epochs * 1.5, "student", parallel=True),
        ]
        if c.iou_refine.enabled and not c.iou_refine.joint:
            stages.append(Stage("iou_refine", f"IoU branch + {c.iou_refine.gate.mode} gate",
                                partial(stage_students.iou_refine, run),
                                {**common, "student": c.student, "distill": c.distill.stage_identity(),
                                 "iou_refine": c.iou_refine.training_identity()},
                                ("finetune", "teacher"), train_frames * c.iou_refine.epochs * 1.5, "student",
                                parallel=True))
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
                                partial(stage_students.baseline, run, spec=baseline, epochs=epochs),
                                {**common, "student": c.student, "distill": c.distill.stage_identity(),
                                 "baseline": baseline,
                                 **({"iou_refine": c.iou_refine.training_identity()} if baseline.iou_gate else {})},
                                tuple(deps), train_frames * epochs * (1.5 if baseline.method != "none" else 1.0),
                                "student", parallel=True))
        refs = self.model_refs()
        model_stages = tuple(ref.stage for ref in refs.values())
        stages += [
            Stage("evaluate", f"every model on split {c.evaluated_split!r} (KITTI AP R40)",
                  partial(stage_outputs.evaluate, run, refs=refs),
                  {"evaluation": c.evaluation.stage_identity(), "data": c.data}, ("data", *model_stages),
                  parallel=True),
            Stage("efficiency", "params, GFLOPs, CPU latency at batch 1",
                  partial(stage_outputs.efficiency, run, refs=refs),
                  {"efficiency": c.efficiency}, ("data", *model_stages)),
        ]
        calibrate = c.export.enabled and c.export.score_thresholds == "calibrate"
        if calibrate:
            stages.append(Stage("thresholds", f"per-class score thresholds of the final student on split "
                                f"{c.data.val_split!r} (<= {c.export.max_false_positives_per_frame:g} false "
                                "positives per frame)", partial(stage_thresholds.calibrate, run, refs=refs),
                                {"export": c.export.stage_identity(), "data": c.data, "evaluation": c.evaluation.stage_identity()},
                                ("data", refs["student_final"].stage)))
        if c.export.enabled:
            stages.append(Stage("export", "final student -> bundle", partial(stage_outputs.export, run, refs=refs),
                                {"export": c.export.stage_identity()},
                                (refs["student_final"].stage, "evaluate", "efficiency",
                                 *(("thresholds",) if calibrate else ()))))
        names = [s.name for s in stages] + ["report"]
        stages.append(Stage("report", "report.json, report.md, plots",
                            partial(stage_outputs.report, run, refs=refs, stage_order=names), {},
                            tuple(names[:-1])))
        return stages

    def baseline_epochs(self, baseline: BaselineConfig) -> int:
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

    def available_models(self) -> dict[str, Path]:
        """report key -> stage folder of every reported model a finished stage stored."""
        return available_models(self.run.stages_dir, self.model_refs())

    def load_reported(self, key: str) -> tuple[str, Any, torch.nn.Module]:
        """(kind, config, module) of a reported model, with its evaluation gate applied."""
        return load_reported(self.run.stages_dir, self.model_refs()[key], self.cfg.iou_refine.gate)

    def _train_frames_estimate(self) -> float:
        if self.cfg.data.source == "simulate":
            return self.cfg.data.simulate.frames * (1.0 - self.cfg.data.simulate.val_fraction)
        listing = Path(self.cfg.data.root) / "ImageSets" / f"{self.cfg.data.train_split}.txt"
        try:
            return float(len([line for line in listing.read_text().splitlines() if line.strip()]))
        except OSError:
            return 0.0


__all__ = ["CompressionGraph"]
