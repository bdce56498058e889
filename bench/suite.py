"""Shared pieces of the benchmark suite: timing, machine description, machine-readable figures, results file.

A benchmark script prints its human-readable output as before and, for every figure it wants in the summary,
one line `RESULT {json}` (see `emit`; printed only when run_all.py runs the script, which sets
CLEAN_ROS_BENCH_RESULTS=1, so a script run by hand prints exactly what it printed before).
bench/run_all.py collects those lines from every script, prints one table and writes
bench/results/<date>-<host>.json (`write_results`, atomic).

A figure: {"bench", "name", "value", "unit", "load_average" (1/5/15 min when measured), optional "goal"
(e.g. "<= 100"), "status" ("PASS" / "MISS" when there is a goal), "note"}.

Timing (`time_call`): `warmup` untimed calls, then `repeats` timed calls, each bracketed by a device
synchronisation (CUDA when given a cuda device) so that asynchronous kernels are inside the measured span;
percentiles by linear interpolation between order statistics (numpy's default), in milliseconds.
"""
from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from bench/: the suite uses clean_ros' writer and commit lookup
    sys.path.insert(0, str(ROOT))
from clean_ros.atomic import atomic_open  # noqa: E402
from clean_ros.provenance import git_commit as source_commit  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
KITTI_FRAME = ROOT.parent / "shared/data/kitti_sample/training/velodyne/000000.bin"
RESULT_PREFIX = "RESULT "
QUICK_ENV = "CLEAN_ROS_BENCH_QUICK"  # set to 1 by `run_all.py --quick`: scripts of the suite use fewer repeats
RESULTS_ENV = "CLEAN_ROS_BENCH_RESULTS"  # set to 1 by run_all.py: scripts print their RESULT lines


def quick() -> bool:
    return os.environ.get(QUICK_ENV, "") == "1"


