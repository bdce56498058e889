"""Terrain: a gently sloped, undulating road surface, raised pavements beyond the kerbs, markings.

Two smooth height fields (road, and road + kerb height) are intersected by Newton iterations; a hit counts on
the surface whose lateral band contains it. The kerb's vertical faces are box primitives placed by the scene.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.sim.shapes import ALBEDO, Material


@dataclass(frozen=True)
class Ground:
    base: float  # road height under the sensor (-mount height)
    slope: tuple[float, float]  # dz/dx, dz/dy
    undulation: np.ndarray  # (K, 4): amplitude, kx, ky, phase
    road_heading: float  # radians; the road runs along (cos, sin)
    road_centre: float  # lateral offset of the road centre line from the sensor (m)
    n_lanes: int
    lane_width: float
    kerb_height: float
    pavement_width: float
    camber: float = 0.0  # cross-fall of the road from its crown to the kerbs (dz / du), e.g. 0.02
    # a crossing street (an intersection): road surface without kerb across |along - cross_centre| < half width
    cross_centre: float = 0.0
    cross_half_width: float = 0.0  # 0: no intersection


    @property
    def road_half_width(self) -> float:
        return self.n_lanes * self.lane_width / 2

    def along(self, x, y):
        return np.cos(self.road_heading) * x + np.sin(self.road_heading) * y

    def lateral(self, x, y):
        """Signed distance from the road centre line (positive to the left of the road direction)."""
        return -np.sin(self.road_heading) * x + np.cos(self.road_heading) * y - self.road_centre

    def in_cross_street(self, x, y):
        """True where (x, y) lies on the crossing street's band (never when there is none)."""
        if self.cross_half_width <= 0:
            return np.zeros(np.shape(x), bool)
        return np.abs(self.along(x, y) - self.cross_centre) < self.cross_half_width

    def crosses(self, s0: float, s1: float) -> bool:
        """Whether the along-road interval [s0, s1] meets the crossing street."""
        return self.cross_half_width > 0 and s0 < self.cross_centre + self.cross_half_width and \
            s1 > self.cross_centre - self.cross_half_width

    def to_world(self, s, u):
        """(along, lateral) road coordinates -> (x, y)."""
        c, si = np.cos(self.road_heading), np.sin(self.road_heading)
        u = np.asarray(u) + self.road_centre
        return c * s - si * u, si * s + c * u

    def road_height(self, x, y):
        z = self.base + self.slope[0] * x + self.slope[1] * y
        for a, kx, ky, ph in self.undulation:  # a couple of waves
            z = z + a * (np.sin(kx * x + ky * y + ph) - np.sin(ph))
        if self.camber:  # zero under the sensor, falling towards the kerbs (the crown is at the centre line)
            z = z - self.camber * (np.minimum(np.abs(self.lateral(x, y)), self.road_half_width)
                                   - min(abs(self.road_centre), self.road_half_width))
        return z

    def height(self, x, y):
        """Surface height including the raised pavement."""
        raised = (np.abs(self.lateral(x, y)) > self.road_half_width) & ~self.in_cross_street(x, y)
        return self.road_height(x, y) + self.kerb_height * raised

    def _gradient(self, x, y):
        gx, gy = self.slope[0] + 0 * x, self.slope[1] + 0 * y
        for a, kx, ky, ph in self.undulation:
            c = a * np.cos(kx * x + ky * y + ph)
            gx, gy = gx + c * kx, gy + c * ky
        if self.camber:
            u = self.lateral(x, y)
            fall = -self.camber * np.sign(u) * (np.abs(u) < self.road_half_width)
            gx, gy = gx + fall * -np.sin(self.road_heading), gy + fall * np.cos(self.road_heading)
        return gx, gy

    def intersect(self, directions: np.ndarray, max_range: float, iterations: int = 3,
                  origin_z: np.ndarray | None = None):
        """Rays from the origin (or from (0, 0, origin_z) per ray) -> (t (R,), inf where none; cos of incidence (R,);
        material (R,) int8)."""
        with np.errstate(invalid="ignore", divide="ignore"):  # rays that miss carry inf/nan until masked
            return self._intersect(directions, max_range, iterations, origin_z)

    def _intersect(self, directions: np.ndarray, max_range: float, iterations: int, origin_z: np.ndarray | None):
        n = len(directions)
        best = np.full(n, np.inf)
        denom = directions[:, 2] - self.slope[0] * directions[:, 0] - self.slope[1] * directions[:, 1]
        # only rays that meet the sloped base plane within reach (with headroom for undulation and the kerb)
        candidates = np.flatnonzero((denom < -1e-6) & ((self.base - 0.5) / np.minimum(denom, -1e-6) < max_range * 1.2))
        dx, dy, dz = directions[candidates].T
        z0 = 0.0 if origin_z is None else origin_z[candidates]
        for offset, on_pavement in ((0.0, False), (self.kerb_height, True)):
            t = (self.base + offset - z0) / denom[candidates]
            for _ in range(iterations):
                x, y = t * dx, t * dy
                f = z0 + t * dz - self.road_height(x, y) - offset
                gx, gy = self._gradient(x, y)
                t = t - f / (dz - gx * dx - gy * dy)
            x, y = t * dx, t * dy
            outside = (np.abs(self.lateral(x, y)) > self.road_half_width) & ~self.in_cross_street(x, y)
            ok = np.isfinite(t) & (t > 0) & (t < max_range) & (outside == on_pavement)
            chosen = candidates[ok & (t < best[candidates])]
            best[chosen] = t[ok & (t < best[candidates])]
        cos = np.zeros(n)
        material = np.zeros(n, np.int8)
        hit = np.flatnonzero(np.isfinite(best))
        x, y = best[hit] * directions[hit, 0], best[hit] * directions[hit, 1]
        gx, gy = self._gradient(x, y)
        cos[hit] = np.abs(-gx * directions[hit, 0] - gy * directions[hit, 1] + directions[hit, 2]) / np.sqrt(
            gx**2 + gy**2 + 1.0)
        material[hit] = self.material_at(x, y)
        return best, cos, material

    def material_at(self, x, y) -> np.ndarray:
        s, u = self.along(x, y), self.lateral(x, y)
        hw = self.road_half_width
        material = np.where((np.abs(u) <= hw) | self.in_cross_street(x, y), Material.ROAD,
                            np.where(np.abs(u) <= hw + self.pavement_width, Material.PAVEMENT, Material.TERRAIN))
        # edge lines (solid, 0.3 m in from the kerb) and dashed lane separators (3 m painted, 6 m gap)
        edge = np.abs(np.abs(u) - (hw - 0.3)) < 0.075
        lane_pos = (u + hw) / self.lane_width
        near_sep = (np.abs(lane_pos - np.round(lane_pos)) * self.lane_width < 0.075) & (np.abs(u) < hw - 1.0)
        dashed = near_sep & (np.mod(s, 9.0) < 3.0)
        return np.where(edge | dashed, Material.MARKING, material).astype(np.int8)


def ground_albedo(material: np.ndarray) -> np.ndarray:
    return ALBEDO[material]
