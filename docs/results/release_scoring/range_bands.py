"""Reproduction script (README.md "Range bands"): per class, one threshold per range band (0-20, 20-40, 40+ m) chosen to
keep the most val objects (BEV IoU 0.5) within the class's false-positive budget, then counted on holdout and the real
frames. Reads the .npz files operating_point.py --save writes (scores and ranges); NMS interplay is ignored.

    PYTHONPATH=. python docs/results/release_scoring/range_bands.py VAL.npz HOLDOUT.npz REAL.npz [BUDGET]
"""
import sys

import numpy as np

from training.compression.stage_thresholds import pick_threshold
names = ("Car", "Pedestrian", "Cyclist")
BANDS = [0, 20, 40, np.inf]
def load(p): return np.load(p)
def best_per_fp(fp, found, grid):
    # for each allowed fp count f: max found with fp<=f, and the threshold achieving it (lowest)
    fpc = np.array([(fp >= g).sum() for g in grid]); tpc = np.array([(found >= g).sum() for g in grid])
    return fpc, tpc
def optimise(z, frames, budget_total, floor=0.05, step=0.005):
    grid = np.round(np.arange(floor, 1.0, step), 4)
    out = {}
    for c in names:
        F = int(np.floor(budget_total / 3 * frames + 1e-9))
        curves = []
        for lo, hi in zip(BANDS[:-1], BANDS[1:]):
            fm = (z[f"fp_range_{c}"] >= lo) & (z[f"fp_range_{c}"] < hi)
            om = (z[f"found_range_{c}"] >= lo) & (z[f"found_range_{c}"] < hi)
            fpc, tpc = best_per_fp(z[f"fp_{c}"][fm], z[f"found_{c}"][om], grid)
            # best[f] = (tp, threshold) with fp<=f
            best = []
            for f in range(F + 1):
                ok = np.flatnonzero(fpc <= f)
                i = ok[np.argmax(tpc[ok])] if len(ok) else len(grid) - 1  # argmax takes the lowest threshold
                best.append((tpc[i], grid[i], fpc[i]))
            curves.append(best)
        top = (-1, None)
        for f1 in range(F + 1):
            for f2 in range(F + 1 - f1):
                f3 = F - f1 - f2
                tp = curves[0][f1][0] + curves[1][f2][0] + curves[2][f3][0]
                if tp > top[0]:
                    top = (tp, (curves[0][f1][1], curves[1][f2][1], curves[2][f3][1]))
        out[c] = top[1]
    return out
def apply(z, th):
    res = {}
    for c in names:
        t = th[c]
        def thr(r): return np.select([r < 20, r < 40], [t[0], t[1]], t[2])
        nfp = int((z[f"fp_{c}"] >= thr(z[f"fp_range_{c}"])).sum())
        nf = int((z[f"found_{c}"] >= thr(z[f"found_range_{c}"])).sum())
        res[c] = (nfp, nf, len(z[f"found_{c}"]))
    return res
val, ho, real = (load(p) for p in sys.argv[1:4])
budget = float(sys.argv[4]) if len(sys.argv) > 4 else 1.3
th = optimise(val, 180, budget)
uni = {}
for c in names:
    t = pick_threshold(val[f"fp_{c}"], 180, budget / 3, 0.05); uni[c] = (t, t, t)
for label, T in (("uniform", uni), ("bands", th)):
    print(label, {c: tuple(round(float(x), 3) for x in T[c]) for c in names})
    for name, z, n in (("val", val, 180), ("holdout", ho, 180), ("real", real, 6)):
        r = apply(z, T)
        print(f"   {name:8s} FP/frame {sum(v[0] for v in r.values())/n:.2f} ",
              " ".join(f"{c[:3]} fp{v[0]} rec {v[1]}/{v[2]} ({100*v[1]/max(v[2],1):.1f}%)" for c, v in r.items()))
