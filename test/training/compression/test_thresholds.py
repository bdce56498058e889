"""Calibrated score thresholds (training/compression/stage_thresholds.py, export.score_thresholds: calibrate).

- pick_threshold / search_thresholds on hand-built cases with known answers (incl. the coupling through
  class-agnostic NMS); export.threshold_split max_mean_recall: allocate_budget against a hand-worked case and
  against brute force over every per-class share, search_mean_recall through the coupling;
- detection_diagnostics.match_frame's found_score (what the recall at a threshold reads) on a hand-built frame;
- the config: default 'fixed' keeps every stage hash of default.yaml (literal values from before the option
  existed), calibrate inserts the stage before export, a calibrate config without operating points keeps its
  thresholds / export hashes from before that option, bad values are one clear message;
- the stage itself on config/compress/smoke.yaml (and again with threshold_split max_mean_recall: within the total
  budget in the Pipeline, and a better mean val recall than the even split's) (--set export.score_thresholds=calibrate): the data stage's
  simulated frames, a stored final student (untrained, its class head opened so it boxes everywhere: many false
  positives to calibrate away), then the thresholds / export / report stages; the bundle loads, its Pipeline uses
  the thresholds, and the Pipeline's own false positives on the val frames agree with thresholds.json and the rule,
  for the shipped budget and for each further operating point (export.operating_points), which the report lists.
Budget: ~10 s.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clean_ros.cloud.kitti import Calibration, labels_from_lidar_boxes, parse_labels, format_labels
from clean_ros.types import Detections
from clean_ros.yaml_config import ConfigError, load_config
from training.compression.compress_config import CompressConfig
from training.compression.graph import CompressionGraph
from training.compression.stage_store import StageStore
from training.compression.stage_thresholds import (MAX_DP_STATES, ValScores, allocate_budget,
                                                   calibrated_score_thresholds, candidate_thresholds, fp_per_frame, pick_threshold, recall, search_mean_recall,
                                                   search_thresholds, threshold_allowing)
from training.detection_diagnostics import RECALL_IOUS, LabelledFrame, match_frame

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "config" / "compress"
CLASSES = ("Car", "Pedestrian", "Cyclist")
OTHER_BUDGETS = (4.0, 1.0)  # the fixture's export.operating_points, beside smoke.yaml's shipped budget 2.0

# default.yaml's stage hashes (no stage done yet) at commit 8d25fb5, before export.score_thresholds existed. A
# deliberate change of default.yaml or of a hashed config section changes them: regenerate them then, not for this.
DEFAULT_HASHES = {
    "data": "775cf16a14148038", "teacher": "433a03f0a267dd1c", "student_baseline": "d9a077087253d5b9",
    "importance": "8d3c9eae90de5393", "prune": "ede9c3f6a8aad54f", "finetune": "c80b5e3098433dd2",
    "baseline_width_only": "eadfaaecd0a5f019", "evaluate": "b20e8f68c2919d38", "efficiency": "e401eebdc03a429a",
    "export": "b536a5524e466ba1", "report": "8d4b301a91a9f4f8"}


def _hashes(cfg: CompressConfig, root: Path) -> dict[str, str]:
    graph = CompressionGraph(cfg, root, log=lambda line: None, progress=False)
    store = StageStore(root, log=lambda line: None)
    return {stage.name: store.hash_of(stage) for stage in graph.stages()}


def _before_thresholds(hashes: dict[str, str]) -> dict[str, str]:
    """The hashes of the stages the thresholds stage does not reach."""
    return {k: v for k, v in hashes.items() if k not in ("thresholds", "export", "report")}


# ------------------------------------------------------------------------------------------- the rule
def test_pick_threshold_known_answers():
    fps = np.array([0.9, 0.8, 0.8, 0.3, 0.2], np.float32)  # 2 frames
    # 1 per frame -> 2 may stay: the third-highest (0.8) must go, and its tie with it
    assert pick_threshold(fps, 2, 1.0, 0.05) == 0.801
    assert fp_per_frame(fps, 0.801, 2) == 0.5
    assert pick_threshold(fps, 2, 1.5, 0.05) == 0.301  # 3 may stay: 0.3 must go
    assert fp_per_frame(fps, 0.301, 2) == 1.5 and fp_per_frame(fps, 0.3, 2) == 2.0  # the lowest such grid value
    assert pick_threshold(fps, 2, 2.5, 0.05) == 0.05  # all 5 may stay: the floor
    assert pick_threshold(np.zeros(0, np.float32), 10, 0.1, 0.07) == 0.07
    assert pick_threshold(fps, 2, 0.4, 0.05) == 0.901  # floor(0.8) = 0 may stay
    # a float32 score just above its decimal: the threshold still lies above it in float32
    tricky = np.float32(0.123)
    chosen = pick_threshold(np.array([tricky]), 1, 0.5, 0.05)
    assert np.float32(chosen) > tricky and chosen == pytest.approx(0.124 if tricky >= 0.123 else 0.123)
    # a score of 1.0 cannot be thresholded away: 1.0, and fp_per_frame says the budget is not met
    assert pick_threshold(np.array([1.0, 0.5], np.float32), 1, 0.5, 0.05) == 1.0
    assert fp_per_frame(np.array([1.0, 0.5], np.float32), 1.0, 1) == 1.0
    assert recall(np.array([0.7, -np.inf, 0.2, 0.9]), 0.5) == 0.5 and recall(np.zeros(0), 0.5) is None


def test_search_follows_the_coupling_of_class_agnostic_nms():
    """A Car box scored 0.6 suppresses a Pedestrian false positive scored 0.5 while it is kept (Car threshold <=
    0.6). One pass with every class at the floor would leave Pedestrian at the floor and 2 of its false positives
    per frame; the rounds find 0.401."""
    calls = []

    def measure(thresholds):
        calls.append(list(thresholds))
        car, ped, cyc = thresholds
        car_fp = np.array([0.9, 0.6, 0.3], np.float32)
        ped_fp = np.array([0.4] + ([0.5] if car > 0.6 else []), np.float32)
        return ValScores(1, {"Car": car_fp[car_fp >= car], "Pedestrian": ped_fp[ped_fp >= ped],
                             "Cyclist": np.zeros(0, np.float32)}, {c: np.zeros(0) for c in CLASSES})

    chosen, at_floor, search = search_thresholds(measure, CLASSES, budget=1.0, floor=0.05)
    assert chosen == [0.601, 0.401, 0.05]
    assert pick_threshold(at_floor.false_positive_scores["Pedestrian"], 1, 1.0, 0.05) == 0.05  # the one-pass answer
    assert search == {"rounds": 2, "probes": 4, "converged": True}
    assert calls == [[0.05, 0.05, 0.05], [0.601, 0.05, 0.05], [0.601, 0.401, 0.05], [0.05, 0.401, 0.05]]


def _scores(frames: int, fp: dict, found: dict) -> ValScores:
    # found scores are detection scores (float32), as match_frame gives them
    return ValScores(frames, {c: np.asarray(fp.get(c, []), np.float32) for c in CLASSES},
                     {c: np.asarray(found.get(c, []), np.float32) for c in CLASSES})


def test_allocate_budget_known_answer():
    """One frame, 2 false positives in all. Car: 0 of its false positives keeps 1/3 of its objects, 1 keeps 2/3, 2
    keep all; Pedestrian: 0 keeps none, 1 keeps its one object; Cyclist: no object, one false positive. Best mean:
    Car 1 + Pedestrian 1 (2/3 + 1), Cyclist none of its false positives (it buys no recall). The even split (2/3 per
    class: 0 each) keeps only 1/3 of the cars and no pedestrian."""
    pool = _scores(1, {"Car": [0.9, 0.8], "Pedestrian": [0.6, 0.5], "Cyclist": [0.4]},
                   {"Car": [0.95, 0.85, 0.7], "Pedestrian": [0.55]})
    chosen = allocate_budget({c: pool for c in CLASSES}, CLASSES, 2.0, 0.05)
    assert chosen == [0.801, 0.501, 0.401]
    assert sum(fp_per_frame(pool.false_positive_scores[c], t, 1) for c, t in zip(CLASSES, chosen)) == 2.0
    even = [pick_threshold(pool.false_positive_scores[c], 1, 2.0 / 3, 0.05) for c in CLASSES]
    assert even == [0.901, 0.601, 0.401]
    # no false positive allowed: every class above its highest; a budget of 5 (all of them): Car at the floor, but
    # Pedestrian's second and Cyclist's false positive buy no recall, so they are not kept
    assert allocate_budget({c: pool for c in CLASSES}, CLASSES, 0.0, 0.05) == [0.901, 0.601, 0.401]
    assert allocate_budget({c: pool for c in CLASSES}, CLASSES, 5.0, 0.05) == [0.05, 0.501, 0.401]


def test_allocate_budget_keeps_within_bounds():
    """The known-answer pools with the budget of 2, each class held at or above a looser point's thresholds (a
    stricter operating point): Car may not go below 0.85, so its false positive at 0.8 is out of reach; the budget
    goes to Pedestrian (both of its false positives buy the same single object, so one)."""
    pool = _scores(1, {"Car": [0.9, 0.8], "Pedestrian": [0.6, 0.5], "Cyclist": [0.4]},
                   {"Car": [0.95, 0.85, 0.7], "Pedestrian": [0.55]})
    bounded = allocate_budget({c: pool for c in CLASSES}, CLASSES, 2.0, 0.05,
                              bounds=[(0.85, 1.0), (0.05, 1.0), (0.05, 1.0)])
    assert bounded == [0.85, 0.501, 0.401]  # Car's 0.85 keeps its 0.85 object; none of its false positives
    # a looser point: at most its stricter neighbour's thresholds (ties in recall and count go to the higher one)
    capped = allocate_budget({c: pool for c in CLASSES}, CLASSES, 2.0, 0.05,
                             bounds=[(0.05, 0.85), (0.05, 0.55), (0.05, 1.0)])
    assert capped == [0.85, 0.55, 0.401]
    # caps that no combination keeps within the budget (4 false positives at 0.3 against 2): the caps themselves
    assert allocate_budget({c: pool for c in CLASSES}, CLASSES, 2.0, 0.05,
                           bounds=[(0.05, 0.3), (0.05, 0.3), (0.05, 0.3)]) == [0.3, 0.3, 0.3]


def test_allocate_budget_matches_brute_force():
    """Random pools: the allocation's mean recall is the best over every combination of per-class shares, and it
    stays within the total budget."""
    rng = np.random.default_rng(7)
    for trial in range(12):
        frames = int(rng.integers(1, 4))
        pool = _scores(frames, {c: rng.random(int(rng.integers(0, 7))) for c in CLASSES},
                       {c: np.where(rng.random(n) < 0.2, -np.inf, rng.random(n)) for c in CLASSES
                        for n in [int(rng.integers(0 if c == "Cyclist" else 1, 6))]})
        budget = float(rng.integers(0, 12)) / frames / 2
        chosen = allocate_budget({c: pool for c in CLASSES}, CLASSES, budget, 0.05)
        allowed = int(np.floor(budget * frames + 1e-9))

        def mean_recall(ts):
            return np.mean([recall(pool.found_scores[c], t) or 0.0 for c, t in zip(CLASSES, ts)])

        def used(ts):
            return sum(int((pool.false_positive_scores[c] >= np.float32(t)).sum()) for c, t in zip(CLASSES, ts))

        options = [sorted({threshold_allowing(pool.false_positive_scores[c], k, 0.05) for k in range(allowed + 1)})
                   for c in CLASSES]
        best = max(mean_recall(ts) for ts in np.array(np.meshgrid(*options)).reshape(3, -1).T if used(ts) <= allowed)
        assert used(chosen) <= allowed, trial
        assert mean_recall(chosen) == pytest.approx(best), trial


def test_candidate_thresholds_are_threshold_allowing_of_every_count():
    rng = np.random.default_rng(3)
    for n in (0, 1, 5, 200):
        scores = np.concatenate([rng.random(n), [0.123, 0.5, 0.5, 0.05, 0.01]]).astype(np.float32)
        expected = sorted({threshold_allowing(scores, k, 0.05) for k in range(len(scores) + 1)})
        assert candidate_thresholds(scores, 0.05).tolist() == expected


def test_allocate_budget_beyond_the_exact_range_stays_within_budget():
    """A budget of 30,000 false positives (KITTI-sized val at a loose budget) is counted in units of
    ceil(30000 / MAX_DP_STATES): quick, within the budget, and at least as good as the even split."""
    rng = np.random.default_rng(11)
    pool = _scores(1, {c: rng.random(40_000) ** 2 for c in CLASSES},
                   {c: rng.random(5_000) ** (0.5 + i) for i, c in enumerate(CLASSES)})
    budget = 30_000.0
    assert budget > MAX_DP_STATES
    chosen = allocate_budget({c: pool for c in CLASSES}, CLASSES, budget, 0.05)
    used = sum(int((pool.false_positive_scores[c] >= np.float32(t)).sum()) for c, t in zip(CLASSES, chosen))
    assert used <= budget
    even = [pick_threshold(pool.false_positive_scores[c], 1, budget / 3, 0.05) for c in CLASSES]
    assert np.mean([recall(pool.found_scores[c], t) for c, t in zip(CLASSES, chosen)]) >= \
        np.mean([recall(pool.found_scores[c], t) for c, t in zip(CLASSES, even)]) - 1e-9


def test_search_mean_recall_follows_the_coupling():
    """The coupling case above, with objects to find. One pass at the floor would ship Car 0.601 (keeping both cars)
    and Pedestrian 0.401: 2 false positives (the Pedestrian one at 0.5 comes back once the Car box at 0.6 is gone),
    over the budget of 1. The rounds see it and give the false positive to the pedestrian (recall 1) instead."""
    def measure(thresholds):
        car, ped, cyc = thresholds
        car_fp = np.array([0.9, 0.6, 0.3], np.float32)
        ped_fp = np.array([0.4] + ([0.5] if car > 0.6 else []), np.float32)
        return ValScores(1, {"Car": car_fp[car_fp >= car], "Pedestrian": ped_fp[ped_fp >= ped],
                             "Cyclist": np.zeros(0, np.float32)},
                         {"Car": np.array([0.95, 0.65]), "Pedestrian": np.array([0.45]), "Cyclist": np.zeros(0)})

    first = allocate_budget({c: measure([0.05] * 3) for c in CLASSES}, CLASSES, 1.0, 0.05)
    assert first == [0.601, 0.401, 0.05]
    chosen, at_floor, search = search_mean_recall(measure, CLASSES, 1.0, 0.05)
    assert chosen == [0.901, 0.401, 0.05]
    assert search == {"rounds": 3, "probes": 6, "converged": True}
    shipped = measure(chosen)
    assert sum(fp_per_frame(shipped.false_positive_scores[c], t, 1) for c, t in zip(CLASSES, chosen)) == 1.0
    first_shipped = measure(first)
    assert sum(fp_per_frame(first_shipped.false_positive_scores[c], t, 1) for c, t in zip(CLASSES, first)) == 2.0


def _camera() -> Calibration:
    """Camera at the LiDAR origin looking along +x, f = 700 px, 1242 x 375 image."""
    v2c = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    p2 = np.array([[700.0, 0.0, 620.0, 0.0], [0.0, 700.0, 187.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    return Calibration(P2=p2, R0=np.eye(3), V2C=v2c)


def test_found_score_is_the_best_same_class_score_at_each_iou():
    calib = _camera()
    car = [10.0, 0.0, -1.0, 4.0, 2.0, 1.5, 0.0]
    other_car = [20.0, 4.0, -1.0, 4.0, 2.0, 1.5, 0.0]
    labels = parse_labels(format_labels(labels_from_lidar_boxes(np.array([car, other_car]), np.array(["Car", "Car"]),
                                                                None, calib)))
    shifted = [11.0, 0.0, -1.0, 4.0, 2.0, 1.5, 0.0]  # BEV IoU 3/5 = 0.6 with `car`
    far = [12.0, 0.0, -1.0, 4.0, 2.0, 1.5, 0.0]  # IoU 2/6 = 0.33: found at 0.25 only
    dets = Detections(np.array([car, shifted, far, car], np.float32), np.array([0.3, 0.6, 0.8, 0.95], np.float32),
                      np.array([1, 0, 0, 2]), CLASSES)  # the exact box is a Pedestrian / a Cyclist: not Car's
    match = match_frame(LabelledFrame("f", labels, calib), dets)
    assert RECALL_IOUS == (0.5, 0.25)
    assert match.found_score[0].tolist() == pytest.approx([0.6, 0.8])
    assert match.found_score[1].tolist() == [-np.inf, -np.inf]
    assert recall(match.found_score[:, 0], 0.6) == 0.5 and recall(match.found_score[:, 0], 0.601) == 0.0


# ------------------------------------------------------------------------------------------- config and graph
def test_default_config_stage_hashes_unchanged(tmp_path):
    cfg = load_config(CompressConfig, CONFIGS / "default.yaml")
    assert cfg.export.score_thresholds == "fixed"
    assert _hashes(cfg, tmp_path) == DEFAULT_HASHES
    # the calibration knobs do not reach any hash while the thresholds are fixed
    other = load_config(CompressConfig, CONFIGS / "default.yaml",
                        ["export.max_false_positives_per_frame=7", "export.calibration_min_threshold=0.2"])
    assert _hashes(other, tmp_path) == DEFAULT_HASHES


def test_calibrate_adds_the_stage_before_export(tmp_path):
    cfg = load_config(CompressConfig, CONFIGS / "default.yaml", ["export.score_thresholds=calibrate"])
    graph = CompressionGraph(cfg, tmp_path, log=lambda line: None, progress=False)
    stages = {s.name: s for s in graph.stages()}
    names = list(stages)
    assert names[-3:] == ["thresholds", "export", "report"]
    assert set(stages["thresholds"].deps) == {"data", "finetune"} and "thresholds" in stages["export"].deps
    hashes = _hashes(cfg, tmp_path)
    assert hashes["export"] != DEFAULT_HASHES["export"]
    assert {k: v for k, v in hashes.items() if k not in ("thresholds", "export", "report")} == \
        {k: v for k, v in DEFAULT_HASHES.items() if k not in ("export", "report")}
    release = load_config(CompressConfig, CONFIGS / "release.yaml")
    assert release.export.score_thresholds == "calibrate" and release.data.val_split != release.data.eval_split


def test_calibrate_hashes_unchanged_without_operating_points(tmp_path):
    # default.yaml + calibrate, thresholds / export hashes at commit facfccd, before export.operating_points existed
    cfg = load_config(CompressConfig, CONFIGS / "default.yaml", ["export.score_thresholds=calibrate"])
    hashes = _hashes(cfg, tmp_path)
    assert (hashes["thresholds"], hashes["export"]) == ("496de8caef395efa", "dd822714a2d989f4")
    with_points = _hashes(load_config(CompressConfig, CONFIGS / "default.yaml",
                                      ["export.score_thresholds=calibrate", "export.operating_points=[0.5,1]"]),
                          tmp_path)
    assert with_points["thresholds"] != hashes["thresholds"]
    assert _before_thresholds(with_points) == _before_thresholds(hashes)
    # export.threshold_split: `even` (the default) is the rule before the option; the other moves the stage's hash only
    even = _hashes(load_config(CompressConfig, CONFIGS / "default.yaml",
                               ["export.score_thresholds=calibrate", "export.threshold_split=even"]), tmp_path)
    assert even == hashes
    joint = _hashes(load_config(CompressConfig, CONFIGS / "default.yaml",
                                ["export.score_thresholds=calibrate", "export.threshold_split=max_mean_recall"]),
                    tmp_path)
    assert joint["thresholds"] != hashes["thresholds"]
    assert _before_thresholds(joint) == _before_thresholds(hashes)


@pytest.mark.parametrize("override, message", [
    ("export.score_thresholds=auto", "score_thresholds"),
    ("export.operating_points=[0.5,0]", "export.operating_points must be false positives per frame > 0"),
    ("export.operating_points=[0.5,0.5]", "each budget once"),
    ("export.operating_points=[2.0]", "not max_false_positives_per_frame (2) again"),
    ("export.max_false_positives_per_frame=0", "export.max_false_positives_per_frame must be > 0"),
    ("export.calibration_min_threshold=0", "export.calibration_min_threshold must be in (0, 1)"),
    ("export.threshold_split=greedy", "threshold_split"),
])
def test_bad_calibration_settings_are_one_clear_message(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(CompressConfig, CONFIGS / "smoke.yaml", [override])
    assert message in str(info.value) and "\n" not in str(info.value).strip()


def test_export_without_a_thresholds_result_says_so(tmp_path):
    with pytest.raises(ConfigError, match="thresholds.json: missing; export.score_thresholds is 'calibrate'"):
        calibrated_score_thresholds(tmp_path / "stages", CLASSES)


# ------------------------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A smoke run folder whose thresholds, export and report stages ran on a stored, boxing-everywhere student."""
    return _calibrated_run(tmp_path_factory, "even")


