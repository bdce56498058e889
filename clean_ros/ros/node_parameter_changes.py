"""Runtime parameter changes of the detector node (``ros2 param set``): checked, then applied to the running node.

The parameter table and its validators are clean_ros.ros.node_parameters; this module is what a change does.
ParameterChanges is a mixin of clean_ros.ros.detector_node.DetectorCore (plain and lifecycle node):

- ``_declare_postprocess_parameters``: once the bundle is loaded (and operating_point has picked its score
  thresholds, if set), its post-processing settings become parameters;
  values from the params file (or set before a lifecycle re-configure) override the bundle's, validated by the one
  post-processing validator (Pipeline.update_postprocess); a refused one is a StartupError.
- ``_on_set_parameters`` (the node's set-parameters callback): every changed value is checked first (plain checks,
  input boxes, post-processing through the Pipeline); a refusal returns its reason (`ros2 param set` prints it) and
  leaves every setting as it was. Accepted values reach the attributes the callback reads (PLAIN_ATTRIBUTES, the
  input boxes, the frame accounting's rate and stale timeout, hardware_id).
"""
from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import SetParametersResult

from clean_ros.inference.operating_points import select_operating_point
from clean_ros.ros.node_parameters import (ARRAY_PARAMS, BOX_PARAMS, POSTPROCESS_PARAMS, StartupError, box_filter,
                                           check_plain_change, postprocess_specs, postprocess_values,
                                           to_pipeline_changes)

# Runtime parameters the callback reads from node attributes of the same name.
PLAIN_ATTRIBUTES = ("intensity_scale", "publish_markers", "marker_lifetime_s", "max_input_age_s", "max_points")


class ParameterChanges:
    """Post-processing parameter declaration and runtime changes (see the module docstring). The node sets
    ``_declaring`` while it declares parameters (declare_parameter runs the callback: nothing to apply then)."""

    def _declare_postprocess_parameters(self) -> None:
        self._apply_operating_point()
        gate = float(getattr(self.pipeline, "ground_gate_m", 0.0))  # a Pipeline setting, not a PostProcessConfig field
        current = postprocess_values(self.pipeline.postprocess_settings, gate)
        self._declaring = True
        try:
            for spec in postprocess_specs(self.pipeline.postprocess_settings, self.class_names, gate):
                self.params.declare(spec)
        finally:
            self._declaring = False
        # Values from the params file (or set before a lifecycle re-configure) override the bundle's.
        overrides = {name: value for name, value in self.params.values(POSTPROCESS_PARAMS).items()
                     if value != current[name]}
        if overrides:
            reason = self._apply_postprocess(overrides)
            if reason:
                raise StartupError(f"post-processing parameters from the params file: {reason}")
            self.get_logger().info(f"post-processing overrides applied: {overrides}")

    def _apply_operating_point(self) -> None:
        """operating_point > 0: the bundle's thresholds at that budget replace its shipped ones, before the
        score_thresholds parameter is declared (so they are its default); StartupError for an unknown budget, or
        when score_thresholds is given too (two answers to one question)."""
        budget = float(self.params.get("operating_point"))
        if budget <= 0:
            return
        if "score_thresholds" in (getattr(self, "_parameter_overrides", {}) or {}):
            raise StartupError(f"operating_point {budget:g} and score_thresholds are both set: give one (the "
                               f"operating point is a set of score thresholds)")
        bundle = getattr(self.pipeline, "bundle", None)
        try:
            point = select_operating_point(bundle.operating_points if bundle is not None else (), budget)
            self.pipeline.update_postprocess(score_thresholds=list(point.score_thresholds))
        except ValueError as error:
            raise StartupError(f"parameter 'operating_point': {error}") from None
        self.get_logger().info(point.describe(self.class_names))

    def _apply_postprocess(self, changes: dict[str, Any]) -> str | None:
        try:
            current = self.params.values(POSTPROCESS_PARAMS)
            self.pipeline.update_postprocess(**to_pipeline_changes(changes, current))
        except (ValueError, TypeError) as error:
            return str(error)
        return None

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        if self._declaring:
            return SetParametersResult(successful=True)
        post: dict[str, Any] = {}
        plain: dict[str, Any] = {}
        for parameter in parameters:
            value = list(parameter.value) if parameter.name in ARRAY_PARAMS else parameter.value
            (post if parameter.name in POSTPROCESS_PARAMS else plain)[parameter.name] = value
        for name, value in plain.items():
            reason = check_plain_change(name, value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        boxes = None
        if any(name in plain for name in BOX_PARAMS):
            try:
                boxes = box_filter({**self.params.values(BOX_PARAMS), **plain})
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
        if post:
            if self.pipeline is None:
                return SetParametersResult(successful=False, reason="post-processing parameters exist once the "
                                                                    "model is loaded (configure the node first)")
            reason = self._apply_postprocess(post)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            self.get_logger().info(f"post-processing updated: {post}")
        if boxes is not None:
            self.boxes = boxes
            self.get_logger().info(f"input boxes: crop {boxes.crop or 'off'}, exclusion {boxes.exclusion or 'off'}")
        for name in PLAIN_ATTRIBUTES:
            if name in plain:
                setattr(self, name, plain[name])
        if "intensity_scale" in plain:
            self.intensity_scale = float(plain["intensity_scale"])
            self.contract_pending = True  # show whether the new scale fixes a value-range finding
        if "expected_rate_hz" in plain:
            self.accounting.set_expected_rate(plain["expected_rate_hz"])
        if "stale_timeout_s" in plain:
            self.accounting.set_stale_timeout(plain["stale_timeout_s"])
        if "hardware_id" in plain:
            self.hardware_id = plain["hardware_id"] or self.get_fully_qualified_name()
        return SetParametersResult(successful=True)


__all__ = ["PLAIN_ATTRIBUTES", "ParameterChanges"]
