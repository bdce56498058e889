"""Efficiency of detectors on one frame, measured the same way for every model in the same process:

- params: clean_ros.models.flops.count_parameters (every parameter, the two-stage teacher's RoI head included)
- gflops: clean_ros.models.flops.count_flops over one prediction (voxels -> final boxes) of the frame, in
  multiply-accumulates / 1e9 as that module counts them (sparse convs by their active sites)
- latency_ms p50 / p95: batch 1, voxelisation + forward + post-processing of the same full scan (no camera
  field-of-view crop; the voxeliser drops points outside each model's range, as the runtime does), after
  `warmup` untimed runs per model, with `threads` torch threads; the models are timed round-robin (one run of
  each model per round) so that load changes on a shared machine hit all of them alike. CUDA is synchronised
  around each timed run when the model is on a GPU.

    result = measure_models({"teacher": teacher_task, "student": student_task}, Path("000000.bin"), cfg)
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from clean_ros.models.flops import count_flops, count_parameters


def load_scan(path: Path, num_features: int = 4) -> np.ndarray:
    from training.data.kitti_dataset import read_velodyne

    return read_velodyne(path, num_features)


def _sample(points: np.ndarray):
    from training.data.sample import Sample

    empty = np.zeros((0,), dtype=np.int64)
    return Sample(frame_id="latency", points=points, gt_boxes=np.zeros((0, 7), np.float32), gt_labels=empty,
                  gt_names=np.zeros((0,), dtype="<U10"), gt_difficulty=empty, calib=None, annotations=None)


def _runner(task, points: np.ndarray, device: torch.device) -> Callable[[], object]:
    """One batch-1 inference: collate (voxelise) the scan for this model, predict (forward + post-processing)."""
    from training.data.loader import Collator

    collate = Collator.from_config(task.cfg, training=False)
    sample = _sample(points)

    def run():
        batch = collate([sample]).to(device)
        detections = task.predict(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return detections

    return run


def machine_info(threads: int) -> dict:
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": threads, "load_average": load}


def measure_models(tasks: Mapping[str, object], frame: Path, cfg, device: torch.device | str = "cpu",
                   log: Callable[[str], None] = print) -> dict:
    """{"frame", "frame_points", "machine", "models": {key: {"params", "gflops", "latency_ms": {p50, p95, mean},
    "runs"}}}. cfg: EfficiencySection-like (threads, warmup, repeats)."""
    device = torch.device(device)
    points = load_scan(Path(frame))
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    load_before = machine_info(cfg.threads)["load_average"]
    try:
        runners, out = {}, {}
        for key, task in tasks.items():
            task = task.to(device).eval()
            run = _runner(task, points, device)
            from training.data.loader import Collator

            batch = Collator.from_config(task.cfg, training=False)([_sample(points)]).to(device)
            flops = count_flops(task.model, batch, forward=task.predict)
            out[key] = {"params": int(count_parameters(task.model)), "gflops": round(flops.gflops, 4)}
            for _ in range(cfg.warmup):
                run()
            runners[key] = run
        times = {key: [] for key in runners}
        for _ in range(cfg.repeats):
            for key, run in runners.items():
                tic = time.perf_counter()
                run()
                times[key].append((time.perf_counter() - tic) * 1000.0)
        for key, values in times.items():
            arr = np.asarray(values)
            out[key]["latency_ms"] = {"p50": round(float(np.percentile(arr, 50)), 3),
                                      "p95": round(float(np.percentile(arr, 95)), 3),
                                      "mean": round(float(arr.mean()), 3)}
            out[key]["runs"] = len(values)
            log(f"    {key}: {out[key]['params']:,} params, {out[key]['gflops']:.3f} GFLOPs, latency p50 "
                f"{out[key]['latency_ms']['p50']:.1f} ms / p95 {out[key]['latency_ms']['p95']:.1f} ms")
    finally:
        torch.set_num_threads(before)
    info = machine_info(cfg.threads)
    info["load_average_before"] = load_before
    return {"frame": str(frame), "frame_points": int(len(points)), "device": str(device), "warmup": cfg.warmup,
            "repeats": cfg.repeats, "machine": info, "models": out}


__all__ = ["measure_models", "machine_info", "load_scan"]
