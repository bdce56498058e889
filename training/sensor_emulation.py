"""Real scans as another sensor would have seen them: the real-data check's --emulate-sensor.

    emulation = SensorEmulation.parse("height=0.5,pitch=0.02,beams=32,intensity=0.6")
    points = emulation.apply(points, rng)                    # the scan as the emulated sensor records it
                                                             # (= remount(resample(points, rng)))
    boxes = emulation.boxes_to_scan_frame(detections.boxes)  # detections back into the real scan's frame

It stands in for "a real scan from a sensor mounted differently" when none is at hand. Keys (all optional):

    height     m the emulated sensor sits higher than the real one (negative: lower)
    pitch      rad, the emulated sensor's tilt, positive = nose down     } the SensorMount convention, so
    roll       rad, positive = left side up                              } --sensor-pitch / --sensor-roll undo it
    beams      keep this many laser rows (32 from a 64-row scan: every 2nd row); 0 = all
    intensity  multiply intensity (then clip to [0, 1]);  gamma: intensity ** gamma before the scale
    keep       keep each point with this probability (density)
    seed       of the point dropout (frame i uses (seed, i))

The steps, in this order, are the training augmentations of training/data/sensor_variation.py: laser rows from
the scan (`sensor_rows`: storage order of a raw KITTI scan, else elevation-angle peaks) -> `keep_rows` ->
`drop_points` -> `scale_intensity` -> `change_mounting`. The mounting is the exact inverse of what the Pipeline
applies for `--sensor-height H+height --sensor-pitch pitch --sensor-roll roll` (clean_ros.inference.sensor_mount,
with the real sensor at H = KITTI's 1.73 m), so giving the emulated mount as the documented setting undoes it; boxes
stay upright (the label convention). Detections come back to the real scan's frame (the Pipeline's own transform
for that setting), where the labels and their calibration apply.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from clean_ros.cloud.transforms import Transform, transform_boxes
from clean_ros.inference.sensor_mount import TRAINING_SENSOR_HEIGHT_M, SensorMount
from training.data.sensor_variation import change_mounting, drop_points, keep_rows, scale_intensity, sensor_rows

_KEYS = {"height": "height_shift", "pitch": "pitch", "roll": "roll", "beams": "beams", "intensity": "intensity_scale",
         "gamma": "intensity_gamma", "keep": "keep_fraction", "seed": "seed"}


class EmulationError(ValueError):
    """A bad --emulate-sensor value; the message names the key."""


@dataclass(frozen=True)
class SensorEmulation:
    height_shift: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    beams: int = 0
    intensity_scale: float = 1.0
    intensity_gamma: float = 1.0
    keep_fraction: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            self._mount()
        except ValueError as exc:
            raise EmulationError(f"--emulate-sensor: {exc}") from None
        if self.beams < 0:
            raise EmulationError(f"--emulate-sensor beams={self.beams}: must be >= 0 (0 = every row)")
        if self.intensity_scale < 0 or self.intensity_gamma <= 0:
            raise EmulationError(f"--emulate-sensor intensity={self.intensity_scale:g}, "
                                 f"gamma={self.intensity_gamma:g}: need intensity >= 0 and gamma > 0")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise EmulationError(f"--emulate-sensor keep={self.keep_fraction:g}: must be in (0, 1]")

    @classmethod
    def parse(cls, spec: str) -> "SensorEmulation":
        """'height=0.5,pitch=0.02,beams=32' -> SensorEmulation; unknown keys and bad numbers are EmulationErrors."""
        types = {f.name: f.type for f in fields(cls)}
        values: dict = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep or key not in _KEYS:
                raise EmulationError(f"--emulate-sensor {item!r}: expected KEY=VALUE with KEY one of "
                                     f"{', '.join(_KEYS)}")
            name = _KEYS[key]
            try:
                values[name] = int(text) if types[name] in ("int", int) else float(text)
            except ValueError:
                raise EmulationError(f"--emulate-sensor {key}={text!r}: not a number"
                                     + (" (an integer)" if types[name] in ("int", int) else "")) from None
        return cls(**values)

    def describe(self) -> str:
        parts = [f"{key}={getattr(self, name):g}" for key, name in _KEYS.items()
                 if getattr(self, name) != getattr(SensorEmulation, name)]
        return "emulated sensor: " + (", ".join(parts) if parts else "as scanned")

    # ------------------------------------------------------------------ mounting
    def _mount(self) -> SensorMount:
        return SensorMount(TRAINING_SENSOR_HEIGHT_M + self.height_shift, self.pitch, self.roll)

    def scan_from_emulated(self) -> Transform:
        """T(real scan frame <- emulated sensor frame): what `--sensor-height/pitch/roll` applies for this mount."""
        return self._mount().model_from_sensor(TRAINING_SENSOR_HEIGHT_M)

    # ------------------------------------------------------------------ applying
    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(N, 4) real scan -> the emulated sensor's (M, 4) scan, M <= N."""
        return self.remount(self.resample(points, rng))

    def resample(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(N, 4) real scan -> the (M, 4) points the emulated sensor records, still in the real scan's frame."""
        if self.beams:
            rows = sensor_rows(points)
            if self.beams >= rows.count:
                raise EmulationError(f"--emulate-sensor beams={self.beams}: the scan has only {rows.count} rows")
            points = keep_rows(points, rows.row, keep_every=max(1, int(round(rows.count / self.beams))))
        if self.keep_fraction < 1.0:
            points = drop_points(points, self.keep_fraction, rng)
        if self.intensity_scale != 1.0 or self.intensity_gamma != 1.0:
            points = scale_intensity(points, self.intensity_scale, self.intensity_gamma)
        return points

    def remount(self, points: np.ndarray) -> np.ndarray:
        """Points in the real scan's frame -> the emulated sensor's frame (the inverse of boxes_to_scan_frame)."""
        if self.scan_from_emulated().is_identity():
            return points
        return change_mounting(points, np.zeros((0, 7)), self.height_shift, self.pitch, self.roll,
                               sensor_height=TRAINING_SENSOR_HEIGHT_M)[0]

    def boxes_to_scan_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes in the emulated sensor's frame -> the real scan's frame (upright, yaw follows the heading)."""
        mounting = self.scan_from_emulated()
        if len(boxes) == 0 or mounting.is_identity():
            return boxes
        return transform_boxes(boxes, mounting).astype(boxes.dtype)


__all__ = ["SensorEmulation", "EmulationError"]
