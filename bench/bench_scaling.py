"""How the cost grows: cloud size (30k .. 2M points) through the runtime Pipeline, and BEV grid size across configs.

    .venv/bin/python bench/bench_scaling.py [--sizes 30000 120000 500000 2000000] [--threads 1] [--repeats 5]
                                            [--bundle models/default] [--backend torch] [--configs ...]

Clouds: the real KITTI scan 000000.bin (a simulated one when absent). Smaller clouds are a random subset of it;
larger ones stack copies of it, each copy's x/y/z jittered by N(0, 3 cm) (a denser scan of the same scene: the
same range, ground, objects and intensity distribution, more points per surface). Each size is timed through
Pipeline (the node's code path): preprocess (voxelisation) + inference (+ post-processing, shown apart), p50
after warm-up. Linearity: least-squares fit t = a + b * N over the sizes (R^2), the marginal cost
(ms per 100k extra points) and the growth exponent log(t2/t1) / log(N2/N1) of each step (1 = proportional,
below 1 while a fixed cost dominates, above 1 = super-linear); "bends upward" where the exponent rises past 1.1
(by more than 0.2 over the step before).
Pillar models cap the pillars (max_voxels) and points per pillar, so past the caps inference stops
growing and only preprocessing scales with N.
Grid: each config's detector (untrained weights: timing only) on the 120k scan: voxelise + forward p50, with
its BEV grid (nx x ny cells at the voxel size) and ms per 100k BEV cells.
"dropped" counts points lost to the range crop and to the pillar / points-per-pillar caps.
Goal: cost linear in the number of points up to 2M: growth exponent of the last step (500k -> 2M) <= 1.1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
import suite  # noqa: E402
from clean_ros import defaults  # noqa: E402

BENCH = "scaling"
SIZES = (30_000, 120_000, 500_000, 2_000_000)
CONFIGS = ("pointpillars_tiny", "pointpillars", "second_tiny", "second")


def synthesise(points: np.ndarray, n: int, seed: int = 0, jitter_m: float = 0.03) -> np.ndarray:
    """n points with the scan's distribution: a subset (n <= len) or jittered copies of the scan (n > len)."""
    rng = np.random.default_rng(seed)
    if n <= len(points):
        return np.ascontiguousarray(points[rng.choice(len(points), n, replace=False)])
    copies = -(-n // len(points))
    stacked = np.concatenate([points] * copies)
    stacked[len(points):, :3] += rng.normal(0.0, jitter_m, (len(stacked) - len(points), 3)).astype(np.float32)
    keep = np.concatenate([np.arange(len(points)), len(points) + rng.choice(len(stacked) - len(points),
                                                                            n - len(points), replace=False)])
    return np.ascontiguousarray(stacked[np.sort(keep)], dtype=np.float32)


def linear_fit(sizes: list[int], times: list[float]) -> tuple[float, float, float]:
    """(intercept ms, slope ms per point, R^2) of the least-squares line."""
    x, y = np.asarray(sizes, float), np.asarray(times, float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    total = float(((y - y.mean()) ** 2).sum())
    return float(intercept), float(slope), 1.0 - float((residual ** 2).sum()) / total if total > 0 else 1.0


def growth_exponents(sizes: list[int], times: list[float]) -> list[float]:
    """log(t2/t1) / log(N2/N1) between consecutive sizes: 1 for cost proportional to N."""
    return [float(np.log(times[i + 1] / times[i]) / np.log(sizes[i + 1] / sizes[i])) for i in range(len(sizes) - 1)]


def marginal_costs(sizes: list[int], times: list[float]) -> list[float]:
    """ms per 100k extra points between consecutive sizes."""
    return [1e5 * (times[i + 1] - times[i]) / (sizes[i + 1] - sizes[i]) for i in range(len(sizes) - 1)]


def cloud_scaling(args, points: np.ndarray) -> None:
    from clean_ros.inference.pipeline import Pipeline

    pipe = Pipeline.from_bundle(args.bundle, backend=args.backend, device=args.device,
                                intra_op_threads=args.threads)
    pipe.warmup(1)
    cfg = pipe.detector_config
    print(f"cloud size, bundle {args.bundle.name} ({cfg.name}, max_voxels {cfg.max_voxels_test}, "
          f"{cfg.max_points_per_voxel} points/voxel), backend {pipe.backend_name}; ms p50 of {args.repeats}")
    print(f"{'points':>10s} {'voxels':>8s} {'dropped':>9s} {'preproc':>9s} {'infer':>9s} {'pre+inf':>9s} "
          f"{'post':>7s} {'load':>6s}")
    sizes, totals, pre = [], [], []
    for n in args.sizes:
        cloud = synthesise(points, n)
        pipe(cloud)  # warm-up at this size (allocations)
        runs = [pipe(cloud) for _ in range(args.repeats)]
        stage = {s: suite.percentile([r.timings_ms[s] for r in runs], 50) for s in ("preprocess", "inference",
                                                                                   "postprocess")}
        both = suite.percentile([r.timings_ms["preprocess"] + r.timings_ms["inference"] for r in runs], 50)
        stats = runs[-1].voxel_stats
        load = suite.load_average()
        voxels = stats.num_occupied_voxels - stats.num_overflow_voxels
        dropped = stats.num_dropped_points + stats.num_overflow_points
        print(f"{n:>10,d} {voxels:>8,d} {dropped:>9,d} "
              f"{stage['preprocess']:9.1f} {stage['inference']:9.1f} {both:9.1f} {stage['postprocess']:7.1f} "
              f"{load[0] if load else float('nan'):6.2f}", flush=True)
        suite.emit(suite.figure(BENCH, f"preprocess+inference {n // 1000}k points", both, "ms", load=load,
                                preprocess=stage["preprocess"], inference=stage["inference"],
                                postprocess=stage["postprocess"], voxels=voxels))
        sizes.append(n)
        totals.append(both)
        pre.append(stage["preprocess"])
    if len(sizes) < 2:
        return
    intercept, slope, r2 = linear_fit(sizes, totals)
    print(f"fit (pre+inf): t = {intercept:.1f} ms + {1e5 * slope:.2f} ms per 100k points, R^2 {r2:.4f}")
    suite.emit(suite.figure(BENCH, "linear fit R^2 (pre+inf vs points)", r2, "", slope_ms_per_100k=1e5 * slope,
                            intercept_ms=intercept))
    print("growth exponent per step, log(t2/t1) / log(N2/N1): 1 = proportional, < 1 = a fixed cost still "
          "dominates, > 1 = super-linear")
    for label, series in (("preprocess", pre), ("pre+inf", totals)):
        exps = growth_exponents(sizes, series)
        steps = marginal_costs(sizes, series)
        cells = "  ".join(f"{sizes[i] // 1000}k->{sizes[i + 1] // 1000}k {e:5.2f} ({steps[i]:.1f} ms/100k)"
                          for i, e in enumerate(exps))
        # Rising from below 1 towards 1 is a fixed cost fading out; a bend is rising past proportional.
        bends = [f"{sizes[i] // 1000}k" for i in range(1, len(exps)) if exps[i] > 1.1 and exps[i] - exps[i - 1] > 0.2]
        print(f"  {label:10s} {cells}" + (f"   bends upward at {', '.join(bends)}" if bends else ""))
        goal = "<= 1.1" if label == "pre+inf" else None
        suite.emit(suite.figure(BENCH, f"{label} growth exponent {sizes[-2] // 1000}k->{sizes[-1] // 1000}k",
                                exps[-1], "", goal=goal, exponents=exps, marginal_ms_per_100k=steps,
                                note="cost linear in points (<= 1: no worse than proportional; 1.1 allows noise)"
                                if goal else "voxelisation alone"))


def grid_scaling(args, points: np.ndarray) -> None:
    from clean_ros.models.detector_config import load_detector_config
    from clean_ros.models.detector import build_detector
    from clean_ros.inference.voxelize import grid_size, voxelize
    from training.config_paths import find_config

    tensor = torch.from_numpy(points).to(args.device)
    print(f"\nBEV grid size (120k-point scan, untrained weights), ms p50 of {args.repeats}:")
    print(f"{'config':20s} {'grid nx x ny x nz':>20s} {'BEV cells':>10s} {'voxels':>7s} {'voxelise':>9s} "
          f"{'forward':>9s} {'ms/100k cells':>14s} {'load':>6s}")
    for name in args.configs:
        cfg = load_detector_config(find_config(name))
        torch.manual_seed(0)
        model = build_detector(cfg).to(args.device).eval()
        nx, ny, nz = grid_size(cfg.point_cloud_range, cfg.voxel_size)

        def vox():
            return voxelize(tensor, cfg.point_cloud_range, cfg.voxel_size, cfg.max_points_per_voxel,
                            cfg.max_voxels_test)

        voxels = vox()

        def forward():
            with torch.inference_mode():
                return model(voxels, 1)

        t_vox = suite.time_call(vox, args.repeats, 1, args.device)
        t_fwd = suite.time_call(forward, args.repeats, 1, args.device)
        cells = nx * ny
        load = suite.load_average()
        per_cell = 1e5 * t_fwd.p50 / cells
        print(f"{name:20s} {f'{nx} x {ny} x {nz}':>20s} {cells:>10,d} {len(voxels.features):>7,d} "
              f"{t_vox.p50:9.1f} {t_fwd.p50:9.1f} {per_cell:14.2f} {load[0] if load else float('nan'):6.2f}",
              flush=True)
        suite.emit(suite.figure(BENCH, f"{name} voxelise+forward ({nx}x{ny} BEV)", t_vox.p50 + t_fwd.p50, "ms",
                                load=load, voxelise_ms=t_vox.p50, forward_ms=t_fwd.p50, bev_cells=cells,
                                note="untrained weights (timing only)"))


def main(argv: list[str] | None = None) -> int:
    quick = suite.quick()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--threads", type=int, default=defaults.NUM_THREADS)
    ap.add_argument("--repeats", type=int, default=3 if quick else 7)
    ap.add_argument("--bundle", type=Path, default=ROOT / "models/default")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    points, source = suite.load_frame()
    print(f"frame {source}: {len(points)} points; {args.threads} thread(s); load average {suite.load_average()}")
    cloud_scaling(args, points)
    if args.configs:
        grid_scaling(args, points)
    print(f"load average at the end {suite.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
