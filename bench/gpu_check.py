"""The Python half of bench/gpu_check.sh (issue 17 item 4): backend parity on the GPU, and the BENCH.md record.

    python bench/gpu_check.py parity --bundle runs/gpu_check/smoke/bundle [--frame X.bin] [--device cuda]
                                     [--tolerance 1e-3] [--tolerance-fp16 5e-2]
    python bench/gpu_check.py record --bench-md docs/BENCH.md --title "..." LOG...

parity: one scan through the same voxels on torch-CPU (the reference) and on torch, ONNX Runtime and TensorRT (fp32
and fp16 engines) on --device (cuda; cpu only checks this script: TensorRT then skips); per backend the largest
|difference| of every raw head map relative to the map's largest |value| (max |a - ref| / max |ref|), and the
detections (count; sorted scores). A backend that cannot start here (not installed, no CUDA provider) is printed
as skipped with its reason. Exit status 1 when a started backend differs by more than --tolerance (fp16
TensorRT: --tolerance-fp16) or finds another number of boxes, else 0.

record: inserts a `### <title>` subsection with the logs (as code blocks) under the "GPU check" section's marker
line of docs/BENCH.md (newest first), written atomically; the rest of the file is unchanged.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MARKER = "<!-- gpu_check.sh results: newest first, inserted below this line -->"
FRAME = ROOT.parent / "shared/data/kitti_sample/training/velodyne/000000.bin"
# (label, backend, Pipeline keyword arguments, which tolerance applies); each runs on --device
BACKENDS = [("torch", "torch", {}, "fp32"),
            ("onnxruntime", "onnxruntime", {}, "fp32"),
            ("tensorrt-fp32", "tensorrt", {"fp16": False}, "fp32"),
            ("tensorrt-fp16", "tensorrt", {"fp16": True}, "fp16")]


def relative_difference(other, ref) -> float:
    """max |other - ref| / max |ref| (on the reference's device)."""
    ref = ref.float()
    return float((other.to(ref.device).float() - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


def parity(args) -> int:
    import numpy as np

    from clean_ros.inference.backends import BackendError, BackendUnavailable
    from clean_ros.inference.pipeline import Pipeline
    from clean_ros.inference.voxelize import Voxels, as_padded

    frame = Path(args.frame)
    points = np.fromfile(frame, dtype=np.float32).reshape(-1, 4)
    ref = Pipeline.from_bundle(args.bundle, backend="torch", device="cpu")
    voxels, _ = ref.preprocess(points)
    voxels = as_padded(voxels)  # moved to each backend's device below
    ref_maps, _ = ref.raw_outputs(voxels)
    ref_dets = ref(points).detections
    names = ref.detector.dense_output_names
    print(f"parity on {frame.name} ({len(points)} points, {voxels.coords.shape[0]} voxels), bundle {args.bundle}; "
          f"reference torch-cpu: {len(ref_dets)} detections")
    print(f"{'backend':18s} " + " ".join(f"{n:>10s}" for n in names) + f" {'dets':>5s} {'score diff':>10s}  verdict")
    failed = False
    for name, backend, kwargs, precision in BACKENDS:
        label = f"{name}-{args.device}"
        try:
            pipe = Pipeline.from_bundle(args.bundle, backend=backend, device=args.device, **kwargs)
        except (BackendUnavailable, BackendError, ValueError) as exc:
            print(f"{label:18s} skipped: {str(exc).splitlines()[0]}")
            continue
        maps, _ = pipe.raw_outputs(Voxels(*(t.to(pipe.device) for t in voxels)))
        diffs = [relative_difference(m, r) for m, r in zip(maps, ref_maps)]
        dets = pipe(points).detections
        score = "-"
        if len(dets) == len(ref_dets) and len(dets):
            score = f"{float(np.abs(np.sort(dets.scores) - np.sort(ref_dets.scores)).max()):.2e}"
        tolerance = args.tolerance_fp16 if precision == "fp16" else args.tolerance
        ok = max(diffs) <= tolerance and len(dets) == len(ref_dets)
        failed |= not ok
        print(f"{label:18s} " + " ".join(f"{d:>10.2e}" for d in diffs) + f" {len(dets):>5d} {score:>10s}  "
              f"{'ok' if ok else 'DIFFERS'} (tolerance {tolerance:g}; {pipe.backend.describe()})")
    return 1 if failed else 0


def insert_section(text: str, title: str, logs: list[tuple[str, str]]) -> str:
    """`text` (BENCH.md) with a `### title` subsection of the logs inserted right under MARKER."""
    if MARKER not in text:
        raise ValueError(f"no marker line {MARKER!r}: the GPU check section of BENCH.md is missing")
    body = [f"### {title}", ""]
    for name, log in logs:
        body += [f"`{name}`:", "", "```", log.rstrip(), "```", ""]
    head, tail = text.split(MARKER, 1)
    return head + MARKER + "\n\n" + "\n".join(body) + "\n" + tail.lstrip("\n")


def record(args) -> int:
    from clean_ros.atomic import atomic_write_text

    path = Path(args.bench_md)
    logs = [(Path(log).name, Path(log).read_text(errors="replace")) for log in args.logs]
    try:
        text = insert_section(path.read_text(), args.title, logs)
    except (OSError, ValueError) as exc:
        print(f"gpu_check record: {path}: {exc}", file=sys.stderr)
        return 2
    atomic_write_text(path, text)
    print(f"gpu_check: results recorded in {path} under '### {args.title}'")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("parity", help="raw maps and detections of every GPU backend vs torch-CPU")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--frame", type=Path, default=FRAME)
    p.add_argument("--device", default="cuda", help="where the compared backends run (cpu: a check of this script)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="fp32 backends (TF32 / tactics)")
    p.add_argument("--tolerance-fp16", type=float, default=5e-2)
    r = sub.add_parser("record", help="insert the logs as a subsection of docs/BENCH.md's GPU check section")
    r.add_argument("--bench-md", type=Path, default=ROOT / "docs" / "BENCH.md")
    r.add_argument("--title", required=True)
    r.add_argument("logs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    return parity(args) if args.command == "parity" else record(args)


if __name__ == "__main__":
    sys.exit(main())