@pytest.fixture(scope="module")
def calibrated_joint(tmp_path_factory):
    """The same with export.threshold_split: max_mean_recall."""
    return _calibrated_run(tmp_path_factory, "max_mean_recall")


def _calibrated_run(tmp_path_factory, split: str):
    from clean_ros.models.detector import build_detector
    from training.compression.stored_models import save_model, with_iou_branch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("calibrate") / "run"
    cfg = load_config(CompressConfig, CONFIGS / "smoke.yaml", ["export.score_thresholds=calibrate",
                                                               f"export.operating_points={list(OTHER_BUDGETS)}",
                                                               f"export.threshold_split={split}"])
    graph = CompressionGraph(cfg, root, log=lambda line: None, progress=False)
    stages = {s.name: s for s in graph.stages()}
    lines: list[str] = []
    store = StageStore(root, log=lines.append)
    graph.run.log = lines.append
    store.run_all([stages["data"]])
    model_cfg = with_iou_branch(graph.run.train_config(cfg.student.config, 1, list(cfg.student.set)).model,
                                cfg.iou_refine.gate)
    torch.manual_seed(0)
    student = build_detector(model_cfg)
    with torch.no_grad():  # scores spread around 0.5 everywhere; the hard IoU gate lets every box through
        student.head.conv_cls.bias.zero_()
        student.head.conv_iou.bias.fill_(10.0)
    save_model(root / "stages" / "finetune", student, model_cfg, "detector")
    store.run_all([stages["thresholds"], stages["export"], stages["report"]])
    return root, graph, lines


