"""Operating points in the bundle (clean_ros.inference.operating_points): the manifest field is checked on save and
on load, a point is picked by its budget, and infer / the real-data check set its thresholds with --operating-point.
The node's operating_point parameter is tested in test/clean_ros/ros/test_node_parameter_changes.py; that the
compress run's export writes the thresholds stage's points in test/training/compression/test_thresholds.py."""
from __future__ import annotations

import json
import shutil

import pytest

from clean_ros.inference.bundle import BundleError, load_bundle, save_bundle
from clean_ros.inference.operating_points import (OperatingPoint, parse_operating_points,
                                                  select_operating_point, thresholds_label)
from test_bundle import small_config, trained_like  # noqa: E402 - the bundle tests' tiny model

CLASSES = ("Car", "Pedestrian", "Cyclist")
POINTS = [
    {"max_false_positives_per_frame": 2.0, "score_thresholds": [0.3, 0.25, 0.2], "shipped": False},
    {"max_false_positives_per_frame": 0.6, "score_thresholds": [0.5, 0.45, 0.4], "shipped": False,
     "val_false_positives_per_frame": 0.58, "val_recall_iou50": {"Car": 0.8, "Pedestrian": 0.2, "Cyclist": 0.5}},
    {"max_false_positives_per_frame": 1.3, "score_thresholds": [0.4, 0.35, 0.3], "shipped": True},
]


def test_points_are_read_lowest_budget_first_with_their_val_figures():
    points = parse_operating_points(POINTS, CLASSES)
    assert [p.budget for p in points] == [0.6, 1.3, 2.0]
    assert points[0] == OperatingPoint(0.6, (0.5, 0.45, 0.4), False, 0.58,
                                       {"Car": 0.8, "Pedestrian": 0.2, "Cyclist": 0.5})
    assert points[1].shipped and not points[2].shipped
    assert parse_operating_points(None, CLASSES) == () == parse_operating_points([], CLASSES)
    # the manifest entry round-trips
    assert parse_operating_points([p.as_manifest() for p in points], CLASSES) == points


@pytest.mark.parametrize("entries, message", [
    ({"max_false_positives_per_frame": 1.0}, "field 'operating_points' must be a list"),
    ([[1.0, 0.3]], r"operating_points\[0\] must be an object"),
    ([{"max_false_positives_per_frame": 0, "score_thresholds": [0.3] * 3}], "must be a number > 0, got 0"),
    ([{"max_false_positives_per_frame": True, "score_thresholds": [0.3] * 3}], "must be a number > 0"),
    ([{"max_false_positives_per_frame": float("nan"), "score_thresholds": [0.3] * 3}], "must be a number > 0"),
    ([{"max_false_positives_per_frame": 1.0, "score_thresholds": [0.3, 0.3]}],
     r"'score_thresholds' must be 3 numbers in \[0, 1\] \(one per class: Car, Pedestrian, Cyclist\)"),
    ([{"max_false_positives_per_frame": 1.0, "score_thresholds": [0.3, 1.5, 0.3]}], "must be 3 numbers in"),
    ([{"max_false_positives_per_frame": 1.0, "score_thresholds": [0.3] * 3, "shipped": "yes"}],
     "'shipped' must be true or false"),
    ([{"max_false_positives_per_frame": 1.0, "score_thresholds": [0.3] * 3, "val_recall_iou50": {"Car": 2}}],
     "'val_recall_iou50' must map class names"),
    ([{"max_false_positives_per_frame": 1.0, "score_thresholds": [0.3] * 3},
      {"max_false_positives_per_frame": 1.0, "score_thresholds": [0.4] * 3}], "each budget once"),
    ([{"max_false_positives_per_frame": 1.0, "score_thresholds": [0.3] * 3, "shipped": True},
      {"max_false_positives_per_frame": 2.0, "score_thresholds": [0.4] * 3, "shipped": True}], "at most one"),
])
def test_a_bad_table_is_refused_with_the_entry_named(entries, message):
    with pytest.raises(ValueError, match=message):
        parse_operating_points(entries, CLASSES)


