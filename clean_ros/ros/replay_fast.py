"""Fast replay: in process, frame by frame, deterministic, no drops. Each cloud of the bag is decoded with
clean_ros.cloud.pointcloud.read_points and run through clean_ros.inference.pipeline.Pipeline exactly as the detector
node's callback does (same bundle, same post-processing settings)."""
from __future__ import annotations

import sys
import time

import numpy as np

from clean_ros.ros.bag import BagReader, stamp_ns
from clean_ros.ros.replay_frames import FrameResult, ReplayError, cloud_messages


def run_fast(reader: BagReader, pipeline, points_topic: str, intensity_scale: float = 1.0,
             progress: bool = False) -> list[FrameResult]:
    """Every cloud through the pipeline, as the node's callback does it (decode -> Pipeline)."""
    from clean_ros.cloud.pointcloud import CloudFormatError, read_points

    results = []
    for index, (_, msg) in enumerate(cloud_messages(reader, points_topic)):
        t0 = time.perf_counter()
        try:
            points, _ = read_points(msg, pipeline.point_features, intensity_scale=intensity_scale)
        except CloudFormatError as exc:
            raise ReplayError(f"cloud {index} on {points_topic}: {exc}") from None
        if not points.flags.c_contiguous or not points.flags.writeable:
            points = np.ascontiguousarray(points)
        t1 = time.perf_counter()
        result = pipeline(points)
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