def test_stage_writes_thresholds_that_meet_the_budget(calibrated):
    root, graph, lines = calibrated
    result = json.loads((root / "stages" / "thresholds" / "thresholds.json").read_text())
    assert result["split"] == "val" and result["frames"] == 2 and result["converged"]
    assert result["per_class_budget"] == pytest.approx(2.0 / 3)
    for name in CLASSES:
        entry = result["classes"][name]
        assert 0.05 < entry["threshold"] <= 1.0 and entry["budget_met"]
        assert entry["val_fp_per_frame"] <= 2.0 / 3
        assert entry["at_floor"]["val_fp_per_frame"] >= entry["val_fp_per_frame"]
        assert entry["val_objects"] > 0 and entry["val_recall_iou50"] is not None
    assert result["classes"]["Car"]["at_floor"]["val_fp_per_frame"] > 10  # there was something to calibrate away
    assert any("Car: threshold" in line for line in lines)


def _pipeline_false_positives(pipeline, graph) -> tuple[dict[str, np.ndarray], int]:
    dataset = graph.run.datasets.split("val", pipeline.detector_config)
    scores = {c: [] for c in CLASSES}
    for i in range(len(dataset)):
        sample = dataset[i]
        det = pipeline(sample.points).detections
        match = match_frame(LabelledFrame(sample.frame_id, sample.annotations, sample.calib), det)
        for c in CLASSES:
            scores[c].append(det.scores[match.false_positive & (match.detection_names == c)])
        assert np.all(det.scores >= np.asarray(pipeline.postprocess_settings.score_thresholds)[det.labels])
    return {c: np.concatenate(v) for c, v in scores.items()}, len(dataset)


