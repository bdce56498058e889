"""The results table's side of training/results.py: finished runs -> docs/RESULTS.md.

Reads every finished report.json of a results tree (OUT/seed_<s>/ and OUT/seed_<s>_<variant>/, the layout
training/results.py runs), aggregates each row of the table over seeds (mean ± sample std), compares it with CLEAN
final (the "no difference" rule: within the larger of the two stds), computes the goals and writes the markdown.
No runs, no command line: training/results.py runs the experiments and calls this to write the table.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = (("Car", "Car"), ("Pedestrian", "Ped"), ("Cyclist", "Cyc"))
CLEAN = "clean_final"


class ResultsError(Exception):
    """A mistake in the command line or its inputs: one line, exit status 2."""


@dataclass(frozen=True)
class RowSpec:
    """A row of the table: report key `key` of the main run (variant None) or of a variant run."""

    row: str
    label: str
    key: str
    variant: str | None
    group: str  # "reference" | "clean" | "ablation" | "method"
    legend: str


ROWS: tuple[RowSpec, ...] = (
    RowSpec("teacher", "teacher", "teacher", None, "reference", "the two-stage teacher every KD row learns from"),
    RowSpec("no_kd_full", "no-KD student, full width", "student_baseline", None, "reference",
            "the student YAML's widths, no KD (what importance is scored on and pruning inherits)"),
    RowSpec("width_only", "no-KD student, pruned widths (width-only)", "baseline_width_only", None, "method",
            "the final student's per-layer widths from scratch without KD, same total epochs"),
    RowSpec(CLEAN, "CLEAN final", "student_final", None, "clean",
            "pruned (masked category importance) + CaKD + label-assignment KD + hard IoU gate"),
    RowSpec("no_cakd", "CLEAN without CaKD", "baseline_no_cakd", None, "ablation",
            "as CLEAN final, KD = label assignment only"),
    RowSpec("no_label_assign", "CLEAN without label assignment", "baseline_no_label_assign", None, "ablation",
            "as CLEAN final, KD = CaKD only"),
    RowSpec("unmasked", "CLEAN, unmasked importance", "student_final", "unmasked", "ablation",
            "as CLEAN final, pruned by the unmasked (CaKDP) criterion"),
    RowSpec("l1", "CLEAN, L1-norm pruning", "student_final", "l1", "ablation",
            "as CLEAN final, pruned by layer-normalised filter L1 norms instead of category importance"),
    RowSpec("no_gate", "CLEAN, no IoU gate", "student_pruned", None, "ablation",
            "the CLEAN final model evaluated with its gate off"),
    RowSpec("soft_gate", "CLEAN, soft gate", "student_final_soft_gate", None, "ablation",
            "the CLEAN final model evaluated with the soft gate instead of the hard one"),
    RowSpec("sparsekd", "SparseKD", "baseline_sparsekd", None, "method",
            "pivotal-position logit KD + label KD, from the pruned weights, IoU branch + hard gate"),
    RowSpec("pointdistiller", "PointDistiller", "baseline_pointdistiller", None, "method",
            "dynamic-graph pillar-feature KD (teacher: the full-width no-KD student), same start and gate"),
    RowSpec("logit_kd", "logit KD", "baseline_logit_kd", None, "method",
            "vanilla logit KD on every position, same start and gate"),
    RowSpec("feature_kd", "feature KD", "baseline_feature_kd", None, "method",
            "FitNet BEV-feature KD through a 1x1 adapter, same start and gate"),
)


# --------------------------------------------------------------------------- run folders
def run_folder(out: Path, seed: int, variant: str | None = None) -> Path:
    """OUT/seed_<s> (a seed's main run) or OUT/seed_<s>_<variant>: training/results.py runs there, the table reads."""
    return out / (f"seed_{seed}" if variant is None else f"seed_{seed}_{variant}")


# --------------------------------------------------------------------------- aggregation
@dataclass
class Stat:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / self.n if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None below 2 values."""
        if self.n < 2:
            return None
        mean = self.mean
        return math.sqrt(sum((v - mean) ** 2 for v in self.values) / (self.n - 1))


@dataclass
class Row:
    spec: RowSpec
    seeds: list[int]
    params: Stat
    gflops: Stat
    latency_p50: Stat
    ap: dict[str, Stat]
    map: Stat


def find_reports(out: Path) -> dict[str | None, dict[int, dict]]:
    """Every finished run under `out`: {variant (None = main run): {seed: report.json}}."""
    found: dict[str | None, dict[int, dict]] = {}
    if not out.is_dir():
        return found
    pattern = re.compile(r"seed_(\d+)(?:_([A-Za-z0-9_]+))?")
    for folder in sorted(out.iterdir()):
        match = pattern.fullmatch(folder.name)
        path = folder / "report.json"
        if not match or not path.is_file():
            continue
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ResultsError(f"{path}: not a readable report ({exc})") from None
        found.setdefault(match.group(2), {})[int(match.group(1))] = report
    return found


def aggregate(reports: dict[str | None, dict[int, dict]], specs=ROWS) -> list[Row]:
    """One Row per spec with data in at least one seed, in table order."""
    rows = []
    for spec in specs:
        per_seed = {seed: report.get("models", {}).get(spec.key)
                    for seed, report in sorted(reports.get(spec.variant, {}).items())}
        per_seed = {seed: model for seed, model in per_seed.items() if model}
        if not per_seed:
            continue
        models = list(per_seed.values())
        rows.append(Row(spec, list(per_seed),
                        Stat([float(m["params"]) for m in models]), Stat([float(m["gflops"]) for m in models]),
                        Stat([float(m["latency_ms"]["p50"]) for m in models]),
                        {name: Stat([float(m["ap3d_r40_moderate"][name]) for m in models
                                     if name in m["ap3d_r40_moderate"]]) for name, _ in CLASSES},
                        Stat([float(m["map3d_r40_moderate"]) for m in models])))
    return rows


def versus(row: Stat, reference: Stat) -> str:
    """The mAP difference to CLEAN final: "no difference" when it is within the larger of the two stds."""
    diff = row.mean - reference.mean
    n = min(row.n, reference.n)
    if n < 2:
        return f"{diff:+.2f} (n<3 seeds)"
    spread = max(row.std, reference.std)
    text = "no difference" if abs(diff) <= spread else f"{diff:+.2f}"
    return text + (" (n<3 seeds)" if n < 3 else "")


def fmt_stat(stat: Stat, digits: int = 2) -> str:
    if not stat.values:
        return "n/a"
    if stat.std is None:
        return f"{stat.mean:.{digits}f}"
    return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f}"


def _by_row(rows: list[Row]) -> dict[str, Row]:
    return {row.spec.row: row for row in rows}


def goals(rows: list[Row]) -> list[str]:
    """The issue's goals, computed from the rows (met / not met / not measured)."""
    r = _by_row(rows)
    clean = r.get(CLEAN)
    if clean is None:
        return ["- Not measured: no CLEAN final row yet."]
    lines = []
    others = [row for row in rows if row.spec.group == "method"]
    missing = [spec.label for spec in ROWS if spec.group == "method" and spec.row not in r]
    if others:
        beaten = [row.spec.label for row in others if clean.map.mean > row.map.mean]
        not_beaten = [f"{row.spec.label} ({row.map.mean:.2f})" for row in others if clean.map.mean <= row.map.mean]
        clear = [row.spec.label for row in others
                 if row.map.n >= 2 and clean.map.n >= 2
                 and clean.map.mean - row.map.mean > max(row.map.std, clean.map.std)]
        verdict = "**met**" if not not_beaten and not missing else ("**not met**" if not_beaten else "**not determined**")
        line = (f"- CLEAN final (mAP {clean.map.mean:.2f}) beats every other method at the same size (mean over "
                f"seeds): {verdict}. Beaten: {', '.join(beaten) or 'none'}")
        if not_beaten:
            line += f"; not beaten: {', '.join(not_beaten)}"
        if missing:
            line += f"; not measured: {', '.join(missing)}"
        line += f". Beyond the spread (difference > the larger std): {', '.join(clear) or 'none'}."
        lines.append(line)
    else:
        lines.append("- CLEAN beats every other method at the same size: **not determined** (no other method "
                     "measured yet).")
    teacher = r.get("teacher")
    if teacher is not None:
        gap = teacher.map.mean - clean.map.mean
        lines.append(f"- The final student is within 1 mAP of the teacher: {'**met**' if gap <= 1.0 else '**not met**'}"
                     f" (teacher {teacher.map.mean:.2f}, final {clean.map.mean:.2f}, gap {gap:+.2f}).")
        if gap > 1.0:  # this table's scale is the 30-minute default's; the gap is closed with more frames and cells
            lines.append(f"  At this table's scale only; with 4x the training frames and 0.32 m cells: {LARGER_SETTING}.")
    else:
        lines.append("- The final student is within 1 mAP of the teacher: **not determined** (no teacher row).")
    lines += _default_goals(r, clean)
    return lines


# where the within-1-mAP goal is measured at the scale that reaches it (the same teacher and holdout frames)
LARGER_SETTING = "docs/results/fine_grid/README.md, \"Over seeds\""


def _default_goals(r: dict[str, Row], clean: Row) -> list[str]:
    """The default run's goals, measured here (the same config as `make compress` plus the extra baselines)."""
    lines = ["", "The default `make compress` goals, measured in the same runs:", ""]
    width = r.get("width_only")
    full = r.get("no_kd_full")
    teacher = r.get("teacher")

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    if width is not None:
        lines.append(f"- final mAP ≥ same-size no-KD student + 2: {verdict(clean.map.mean >= width.map.mean + 2)} "
                     f"({clean.map.mean:.2f} vs {width.map.mean:.2f} + 2)")
    if full is not None:
        lines.append(f"- final mAP ≥ full-width no-KD student: {verdict(clean.map.mean >= full.map.mean)} "
                     f"({clean.map.mean:.2f} vs {full.map.mean:.2f})")
    if teacher is not None:
        share = clean.params.mean / teacher.params.mean
        speed = teacher.latency_p50.mean / max(clean.latency_p50.mean, 1e-9)
        lines.append(f"- ≤ 25% of the teacher's params: {verdict(share <= 0.25)} ({share:.1%})")
        lines.append(f"- ≥ 3× faster than the teacher (latency p50, same run): {verdict(speed >= 3.0)} "
                     f"({speed:.2f}×)")
    return lines if len(lines) > 3 else []


def _machines(reports: dict[str | None, dict[int, dict]]) -> list[str]:
    lines = []
    for variant, runs in sorted(reports.items(), key=lambda item: (item[0] is not None, item[0] or "")):
        for seed, report in sorted(runs.items()):
            m = report.get("machine") or {}
            lines.append(f"{'seed_%d' % seed}{'' if variant is None else '_' + variant}: {m.get('platform')}, "
                         f"{m.get('cpu_count')} CPUs, torch {m.get('torch')}, {m.get('threads')} thread(s), load "
                         f"{m.get('load_average_before')} / {m.get('load_average')} (before / after the latency runs)")
    return lines


def _data_line(out: Path, reports: dict[str | None, dict[int, dict]]) -> str:
    splits, frames, counts = set(), set(), set()
    for seed, report in (reports.get(None) or {}).items():
        evaluation = report.get("evaluation") or {}
        splits.add(evaluation.get("split"))
        frames.update(v for v in (evaluation.get("frames") or {}).values() if v is not None)
        marker = run_folder(out, seed) / "stages" / "data" / "done.json"
        try:
            summary = json.loads(marker.read_text()).get("summary") or {}
        except (OSError, json.JSONDecodeError):
            continue
        counts.add(json.dumps(summary.get("frames") or {}, sort_keys=True))
    split_text = ", ".join(f"`{s}`" for s in sorted(s for s in splits if s)) or "n/a"
    frame_text = ", ".join(str(f) for f in sorted(frames)) or "n/a"
    count_text = "; ".join(", ".join(f"{k} {v}" for k, v in json.loads(c).items()) for c in sorted(counts))
    return (f"Reported split {split_text} ({frame_text} frames; the same frames for every row); frames per split: "
            f"{count_text or 'n/a'}. Tuning uses the val split only.")


def markdown(out: Path, config: Path, reports: dict[str | None, dict[int, dict]], rows: list[Row],
             command: str) -> str:
    from clean_ros.provenance import git_commit

    seeds = sorted({seed for runs in reports.values() for seed in runs})
    commits = sorted({str(r.get("commit")) for runs in reports.values() for r in runs.values()})
    clean = _by_row(rows).get(CLEAN)
    lines = ["# Results: CLEAN against every method at the same student size", "",
             f"Produced by `{command}` (then `python training/results.py --only-table` re-aggregates; the runs "
             f"are in `{out}`; each run's resolved config is its `config.yaml`). Config "
             f"`{repo_relative(config)}`; seeds {', '.join(map(str, seeds)) or 'none'}.",
             "",
             f"Commits of the runs: {', '.join(f'`{c}`' for c in commits) or 'n/a'}; table written at commit "
             f"`{git_commit(short=True)}`.",
             "", _data_line(out, reports), "",
             "Metric: KITTI 3D AP R40, moderate (IoU 0.7 Car, 0.5 Ped / Cyc); mAP = mean of the three. Each cell is "
             "mean ± sample std over seeds (n − 1); params, GMACs and CPU latency p50 (batch 1, one scan, from each "
             "run's efficiency stage, all models of a run timed round-robin) are means over seeds. \"vs CLEAN "
             "final\" = difference of mean mAP; \"no difference\" when it is within the larger of the two stds.",
             "", "| row | runs | params | GMACs | latency p50 (ms) | Car | Ped | Cyc | mAP | vs CLEAN final |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        n = f"{len(row.seeds)}" + ("" if len(row.seeds) == len(seeds) else f" of {len(seeds)}")
        if row.spec.row == CLEAN or clean is None:
            vs = "—"
        else:
            vs = versus(row.map, clean.map)
        lines.append(f"| {row.spec.label} | {n} | {row.params.mean:,.0f} | {row.gflops.mean:.3f} | "
                     f"{row.latency_p50.mean:.1f} | {' | '.join(fmt_stat(row.ap[name]) for name, _ in CLASSES)} | "
                     f"{fmt_stat(row.map)} | {vs} |")
    present = {row.spec.row for row in rows}
    absent = [spec.label for spec in ROWS if spec.row not in present]
    if absent:
        lines += ["", f"Not measured yet (no finished run has them): {', '.join(absent)}."]
    skipped = sorted({f"`{stage}` ({reason})" for runs in reports.values() for r in runs.values()
                      for stage, reason in (r.get("skipped") or {}).items()})
    if skipped:
        lines += ["", f"Skipped in some runs: {'; '.join(skipped)}."]
    lines += ["", "## Goals (computed from the table)", "", *goals(rows), "", "## Rows", ""]
    lines += [f"- **{spec.label}**: {spec.legend}." for spec in ROWS]
    lines += ["", "## Machine and load of each run", ""]
    lines += [f"- {line}" for line in _machines(reports)] or ["- n/a"]
    return "\n".join(lines) + "\n"


def repo_relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)
