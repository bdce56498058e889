"""Pedestrian variety (realistic preset, SceneConfig.pedestrian_variety): children, poses and carried things.

The default preset's pedestrians are adults walking or standing with the arms along the body, with thin limbs.
Real people wear clothes (thicker trousers and sleeves, often a coat), and real pavements also hold children, people standing still, and people with a shoulder bag, a backpack or a shopping bag, which change
the silhouette and the tight box (a backpack makes the box longer, a bag wider). Sizes of adults come from the
caller (KITTI's statistics); a child is 1.0-1.4 m tall.
"""
from __future__ import annotations

import numpy as np

from training.sim.shapes import Material, PartList, pedestrian_parts

POSES = ("walking", "standing", "backpack", "shoulder_bag", "carrying_bag")
CHILD_FRACTION = 0.12


def pedestrian_variant(adult_lwh: tuple[float, float, float], rng: np.random.Generator,
                       pose: str | None = None, full_stride: bool = False) -> tuple[PartList, str]:
    """(parts, pose) of one pedestrian; adult_lwh is an adult's (l, w, h) sampled by the caller.

    full_stride (SceneConfig.full_stride): a walking person's feet span the drawn length l instead of a random 50-100 %
    of it. l comes from KITTI's labelled lengths, whose spread already holds the gait phase; drawing a phase on top
    made the walkers' tight boxes a third shorter than KITTI's labels (docs/SIMULATOR.md)."""
    l, w, h = adult_lwh
    if rng.random() < CHILD_FRACTION:
        h = float(rng.uniform(1.0, 1.4))
        w, l = w * h / 1.76, l * h / 1.76
    pose = pose or str(rng.choice(POSES, p=[0.40, 0.25, 0.13, 0.12, 0.10]))
    if pose == "standing":
        phase = rng.uniform(-0.15, 0.15)
    else:
        side, fraction = rng.choice([-1, 1]), rng.uniform(0.5, 1.0)  # both drawn either way: same scenes after
        phase = side * (1.0 if full_stride else fraction)
    # clothes: trousers and sleeves thicker than the default limbs, a coat over torso and hips (real pedestrians
    # return about twice the default model's points at the same range)
    p = PartList(albedo={Material.CLOTH_SKIN: float(np.clip(rng.normal(0.32, 0.08), 0.08, 0.6))})
    p = pedestrian_parts(l, w, h, rng, phase=phase, parts=p, leg_r=rng.uniform(0.07, 0.095) * h / 1.76,
                         arm_r=rng.uniform(0.05, 0.065) * h / 1.76)
    if rng.random() < 0.6:
        p.ellipsoid((0.0, 0.0, 0.62 * h), (rng.uniform(0.13, 0.18), 0.2 * w / 0.66 + 0.02, 0.2 * h), Material.CLOTH_SKIN)
    if pose == "backpack":  # behind the torso, shoulder blades to waist
        p.box((-0.11 - 0.08, 0.0, 0.66 * h), (0.08, 0.14 * w / 0.66, 0.15 * h / 1.76), Material.CLOTH_SKIN)
    elif pose == "shoulder_bag":  # hanging at the hip on one side
        side = rng.choice([-1, 1])
        p.box((0.0, side * (w / 2 + 0.05), 0.52 * h), (0.14, 0.05, 0.12), Material.CLOTH_SKIN)
    elif pose == "carrying_bag":  # a shopping bag below one hand
        side = rng.choice([-1, 1])
        p.box((0.0, side * (w / 2 + 0.03), 0.36 * h), (0.17, 0.06, 0.16), Material.PLASTIC)
    return p, pose