def test_bundle_ships_the_thresholds_and_its_pipeline_uses_them(calibrated):
    from clean_ros.inference.bundle import load_bundle
    from clean_ros.inference.pipeline import Pipeline

    root, graph, _ = calibrated
    result = json.loads((root / "stages" / "thresholds" / "thresholds.json").read_text())
    chosen = [result["classes"][c]["threshold"] for c in CLASSES]
    manifest = json.loads((root / "bundle" / "manifest.json").read_text())
    assert manifest["postprocess"]["score_thresholds"] == chosen
    assert load_bundle(root / "bundle").postprocess.score_thresholds == chosen
    pipeline = Pipeline.from_bundle(root / "bundle", backend="torch")
    assert pipeline.postprocess_settings.score_thresholds == chosen
    # the Pipeline's own false positives on the val frames: what thresholds.json says was shipped
    shipped, frames = _pipeline_false_positives(pipeline, graph)
    for c in CLASSES:
        assert fp_per_frame(shipped[c], 0.0, frames) == pytest.approx(result["classes"][c]["val_fp_per_frame"])
    # the rule is tight: one grid step lower for a class (others as shipped) puts it over its budget
    for index, c in enumerate(CLASSES):
        lower = list(chosen)
        lower[index] = round(chosen[index] - 0.001, 6)
        pipeline.update_postprocess(score_thresholds=lower)
        below, _ = _pipeline_false_positives(pipeline, graph)
        assert fp_per_frame(below[c], 0.0, frames) > result["per_class_budget"], c
    pipeline.update_postprocess(score_thresholds=chosen)


