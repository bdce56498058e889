#!/usr/bin/env python3
"""The results table (issue 13): every method at the final student's size, over several seeds -> docs/RESULTS.md.

    python training/results.py [--config config/compress/results.yaml] [--seeds 0 1 2] [--variants unmasked l1]
                               [--out runs/results] [--table docs/RESULTS.md] [--set KEY=VALUE ...]
                               [--only-table] [--dry-run]

1. For each seed: `training/compress.py --config CONFIG --out OUT/seed_<s> --set training.seed=<s>` (a subprocess;
   the data and the teacher are the same for every seed, only training.seed changes). The config's baselines
   give the rows at the final student's size (config/compress/results.yaml).
2. For each seed and variant (a pruning that differs from CLEAN's, e.g. prune.criterion=l1): a compress run in
   OUT/seed_<s>_<variant> with `baselines=[]`, whose stages/data, stages/teacher and stages/student_baseline are
   symlinks to the seed's main run (same config -> same stage hash -> skipped; nothing is written into them: a
   stage that would re-run drops its link and runs in a folder of its own; the main run's is never deleted).
   Its student_final is the variant's row.
3. Aggregates every finished report.json under OUT into the table, written atomically (the aggregation, the
   "no difference" rule, the goals and the markdown are training/results_table.py).

Resumable: each compress run resumes its own stages, so re-running the same command continues where it stopped.
Chunks: `--seeds 0` / `--variants` (none) run part of it; `--only-table` writes the table from what exists (a row
with fewer seeds says how many). `--dry-run` prints the commands. Mistakes: one line `error: ...`, exit 2; a
compress run interrupted with Ctrl-C: exit 130 (run the same command again).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.results_table import (REPO, ResultsError, Row, aggregate, find_reports, markdown,  # noqa: E402
                                    repo_relative, run_folder)

DEFAULT_CONFIG = REPO / "config" / "compress" / "results.yaml"
COMPRESS = REPO / "training" / "compress.py"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# variant -> the compress overrides that make it (each is its own compress run per seed)
VARIANTS: dict[str, list[str]] = {
    "unmasked": ["prune.criterion=unmasked"],
    "l1": ["prune.criterion=l1"],
}
# stages a variant run shares with its seed's main run (upstream of importance; identical config there)
SHARED_STAGES = ("data", "teacher", "student_baseline")


# --------------------------------------------------------------------------- commands and run folders
def compress_command(config: Path, out: Path, seed: int, variant: str | None = None,
                     overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The compress.py command line of one run (the main run of a seed, or one of its variants)."""
    cmd = [sys.executable, str(COMPRESS), "--config", str(config), "--out", str(run_folder(out, seed, variant)),
           "--set", f"training.seed={seed}"]
    for value in overrides:
        cmd += ["--set", value]
    if variant is not None:
        for value in [*VARIANTS[variant], "baselines=[]", "export.enabled=false"]:
            cmd += ["--set", value]
    return cmd


def prepare_variant(out: Path, seed: int, variant: str) -> list[Path]:
    """Link the seed's main run's finished shared stages into the variant's run folder; returns the links.

    Creates only OUT/seed_<s>_<variant>/stages/<stage> -> ../../seed_<s>/stages/<stage> (relative links), nothing
    else. A link already in place is kept; anything else at that path is refused (it is not the main run's)."""
    main = run_folder(out, seed) / "stages"
    stages = run_folder(out, seed, variant) / "stages"
    for name in SHARED_STAGES:
        if not (main / name / "done.json").is_file():
            raise ResultsError(f"{main / name}: the main run of seed {seed} has not finished stage {name!r}; run "
                               f"it first (training/results.py --seeds {seed})")
    missing = []
    for name in SHARED_STAGES:  # check every path before creating anything
        link, target = stages / name, main / name
        if link.is_symlink():
            if link.resolve() != target.resolve():
                raise ResultsError(f"{link}: links to {os.readlink(link)}, not to the main run's {target}")
        elif link.exists():
            raise ResultsError(f"{link}: exists and is not a link to the main run's stage; remove it to share "
                               f"{target}")
        else:
            missing.append(name)
    if missing:
        stages.mkdir(parents=True, exist_ok=True)
    for name in missing:
        (stages / name).symlink_to(os.path.relpath((main / name).resolve(), stages.resolve()),
                                   target_is_directory=True)
    return [stages / name for name in SHARED_STAGES]


