"""Run the benchmark suite (bench/bench_*.py, one subprocess each), print ONE summary table, write the results.

    make bench                                        # everything
    .venv/bin/python bench/run_all.py --quick         # fewer repeats / frames everywhere (minutes, not an hour)
    .venv/bin/python bench/run_all.py suite roofline  # only scripts whose name contains one of the words
    .venv/bin/python bench/run_all.py --list          # what would run, with the arguments

Every script's own output is shown as it runs (minus its machine-readable `RESULT {json}` lines, see
bench/suite.py). At the end: one table of every figure (value, unit, goal, PASS / MISS, load average when it was
measured), and bench/results/<UTC time>-<host>.json written atomically with every figure, each script's exit
status and duration, the machine (CPU model, cores, torch version and threads, load average at start and end)
and the git commit. A script that fails or times out is reported, the others still run; exit status 1 then.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import suite  # noqa: E402

# Runner-side arguments for --quick (the scripts keep their own defaults for a full run).
QUICK_ARGS: dict[str, list[str]] = {
    "bench_backends": ["--runs", "5", "--warmup", "1"],
    "bench_compress": ["--repeats", "5", "--warmup", "1"],
    "bench_decode": ["--repeat", "10"],
    "bench_distill": ["--iters", "2"],
    "bench_eval": ["--frames", "300"],
    "bench_intensity_level": ["--runs", "20", "--warmup", "2"],
    "bench_models": ["--runs", "2", "--threads", "1"],
    "bench_node": ["--frames", "60", "--threads", "1"],
    "bench_postprocess": ["--repeats", "3"],
    "bench_prune": ["--layers", "1"],
    "bench_simulator": ["--frames", "4", "--workers", "1"],
    "bench_sparse": ["--repeats", "2"],
    "bench_teacher": ["--runs", "1"],
    "bench_train": ["--iters", "3", "--frames", "4", "--configs", "pointpillars_tiny"],
    "bench_train_step": ["--steps", "6", "--epochs", "2", "--frames", "8"],
    "bench_voxelize": ["--runs", "10", "--warmup", "2", "--threads", "1"],
}
# Scripts that take --device (run_all.py --device cuda on a GPU machine).
DEVICE_SCRIPTS = {"bench_backends", "bench_models", "bench_voxelize", "bench_suite_models", "bench_roofline",
                  "bench_scaling"}


def _run_script(script: Path, args: list[str], env: dict, timeout: float) -> tuple[int, str, float]:
    """Run one script, echo its output live (without RESULT lines), return (exit status, output, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=HERE.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    lines: list[str] = []

    def pump():
        for line in proc.stdout:
            lines.append(line)
            if not line.startswith(suite.RESULT_PREFIX):
                sys.stdout.write(line)
                sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # the node benchmark shuts its node down on SIGINT
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        rc = 124
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait()
        raise
    reader.join(timeout=10)
    return rc, "".join(lines), time.perf_counter() - start


def build_report(scripts: list[dict], figures: list[dict], machine_start: dict, load_end, quick: bool,
                 started_utc: str, commit: str) -> dict:
    machine = dict(machine_start)
    machine["load_average_start"] = machine.pop("load_average", None)
    machine["load_average_end"] = load_end
    return {"schema": "clean_ros.bench/1", "started_utc": started_utc, "git_commit": commit, "quick": quick,
            "machine": machine, "scripts": scripts, "figures": figures}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="run only scripts whose name contains one of these words")
    ap.add_argument("--quick", action="store_true", help="fewer repeats / frames (see QUICK_ARGS)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per script (default 1800, quick 600)")
    ap.add_argument("--out", type=Path, default=None, help="results file (default bench/results/<time>-<host>.json)")
    ap.add_argument("--list", action="store_true", help="list the scripts and their arguments, run nothing")
    ap.add_argument("--device", default=None, help="e.g. cuda: passed as --device to the scripts that take it "
                    f"({', '.join(sorted(DEVICE_SCRIPTS))})")
    args = ap.parse_intermixed_args(argv)

    scripts = sorted(HERE.glob("bench_*.py"))
    if args.names:
        scripts = [s for s in scripts if any(word in s.stem for word in args.names)]
    if not scripts:
        print("no benchmark matched " + " ".join(args.names) if args.names else "no benchmarks yet")
        return 1 if args.names else 0
    plan = [(s, (QUICK_ARGS.get(s.stem, []) if args.quick else [])
             + (["--device", args.device] if args.device and s.stem in DEVICE_SCRIPTS else [])) for s in scripts]
    if args.list:
        for script, extra in plan:
            print(f"{script.stem} {' '.join(extra)}".rstrip())
        return 0

    timeout = args.timeout or (600.0 if args.quick else 1800.0)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", suite.RESULTS_ENV: "1"}
    if args.quick:
        env[suite.QUICK_ENV] = "1"
    started = time.gmtime()
    started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", started)
    machine_start = suite.machine()
    commit = suite.git_commit()
    print(f"bench suite {'(quick) ' if args.quick else ''}{started_utc}, commit {commit}\n"
          f"machine: {machine_start['cpu']}, {machine_start['cpu_count']} CPUs, torch {machine_start.get('torch')}, "
          f"load average {machine_start['load_average']}", flush=True)

    records, figures = [], []
    try:
        for script, extra in plan:
            print(f"\n=== {script.stem} {' '.join(extra)}".rstrip(), flush=True)
            load_before = suite.load_average()
            rc, output, seconds = _run_script(script, extra, env, timeout)
            found = suite.parse_results(output)
            for fig in found:
                fig.setdefault("bench", script.stem.removeprefix("bench_"))
            figures.extend(found)
            status = "timed out" if rc == 124 else f"exit {rc}"
            print(f"--- {script.stem}: {status}, {seconds:.1f} s, {len(found)} figure(s)", flush=True)
            records.append({"script": script.stem, "args": extra, "exit": rc, "seconds": round(seconds, 1),
                            "figures": len(found), "load_average_before": load_before,
                            "load_average_after": suite.load_average(),
                            "output_tail": output[-4000:] if rc != 0 else ""})
    except KeyboardInterrupt:
        print("\ninterrupted: writing what was measured so far", flush=True)

    report = build_report(records, figures, machine_start, suite.load_average(), args.quick, started_utc, commit)
    out = args.out or suite.results_path(started, machine_start["host"])
    suite.write_results(out, report)
    print("\n" + "=" * 100)
    print(f"SUMMARY  {started_utc}  commit {commit}  {'quick' if args.quick else 'full'} run")
    print(f"machine: {machine_start['cpu']}, {machine_start['cpu_count']} CPUs, torch {machine_start.get('torch')}"
          f", onnxruntime {machine_start.get('onnxruntime')}; load average start "
          f"{report['machine']['load_average_start']}"
          f", end {report['machine']['load_average_end']} (shared machine: figures taken under load; see 'load')")
    print(suite.summary_table(figures) if figures else "(no figures reported)")
    goals = suite.goals_table(figures)
    if goals:
        print("\nGOALS (issue 10; single measurements on a shared machine: read them with the load average)")
        print(goals)
    failed = [r for r in records if r["exit"] != 0]
    silent = [r["script"] for r in records if r["exit"] == 0 and r["figures"] == 0]
    if silent:
        print(f"ran without machine-readable figures (see their output above): {', '.join(silent)}")
    if failed:
        print("failed: " + ", ".join(f"{r['script']} ({'timed out' if r['exit'] == 124 else 'exit ' + str(r['exit'])})"
                                     for r in failed))
    print(f"results: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
