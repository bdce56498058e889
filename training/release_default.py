#!/usr/bin/env python3
"""The release recipe of the embedded default bundle (issue 14): one command from simulation to `models/default`.

    python training/release_default.py [--config config/compress/release.yaml] [--out runs/release_default]
                                       [--bundle models/default] [--real ../shared/data/kitti_sample/training]
                                       [--set KEY=VALUE ...] [--dry-run]

1. `training/compress.py --config CONFIG --out OUT` (a subprocess; resumable: run the same command again after an
   interruption and finished stages are skipped): the CLEAN pipeline on the simulator's realistic preset, all around
   the sensor, with the shipped realistic-preset teacher (models/teacher_realistic).
2. The int8 dense part (training/quantize_bundle.py, `--int8` / the node's `int8`): model.int8.onnx added to the run's
   bundle, calibrated (entropy activation ranges) on the first 64 frames of the run's own simulated val split (never
   real scans); skipped, with a line, for a bundle saved without model.onnx. Then the ground-contact gate
   (training/ground_gate.py, the node's `ground_gate_m`), chosen on the same val split and recorded in the manifest.
3. The real-data check (training/real_check.py) of the new bundle on a KITTI-layout folder of real scans, when the
   folder exists (checking only: real labels never train or tune anything); with export.operating_points, the check
   again at each other operating point the bundle lists (found on val by the thresholds stage; a table in the
   README).
4. The bundle replaces BUNDLE: written next to it under a temporary name with its README.md (the run's report, the
   real-data figures, the command, the commit), then swapped in by renames, so a failure leaves the old bundle.

Mistakes: one line `error: ...`, exit 2; an interrupted compress run: exit 130 (run the same command again).
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clean_ros.provenance import git_commit  # noqa: E402
from training.ground_gate import EXIT_NOTHING_MATCHED  # noqa: E402  (its "no gate can be chosen" exit status)
from clean_ros.yaml_config import add_override_argument  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "config" / "compress" / "release.yaml"
DEFAULT_REAL = REPO.parent / "shared" / "data" / "kitti_sample" / "training"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class ReleaseError(Exception):
    """A mistake in the command line or a step that failed: one line, exit 2."""


def compress_command(config: Path, out: Path, overrides: list[str]) -> list[str]:
    cmd = [sys.executable, str(REPO / "training" / "compress.py"), "--config", str(config), "--out", str(out)]
    for value in overrides:
        cmd += ["--set", value]
    return cmd


# The int8 calibration: the first frames of the run's val split (the compress config's data.val_split).
INT8_CALIBRATION_FRAMES = 64
# Entropy ranges, not min / max: on the 2026-12-07 rebuild's val split (the choice) its int8 part matched the float
# model's false positives (1.29 against 1.28 per frame; min / max 1.44) at the same mAP as min / max (49.01 / 49.02,
# float 49.70); docs/BUNDLE.md "int8 dense part". It needs ~7.5 GB of memory for 64 frames (min / max: 0.5).
INT8_CALIBRATION_METHOD = "entropy"


def quantize_command(bundle: Path, data: Path, split: str) -> list[str]:
    return [sys.executable, str(REPO / "training" / "quantize_bundle.py"), str(bundle), "--data", str(data),
            "--split", split, "--frames", str(INT8_CALIBRATION_FRAMES), "--method", INT8_CALIBRATION_METHOD]


def last_line(text: str) -> str:
    """The last line of a step's stderr: its one-line error."""
    return (text.strip().splitlines() or ["?"])[-1]


def ground_gate_command(bundle: Path, data: Path, split: str) -> list[str]:
    return [sys.executable, str(REPO / "training" / "ground_gate.py"), str(bundle), str(data), "--split", split]


def real_check_command(bundle: Path, folder: Path) -> list[str]:
    return [sys.executable, str(REPO / "training" / "real_check.py"), "--bundle", str(bundle), str(folder)]


