"""Simulator realistic preset: presets, car families, pedestrians, roadside clutter, porous vegetation, sensor effects,
all-around labels (label_all) and the data option that trains on them. The default preset must not change."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clean_ros.cloud.kitti import Calibration, boxes_camera_to_lidar, format_labels, read_labels
from training.sim.car_families import CAR_FAMILIES, FAMILIES, family_parts, sample_family
from training.sim.generate import generate_frame, scan_scene
from training.sim.ground import Ground
from training.sim.people import pedestrian_variant
from training.sim.roadside import (LOOKALIKES, NARROW, add_roadside_extras, hedge_parts, lookalike_parts,
                                   narrow_parts)
from training.sim.scene import SceneBuilder, model_parts, sample_scene
from training.sim.sensor import ego_blocked, ego_body_boxes, laser_origin_heights, ray_grid
from training.sim.shapes import Material, PartList, extents_along_axes, local_bounds
from training.sim.sim_config import PRESETS, SimConfig, SimConfigError, config_from_dict, load_config
from training.sim.writer import ALL_AROUND_LABELS, write_frame
from training.simulate import simulate_dataset

REPO = Path(__file__).resolve().parents[3]
COARSE = {"sensor": {"azimuth_resolution_deg": 0.4}}


def _flat_ground() -> Ground:
    return Ground(-1.73, (0.0, 0.0), np.zeros((0, 4)), 0.0, 0.0, 4, 3.5, 0.15, 3.0)


def _local_size(parts) -> np.ndarray:
    lo, hi = local_bounds(parts.build(np.random.default_rng(0)))
    return hi - lo


# --------------------------------------------------------------------------- presets
def test_default_preset_output_is_unchanged():
    """The running experiments' data: same points and labels as before the realistic options existed."""
    frame = generate_frame(config_from_dict(COARSE), 7, 0)
    assert len(frame.points) == 54132
    assert abs(float(frame.points[:, :3].astype(np.float64).sum()) - (-111379.3)) < 1.0
    assert frame.labels_all is None
    lines = format_labels(frame.labels.objects).splitlines()
    assert len(lines) == 15
    assert lines[0] == "Car 0.00 0 1.72 551.31 175.53 592.39 214.33 1.76 1.46 3.65 -1.56 1.54 33.96 1.67"
    assert lines[4].startswith("Truck 0.18 0 -1.89 786.75 0.00 1241.00 374.00 3.22 2.42 10.13")


def test_presets_load_and_config_applies_on_top(tmp_path):
    assert load_config(None) == SimConfig() == config_from_dict({}, preset="default")
    realistic = config_from_dict({}, preset="realistic")
    assert realistic.scene.car_families and realistic.scene.pedestrian_variety and realistic.sensor.ego_vehicle
    assert realistic.labels.write_all_around
    assert realistic.sensor.laser_heights == (0.22, 0.12)
    assert realistic.scene.extra_objects[0] >= 10 and realistic.scene.extra_radius == 45.0  # objects all around
    # a file's `preset` key, then its own values on top; --preset wins over the key
    path = tmp_path / "sim.yaml"
    path.write_text("preset: realistic\nscene:\n  cars: [1, 2]\n")
    cfg = load_config(path)
    assert cfg.scene.cars == (1, 2) and cfg.scene.car_families
    assert not load_config(path, preset="default").scene.car_families
    with pytest.raises(SimConfigError, match="unknown preset 'fancy'"):
        config_from_dict({"preset": "fancy"})
    with pytest.raises(SimConfigError, match="scene.car_families: expected true or false"):
        config_from_dict({"scene": {"car_families": 1}})
    with pytest.raises(SimConfigError, match="vegetation_porosity"):
        config_from_dict({"sensor": {"vegetation_porosity": 1.0}})
    assert set(PRESETS) == {"default", "realistic"}


