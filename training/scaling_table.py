"""The data-scaling table of issue 13: finished compress runs that differ only in their training frames, side by side.

    python training/scaling_table.py 400=runs/results/seed_0 800=runs/scale_x2/seed_0 1600=runs/scale_x4/seed_0 \
        --out docs/results/scaling

Each argument is LABEL=RUN (LABEL: the run's training frames; RUN: a compress run folder with report.json and the
evaluate stage's metrics.json). Prints, and with --out writes as README-ready markdown + summary.json, per run:
3D AP R40 moderate per class and mAP of the teacher, the full-width no-KD student, the same-size no-KD student
(width-only) and the CLEAN final student; Car BEV AP (how much of the Car gap is height); the final student's gap
to the teacher and its margin over width-only. The runs must share their held-out split (the scale configs do).

A run without the width-only row (e.g. config/compress/fine_grid.yaml) leaves it out and its margin "—". Labels
ending in " (seed N)" are grouped: a second table gives mean ± sample std over the seeds of each group.
--what names the first column (default "training frames"; e.g. "student grid").

--keep SUMMARY.json starts from the rows of an earlier summary.json (its runs' folders need not exist any more, e.g.
on a new checkout) and adds the RUN arguments after them; a run whose label is already there replaces that row:

    python training/scaling_table.py --keep docs/results/fine_grid/x4/summary.json --what "student anchor cells \
        (1600 frames)" "0.32 m, keep 0.7, 8 fine-tune epochs (seed 2)=runs/fine_grid_x4_keep07_ft8/seed_2" \
        --out docs/results/fine_grid/x4
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clean_ros.atomic import atomic_write_text  # noqa: E402
from training.results_table import Stat, fmt_stat  # noqa: E402

MODELS = (("teacher", "teacher"), ("student_baseline", "no-KD, full width"),
          ("baseline_width_only", "no-KD, final widths (width-only)"), ("student_final", "CLEAN final"))
CLASSES = ("Car", "Pedestrian", "Cyclist")
OPTIONAL = ("baseline_width_only",)  # a run may leave the width-only row out
SEED_LABEL = re.compile(r"^(?P<group>.+) \(seed (?P<seed>\d+)\)$")


class ScalingError(Exception):
    """A bad argument or an unfinished run: one line, exit status 2."""


def read_run(label: str, folder: Path) -> dict:
    try:
        report = json.loads((folder / "report.json").read_text())
        metrics = json.loads((folder / "stages" / "evaluate" / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise ScalingError(f"{folder}: not a finished compress run ({exc})") from None
    models = {}
    for key, _ in MODELS:
        if key in OPTIONAL and key not in report.get("models", {}):
            models[key] = None
            continue
        if key not in report.get("models", {}) or key not in metrics:
            raise ScalingError(f"{folder}: model {key!r} missing from report.json or the evaluate stage")
        kitti = metrics[key].get("kitti", metrics[key])
        models[key] = {"map3d": report["models"][key]["map3d_r40_moderate"],
                       "ap3d": {c: kitti[f"{c}/3d_R40/moderate"] for c in CLASSES},
                       "apbev": {c: kitti[f"{c}/bev_R40/moderate"] for c in CLASSES},
                       "params": report["models"][key].get("params")}
    return {"label": label, "run": str(folder), "models": models, "stage_seconds": report.get("stage_seconds", {}),
            "machine": report.get("machine", {}), "commit": report.get("commit")}


def summary_rows(runs: list[dict], what: str) -> list[dict]:
    """One row per run; `label` is the run's LABEL and `what` says what the labels name (e.g. the student grid)."""
    rows = []
    for run in runs:
        m = run["models"]
        width_only = m["baseline_width_only"]
        rows.append({"label": run["label"], "what": what, "run": run["run"], "commit": run["commit"],
                     **{key: m[key] for key, _ in MODELS},
                     "gap_to_teacher": m["teacher"]["map3d"] - m["student_final"]["map3d"],
                     "final_minus_width_only": (m["student_final"]["map3d"] - width_only["map3d"]
                                                if width_only is not None else None),
                     "stage_seconds": run["stage_seconds"], "load_average": run["machine"].get("load_average")})
    return rows


def kept_rows(summary: Path) -> list[dict]:
    """The rows of an earlier summary.json (summary_rows' output); ScalingError when it is not one."""
    try:
        rows = json.loads(summary.read_text())
    except (OSError, ValueError) as exc:
        raise ScalingError(f"--keep {summary}: {exc}") from None
    needed = {"label", "what", *(key for key, _ in MODELS), "gap_to_teacher", "final_minus_width_only"}
    if not isinstance(rows, list) or not all(isinstance(r, dict) and needed <= r.keys() for r in rows):
        raise ScalingError(f"--keep {summary}: not a scaling_table summary.json (a list of rows with {sorted(needed)})")
    return rows


