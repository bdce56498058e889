#!/usr/bin/env python3
"""Evaluate a trained two-stage teacher on held-out frames and write it as a teacher folder (weights-only).

    python training/ship_teacher.py --run runs/teacher_two_stage_sim --out models/teacher \\
        --eval-root data/sim_heldout --eval-split val [--set roi_head.score_rule=iou]

Reads the run's config.yaml and checkpoints/last.pt, evaluates KITTI 3D / BEV AP (R40, moderate) on the held-out
split, and writes models/teacher/ (training/teacher_package.py: manifest with provenance, metrics and sha256,
teacher.yaml, weights.safetensors, README.md). `--set` changes inference-only settings of the teacher's config
(e.g. its final score rule). Errors are one line and exit 2; nothing is written then.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clean_ros.yaml_config import (ConfigError, add_override_argument, apply_overrides, load_config,  # noqa: E402
                                   to_dict)

EXIT_USAGE = 2


def predict_teacher(model, cfg, root: Path, split: str, batch_size: int = 2, progress: bool = False):
    """(ground truth, the teacher's final (second-stage) detections, frame ids) on a KITTI-layout split, read with the
    teacher's own range, camera crop and point features."""
    import torch

    from training.data.data_config import DataConfig, camera_crop_for
    from training.data.kitti_dataset import KittiDataset
    from training.evaluate_task import predict_annotations
    from training.teacher_task import TeacherTask

    rpn = cfg.rpn
    data_cfg = DataConfig(root=str(root), val_split=split, class_names=tuple(rpn.class_names),
                          fov_crop=camera_crop_for(rpn.point_cloud_range),
                          point_cloud_range=tuple(rpn.point_cloud_range), num_point_features=rpn.num_point_features)
    dataset = KittiDataset(data_cfg, split, training=False)
    return predict_annotations(TeacherTask(cfg, model), dataset, batch_size, 0, torch.device("cpu"), progress=progress)


def evaluate_teacher(model, cfg, root: Path, split: str, batch_size: int = 2, progress: bool = False) -> dict:
    """KITTI AP of the teacher's final (second-stage) detections on a KITTI-layout split."""
    from clean_ros.metrics import kitti_eval
    from training.evaluate_task import kitti_metrics

    rpn = cfg.rpn
    tic = time.perf_counter()
    gt, dt, _ = predict_teacher(model, cfg, root, split, batch_size, progress)
    result = kitti_eval.evaluate(gt, dt, classes=tuple(rpn.class_names))
    ap3d = {c: round(float(result[c]["3d_R40"][1]), 2) for c in rpn.class_names}
    bev = {c: round(float(result[c]["bev_R40"][1]), 2) for c in rpn.class_names}
    return {"split": f"{root}:{split}", "frames": len(gt), "ap3d_r40_moderate": ap3d,
            "map3d_r40_moderate": round(sum(ap3d.values()) / len(ap3d), 2), "apbev_r40_moderate": bev,
            "seconds": round(time.perf_counter() - tic, 1), "kitti": kitti_metrics(result)}


def _train_seconds(run: Path, checkpoint: dict | None = None) -> float | None:
    """Training time of the run over all its sessions: the last checkpoint's own count (train_seconds, written by
    the trainer since it kept one), else the trainer's timestamped train.log (runs of older code).

    A resumed run logs one "training ... at epoch E iteration I" line per session; each session counts from that
    line to its last "epoch k/N: loss" line (an interrupted session's unfinished last epoch is not counted: the next
    session repeats it). The "finished N epochs in X s" line alone would count only the last session."""
    import re
    from datetime import datetime

    from training.checkpoint import CheckpointError, load_checkpoint

    try:
        if checkpoint is None:  # the caller's already-read last.pt saves reading a large file twice
            checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
        seconds = float(checkpoint.get("train_seconds", 0.0))
    except CheckpointError:
        seconds = 0.0
    if seconds > 0:
        return round(seconds, 1)
    try:
        text = (run / "train.log").read_text()
    except OSError:
        return None
    stamp = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) "
    total, start, end = 0.0, None, None
    for line in text.splitlines():
        m = re.match(stamp + r"(.*)$", line)
        if not m:
            continue
        when, what = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"), m.group(2)
        if re.match(r"training .* (starting|resuming) at epoch \d+", what):
            if start is not None and end is not None:
                total += (end - start).total_seconds()
            start, end = when, None
        elif start is not None and re.match(r"epoch \d+/\d+: ", what):
            end = when
    if start is not None and end is not None:
        total += (end - start).total_seconds()
    return round(total, 1) if total > 0 else None


