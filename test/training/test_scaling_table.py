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
    assert [r["training_frames"] for r in rows] == ["400", "1600"]
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
