"""Exact, vectorised ray casting of a LiDAR ray grid against analytic primitives and the terrain.

Culling: each primitive's world bounding box gives a window of beams (elevation) and columns (azimuth) seen
from the sensor at the origin; only those (ray, primitive) pairs are intersected. Nearest hit wins, so occlusion
is real. The per-pair hits also tell which rays would reach each object if nothing else were there.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from training.sim.ground import Ground
from training.sim.sensor import RayGrid
from training.sim.shapes import ALBEDO, Kind, Material, Primitives, extents_along_axes

GROUND = -1  # hit_prim of a terrain return
NO_HIT = -2
_EPS = 1e-6


class Hits(NamedTuple):
    """Nearest hit of every ray of the grid, plus per-object ray counts for occlusion."""

    range: np.ndarray  # (R,) metres, inf where nothing was hit
    cos_incidence: np.ndarray  # (R,)
    hit_prim: np.ndarray  # (R,) primitive index, GROUND or NO_HIT
    owner: np.ndarray  # (R,) object index of the hit primitive, -1 otherwise
    material: np.ndarray  # (R,) int8
    albedo: np.ndarray  # (R,)
    unobstructed_rays: np.ndarray  # (n_objects,) rays that would hit the object if it were alone
    visible_rays: np.ndarray  # (n_objects,) rays whose nearest hit is the object


class Foliage(NamedTuple):
    """Vegetation is not a solid surface: a ray passes through a leaf-covered primitive with probability porosity,
    else it returns at an exponentially distributed depth inside it (mean depth m, at most 3x). That gives the
    scattered, volumetric returns of real bushes and crowns. porosity = depth = 0: solid (the default preset).
    glass_porosity: a ray passes through a window with this probability (and may return from the car's interior)."""

    porosity: float
    depth: float
    rng: np.random.Generator | None
    glass_porosity: float = 0.0


def _through_foliage(t: np.ndarray, material: np.ndarray, foliage: Foliage | None) -> np.ndarray:
    if foliage is None or (foliage.porosity <= 0 and foliage.depth <= 0 and foliage.glass_porosity <= 0):
        return t
    leafy = np.flatnonzero(material == Material.VEGETATION)
    t = t.copy()
    rng = foliage.rng
    if foliage.glass_porosity > 0:
        glass = np.flatnonzero(material == Material.GLASS)
        t[glass[rng.random(len(glass)) < foliage.glass_porosity]] = np.inf
    if foliage.porosity > 0:
        t[leafy[rng.random(len(leafy)) < foliage.porosity]] = np.inf
    if foliage.depth > 0:
        t[leafy] += np.minimum(rng.exponential(foliage.depth, len(leafy)), 3 * foliage.depth)
    return t


def candidate_pairs(prims: Primitives, grid: RayGrid, max_range: float,
                    origin_z_span: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """(ray index, primitive index) pairs whose rays can reach the primitive's bounding box.

    origin_z_span: (lowest, highest) height of the rays' origins above the sensor origin: a ray from (0, 0, h)
    meets a box where a ray from the origin meets the box lowered by h, so the box is stretched by that span.
    """
    n_cols = grid.n_columns
    if prims.count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ext = extents_along_axes(prims)
    lo, hi = prims.centre - ext, prims.centre + ext
    if origin_z_span != (0.0, 0.0):
        lo[:, 2] -= max(origin_z_span[1], 0.0)
        hi[:, 2] -= min(origin_z_span[0], 0.0)
    gap_x = np.maximum.reduce([lo[:, 0], -hi[:, 0], np.zeros(len(lo))])
    gap_y = np.maximum.reduce([lo[:, 1], -hi[:, 1], np.zeros(len(lo))])
    d_min = np.hypot(gap_x, gap_y)
    d_max = np.hypot(np.maximum(np.abs(lo[:, 0]), np.abs(hi[:, 0])), np.maximum(np.abs(lo[:, 1]), np.abs(hi[:, 1])))
    surrounds = d_min <= 0.0

    corner_x = np.stack([lo[:, 0], hi[:, 0], hi[:, 0], lo[:, 0]], 1)
    corner_y = np.stack([lo[:, 1], lo[:, 1], hi[:, 1], hi[:, 1]], 1)
    centre_az = np.arctan2(prims.centre[:, 1], prims.centre[:, 0])
    rel = np.angle(np.exp(1j * (np.arctan2(corner_y, corner_x) - centre_az[:, None])))
    az_lo, az_hi = centre_az + rel.min(1), centre_az + rel.max(1)
    step = 2 * np.pi / n_cols
    col_lo = np.ceil((az_lo + np.pi) / step - 0.5).astype(np.int64)
    n_col = np.floor((az_hi + np.pi) / step - 0.5).astype(np.int64) - col_lo + 1
    col_lo = np.where(surrounds, 0, col_lo)
    n_col = np.clip(np.where(surrounds, n_cols, n_col), 0, n_cols)

    el_hi = np.arctan2(hi[:, 2], np.where(hi[:, 2] > 0, d_min, d_max))
    el_lo = np.arctan2(lo[:, 2], np.where(lo[:, 2] > 0, d_max, d_min))
    beam_lo = np.searchsorted(grid.elevation, el_lo, "left")
    n_beam = np.searchsorted(grid.elevation, el_hi, "right") - beam_lo
    reachable = np.hypot(d_min, np.where(lo[:, 2] > 0, lo[:, 2], np.where(hi[:, 2] < 0, -hi[:, 2], 0))) < max_range
    counts = np.where(reachable, n_beam * n_col, 0)

    prim = np.repeat(np.arange(prims.count), counts)
    offset = np.arange(len(prim)) - np.repeat(np.cumsum(counts) - counts, counts)
    beam = beam_lo[prim] + offset // n_col[prim]
    col = (col_lo[prim] + offset % n_col[prim]) % n_cols
    return beam * n_cols + col, prim


def intersect_pairs(prims: Primitives, rays: np.ndarray, prim: np.ndarray, directions: np.ndarray,
                    origin_z: np.ndarray | None = None):
    """Distance along each (ray, primitive) pair (inf on a miss) and the cosine of incidence; rays start at the
    sensor origin, or at (0, 0, origin_z[ray])."""
    rot = prims.rotation[prim]
    d = np.einsum("nji,nj->ni", rot, directions[rays])  # ray direction in the primitive frame
    centre = prims.centre[prim]
    if origin_z is not None:
        centre = centre - np.stack([np.zeros(len(rays)), np.zeros(len(rays)), origin_z[rays]], 1)
    o = -np.einsum("nji,nj->ni", rot, centre)  # ray origin in the primitive frame
    size = prims.size[prim]
    kind = prims.kind[prim]
    t = np.full(len(rays), np.inf)
    cos = np.zeros(len(rays))
    with np.errstate(divide="ignore", invalid="ignore"):
        sel = kind == Kind.BOX
        if sel.any():
            t[sel], cos[sel] = _boxes(o[sel], d[sel], size[sel])
        sel = kind == Kind.CYLINDER
        if sel.any():
            t[sel], cos[sel] = _cylinders(o[sel], d[sel], size[sel])
        sel = kind == Kind.ELLIPSOID
        if sel.any():
            t[sel], cos[sel] = _ellipsoids(o[sel], d[sel], size[sel])
    return t, cos


def _boxes(o, d, half):
    inv = 1.0 / d
    t1, t2 = (-half - o) * inv, (half - o) * inv
    near = np.minimum(t1, t2)
    t_near, t_far = near.max(1), np.maximum(t1, t2).min(1)
    hit = (t_near <= t_far) & (t_near > _EPS)
    face = near.argmax(1)
    cos = np.abs(np.take_along_axis(d, face[:, None], 1)[:, 0])
    return np.where(hit, t_near, np.inf), cos


def _cylinders(o, d, size):
    r, hh = size[:, 0], size[:, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1])
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - r**2
    disc = b**2 - 4 * a * c
    t_side = (-b - np.sqrt(disc)) / (2 * a)
    z_side = o[:, 2] + t_side * d[:, 2]
    side_ok = (disc >= 0) & (a > 1e-12) & (t_side > _EPS) & (np.abs(z_side) <= hh)
    cap_z = np.where(o[:, 2] > 0, hh, -hh)
    t_cap = (cap_z - o[:, 2]) / d[:, 2]
    px, py = o[:, 0] + t_cap * d[:, 0], o[:, 1] + t_cap * d[:, 1]
    cap_ok = (t_cap > _EPS) & (px**2 + py**2 <= r**2) & (np.abs(o[:, 2]) > hh)
    t_side = np.where(side_ok, t_side, np.inf)
    t_cap = np.where(cap_ok, t_cap, np.inf)
    side_cos = np.abs((o[:, 0] + t_side * d[:, 0]) * d[:, 0] + (o[:, 1] + t_side * d[:, 1]) * d[:, 1]) / r
    cos = np.where(t_side <= t_cap, side_cos, np.abs(d[:, 2]))
    return np.minimum(t_side, t_cap), np.nan_to_num(cos)


def _ellipsoids(o, d, semi):
    os_, ds = o / semi, d / semi
    a = (ds**2).sum(1)
    b = 2 * (os_ * ds).sum(1)
    c = (os_**2).sum(1) - 1
    disc = b**2 - 4 * a * c
    t = (-b - np.sqrt(disc)) / (2 * a)
    ok = (disc >= 0) & (t > _EPS)
    normal = (o + t[:, None] * d) / semi**2
    cos = np.abs((normal * d).sum(1)) / np.linalg.norm(normal, axis=1)
    return np.where(ok, t, np.inf), np.nan_to_num(cos)


def cast(prims: Primitives, ground: Ground | None, grid: RayGrid, max_range: float, n_objects: int,
         foliage: Foliage | None = None, origin_z: np.ndarray | None = None) -> Hits:
    """origin_z: (R,) height of each ray's origin above the sensor origin (HDL-64 lasers sit above it), or None."""
    n_rays = len(grid.directions)
    span = (0.0, 0.0) if origin_z is None else (float(origin_z.min()), float(origin_z.max()))
    rays, prim = candidate_pairs(prims, grid, max_range, span)
    t, cos = intersect_pairs(prims, rays, prim, grid.directions, origin_z)
    t = _through_foliage(t, prims.material[prim], foliage)
    hit = t < max_range
    rays, prim, t, cos = rays[hit], prim[hit], t[hit], cos[hit]

    best_t = np.full(n_rays, np.inf)
    best_cos = np.zeros(n_rays)
    best_prim = np.full(n_rays, NO_HIT, np.int64)
    material = np.zeros(n_rays, np.int8)
    if ground is not None:
        g_t, g_cos, g_mat = ground.intersect(grid.directions, max_range, origin_z=origin_z)
        on_ground = np.isfinite(g_t)
        best_t[on_ground], best_cos[on_ground], best_prim[on_ground] = g_t[on_ground], g_cos[on_ground], GROUND
        material[on_ground] = g_mat[on_ground]
    albedo = np.where(best_prim == GROUND, ALBEDO[material], 0.0)

    # nearest primitive hit per ray: sort by (ray, t), keep the first of each ray
    order = np.lexsort((t, rays))
    first = order[np.r_[True, rays[order][1:] != rays[order][:-1]]] if len(order) else order
    closer = t[first] < best_t[rays[first]]
    win = first[closer]
    best_t[rays[win]], best_cos[rays[win]], best_prim[rays[win]] = t[win], cos[win], prim[win]
    material[rays[win]] = prims.material[prim[win]]
    albedo[rays[win]] = prims.albedo[prim[win]]

    owner = np.where(best_prim >= 0, prims.owner[np.maximum(best_prim, 0)], -1)
    pair_owner = prims.owner[prim]
    mine = pair_owner >= 0
    unique_pairs = np.unique(pair_owner[mine].astype(np.int64) * n_rays + rays[mine])
    unobstructed = np.bincount(unique_pairs // n_rays, minlength=n_objects)[:n_objects]
    visible = np.bincount(owner[owner >= 0], minlength=n_objects)[:n_objects]
    return Hits(best_t, best_cos, best_prim, owner, material, albedo, unobstructed, visible)
