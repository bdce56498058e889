"""training/results.py and training/results_table.py: aggregation of report.json trees into the results table (means,
sample stds, the "no difference" rule, missing rows / seeds), the variant run folders (symlinks to the main run's
shared stages, skipped by the stage store, never written), the commands it would run, its errors.
No test runs compress."""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

from clean_ros.yaml_config import load_config
from training import results, results_table
from training.compression.compress_config import CompressConfig
from training.compression.stage_store import Stage, StageStore, atomic_write_json, config_hash

REPO = Path(__file__).resolve().parents[2]
RESULTS_YAML = REPO / "config" / "compress" / "results.yaml"
MAIN_KEYS = ["teacher", "student_baseline", "baseline_width_only", "student_final", "student_pruned",
             "student_final_soft_gate", "baseline_no_cakd", "baseline_no_label_assign", "baseline_sparsekd",
             "baseline_pointdistiller", "baseline_logit_kd", "baseline_feature_kd"]


def _model(map_: float, params: int = 1000, gflops: float = 1.0, p50: float = 10.0) -> dict:
    ap = {"Car": map_ + 3.0, "Pedestrian": map_ - 3.0, "Cyclist": map_}
    return {"ap3d_r40_moderate": ap, "map3d_r40_moderate": map_, "params": params, "gflops": gflops,
            "latency_ms": {"p50": p50, "p95": p50 * 1.2}}


def _report(models: dict, commit: str = "abc1234", load=(0.5, 0.7)) -> dict:
    return {"models": models, "skipped": {}, "stage_seconds": {}, "commit": commit, "name": "compress_results",
            "machine": {"platform": "Linux-test", "cpu_count": 2, "torch": "2.x", "threads": 1,
                        "load_average_before": load[0], "load_average": load[1]},
            "evaluation": {"split": "holdout", "frames": {k: 300 for k in models}}}


def _write(folder: Path, report: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report))


# mAP of each main-run model per seed; CLEAN final clearly best, teacher 0.5 above it
MAPS = {
    "teacher": [61.0, 62.0, 63.0],
    "student_baseline": [50.0, 52.0, 51.0],
    "baseline_width_only": [45.0, 47.0, 46.0],
    "student_final": [60.5, 61.5, 62.5],
    "student_pruned": [60.0, 61.0, 62.2],
    "student_final_soft_gate": [60.4, 61.2, 62.0],
    "baseline_no_cakd": [55.0, 56.0, 57.0],
    "baseline_no_label_assign": [54.0, 55.0, 53.0],
    "baseline_sparsekd": [58.0, 59.0, 60.0],
    "baseline_pointdistiller": [52.0, 53.0, 51.0],
    "baseline_logit_kd": [56.0, 55.0, 57.0],
    "baseline_feature_kd": [57.0, 56.0, 55.0],
}
PARAMS = {"teacher": 2_000_000, "student_baseline": 430_000}


def _tree(out: Path, seeds=(0, 1, 2), drop: dict | None = None, variant_seeds=(0, 1, 2)) -> None:
    """Synthetic runs: main runs per seed (minus `drop` {seed: [keys]}), l1 variants for variant_seeds."""
    drop = drop or {}
    for i, seed in enumerate(seeds):
        models = {key: _model(values[i], PARAMS.get(key, 200_000 + 1000 * seed), 0.5 + 0.1 * seed,
                              100.0 if key == "teacher" else 20.0 + seed)
                  for key, values in MAPS.items() if key not in drop.get(seed, [])}
        _write(out / f"seed_{seed}", _report(models, commit=f"c{seed}"))
    for seed in variant_seeds:
        _write(out / f"seed_{seed}_l1", _report({"teacher": _model(MAPS["teacher"][seed]),
                                                 "student_final": _model(58.0 + seed)}))


