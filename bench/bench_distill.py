#!/usr/bin/env python3
"""Cost of each distillation method per training step (forward + hooks + losses + backward) on tiny configs.

    python bench/bench_distill.py [--iters 5] [--batch 2] [--threads 1] [--methods none clean logit_kd ...]

Student: pointpillars_tiny; teacher: a TwoStageDetector with a pointpillars_tiny RPN and BEV RoI pooling (same
voxels). The student's class bias is set to 0 so CaKD has its full candidate load (2048 per frame before NMS), the
worst case; a trained student has far fewer positions above tau_sel. Random clouds of 20k points per frame.
Prints the median seconds per step and the difference to method "none", with the load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from clean_ros.models.detector_config import load_detector_config  # noqa: E402
from clean_ros.models.detector import build_detector  # noqa: E402
from clean_ros.models.two_stage import TwoStageDetector  # noqa: E402
from clean_ros.models.two_stage_config import RoIHeadConfig, TwoStageConfig  # noqa: E402
from clean_ros.inference.voxelize import voxelize_batch  # noqa: E402
from training.config_paths import find_config  # noqa: E402
from training.data.sample import Batch  # noqa: E402
from training.distill import METHODS, DistillConfig, build_distillation  # noqa: E402
from training.task import DetectionTask  # noqa: E402
from suite import sample_call  # noqa: E402  (bench/suite.py, beside this script)


def make_clouds(cfg, batch: int, points: int, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    r = cfg.point_cloud_range
    return [torch.from_numpy(np.concatenate([rng.uniform(r[:3], r[3:], (points, 3)), rng.uniform(0, 1, (points, 1))],
                                            1).astype(np.float32)) for _ in range(batch)]


def make_batch(cfg, clouds: list[torch.Tensor], voxelizers: dict | None = None) -> Batch:
    """The clouds collated as the trainer does: the student's voxels, and each extra voxelisation a distillation
    reads (its teacher's own input, DistillationParts.voxelizers)."""
    r, batch = cfg.point_cloud_range, len(clouds)
    voxels, _ = voxelize_batch(clouds, r, cfg.voxel_size, cfg.max_points_per_voxel, cfg.max_voxels_train)
    extra = {name: voxelize_batch(clouds, v.point_cloud_range, v.voxel_size, v.max_points_per_voxel, v.max_voxels)[0]
             for name, v in (voxelizers or {}).items()}
    gt = torch.tensor([[[20.0, 0.0, -1.0, 3.9, 1.6, 1.56, 0.0]]] * batch)
    return Batch(voxels=voxels, gt_boxes=gt, gt_labels=torch.zeros(batch, 1, dtype=torch.long),
                 frame_ids=[str(i) for i in range(batch)], batch_size=batch, extra_voxels=extra)


def step_time(method: str, cfg, teacher, clouds: list[torch.Tensor], iters: int) -> float:
    torch.manual_seed(0)
    student = build_detector(cfg)
    torch.nn.init.zeros_(student.head.conv_cls.bias)
    parts = build_distillation(DistillConfig(method=method), teacher, student)
    task = DetectionTask(cfg, student, loss_terms=parts.loss_terms, target_hooks=parts.target_hooks,
                         extra_voxelizers=parts.voxelizers)
    task.train()
    batch = make_batch(cfg, clouds, parts.voxelizers)

    def step():
        result = task(Batch(**{**batch.__dict__}))  # a new batch object: the teacher cache is per batch
        result.total.backward()

    times_ms, _ = sample_call(step, iters, 1)  # the first step (lazy init) is a warm-up
    return statistics.median(times_ms) / 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--points", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["none", "clean", "cakd", "label_assign", "logit_kd",
                                                         "feature_kd", "sparsekd", "pointdistiller"])
    args = parser.parse_args()
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    torch.set_num_threads(args.threads)
    cfg = load_detector_config(find_config("pointpillars_tiny"))
    teacher = TwoStageDetector(TwoStageConfig(rpn=load_detector_config(find_config("pointpillars_tiny")),
                                              roi_head=RoIHeadConfig(pool_sources=["bev"], mlp_widths=[64, 64])))
    clouds = make_clouds(cfg, args.batch, args.points)
    print(f"load average {os.getloadavg()[0]:.2f}, {args.threads} thread(s), batch {args.batch}, "
          f"{make_batch(cfg, clouds).voxels.features.shape[0]} pillars, pointpillars_tiny student, two-stage pillar "
          "teacher")
    base = None
    for method in args.methods:
        seconds = step_time(method, cfg, teacher, clouds, args.iters)
        base = seconds if method == "none" else base
        extra = f"  ({seconds - base:+.3f} s)" if base is not None and method != "none" else ""
        print(f"  {method:15s} {seconds:.3f} s/step{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
