"""The compression report of one `training/compress.py` run: report.json, report.md and the plots.

report.json:
  {"models": {"teacher": M, "student_baseline": M, "student_cakd": M, "student_pruned": M, "student_final": M,
              "baseline_<name>": M, ...},
   "skipped": {stage: reason}, "stage_seconds": {stage: s}, "machine": {...}, "commit": "...", "config": "...",
   "efficiency_frame": {...}, "pruning": {...}, "evaluation": {...},
   "score_thresholds": null | stages/thresholds/thresholds.json (export.score_thresholds: calibrate)}
  M = {"ap3d_r40_moderate": {"Car": x, "Pedestrian": x, "Cyclist": x}, "map3d_r40_moderate": x, "params": n,
       "gflops": x, "latency_ms": {"p50": x, "p95": x}}
A model whose stage was skipped (or failed to produce a model) is absent from "models" and named in "skipped".
"""
from __future__ import annotations

from pathlib import Path

from clean_ros.provenance import git_commit
from training.compression.plots import plot_all
from training.compression.report_rows import build_rows
from training.compression.stage_store import atomic_write_json, atomic_write_text, read_json

MODEL_DESCRIPTIONS = {
    "teacher": "two-stage teacher",
    "student_baseline": "student, no KD",
    "student_cakd": "student + KD (distill.method)",
    "student_pruned": "pruned + KD fine-tuned",
    "student_final": "final (pruned + KD + IoU gate)",
}


def build_report(cfg, stages_dir: Path, model_stages: dict[str, str], stage_order: list[str] | None = None) -> dict:
    rows = build_rows(stages_dir, model_stages)
    ordered = {key: rows[key] for key in model_stages if key in rows}
    skipped, seconds = {}, {}
    folders = [p for p in stages_dir.iterdir() if p.is_dir()] if stages_dir.is_dir() else []
    order = {name: i for i, name in enumerate(stage_order or [])}
    for marker_dir in sorted(folders, key=lambda p: (order.get(p.name, len(order)), p.name)):
        marker = read_json(marker_dir / "done.json")
        if not marker:
            continue
        seconds[marker_dir.name] = marker.get("seconds")
        if "skipped" in (marker.get("summary") or {}):
            skipped[marker_dir.name] = marker["summary"]["skipped"]
    for key, stage in model_stages.items():
        if key not in ordered and stage not in skipped:
            skipped.setdefault(stage, "no model produced (stage not run or no metrics)")
    efficiency = read_json(stages_dir / "efficiency" / "efficiency.json") or {}
    metrics = read_json(stages_dir / "evaluate" / "metrics.json") or {}
    prune = read_json(stages_dir / "prune" / "prune_report.json") or {}
    eval_frames = {k: v.get("frames") for k, v in metrics.items()}
    training = {}
    for marker_dir in folders:
        summary = (read_json(marker_dir / "done.json") or {}).get("summary") or {}
        if summary.get("per_epoch"):
            training[marker_dir.name] = summary["per_epoch"]
    return {
        "models": ordered,
        "skipped": skipped,
        "stage_seconds": seconds,
        "machine": efficiency.get("machine"),
        "efficiency_frame": {"path": efficiency.get("frame"), "points": efficiency.get("frame_points"),
                             "warmup": efficiency.get("warmup"), "repeats": efficiency.get("repeats"),
                             "device": efficiency.get("device")},
        "evaluation": {"split": cfg.evaluated_split, "frames": eval_frames,
                       "metric": "KITTI 3D AP, R40, moderate (IoU 0.7 Car, 0.5 Ped/Cyc); mAP = mean of the three"},
        "pruning": {k: prune.get(k) for k in ("keep_ratio", "criterion", "params_before", "params_after")}
        if prune else None,
        "commit": git_commit(short=True),
        "name": cfg.name,
        # export.score_thresholds: calibrate: the shipped per-class thresholds (stages/thresholds/thresholds.json)
        "score_thresholds": read_json(stages_dir / "thresholds" / "thresholds.json"),
        # per training stage and epoch: losses, per-part gradient norms, KD diagnostics, pseudo-box precision
        "diagnostics": {"training": training},
    }


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def diagnostics_markdown(diagnostics: dict) -> list[str]:
    """The last epoch of every distilled training stage: how hard each KD term pulls against the classification
    loss, where CaKD acts, and how good the accepted pseudo boxes are."""
    rows = []
    for stage, epochs in (diagnostics.get("training") or {}).items():
        last = epochs[-1] if epochs else {}
        kd, grads = last.get("kd") or {}, last.get("grad_norm") or {}
        if not kd:
            continue
        precision = last.get("pseudo_box_precision") or {}
        kd_grads = ", ".join(f"{k} {v:.3g}" for k, v in grads.items() if k not in ("cls", "box", "dir", "iou"))
        rows.append(f"| {stage} | {last.get('epoch')} | {grads.get('cls', float('nan')):.3g} | {kd_grads or '-'} | "
                    f"{_fmt(kd.get('cakd/selected_per_frame'), 1)} | {_fmt(kd.get('cakd/student_logit'))} / "
                    f"{_fmt(kd.get('cakd/teacher_logit'))} | {_fmt(kd.get('label_assign/accepted_per_frame'), 1)} | "
                    f"{_fmt(precision.get('iou50'))} / {_fmt(precision.get('iou70'))} |")
    if not rows:
        return []
    return ["", "Distillation diagnostics (last epoch; every epoch in report.json `diagnostics`):", "",
            "| stage | epoch | grad norm cls | grad norm KD terms | CaKD positions / frame | mean student / teacher "
            "logit there | pseudo boxes / frame | their precision BEV IoU 0.5 / 0.7 |",
            "|---|---:|---:|---|---:|---:|---:|---:|", *rows]