def test_report_shows_the_thresholds(calibrated):
    root, _, _ = calibrated
    report = json.loads((root / "report.json").read_text())
    result = json.loads((root / "stages" / "thresholds" / "thresholds.json").read_text())
    assert report["score_thresholds"] == result
    table = (root / "report.md").read_text()
    assert "Score thresholds shipped in the bundle, calibrated on split `val` (2 frames)" in table
    for c in CLASSES:
        assert f"| {c} | {result['classes'][c]['threshold']:.3f} | " in table


def test_operating_points_keep_their_budgets_in_the_pipeline(calibrated):
    from clean_ros.inference.operating_points import select_operating_point
    from clean_ros.inference.pipeline import Pipeline

    root, graph, lines = calibrated
    result = json.loads((root / "stages" / "thresholds" / "thresholds.json").read_text())
    points = result["operating_points"]
    assert [p["max_false_positives_per_frame"] for p in points] == [1.0, 2.0, 4.0]  # every budget, lowest first
    assert [p["shipped"] for p in points] == [False, True, False]
    shipped = points[1]
    assert shipped["thresholds"] == [result["classes"][c]["threshold"] for c in CLASSES]
    # a tighter budget never keeps more: the search only raises thresholds from the floor until each class is within
    assert points[0]["val_fp_per_frame_total"] <= shipped["val_fp_per_frame_total"] <= points[2]["val_fp_per_frame_total"]
    pipeline = Pipeline.from_bundle(root / "bundle", backend="torch")
    # the bundle lists them (the node's operating_point, --operating-point), with what they keep on val
    listed = pipeline.bundle.operating_points
    assert [(p.budget, p.shipped) for p in listed] == [(1.0, False), (2.0, True), (4.0, False)]
    assert tuple(pipeline.postprocess_settings.score_thresholds) == listed[1].score_thresholds
    for point in points:
        chosen = select_operating_point(listed, point["max_false_positives_per_frame"])
        assert list(chosen.score_thresholds) == point["thresholds"]
        assert chosen.val_false_positives_per_frame == pytest.approx(point["val_fp_per_frame_total"], abs=1e-4)
        assert chosen.val_recall_iou50 == pytest.approx({c: point["classes"][c]["val_recall_iou50"] for c in CLASSES},
                                                        abs=1e-4)
        pipeline.update_postprocess(score_thresholds=list(chosen.score_thresholds))
        kept, frames = _pipeline_false_positives(pipeline, graph)
        for c in CLASSES:
            entry = point["classes"][c]
            assert entry["threshold"] == point["thresholds"][CLASSES.index(c)]
            # what the Pipeline keeps on val is what thresholds.json says, and within the point's per-class budget
            assert fp_per_frame(kept[c], 0.0, frames) == pytest.approx(entry["val_fp_per_frame"])
            assert entry["val_fp_per_frame"] <= point["max_false_positives_per_frame"] / len(CLASSES) + 1e-9
    assert any("operating point 4 false positives per frame" in line for line in lines)
    table = (root / "report.md").read_text()
    assert "Other operating points, by the same rule on the same val frames" in table
    for point in points:
        mark = " (shipped)" if point["shipped"] else ""
        assert f"| {point['max_false_positives_per_frame']:g}{mark} | [{', '.join(f'{t:g}' for t in point['thresholds'])}] |" in table


