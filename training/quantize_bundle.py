#!/usr/bin/env python3
"""Add an int8 copy of a bundle's dense part (model.int8.onnx) for ONNX Runtime on CPU.

    python training/quantize_bundle.py BUNDLE --data DATASET [--split val] [--frames 64] [--out OUT]
                                      [--method minmax|percentile|entropy]

Post-training static quantization (onnxruntime.quantization, QDQ format): weights int8 per output channel, activations
uint8 with ranges measured (min / max by default; --method: CALIBRATION_METHODS below) on the BEV canvases of
`--frames` scans of a simulated KITTI-layout dataset's `--split` listing, made by the bundle's own torch encoder (the
runtime's CPU path). The head's output convolutions
stay float32, so every logit and box residual is computed in float from int8 features. Calibrate on simulated
frames of the training distribution (the compression run's val split); never on real labelled scans (they are for
checking only).

The bundle gains model.int8.onnx, listed with its sha256 in the manifest, and a manifest record `int8` (calibration
data, split, frames, method, excluded nodes, onnxruntime version). It is written next to OUT under a temporary name
and swapped in by renames, so a failure leaves OUT as it was. The node (`int8: true`), `clean_ros.infer --int8`
and `training/real_check.py --int8` run it (docs/BUNDLE.md "int8 dense part").

Mistakes: one line `error: ...`, exit 2.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from clean_ros.cloud.kitti import frames_without, read_velodyne, split_frame_ids  # noqa: E402
from clean_ros.inference.bundle import (DENSE_ONNX_NAME, INT8_ONNX_NAME, MANIFEST_NAME, BundleError,  # noqa: E402
                                        load_bundle, replace_dir, sha256_file)

EXIT_USAGE = 2
# Calibration ranges are merged about every this many canvases: onnxruntime keeps every intermediate output of a
# batch in memory (tens of MB per 336 x 336 canvas).
RANGE_BATCH = 8


def range_batch(frames: int) -> int:
    """The CalibMaxIntermediateOutputs for `frames` canvases: the smallest >= RANGE_BATCH that does not divide it.
    onnxruntime 1.31 fails ("No data is collected") when the count is a multiple of it: its last merge leaves nothing."""
    return next(b for b in itertools.count(RANGE_BATCH) if frames % b)


class QuantizeError(Exception):
    """One line for the user, exit 2."""


def calibration_frames(data: Path, split: str, frames: int) -> tuple[Path, list[str]]:
    """(split folder, the first `frames` ids of the split's listing), every one with its scan."""
    try:
        split_dir, ids, source = split_frame_ids(data, split)
    except ValueError as exc:
        raise QuantizeError(str(exc)) from None
    ids = ids[:frames]
    missing = frames_without(split_dir, ids)
    if missing:
        raise QuantizeError(f"{split_dir / 'velodyne'}: {len(missing)} frame(s) of {source} have no scan, e.g. "
                            f"{missing[0]}.bin")
    return split_dir, ids


def calibration_canvases(bundle_dir: Path, split_dir: Path, ids: list[str]) -> Iterator[np.ndarray]:
    """The BEV canvas (1, C, ny, nx) float32 of each scan, through the bundle's torch encoder (the runtime's CPU
    path), one at a time: a fine grid's canvas is ~100 MB."""
    from clean_ros.inference.pipeline import Pipeline

    pipe = Pipeline.from_bundle(bundle_dir, backend="torch")
    for frame in ids:
        with torch.inference_mode():
            voxels, _ = pipe.preprocess(read_velodyne(split_dir / "velodyne" / f"{frame}.bin"))
            yield pipe.bev_input(voxels).cpu().float().numpy().copy()


def head_output_nodes(onnx_path: Path) -> list[str]:
    """The nodes that write the graph's outputs (the head's final convolutions): kept in float32."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    outputs = {o.name for o in graph.output}
    return [node.name for node in graph.node if any(name in outputs for name in node.output)]


# Activation range calibration: onnxruntime's methods. minmax: the observed extremes (the default, as shipped);
# percentile: the 99.999th percentile of |activation| (one outlier does not stretch the range); entropy: the range
# whose quantised histogram is closest (KL divergence) to the observed one. Name -> onnxruntime's CalibrationMethod.
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def quantize_dense(dense_onnx: Path, canvases: Iterable[np.ndarray], frames: int, out_path: Path,
                   method: str = "minmax") -> list[str]:
    """QDQ int8 model of the dense ONNX at out_path from `frames` canvases, activation ranges by `method`
    (CALIBRATION_METHODS); returns the nodes left in float32."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Canvases(CalibrationDataReader):
        def __init__(self):
            self._items = ({"bev": c} for c in canvases)

        def get_next(self):
            return next(self._items, None)

    excluded = head_output_nodes(dense_onnx)
    calibrate_method = getattr(CalibrationMethod, CALIBRATION_METHODS[method])
    try:
        quantize_static(str(dense_onnx), str(out_path), Canvases(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calibrate_method, nodes_to_exclude=excluded,
                        extra_options={"CalibMaxIntermediateOutputs": range_batch(frames)})
    except (ValueError, RuntimeError) as exc:  # onnxruntime's own failures: one line, the bundle untouched
        raise QuantizeError(f"onnxruntime quantization of {dense_onnx} failed: {str(exc).splitlines()[0]}") from None
    return excluded


def quantize_bundle(bundle: str | Path, data: str | Path, split: str = "val", frames: int = 64,
                    out: str | Path | None = None, method: str = "minmax") -> dict:
    """Write BUNDLE (or OUT) with model.int8.onnx added; returns the manifest's `int8` record."""
    import onnxruntime

    bundle, data = Path(bundle), Path(data)
    out = Path(out) if out is not None else bundle
    if out.exists() and not out.is_dir():
        raise QuantizeError(f"--out {out}: exists and is not a directory; not overwritten")
    if frames < 1:
        raise QuantizeError(f"--frames must be >= 1, got {frames}")
    if method not in CALIBRATION_METHODS:
        raise QuantizeError(f"--method {method!r}: choose one of {', '.join(CALIBRATION_METHODS)}")
    try:
        loaded = load_bundle(bundle)
    except BundleError as exc:
        raise QuantizeError(str(exc)) from None
    if loaded.onnx_path is None:
        raise QuantizeError(f"{bundle}: no {DENSE_ONNX_NAME} to quantize (the bundle was saved without ONNX)")
    split_dir, ids = calibration_frames(data, split, frames)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.int8-", dir=out.parent))
    try:
        work = staging / out.name
        shutil.copytree(bundle, work)
        # from the staged copy: onnxruntime writes a shape-inferred model next to its input while it works, and the
        # source bundle may be read-only (an installed share/ folder)
        excluded = quantize_dense(work / loaded.onnx_path.name, calibration_canvases(bundle, split_dir, ids),
                                  len(ids), work / INT8_ONNX_NAME, method)
        manifest = json.loads((work / MANIFEST_NAME).read_text())
        record = {"file": INT8_ONNX_NAME, "format": "QDQ", "weights": "int8 per channel", "activations": "uint8",
                  "calibration": {"data": str(data), "split": split, "frames": len(ids), "first": ids[0],
                                  "last": ids[-1], "method": method},
                  "float32_nodes": excluded, "onnxruntime": onnxruntime.__version__,
                  "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()}
        manifest["files"][INT8_ONNX_NAME] = {"sha256": sha256_file(work / INT8_ONNX_NAME),
                                             "bytes": (work / INT8_ONNX_NAME).stat().st_size}
        manifest["int8"] = record
        (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        load_bundle(work)  # the staged bundle verifies before it replaces anything
        replace_dir(work, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python training/quantize_bundle.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="model bundle directory (must hold model.onnx)")
    parser.add_argument("--data", type=Path, required=True,
                        help="simulated KITTI-layout dataset root or split folder (its calibration frames)")
    parser.add_argument("--split", default="val", help="ImageSets listing of the calibration frames (default val)")
    parser.add_argument("--frames", type=int, default=64, help="calibration frames, the listing's first (default 64)")
    parser.add_argument("--out", type=Path, default=None, help="write the bundle here (default: BUNDLE in place)")
    parser.add_argument("--method", default="minmax", choices=tuple(CALIBRATION_METHODS),
                        help="activation range calibration (default minmax)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        record = quantize_bundle(args.bundle, args.data, args.split, args.frames, args.out, args.method)
    except (QuantizeError, BundleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    cal = record["calibration"]
    print(f"wrote {(args.out or args.bundle) / INT8_ONNX_NAME}: int8 QDQ, calibrated on {cal['frames']} frames of "
          f"{cal['data']} ({cal['split']}), float32 nodes: {', '.join(record['float32_nodes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
