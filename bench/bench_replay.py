"""Replay tooling speed on the real KITTI sample frames (~120k points each).

Prints: bag writing (frames/s, MB/s) for mcap and db3, bag reading + PointCloud2 deserialisation (ms/frame),
and `fast` replay per-stage p50/p95 with the embedded default bundle; with --realtime also a realtime replay
(published / answered / dropped at the recorded rate). Goal: bag I/O well below the 100 ms sensor period
(reading must never be what limits a replay).

    .venv/bin/python bench/bench_replay.py [--threads 1] [--realtime]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from clean_ros import defaults  # noqa: E402

KITTI = ROOT.parent / "shared" / "data" / "kitti_sample"


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=defaults.NUM_THREADS)
    parser.add_argument("--realtime", action="store_true", help="also run a realtime replay with the node")
    args = parser.parse_args()
    if not (KITTI / "training" / "velodyne").is_dir():
        print(f"KITTI sample not found at {KITTI}")
        return 0
    from sensor_msgs.msg import PointCloud2

    from clean_ros.ros.bag import POINTS_TOPIC, BagReader
    from clean_ros.ros.kitti_bag import write_kitti_bag
    from clean_ros.ros.replay import main as replay_main

    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_replay_"))
    try:
        for fmt in ("mcap", "db3"):
            out = tmp / f"kitti_{fmt}"
            t0 = time.perf_counter()
            summary = write_kitti_bag(KITTI, out, fmt=fmt)
            seconds = time.perf_counter() - t0
            size = _size_mb(out)
            print(f"write {fmt}: {summary['frames']} frames, {size:.1f} MB in {seconds:.2f} s "
                  f"({summary['frames'] / seconds:.1f} frames/s, {size / seconds:.0f} MB/s)")
            with BagReader(out) as reader:
                t0 = time.perf_counter()
                n = sum(1 for _ in reader.messages(POINTS_TOPIC, PointCloud2))
                seconds = time.perf_counter() - t0
            print(f"read  {fmt}: {1e3 * seconds / n:.1f} ms/frame (read + deserialise PointCloud2)")
        bag = tmp / "kitti_mcap"
        replay_main([str(bag), "--bundle", str(ROOT / "models" / "default"), "--num-threads", str(args.threads),
                     "--warmup", "2"])
        if args.realtime:
            replay_main([str(bag), "--bundle", str(ROOT / "models" / "default"), "--mode", "realtime",
                         "--num-threads", str(args.threads)])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