def test_aggregation_means_and_sample_stds(tmp_path):
    _tree(tmp_path)
    reports = results_table.find_reports(tmp_path)
    assert sorted(reports, key=str) == [None, "l1"] and sorted(reports[None]) == [0, 1, 2]
    rows = {row.spec.row: row for row in results_table.aggregate(reports)}
    assert "unmasked" not in rows  # no variant run of it: no row
    for spec in results_table.ROWS:
        if spec.variant is not None:
            continue
        row, values = rows[spec.row], MAPS[spec.key]
        assert row.seeds == [0, 1, 2]
        assert row.map.mean == pytest.approx(statistics.mean(values))
        assert row.map.std == pytest.approx(statistics.stdev(values))  # sample std (n - 1)
        assert row.ap["Car"].mean == pytest.approx(statistics.mean(values) + 3.0)
        assert row.ap["Pedestrian"].std == pytest.approx(statistics.stdev(values))
    final = rows[results_table.CLEAN]
    assert final.params.mean == pytest.approx(201_000) and final.gflops.mean == pytest.approx(0.6)
    assert final.latency_p50.mean == pytest.approx(21.0)
    assert rows["teacher"].latency_p50.mean == pytest.approx(100.0)
    l1 = rows["l1"]
    assert l1.spec.key == "student_final" and l1.map.mean == pytest.approx(59.0)
    assert l1.map.std == pytest.approx(1.0)
    # rows come in the table's order
    order = [spec.row for spec in results_table.ROWS]
    got = [row.spec.row for row in results_table.aggregate(reports)]
    assert got == [name for name in order if name in got]


def test_no_difference_rule():
    clean = results_table.Stat([60.0, 61.0, 62.0])  # std 1.0
    assert results_table.versus(results_table.Stat([59.5, 60.5, 61.5]), clean) == "no difference"  # |-0.5| <= 1
    assert results_table.versus(results_table.Stat([57.0, 58.0, 59.0]), clean) == "-3.00"
    wide = results_table.Stat([50.0, 60.0, 70.0])  # std 10: the larger std decides
    assert results_table.versus(wide, clean) == "no difference"
    assert results_table.versus(results_table.Stat([65.0, 66.0, 67.0]), clean) == "+5.00"
    # fewer seeds: the rule still applies with 2, is flagged; with 1 there is no spread
    assert results_table.versus(results_table.Stat([55.0, 56.0]), clean) == "-5.50 (n<3 seeds)"
    assert results_table.versus(results_table.Stat([60.9, 61.1]), clean) == "no difference (n<3 seeds)"
    assert results_table.versus(results_table.Stat([61.0]), clean) == "+0.00 (n<3 seeds)"
    assert results_table.fmt_stat(results_table.Stat([1.0, 2.0, 3.0])) == "2.00 ± 1.00"
    assert results_table.fmt_stat(results_table.Stat([4.0])) == "4.00"
    assert results_table.Stat([4.0]).std is None


def test_table_with_missing_rows_and_seeds(tmp_path):
    out, table = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    # seed 2 has no SparseKD row; the l1 variant only ran for seeds 0 and 1; nobody ran feature KD
    drop = {seed: ["baseline_feature_kd"] for seed in range(3)}
    drop[2] = ["baseline_feature_kd", "baseline_sparsekd"]
    _tree(out, drop=drop, variant_seeds=(0, 1))
    code = results.main(["--only-table", "--out", str(out), "--table", str(table)])
    assert code == 0
    text = table.read_text()
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| 2 of 3 |" in lines["SparseKD"] and "| 2 of 3 |" in lines["CLEAN, L1-norm pruning"]
    assert "| 3 |" in lines["CLEAN final"]
    # CLEAN final row: means ± stds, the reference column
    assert "61.50 ± 1.00" in lines["CLEAN final"] and lines["CLEAN final"].endswith("| — |")
    assert "201,000" in lines["CLEAN final"] and "| 0.600 | 21.0 |" in lines["CLEAN final"]
    # SparseKD on seeds 0, 1: 58.5 ± 0.71 vs 61.5 ± 1.0 -> -3.00, flagged
    assert "58.50 ± 0.71" in lines["SparseKD"] and lines["SparseKD"].endswith("| -3.00 (n<3 seeds) |")
    # the soft gate: 61.2 ± 0.8 vs 61.5 ± 1.0 -> no difference
    assert lines["CLEAN, soft gate"].endswith("| no difference |")
    assert "feature KD" not in lines and "Not measured yet (no finished run has them): CLEAN, unmasked " \
        "importance, feature KD." in text
    # goals computed from the rows: a method is missing -> not determined; the teacher gap is 0.5
    assert "beats every other method at the same size (mean over seeds): **not determined**" in text
    assert "not measured: feature KD" in text
    assert "within 1 mAP of the teacher: **met** (teacher 62.00, final 61.50, gap +0.50)" in text
    assert results_table.LARGER_SETTING not in text  # the pointer to the larger setting only follows a miss
    assert "final mAP ≥ same-size no-KD student + 2: **met**" in text
    assert "≤ 25% of the teacher's params: **met** (10.1%)" in text
    assert "≥ 3× faster than the teacher (latency p50, same run): **met** (4.76×)" in text
    # header: command, commits, split and frames, seeds, machine and load per run
    # the command that makes these runs: the seeds and variants found (no unmasked run here)
    assert f"`python training/results.py --seeds 0 1 2 --variants l1 --out {out}`" in text
    assert "`c0`, `c1`, `c2`" in text and "seeds 0, 1, 2" in text
    assert "Reported split `holdout` (300 frames" in text
    assert "seed_1_l1: Linux-test, 2 CPUs, torch 2.x, 1 thread(s), load 0.5 / 0.7" in text
    assert not list(table.parent.glob(".*.tmp"))  # written atomically, no temp file left


