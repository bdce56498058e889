"""Build (or verify) the TensorRT engines of a bundle ahead of time, without running inference.

    python -m clean_ros.build_engine BUNDLE [--fp16 | --fp32] [--cache DIR] [--device cuda:0]

Engines go to the engine cache (~/.cache/clean_ros/engines, or --cache / $CLEAN_ROS_ENGINE_CACHE), keyed by
sha256(onnx) + TensorRT version + GPU compute capability + precision + shape profile; the node and
`clean_ros.tools.infer --backend tensorrt` then start without building. Exit 2 on bad input, 3 when TensorRT or a GPU is
missing.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clean_ros.build_engine", description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    precision = ap.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="fp16", action="store_true", default=True, help="fp16 engine (default)")
    precision.add_argument("--fp32", dest="fp16", action="store_false", help="fp32 engine")
    ap.add_argument("--cache", type=Path, help="engine cache folder")
    ap.add_argument("--device", default="cuda:0")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from clean_ros.inference.backends import BackendError, BackendUnavailable
    from clean_ros.inference.backends.tensorrt_backend import EngineCache, TensorRTBackend
    from clean_ros.inference.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(args.bundle)
        if bundle.onnx_path is None:
            raise BundleError(f"{args.bundle}: bundle has no model.onnx to build an engine from")
        cfg = bundle.detector_config
        export = bundle.manifest["export"]
        enc = export.get("encoder_onnx") or {}
        start = time.perf_counter()
        from clean_ros.models.detector import build_detector

        names = build_detector(cfg).dense_output_names
        enc_shape = enc.get("inputs", {}).get("features", [None, cfg.max_points_per_voxel, cfg.num_point_features])
        backend = TensorRTBackend(bundle.onnx_path, names, export["dense_onnx"]["inputs"]["bev"],
                                  bundle.encoder_onnx_path, enc_shape[1:], cfg.max_voxels_test,
                                  precision="fp16" if args.fp16 else "fp32", device=args.device,
                                  cache=EngineCache(args.cache) if args.cache else None)
    except BackendUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (BundleError, BackendError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"engines ready for {args.bundle} ({backend.describe()}) in {time.perf_counter() - start:.1f} s; "
          f"cache {backend.cache.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
