"""Teacher vs baseline student vs final student, in one run on one frame: params, GFLOPs, latency p50/p95, speed-ups.

    .venv/bin/python bench/bench_suite_models.py [--threads 1] [--repeats 20] [--warmup 3] [--device cpu] [--run NAME]

The compressed models come from one compression run: runs/NAME with --run, else runs/compress_default (what
`make compress` writes) when it has them, else the most recently written run; the teacher is that run's.

Models (see `models_under_test`):
  teacher           teacher_two_stage_tiny built from config/ (UNTRAINED weights unless a compression run stored
                    a trained one: the cost of a forward does not depend on the weights; post-processing can, a
                    little, through the number of boxes that pass the score threshold)
  student_baseline  the embedded default bundle models/default (pointpillars_tiny) unless that bundle came from
                    compress.py, in which case pointpillars_tiny built from config/
  student_final     the compressed (pruned, distilled) student: a bundle written by compress.py (runs/*/bundle,
                    models/default when its provenance says so) or the iou_refine stage of a compression run;
                    "not available yet" otherwise
Latency "torch" = batch 1, voxelisation + forward + post-processing of the same real KITTI scan (000000.bin,
~120k points; a simulated scan when absent), after warm-up, models timed round-robin (training/efficiency.py,
the compression pipeline's own measurement). Each student bundle is also timed through the runtime Pipeline on
every backend (torch, onnxruntime, tensorrt; a backend that cannot start is listed as skipped with its reason).
GFLOPs = multiply-accumulates / 1e9 (clean_ros/models/flops.py convention). Goal: final student >= 3x faster
than the teacher at batch 1 on this CPU, same run.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
import suite  # noqa: E402
from clean_ros import defaults  # noqa: E402

BENCH = "models"
BACKENDS = ("torch", "onnxruntime", "tensorrt")


def _from_compress(manifest: Path) -> bool:
    try:
        provenance = json.loads(manifest.read_text()).get("provenance") or {}
    except (OSError, json.JSONDecodeError):
        return False
    return str(provenance.get("method", "")).startswith("compress:")  # what training/compression/stage_outputs.py writes


DEFAULT_RUN = "compress_default"  # `make compress` writes runs/compress_default
RUN = {"name": None}  # --run NAME: take the compressed models from runs/NAME only


def _newest(pattern: str) -> list[Path]:
    """Matches of `pattern` (runs/<run>/...): runs/NAME only when --run NAME is given; else runs/compress_default
    first (what `make compress` writes), then the other runs most recently written first."""
    if RUN["name"]:
        return sorted(ROOT.glob(pattern.replace("runs/*/", f"runs/{RUN['name']}/", 1)))
    found = sorted(ROOT.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    return sorted(found, key=lambda p: p.relative_to(ROOT).parts[1] != DEFAULT_RUN)


def find_final_student() -> tuple[str, Path | None, Path | None]:
    """(description, bundle dir or None, stored stage dir or None) of the compressed student, if any."""
    for manifest in _newest("runs/*/bundle/manifest.json"):
        return f"bundle {manifest.parent.relative_to(ROOT)}", manifest.parent, None
    default = ROOT / "models/default/manifest.json"
    if default.is_file() and _from_compress(default):
        return "bundle models/default (from compress.py)", default.parent, None
    for info in _newest("runs/*/stages/iou_refine/model.json"):
        return f"stage {info.parent.relative_to(ROOT)} (no bundle)", None, info.parent
    return "not available yet (no compression run has finished: no runs/*/bundle, runs/*/stages/iou_refine)", None, None


def models_under_test() -> dict[str, dict]:
    """{key: {"task": DetectionTask-like, "model": nn.Module, "cfg", "bundle": Path | None, "source": str}};
    a key whose model is not available maps to {"missing": reason}."""
    from clean_ros.inference.bundle import load_bundle
    from clean_ros.models.detector_config import load_detector_config
    from clean_ros.models.detector import build_detector
    from clean_ros.models.two_stage import TwoStageDetector
    from clean_ros.models.two_stage_config import load_two_stage_config
    from training.config_paths import find_config
    from training.compression.stored_models import load_model, make_task

    out: dict[str, dict] = {}
    # The teacher of the run that produced the final student when there is one, else the newest stored teacher.
    description, bundle_dir, stage_dir = find_final_student()
    final_run = (bundle_dir.parent if bundle_dir is not None and bundle_dir.parent.parent.name == "runs" else
                 stage_dir.parents[1] if stage_dir is not None else None)
    stored_teacher = _newest("runs/*/stages/teacher/model.json")
    if final_run is not None and (final_run / "stages/teacher/model.json").is_file():
        stored_teacher = [final_run / "stages/teacher/model.json"]
    if stored_teacher:
        kind, cfg, module = load_model(stored_teacher[0].parent)
        out["teacher"] = {"task": make_task(kind, cfg, module), "model": module, "cfg": cfg, "bundle": None,
                          "source": f"trained, {stored_teacher[0].parent.relative_to(ROOT)}"}
    else:
        torch.manual_seed(0)
        cfg = load_two_stage_config(find_config("teacher_two_stage_tiny"))
        module = TwoStageDetector(cfg).eval()
        out["teacher"] = {"task": make_task("two_stage", cfg, module), "model": module, "cfg": cfg, "bundle": None,
                          "source": "teacher_two_stage_tiny, untrained weights (timing only)"}

    default = ROOT / "models/default"
    if (default / "manifest.json").is_file() and not _from_compress(default / "manifest.json"):
        bundle = load_bundle(default)
        module = bundle.build_detector("cpu").eval()
        out["student_baseline"] = {"task": make_task("detector", bundle.detector_config, module), "model": module,
                                   "cfg": bundle.detector_config, "bundle": default,
                                   "source": f"models/default ({bundle.detector_config.name}, trained)"}
    else:
        torch.manual_seed(0)
        cfg = load_detector_config(find_config("pointpillars_tiny"))
        module = build_detector(cfg).eval()
        out["student_baseline"] = {"task": make_task("detector", cfg, module), "model": module, "cfg": cfg,
                                   "bundle": None, "source": "pointpillars_tiny, untrained weights (timing only)"}

    if bundle_dir is not None:
        bundle = load_bundle(bundle_dir)
        module = bundle.build_detector("cpu").eval()
        out["student_final"] = {"task": make_task("detector", bundle.detector_config, module), "model": module,
                                "cfg": bundle.detector_config, "bundle": bundle_dir, "source": description}
    elif stage_dir is not None:
        kind, cfg, module = load_model(stage_dir)
        out["student_final"] = {"task": make_task(kind, cfg, module), "model": module, "cfg": cfg, "bundle": None,
                                "source": description}
    else:
        out["student_final"] = {"missing": description}
    return out


def frame_file(points: np.ndarray, workdir: Path) -> Path:
    if suite.KITTI_FRAME.is_file():
        return suite.KITTI_FRAME
    path = workdir / "frame.bin"
    points.astype(np.float32).tofile(path)
    return path


def pipeline_latency(bundle: Path, backend: str, points: np.ndarray, args) -> dict:
    from clean_ros.inference.backends import BackendError, BackendUnavailable
    from clean_ros.inference.pipeline import Pipeline

    try:
        pipe = Pipeline.from_bundle(bundle, backend=backend, device=args.device, intra_op_threads=args.threads)
    except (BackendUnavailable, BackendError, ImportError) as exc:
        return {"skipped": str(exc).splitlines()[0][:200]}
    pipe.warmup(args.warmup, num_points=len(points))
    totals = []

    def run():
        result = pipe(points)
        totals.append(sum(result.timings_ms.values()))

    for _ in range(args.warmup):
        run()
    totals.clear()
    for _ in range(args.repeats):
        run()
    timing = suite.Timing.of(totals)
    return {"p50": timing.p50, "p95": timing.p95, "describe": pipe.backend.describe()}


def main(argv: list[str] | None = None) -> int:
    quick = suite.quick()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=defaults.NUM_THREADS,
                    help="torch threads and onnxruntime intra-op threads")
    ap.add_argument("--repeats", type=int, default=5 if quick else 20)
    ap.add_argument("--warmup", type=int, default=1 if quick else 3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--run", default=None, help="compression run folder name under runs/ for the teacher and the "
                    f"final student (default: {DEFAULT_RUN} if it has them, else the newest run)")
    args = ap.parse_args(argv)
    RUN["name"] = args.run
    torch.set_num_threads(args.threads)
    from training.efficiency import measure_models

    points, source = suite.load_frame()
    models = models_under_test()
    load_start = suite.load_average()
    print(f"frame {source}: {len(points)} points; device {args.device}; {args.threads} thread(s); "
          f"{args.repeats} runs after {args.warmup} warm-up; load average {load_start}")
    for key, entry in models.items():
        print(f"  {key:17s} {entry.get('source') or entry['missing']}")
    tasks = {k: e["task"] for k, e in models.items() if "task" in e}
    with tempfile.TemporaryDirectory(prefix="bench_suite_models_") as tmp:
        cfg = SimpleNamespace(threads=args.threads, warmup=args.warmup, repeats=args.repeats)
        measured = measure_models(tasks, frame_file(points, Path(tmp)), cfg, device=args.device,
                                  log=lambda line: None)["models"]
    load_torch = suite.load_average()

    backend_rows: dict[str, dict[str, dict]] = {}
    for key, entry in models.items():
        if entry.get("bundle") is not None:
            backend_rows[key] = {b: pipeline_latency(entry["bundle"], b, points, args) for b in BACKENDS}
    load_end = suite.load_average()

    print(f"\n{'model':17s} {'params':>11s} {'GFLOPs*':>8s} {'torch p50':>10s} {'p95':>8s} {'T/this':>7s}   "
          "(* multiply-accumulates; latency ms, voxelise + forward + post-process, round-robin)")
    teacher = measured.get("teacher")
    for key, entry in models.items():
        if key not in measured:
            print(f"{key:17s} {entry['missing']}")
            suite.emit(suite.figure(BENCH, f"{key} latency p50 (torch)", None, "ms", note=entry["missing"],
                                    load=load_torch))
            if key == "student_final":
                suite.emit(suite.figure(BENCH, "speed-up teacher/student_final (torch p50)", None, "x",
                                        goal=">= 3", note=entry["missing"], load=load_torch))
            continue
        m = measured[key]
        ratio = teacher["latency_ms"]["p50"] / m["latency_ms"]["p50"] if teacher else None
        print(f"{key:17s} {m['params']:>11,d} {m['gflops']:>8.2f} {m['latency_ms']['p50']:>10.1f} "
              f"{m['latency_ms']['p95']:>8.1f} {ratio:>6.2f}x")
        note = entry["source"]
        suite.emit(suite.figure(BENCH, f"{key} params", m["params"], "params", note=note, load=load_torch))
        suite.emit(suite.figure(BENCH, f"{key} GFLOPs (MACs)", m["gflops"], "GMAC", note=note, load=load_torch))
        suite.emit(suite.figure(BENCH, f"{key} latency p50 (torch)", m["latency_ms"]["p50"], "ms", note=note,
                                load=load_torch, p95=m["latency_ms"]["p95"]))
        suite.emit(suite.figure(BENCH, f"{key} latency p95 (torch)", m["latency_ms"]["p95"], "ms", note=note,
                                load=load_torch))
        if key != "teacher" and ratio is not None:
            suite.emit(suite.figure(BENCH, f"speed-up teacher/{key} (torch p50)", ratio, "x",
                                    goal=">= 3" if key == "student_final" else None,
                                    note="goal applies to the final student" if key != "student_final" else note,
                                    load=load_torch))
    if "teacher" in models:
        print(f"{'teacher':17s} onnxruntime / tensorrt: skipped (the two-stage teacher has no ONNX export: its RoI "
              "head runs in torch only)")
    print(f"\nruntime Pipeline per backend (ms, total of preprocess + inference + postprocess; load {load_end}):")
    for key, rows in backend_rows.items():
        for backend, row in rows.items():
            if "skipped" in row:
                print(f"  {key:17s} {backend:12s} skipped: {row['skipped']}")
                suite.emit(suite.figure(BENCH, f"{key} pipeline p50 ({backend})", None, "ms",
                                        note=f"skipped: {row['skipped']}", load=load_end))
                continue
            ratio = teacher["latency_ms"]["p50"] / row["p50"] if teacher else float("nan")
            print(f"  {key:17s} {backend:12s} p50 {row['p50']:8.1f}  p95 {row['p95']:8.1f}  teacher(torch)/this "
                  f"{ratio:5.2f}x  ({row['describe']})")
            suite.emit(suite.figure(BENCH, f"{key} pipeline p50 ({backend})", row["p50"], "ms", p95=row["p95"],
                                    note=row["describe"], load=load_end))
            if key == "student_final" and teacher:
                suite.emit(suite.figure(BENCH, f"speed-up teacher(torch)/student_final pipeline ({backend})", ratio,
                                        "x", note="teacher has no ONNX path: torch is its fastest backend",
                                        load=load_end))
    print(f"load average: start {load_start}, after torch timing {load_torch}, end {load_end}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
