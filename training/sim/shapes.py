"""Analytic primitives (oriented boxes, cylinders, ellipsoids) and the object models built from them.

Every object is modelled in its own frame (origin at the bottom centre on the ground, x forward, z up) so its
tight box follows from the primitives' analytic extents, then placed in the LiDAR frame by (x, y, ground z, yaw).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

import numpy as np


class Kind(IntEnum):
    BOX = 0  # size = half extents
    CYLINDER = 1  # size = (radius, radius, half height), axis = local z
    ELLIPSOID = 2  # size = semi-axes


class Material(IntEnum):
    ROAD = 0
    MARKING = 1
    PAVEMENT = 2
    KERB = 3
    TERRAIN = 4
    BUILDING = 5
    VEGETATION = 6
    CAR_PAINT = 7
    GLASS = 8
    TYRE = 9
    METAL = 10
    CLOTH_SKIN = 11
    WOOD = 12
    PLASTIC = 13
    RETROREFLECTOR = 14  # number plates, lamp reflectors, traffic signs: the brightest returns of a real scan


@dataclass(frozen=True)
class MaterialProps:
    albedo: float  # mean reflectance at normal incidence
    albedo_spread: float  # std of the per-primitive albedo
    dropout: float  # extra probability that a return is lost (glass, porous crowns)
    range_noise: float  # extra range noise std (m): rays entering foliage


MATERIALS = {
    Material.ROAD: MaterialProps(0.22, 0.04, 0.0, 0.0),
    Material.MARKING: MaterialProps(0.62, 0.08, 0.0, 0.0),
    Material.PAVEMENT: MaterialProps(0.30, 0.05, 0.0, 0.0),
    Material.KERB: MaterialProps(0.33, 0.05, 0.0, 0.0),
    Material.TERRAIN: MaterialProps(0.28, 0.06, 0.05, 0.03),
    Material.BUILDING: MaterialProps(0.26, 0.10, 0.0, 0.0),
    Material.VEGETATION: MaterialProps(0.30, 0.06, 0.25, 0.25),
    Material.CAR_PAINT: MaterialProps(0.30, 0.15, 0.0, 0.0),
    Material.GLASS: MaterialProps(0.05, 0.02, 0.45, 0.0),
    Material.TYRE: MaterialProps(0.06, 0.02, 0.0, 0.0),
    Material.METAL: MaterialProps(0.45, 0.10, 0.0, 0.0),
    Material.CLOTH_SKIN: MaterialProps(0.25, 0.08, 0.0, 0.0),
    Material.WOOD: MaterialProps(0.30, 0.05, 0.0, 0.0),
    Material.PLASTIC: MaterialProps(0.20, 0.08, 0.0, 0.0),
    Material.RETROREFLECTOR: MaterialProps(0.85, 0.10, 0.0, 0.0),
}
ALBEDO = np.array([MATERIALS[m].albedo for m in Material])
ALBEDO_SPREAD = np.array([MATERIALS[m].albedo_spread for m in Material])
MATERIAL_DROPOUT = np.array([MATERIALS[m].dropout for m in Material])
MATERIAL_RANGE_NOISE = np.array([MATERIALS[m].range_noise for m in Material])


class Primitives(NamedTuple):
    """P analytic primitives in one frame. rotation maps local -> parent frame."""

    kind: np.ndarray  # (P,) int8
    centre: np.ndarray  # (P, 3)
    rotation: np.ndarray  # (P, 3, 3)
    size: np.ndarray  # (P, 3)
    material: np.ndarray  # (P,) int8
    albedo: np.ndarray  # (P,) reflectance of this primitive
    owner: np.ndarray  # (P,) int32 object index, -1 = background

    @property
    def count(self) -> int:  # (a NamedTuple must keep its tuple len)
        return len(self.kind)

    @staticmethod
    def empty() -> "Primitives":
        return Primitives(np.zeros(0, np.int8), np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)),
                          np.zeros(0, np.int8), np.zeros(0), np.zeros(0, np.int32))

    @staticmethod
    def concat(parts: list["Primitives"]) -> "Primitives":
        parts = [p for p in parts if p.count]
        if not parts:
            return Primitives.empty()
        return Primitives(*(np.concatenate(cols) for cols in zip(*parts)))

    def select(self, mask: np.ndarray) -> "Primitives":
        return Primitives(*(col[mask] for col in self))


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


class PartList:
    """Accumulates primitives of one model in its local frame (a few dozen per object: scene construction only)."""

    def __init__(self, albedo: dict | None = None) -> None:
        self.rows: list[tuple] = []
        self.albedo = dict(albedo or {})  # fixed albedo of some materials (a black car's paint); others are drawn
        # the box length an annotator gives this object (the KITTI-statistics length it was drawn with), 0 = none:
        # labels.annotated_length grows the tight label box to it (LabelConfig)
        self.annotated_length = 0.0

    def box(self, centre, half, material, rotation=None) -> "PartList":
        self.rows.append((Kind.BOX, centre, np.eye(3) if rotation is None else rotation, half, material))
        return self

    def cylinder(self, centre, radius, half_height, material, rotation=None) -> "PartList":
        self.rows.append((Kind.CYLINDER, centre, np.eye(3) if rotation is None else rotation,
                          (radius, radius, half_height), material))
        return self

    def ellipsoid(self, centre, semi_axes, material, rotation=None) -> "PartList":
        self.rows.append((Kind.ELLIPSOID, centre, np.eye(3) if rotation is None else rotation, semi_axes, material))
        return self

    def limb(self, start, end, radius, material) -> "PartList":
        """A cylinder from point start to point end (legs, arms, bicycle tubes)."""
        start, end = np.asarray(start, float), np.asarray(end, float)
        axis = end - start
        length = float(np.linalg.norm(axis))
        return self.cylinder((start + end) / 2, radius, length / 2, material, rotation=_rotation_to(axis / length))

    def build(self, rng: np.random.Generator, owner: int = -1, albedo_by_material: dict | None = None) -> Primitives:
        """Primitives in the local frame; one albedo per material per object (a car has one paint colour)."""
        n = len(self.rows)
        kind = np.array([r[0] for r in self.rows], np.int8)
        material = np.array([r[4] for r in self.rows], np.int8)
        albedo_by_material = {**self.albedo, **(albedo_by_material or {})}
        for m in np.unique(material):
            if m not in albedo_by_material:
                albedo_by_material[m] = float(np.clip(rng.normal(ALBEDO[m], ALBEDO_SPREAD[m]), 0.02, 0.95))
        return Primitives(kind, np.array([r[1] for r in self.rows], float).reshape(n, 3),
                          np.array([r[2] for r in self.rows], float).reshape(n, 3, 3),
                          np.array([r[3] for r in self.rows], float).reshape(n, 3), material,
                          np.array([albedo_by_material[m] for m in material]), np.full(n, owner, np.int32))


def _rotation_to(axis: np.ndarray) -> np.ndarray:
    """A rotation taking local +z to the unit vector axis."""
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(z, axis)
    c = float(np.dot(z, axis))
    if np.linalg.norm(v) < 1e-9:
        return np.eye(3) if c > 0 else rot_x(np.pi)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def extents_along_axes(prims: Primitives, axes: np.ndarray | None = None) -> np.ndarray:
    """(P, 3) half extents of each primitive along the parent frame's axes (or the rows of axes (3, 3))."""
    rot = prims.rotation if axes is None else np.einsum("ij,pjk->pik", axes, prims.rotation)
    size = prims.size
    box = (np.abs(rot) * size[:, None, :]).sum(-1)
    ell = np.sqrt((rot**2 * size[:, None, :] ** 2).sum(-1))
    axis_cos = rot[:, :, 2]  # cosine between the cylinder axis and each parent axis
    cyl = np.abs(axis_cos) * size[:, 2:3] + size[:, 0:1] * np.sqrt(np.clip(1 - axis_cos**2, 0, 1))
    kind = prims.kind[:, None]
    return np.where(kind == Kind.BOX, box, np.where(kind == Kind.CYLINDER, cyl, ell))