def test_goals_met_and_not_met(tmp_path):
    _tree(tmp_path)
    rows = results_table.aggregate(results_table.find_reports(tmp_path))
    text = "\n".join(results_table.goals(rows))
    assert "(mean over seeds): **met**" in text
    # beyond the spread: every method (SparseKD, the closest: 59.0 ± 1.0 vs 61.5 ± 1.0)
    assert "Beyond the spread (difference > the larger std): no-KD student, pruned widths (width-only), SparseKD" in text
    # a method that beats CLEAN on the mean
    by_row = {row.spec.row: row for row in rows}
    by_row["logit_kd"].map = results_table.Stat([70.0, 71.0, 72.0])
    text = "\n".join(results_table.goals(list(by_row.values())))
    assert "**not met**" in text and "not beaten: logit KD (71.00)" in text
    assert results_table.goals([r for r in rows if r.spec.row != results_table.CLEAN]) == \
        ["- Not measured: no CLEAN final row yet."]


def _finished_stage(folder: Path, digest: str) -> None:
    atomic_write_json(folder / "done.json", {"stage": folder.name, "hash": digest, "run_id": f"id-{folder.name}",
                                             "seconds": 1.0, "summary": {}})
    (folder / "payload.txt").write_text("main run output")


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_prepare_variant_creates_only_the_links(tmp_path):
    out = tmp_path / "runs"
    main_stages = out / "seed_0" / "stages"
    for name in results.SHARED_STAGES:
        (main_stages / name).mkdir(parents=True)
        _finished_stage(main_stages / name, "h")
    (main_stages / "finetune").mkdir()  # not shared
    before = _snapshot(out / "seed_0")
    links = results.prepare_variant(out, 0, "l1")
    variant = out / "seed_0_l1"
    assert sorted(str(p.relative_to(variant)) for p in variant.rglob("*")) == \
        ["stages", *[f"stages/{name}" for name in sorted(results.SHARED_STAGES)]]
    for name, link in zip(results.SHARED_STAGES, links):
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))  # relative: the tree may move
        assert link.resolve() == (main_stages / name).resolve()
    assert _snapshot(out / "seed_0") == before
    assert results.prepare_variant(out, 0, "l1") == links  # again: kept as they are
    # a real folder in place of a link is not the main run's: refused, nothing else created
    (out / "seed_1" / "stages").mkdir(parents=True)
    for name in results.SHARED_STAGES:
        (out / "seed_1" / "stages" / name).mkdir()
        _finished_stage(out / "seed_1" / "stages" / name, "h")
    (out / "seed_1_l1" / "stages" / "teacher").mkdir(parents=True)
    with pytest.raises(results.ResultsError, match="is not a link"):
        results.prepare_variant(out, 1, "l1")
    assert sorted(p.name for p in (out / "seed_1_l1" / "stages").iterdir()) == ["teacher"]
    # the main run has not finished a shared stage yet: refused before anything is created
    (out / "seed_2" / "stages" / "data").mkdir(parents=True)
    with pytest.raises(results.ResultsError, match="has not finished stage 'data'"):
        results.prepare_variant(out, 2, "unmasked")
    assert not (out / "seed_2_unmasked").exists()


