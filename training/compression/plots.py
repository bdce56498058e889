"""The report's figures (matplotlib, Agg backend, PNG): AP vs GFLOPs, AP vs latency, per-layer widths."""
from __future__ import annotations

from pathlib import Path

from clean_ros.atomic import atomic_open


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    return path


def _scatter(plt, models: dict, x_of, xlabel: str, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, m in models.items():
        x, y = x_of(m), m["map3d_r40_moderate"]
        marker = "s" if key == "teacher" else ("*" if key == "student_final" else "o")
        ax.scatter([x], [y], s=90 if marker == "*" else 45, marker=marker)
        ax.annotate(key, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mAP 3D R40 moderate (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_widths(plt, prune_report: dict, path: Path) -> Path:
    layers = prune_report["layers"]
    names = [c["name"].replace("bev_backbone.", "").replace("backbone_3d.", "3d.") for c in layers]
    before = [c["width_before"] for c in layers]
    after = [c["width_after"] for c in layers]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.35 * len(layers)), 4.4))
    idx = list(range(len(layers)))
    ax.bar([i - 0.2 for i in idx], before, width=0.4, label="before")
    ax.bar([i + 0.2 for i in idx], after, width=0.4, label="after")
    ax.set_xticks(idx)
    ax.set_xticklabels(names, rotation=75, fontsize=7)
    ax.set_ylabel("output filters")
    ax.set_title(f"Per-layer widths ({prune_report['criterion']}, keep ratio {prune_report['keep_ratio']})")
    ax.legend()
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_all(folder: Path, report: dict, prune_report: dict | None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    models = report["models"]
    written = []
    if models:
        written.append(_scatter(plt, models, lambda m: m["gflops"], "GFLOPs (MACs / 1e9, one frame)",
                                "AP vs compute", folder / "ap_vs_gflops.png"))
        written.append(_scatter(plt, models, lambda m: m["latency_ms"]["p50"], "CPU latency p50 (ms, batch 1)",
                                "AP vs latency", folder / "ap_vs_latency.png"))
    if prune_report and prune_report.get("layers"):
        written.append(plot_widths(plt, prune_report, folder / "widths.png"))
    return written


__all__ = ["plot_all", "plot_widths"]
