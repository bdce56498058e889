"""Cost and accuracy of measuring the ground (clean_ros/inference/ground_plane.py): what one fit adds to the
Pipeline's call when it is due (the node's ground_check, on by default: every scan until 5 fits, then every 5th), and
how close the fit comes to a known mount.

Prints the median (and min / p90) wall time of `fit_ground_plane` on each real KITTI scan of the shared sample (or a
synthetic street when it is missing), after warm-up; then, for each scan moved to three other mounts (the scene as
a sensor at that height and tilt records it), the fitted height / pitch / roll minus the scan's own fit plus the mount
(the error of the change the fit sees). Usage:
    python bench/bench_ground_plane.py [--runs 50] [--warmup 5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clean_ros.cloud.transforms import transform_points  # noqa: E402
from clean_ros.inference.ground_plane import fit_ground_plane  # noqa: E402
from clean_ros.inference.sensor_mount import TRAINING_SENSOR_HEIGHT_M, SensorMount  # noqa: E402
from suite import percentile, sample_call, synthetic_scan  # noqa: E402  (bench/suite.py, beside this script)

FRAMES = Path(__file__).resolve().parents[2] / "shared/data/kitti_sample/training/velodyne"
MOUNTS = (SensorMount(2.4, 0.05, -0.02), SensorMount(1.2, -0.03, 0.04), SensorMount(3.0, 0.1, 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    scans = [np.fromfile(p, dtype=np.float32).reshape(-1, 4) for p in sorted(FRAMES.glob("*.bin"))]
    source = f"{len(scans)} KITTI scans in {FRAMES}"
    if not scans:
        scans, source = [synthetic_scan(120_000)], "a synthetic scan"
    times = [ms for points in scans
             for ms in sample_call(lambda: fit_ground_plane(points), args.runs, warmup=args.warmup)[0]]
    print(f"ground fit on {source} (~{int(np.mean([len(s) for s in scans]))} points): median "
          f"{percentile(times, 50):.2f} ms, min {min(times):.2f}, p90 {percentile(times, 90):.2f} ms "
          f"over {len(times)} fits")
    errors = []
    for points in scans:
        own = fit_ground_plane(points)
        if own is None:
            continue
        for mount in MOUNTS:
            moved = transform_points(points, mount.model_from_sensor(TRAINING_SENSOR_HEIGHT_M).inverse())
            fit = fit_ground_plane(moved.astype(np.float32))
            if fit is None:
                errors.append((np.nan, np.nan, np.nan))
                continue
            errors.append((fit.height - (own.height + mount.height - TRAINING_SENSOR_HEIGHT_M),
                           fit.pitch - (own.pitch + mount.pitch), fit.roll - (own.roll + mount.roll)))
    if errors:
        e = np.abs(np.array(errors))
        print(f"moved to {len(MOUNTS)} other mounts ({len(errors)} scans, {int(np.isnan(e[:, 0]).sum())} without a fit):"
              f" |error| median / max: height {np.nanmedian(e[:, 0]) * 100:.1f} / {np.nanmax(e[:, 0]) * 100:.1f} cm, "
              f"pitch {np.nanmedian(e[:, 1]) * 1e3:.1f} / {np.nanmax(e[:, 1]) * 1e3:.1f} mrad, roll "
              f"{np.nanmedian(e[:, 2]) * 1e3:.1f} / {np.nanmax(e[:, 2]) * 1e3:.1f} mrad")


if __name__ == "__main__":
    main()