def merge_rows(kept: list[dict], new: list[dict]) -> list[dict]:
    """kept rows in their order, a new row with a kept label in that row's place, the other new rows after."""
    by_label = {r["label"]: r for r in new}
    merged = [by_label.pop(r["label"], r) for r in kept]
    return merged + [r for r in new if r["label"] in by_label]


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def seed_groups(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows whose label ends in " (seed N)", by the label before it, in the order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        match = SEED_LABEL.match(row["label"])
        if match:
            groups.setdefault(match["group"], []).append(row)
    return groups


def _stat(values: list[float]) -> str:
    return fmt_stat(Stat(values))


def group_markdown(groups: dict[str, list[dict]], what: str) -> str:
    """mean ± sample std over each group's seeds: mAP of every model, the gap to the teacher, the margin."""
    lines = [f"| {what} | seeds | " + " | ".join(name for key, name in MODELS if key != "teacher")
             + " | CLEAN final − teacher | CLEAN final − width-only |",
             "|---|---:|" + "---:|" * (len(MODELS) + 1)]
    for group, rows in groups.items():
        cells = []
        for key, _ in MODELS:
            if key == "teacher":
                continue
            values = [r[key]["map3d"] for r in rows if r[key] is not None]
            cells.append(_stat(values) if len(values) == len(rows) else "—")
        margins = [r["final_minus_width_only"] for r in rows]
        margin = "—" if None in margins else _stat(margins)
        lines.append(f"| {group} | {len(rows)} | " + " | ".join(cells)
                     + f" | {_stat([-r['gap_to_teacher'] for r in rows])} | {margin} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict]) -> str:
    what = rows[0]["what"]  # what the labels name (summary_rows), the first column's title
    lines = [f"| {what} | model | Car | Ped | Cyc | mAP | Car BEV |", "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        for key, name in MODELS:
            m = row[key]
            if m is None:
                continue
            cells = [f"{m['ap3d'][c]:.2f}" for c in CLASSES]
            mean = f"**{m['map3d']:.2f}**" if key == "student_final" else f"{m['map3d']:.2f}"
            lines.append(f"| {row['label']} | {name} | " + " | ".join(cells) + f" | {mean} | "
                         f"{m['apbev']['Car']:.2f} |")
    lines += ["", f"| {what} | CLEAN final − teacher | CLEAN final − width-only | training stages (s) |",
              "|---|---:|---:|---|"]
    for row in rows:
        s = row["stage_seconds"]
        spent = ", ".join(f"{k} {s[k]:.0f}" for k in ("student_baseline", "finetune", "baseline_width_only") if k in s)
        lines.append(f"| {row['label']} | {-row['gap_to_teacher']:+.2f} | "
                     f"{_signed(row['final_minus_width_only'])} | {spent} |")
    groups = seed_groups(rows)
    if groups:
        lines += ["", "Mean ± sample std over seeds (3D AP R40 moderate, mAP):", "",
                  group_markdown(groups, what).rstrip("\n")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="LABEL=RUN_FOLDER, in the order of the table")
    ap.add_argument("--keep", type=Path, metavar="SUMMARY_JSON",
                    help="start from the rows of an earlier summary.json; RUN arguments are added after them")
    ap.add_argument("--out", type=Path, help="write table.md and summary.json into this folder")
    ap.add_argument("--what", default="training frames", help="what the labels name (the first column's title)")
    args = ap.parse_args(argv)
    try:
        runs = []
        for item in args.runs:
            label, sep, folder = item.partition("=")
            if not sep or not label or not folder:
                raise ScalingError(f"{item!r}: expected LABEL=RUN_FOLDER, e.g. 1600=runs/scale_x4/seed_0")
            runs.append(read_run(label, Path(folder)))
        if not runs and not args.keep:
            raise ScalingError("no runs: give LABEL=RUN_FOLDER arguments and / or --keep SUMMARY_JSON")
        rows = merge_rows(kept_rows(args.keep) if args.keep else [], summary_rows(runs, args.what))
        text = markdown(rows)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out / "table.md", text)
            atomic_write_text(args.out / "summary.json", json.dumps(rows, indent=1) + "\n")
    except ScalingError as exc:
        print(f"scaling_table: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