def test_max_mean_recall_split_keeps_the_total_budget_and_recalls_more(calibrated, calibrated_joint):
    """threshold_split max_mean_recall on the same student and val frames: the Pipeline's false positives of all
    classes together stay within each budget, and the mean per-class val recall is at least the even split's."""
    from clean_ros.inference.pipeline import Pipeline

    root, graph, lines = calibrated_joint
    result = json.loads((root / "stages" / "thresholds" / "thresholds.json").read_text())
    even = json.loads((calibrated[0] / "stages" / "thresholds" / "thresholds.json").read_text())
    assert result["threshold_split"] == "max_mean_recall" and result["per_class_budget"] is None
    assert result["budget_met"] and result["val_fp_per_frame_total"] <= 2.0 + 1e-9
    assert all(v["budget_met"] is None for v in result["classes"].values())
    pipeline = Pipeline.from_bundle(root / "bundle", backend="torch")
    for point in result["operating_points"]:
        pipeline.update_postprocess(score_thresholds=point["thresholds"])
        kept, frames = _pipeline_false_positives(pipeline, graph)
        total = sum(fp_per_frame(kept[c], 0.0, frames) for c in CLASSES)
        assert total == pytest.approx(point["val_fp_per_frame_total"])
        assert total <= point["max_false_positives_per_frame"] + 1e-9
        same = next(p for p in even["operating_points"]
                    if p["max_false_positives_per_frame"] == point["max_false_positives_per_frame"])

        def mean_recall(p):
            return np.mean([p["classes"][c]["val_recall_iou50"] for c in CLASSES])

        assert mean_recall(point) >= mean_recall(same) - 1e-9, point["max_false_positives_per_frame"]
    # nested: a looser point never raises a class's threshold (it keeps every box a stricter one keeps)
    points = result["operating_points"]
    for stricter, looser in zip(points, points[1:]):
        assert all(a >= b for a, b in zip(stricter["thresholds"], looser["thresholds"])), (stricter, looser)
    assert next(p for p in points if p["shipped"])["thresholds"] == [result["classes"][c]["threshold"] for c in CLASSES]
    table = (root / "report.md").read_text()
    assert "the thresholds with the best mean per-class recall within 2 false positives per frame in all" in table
    assert any("split for the best mean recall" in line for line in lines)
