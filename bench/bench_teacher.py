"""SECOND and the two-stage teacher: parameters, FLOPs (MACs, sparse convs by active sites) and CPU forward time at 1
and 2 threads on one real KITTI scan (000001, 120,268 points); optionally the AP of the teacher's RPN vs its second
stage after a short training run on simulated frames.

    python bench/bench_teacher.py [--runs 3] [--configs second_tiny teacher_two_stage_tiny ...]
    python bench/bench_teacher.py --compare [--frames 8] [--steps 120] [--holdout]   # RPN vs second stage, KITTI AP

Forward = voxelise + network (+ proposals, RoI head and final NMS for the teacher), batch 1, eval mode, no grad,
median of --runs after one warm-up. The load average is printed: on a shared machine timings vary with it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clean_ros.yaml_config import load_config  # noqa: E402
from clean_ros.models.detector_config import DetectorConfig  # noqa: E402
from clean_ros.models.detector import build_detector  # noqa: E402
from clean_ros.models.flops import count_flops  # noqa: E402
from clean_ros.models.two_stage import TwoStageDetector  # noqa: E402
from clean_ros.models.two_stage_config import TwoStageConfig  # noqa: E402
from clean_ros.inference.postprocess import postprocess  # noqa: E402
from clean_ros.inference.voxelize import voxelize  # noqa: E402
from training.config_paths import find_config  # noqa: E402
from suite import sample_call  # noqa: E402  (bench/suite.py, beside this script)

REPO = Path(__file__).resolve().parents[1]
FRAME = REPO.parent / "shared/data/kitti_sample/training/velodyne/000001.bin"
CONFIGS = ["second_tiny", "teacher_two_stage_tiny", "second", "teacher_two_stage"]


def load_model(name: str):
    """(model, data-facing config, is_two_stage) for a config name."""
    import yaml

    raw = yaml.safe_load(find_config(name).read_text()) or {}
    if "rpn" in raw:
        cfg = load_config(TwoStageConfig, find_config(name))
        return TwoStageDetector(cfg).eval(), cfg, True
    cfg = load_config(DetectorConfig, find_config(name))
    return build_detector(cfg).eval(), cfg, False


def bench_models(args) -> None:
    points = torch.from_numpy(np.fromfile(FRAME, dtype=np.float32).reshape(-1, 4))
    print(f"frame {FRAME.name}: {len(points)} points; runs {args.runs}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'config':26s} {'params':>10s} {'GFLOPs':>7s} {'voxels':>7s} {'1 thr ms':>9s} {'2 thr ms':>9s} {'dets':>5s}")
    for name in args.configs:
        torch.manual_seed(0)
        model, cfg, two_stage = load_model(name)

        def voxels():
            return voxelize(points, cfg.point_cloud_range, cfg.voxel_size, cfg.max_points_per_voxel,
                            cfg.max_voxels_test)

        def run():
            v = voxels()
            if two_stage:
                return model.predict(v, 1)
            return postprocess(model(v, 1), cfg)

        v = voxels()
        torch.set_num_threads(1)
        report = count_flops(model, v, 1)
        medians = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                times, dets = sample_call(run, args.runs, 1)  # one warm-up call, then args.runs timed
            medians.append(statistics.median(times))
        print(f"{name:26s} {report.params:>10,d} {report.gflops:>7.2f} {v.coords.shape[0]:>7d} {medians[0]:>9.0f} "
              f"{medians[1]:>9.0f} {len(dets[0].boxes):>5d}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def compare_stages(args) -> None:
    """Train the tiny teacher on simulated frames (no augmentation), then KITTI AP of the RPN's own detections vs the
    second stage's on the same frames."""
    import yaml

    from training.train_config import load_train_config
    from training.data.augment import Augmentor
    from training.data.kitti_dataset import KittiDataset
    from training.evaluate_task import evaluate_task
    from training.run_dir import RunDir
    from training.sim.sim_config import config_from_dict
    from training.simulate import simulate_dataset
    from training.teacher_task import build_task
    from training.trainer import Trainer, seed_everything

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_teacher_"))
    try:
        sim = work / "sim"
        simulate_dataset(config_from_dict({"sensor": {"azimuth_resolution_deg": 0.4}, "dataset": {"val_fraction": 0.25}}),
                         sim, n_frames=args.frames, seed=args.seed, workers=1, progress=False)
        no_augment = {"gt_sampling": False, "global_rotation": False, "global_scaling": False, "random_flip_x": False,
                      "shuffle_points": False}
        train_split, val_split = ("train", "val") if args.holdout else ("trainval", "trainval")
        n_train = len((sim / "ImageSets" / f"{train_split}.txt").read_text().split())
        iters_per_epoch = -(-n_train // 2)
        data = {"name": "bench_teacher", "model": {"_base_": str(REPO / "config/second_tiny.yaml")},
                "two_stage": {"_base_": str(REPO / "config/teacher_two_stage_tiny.yaml")},
                "data": {"root": str(sim), "train_split": train_split, "val_split": val_split},
                "augment": no_augment, "epochs": max(1, args.steps // iters_per_epoch), "batch_size": 2,
                "workers": 0, "eval_interval": 0, "log_interval": 10, "seed": args.seed, "batchnorm_momentum": 0.1}
        (work / "train.yaml").write_text(yaml.safe_dump(data))
        cfg = load_train_config(work / "train.yaml")
        seed_everything(args.seed)
        train_set = KittiDataset(cfg.data, train_split, training=True,
                                 augmentor=Augmentor(cfg.augment, tuple(cfg.model.class_names)), seed=args.seed)
        val_set = KittiDataset(cfg.data, val_split, training=False)
        task = build_task(cfg)
        start = time.perf_counter()
        result = Trainer(cfg, task, train_set, val_set, RunDir(work / "run", tensorboard=False), progress=False).fit()
        print(f"trained {result.global_step} steps on {len(train_set)} simulated frames ({train_split}) in "
              f"{time.perf_counter() - start:.0f} s ({args.threads} thread(s)); load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        second = evaluate_task(task, val_set, cfg, torch.device("cpu"))
        task.predict = task.predict_rpn
        rpn = evaluate_task(task, val_set, cfg, torch.device("cpu"))
        print(f"3D AP R40 moderate on {len(val_set)} frames ({val_split}"
              f"{', held out' if args.holdout else ', the training frames'}):")
        for key in ("Car/3d_R40/moderate", "Pedestrian/3d_R40/moderate", "Cyclist/3d_R40/moderate",
                    "mAP_3d_moderate_R40", "num_detections_per_frame"):
            print(f"  {key:28s} RPN {rpn.get(key, float('nan')):6.2f}   two-stage {second.get(key, float('nan')):6.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--configs", nargs="*", default=CONFIGS)
    parser.add_argument("--compare", action="store_true", help="train the tiny teacher and compare its two stages")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--threads", type=int, default=1, help="--compare: torch threads")
    parser.add_argument("--seed", type=int, default=0, help="--compare: simulation and training seed")
    parser.add_argument("--holdout", action="store_true", help="--compare: train on 'train', evaluate on 'val'")
    args = parser.parse_args()
    if args.compare:
        compare_stages(args)
    else:
        bench_models(args)


if __name__ == "__main__":
    main()
