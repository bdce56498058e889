"""Per-stage latency (preprocess / inference / postprocess, p50 and p95) of every available backend, through the
same Pipeline the node uses, on a real 120k-point KITTI scan.

    python bench/bench_backends.py [--bundle models/default] [--teacher-bundle DIR] [--runs 20] [--warmup 3]
                                   [--threads 1] [--device cpu] [--backends torch onnxruntime tensorrt]

--threads sets torch's intra-op threads and onnxruntime's intra_op_num_threads (0 = each library's default).
The load average is printed with the figures: on a shared machine the numbers mean little without it.
A teacher bundle is benchmarked when given (or present at models/teacher); otherwise the line says it is skipped.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from clean_ros import defaults  # noqa: E402
from clean_ros.inference.backends import BackendError, BackendUnavailable  # noqa: E402
from clean_ros.inference.bundle import manifest_field  # noqa: E402
from clean_ros.inference.pipeline import STAGES, Pipeline  # noqa: E402
from suite import percentile, synthetic_scan  # noqa: E402

FRAME = ROOT.parent / "shared/data/kitti_sample/training/velodyne/000000.bin"


def load_points() -> tuple[np.ndarray, str]:
    if FRAME.is_file():
        return np.fromfile(FRAME, dtype=np.float32).reshape(-1, 4), str(FRAME.relative_to(ROOT.parent))
    return synthetic_scan(), "synthetic (KITTI sample not found)"


def bench_one(label: str, bundle: Path, backend: str, args, points: np.ndarray) -> None:
    """backend: a backend name, or "onnxruntime-int8" (the bundle's model.int8.onnx)."""
    int8 = backend == "onnxruntime-int8"
    try:
        pipe = Pipeline.from_bundle(bundle, backend="onnxruntime" if int8 else backend, device=args.device,
                                    intra_op_threads=args.threads, int8=int8)
    except (BackendUnavailable, BackendError) as exc:
        print(f"{label:10s} {backend:16s} skipped: {exc}")
        return
    pipe.warmup(args.warmup, num_points=len(points))
    for _ in range(args.warmup):
        pipe(points)
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    totals, n_det = [], 0
    for _ in range(args.runs):
        result = pipe(points)
        for s in STAGES:
            stages[s].append(result.timings_ms[s])
        totals.append(sum(result.timings_ms.values()))
        n_det = len(result.detections)
    cols = " ".join(f"{percentile(v, 50):>7.1f} / {percentile(v, 95):>6.1f}" for v in (*stages.values(), totals))
    print(f"{label:10s} {backend:16s} {cols} {n_det:5d}   ({pipe.backend.describe()})",
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "models/default")
    ap.add_argument("--teacher-bundle", type=Path, default=ROOT / "models/teacher")
    ap.add_argument("--backends", nargs="*", default=["torch", "onnxruntime", "onnxruntime-int8", "tensorrt"],
                    help="onnxruntime-int8: the bundle's int8 dense part (docs/BUNDLE.md)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=defaults.NUM_THREADS)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    points, source = load_points()
    print(f"frame {source}: {len(points)} points; device {args.device}; torch threads {torch.get_num_threads()}, "
          f"onnxruntime intra-op threads {args.threads or 'default'}; runs {args.runs} after {args.warmup} warm-up; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    print("latency in ms, p50 / p95 per stage (Pipeline timings, after CUDA synchronisation on GPU)")
    print(f"{'model':10s} {'backend':16s} " + " ".join(f"{s:>16s}" for s in (*STAGES, "total")) + "  dets")
    models = [("default", args.bundle)]
    teacher_format = manifest_field(args.teacher_bundle, "format")
    if teacher_format == "clean_ros.bundle":
        models.append(("teacher", args.teacher_bundle))
    elif teacher_format is None:
        print(f"teacher    skipped: no teacher bundle at {args.teacher_bundle}")
    else:  # models/teacher is a teacher package (clean_ros.teacher): weights for distillation, no runtime bundle
        print(f"teacher    skipped: {args.teacher_bundle} is a {teacher_format} package, not a runtime bundle (the "
              "two-stage teacher has no ONNX export; its latency: bench_teacher.py, bench_suite_models.py)")
    start = time.perf_counter()
    for label, bundle in models:
        for backend in args.backends:
            bench_one(label, bundle, backend, args, points)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