def transform(prims: Primitives, rotation: np.ndarray, translation: np.ndarray) -> Primitives:
    return prims._replace(centre=prims.centre @ rotation.T + translation,
                          rotation=np.einsum("ij,pjk->pik", rotation, prims.rotation))


def local_bounds(prims: Primitives) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned (min, max) corners of a model in its own frame."""
    ext = extents_along_axes(prims)
    return (prims.centre - ext).min(0), (prims.centre + ext).max(0)


# --------------------------------------------------------------------------- object models
# Each takes the target tight-box size (l, w, h) sampled from KITTI statistics and returns parts whose
# extents reproduce it, with the origin at the bottom centre.

def car_parts(l: float, w: float, h: float, rng: np.random.Generator, van: bool = False) -> PartList:
    p = PartList()
    wheel_r = rng.uniform(0.29, 0.34) if not van else rng.uniform(0.32, 0.37)
    wheel_hw = 0.11
    mirror = 0.09  # mirrors stick out beyond the body
    body_w = w - 2 * mirror
    clearance = 0.18
    body_top = clearance + (h - clearance) * (rng.uniform(0.45, 0.55) if not van else rng.uniform(0.5, 0.6))
    wheelbase_half = l / 2 - rng.uniform(0.75, 0.95)
    # lower body: full length, with a slightly shorter bumper-to-bumper top (hood/boot edges rounded off)
    p.box((0.0, 0.0, (clearance + body_top) / 2 + 0.05), (l / 2, body_w / 2, (body_top - clearance) / 2 - 0.05),
          Material.CAR_PAINT)
    p.box((0.0, 0.0, clearance + 0.05), (l / 2 - 0.12, body_w / 2 - 0.05, 0.05), Material.CAR_PAINT)
    if van:
        cabin_len, cabin_x = l * rng.uniform(0.72, 0.82), -l * 0.08
    else:
        cabin_len, cabin_x = l * rng.uniform(0.42, 0.52), -l * rng.uniform(0.02, 0.08)
    cabin_w = body_w * rng.uniform(0.80, 0.88)
    cabin_h = h - body_top
    # greenhouse: a painted pillar/roof box and glass around it, slightly inset, windshield raked by a pitched box
    p.box((cabin_x, 0.0, body_top + cabin_h / 2), (cabin_len / 2, cabin_w / 2, cabin_h / 2), Material.GLASS)
    p.box((cabin_x, 0.0, h - 0.04), (cabin_len / 2 - 0.05, cabin_w / 2 - 0.02, 0.04), Material.CAR_PAINT)
    rake = np.deg2rad(rng.uniform(25, 35))
    ws_len = cabin_h / np.cos(rake)
    ws_x = cabin_x + cabin_len / 2 + np.sin(rake) * ws_len / 2 * 0.6
    p.box((min(ws_x, l / 2 - 0.4), 0.0, body_top + cabin_h / 2 - 0.02), (0.03, cabin_w / 2 - 0.03, ws_len / 2 * 0.9),
          Material.GLASS, rotation=rot_y(rake))
    for sx in (-1, 1):
        for sy in (-1, 1):
            p.cylinder((sx * wheelbase_half, sy * (body_w / 2 - wheel_hw + 0.02), wheel_r), wheel_r, wheel_hw,
                       Material.TYRE, rotation=rot_x(np.pi / 2))
        # mirrors
        p.box((cabin_x + cabin_len / 2 - 0.05, sx * (w / 2 - mirror / 2), body_top + 0.12), (0.06, mirror / 2, 0.06),
              Material.CAR_PAINT)
    return p


def truck_parts(l: float, w: float, h: float, rng: np.random.Generator) -> PartList:
    p = PartList()
    wheel_r = rng.uniform(0.45, 0.52)
    cab_len = rng.uniform(2.0, 2.4)
    cab_h = min(h, rng.uniform(2.6, 3.0))
    cargo_len = l - cab_len - 0.2
    p.box((l / 2 - cab_len / 2, 0.0, 0.45 + (cab_h - 0.45) / 2), (cab_len / 2, w / 2 - 0.05, (cab_h - 0.45) / 2),
          Material.CAR_PAINT)
    p.box((l / 2 - 0.05, 0.0, cab_h * 0.7), (0.04, w / 2 - 0.15, cab_h * 0.15), Material.GLASS)
    p.box((-l / 2 + cargo_len / 2, 0.0, 0.9 + (h - 0.9) / 2), (cargo_len / 2, w / 2, (h - 0.9) / 2), Material.METAL)
    p.box((0.0, 0.0, 0.75), (l / 2 - 0.3, w / 2 - 0.4, 0.15), Material.METAL)  # chassis
    for x in (l / 2 - cab_len / 2, -l / 2 + 1.2, -l / 2 + 2.3):
        for sy in (-1, 1):
            p.cylinder((x, sy * (w / 2 - 0.3), wheel_r), wheel_r, 0.15, Material.TYRE, rotation=rot_x(np.pi / 2))
    return p


def trailer_parts(l: float, w: float, h: float, rng: np.random.Generator) -> PartList:
    """KITTI 'Misc': trailers, carts."""
    p = PartList()
    wheel_r = 0.3
    p.box((0.2, 0.0, 0.35 + (h - 0.35) / 2), (l / 2 - 0.2, w / 2, (h - 0.35) / 2), Material.METAL)
    p.limb((-l / 2, 0.0, 0.45), (-l / 2 + 0.45, 0.0, 0.45), 0.04, Material.METAL)  # drawbar
    for sy in (-1, 1):
        p.cylinder((0.2, sy * (w / 2 - 0.12), wheel_r), wheel_r, 0.1, Material.TYRE, rotation=rot_x(np.pi / 2))
    return p


def pedestrian_parts(l: float, w: float, h: float, rng: np.random.Generator, phase: float | None = None,
                     leg_r: float = 0.065, arm_r: float = 0.045, parts: PartList | None = None) -> PartList:
    """Two legs, torso, two arms, head. Stride and arm swing follow the sampled box length/width, so the tight box
    is shorter than l (l is kept as the annotated length, LabelConfig.annotated_length).
    parts: add to this PartList (e.g. one with a fixed clothes albedo) instead of a new one."""
    p = PartList() if parts is None else parts
    p.annotated_length = l
    head_r = 0.105 * h / 1.76
    hip_z = 0.50 * h
    shoulder_z = 0.81 * h
    hip_w = 0.09 * h / 1.76
    torso_half = np.array([0.11, 0.17 * w / 0.66, (shoulder_z - hip_z) / 2 + 0.04])
    phase = rng.uniform(-1, 1) if phase is None else phase
    stride = max(l - 2 * leg_r - 0.04, 0.05) * phase  # foot separation along x
    for side in (-1, 1):
        foot_x = side * stride / 2
        foot = (foot_x, side * hip_w * 1.1, leg_r)
        p.limb((0.0, side * hip_w, hip_z), foot, leg_r, Material.CLOTH_SKIN)
        hand_x = -side * stride * 0.35
        hand_y = side * (w / 2 - arm_r)
        p.limb((0.0, side * (torso_half[1] + arm_r), shoulder_z - 0.03), (hand_x, hand_y, hip_z - 0.02), arm_r,
               Material.CLOTH_SKIN)
    p.box((0.0, 0.0, (hip_z + shoulder_z) / 2), torso_half, Material.CLOTH_SKIN)
    p.ellipsoid((0.0, 0.0, h - head_r * 1.1), (head_r, head_r * 0.9, head_r * 1.1), Material.CLOTH_SKIN)
    return p


SPOKED_WHEEL_SEGMENTS = 16


def bicycle_frame(p: PartList, l: float, w: float, spoked: bool = False) -> dict:
    """Wheels, frame tubes and handlebar of a bicycle of length l and bar width w; returns its key points.

    spoked (SceneConfig.spoked_wheels): each wheel is its tyre (a ring of short tubes) and hub, open between them as a
    spoked wheel is (2 mm spokes return almost nothing); otherwise a solid disc."""
    wheel_r = min(0.34, (l - 0.05) / 5.1)
    wheel_x = l / 2 - wheel_r
    for x in (-wheel_x, wheel_x):
        if not spoked:
            p.cylinder((x, 0.0, wheel_r), wheel_r, 0.025, Material.TYRE, rotation=rot_x(np.pi / 2))
            continue
        tyre_r = 0.022
        angles = np.linspace(0.0, 2 * np.pi, SPOKED_WHEEL_SEGMENTS + 1)
        ring = np.c_[x + (wheel_r - tyre_r) * np.cos(angles), np.zeros_like(angles),
                     wheel_r + (wheel_r - tyre_r) * np.sin(angles)]
        for a, b in zip(ring[:-1], ring[1:]):
            p.limb(a, b, tyre_r, Material.TYRE)
        p.cylinder((x, 0.0, wheel_r), 0.045, 0.05, Material.METAL, rotation=rot_x(np.pi / 2))
    crank = (-0.05, 0.0, wheel_r)
    saddle = (-wheel_x * 0.45, 0.0, wheel_r + 0.55)
    head_tube = (wheel_x * 0.75, 0.0, wheel_r + 0.45)
    bar_z = wheel_r + 0.62
    for a, b in ((crank, saddle), (crank, head_tube), (saddle, head_tube), ((-wheel_x, 0, wheel_r), crank),
                 ((wheel_x, 0, wheel_r), (head_tube[0] - 0.05, 0, bar_z))):
        p.limb(a, b, 0.02, Material.METAL)
    p.limb((head_tube[0] - 0.05, -(w / 2 - 0.02), bar_z), (head_tube[0] - 0.05, w / 2 - 0.02, bar_z), 0.02,
           Material.METAL)
    return {"crank": crank, "saddle": saddle, "head_tube": head_tube, "bar_z": bar_z}


def cyclist_parts(l: float, w: float, h: float, rng: np.random.Generator, spoked: bool = False) -> PartList:
    """Bicycle (two wheels, frame, handlebar) plus a rider (legs, torso, arms, head); spoked: see bicycle_frame."""
    p = PartList()
    frame = bicycle_frame(p, l, w, spoked)
    crank, saddle, head_tube, bar_z = frame["crank"], frame["saddle"], frame["head_tube"], frame["bar_z"]
    # rider
    hip = np.array([saddle[0], 0.0, saddle[2] + 0.08])
    shoulder_z = h - 0.32
    lean = rng.uniform(0.25, 0.45)
    shoulder = np.array([hip[0] + lean, 0.0, shoulder_z])
    torso_c = (hip + shoulder) / 2
    torso_axis = shoulder - hip
    tilt = np.arctan2(torso_axis[0], torso_axis[2])
    p.box(torso_c, (0.11, 0.17, np.linalg.norm(torso_axis) / 2 + 0.03), Material.CLOTH_SKIN, rotation=rot_y(tilt))
    p.ellipsoid((shoulder[0] + 0.08, 0.0, h - 0.12), (0.11, 0.1, 0.12), Material.CLOTH_SKIN)
    pedal = rng.uniform(-1, 1) * 0.17
    for side in (-1, 1):
        knee = (hip[0] + 0.35, side * 0.12, hip[2] - 0.1 + side * pedal * 0.5)
        foot = (crank[0] + side * pedal, side * 0.12, crank[2] + side * pedal * 0.4)
        p.limb(hip + (0, side * 0.1, 0), knee, 0.065, Material.CLOTH_SKIN)
        p.limb(knee, foot, 0.055, Material.CLOTH_SKIN)
        p.limb(shoulder + (0, side * 0.2, 0), (head_tube[0] - 0.08, side * 0.25, bar_z + 0.03), 0.04,
               Material.CLOTH_SKIN)
    return p


def tree_parts(rng: np.random.Generator) -> PartList:
    trunk_h = rng.uniform(1.8, 3.5)
    crown_r = rng.uniform(1.2, 3.0)
    p = PartList().cylinder((0, 0, trunk_h / 2), rng.uniform(0.1, 0.25), trunk_h / 2, Material.WOOD)
    p.ellipsoid((0, 0, trunk_h + crown_r * 0.8), (crown_r, crown_r, crown_r * rng.uniform(0.9, 1.4)),
                Material.VEGETATION)
    return p


def pole_parts(rng: np.random.Generator) -> PartList:
    h = rng.uniform(3.0, 8.0)
    p = PartList().cylinder((0, 0, h / 2), rng.uniform(0.05, 0.12), h / 2, Material.METAL)
    if rng.random() < 0.5:  # traffic sign or lamp head
        p.box((0, 0, h - 0.4), (0.03, 0.35, 0.35), Material.METAL)
    return p


def bush_parts(rng: np.random.Generator) -> PartList:
    r = rng.uniform(0.4, 1.2)
    return PartList().ellipsoid((0, 0, r * 0.6), (r * rng.uniform(1, 2.5), r, r * 0.8), Material.VEGETATION)


def clutter_parts(rng: np.random.Generator) -> PartList:
    """Bins, boxes, bollards, benches: unlabelled, to teach the detector what is not an object."""
    choice = rng.integers(4)
    p = PartList()
    if choice == 0:  # wheelie bin
        p.box((0, 0, 0.5), (0.3, 0.3, 0.5), Material.PLASTIC)
    elif choice == 1:  # round bin
        p.cylinder((0, 0, 0.45), 0.3, 0.45, Material.METAL)
    elif choice == 2:  # bollards
        for y in (-1.0, 0.0, 1.0):
            p.cylinder((0, y, 0.45), 0.08, 0.45, Material.METAL)
    else:  # crate / bench
        l, w, h = rng.uniform(0.5, 2.0), rng.uniform(0.4, 0.8), rng.uniform(0.4, 1.0)
        p.box((0, 0, h / 2), (l / 2, w / 2, h / 2), Material.WOOD)
    return p
