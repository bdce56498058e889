"""The even and the max_mean_recall threshold splits of the same val budgets, chosen on a bundle's val pools and
applied to its holdout pools (pools.py; docs/results/threshold_split/README.md). Uses the thresholds stage's own
pick_threshold and allocate_budget (one pass: no re-probe for class-agnostic NMS). Reproduction script.

    PYTHONPATH=. python docs/results/threshold_split/compare.py VAL.npz HOLDOUT.npz
"""
import sys

import numpy as np

from training.compression.stage_thresholds import ValScores, allocate_budget, fp_per_frame, pick_threshold, recall

FLOOR = 0.05
BUDGETS = (0.6, 0.9, 1.3, 2.0)


def load(path) -> tuple[tuple[str, ...], ValScores]:
    z = np.load(path)
    names = tuple(str(n) for n in z["names"])
    return names, ValScores(int(z["frames"]), {n: z[f"fp_{n}"] for n in names}, {n: z[f"found_{n}"] for n in names})


def row(tag, pool, names, thresholds):
    fps = [fp_per_frame(pool.false_positive_scores[n], t, pool.frames) for n, t in zip(names, thresholds)]
    recalls = [recall(pool.found_scores[n], t) for n, t in zip(names, thresholds)]
    return (f"| {tag} | {', '.join(f'{t:.3f}' for t in thresholds)} | {sum(fps):.2f} ({', '.join(f'{x:.2f}' for x in fps)}) | "
            f"{' / '.join(f'{r:.1%}' for r in recalls)} | {np.mean(recalls):.1%} |")


names, val = load(sys.argv[1])
_, holdout = load(sys.argv[2])
print("| budget, split, frames | thresholds " + ", ".join(names) + " | FP / frame (per class) | recall BEV IoU 0.5 "
      + " / ".join(names) + " | mean |")
print("|---|---|---|---|---:|")
for budget in BUDGETS:
    even = [pick_threshold(val.false_positive_scores[n], val.frames, budget / len(names), FLOOR) for n in names]
    joint = allocate_budget({n: val for n in names}, names, budget, FLOOR)
    for split, thresholds in (("even", even), ("max_mean_recall", joint)):
        print(row(f"{budget:g}, {split}, val", val, names, thresholds))
        print(row(f"{budget:g}, {split}, holdout", holdout, names, thresholds))