def run_real_check(bundle: Path, folder: Path, extra: list[str], what: str) -> tuple[str, dict]:
    """training/real_check.py on the real scans (a subprocess): (its printed report, its JSON report)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.json"
        done = subprocess.run(real_check_command(bundle, folder) + extra + ["--out", str(path)], cwd=REPO,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise ReleaseError(f"real-data check{what} failed: {last_line(done.stderr)}")
        lines = done.stdout.rstrip("\n").splitlines()
        if lines and lines[-1].startswith("wrote "):
            lines.pop()  # the temporary JSON's path: not for the README
        return "\n".join(lines) + "\n", json.loads(path.read_text())


def operating_point_row(point, report: dict) -> dict:
    return {"budget": point.budget, "shipped": point.shipped, "thresholds": list(point.score_thresholds),
            "fp_per_frame": report["false_positives"]["per_frame"],
            "recall_bev25": {c: v["all"] for c, v in report["recall"]["by_iou"]["0.25"].items()}}


def operating_point_checks(bundle: Path, folder: Path, shipped_report: dict) -> list[dict]:
    """The real-data check at each operating point the bundle lists (manifest operating_points, from the thresholds
    stage's export.operating_points), for the README: checking only, the points were chosen on the val split before
    it. The shipped point's row is the check already run (shipped_report). [] when the bundle lists no other point."""
    from clean_ros.inference.bundle import load_bundle

    points = load_bundle(bundle, verify=False).operating_points
    if len(points) < 2:
        return []  # only the shipped point: the check above is its row
    rows = []
    for point in points:
        report = shipped_report if point.shipped else run_real_check(
            bundle, folder, ["--quiet", "--operating-point", f"{point.budget:g}"],
            f" at operating point {point.budget:g}")[1]
        rows.append(operating_point_row(point, report))
    return rows


def operating_points_markdown(rows: list[dict], folder: Path | None) -> list[str]:
    if not rows:
        return []
    lines = [f"## Operating points on the real scans of `{_rel(folder)}`", "",
             "The report's operating points (below, chosen on the simulated val split), each checked on the real scans",
             "with `training/real_check.py --operating-point FP` (the node's `operating_point`). Checking only: the",
             "shipped one was not chosen from it.",
             "", "| val budget (FP / frame) | score_thresholds | real false positives / frame | real objects found at "
             "BEV IoU 0.25 |", "|---:|---|---:|---|"]
    for row in rows:
        recall = ", ".join(f"{name} {v['found']}/{v['total']}" for name, v in row["recall_bev25"].items())
        mark = " (shipped)" if row["shipped"] else ""
        lines.append(f"| {row['budget']:g}{mark} | [{', '.join(f'{t:g}' for t in row['thresholds'])}] | "
                     f"{row['fp_per_frame']:.2f} | {recall} |")
    return lines + [""]


# What the fine-tune's distill.method means, in the README's words (training/distill/distill_config.py).
DISTILL_WORDS = {
    "clean": "CaKD and label-assignment distillation (CLEAN)",
    "label_assign": "label-assignment distillation only (no CaKD term)",
    "cakd": "CaKD only (no label assignment)",
    "none": "no distillation",
}


def bundle_readme(config: Path, out: Path, command: str, report_md: str, real: str | None, real_folder: Path | None,
                  commit: str | None, teacher: str = "", distill: str = "", points: list[dict] | None = None) -> str:
    """models/default/README.md: what the bundle is, how it was made, and what was measured.

    teacher: the run's teacher.checkpoint ("" = a teacher trained inside the run); distill: its distill.method ("" =
    not known, not said); points: operating_point_checks' rows."""
    taught_by = (f"the shipped teacher `{_rel(Path(teacher))}` (its README says what it is)" if teacher else
                 "a teacher trained inside the run")
    through = f" through {DISTILL_WORDS.get(distill, f'`distill.method: {distill}`')}" if distill else ""
    lines = [
        "# Embedded default bundle",
        "",
        "The detector node's default model (`bundle_path: \"\"`), produced by the release recipe (issue 14,",
        "docs/RELEASE.md): the CLEAN pipeline on the simulator's realistic preset, all around the sensor, taught by",
        f"{taught_by}{through}. Format: docs/BUNDLE.md; provenance and metrics are in manifest.json.",
        "",
        "## Reproduce",
        "",
        "```",
        command,
        "```",
        "",
        f"Config `{_rel(config)}`, run folder `{_rel(out)}`, source commit `{commit or 'unknown'}`, written "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
    ]
    from clean_ros.inference.bundle import manifest_field

    int8 = manifest_field(out / "bundle", "int8")
    if int8 is not None:
        cal = int8["calibration"]
        lines += ["## int8 dense part", "",
                  f"`{int8['file']}`: the dense part in int8 for ONNX Runtime (node parameter `int8: true`, "
                  "`clean_ros.infer --int8`), calibrated on", f"{cal['frames']} frames ({cal['first']} to "
                  f"{cal['last']}) of the run's simulated `{cal['split']}` split ({cal.get('method', 'minmax')} "
                  "activation ranges); the head's output convolutions "
                  "stay float32.", "Its accuracy and speed against the float model: docs/BUNDLE.md "
                  "\"int8 dense part\".", ""]
    gate = manifest_field(out / "bundle", "ground_gate_calibration")
    if gate is not None:
        lines += ["## Ground-contact gate", "",
                  f"`ground_gate_m: {manifest_field(out / 'bundle', 'ground_gate_m'):g}`: boxes whose bottom floats "
                  "more than this above the local ground are dropped (node parameter `ground_gate_m`, 0 = off;",
                  "docs/NODE.md \"Ground-contact gate\"). Chosen by `training/ground_gate.py` on "
                  f"{gate['frames']} frames of the run's simulated `{gate['split']}` split: the",
                  f"{gate['keep']:g} quantile of the matched detections' gaps; there it removes "
                  f"{gate['matched_removed']} of {gate['matched']} matched detections and "
                  f"{gate['false_positives_removed']} of {gate['false_positives']} false positives.", ""]
    if real is not None:
        lines += [f"## On real scans: `training/real_check.py` on `{_rel(real_folder)}`", "",
                  "Checking only: real labels never train or tune anything.", "", "```", real.rstrip(), "```", ""]
    lines += operating_points_markdown(points or [], real_folder)
    lines += ["## The compression run's report (simulated held-out frames)", "", _demote(report_md), ""]
    return "\n".join(lines)


def _run_config(out: Path):
    """The run's resolved CompressConfig (OUT/config.yaml), or None when it cannot be read."""
    from clean_ros.yaml_config import ConfigError, load_config
    from training.compression.compress_config import CompressConfig

    try:
        return load_config(CompressConfig, out / "config.yaml")
    except (OSError, ConfigError):
        return None


def _run_teacher_and_distill(out: Path) -> tuple[str, str]:
    """teacher.checkpoint and distill.method of the run's resolved config: ("", "") if unreadable; the checkpoint is
    "" when the run trained its own teacher."""
    cfg = _run_config(out)
    return ("", "") if cfg is None else (cfg.teacher.checkpoint, cfg.distill.method)


def _val_split(out: Path) -> tuple[Path, str]:
    """The run's training dataset (DataSection.root_in: the simulated data in the run folder, or data.root for a
    KITTI-layout training set; never the real-data check's folder) and its val split name; the simulated data and
    val when the config cannot be read."""
    from training.compression.compress_config import DataSection

    cfg = _run_config(out)
    data = cfg.data if cfg is not None else DataSection()  # the defaults: simulated, split "val"
    return data.root_in(out), data.val_split


def _demote(markdown: str) -> str:
    """The report's headings one level down, under this README's own."""
    return "\n".join(f"#{line}" if line.startswith("#") else line for line in markdown.splitlines())


def _rel(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def install_bundle(source: Path, target: Path, readme: str) -> None:
    """Copy the bundle folder `source` with `readme` to `target`, replacing it by renames (old kept until the end)."""
    staging = target.with_name(f".{target.name}.new")
    retired = target.with_name(f".{target.name}.old")
    for leftover in (staging, retired):
        if leftover.exists():
            shutil.rmtree(leftover)
    shutil.copytree(source, staging)
    (staging / "README.md").write_text(readme)
    from clean_ros.inference.bundle import BundleError, load_bundle

    try:
        load_bundle(staging)  # manifest, hashes and weights of what is about to be installed
    except BundleError as exc:
        shutil.rmtree(staging)
        raise ReleaseError(f"the new bundle does not load: {exc}") from None
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    if retired.exists():
        shutil.rmtree(retired)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Build models/default with the release recipe (compress + real-data "
                                             "check + install).")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="compression config (default "
                    f"{_rel(DEFAULT_CONFIG)})")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "release_default", help="compress run folder")
    ap.add_argument("--bundle", type=Path, default=REPO / "models" / "default", help="bundle folder to replace")
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL,
                    help="KITTI-layout folder of real labelled scans for the check (skipped when absent)")
    add_override_argument(ap)
    ap.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except ReleaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _main(args) -> int:
    if not args.config.is_file():
        raise ReleaseError(f"{args.config}: config file not found")
    compress = compress_command(args.config, args.out, list(args.overrides))
    real_folder = args.real if args.real and args.real.is_dir() else None
    if args.dry_run:
        print(shlex.join(compress))
        print(shlex.join(quantize_command(args.out / "bundle", *_val_split(args.out))))
        print(shlex.join(ground_gate_command(args.out / "bundle", *_val_split(args.out))))
        print(shlex.join(real_check_command(args.out / "bundle", real_folder)) if real_folder else
              f"# real-data check skipped: {args.real} not found")
        print(f"# install {args.out / 'bundle'} -> {args.bundle}")
        return 0
    done = subprocess.run(compress, cwd=REPO)
    if done.returncode == EXIT_INTERRUPTED:
        return EXIT_INTERRUPTED
    if done.returncode != 0:
        raise ReleaseError(f"training/compress.py exited {done.returncode} (its log: {args.out / 'compress.log'})")
    bundle, report = args.out / "bundle", args.out / "report.md"
    if not (bundle / "manifest.json").is_file() or not report.is_file():
        raise ReleaseError(f"{args.out}: no bundle/ or report.md (is export.enabled false in {args.config}?)")
    if (bundle / "model.onnx").is_file():
        quantized = subprocess.run(quantize_command(bundle, *_val_split(args.out)), cwd=REPO, capture_output=True,
                                   text=True)
        if quantized.returncode != 0:
            raise ReleaseError(f"int8 quantization failed: {last_line(quantized.stderr)}")
        print(quantized.stdout.strip())
    else:
        print(f"int8 dense part skipped: {bundle} has no model.onnx (export.onnx is false in {args.config})")
    gated = subprocess.run(ground_gate_command(bundle, *_val_split(args.out)), cwd=REPO, capture_output=True,
                           text=True)
    reason = last_line(gated.stderr)
    if gated.returncode == EXIT_NOTHING_MATCHED:  # e.g. a smoke run's untrained student: the bundle ships no gate
        print(f"ground gate skipped: {reason.removeprefix('error: ')}")
    elif gated.returncode != 0:
        raise ReleaseError(f"ground gate failed: {reason}")
    else:
        print(gated.stdout.strip())
    real, points = None, []
    if real_folder is not None:
        real, shipped_report = run_real_check(Path(_rel(bundle)), real_folder, [], "")
        print(real)
        points = operating_point_checks(Path(_rel(bundle)), real_folder, shipped_report)
        print("\n".join(operating_points_markdown(points, real_folder)))
    command = "python training/release_default.py" + "".join(
        f" --set {shlex.quote(v)}" for v in args.overrides) + (
        f" --config {_rel(args.config)}" if args.config.resolve() != DEFAULT_CONFIG else "")
    readme = bundle_readme(args.config, args.out, command, report.read_text(), real, real_folder, git_commit(REPO),
                           *_run_teacher_and_distill(args.out), points)
    install_bundle(bundle, args.bundle, readme)
    print(f"installed {args.bundle} (README.md: the report and the real-data figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