def readme(manifest: dict, folder: Path) -> str:
    m, p = manifest["metrics"], manifest["provenance"]
    ap = m.get("ap3d_r40_moderate", {})
    lines = [f"# The shipped teacher: `{manifest['name']}`", "",
             "A two-stage detector (SECOND RPN + RoI head with an IoU-quality logit) trained only on simulated "
             f"scans. A compress config loads it with `teacher.checkpoint: {folder.as_posix()}`; it is weights-only "
             "(safetensors) and loads without executing code. Details: docs/TEACHER.md.", "",
             f"- parameters: {manifest['params']:,}",
             f"- held-out KITTI 3D AP R40 moderate on {m.get('frames')} simulated frames ({m.get('split')}): "
             + ", ".join(f"{c} {v:.2f}" for c, v in ap.items()) + f"; mAP {m.get('map3d_r40_moderate')}",
             f"- trained by: `{p.get('command')}` on `{p.get('data')}`",
             f"- training: {p.get('epochs')} epochs, {p.get('train_seconds')} s of training (all sessions of the run) "
             f"on {p.get('machine')}",
             f"- commit of the training code: `{p.get('train_commit')}`; written by ship_teacher.py at "
             f"`{p.get('ship_commit')}`", "",
             "sha256 of the files are in manifest.json.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="the teacher's training run folder")
    ap.add_argument("--out", type=Path, default=Path("models/teacher"))
    ap.add_argument("--eval-root", type=Path, required=True, help="KITTI-layout root with held-out frames")
    ap.add_argument("--eval-split", default="val")
    ap.add_argument("--data", default="", help="how the training data was made (recorded in the provenance)")
    ap.add_argument("--train-commit", default="", help="commit of the code that trained the run (provenance)")
    add_override_argument(ap)
    args = ap.parse_args(argv)
    try:
        import os
        import platform

        from clean_ros.models.two_stage import TwoStageDetector
        from clean_ros.models.two_stage_config import TwoStageConfig
        from clean_ros.provenance import git_commit
        from training.checkpoint import CheckpointError, load_checkpoint
        from training.train_config import TrainConfig
        from training.teacher_package import save_teacher_package

        run_cfg = load_config(TrainConfig, args.run / "config.yaml")
        if run_cfg.two_stage is None:
            raise ConfigError(f"{args.run / 'config.yaml'}: not a two-stage teacher run (no two_stage section)")
        cfg = load_config(TwoStageConfig, data=apply_overrides(to_dict(run_cfg.two_stage), args.overrides))
        model = TwoStageDetector(cfg)
        checkpoint = load_checkpoint(args.run / "checkpoints" / "last.pt")
        model.load_state_dict(checkpoint["model"])
        model.eval()
        metrics = evaluate_teacher(model, cfg, args.eval_root, args.eval_split)
        provenance = {"command": f"python training/train.py --config config/train/{run_cfg.name}.yaml",
                      "data": args.data or run_cfg.data.root, "epochs": run_cfg.epochs,
                      "train_seconds": _train_seconds(args.run, checkpoint),
                      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                      "train_commit": args.train_commit or "unknown", "ship_commit": git_commit(short=True),
                      "inference_overrides": list(args.overrides)}
        manifest = {"name": run_cfg.name, "params": sum(p.numel() for p in model.parameters()),
                    "metrics": metrics, "provenance": provenance}
        save_teacher_package(args.out, model, cfg, provenance, metrics, readme(manifest, args.out))
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {args.out}: mAP {metrics['map3d_r40_moderate']} {metrics['ap3d_r40_moderate']} on "
          f"{metrics['frames']} held-out frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
