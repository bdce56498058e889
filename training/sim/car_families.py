"""Car body families (realistic preset, SceneConfig.car_families): sedan, hatchback, estate, SUV and van.

Real streets hold cars of very different profiles; a detector that saw one generic car shape misses the others.
Each family has its own size statistics (tight box, mirrors included; the mix of the four car families keeps KITTI's
mean Car box, about 3.9 x 1.6 x 1.5 m) and its own silhouette: where the cabin starts and ends, how high the belt
line and the ground clearance are, whether the rear is a boot, a hatch or a long roof. Every family carries number
plates and lamp reflectors (retroreflective: the few very bright returns on a real car) and may be painted dark.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from training.sim.shapes import Material, PartList, rot_x, rot_y


class Family(NamedTuple):
    label: str  # KITTI class written to the label file
    weight: float  # share among the cars of a scene (van: the scene's van_fraction instead)
    size_mean: tuple[float, float, float]  # (l, w, h) of the tight box, m
    size_std: tuple[float, float, float]
    belt: tuple[float, float]  # belt line height as a fraction of the height above the clearance
    clearance: tuple[float, float]  # m
    cabin_front: tuple[float, float]  # front of the cabin (base of the windscreen) as a fraction of l from the back
    cabin_rear: tuple[float, float]  # rear of the cabin, fraction of l from the back (0 = the tail)
    rake_deg: tuple[float, float]  # windscreen rake from vertical
    rear_rake_deg: tuple[float, float]  # rear window rake from vertical (0: upright tailgate)


FAMILIES: dict[str, Family] = {
    "sedan": Family("Car", 0.30, (4.15, 1.66, 1.42), (0.25, 0.06, 0.05), (0.50, 0.56), (0.14, 0.18),
                    (0.68, 0.74), (0.20, 0.26), (55, 62), (50, 60)),
    "hatchback": Family("Car", 0.35, (3.70, 1.62, 1.48), (0.25, 0.06, 0.06), (0.48, 0.55), (0.14, 0.18),
                        (0.66, 0.72), (0.04, 0.08), (55, 62), (25, 40)),
    "estate": Family("Car", 0.15, (4.30, 1.68, 1.48), (0.20, 0.05, 0.05), (0.48, 0.54), (0.14, 0.18),
                     (0.68, 0.73), (0.03, 0.06), (55, 62), (10, 20)),
    "suv": Family("Car", 0.20, (4.15, 1.76, 1.68), (0.30, 0.07, 0.08), (0.52, 0.58), (0.20, 0.26),
                  (0.70, 0.76), (0.03, 0.06), (50, 58), (10, 20)),
    "van": Family("Van", 0.0, (4.90, 1.90, 2.05), (0.40, 0.08, 0.15), (0.40, 0.46), (0.16, 0.22),
                  (0.80, 0.86), (0.02, 0.04), (30, 40), (0, 6)),
}
CAR_FAMILIES = tuple(name for name, fam in FAMILIES.items() if fam.weight > 0)
DARK_PAINT = (0.03, 0.08)  # albedo range of black / dark grey paint
PAINT = (0.17, 0.07)  # albedo mean and std of other paint


def sample_family(name: str, rng: np.random.Generator) -> str:
    """A family for an object of KITTI class `name` ("Car" -> one of the car families by weight, "Van" -> van)."""
    if name == "Van":
        return "van"
    weights = np.array([FAMILIES[f].weight for f in CAR_FAMILIES])
    return str(CAR_FAMILIES[int(rng.choice(len(CAR_FAMILIES), p=weights / weights.sum()))])


def family_size(family: str, rng: np.random.Generator) -> tuple[float, float, float]:
    fam = FAMILIES[family]
    mean, std = np.array(fam.size_mean), np.array(fam.size_std)
    l, w, h = np.clip(rng.normal(mean, std), mean - 2.5 * std, mean + 2.5 * std)
    return float(l), float(w), float(h)


def family_parts(family: str, rng: np.random.Generator, dark_fraction: float = 0.0,
                 bonnet_drop: tuple[float, float] = (0.0, 0.0)) -> PartList:
    """A car of `family` with origin at the bottom centre, x forward; its tight box is (l, w, h) of family_size.

    bonnet_drop (m, drawn uniformly; (0, 0) = off, nothing drawn): the bonnet falls by this much from the base of the
    windscreen to the nose, in three steps. Without it the lower body is one box, as high at the nose as at the tail,
    and a sedan (cabin near the middle, raked glass both ends) is the same seen from the front and from behind:
    models trained on it turn 29 % of the low cars they find. Trained on once, the step did not measurably lower that
    (docs/SIMULATOR.md, SceneConfig.bonnet_drop)."""
    fam = FAMILIES[family]
    l, w, h = family_size(family, rng)
    u = lambda lo_hi: float(rng.uniform(*lo_hi))  # noqa: E731
    # real car paint is glossy: most of the light is reflected away, so it reads darker than KITTI's old default
    dark = rng.random() < dark_fraction
    paint = {Material.CAR_PAINT: u(DARK_PAINT) if dark else float(np.clip(rng.normal(*PAINT), 0.06, 0.45))}
    p = PartList(albedo=paint)
    mirror = 0.09
    body_w = w - 2 * mirror
    clearance = u(fam.clearance)
    belt = clearance + (h - clearance) * u(fam.belt)
    wheel_r = float(np.clip(0.25 + 0.016 * l + (0.03 if family == "suv" else 0.0), 0.28, 0.38))
    wheelbase_half = l / 2 - (0.95 if family == "van" else 0.80)
    # cabin (greenhouse): glass sides with a painted roof; x measured from the tail
    x_front = -l / 2 + l * u(fam.cabin_front)
    drop = u(bonnet_drop) if bonnet_drop[1] > 0 else 0.0
    # lower body up to the belt line (the bonnet in three falling steps when drop > 0), a sill strip below it (the
    # body is narrower at the bottom)
    base = clearance + 0.10
    sections = [(-l / 2, x_front if drop > 0 else l / 2, belt)]
    if drop > 0:
        edges = np.linspace(x_front, l / 2, 4)
        sections += [(edges[i], edges[i + 1], belt - drop * (i + 1) / 3) for i in range(3)]
    for x0, x1, top in sections:
        p.box(((x0 + x1) / 2, 0.0, (base + top) / 2), ((x1 - x0) / 2, body_w / 2, (top - base) / 2), Material.CAR_PAINT)
    p.box((0.0, 0.0, clearance + 0.05), (l / 2 - 0.15, body_w / 2 - 0.05, 0.05), Material.CAR_PAINT)
    x_rear = -l / 2 + l * u(fam.cabin_rear)
    cabin_h = h - belt
    cabin_w = body_w * rng.uniform(0.82, 0.90)
    rake, rear_rake = np.deg2rad(u(fam.rake_deg)), np.deg2rad(u(fam.rear_rake_deg))
    # the roof spans between the tops of the raked windscreen and rear window
    roof_front = x_front - cabin_h * np.tan(rake)
    roof_rear = x_rear + cabin_h * np.tan(rear_rake)
    roof_front = max(roof_front, roof_rear + 0.4)
    p.box(((roof_front + roof_rear) / 2, 0.0, belt + cabin_h / 2), ((roof_front - roof_rear) / 2, cabin_w / 2,
          cabin_h / 2), Material.GLASS)
    p.box(((roof_front + roof_rear) / 2, 0.0, h - 0.035), ((roof_front - roof_rear) / 2, cabin_w / 2, 0.035),
          Material.CAR_PAINT)
    # seats and headrests behind the glass (rays through a window return from them)
    seat_top = belt + cabin_h * 0.55
    p.box(((roof_front + roof_rear) / 2, 0.0, (belt - 0.1 + seat_top) / 2),
          ((roof_front - roof_rear) / 2 - 0.1, cabin_w / 2 - 0.08, (seat_top - belt + 0.1) / 2), Material.CLOTH_SKIN)
    # raked windscreen and rear window: thin slabs from the belt line to the roof edge
    for x_base, x_top, tilt in ((x_front, roof_front, rake), (x_rear, roof_rear, -rear_rake)):
        slab = np.hypot(x_base - x_top, cabin_h)
        if slab > cabin_h + 0.02:
            p.box(((x_base + x_top) / 2, 0.0, belt + cabin_h / 2), (0.02, cabin_w / 2 - 0.02, slab / 2 - 0.02),
                  Material.GLASS, rotation=rot_y(-tilt))
    for sx in (-1, 1):
        for sy in (-1, 1):
            p.cylinder((sx * wheelbase_half, sy * (body_w / 2 - 0.11 + 0.02), wheel_r), wheel_r, 0.11,
                       Material.TYRE, rotation=rot_x(np.pi / 2))
        p.box((x_front - 0.10, sx * (w / 2 - mirror / 2), belt + 0.10), (0.06, mirror / 2, 0.06), Material.CAR_PAINT)
    # plates (front and rear) and lamp reflectors at the four corners: flush with the body ends
    plate_z = clearance + 0.30
    for sx in (-1, 1):
        p.box((sx * (l / 2 - 0.01), 0.0, plate_z), (0.01, 0.26, 0.06), Material.RETROREFLECTOR)
        for sy in (-1, 1):
            p.box((sx * (l / 2 - 0.01), sy * (body_w / 2 - 0.12), belt - (drop if sx > 0 else 0.0) - 0.10),
                  (0.01, 0.10, 0.05), Material.RETROREFLECTOR)
    return p


def family_label(family: str) -> str:
    return FAMILIES[family].label
