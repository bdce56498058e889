"""The benchmark runner's plumbing: percentiles, timing helper, RESULT lines, summary table, atomic results file."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import run_all  # noqa: E402
import suite  # noqa: E402


def test_percentile_matches_numpy_linear_interpolation():
    values = [7.0, 1.0, 3.0, 10.0, 2.0, 8.5]
    for q in (0, 5, 50, 95, 100):
        assert suite.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert suite.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert suite.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    with pytest.raises(ValueError):
        suite.percentile([], 50)


def test_time_call_skips_warmup_and_measures_each_call():
    # A fake clock: call k of fn takes k ms; the first two (warm-up) must not be in the samples.
    state = {"now": 0.0, "calls": 0}

    def fn():
        state["calls"] += 1
        state["now"] += state["calls"] / 1000.0

    timing = suite.time_call(fn, repeats=5, warmup=2, clock=lambda: state["now"])
    assert state["calls"] == 7
    assert timing.n == 5
    assert timing.min == pytest.approx(3.0)
    assert timing.p50 == pytest.approx(5.0)
    assert timing.p95 == pytest.approx(6.8)
    assert timing.mean == pytest.approx(5.0)


def test_sample_call_returns_each_timed_call_in_order_and_the_last_result():
    state = {"now": 0.0, "calls": 0}

    def fn():
        state["calls"] += 1
        state["now"] += state["calls"] / 1000.0
        return f"result {state['calls']}"

    samples, result = suite.sample_call(fn, repeats=3, warmup=1, clock=lambda: state["now"])
    assert samples == pytest.approx([2.0, 3.0, 4.0]) and result == "result 4"
    with pytest.raises(ValueError, match="at least one timed call"):
        suite.sample_call(fn, repeats=0)


def test_goal_status_and_result_lines_round_trip(capsys, monkeypatch):
    assert suite.goal_status(90.0, "<= 100") == "PASS"
    assert suite.goal_status(2.5, "<= 2") == "MISS"
    assert suite.goal_status(3.1, ">= 3") == "PASS"
    assert suite.goal_status(None, ">= 3") == "n/a"
    fig = suite.figure("models", "speed-up teacher/student", 3.4, "x", goal=">= 3", load=[5.0, 4.0, 3.0])
    suite.emit(fig)
    assert capsys.readouterr().out == ""  # by hand: no machine-readable lines
    monkeypatch.setenv(suite.RESULTS_ENV, "1")  # under run_all.py
    suite.emit(fig)
    printed = "human line\n" + capsys.readouterr().out + "RESULT {not json\n"
    assert suite.parse_results(printed) == [fig]
    assert fig["status"] == "PASS"


def test_summary_and_results_file(tmp_path):
    figures = [suite.figure("roofline", "matmul fp32", 51234.5, "GFLOP/s", load=[9.5, 8.0, 7.0]),
               suite.figure("node", "decode / memcpy", 2.6, "x", goal="<= 2", load=[1.25, 1.0, 1.0]),
               suite.figure("models", "final student", None, "ms", note="not available yet", load=None)]
    figures[2]["load_average"] = None
    table = suite.summary_table(figures).splitlines()
    assert table[0].split() == ["bench", "figure", "value", "unit", "goal", "status", "load"]
    assert "51,234" in table[2] and "9.50" in table[2]
    assert table[3].split()[-5:] == ["x", "<=", "2", "MISS", "1.25"] and "2.60" in table[3]
    assert table[4].rstrip().endswith("-")
    goals = suite.goals_table(figures).splitlines()
    assert goals == ["  MISS  node: decode / memcpy = 2.60 x (goal <= 2; load 1.25)"]
    report = run_all.build_report([{"script": "bench_x", "exit": 0}], figures, {"host": "h", "load_average": [1, 2, 3]},
                                  [4, 5, 6], True, "2026-01-01T00:00:00Z", "abc")
    path = suite.write_results(tmp_path / "r" / "out.json", report)
    data = json.loads(path.read_text())
    assert data["machine"]["load_average_start"] == [1, 2, 3] and data["machine"]["load_average_end"] == [4, 5, 6]
    assert data["figures"][1]["status"] == "MISS" and data["git_commit"] == "abc"
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temporary file left behind


def test_runner_collects_figures_from_scripts(tmp_path, monkeypatch):
    bench_dir = tmp_path / "bench"
    bench_dir.mkdir()
    (bench_dir / "bench_fake.py").write_text(
        "import json\nprint('a human line')\n"
        "print('RESULT ' + json.dumps({'name': 'speed', 'value': 1.5, 'unit': 'ms',\n"
        "                              'load_average': [1.0, 1.0, 1.0]}))\n")
    (bench_dir / "bench_broken.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(run_all, "HERE", bench_dir)
    out = tmp_path / "res.json"
    assert run_all.main(["--out", str(out)]) == 1  # the broken one fails the run, the other still counts
    data = json.loads(out.read_text())
    assert {r["script"]: r["exit"] for r in data["scripts"]} == {"bench_broken": 3, "bench_fake": 0}
    assert data["figures"] == [{"bench": "fake", "name": "speed", "value": 1.5, "unit": "ms",
                                "load_average": [1.0, 1.0, 1.0]}]
