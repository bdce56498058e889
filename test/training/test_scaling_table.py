"""scaling_table: finished runs side by side, the gap and margin computed from them; bad input is one line."""
import json
from pathlib import Path

from training.scaling_table import CLASSES, MODELS, main


def _run(folder: Path, maps: dict[str, float]) -> Path:
    (folder / "stages" / "evaluate").mkdir(parents=True)
    report = {"models": {k: {"map3d_r40_moderate": v, "params": 10} for k, v in maps.items()},
              "stage_seconds": {"finetune": 12.0}, "machine": {"load_average": [1.0, 1.0, 1.0]}, "commit": "abc"}
    metrics = {k: {"kitti": {f"{c}/{m}_R40/moderate": v + i for i, c in enumerate(CLASSES) for m in ("3d", "bev")}}
               for k, v in maps.items()}
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "stages" / "evaluate" / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_table_and_summary(tmp_path, capsys):
    keys = [k for k, _ in MODELS]
    small = _run(tmp_path / "a", dict(zip(keys, [80.0, 20.0, 40.0, 48.0])))
    big = _run(tmp_path / "b", dict(zip(keys, [80.0, 55.0, 63.0, 67.0])))
    assert main([f"400={small}", f"1600={big}", "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(r["label"], r["what"]) for r in rows] == [("400", "training frames"), ("1600", "training frames")]
    assert [r["gap_to_teacher"] for r in rows] == [32.0, 13.0]
    assert [r["final_minus_width_only"] for r in rows] == [8.0, 4.0]
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| 1600 | CLEAN final | 67.00 | 68.00 | 69.00 | **67.00** | 67.00 |" in table
    assert table == capsys.readouterr().out


def test_unfinished_run_or_bad_argument_is_one_line(tmp_path, capsys):
    assert main([f"400={tmp_path}"]) == 2
    assert main(["no-label"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "not a finished compress run" in err[0] and "LABEL=RUN_FOLDER" in err[1]


def test_run_without_width_only_and_seed_groups(tmp_path, capsys):
    keys = [k for k, _ in MODELS]
    runs = [_run(tmp_path / "c0", dict(zip(keys, [80.0, 20.0, 40.0, 48.0]))),
            _run(tmp_path / "c1", dict(zip(keys, [80.0, 22.0, 42.0, 50.0]))),
            _run(tmp_path / "f0", {"teacher": 80.0, "student_baseline": 30.0, "student_final": 55.0}),
            _run(tmp_path / "f1", {"teacher": 80.0, "student_baseline": 34.0, "student_final": 57.0})]
    labels = ["0.64 m (seed 0)", "0.64 m (seed 1)", "0.32 m (seed 0)", "0.32 m (seed 1)"]
    assert main([f"{lab}={run}" for lab, run in zip(labels, runs)] + ["--what", "grid", "--out",
                                                                       str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["final_minus_width_only"] for r in rows] == [8.0, 8.0, None, None]
    assert rows[2]["baseline_width_only"] is None
    assert rows[2]["label"] == "0.32 m (seed 0)" and rows[2]["what"] == "grid"
    table = capsys.readouterr().out
    assert "| grid | model |" in table and "| 0.32 m (seed 0) | no-KD, final widths" not in table
    assert "| 0.32 m (seed 1) | -23.00 | — |" in table
    # mean ± sample std per group: CLEAN final 49 ± 1.41, gap -31 ± 1.41; the fine group has no width-only
    assert "| 0.64 m | 2 | 21.00 ± 1.41 | 41.00 ± 1.41 | 49.00 ± 1.41 | -31.00 ± 1.41 | 8.00 ± 0.00 |" in table
    assert "| 0.32 m | 2 | 32.00 ± 2.83 | — | 56.00 ± 1.41 | -24.00 ± 1.41 | — |" in table


def test_missing_required_model_is_still_an_error(tmp_path, capsys):
    run = _run(tmp_path / "x", {"teacher": 80.0, "student_final": 55.0})
    assert main([f"a={run}"]) == 2
    assert "'student_baseline' missing" in capsys.readouterr().err


def test_keep_extends_an_earlier_summary_whose_runs_are_gone(tmp_path, capsys):
    keys = [k for k, _ in MODELS]
    first = [_run(tmp_path / f"s{i}", {"teacher": 80.0, "student_baseline": 30.0 + i, "student_final": 79.0 + i})
             for i in range(2)]
    out = tmp_path / "out"
    assert main([f"g (seed {i})={run}" for i, run in enumerate(first)] + ["--what", "grid", "--out", str(out)]) == 0
    for run in first:  # a new checkout: the earlier run folders are gone, their summary.json is committed
        for f in sorted(run.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
    third = _run(tmp_path / "s2", {"teacher": 80.0, "student_baseline": 32.0, "student_final": 84.0})
    again = _run(tmp_path / "s0b", dict(zip(keys, [80.0, 31.0, 40.0, 78.0])))
    capsys.readouterr()
    assert main(["--keep", str(out / "summary.json"), "--what", "grid", f"g (seed 2)={third}",
                 f"g (seed 0)={again}", "--out", str(out)]) == 0
    rows = json.loads((out / "summary.json").read_text())
    assert [r["label"] for r in rows] == ["g (seed 0)", "g (seed 1)", "g (seed 2)"]  # seed 0 replaced in place
    assert [r["student_final"]["map3d"] for r in rows] == [78.0, 80.0, 84.0]
    table = capsys.readouterr().out
    # mean ± sample std over the three: 80.67 ± 3.06; seed 0's width-only row is present, the others lack it
    assert "| g | 3 | 31.33 ± 0.58 | — | 80.67 ± 3.06 | 0.67 ± 3.06 | — |" in table


def test_keep_of_a_file_that_is_not_a_summary_is_one_line(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"not": "rows"}))
    assert main(["--keep", str(bad)]) == 2
    assert main(["--keep", str(tmp_path / "missing.json")]) == 2
    assert main([]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "not a scaling_table summary.json" in err[0] and "--keep" in err[1]
    assert "no runs" in err[2]