def run_command(cmd: list[str]) -> int:
    """Run a compress run in the foreground. Ctrl-C reaches it too (same process group): it finishes its training
    step and saves a checkpoint, so we wait for it instead of killing it."""
    process = subprocess.Popen(cmd)  # in our working directory: --out and --config mean the same to it
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue


# --------------------------------------------------------------------------- the table
def write_table(args) -> list[Row]:
    from clean_ros.atomic import atomic_write_text

    reports = find_reports(args.out)
    if not reports.get(None):
        raise ResultsError(f"{args.out}: no finished run (seed_<s>/report.json) to aggregate")
    rows = aggregate(reports)
    variants = [v for v in VARIANTS if v in reports]
    command = _command_text(args, sorted(reports[None]), variants)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.table, markdown(args.out, args.config, reports, rows, command))
    print(f"{args.table}: {len(rows)} rows from {args.out}")
    return rows


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Run the results experiments (every method at the final student's size, "
                                             "several seeds) and write the results table.")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                    help=f"compression YAML (default {DEFAULT_CONFIG.relative_to(REPO)})")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS),
                    help=f"pruning variants run per seed (default {' '.join(VARIANTS)}; none: --variants)")
    ap.add_argument("--out", type=Path, default=Path("runs/results"), help="folder of the runs (default runs/results)")
    ap.add_argument("--table", type=Path, default=REPO / "docs" / "RESULTS.md", help="the table (default docs/RESULTS.md)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="passed to every compress run (e.g. student.epochs=4 for a shorter try); repeatable")
    ap.add_argument("--only-table", action="store_true", help="no runs: aggregate the finished ones into the table")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing, write nothing")
    return ap


def _command_text(args, seeds: list[int], variants: list[str]) -> str:
    """The command that produces these runs: the seeds and variants found, the rest from the command line."""
    parts = ["python", "training/results.py"]
    if Path(args.config).resolve() != DEFAULT_CONFIG:
        parts += ["--config", repo_relative(args.config)]
    parts += ["--seeds", *map(str, seeds), "--variants", *variants]
    if args.out != Path("runs/results"):
        parts += ["--out", str(args.out)]
    for value in args.overrides:
        parts += ["--set", value]
    return shlex.join(parts)


def check_args(args) -> None:
    if not args.config.is_file():
        raise ResultsError(f"{args.config}: config file not found")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise ResultsError(f"--variants {unknown[0]}: unknown variant; known: {', '.join(VARIANTS)}")
    if any(seed < 0 for seed in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        raise ResultsError(f"--seeds must be distinct non-negative integers, got {args.seeds}")
    bad = [value for value in args.overrides if "=" not in value]
    if bad:
        raise ResultsError(f"--set {bad[0]}: expected KEY.PATH=VALUE")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _main(args) -> int:
    check_args(args)
    if args.only_table:
        if args.dry_run:
            print(f"# would aggregate {args.out}/seed_*/report.json into {args.table}")
        else:
            write_table(args)
        return 0
    runs = [(seed, None) for seed in args.seeds] + [(seed, v) for v in args.variants for seed in args.seeds]
    for seed, variant in runs:
        cmd = compress_command(args.config, args.out, seed, variant, args.overrides)
        if args.dry_run:
            if variant is not None:
                for name in SHARED_STAGES:
                    print(f"# link {run_folder(args.out, seed, variant)}/stages/{name} -> "
                          f"{run_folder(args.out, seed)}/stages/{name}")
            print(shlex.join(cmd))
            continue
        if variant is not None:
            prepare_variant(args.out, seed, variant)
        label = f"seed {seed}" + (f", variant {variant}" if variant else "")
        print(f"== results: {label}: {shlex.join(cmd)}", flush=True)
        code = run_command(cmd)
        if code == EXIT_INTERRUPTED:
            print(f"interrupted during {label}; run the same command again to continue", file=sys.stderr)
            return EXIT_INTERRUPTED
        if code != 0:
            log = run_folder(args.out, seed, variant) / "compress.log"
            raise ResultsError(f"the compress run for {label} failed (exit {code}); see {log}")
    if args.dry_run:
        print(f"# then aggregate {args.out}/seed_*/report.json into {args.table}")
        return 0
    write_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())