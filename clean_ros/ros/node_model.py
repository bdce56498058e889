"""The detector node's model, from load to free: torch threads, the bundle's Pipeline (loaded and verified, backend
choice logged), warm-up, the input contract, the frames (sensor mount, TF), and freeing it all again.

Automatic intensity (the auto_intensity parameter) is set on the Pipeline after the warm-up (whose synthetic cloud
must not count as a scan of the sensor); while it is on, the input contract does not check the intensity's range.
The ground watch (ground_check) and the automatic sensor mount (auto_sensor_mount) are set after the warm-up and the
sensor mount (setting a mount would end the automatic one); the FrameResolver reads the Pipeline's mount per cloud,
since the automatic one moves as the estimate comes in.

NodeModel is a mixin of clean_ros.ros.detector_node.DetectorCore, so the plain node runs it in its constructor and
the lifecycle node (clean_ros.ros.lifecycle_node) in configure (``_load_model``) and cleanup (``_free_model``). It
reads the node's static parameters (``self.params``, ``backend_requested``, ``device``, ``num_threads``, ``int8``) and sets
``pipeline``, ``bundle_path``, ``backend_reason``, ``class_names``, ``point_features``, ``contract``, ``tf`` and
``frames``. Every start-up failure is one StartupError line (the node prints it as FATAL, exit status 2; the
lifecycle node fails the transition with it).
"""
from __future__ import annotations

import time

from clean_ros.inference.ground_plane import BAND_M, DEFAULT_WINDOW, GROUND_EVERY, WARM_FITS
from clean_ros.inference.intensity_level import LEVEL_RANGE_M
from clean_ros.inference.sensor_mount import SensorMount
from clean_ros.package_share import default_bundle_path
from clean_ros.ros.node_parameters import StartupError
from clean_ros.ros.tf_buffer import create_tf
from clean_ros.ros.tf_frames import FrameResolver, validate_frame_settings


def feature_names(features) -> list[str]:
    """The bundle's point features (names, dicts with a "name", or objects with .name) as names, in order."""
    names = []
    for f in features:
        if isinstance(f, str):
            names.append(f)
        elif isinstance(f, dict):
            names.append(str(f["name"]))
        else:
            names.append(str(getattr(f, "name", f)))
    return names


