"""Fast replay: in process, frame by frame, deterministic, no drops. Each cloud of the bag goes through
clean_ros.cloud.model_input.points_for_model (decode, crop / exclusion boxes, decimation to max_points) and
clean_ros.inference.pipeline.Pipeline exactly as the detector node's callback does (same bundle, same
post-processing settings, same input steps). The boxes test the points in the model's input frame: with a sensor
mount set on the Pipeline (--sensor-height, or the automatic one of --auto-sensor-mount as it stands when the
cloud arrives), on the moved coordinates, as the node does. Automatic intensity
(on unless --no-auto-intensity, set on the Pipeline by clean_ros.ros.replay) scales each scan inside the Pipeline,
after intensity_scale, as in the node; the warm-up runs before the first cloud do not count as scans."""
from __future__ import annotations

import sys
import time

import numpy as np

from clean_ros.cloud.model_input import NO_FILTER, BoxFilter
from clean_ros.defaults import MAX_POINTS
from clean_ros.ros.bag import BagReader, stamp_ns
from clean_ros.ros.replay_frames import FrameResult, ReplayError, cloud_messages


def run_fast(reader: BagReader, pipeline, points_topic: str, intensity_scale: float = 1.0,
             progress: bool = False, *, max_points: int = MAX_POINTS,
             boxes: BoxFilter = NO_FILTER, removed: dict[str, int] | None = None) -> list[FrameResult]:
    """Every cloud through the pipeline, as the node's callback does it (points_for_model -> Pipeline). removed,
    if given, gets the points the boxes removed over the bag added to it (points_outside_crop_total,
    points_excluded_total: the node's /diagnostics names)."""
    from clean_ros.cloud.model_input import points_for_model
    from clean_ros.cloud.pointcloud import CloudFormatError

    results = []
    for index, (_, msg) in enumerate(cloud_messages(reader, points_topic)):
        t0 = time.perf_counter()
        # the sensor mount's transforms now (None without one): the automatic mount moves as scans come in
        frames = getattr(pipeline, "frames", None)
        model_from_input = frames.model_from_input if frames is not None else None
        try:
            prepared = points_for_model(msg, pipeline.point_features, intensity_scale=intensity_scale,
                                        max_points=max_points, boxes=boxes, model_from_input=model_from_input)
        except CloudFormatError as exc:
            raise ReplayError(f"cloud {index} on {points_topic}: {exc}") from None
        t1 = time.perf_counter()
        if removed is not None:
            removed["points_outside_crop_total"] = removed.get("points_outside_crop_total", 0) + \
                prepared.num_outside_crop
            removed["points_excluded_total"] = removed.get("points_excluded_total", 0) + prepared.num_excluded
        result = pipeline(prepared.points)
        t2 = time.perf_counter()
        timings = {"decode": 1e3 * (t1 - t0), **result.timings_ms, "total": 1e3 * (t2 - t0)}
        det = result.detections
        results.append(FrameResult(stamp_ns(msg.header), np.asarray(det.boxes, np.float32),
                                   np.asarray(det.scores, np.float32), [str(n) for n in det.names], timings,
                                   frame_id=msg.header.frame_id))
        if progress:
            print(f"\r{index + 1} frames", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return results