def test_stage_store_skips_a_linked_stage_and_never_writes_into_it(tmp_path):
    out = tmp_path / "runs"
    data = Stage("data", "data", lambda folder: pytest.fail("a linked, finished stage must not run"), {"x": 1})
    teacher = Stage("teacher", "teacher", lambda folder: pytest.fail("must not run"), {"y": 2}, ("data",))
    main_store = StageStore(out / "seed_0", log=lambda _: None)
    for stage in (data, teacher):
        folder = main_store.stage_dir(stage.name)
        folder.mkdir(parents=True)
        _finished_stage(folder, main_store.hash_of(stage))
    (out / "seed_0" / "stages" / "student_baseline").mkdir()
    _finished_stage(out / "seed_0" / "stages" / "student_baseline", "h")
    before = _snapshot(out / "seed_0")
    results.prepare_variant(out, 0, "l1")
    store = StageStore(out / "seed_0_l1", log=lambda _: None)
    store.run_all([data, teacher])  # same config -> same hash (the deps' run_ids come through the links)
    assert _snapshot(out / "seed_0") == before
    # a stage whose config differs in the variant re-runs in a folder of its own: the link is dropped, the main
    # run's stage is never wiped or written
    changed = Stage("teacher", "teacher", lambda folder: {}, {"y": 3}, ("data",))
    StageStore(out / "seed_0_l1", log=lambda _: None).run_all([changed])
    variant_teacher = out / "seed_0_l1" / "stages" / "teacher"
    assert not variant_teacher.is_symlink() and (variant_teacher / "done.json").is_file()
    assert _snapshot(out / "seed_0") == before


def test_results_config_rows_and_shared_stage_hashes():
    """The config produces every main-run row key, and a variant's shared stages hash like the main run's."""
    from training.compression.graph import CompressionGraph

    main_cfg = load_config(CompressConfig, RESULTS_YAML, ["training.seed=1"])
    main = CompressionGraph(main_cfg, Path("unused"), log=lambda _: None, progress=False)
    assert set(main.model_refs()) == set(MAIN_KEYS)
    assert {spec.key for spec in results_table.ROWS if spec.variant is None} == set(MAIN_KEYS)
    baselines = {b.name: b for b in main_cfg.baselines}
    for name in ("no_cakd", "no_label_assign", "sparsekd", "logit_kd", "feature_kd", "pointdistiller"):
        b = baselines[name]
        assert (b.architecture, b.init, b.iou_gate, main.baseline_epochs(b)) == ("pruned", "pruned", True,
                                                                                 main_cfg.finetune.epochs), name
    assert baselines["width_only"].method == "none" and main.baseline_epochs(baselines["width_only"]) == \
        main_cfg.student.epochs + main_cfg.finetune.epochs
    main_stages = {s.name: s for s in main.stages()}
    for variant in results.VARIANTS:
        cmd = results.compress_command(RESULTS_YAML, Path("runs/results"), 1, variant)
        overrides = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--set"]
        cfg = load_config(CompressConfig, RESULTS_YAML, overrides)
        assert cfg.prune.criterion == variant and cfg.baselines == [] and not cfg.export.enabled
        stages = {s.name: s for s in CompressionGraph(cfg, Path("unused"), log=lambda _: None,
                                                      progress=False).stages()}
        for name in results.SHARED_STAGES:
            assert stages[name].deps == main_stages[name].deps
            assert config_hash(stages[name].config) == config_hash(main_stages[name].config), (variant, name)
        assert config_hash(stages["importance"].config) != config_hash(main_stages["importance"].config)