def test_cli_preset_writes_label_all_and_rejects_unknown_preset(tmp_path):
    cfg = tmp_path / "coarse.yaml"
    cfg.write_text("sensor:\n  azimuth_resolution_deg: 0.8\n")
    run = subprocess.run([sys.executable, str(REPO / "training/simulate.py"), "--out", str(tmp_path / "o"), "--frames",
                          "1", "--preset", "realistic", "--config", str(cfg), "--quiet"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "o/training" / ALL_AROUND_LABELS / "000000.txt").is_file()
    bad = subprocess.run([sys.executable, str(REPO / "training/simulate.py"), "--out", str(tmp_path / "p"), "--frames",
                          "1", "--preset", "fancy"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice: 'fancy'" in bad.stderr and "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- shapes
def test_car_families_have_their_dimensions_and_silhouettes():
    rng = np.random.default_rng(0)
    for family in FAMILIES:
        sizes = np.array([_local_size(family_parts(family, rng)) for _ in range(60)])
        mean = sizes.mean(0)
        np.testing.assert_allclose(mean, FAMILIES[family].size_mean, atol=0.12, err_msg=family)
    tall = {f: np.mean([_local_size(family_parts(f, rng))[2] for _ in range(30)]) for f in FAMILIES}
    assert tall["van"] > tall["suv"] > tall["estate"] > tall["sedan"]
    # the cabin (glass) ends well before the tail on a sedan (a boot), near the tail on an estate
    def rear_overhang(family):
        parts = family_parts(family, np.random.default_rng(3))
        prims = parts.build(np.random.default_rng(0))
        lo, _ = local_bounds(prims)
        glass = prims.select(prims.material == Material.GLASS)
        return float(local_bounds(glass)[0][0] - lo[0])
    assert rear_overhang("sedan") > 0.6 > 0.35 > rear_overhang("estate")
    # every family carries retroreflective plates and lamps; the car mix keeps KITTI's mean Car box
    prims = family_parts("hatchback", rng).build(rng)
    assert (prims.material == Material.RETROREFLECTOR).sum() == 6
    picks = [sample_family("Car", rng) for _ in range(400)]
    assert set(picks) == set(CAR_FAMILIES) and sample_family("Van", rng) == "van"
    mix_l = np.mean([FAMILIES[f].size_mean[0] for f in picks])
    assert 3.8 < mix_l < 4.2


def _painted_top(prims, x: float) -> float:
    """Highest painted-box surface above local x (boxes of a family car are axis-aligned, size = half extents)."""
    box = (prims.material == Material.CAR_PAINT) & (np.abs(prims.centre[:, 0] - x) <= prims.size[:, 0])
    box &= np.abs(prims.size[:, 2]) > 0.06  # the body, not the thin roof panel
    return float((prims.centre[box, 2] + prims.size[box, 2]).max())


def test_bonnet_drop_makes_the_nose_lower_than_the_tail():
    """Off (the realistic preset), a sedan's body is as high at the nose as at the tail: front and back look alike,
    and models turn such cars. With scene.bonnet_drop the body steps down from the windscreen to the nose by the
    drawn drop, for every family; the car keeps its length, plates and lamps."""
    for family in FAMILIES:
        for seed in range(5):
            flat = family_parts(family, np.random.default_rng(seed)).build(np.random.default_rng(0))
            lo, hi = local_bounds(flat)
            nose, tail = hi[0] - 0.05, lo[0] + 0.05
            assert _painted_top(flat, nose) == pytest.approx(_painted_top(flat, tail))
            parts = family_parts(family, np.random.default_rng(seed), bonnet_drop=(0.15, 0.25))
            dropped = parts.build(np.random.default_rng(0))
            lo2, hi2 = local_bounds(dropped)
            np.testing.assert_allclose(hi2[:2] - lo2[:2], hi[:2] - lo[:2], atol=1e-9)
            assert 0.15 - 1e-9 <= _painted_top(dropped, tail) - _painted_top(dropped, nose) <= 0.25 + 1e-9
            assert (dropped.material == Material.RETROREFLECTOR).sum() == 6
    cfg = config_from_dict({"scene": {"bonnet_drop": [0.1, 0.2]}}, preset="realistic").scene
    assert cfg.bonnet_drop == (0.1, 0.2) and config_from_dict({}, preset="realistic").scene.bonnet_drop == (0, 0)
    with pytest.raises(SimConfigError, match="bonnet_drop"):
        config_from_dict({"scene": {"bonnet_drop": [0.3, 0.1]}})


def test_dark_paint_and_scene_option_pick_family_models():
    rng = np.random.default_rng(1)
    dark = family_parts("sedan", rng, dark_fraction=1.0).build(rng)
    assert dark.albedo[dark.material == Material.CAR_PAINT].max() <= 0.08
    cfg = config_from_dict({}, preset="realistic").scene
    prims = model_parts("Car", np.random.default_rng(2), cfg).build(np.random.default_rng(0))
    assert (prims.material == Material.RETROREFLECTOR).any()  # a family car, not the default model
    default = model_parts("Car", np.random.default_rng(2)).build(np.random.default_rng(0))
    assert not (default.material == Material.RETROREFLECTOR).any()


def test_pedestrian_variety_children_poses_and_groups():
    rng = np.random.default_rng(4)
    heights, poses = [], set()
    for _ in range(200):
        parts, pose = pedestrian_variant((0.84, 0.66, 1.76), rng)
        heights.append(_local_size(parts)[2])
        poses.add(pose)
    heights = np.array(heights)
    assert poses == {"walking", "standing", "backpack", "shoulder_bag", "carrying_bag"}
    assert 0.05 < (heights < 1.45).mean() < 0.25  # children
    backpack, _ = pedestrian_variant((0.5, 0.6, 1.76), np.random.default_rng(5), pose="backpack")
    standing, _ = pedestrian_variant((0.5, 0.6, 1.76), np.random.default_rng(5), pose="standing")
    assert _local_size(backpack)[0] > _local_size(standing)[0]  # the backpack makes the box longer
    # groups: with group_probability 1 every pedestrian has a companion within 2 m
    cfg = config_from_dict({"scene": {"group_probability": 1.0, "pedestrians": [3, 3], "cars": [0, 0],
                                      "cyclists": [0, 0], "extra_objects": [0, 0], "misc": [0, 0]}})
    scene = sample_scene(cfg.scene, cfg.sensor, np.random.default_rng(6))
    peds = scene.boxes[scene.names == "Pedestrian"]
    assert len(peds) > 3
    gaps = np.linalg.norm(peds[:, None, :2] - peds[None, :, :2], axis=-1) + np.eye(len(peds)) * 1e9
    assert (gaps.min(1) < 2.0).all()


def test_intersection_has_a_kerbless_cross_street_with_cross_traffic_and_free_corners():
    cfg = config_from_dict({"scene": {"intersection_probability": 1.0}}, preset="realistic")
    for seed in (0, 1):
        scene = sample_scene(cfg.scene, cfg.sensor, np.random.default_rng(seed))
        g = scene.ground
        assert g.cross_half_width >= 3.5
        hw = g.road_half_width
        # across the cross street the surface stays at road level (no kerb); beside it, the pavement is raised
        x, y = g.to_world(g.cross_centre, hw + 6.0)
        assert abs(g.height(x, y) - g.road_height(x, y)) < 1e-9
        x, y = g.to_world(g.cross_centre + g.cross_half_width + 3.0, hw + 1.0)
        assert g.height(x, y) - g.road_height(x, y) == pytest.approx(g.kerb_height)
        assert g.material_at(*g.to_world(g.cross_centre, hw + 6.0)) == Material.ROAD
        # cross traffic: a vehicle beyond the main road, in the band, turned across it
        s, u = g.along(scene.boxes[:, 0], scene.boxes[:, 1]), g.lateral(scene.boxes[:, 0], scene.boxes[:, 1])
        across = np.abs(np.sin(scene.boxes[:, 6] - g.road_heading)) > 0.9
        in_band = (np.abs(s - g.cross_centre) < g.cross_half_width) & (np.abs(u) > hw)
        assert (across & in_band & np.isin(scene.names, ["Car", "Van"])).any()
        # no building, tree or clutter stands in the band beyond the road
        bg = scene.prims.select((scene.prims.owner < 0) & (scene.prims.material != Material.KERB))
        bs, bu = g.along(bg.centre[:, 0], bg.centre[:, 1]), g.lateral(bg.centre[:, 0], bg.centre[:, 1])
        assert not ((np.abs(bs - g.cross_centre) < g.cross_half_width - 1.0) & (np.abs(bu) > hw + 1.0)).any()


def test_extra_radius_puts_the_objects_around_the_car_near_it():
    cfg = config_from_dict({"scene": {"extra_objects": [20, 20], "extra_radius": 30.0, "cars": [0, 0],
                                      "pedestrians": [0, 0], "cyclists": [0, 0], "misc": [0, 0]}})
    scene = sample_scene(cfg.scene, cfg.sensor, np.random.default_rng(0))
    distance = np.hypot(scene.boxes[:, 0], scene.boxes[:, 1])
    assert len(distance) >= 15 and distance.max() < 30.0
    anywhere = config_from_dict({"scene": {"extra_objects": [20, 20], "cars": [0, 0], "pedestrians": [0, 0],
                                           "cyclists": [0, 0], "misc": [0, 0]}})
    spread = sample_scene(anywhere.scene, anywhere.sensor, np.random.default_rng(0)).boxes
    assert np.hypot(spread[:, 0], spread[:, 1]).max() > 40.0


def test_roadside_extras_are_unlabelled_and_bicycles_have_no_rider():
    cfg = config_from_dict({"scene": {"riderless_bicycles": [5, 5], "street_furniture": [6, 6],
                                      "hedges_per_100m": 5.0, "fences_per_100m": 3.0}}).scene
    b = SceneBuilder(_flat_ground(), np.random.default_rng(0))
    add_roadside_extras(b, _flat_ground(), cfg, (-40.0, 40.0))
    scene = b.build()
    assert len(scene.names) == 0 and scene.prims.count > 50 and (scene.prims.owner == -1).all()
    materials = set(scene.prims.material.tolist())
    assert {Material.VEGETATION, Material.TYRE, Material.METAL} <= materials
    assert Material.CLOTH_SKIN not in materials  # parked bicycles: no rider


def test_narrow_objects_are_upright_person_sized_and_never_people():
    """Every kind: 0.8-3.4 m tall, at most 1.3 m across, no cloth/skin; a random stack stands on a solid base (one
    part at least 0.5 m across touching the ground), not on two legs."""
    for kind in NARROW:
        for seed in range(25):
            parts = narrow_parts(np.random.default_rng(seed), kind)
            prims = parts.build(np.random.default_rng(0))
            size = _local_size(parts)
            assert 0.8 <= size[2] <= 3.4, (kind, seed, size)
            assert size[:2].max() <= 1.3, (kind, seed, size)
            assert Material.CLOTH_SKIN not in set(prims.material.tolist())
    for seed in range(25):
        prims = narrow_parts(np.random.default_rng(seed), "stack").build(np.random.default_rng(0))
        lo, hi = local_bounds(prims)
        assert len(prims.material) in (2, 3)
        assert (hi[0] - lo[0]) >= 0.5 and (hi[1] - lo[1]) >= 0.5
    with pytest.raises(SimConfigError, match="narrow_objects"):
        config_from_dict({"scene": {"narrow_objects": [5, 2]}})


def test_lookalikes_have_a_cyclists_or_small_cars_footprint_and_no_rider():
    """Every kind: 1-2.6 m long along x, 0.2-1.3 m wide, 0.8-1.8 m tall, no cloth/skin (never a rider); a scooter has
    two wheels, a bin row two or three bins."""
    for kind in LOOKALIKES:
        for seed in range(25):
            parts = lookalike_parts(np.random.default_rng(seed), kind)
            prims = parts.build(np.random.default_rng(0))
            size = _local_size(parts)
            assert 1.0 <= size[0] <= 2.6 and 0.2 <= size[1] <= 1.3 and 0.8 <= size[2] <= 1.8, (kind, seed, size)
            assert size[0] >= size[1], (kind, seed, size)  # long along x: placed along or across the pavement
            assert Material.CLOTH_SKIN not in set(prims.material.tolist())
            materials = prims.material.tolist()
            if kind == "scooter":
                assert materials.count(Material.TYRE) == 2
            if kind == "bins":
                assert len(materials) in (2, 3)
    with pytest.raises(SimConfigError, match="lookalikes"):
        config_from_dict({"scene": {"lookalikes": [5, 2]}})


@pytest.mark.parametrize("option", ["narrow_objects", "lookalikes"])
def test_option_objects_stand_unlabelled_beside_the_road_and_are_off_by_default(option):
    cfg = config_from_dict({"scene": {option: [12, 12]}}).scene
    b = SceneBuilder(_flat_ground(), np.random.default_rng(0))
    add_roadside_extras(b, _flat_ground(), cfg, (-40.0, 40.0))
    scene = b.build()
    assert len(scene.names) == 0 and (scene.prims.owner == -1).all()
    assert scene.prims.count >= 10  # most of the 12 find a free place (5 tries each)
    if option == "lookalikes":  # placed by their size: every part on the pavement or beyond, none on the road
        reach = np.abs(scene.prims.centre[:, 1]) - extents_along_axes(scene.prims)[:, 1]
        assert (reach > _flat_ground().road_half_width).all()
    assert getattr(config_from_dict({}).scene, option) == (0, 0)
    assert getattr(config_from_dict({}, preset="realistic").scene, option) == (0, 0)  # the released data unchanged
    off = SceneBuilder(_flat_ground(), np.random.default_rng(0))
    add_roadside_extras(off, _flat_ground(), config_from_dict({}).scene, (-40.0, 40.0))
    assert off.build().prims.count == 0


def test_annotated_length_gives_pedestrians_kittis_box_length_not_the_tight_one():
    """KITTI pedestrians are labelled l 0.84 +- 0.23 m; the tight box of a walking model is a third shorter. With
    labels.annotated_length the label grows along the heading, about its centre, to the drawn KITTI length; off,
    the labels stay the tight boxes."""
    lengths = {}
    for on in (False, True):
        cfg = config_from_dict({"sensor": {"azimuth_resolution_deg": 0.4}, "labels": {"annotated_length": on}},
                               preset="realistic")
        rows, drawn = [], []
        for index in range(6):
            frame = generate_frame(cfg, 21, index)
            ped = frame.labels_all.objects.names == "Pedestrian"
            rows.append(frame.labels_all.boxes[ped])
            drawn.append(frame.scene.annotated_length[frame.labels_all.object_index[ped]])
        boxes, drawn = np.concatenate(rows), np.concatenate(drawn)
        assert len(boxes) >= 10 and (drawn > 0.3).all()
        if on:
            assert (boxes[:, 3] >= drawn - 1e-6).all()
        lengths[on] = boxes[:, 3]
    assert lengths[False].mean() < 0.65 < 0.75 < lengths[True].mean()
    assert np.array_equal(lengths[True], np.maximum(lengths[True], lengths[False]))  # grown, never shrunk


def test_full_stride_makes_walkers_as_long_as_the_drawn_kitti_length_and_leaves_the_scene_alone():
    """KITTI's labelled lengths (l 0.84 +- 0.23 m) already spread over the gait; with scene.full_stride a walking
    person's tight box spans the drawn l (less than a leg's width short), without it 50-100 % of the stride. The
    option changes nothing else: the same random draws, so the same scene around the people."""
    assert not config_from_dict({}, preset="realistic").scene.full_stride  # the released data unchanged
    with pytest.raises(SimConfigError, match="full_stride needs scene.pedestrian_variety"):
        config_from_dict({"scene": {"full_stride": True}})  # the default preset's people would not change
    for pose in ("walking", "backpack", "carrying_bag"):
        for seed in range(20):
            l = 0.6 + 0.03 * seed
            full, _ = pedestrian_variant((l, 0.66, 1.76), np.random.default_rng(seed), pose=pose, full_stride=True)
            part, _ = pedestrian_variant((l, 0.66, 1.76), np.random.default_rng(seed), pose=pose)
            size = _local_size(full)
            drawn = l * min(1.0, size[2] / 1.76) if size[2] < 1.45 else l  # a child is scaled down with its height
            assert drawn - 0.08 <= size[0] <= drawn + 0.4  # a backpack adds behind the torso, not to the stride
            assert _local_size(part)[0] <= _local_size(full)[0] + 1e-9
    # standing people keep their small sway either way
    still, _ = pedestrian_variant((1.0, 0.66, 1.76), np.random.default_rng(1), pose="standing", full_stride=True)
    assert _local_size(still)[0] < 0.5
    # over a population: the walkers' lengths follow the drawn ones, without it a third shorter
    rng_on, rng_off = np.random.default_rng(8), np.random.default_rng(8)
    on = np.array([_local_size(pedestrian_variant((0.84, 0.66, 1.76), rng_on, pose="walking", full_stride=True)[0])[0]
                   for _ in range(100)])
    off = np.array([_local_size(pedestrian_variant((0.84, 0.66, 1.76), rng_off, pose="walking")[0])[0]
                    for _ in range(100)])
    assert np.median(on) > 0.75 and np.median(off) < 0.7
    # same scene otherwise: one frame with and without, identical apart from the people
    frames = {}
    for on_off in (False, True):
        cfg = config_from_dict({"sensor": {"azimuth_resolution_deg": 0.4}, "scene": {"full_stride": on_off}},
                               preset="realistic")
        frames[on_off] = generate_frame(cfg, 21, 0)
    boxes = {k: f.scene.boxes for k, f in frames.items()}
    names = frames[False].scene.names
    assert np.array_equal(names, frames[True].scene.names)
    others = names != "Pedestrian"
    assert np.array_equal(boxes[False][others], boxes[True][others])
    people = ~others
    assert people.sum() >= 3 and (boxes[True][people, 3] >= boxes[False][people, 3] - 1e-9).all()
    assert (boxes[True][people, 3] > boxes[False][people, 3] + 0.05).any()


def _side_view_hits(parts: PartList, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Which rays from a sensor 8 m to the side of a part list (along its x axis) hit it, aimed at (x, 0, z)."""
    from training.sim.raycast import intersect_pairs

    prims = parts.build(np.random.default_rng(0))
    prims = prims._replace(centre=prims.centre + np.array([0.0, 8.0, 0.0]))
    directions = np.stack([x, np.full_like(x, 8.0), z], 1)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    rays, prim = np.repeat(np.arange(len(x)), prims.count), np.tile(np.arange(prims.count), len(x))
    t, _ = intersect_pairs(prims, rays, prim, directions)
    return np.isfinite(t).reshape(len(x), prims.count).any(1)


def test_spoked_wheels_are_open_between_tyre_and_hub_and_change_nothing_else():
    """A real bicycle wheel is a tyre and a hub with thin spokes between (nearly no returns); with
    scene.spoked_wheels the simulator's wheels are that instead of solid discs, for ridden and parked bicycles."""
    from training.sim.roadside import bicycle_parts
    from training.sim.shapes import bicycle_frame, cyclist_parts

    assert not config_from_dict({}, preset="realistic").scene.spoked_wheels  # the released data unchanged
    for spoked in (False, True):
        p = PartList()
        key = bicycle_frame(p, 1.76, 0.6, spoked)
        wheel_r = key["crank"][2]
        wheel_x = 1.76 / 2 - wheel_r
        # rays at the lower front quarter of the front wheel, halfway out (no frame tube there), and at the tyre
        angle = np.linspace(np.pi * 1.55, np.pi * 1.95, 12)
        mid = _side_view_hits(p, wheel_x + 0.5 * wheel_r * np.cos(angle), wheel_r + 0.5 * wheel_r * np.sin(angle))
        tyre = _side_view_hits(p, wheel_x + (wheel_r - 0.02) * np.cos(angle),
                               wheel_r + (wheel_r - 0.02) * np.sin(angle))
        assert tyre.all()
        assert mid.all() if not spoked else not mid.any()
    # the same random draws either way: a cyclist's and a parked bicycle's other parts are the same
    for make in (lambda rng, sp: cyclist_parts(1.76, 0.6, 1.74, rng, spoked=sp),
                 lambda rng, sp: bicycle_parts(rng, spoked=sp)):
        rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
        disc, ring = make(rng_a, False), make(rng_b, True)
        assert rng_a.random() == rng_b.random()
        assert len(ring.rows) > len(disc.rows)
        assert np.allclose(_local_size(disc), _local_size(ring), atol=0.01)  # same bicycle, same box
    # the option reaches scenes: cyclists and parked bicycles get tyre rings (many TYRE parts per object)
    cfg = config_from_dict({"scene": {"spoked_wheels": True, "cyclists": [2, 2], "riderless_bicycles": [2, 2]}},
                           preset="realistic").scene
    assert (model_parts("Cyclist", np.random.default_rng(0), cfg).build(np.random.default_rng(0)).material
            == Material.TYRE).sum() > 2


def test_label_boxes_grow_to_min_length_about_the_centre():
    from training.sim.labels import label_boxes

    parts = PartList().box((0.3, 0.0, 0.9), (0.2, 0.25, 0.9), Material.CLOTH_SKIN)
    prims = parts.build(np.random.default_rng(0), owner=0)
    yaw = np.array([np.pi / 2])  # heading along world y: the label's length is the part's 0.5 m side
    no_points = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    tight, _ = label_boxes(prims, yaw, *no_points, padding=0.02)
    grown, _ = label_boxes(prims, yaw, *no_points, padding=0.02, min_length=np.array([0.9]))
    kept, _ = label_boxes(prims, yaw, *no_points, padding=0.02, min_length=np.array([0.2]))
    # + 0.02 padding, rounded up to the centimetre
    assert tight[0, 3] == pytest.approx(0.52, abs=0.011) and grown[0, 3] == pytest.approx(0.9, abs=0.011)
    np.testing.assert_allclose(grown[0, [0, 1, 2, 4, 5, 6]], tight[0, [0, 1, 2, 4, 5, 6]], atol=1e-9)
    np.testing.assert_array_equal(kept, tight)


# --------------------------------------------------------------------------- sensor and vegetation
def _hedge_returns(porosity: float, depth: float):
    cfg = config_from_dict({"sensor": {"azimuth_resolution_deg": 0.2, "vegetation_porosity": porosity,
                                       "vegetation_depth": depth}})
    b = SceneBuilder(_flat_ground(), np.random.default_rng(0))
    assert b.try_add(hedge_parts(8.0, np.random.default_rng(1)), 10.0, 0.0, np.pi / 2, None)  # across the view
    frame = scan_scene(b.build(), cfg, np.random.default_rng(2))
    near = (np.abs(frame.points[:, 1]) < 3.0) & (frame.points[:, 2] > -1.3) & (frame.points[:, 0] < 20)
    return frame, frame.points[near]


def test_vegetation_returns_are_scattered_in_depth_and_unlabelled():
    solid_frame, solid = _hedge_returns(0.0, 0.0)
    leafy_frame, leafy = _hedge_returns(0.55, 0.35)
    assert len(solid) > 200 and len(leafy) > 100
    assert len(solid_frame.labels.objects) == 0 and len(leafy_frame.labels.objects) == 0
    # depth spread of the returns seen through one small window (0.25 m cells across y, z): the default's range
    # noise on a surface (vegetation's 0.25 m noise std) vs a thick band of returns from inside the foliage
    def depth_spread(points):
        cell = np.unique(np.floor(points[:, 1:3] / 0.25).astype(np.int64), axis=0, return_inverse=True)[1].ravel()
        n = np.bincount(cell)
        mean = np.bincount(cell, points[:, 0]) / n
        var = np.bincount(cell, (points[:, 0] - mean[cell]) ** 2) / n
        return float(np.sqrt(var[n >= 3]).mean())
    assert depth_spread(leafy) > depth_spread(solid) + 0.1
    assert len(leafy) < 0.8 * len(solid)  # some rays pass through the foliage


def test_lasers_above_origin_shift_elevation_with_range_and_ego_body_blocks_low_rays():
    cfg = config_from_dict({}, preset="realistic").sensor
    grid = ray_grid(cfg)
    heights = laser_origin_heights(grid, cfg)
    top = np.argmax(grid.elevation)
    assert heights[top * grid.n_columns] == 0.22 and heights[0] == 0.12
    assert laser_origin_heights(grid, SimConfig().sensor) is None
    boxes = ego_body_boxes(np.random.default_rng(0), cfg.mount_height)
    blocked = ego_blocked(grid.directions, heights, boxes).reshape(len(grid.elevation), grid.n_columns)
    assert blocked[0].mean() > 0.1  # the lowest laser hits the roof or the body in many directions
    assert not blocked[grid.elevation > np.deg2rad(-5)].any()  # upper lasers clear it
    # a wall 20 m ahead: a laser 0.22 m up sees it 0.22 m higher than one at the origin would
    b = SceneBuilder(_flat_ground(), np.random.default_rng(0))
    from training.sim.shapes import PartList
    b.add_background(PartList().box((20.0, 0.0, 2.0), (0.1, 5.0, 4.0), Material.BUILDING).build(
        np.random.default_rng(0)))
    plain = scan_scene(b.build(), config_from_dict(COARSE), np.random.default_rng(1)).points
    raised = scan_scene(b.build(), config_from_dict({**COARSE, "sensor": {"azimuth_resolution_deg": 0.4,
                                                                          "laser_heights": [0.22, 0.12]}}),
                        np.random.default_rng(1)).points
    upper_plain = np.sort(plain[(plain[:, 0] > 19) & (plain[:, 2] > 0.05), 2])
    upper_raised = np.sort(raised[(raised[:, 0] > 19) & (raised[:, 2] > 0.27), 2])
    assert abs((upper_raised[:20] - 0.22) - upper_plain[:20]).max() < 0.1


def test_a_few_rays_return_from_the_carrying_car():
    base = {"sensor": {"azimuth_resolution_deg": 0.4, "ego_vehicle": True, "min_range": 1.0}}
    quiet = generate_frame(config_from_dict(base), 4, 0)
    loud = generate_frame(config_from_dict({"sensor": {**base["sensor"], "ego_return_fraction": 1.0}}), 4, 0)
    def own(frame):
        near = np.hypot(frame.points[:, 0], frame.points[:, 1]) < 2.6  # the ego footprint (objects keep out of it)
        return frame.points[near], frame.point_owner[near]
    assert len(own(quiet)[0]) == 0
    points, owner = own(loud)
    assert len(points) > 30 and (owner == -1).all() and points[:, 3].max() <= 0.01
    assert points[:, 2].max() < 0.0  # roof, bonnet, mast: all below the lasers


def test_weak_far_echoes_read_zero_reflectance():
    cfg = config_from_dict({**COARSE, "scene": {"extra_objects": [0, 0]}})
    weak = config_from_dict({"sensor": {"azimuth_resolution_deg": 0.4, "weak_echo_range": [15.0, 70.0]}})
    plain = generate_frame(cfg, 3, 0).points
    faded = generate_frame(weak, 3, 0).points
    far = lambda p: np.hypot(p[:, 0], p[:, 1]) > 50  # noqa: E731
    near = lambda p: np.hypot(p[:, 0], p[:, 1]) < 12  # noqa: E731
    assert (faded[far(faded), 3] == 0).mean() > 0.6 > (plain[far(plain), 3] == 0).mean()
    assert (faded[near(faded), 3] == 0).mean() < 0.05


# --------------------------------------------------------------------------- all-around labels
def test_label_all_holds_objects_behind_the_car_label_2_does_not(tmp_path):
    cfg = config_from_dict({**COARSE, "labels": {"write_all_around": True}})
    b = SceneBuilder(_flat_ground(), np.random.default_rng(0))
    assert b.try_add(model_parts("Car", np.random.default_rng(1)), 15.0, -1.0, 0.0, "Car")  # ahead
    assert b.try_add(model_parts("Car", np.random.default_rng(2)), -14.0, 2.0, np.pi, "Car")  # behind
    assert b.try_add(model_parts("Pedestrian", np.random.default_rng(3)), 0.5, 9.0, 0.0, "Pedestrian")  # beside
    frame = scan_scene(b.build(), cfg, np.random.default_rng(4))
    assert list(frame.labels.object_index) == [0]
    assert sorted(frame.labels_all.object_index) == [0, 1, 2]
    write_frame(tmp_path, "training", 0, frame)
    calib = Calibration.from_file(tmp_path / "training/calib/000000.txt")
    front = read_labels(tmp_path / "training/label_2/000000.txt")
    around = read_labels(tmp_path / f"training/{ALL_AROUND_LABELS}/000000.txt")
    assert list(front.names) == ["Car"] and list(around.names) == ["Car", "Car", "Pedestrian"]
    boxes = boxes_camera_to_lidar(around.location, around.dimensions, around.rotation_y, calib)
    np.testing.assert_allclose(boxes[:, :2], frame.scene.boxes[:, :2], atol=0.15)
    assert around.location[1, 2] < 0  # behind the camera
    assert around.truncation[1] == 1.0 and (around.bbox[1] == 0).all()
    np.testing.assert_array_equal(around.location[0], front.location[0])  # the same row for the shared object


def test_train_split_reads_label_all_when_configured(tmp_path):
    from training.data.data_config import DataConfig
    from training.data.kitti_dataset import KittiDataset, KittiLayoutError

    cfg = config_from_dict({"sensor": {"azimuth_resolution_deg": 0.8}, "dataset": {"val_fraction": 0.5},
                            "labels": {"write_all_around": True}, "scene": {"extra_objects": [25, 25]}})
    simulate_dataset(cfg, tmp_path / "d", n_frames=2, seed=3, progress=False)
    wide = (-40.0, -40.0, -3.0, 40.0, 40.0, 1.0)
    around = DataConfig(root=str(tmp_path / "d"), train_labels="label_all", fov_crop=False, point_cloud_range=wide)
    front = DataConfig(root=str(tmp_path / "d"), fov_crop=False, point_cloud_range=wide)
    train_all, train_front = KittiDataset(around, "train")[0], KittiDataset(front, "train")[0]
    assert (train_all.gt_boxes[:, 0] < 0).any()  # objects behind the sensor
    assert not (train_front.gt_boxes[:, 0] < 0).any()
    assert len(train_all.gt_boxes) > len(train_front.gt_boxes)
    val = KittiDataset(around, "val")[0]  # evaluation splits keep label_2
    assert not (val.gt_boxes[:, 0] < 0).any()
    with pytest.raises(ValueError, match="fov_crop: false"):
        DataConfig(root=str(tmp_path / "d"), train_labels="label_all")
    with pytest.raises(KittiLayoutError, match="label_none: missing"):
        KittiDataset(DataConfig(root=str(tmp_path / "d"), train_labels="label_none", fov_crop=False), "train")


def test_label_all_boxes_hold_every_return_of_their_object(tmp_path):
    """Porous glass, laser heights and the ego car must not push an object's returns out of its written box."""
    import torch

    from clean_ros.cloud.geometry import points_in_boxes

    cfg = config_from_dict({"sensor": {"azimuth_resolution_deg": 0.4}}, preset="realistic")
    for index in (0, 1):
        frame = generate_frame(cfg, 9, index)
        write_frame(tmp_path, "training", index, frame)
        name = f"{index:06d}"
        calib = Calibration.from_file(tmp_path / f"training/calib/{name}.txt")
        rows = read_labels(tmp_path / f"training/{ALL_AROUND_LABELS}/{name}.txt")
        boxes = boxes_camera_to_lidar(rows.location, rows.dimensions, rows.rotation_y, calib)
        inside = points_in_boxes(torch.from_numpy(frame.points[:, :3].astype(np.float64)),
                                 torch.from_numpy(boxes)).numpy()
        for k, obj in enumerate(frame.labels_all.object_index):
            mine = frame.point_owner == obj
            assert mine.any() and inside[mine, k].all(), f"frame {index}: {rows.names[k]} {k} misses returns"


def test_realistic_frame_end_to_end():
    cfg = config_from_dict({"sensor": {"azimuth_resolution_deg": 0.4}}, preset="realistic")
    frame = generate_frame(cfg, 0, 1)
    points = frame.points
    assert np.isfinite(points).all() and points[:, 3].min() >= 0 and points[:, 3].max() <= 1
    assert set(frame.labels.object_index) <= set(frame.labels_all.object_index)
    assert len(frame.labels_all.object_index) > len(frame.labels.object_index)
    assert (points[:, 3] >= 0.7).any()  # plates, lamps, signs
    assert (frame.labels_all.boxes[:, 0] < 0).any()  # objects all around, labelled
