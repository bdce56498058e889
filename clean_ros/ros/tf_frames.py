"""Which transforms one cloud needs: the detector node's frame settings resolved through TF at the cloud's stamp.

Node parameters (docs/NODE.md "Frames (TF)" and "Where the sensor is"):
    target_frame   frame the boxes are published in (e.g. base_link); empty = the cloud's own frame
    model_frame    frame the points are given to the model in (e.g. a virtual sensor frame at the mounting height
                   the model was trained for); empty = the cloud's frame, or the sensor_height mount when set
    tf_timeout_s   how long a lookup at the cloud's stamp may wait for TF to arrive
    sensor_height / sensor_pitch / sensor_roll   (no TF) clean_ros.inference.sensor_mount, applied by the Pipeline
    auto_sensor_mount   (no model_frame) the Pipeline's mount measured from the scans' ground; it changes as the
                   estimate comes in (none before the first scan that shows enough ground)

`FrameResolver.frames_for(input_frame, stamp)` returns the clean_ros.inference.sensor_mount.ModelFrames the
Pipeline applies (points -> model frame, boxes -> target frame), or None when nothing has to move. Without
model_frame the model frame is the Pipeline's sensor mount as it is when the cloud arrives (`mount_frames()`, read
per cloud: the automatic mount moves). A lookup that fails or times out raises FrameLookupError with one line saying
which transform and why; the node skips the frame.
At most two lookups per cloud: model <- input (only with model_frame) and target <- input (only with target_frame).
"""
from __future__ import annotations

from typing import Any, Callable

from clean_ros.inference.sensor_mount import ModelFrames
from clean_ros.ros.tf_buffer import TfBackend, transform_from_msg


class FrameLookupError(RuntimeError):
    """A transform the frame settings need is not available at the cloud's stamp."""


def validate_frame_settings(target_frame: str, model_frame: str, tf_timeout_s: float, sensor_mount,
                            auto_mount: bool = False) -> str | None:
    """A reason to refuse the combination, or None. auto_mount: auto_sensor_mount (the mount measured from the
    scans), a third way of saying where the model's sensor is; target_frame goes with any of them."""
    for name, value in (("target_frame", target_frame), ("model_frame", model_frame)):
        if value != value.strip() or any(c.isspace() for c in value):
            return f"{name} {value!r}: a frame id has no spaces"
    if not tf_timeout_s >= 0.0 or tf_timeout_s > 10.0:
        return f"tf_timeout_s = {tf_timeout_s!r}: must be in [0, 10] seconds (a lookup blocks the callback)"
    if model_frame and sensor_mount is not None:
        return ("model_frame and sensor_height are both set: they say the same thing twice (where the model's "
                "sensor is); use model_frame with TF, or sensor_height without")
    if auto_mount and (sensor_mount is not None or model_frame):
        given = "sensor_height" if sensor_mount is not None else "model_frame"
        return (f"auto_sensor_mount and {given} are both set: say where the sensor is once (auto_sensor_mount "
                f"measures it from the scans, {given} gives it); set auto_sensor_mount false or {given} "
                f"{'0' if sensor_mount is not None else 'empty'}")
    return None


class FrameResolver:
    """See the module docstring. `tf` is None when neither target_frame nor model_frame is set (no TF needed)."""

    def __init__(self, tf: TfBackend | None, target_frame: str, model_frame: str, tf_timeout_s: float,
                 mount_frames: Callable[[], ModelFrames | None] | None = None):
        """mount_frames: gives the Pipeline's sensor-mount transforms now (e.g. `lambda: pipeline.frames`; they
        return None while no mount is set); None: never a mount."""
        self.tf = tf
        self.target_frame = target_frame
        self.model_frame = model_frame
        self.tf_timeout_s = float(tf_timeout_s)
        self.mount_frames = mount_frames
        self._timeout = None
        if tf is not None and tf.name == "tf2_ros":
            from rclpy.duration import Duration

            self._timeout = Duration(nanoseconds=int(self.tf_timeout_s * 1e9))
        else:
            self._timeout = self.tf_timeout_s

    @property
    def uses_tf(self) -> bool:
        return bool(self.target_frame or self.model_frame)

    def output_frame(self, input_frame: str) -> str:
        """The frame_id the boxes of a cloud in input_frame are published in."""
        return self.target_frame or input_frame

    def _lookup(self, target: str, source: str, stamp: Any):
        from rclpy.time import Time

        when = Time.from_msg(stamp) if hasattr(stamp, "nanosec") else stamp
        try:
            return transform_from_msg(self.tf.buffer.lookup_transform(target, source, when, self._timeout))
        except self.tf.exception as error:
            raise FrameLookupError(f"no transform {source} -> {target} at the cloud's stamp "
                                   f"{_stamp_text(stamp)} within tf_timeout_s={self.tf_timeout_s:g} s: "
                                   f"{str(error).strip()}") from None
        except ValueError as error:  # a broken transform (zero quaternion) on /tf
            raise FrameLookupError(f"transform {source} -> {target}: {error}") from None

    def frames_for(self, input_frame: str, stamp: Any) -> ModelFrames | None:
        """ModelFrames for one cloud (see the module docstring); raises FrameLookupError."""
        frames = self.mount_frames() if self.mount_frames is not None else None
        if self.model_frame and self.model_frame != input_frame:
            model_from_input = self._lookup(self.model_frame, input_frame, stamp)
            frames = ModelFrames(model_from_input, model_from_input.inverse())
        if self.target_frame and self.target_frame != input_frame:
            frames = (frames or ModelFrames.identity()).with_output(self._lookup(self.target_frame, input_frame,
                                                                                 stamp))
        return frames


def _stamp_text(stamp: Any) -> str:
    if hasattr(stamp, "nanosec"):
        return f"{int(stamp.sec)}.{int(stamp.nanosec):09d}"
    return str(stamp)


__all__ = ["FrameLookupError", "FrameResolver", "validate_frame_settings"]
