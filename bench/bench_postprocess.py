"""Where a bundle's batch-1 time goes on real scans: voxelisation, network, post-processing (and inside
post-processing: finding the candidate rows on the logits (anchor heads), then scoring, gating, thresholds,
decoding of the candidates and NMS), with the anchors and candidates
per frame. The figures the fine-grid speed-up (docs/results/fine_grid) and the node's post-processing budget rest on.

    python bench/bench_postprocess.py [BUNDLE ...] [--frames DIR] [--repeats 10] [--backend torch] [--int8]

Default bundle: models/default; default frames: the six shared KITTI scans. One torch thread.
"""
from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clean_ros.inference.backends import BackendError  # noqa: E402
from clean_ros.inference.pipeline import Pipeline  # noqa: E402
from clean_ros.inference.postprocess import apply_iou_gate, candidate_rows, class_scores  # noqa: E402
from suite import emit, figure, load_average, percentile  # noqa: E402  (bench/suite.py, beside this script)

ROOT = Path(__file__).resolve().parents[1]
FRAMES = ROOT.parent / "shared/data/kitti_sample/training/velodyne"


def _ms(fn, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        out.append((time.perf_counter() - tic) * 1e3)
    return out


def profile(bundle: Path, scans: list[np.ndarray], repeats: int, backend: str, int8: bool = False) -> dict:
    pipe = Pipeline.from_bundle(bundle, backend=backend, intra_op_threads=1, int8=int8)
    cfg = pipe.detector_config
    times = {"preprocess": [], "inference": [], "postprocess": [], "find_candidates": []}
    positions, candidates = [], []
    for points in scans:
        for _ in range(2):
            pipe(points)
        for _ in range(repeats):
            for stage, ms in pipe(points).timings_ms.items():
                if stage in times:
                    times[stage].append(ms)
        voxels, _ = pipe.preprocess(points)
        maps, bev = pipe.raw_outputs(voxels)
        output = pipe.detector.head_output(maps, bev)
        gate = cfg.postprocess.iou_gate
        times["find_candidates"] += _ms(lambda: candidate_rows(output, 0, cfg.postprocess), repeats)
        scores = apply_iou_gate(class_scores(output, cfg.postprocess.peak_kernel), output.iou_logits, gate)[0]
        thresholds = scores.new_tensor(cfg.postprocess.score_thresholds)
        positions.append(scores.shape[0])
        candidates.append(int((scores >= thresholds).any(dim=1).sum()))
    return {"p50": {k: percentile(v, 50) for k, v in times.items()}, "positions": int(np.mean(positions)),
            "candidates": float(np.mean(candidates))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="*", type=Path, default=[ROOT / "models/default"])
    ap.add_argument("--frames", type=Path, default=FRAMES, help="folder of KITTI .bin scans (first 6 used)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--int8", action="store_true", help="the bundle's int8 dense part (onnxruntime)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    paths = sorted(glob.glob(str(args.frames / "*.bin")))[:6]
    if not paths:
        print(f"error: no .bin scans in {args.frames}", file=sys.stderr)
        return 2
    scans = [np.fromfile(p, dtype=np.float32).reshape(-1, 4) for p in paths]
    print(f"{len(scans)} scans of {args.frames}, backend {args.backend}{' int8' if args.int8 else ''}, 1 thread, "
          f"load {load_average()}")
    print(f"{'bundle':40s} {'positions':>9s} {'cand.':>6s} {'voxelise':>9s} {'network':>8s} {'post':>7s}"
          f" {'(find cand.':>12s} {'rest)':>8s}   ms p50")
    for bundle in args.bundles:
        try:
            r = profile(bundle, scans, args.repeats, args.backend, args.int8)
        except (OSError, ValueError, BackendError) as exc:  # BundleError is a ValueError
            print(f"error: {exc}", file=sys.stderr)
            return 2
        p = r["p50"]
        select = p["postprocess"] - p["find_candidates"]
        print(f"{str(bundle):40s} {r['positions']:9d} {r['candidates']:6.0f} {p['preprocess']:9.1f} "
              f"{p['inference']:8.1f} {p['postprocess']:7.1f} {p['find_candidates']:12.1f} {select:8.1f}")
        emit(figure("bench_postprocess", f"{bundle.name} post-processing p50", p["postprocess"], "ms"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
