"""clean_ros.yaml_config: YAML + _base_ inheritance + --set overrides, strict keys, type checks, round trip."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from clean_ros.yaml_config import ConfigError, apply_overrides, load_config, read_yaml, save_yaml, to_dict
from clean_ros.models.detector_config import DetectorConfig, load_detector_config
from training.config_paths import find_config


@dataclass
class Inner:
    width: int = 4
    ratio: float = 0.5
    tags: list[str] = field(default_factory=list)


@dataclass
class Outer:
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    items: list[Inner] = field(default_factory=list)
    maybe: Optional[int] = None


def _write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_generic_tree_with_overrides_and_defaults(tmp_path):
    path = _write(tmp_path / "c.yaml", {"name": "n", "inner": {"width": 8}, "items": [{"width": 1}, {"ratio": 2}]})
    cfg = load_config(Outer, path, ["inner.ratio=0.25", "flag=true", "inner.tags=[p, q]", "items.1.width=7",
                                    "maybe=3", "mode=b"])
    assert cfg == Outer(name="n", mode="b", flag=True, inner=Inner(8, 0.25, ["p", "q"]),
                        items=[Inner(1, 0.5, []), Inner(7, 2.0, [])], maybe=3)
    assert isinstance(cfg.items[1].ratio, float)  # int 2 in YAML becomes the declared float


def test_unknown_key_is_named_with_allowed_keys(tmp_path):
    path = _write(tmp_path / "c.yaml", {"inner": {"widht": 3}})
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    message = str(err.value)
    assert "'widht'" in message and "inner" in message and "width, ratio, tags" in message and str(path) in message
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load_config(Outer, path=None, data={}, overrides=["nope=1"])


@pytest.mark.parametrize("override, fragment", [
    ("inner.width=abc", "inner.width: expected an integer"),
    ("inner.width=1.5", "expected an integer"),
    ("flag=3", "flag: expected true/false"),
    ("mode=c", "'c' is not one of 'a', 'b'"),
    ("inner.tags=5", "inner.tags: expected a list"),
    ("inner=3", "inner: expected a mapping"),
    ("items.4.width=1", "index 4 out of range"),
    ("novalue", "expected KEY.PATH=VALUE"),
])
def test_type_errors_are_clear(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_config(Outer, data={"items": [{}]}, overrides=[override])


def test_base_inheritance_relative_to_file_and_nested(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "base.yaml", {"name": "base", "inner": {"width": 2, "ratio": 0.1}})
    _write(tmp_path / "sub" / "mid.yaml", {"_base_": "../base.yaml", "inner": {"width": 3}})
    _write(tmp_path / "inner_only.yaml", {"width": 9, "tags": ["t"]})
    child = _write(tmp_path / "sub" / "child.yaml", {"_base_": "mid.yaml", "flag": True,
                                                      "items": [{"_base_": "../inner_only.yaml", "ratio": 4}]})
    cfg = load_config(Outer, child)
    assert cfg.name == "base" and cfg.flag and cfg.inner == Inner(3, 0.1, [])
    assert cfg.items == [Inner(9, 4.0, ["t"])]


def test_circular_base_and_bad_yaml_are_reported(tmp_path):
    _write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    _write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="circular"):
        read_yaml(tmp_path / "a.yaml")
    bad = _write(tmp_path / "bad.yaml", "name: x\ninner: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        read_yaml(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_yaml(tmp_path / "missing.yaml")


def test_apply_overrides_does_not_mutate_input():
    raw = {"inner": {"width": 1}}
    out = apply_overrides(raw, ["inner.width=2", "a.b.c=[1, 2]"])
    assert raw == {"inner": {"width": 1}} and out == {"inner": {"width": 2}, "a": {"b": {"c": [1, 2]}}}


@pytest.mark.parametrize("name", ["pointpillars", "pointpillars_tiny", "centerpoint_pillar", "centerpoint_pillar_tiny"])
def test_project_configs_round_trip(tmp_path, name):
    cfg = load_detector_config(find_config(name))
    saved = save_yaml(cfg, tmp_path / "resolved" / "config.yaml")
    assert not list(saved.parent.glob("*.tmp"))
    again = load_detector_config(saved)
    assert again == cfg and to_dict(again) == to_dict(cfg)
    assert cfg.class_names == ["Car", "Pedestrian", "Cyclist"]


def test_kitti_pointpillars_values_and_tiny_inheritance():
    full = load_detector_config(find_config("pointpillars"))
    assert full.point_cloud_range == [0.0, -39.68, -3.0, 69.12, 39.68, 1.0] and full.grid_size == (432, 496, 1)
    assert full.bev_backbone.num_filters == [64, 128, 256] and full.bev_backbone.out_channels == 384
    assert full.feature_map_size == (248, 216)
    car, ped, cyc = full.head.anchors
    assert (car.size, car.bottom_z, car.matched_threshold, car.unmatched_threshold) == ([3.9, 1.6, 1.56], -1.78, 0.6, 0.45)
    assert (ped.size, cyc.size, ped.matched_threshold, cyc.unmatched_threshold) == ([0.8, 0.6, 1.73], [1.76, 0.6, 1.73], 0.5, 0.35)
    tiny = load_detector_config(find_config("pointpillars_tiny"))
    assert tiny.grid_size == (160, 160, 1) and [a.name for a in tiny.head.anchors] == ["Car", "Pedestrian", "Cyclist"]
    assert tiny.head.loss == full.head.loss  # inherited from the base file
    center = load_detector_config(find_config("centerpoint_pillar_tiny"))
    assert center.head.type == "center" and center.voxel_size == tiny.voxel_size


def test_detector_config_validation_messages():
    path = find_config("pointpillars_tiny")
    with pytest.raises(ConfigError, match=r"layer_widths\[1\] needs 3 widths"):
        load_detector_config(path, ["bev_backbone.layer_widths=[[8, 8], [8, 8], [8, 8, 8]]"])
    with pytest.raises(ConfigError, match="this model has no IoU branch"):
        load_detector_config(path, ["postprocess.iou_gate.mode=hard"])
    with pytest.raises(ConfigError, match="score_thresholds needs 3 values"):
        load_detector_config(path, ["postprocess.score_thresholds=[0.1]"])
    with pytest.raises(ConfigError, match="not divisible by the backbone stride"):
        load_detector_config(path, ["point_cloud_range=[0.0, -25.6, -3.0, 48.0, 25.6, 1.0]"])
    with pytest.raises(ConfigError, match="unknown key 'shared_width' in HeadConfig"):
        load_detector_config(path, ["head.shared_width=3"])
    # num_filters is derived from explicit per-layer widths (a pruned network's config)
    cfg = load_detector_config(path, ["bev_backbone.layer_widths=[[5, 7], [9, 3, 11], [13, 6, 4]]"])
    assert cfg.bev_backbone.num_filters == [7, 11, 4]
    assert isinstance(cfg, DetectorConfig)