def test_dry_run_prints_the_commands_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "runs"
    code = results.main(["--dry-run", "--seeds", "0", "3", "--variants", "l1", "--out", str(out),
                         "--set", "student.epochs=2"])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    commands = [line for line in printed if not line.startswith("#")]
    assert len(commands) == 4
    assert commands[0].endswith(f"--config {RESULTS_YAML} --out {out}/seed_0 --set training.seed=0 "
                                "--set student.epochs=2")
    assert f"--out {out}/seed_3 --set training.seed=3" in commands[1]
    assert commands[2].endswith(f"--out {out}/seed_0_l1 --set training.seed=0 --set student.epochs=2 "
                                "--set prune.criterion=l1 --set 'baselines=[]' --set export.enabled=false")
    assert "training/compress.py" in commands[3] and "seed_3_l1" in commands[3]
    assert f"# link {out}/seed_0_l1/stages/teacher -> {out}/seed_0/stages/teacher" in printed
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--config", "no/such.yaml"], "error: no/such.yaml: config file not found"),
    (["--variants", "l2"], "error: --variants l2: unknown variant; known: unmasked, l1"),
    (["--seeds", "1", "1"], "error: --seeds must be distinct non-negative integers, got [1, 1]"),
])
def test_mistakes_exit_2_with_one_line(argv, message, tmp_path, capsys):
    assert results.main([*argv, "--dry-run", "--out", str(tmp_path / "runs")]) == 2
    captured = capsys.readouterr()
    assert captured.err == message + "\n" and captured.out == ""


def test_only_table_without_runs_is_an_error(tmp_path, capsys):
    assert results.main(["--only-table", "--out", str(tmp_path / "none"), "--table", str(tmp_path / "T.md")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert not (tmp_path / "T.md").exists()


def test_results_config_reuses_the_default_runs_training_stages():
    """results.yaml only adds rows to default.yaml: its compare_soft (an evaluation row) must not change the hash of
    any training stage, or the table would re-train what the default runs already trained."""
    from training.compression.graph import CompressionGraph

    default_yaml = RESULTS_YAML.parent / "default.yaml"
    graphs = [CompressionGraph(load_config(CompressConfig, path, ["training.seed=1"]), Path("unused"),
                               log=lambda _: None, progress=False) for path in (default_yaml, RESULTS_YAML)]
    default, full = ({s.name: s for s in g.stages()} for g in graphs)
    assert graphs[1].cfg.iou_refine.compare_soft and not graphs[0].cfg.iou_refine.compare_soft
    for name in ("data", "teacher", "student_baseline", "importance", "prune", "finetune",
                 "baseline_width_only"):
        assert config_hash(full[name].config) == config_hash(default[name].config), name
    assert config_hash(full["evaluate"].config) == config_hash(default["evaluate"].config)


def test_evaluation_on_val_reruns_only_the_evaluate_stage():
    """evaluation.split=val (tuning runs) scores the val split and changes no other stage's hash; the default adds
    nothing to the evaluate stage's hash (runs from before the option keep theirs)."""
    from training.compression.graph import CompressionGraph

    default_yaml = RESULTS_YAML.parent / "default.yaml"
    graphs = [CompressionGraph(load_config(CompressConfig, default_yaml, ["training.seed=1", *extra]), Path("unused"),
                               log=lambda _: None, progress=False) for extra in ([], ["evaluation.split=val"])]
    report, val = ({s.name: s for s in g.stages()} for g in graphs)
    assert graphs[0].cfg.evaluated_split == "holdout" and graphs[1].cfg.evaluated_split == "val"
    for name in report:
        same = config_hash(report[name].config) == config_hash(val[name].config)
        assert same == (name != "evaluate"), name
    assert "split" not in report["evaluate"].config["evaluation"]
    with pytest.raises(ValueError, match="evaluation.split must be"):
        load_config(CompressConfig, default_yaml, ["evaluation.split=test"])


def test_a_missed_teacher_gap_points_to_the_larger_setting(tmp_path, monkeypatch):
    out, table = tmp_path / "runs", tmp_path / "RESULTS.md"
    monkeypatch.setitem(MAPS, "teacher", [71.0, 72.0, 73.0])  # 10.5 above CLEAN final
    _tree(out)
    assert results.main(["--only-table", "--out", str(out), "--table", str(table)]) == 0
    text = table.read_text()
    assert "within 1 mAP of the teacher: **not met** (teacher 72.00, final 61.50, gap +10.50)" in text
    assert f"At this table's scale only; with 4x the training frames and 0.32 m cells: {results_table.LARGER_SETTING}." \
        in text
