"""The stages after training, over every reported model (refs: report key -> ModelRef, from the graph):

  evaluate    every model on the same held-out split (data.eval_split), KITTI 3D AP R40 -> metrics.json
  efficiency  params, GFLOPs, CPU latency p50/p95 at batch 1 (training.efficiency) -> efficiency.json
  export      the final student as a bundle (clean_ros.inference.bundle.save_bundle), loaded back to prove it;
              with export.score_thresholds: calibrate, its per-class score thresholds are the thresholds stage's,
              and the manifest lists the stage's operating points (the node's operating_point parameter)
  report      report.json, report.md, plots (training/report.py)
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Subset

from clean_ros.yaml_config import ConfigError, to_dict
from training.compression.report_rows import build_rows
from training.compression.run_context import CompressRun
from training.compression.stage_store import StageSkipped, atomic_write_json
from training.compression.stored_models import ModelRef, available_models, load_reported, make_task
from training.report import write_report


def _reported(run: CompressRun, refs: dict[str, ModelRef], key: str):
    return load_reported(run.stages_dir, refs[key], run.cfg.iou_refine.gate)


def evaluate(run: CompressRun, folder: Path, refs: dict[str, ModelRef]) -> dict:
    from clean_ros.metrics import kitti_eval
    from training.evaluate_task import kitti_metrics, predict_annotations

    results = {}
    e = run.cfg.evaluation
    ctx = run.ctx
    for key in available_models(run.stages_dir, refs):
        kind, cfg, module = _reported(run, refs, key)
        task = make_task(kind, cfg, module).to(run.device)
        dense_cfg = cfg.rpn if kind == "two_stage" else cfg
        dataset = run.datasets.split(run.cfg.evaluated_split, dense_cfg)
        count = min(e.max_frames, len(dataset)) if e.max_frames else len(dataset)
        shard = ctx.shard(count)  # torchrun: rank r predicts frames r, r + W, ...
        gt, dt, ids = predict_annotations(task, Subset(dataset, shard), e.batch_size, 0, run.device,
                                          progress=run.progress and ctx.is_main)
        if ctx.distributed:  # rank 0 gathers every frame's annotations back into the split's order
            gathered = ctx.all_gather_object((shard, gt, dt))
            if not ctx.is_main:
                continue
            gt, dt = gather_in_order(gathered, count)
        result = kitti_eval.evaluate(gt, dt, classes=tuple(dense_cfg.class_names))
        ap = {cls: float(result[cls]["3d_R40"][1]) for cls in dense_cfg.class_names}
        results[key] = {"ap3d_r40_moderate": ap, "map3d_r40_moderate": float(sum(ap.values()) / len(ap)),
                        "frames": len(gt), "detections_per_frame": sum(len(x) for x in dt) / max(len(dt), 1),
                        "kitti": kitti_metrics(result)}
        run.log(f"    {key}: mAP {results[key]['map3d_r40_moderate']:.2f} "
                f"({', '.join(f'{c} {v:.2f}' for c, v in ap.items())}) on {len(gt)} frames")
    if not ctx.is_main:
        return {}
    atomic_write_json(folder / "metrics.json", results)
    return {"models": sorted(results)}


def gather_in_order(per_rank: list[tuple[list[int], list, list]], count: int) -> tuple[list, list]:
    """(gt, dt) lists over all frames in split order, from each rank's (indices, gt, dt)."""
    gt, dt = [None] * count, [None] * count
    for indices, rank_gt, rank_dt in per_rank:
        for slot, (g, d) in zip(indices, zip(rank_gt, rank_dt)):
            gt[slot], dt[slot] = g, d
    return gt, dt


def efficiency(run: CompressRun, folder: Path, refs: dict[str, ModelRef]) -> dict:
    from training.efficiency import measure_models

    models = {}
    for key in available_models(run.stages_dir, refs):
        models[key] = make_task(*_reported(run, refs, key))
    frame_path = _efficiency_frame(run)
    result = measure_models(models, frame_path, run.cfg.efficiency, log=run.log)
    atomic_write_json(folder / "efficiency.json", result)
    return {"frame": str(frame_path), "points": result["frame_points"]}


