"""Re-measure the efficiency of every model of a finished compression run (e.g. on an idle machine).

    .venv/bin/python bench/bench_compress.py [--run runs/compress_default] [--threads 1] [--warmup 3] [--repeats 30]

Params, GFLOPs and CPU latency p50 / p95 at batch 1 (voxelisation + forward + post-processing of the run's
efficiency frame, round-robin over the models, training/efficiency.py), plus each model's parameter fraction and
speed-up relative to the teacher: the issue-6 goals are <= 25% of the teacher's parameters and >= 3x faster.
Prints the load average: on a shared machine absolute times mean little. Without a finished run it says so.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clean_ros import defaults  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/compress_default"))
    ap.add_argument("--threads", type=int, default=defaults.NUM_THREADS)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args(argv)
    stages = args.run / "stages"
    efficiency = stages / "efficiency" / "efficiency.json"
    if not efficiency.is_file():
        print(f"no finished compression run at {args.run} (run `make compress` first); nothing to measure")
        return 0
    import json

    from clean_ros.yaml_config import load_config
    from training.efficiency import measure_models
    from training.compression.compress_config import CompressConfig
    from training.compression.graph import CompressionGraph
    from training.compression.stored_models import make_task

    frame = Path(json.loads(efficiency.read_text())["frame"])
    graph = CompressionGraph(load_config(CompressConfig, args.run / "config.yaml"), args.run, print, False)
    models = {}
    for key in graph.available_models():  # the run's reported models, each with its evaluation gate
        models[key] = make_task(*graph.load_reported(key))
    print(f"run {args.run}: {len(models)} models, frame {frame}, {args.threads} thread(s), load average "
          f"{os.getloadavg()}")
    cfg = SimpleNamespace(threads=args.threads, warmup=args.warmup, repeats=args.repeats)
    result = measure_models(models, frame, cfg, log=lambda line: None)
    teacher = result["models"].get("teacher")
    print(f"{'model':<26}{'params':>12}{'GFLOPs':>10}{'p50 ms':>10}{'p95 ms':>10}{'params/T':>10}{'speed-up':>10}")
    for key, m in result["models"].items():
        rel = f"{m['params'] / teacher['params']:.1%}" if teacher else "-"
        speed = f"{teacher['latency_ms']['p50'] / m['latency_ms']['p50']:.2f}x" if teacher else "-"
        print(f"{key:<26}{m['params']:>12,}{m['gflops']:>10.3f}{m['latency_ms']['p50']:>10.1f}"
              f"{m['latency_ms']['p95']:>10.1f}{rel:>10}{speed:>10}")
    print(f"frame points {result['frame_points']}; load average after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