class NodeModel:
    """The model's life inside the node (see the module docstring)."""

    def _load_model(self) -> None:
        """Load and verify the bundle, declare its post-processing parameters, warm up (StartupError if not)."""
        self._set_torch_threads(self.num_threads)
        self.pipeline, self.bundle_path = self._load_pipeline(self._pipeline_factory)
        self.class_names = tuple(self.pipeline.class_names)
        self.point_features = tuple(feature_names(self.pipeline.point_features))
        self._declare_postprocess_parameters()
        self._warm_up(self.params.get("warmup_iterations"))
        self._start_auto_intensity(self.params.get("auto_intensity"))  # after warm-up: its cloud is no sensor's
        self.contract = self._input_contract()
        self.contract_pending = True
        self._start_frames()
        self._start_ground(self.params.get("ground_check"), self.params.get("auto_sensor_mount"))

    def _start_auto_intensity(self, enabled: bool) -> None:
        """The auto_intensity parameter on the Pipeline: each scan's intensity scaled to the bundle's training level
        (clean_ros.inference.intensity_level). A bundle that records no level (or a model without intensity) leaves
        it off with a warning; the node runs on with the intensity as given times intensity_scale."""
        reason = self.pipeline.set_auto_intensity(bool(enabled))
        if reason is not None:
            self.get_logger().warning(f"{reason}; the intensity is used as given times intensity_scale="
                                      f"{self.intensity_scale:g}")
        elif not enabled:
            self.get_logger().info(f"automatic intensity off (auto_intensity false): the intensity as given times "
                                   f"intensity_scale={self.intensity_scale:g}")
        else:
            auto = self.pipeline.auto_intensity
            self.get_logger().info(
                f"automatic intensity on: each scan's intensity is scaled to the bundle's training level "
                f"{auto.training_level:.3g} (median intensity of the returns {LEVEL_RANGE_M[0]:g}-{LEVEL_RANGE_M[1]:g}"
                f" m away, running median of the last {auto.levels.maxlen} scans); diagnostics key intensity_factor")

    def _read_frame_settings(self) -> tuple[str, str, float, SensorMount | None]:
        """(target_frame, model_frame, tf_timeout_s, sensor mount), checked together (StartupError if not)."""
        read = self.params.get
        try:
            mount = SensorMount.from_settings(read("sensor_height"), read("sensor_pitch"), read("sensor_roll"))
        except ValueError as error:
            raise StartupError(str(error)) from None
        target, model, timeout = read("target_frame"), read("model_frame"), read("tf_timeout_s")
        problem = validate_frame_settings(target, model, timeout, mount, bool(read("auto_sensor_mount")))
        if problem:
            raise StartupError(problem)
        return target, model, timeout, mount

    def _start_frames(self) -> None:
        """The sensor mount on the Pipeline; a TF buffer + listener when target_frame or model_frame is set."""
        target, model, timeout, mount = self.frame_settings
        if mount is not None:
            self.pipeline.set_sensor_mount(mount)
            self.get_logger().info(f"{mount.describe()}: points moved to a virtual sensor at the bundle's training "
                                   f"height {self.pipeline.training_sensor_height:g} m, boxes moved back")
        if (target or model) and self.tf is None:
            self.tf = create_tf(self)
            self.get_logger().info(f"TF ({self.tf.name}): points into '{model or '<cloud frame>'}', boxes into "
                                   f"'{target or '<cloud frame>'}', lookups at the cloud's stamp wait up to "
                                   f"tf_timeout_s={timeout:g} s")
        pipeline = self.pipeline  # the mount in force when each cloud arrives (the automatic one moves)
        self.frames = FrameResolver(self.tf, target, model, timeout, lambda: pipeline.frames)

    def _start_ground(self, check: bool, auto_mount: bool) -> None:
        """ground_check / auto_sensor_mount on the Pipeline (clean_ros.inference.ground_plane). The automatic mount
        needs the ground measured, so it measures it whatever ground_check says."""
        how = (f"ground {BAND_M[0]:g}-{BAND_M[1]:g} m away, every scan until {WARM_FITS} fits, then one in "
               f"{GROUND_EVERY} scans; running median of the last {DEFAULT_WINDOW} fits")
        if auto_mount:
            self.pipeline.set_auto_mount(True)
            self.get_logger().info(f"automatic sensor mount on: the sensor's height, pitch and roll measured from the "
                                   f"scans' {how}, applied as the sensor mount (scans before the first fit run "
                                   "without one); diagnostics keys sensor_mount, ground")
        elif check:
            self.pipeline.set_ground_watch(True)
            self.get_logger().info(f"ground check on: the scans' {how}, compared with the ground the model's training "
                                   "sensor saw; diagnostics key ground (WARN when they disagree)")
        else:
            self.pipeline.set_ground_watch(False)
            self.get_logger().info("ground check off (ground_check false)")

    def _stop_tf(self) -> None:
        """Close the TF listener, if any: its spin thread is joined (before rclpy and the interpreter go away)."""
        if self.tf is not None:
            self.tf.close()
            self.tf = None

    def _free_model(self) -> None:
        """Drop the pipeline (weights, backend session, engine) and the device's cached memory."""
        self._stop_tf()
        self.frames = None
        self.cloud_frames = None
        self.pipeline = None
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - freeing memory is best effort
            pass

    def _set_torch_threads(self, threads: int) -> None:
        try:
            import torch

            torch.set_num_threads(int(threads))
        except Exception as error:  # noqa: BLE001
            self.get_logger().warning(f"could not set torch threads to {threads}: {error}")

    def _load_pipeline(self, factory):
        path = self.params.get("bundle_path") or str(default_bundle_path())
        try:
            if factory is None:
                from clean_ros.inference.pipeline import Pipeline

                pipeline = Pipeline.from_bundle(path, backend=self.backend_requested, device=self.device,
                                                intra_op_threads=self.num_threads, int8=self.int8)
            else:
                pipeline = factory(path, backend=self.backend_requested, device=self.device)
        except Exception as error:  # noqa: BLE001 - every start-up failure becomes one clear line
            raise StartupError(f"cannot load the model bundle '{path}' (backend '{self.backend_requested}', "
                               f"device '{self.device}'): {error}") from None
        name = getattr(pipeline, "backend_name", "?")
        reason = getattr(getattr(pipeline, "backend", None), "selection_reason", "") or "requested explicitly"
        self.backend_reason = reason
        if self.backend_requested not in ("auto", name):
            self.get_logger().warning(f"backend fallback: '{self.backend_requested}' was requested but '{name}' "
                                      f"runs ({reason})")
        else:
            self.get_logger().info(f"backend '{name}' runs (requested '{self.backend_requested}': {reason})")
        return pipeline, path

    def _warm_up(self, iterations: int) -> None:
        if iterations <= 0:
            return
        start = time.perf_counter()
        try:
            self.pipeline.warmup(iterations=iterations)
        except Exception as error:  # noqa: BLE001
            raise StartupError(f"warm-up of backend '{self.pipeline.backend_name}' failed: {error}") from None
        self.get_logger().info(f"warm-up: {iterations} iteration(s) in {time.perf_counter() - start:.2f} s")

    def _input_contract(self):
        return self.pipeline.input_contract()  # without the intensity's range while auto_intensity is on


__all__ = ["NodeModel", "feature_names"]