# ------------------------------------------------------------------------------------------- timing
def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100), linear interpolation between the sorted values (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q = {q}: must be in [0, 100]")
    ordered = sorted(float(v) for v in values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Timing:
    """Milliseconds over `n` timed calls."""

    p50: float
    p95: float
    mean: float
    min: float
    n: int

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> "Timing":
        return cls(percentile(samples_ms, 50), percentile(samples_ms, 95), sum(samples_ms) / len(samples_ms),
                   min(samples_ms), len(samples_ms))

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def device_sync(device: Any = None) -> Callable[[], None]:
    """A no-argument function that waits for `device` (a torch cuda device / "cuda:0"); a no-op for CPU."""
    if device is None or "cuda" not in str(device):
        return lambda: None
    import torch

    return lambda: torch.cuda.synchronize(torch.device(device))


def sample_call(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: Any = None,
                clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], Any]:
    """Call `fn()` `warmup` times untimed, then `repeats` times timed, synchronising `device` around every call:
    (milliseconds of each timed call, in call order; the last call's result)."""
    if repeats < 1:
        raise ValueError(f"repeats = {repeats}: need at least one timed call")
    sync = device_sync(device)
    for _ in range(max(warmup, 0)):
        fn()
    sync()
    samples = []
    result = None
    for _ in range(repeats):
        sync()
        start = clock()
        result = fn()
        sync()
        samples.append((clock() - start) * 1e3)
    return samples, result


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: Any = None,
              clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time `fn()` `repeats` times after `warmup` untimed calls, synchronising `device` around every call."""
    return Timing.of(sample_call(fn, repeats, warmup, device, clock)[0])


# ------------------------------------------------------------------------------------------- machine
def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(root: Path = ROOT) -> str:
    return source_commit(root) or "unknown"


def machine(threads: int | None = None) -> dict:
    """CPU model, cores, torch / onnxruntime versions, torch threads (of this process: each figure records the
    count its script used), GPU if any, load average now."""
    info: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu_model(),
                            "cpu_count": os.cpu_count(), "python": platform.python_version(),
                            "load_average": load_average()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = threads if threads is not None else torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


# ------------------------------------------------------------------------------------------- figures
def figure(bench: str, name: str, value: float | None, unit: str, *, goal: str | None = None,
           note: str = "", load: list[float] | None = None, **extra) -> dict:
    """One figure; `goal` "<= X" or ">= X" gives status PASS / MISS (None value: status n/a)."""
    fig = {"bench": bench, "name": name, "value": None if value is None else round(float(value), 4),
           "unit": unit, "load_average": load if load is not None else load_average(), "note": note}
    if "torch" in sys.modules:  # the thread count this figure was measured with (scripts choose their own)
        fig["torch_threads"] = sys.modules["torch"].get_num_threads()
    fig.update(extra)
    if goal is not None:
        fig["goal"] = goal
        fig["status"] = goal_status(value, goal)
    return fig


def goal_status(value: float | None, goal: str) -> str:
    op, _, target = goal.strip().partition(" ")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    target_value = float(target)
    if op == "<=":
        return "PASS" if value <= target_value else "MISS"
    if op == ">=":
        return "PASS" if value >= target_value else "MISS"
    raise ValueError(f"goal {goal!r}: expected '<= number' or '>= number'")


def emit(fig: dict) -> None:
    """Print one figure as a machine-readable line for run_all.py (only under run_all.py, or with
    CLEAN_ROS_BENCH_RESULTS=1: a script run by hand prints just its own output)."""
    if os.environ.get(RESULTS_ENV, "") != "1":
        return
    print(RESULT_PREFIX + json.dumps(fig, sort_keys=True), flush=True)


def parse_results(text: str) -> list[dict]:
    """Every `RESULT {json}` line of a script's output (malformed lines are skipped)."""
    out = []
    for line in text.splitlines():
        if line.startswith(RESULT_PREFIX):
            try:
                value = json.loads(line[len(RESULT_PREFIX):])
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


def _fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        v = float(value)
        if v != 0 and abs(v) < 1e-2:
            return f"{v:.3g}"
        return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(value)


def summary_table(figures: Iterable[dict]) -> str:
    """One plain-text table: bench, figure, value, unit, goal, status, load average (1 min) when measured."""
    rows = [("bench", "figure", "value", "unit", "goal", "status", "load")]
    for f in figures:
        load = f.get("load_average")
        rows.append((str(f.get("bench", "")), str(f.get("name", "")), _fmt_value(f.get("value")),
                     str(f.get("unit", "")), str(f.get("goal", "")), str(f.get("status", "")),
                     f"{load[0]:.2f}" if load else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i in (0, 1, 3, 4, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def goals_table(figures: Iterable[dict]) -> str:
    """Only the figures that carry a goal: measured value vs goal, PASS / MISS / n/a, load average."""
    lines = []
    for f in figures:
        if "goal" not in f:
            continue
        load = f.get("load_average")
        where = f"goal {f['goal']}" + (f"; load {load[0]:.2f}" if load else "")
        line = f"  {f.get('status', ''):5s} {f.get('bench', '')}: {f.get('name', '')} = {_fmt_value(f.get('value'))}"
        line += f" {f['unit']}" if f.get("unit") else ""
        line += f" ({where})"
        if f.get("value") is None and f.get("note"):
            line += f": {f['note']}"
        lines.append(line)
    return "\n".join(lines)


def results_path(start_utc: time.struct_time | None = None, host: str | None = None,
                 directory: Path = RESULTS_DIR) -> Path:
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", start_utc or time.gmtime())
    safe_host = "".join(c if c.isalnum() or c in "-_." else "_" for c in (host or socket.gethostname()))
    return directory / f"{stamp}-{safe_host}.json"


def write_results(path: Path, data: dict) -> Path:
    """Write `data` as JSON to `path` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", fsync=True) as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    return path


# ------------------------------------------------------------------------------------------- data
def synthetic_scan(n: int = 120_000, seed: int = 0):
    """A stand-in for a KITTI scan when the sample is absent: (n, 4) float32 x y z intensity, spread like a
    360-degree scan (range 2-80 m, z -2.5..1 m, intensity 0..1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    r, a = rng.uniform(2, 80, n), rng.uniform(-np.pi, np.pi, n)
    points = np.stack([r * np.cos(a), r * np.sin(a), rng.uniform(-2.5, 1, n), rng.uniform(0, 1, n)], 1)
    return points.astype(np.float32)


def load_frame(path: Path = KITTI_FRAME):
    """(points (N, 4) float32, description): the real KITTI frame, or a simulated one when it is absent."""
    import numpy as np

    if Path(path).is_file():
        return np.fromfile(path, dtype=np.float32).reshape(-1, 4), f"KITTI {Path(path).name}"
    sys.path.insert(0, str(ROOT))
    from training.sim.sim_config import config_from_dict
    from training.simulate import simulate_dataset

    with tempfile.TemporaryDirectory(prefix="bench_frame_") as tmp:
        simulate_dataset(config_from_dict({"dataset": {"val_fraction": 0.0}}), Path(tmp), n_frames=1, seed=0,
                         workers=1, progress=False)
        frame = next(Path(tmp).rglob("velodyne/*.bin"))
        return np.fromfile(frame, dtype=np.float32).reshape(-1, 4), "simulated (KITTI sample not found)"


__all__ = ["Timing", "time_call", "sample_call", "percentile", "device_sync", "machine", "load_average", "git_commit", "figure",
           "goal_status", "emit", "parse_results", "summary_table", "goals_table", "results_path", "write_results",
           "load_frame", "synthetic_scan",
           "quick", "QUICK_ENV", "RESULTS_ENV", "KITTI_FRAME", "ROOT"]
