"""Today's student_baseline on the release holdout, as the compress evaluate stage computes it; the shipped run's
report has Car 73.653, Pedestrian 15.176, Cyclist 51.774 (docs/results/release_no_cakd_seed0/report.json)."""
from pathlib import Path
import torch
from torch.utils.data import Subset
from clean_ros.yaml_config import load_config
from clean_ros.metrics import kitti_eval
from training.compression.compress_config import CompressConfig
from training.compression.run_context import CompressRun
from training.compression.stored_models import ModelRef, load_reported, make_task
from training.evaluate_task import predict_annotations
torch.set_num_threads(2)
cfg = load_config(CompressConfig, Path("runs/release_default/config.yaml"), [])
run = CompressRun(cfg, Path("runs/release_default"), print, False)
kind, mcfg, module = load_reported(run.stages_dir, ModelRef("student_baseline"), cfg.iou_refine.gate)
task = make_task(kind, mcfg, module)
dataset = run.datasets.split(cfg.evaluated_split, mcfg)
gt, dt, ids = predict_annotations(task, Subset(dataset, list(range(len(dataset)))), cfg.evaluation.batch_size, 0,
                                  torch.device("cpu"))
result = kitti_eval.evaluate(gt, dt, classes=tuple(mcfg.class_names))
print({c: round(float(result[c]["3d_R40"][1]), 3) for c in mcfg.class_names}, len(gt), "frames")