def test_a_point_is_picked_by_its_budget_or_the_budgets_are_listed():
    points = parse_operating_points(POINTS, CLASSES)
    assert select_operating_point(points, 0.6).score_thresholds == (0.5, 0.45, 0.4)
    assert select_operating_point(points, 0.6000000001).budget == 0.6  # a budget typed back from the README
    with pytest.raises(ValueError, match=r"^operating point 0.7: this bundle has 0.6, 1.3 \(shipped\), 2 false "):
        select_operating_point(points, 0.7)
    with pytest.raises(ValueError, match="this bundle lists no operating points"):
        select_operating_point((), 0.6)


def test_diagnostics_say_which_point_the_thresholds_in_force_are():
    points = parse_operating_points(POINTS, CLASSES)
    assert thresholds_label(points, [0.4, 0.35, 0.3]) == "1.3 (shipped)"
    assert thresholds_label(points, (0.5, 0.45, 0.4)) == "0.6"
    assert thresholds_label(points, [0.5, 0.45, 0.41]) == "custom"
    assert thresholds_label((), [0.4, 0.35, 0.3]) == "custom (the bundle lists no operating points)"


# --------------------------------------------------------------------------------------------- in a bundle
@pytest.fixture(scope="module")
def bundle_with_points(tmp_path_factory):
    cfg = small_config()
    return save_bundle(tmp_path_factory.mktemp("op") / "bundle", trained_like(cfg), cfg, operating_points=POINTS)


def test_the_bundle_lists_its_points(bundle_with_points):
    bundle = load_bundle(bundle_with_points)
    assert [(p.budget, p.shipped) for p in bundle.operating_points] == [(0.6, False), (1.3, True), (2.0, False)]
    manifest = json.loads((bundle_with_points / "manifest.json").read_text())
    assert [e["max_false_positives_per_frame"] for e in manifest["operating_points"]] == [0.6, 1.3, 2.0]


def test_a_bundle_without_points_lists_none(tmp_path):
    cfg = small_config()
    assert load_bundle(save_bundle(tmp_path / "b", trained_like(cfg), cfg, export_onnx=False)).operating_points == ()


def test_saving_a_bad_table_writes_nothing(tmp_path):
    cfg = small_config()
    bad = [{"max_false_positives_per_frame": 1.0, "score_thresholds": [0.3]}]
    with pytest.raises(BundleError, match=r"operating_points\[0\]: 'score_thresholds' must be 3 numbers"):
        save_bundle(tmp_path / "b", trained_like(cfg), cfg, operating_points=bad)
    assert not any(tmp_path.iterdir())


def test_loading_a_bundle_with_a_bad_table_names_the_field(bundle_with_points, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(bundle_with_points, path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["operating_points"][0]["score_thresholds"] = [0.3, -0.1, 0.3]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest.json: operating_points\[0\]: 'score_thresholds' must be"):
        load_bundle(path)


# --------------------------------------------------------------------------------------------- the tools
def _scan(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(1, 12, 800), rng.uniform(-6, 6, 800), rng.uniform(-2, 0.5, 800),
                              rng.uniform(0, 1, 800)]).astype(np.float32)
    path = tmp_path / "000000.bin"
    points.tofile(path)
    return path


def test_infer_sets_the_operating_points_thresholds(bundle_with_points, tmp_path, capsys, monkeypatch):
    from clean_ros.inference.pipeline import Pipeline
    from clean_ros.tools import infer

    seen = []
    original = Pipeline.update_postprocess

    def record(self, **changes):
        original(self, **changes)
        seen.append(list(self.postprocess_settings.score_thresholds))

    monkeypatch.setattr(Pipeline, "update_postprocess", record)
    scan = _scan(tmp_path)
    assert infer.main(["--bundle", str(bundle_with_points), "--backend", "torch", "--operating-point", "0.6",
                       str(scan)]) == 0
    out = capsys.readouterr().out
    assert "operating point 0.6 false positives per frame on val: score thresholds Car 0.5, Pedestrian 0.45, " \
           "Cyclist 0.4" in out
    assert seen == [[0.5, 0.45, 0.4]]
    # a budget the bundle does not have: one line, exit 2, the budgets it has named
    assert infer.main(["--bundle", str(bundle_with_points), "--operating-point", "0.7", str(scan)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: operating point 0.7: this bundle has 0.6, 1.3 (shipped), 2 ") and err.count("\n") == 1
    # one or the other
    with pytest.raises(SystemExit) as stop:
        infer.main(["--bundle", str(bundle_with_points), "--operating-point", "0.6", "--score-threshold", "0.3",
                    str(scan)])
    assert stop.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