def thresholds_markdown(calibrated: dict | None) -> list[str]:
    """The bundle's calibrated per-class score thresholds and what they keep on val (empty without calibration)."""
    if not calibrated:
        return []

    def pct(value):
        return "n/a" if value is None else f"{value:.1%}"

    if calibrated.get("per_class_budget") is not None:
        rule = (f"per class <= {calibrated['per_class_budget']:.2f} false positives per frame (total budget "
                f"{calibrated['max_false_positives_per_frame']:g})")
    else:
        rule = (f"the thresholds with the best mean per-class recall within "
                f"{calibrated['max_false_positives_per_frame']:g} false positives per frame in all")
    lines = ["", f"Score thresholds shipped in the bundle, calibrated on split `{calibrated['split']}` "
                 f"({calibrated['frames']} frames): {rule}; as shipped "
                 f"{calibrated['val_fp_per_frame_total']:.2f} per frame in all.", "",
             f"| class | threshold | val FP / frame | val recall BEV IoU 0.5 | at "
             f"{calibrated['calibration_min_threshold']:g}: FP / frame, recall |", "|---|---:|---:|---:|---:|"]
    for name, v in calibrated["classes"].items():
        floor = v["at_floor"]
        lines.append(f"| {name} | {v['threshold']:.3f} | {v['val_fp_per_frame']:.2f} | {pct(v['val_recall_iou50'])} | "
                     f"{floor['val_fp_per_frame']:.2f}, {pct(floor['val_recall_iou50'])} |")
    points = calibrated.get("operating_points") or []
    if len(points) > 1:
        names = list(calibrated["classes"])
        lines += ["", "Other operating points, by the same rule on the same val frames; the bundle lists them (pick "
                      "one by its budget with the node's `operating_point` parameter, or `--operating-point` of "
                      f"`clean_ros.infer` and `real_check.py`; class order {', '.join(names)}):", "",
                  "| total budget (FP / frame) | score_thresholds | val FP / frame | val recall BEV IoU 0.5: "
                  + " / ".join(names) + " | all |", "|---:|---|---:|---:|---:|"]
        for p in points:
            mark = " (shipped)" if p["shipped"] else ""
            recalls = " / ".join(pct(p["classes"][n]["val_recall_iou50"]) for n in names)
            lines.append(f"| {p['max_false_positives_per_frame']:g}{mark} | "
                         f"[{', '.join(f'{t:g}' for t in p['thresholds'])}] | {p['val_fp_per_frame_total']:.2f} | "
                         f"{recalls} | {pct(p['val_recall_iou50_all'])} |")
    return lines


