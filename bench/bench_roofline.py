"""Roofline-style efficiency: the machine's measured dense fp32 matmul throughput vs each model's achieved GFLOP/s.

    .venv/bin/python bench/bench_roofline.py [--threads 1] [--size 2048] [--repeats 10] [--device cpu]

Peak: torch.mm of two size x size fp32 matrices, same torch thread count, p50 of `repeats` after warm-up:
2 * size^3 FLOP per product. Models (teacher / baseline student / final student, bench_suite_models.py): the
network forward on the voxels of the real KITTI scan (voxelisation and post-processing excluded) and the dense
part alone (Detector.dense_module(): BEV backbone + head, the part that runs on the backends; the teacher's
RPN dense part), each timed p50 after warm-up, interleaved with the matmul so both see the same load.
FLOPs: clean_ros/models/flops.py counts multiply-accumulates; here 1 MAC = 2 FLOP everywhere, so
achieved GFLOP/s = 2 * MACs / time and the fraction = achieved / matmul GFLOP/s (same units).
Goal: the final student's dense part >= 30% of the measured matmul throughput.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import suite  # noqa: E402
from bench_suite_models import RUN, models_under_test  # noqa: E402

BENCH = "roofline"


def matmul_gflops(size: int, repeats: int, warmup: int, device) -> tuple[float, suite.Timing]:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    out = torch.empty(size, size, device=device)
    timing = suite.time_call(lambda: torch.mm(a, b, out=out), repeats, warmup, device)
    return 2.0 * size ** 3 / (timing.p50 * 1e-3) / 1e9, timing


def parts(entry: dict, points: torch.Tensor, device):
    """(full forward fn, full MACs, dense fn, dense MACs) of one model on the frame's voxels."""
    from clean_ros.models.flops import count_flops
    from clean_ros.inference.voxelize import voxelize

    model = entry["model"].to(device).eval()
    detector = model.rpn if hasattr(model, "rpn") else model
    cfg = detector.cfg if hasattr(detector, "cfg") else entry["cfg"]
    voxels = voxelize(points.to(device), cfg.point_cloud_range, cfg.voxel_size, cfg.max_points_per_voxel,
                      cfg.max_voxels_test)
    with torch.inference_mode():
        bev = detector.encode(voxels, 1)
    dense = detector.dense_module().to(device).eval()

    def full():
        with torch.inference_mode():
            return model(voxels, 1)

    def dense_fn():
        with torch.inference_mode():
            return dense(bev)

    full_macs = count_flops(model, voxels, 1).flops
    dense_macs = count_flops(dense, bev).flops
    return full, full_macs, dense_fn, dense_macs, tuple(bev.shape)


def main(argv: list[str] | None = None) -> int:
    quick = suite.quick()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5 if quick else 15)
    ap.add_argument("--warmup", type=int, default=1 if quick else 3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--run", default=None, help="compression run under runs/ (see bench_suite_models.py)")
    args = ap.parse_args(argv)
    RUN["name"] = args.run
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    points_np, source = suite.load_frame()
    points = torch.from_numpy(points_np)
    load_start = suite.load_average()
    peak, mm = matmul_gflops(args.size, args.repeats, args.warmup, device)
    print(f"frame {source}: {len(points)} points; device {device}; {args.threads} thread(s); load average "
          f"{load_start}")
    print(f"dense fp32 matmul {args.size}x{args.size}: p50 {mm.p50:.1f} ms (min {mm.min:.1f}) -> {peak:,.1f} GFLOP/s "
          f"(best run {2.0 * args.size ** 3 / (mm.min * 1e-3) / 1e9:,.1f})")
    suite.emit(suite.figure(BENCH, f"matmul fp32 {args.size}^2 ({args.threads} thread)", peak, "GFLOP/s",
                            load=suite.load_average(), best=2.0 * args.size ** 3 / (mm.min * 1e-3) / 1e9))
    print(f"\n{'model / part':48s} {'GFLOP':>8s} {'p50 ms':>9s} {'GFLOP/s':>9s} {'of matmul':>10s}   "
          "(GFLOP = 2 x MACs)")
    peaks = [peak]
    for key, entry in models_under_test().items():
        if "missing" in entry:
            print(f"{key:48s} {entry['missing']}")
            if key == "student_final":
                suite.emit(suite.figure(BENCH, "student_final dense part / matmul", None, "%", goal=">= 30",
                                        note=entry["missing"]))
            continue
        full, full_macs, dense, dense_macs, bev_shape = parts(entry, points, device)
        for part, fn, macs in (("forward", full, full_macs), ("dense part", dense, dense_macs)):
            timing = suite.time_call(fn, args.repeats, args.warmup, device)
            # Re-measure the matmul right after each model so the fraction compares like with like under load.
            local_peak, _ = matmul_gflops(args.size, max(args.repeats // 2, 2), 1, device)
            peaks.append(local_peak)
            achieved = 2.0 * macs / (timing.p50 * 1e-3) / 1e9
            fraction = 100.0 * achieved / local_peak
            label = f"{key} {part}" + (f" (BEV in {bev_shape[1]}x{bev_shape[2]}x{bev_shape[3]})"
                                       if part == "dense part" else "")
            print(f"{label:48s} {2 * macs / 1e9:8.2f} {timing.p50:9.1f} {achieved:9.1f} {fraction:9.1f}%   "
                  f"(matmul now {local_peak:,.1f})")
            goal = ">= 30" if key == "student_final" and part == "dense part" else None
            suite.emit(suite.figure(BENCH, f"{key} {part} / matmul", fraction, "%", goal=goal,
                                    achieved_gflops=achieved, matmul_gflops=local_peak, time_ms=timing.p50,
                                    gflop=2 * macs / 1e9, note=entry["source"]))
    print(f"matmul throughput over the run: {min(peaks):,.1f} .. {max(peaks):,.1f} GFLOP/s; load average start "
          f"{load_start}, end {suite.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
