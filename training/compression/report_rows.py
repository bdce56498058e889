"""What finished stages leave for the report, read back: each model's row (the evaluate and efficiency stages'
outputs) and each training stage's per-epoch diagnostics (the trainer's epochs.csv).

Its own module so that the stage bodies (training_run, stage_outputs) and training/report.py can both import it
without importing each other.
"""
from __future__ import annotations

import csv
from pathlib import Path

from training.compression.stage_store import read_json


def build_rows(stages_dir: Path, model_stages: dict[str, str]) -> dict[str, dict]:
    """report.json's model rows from the evaluate and efficiency stages' outputs."""
    metrics = read_json(stages_dir / "evaluate" / "metrics.json") or {}
    efficiency = (read_json(stages_dir / "efficiency" / "efficiency.json") or {}).get("models", {})
    rows = {}
    for key in model_stages:
        if key not in metrics or key not in efficiency:
            continue
        m, e = metrics[key], efficiency[key]
        rows[key] = {"ap3d_r40_moderate": m["ap3d_r40_moderate"], "map3d_r40_moderate": m["map3d_r40_moderate"],
                     "params": e["params"], "gflops": e["gflops"], "latency_ms": e["latency_ms"]}
    return rows


def _read_csv(path: Path) -> list[dict] | None:
    try:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError:
        return None


def read_last_losses(path: Path) -> dict:
    """The last row's loss_* columns of a trainer CSV (prefix dropped, rounded)."""
    rows = _read_csv(path)
    if not rows:
        return {}
    out = {}
    for key, value in rows[-1].items():
        if key.startswith("loss_"):
            try:
                out[key[5:]] = round(float(value), 5)
            except ValueError:
                pass
    return out


def epoch_diagnostics(path: Path) -> list[dict]:
    """Per epoch of a training stage (means over its logged steps, from the trainer's epochs.csv): every loss part,
    each part's gradient norm, the KD terms' diagnostics and, with label assignment, the pseudo boxes accepted per
    frame and their precision at BEV IoU 0.5 / 0.7 against the ground truth."""
    rows = _read_csv(path)
    if rows is None:
        return []
    by_epoch: dict[int, dict] = {}  # a repeated epoch (a kill between its row and its checkpoint): its last row
    for row in rows:
        values = {}
        for key, text in row.items():
            try:
                values[key] = float(text)
            except (TypeError, ValueError):
                continue
        entry = {"epoch": int(values.get("epoch", len(by_epoch) + 1)),
                 "loss": {k[5:]: round(v, 5) for k, v in values.items()
                          if k.startswith("loss_") and "/" not in k[5:] and k != "loss_grad_norm"},
                 "grad_norm": {k[10:]: round(v, 5) for k, v in values.items() if k.startswith("loss_grad/")},
                 "kd": {k[10:]: round(v, 4) for k, v in values.items() if k.startswith("loss_diag/")}}
        accepted = entry["kd"].get("label_assign/accepted_per_frame")
        if accepted:
            entry["pseudo_box_precision"] = {
                f"iou{t}": round(entry["kd"].get(f"label_assign/right_iou{t}_per_frame", 0.0) / accepted, 4)
                for t in (50, 70)}
        by_epoch[entry["epoch"]] = entry
    return list(by_epoch.values())


__all__ = ["build_rows", "read_last_losses", "epoch_diagnostics"]