def markdown(report: dict, cfg) -> str:
    models = report["models"]
    teacher = models.get("teacher")
    lines = [f"# Compression report: {report['name']}", ""]
    machine = report.get("machine") or {}
    lines.append(f"Commit `{report.get('commit')}`; machine {machine.get('platform')} ({machine.get('cpu_count')} "
                 f"CPUs, torch {machine.get('torch')}, {machine.get('threads')} thread(s), load average "
                 f"{machine.get('load_average_before')} before / {machine.get('load_average')} after the latency "
                 f"runs).")
    frame = report.get("efficiency_frame") or {}
    lines.append(f"Latency: batch 1, voxelisation + forward + post-processing of one {frame.get('points')}-point "
                 f"scan, {frame.get('warmup')} warm-up + {frame.get('repeats')} timed runs per model, round-robin, "
                 f"on {frame.get('device')}. AP: {report['evaluation']['metric']} on split "
                 f"`{report['evaluation']['split']}`.")
    lines += ["", "| model | what | params | GFLOPs | latency p50 / p95 (ms) | Car | Ped | Cyc | mAP | params vs "
              "teacher | speed-up vs teacher |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, m in models.items():
        ap = m["ap3d_r40_moderate"]
        rel = speed = ""
        if teacher:
            rel = f"{m['params'] / teacher['params']:.1%}"
            speed = f"{teacher['latency_ms']['p50'] / max(m['latency_ms']['p50'], 1e-9):.2f}x"
        what = MODEL_DESCRIPTIONS.get(key, "baseline")
        if key == "student_cakd":
            what = f"student + KD ({cfg.distill.method})"
        lines.append(f"| {key} | {what} | {m['params']:,} | {_fmt(m['gflops'], 3)} | {_fmt(m['latency_ms']['p50'], 1)}"
                     f" / {_fmt(m['latency_ms']['p95'], 1)} | {_fmt(ap.get('Car'))} | {_fmt(ap.get('Pedestrian'))} | "
                     f"{_fmt(ap.get('Cyclist'))} | {_fmt(m['map3d_r40_moderate'])} | {rel} | {speed} |")
    if report.get("skipped"):
        lines += ["", "Not in the table (skipped / not produced):", ""]
        lines += [f"- `{stage}`: {reason}" for stage, reason in report["skipped"].items()]
    if report.get("pruning"):
        p = report["pruning"]
        lines += ["", f"Pruning: {p['criterion']} criterion, keep ratio {p['keep_ratio']}, parameters "
                      f"{p['params_before']:,} -> {p['params_after']:,} (per-layer widths in "
                      f"stages/prune/prune_report.md and plots/widths.png)."]
    lines += thresholds_markdown(report.get("score_thresholds"))
    lines += diagnostics_markdown(report.get("diagnostics") or {})
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report["stage_seconds"].items()
                                                  if v is not None), "",
              "Plots: plots/ap_vs_gflops.png, plots/ap_vs_latency.png, plots/widths.png.", ""]
    return "\n".join(lines)


def write_report(root: Path, cfg, stages_dir: Path, model_stages: dict[str, str],
                 stage_order: list[str] | None = None) -> list[Path]:
    report = build_report(cfg, stages_dir, model_stages, stage_order)
    report["config"] = str(root / "config.yaml")
    written = plot_all(root / "plots", report, read_json(stages_dir / "prune" / "prune_report.json"))
    json_path = atomic_write_json(root / "report.json", report)
    md_path = atomic_write_text(root / "report.md", markdown(report, cfg))
    return [json_path, md_path, *written]


__all__ = ["build_report", "write_report", "markdown"]