def _efficiency_frame(run: CompressRun) -> Path:
    if run.cfg.efficiency.frame:
        path = Path(run.cfg.efficiency.frame)
        if not path.is_file():
            raise ConfigError(f"efficiency.frame {path}: file not found")
        return path
    return run.datasets.first_scan(run.cfg.data.eval_split)


def export(run: CompressRun, folder: Path, refs: dict[str, ModelRef]) -> dict:
    try:
        from clean_ros.inference.bundle import load_bundle, save_bundle
    except ImportError:
        raise StageSkipped("bundle (clean_ros.inference.bundle) not available yet") from None
    c = run.cfg
    kind, cfg, module = _reported(run, refs, "student_final")
    row = build_rows(run.stages_dir, {key: ref.stage for key, ref in refs.items()}).get("student_final", {})
    points: list[dict] = []
    if c.export.score_thresholds == "calibrate":  # the thresholds stage's per-class values, through the validator
        from clean_ros.inference.postprocess_settings import updated_postprocess
        from training.compression.stage_thresholds import calibrated_score_thresholds, manifest_operating_points

        cfg.postprocess = updated_postprocess(
            cfg.postprocess, {"score_thresholds": calibrated_score_thresholds(run.stages_dir, tuple(cfg.class_names))},
            cfg.class_names, iou_branch=bool(cfg.head.iou_branch))
        points = manifest_operating_points(run.stages_dir, tuple(cfg.class_names))  # the node's operating_point
    out = run.root / "bundle"
    save_bundle(out, module.eval(), cfg, training_config=to_dict(c),
                provenance={"method": f"compress:{c.distill.method}+prune+iou_gate",
                            "teacher": Path(c.teacher.config).stem,
                            "pruning_ratio": round(1.0 - c.prune.keep_ratio, 6),
                            "compress_config": c.name, "report": "report.md of the compress run (README.md when "
                                                                  "installed by training/release_default.py)"},
                metrics=row, export_onnx=c.export.onnx, sensor_height=_training_sensor_height(run),
                intensity_level=_training_intensity_level(run), ground_height=_training_ground_height(run),
                operating_points=points)
    bundle = load_bundle(out)  # proves it loads (manifest, hashes, weights)
    return {"bundle": str(out), "files": sorted(bundle.manifest["files"])}


def _training_sensor_height(run: CompressRun) -> float | None:
    """The simulated sensor's mounting height (the bundle's `sensor_height`: infer / the node move other mounts to
    it); None for a KITTI root (the bundle default, KITTI's HDL-64E at 1.73 m)."""
    if run.cfg.data.source != "simulate":
        return None
    from training.compression.stage_data import simulator_config

    return float(simulator_config(run.cfg.data.simulate).sensor.mount_height)


def _training_intensity_level(run: CompressRun) -> float | None:
    """The training split's intensity level (the bundle's `intensity_level`: infer / the node scale other sensors'
    intensity to it); None, with a log line, when its scans give none (e.g. no intensity recorded)."""
    from clean_ros.inference.intensity_level import dataset_intensity_level
    from training.bundle_fields import split_scans

    try:
        return dataset_intensity_level(split_scans(run.data_root, run.cfg.data.train_split)[1])
    except ValueError as exc:
        run.log(f"bundle without an intensity level (no automatic intensity): {exc}")
        return None


def _training_ground_height(run: CompressRun) -> float | None:
    """The training split's ground below the sensor as clean_ros.inference.ground_plane measures it (the bundle's
    `ground_height`: the node's mount check and automatic mount compare other sensors' ground with it); None, with a
    log line, when its scans show too little ground."""
    from clean_ros.inference.ground_plane import dataset_ground_height
    from training.bundle_fields import split_scans

    try:
        return dataset_ground_height(split_scans(run.data_root, run.cfg.data.train_split)[1])
    except ValueError as exc:
        run.log(f"bundle without a ground height (the mount check uses its sensor_height): {exc}")
        return None


def report(run: CompressRun, folder: Path, refs: dict[str, ModelRef], stage_order: list[str]) -> dict:
    paths = write_report(run.root, run.cfg, run.stages_dir, {key: ref.stage for key, ref in refs.items()},
                         stage_order)
    return {"files": [str(p.relative_to(run.root)) for p in paths]}


__all__ = ["evaluate", "efficiency", "export", "report", "gather_in_order"]
