"""Where the sensor is, without TF: one setting, applied the same way by the node, infer, replay and the Pipeline.

A model learns the ground at the height its training sensor was mounted (KITTI's HDL-64: 1.73 m above the road).
A LiDAR mounted higher or lower, or tilted, shows the model a ground plane where it never saw one. `SensorMount`
says where the real sensor is:

    height  metres above the ground under the sensor (> 0)
    pitch   radians about the sensor's y axis (REP 103: positive = the x axis tilted down, "nose down")
    roll    radians about the sensor's x axis (positive = the left side (+y) up)

`ModelFrames.from_mount(mount, training_height)` gives the two transforms the Pipeline applies around the model:
points go from the sensor frame into a *virtual, level sensor at the training height* (rotate by roll and pitch,
then shift z by height - training_height), and boxes come back by the inverse, so detections are reported in the
frame the points were given in. The bundle records its training height (manifest field `sensor_height`, see
docs/BUNDLE.md; bundles without it are KITTI-like: 1.73 m).

The same `ModelFrames` type carries the node's TF case (model_frame / target_frame, clean_ros/ros/tf_frames.py):
model_from_input = T(model <- input), output_from_model = T(output <- model).
Boxes have no roll or pitch (clean_ros/cloud/transforms.py): moved back into a tilted sensor frame they stay upright.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from clean_ros.cloud.transforms import Transform

# KITTI's Velodyne HDL-64E is 1.73 m above the road; the simulator mounts its sensor there too.
TRAINING_SENSOR_HEIGHT_M = 1.73
MAX_TILT_RAD = math.radians(45.0)  # beyond this, a level-ground model sees walls, not ground: refuse it


@dataclass(frozen=True)
class SensorMount:
    """The real sensor's height above the ground and its tilt (see the module docstring); validated on creation."""

    height: float
    pitch: float = 0.0
    roll: float = 0.0

    def __post_init__(self) -> None:
        for name in ("height", "pitch", "roll"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"sensor_{name} = {value!r}: must be a finite number")
        if not 0.0 < self.height <= 100.0:
            raise ValueError(f"sensor_height = {self.height!r}: must be the sensor's height above the ground in "
                             "metres, > 0 and <= 100 (0 = not set: points are given to the model as they are)")
        for name in ("pitch", "roll"):
            if abs(getattr(self, name)) > MAX_TILT_RAD:
                raise ValueError(f"sensor_{name} = {getattr(self, name)!r} rad: the tilt must be within +-"
                                 f"{MAX_TILT_RAD:.4f} rad (45 degrees); angles are in radians")

    @classmethod
    def from_settings(cls, height: float, pitch: float = 0.0, roll: float = 0.0) -> "SensorMount | None":
        """None when height is 0 (the setting is off; pitch and roll must then be 0 too), else a validated mount."""
        if isinstance(height, (int, float)) and not isinstance(height, bool) and height == 0.0:
            if pitch or roll:
                raise ValueError("sensor_pitch / sensor_roll are set but sensor_height is 0: give the sensor's "
                                 "height above the ground too")
            return None
        return cls(height, pitch, roll)

    def level_from_sensor(self) -> Transform:
        """T(level frame at the sensor, z up <- sensor frame): the sensor's tilt only."""
        return Transform.from_euler(roll=self.roll, pitch=self.pitch, yaw=0.0)

    def model_from_sensor(self, training_height: float = TRAINING_SENSOR_HEIGHT_M) -> Transform:
        """T(virtual level sensor at training_height <- this sensor)."""
        level = self.level_from_sensor()
        return Transform(level.rotation, level.translation + (0.0, 0.0, self.height - float(training_height)))

    def describe(self) -> str:
        return (f"sensor {self.height:g} m above the ground, pitch {self.pitch:g} rad, roll {self.roll:g} rad")


class ModelFrames(NamedTuple):
    """The transforms around the model: points (input frame) -> model frame, boxes (model frame) -> output frame."""

    model_from_input: Transform
    output_from_model: Transform

    @classmethod
    def identity(cls) -> "ModelFrames":
        return cls(Transform.identity(), Transform.identity())

    @classmethod
    def from_mount(cls, mount: SensorMount, training_height: float = TRAINING_SENSOR_HEIGHT_M) -> "ModelFrames":
        """Points into the virtual sensor at training_height, boxes back into the sensor frame."""
        to_model = mount.model_from_sensor(training_height)
        return cls(to_model, to_model.inverse())

    def with_output(self, new_output_from_output: Transform) -> "ModelFrames":
        """The same model frame, boxes carried one step further (e.g. from the sensor frame to target_frame)."""
        return ModelFrames(self.model_from_input, new_output_from_output.compose(self.output_from_model))


__all__ = ["SensorMount", "ModelFrames", "TRAINING_SENSOR_HEIGHT_M", "MAX_TILT_RAD"]
