#!/usr/bin/env python3
"""Make a model bundle from a trainer checkpoint.

    python training/export.py --checkpoint runs/NAME/checkpoints/best.pt --config runs/NAME/config.yaml \
        --out models/my_model [--method "baseline"] [--teacher NAME] [--pruning-ratio 0.0] [--metrics report.json] \
        [--no-onnx] [--set key.path=value ...]

--config: a training config (its `model:` section is used) or a detector config (config/*.yaml). The checkpoint's
weights must fit that model exactly. Metrics default to the checkpoint's last evaluation. The bundle is written
atomically (clean_ros.inference.bundle.save_bundle); errors print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clean_ros.inference.bundle import BundleError, save_bundle  # noqa: E402
from clean_ros.yaml_config import ConfigError, add_override_argument, load_config, read_yaml  # noqa: E402
from clean_ros.models.detector_config import DetectorConfig  # noqa: E402
from training.checkpoint import CheckpointError, load_model_weights  # noqa: E402

EXIT_BAD_INPUT = 2


class ExportError(Exception):
    """A mistake in the inputs; reported as one line."""


def load_configs(path: Path, overrides: list[str]) -> tuple[DetectorConfig, dict | None]:
    """(detector config, training config as a plain dict or None) from a training or a detector YAML."""
    raw = read_yaml(path)
    if "model" in raw:
        from training.train_config import TrainConfig
        from clean_ros.yaml_config import to_dict

        train_cfg = load_config(TrainConfig, path, overrides)
        return train_cfg.model, to_dict(train_cfg)
    return load_config(DetectorConfig, path, overrides), None


def export_checkpoint(checkpoint: Path, config: Path, out: Path, *, overrides: list[str] = (),
                      provenance: dict | None = None, metrics: dict | None = None, export_onnx: bool = True) -> Path:
    import torch

    from clean_ros.models.detector import build_detector

    detector_cfg, train_dict = load_configs(config, list(overrides))
    state = load_model_weights(checkpoint)
    detector = build_detector(detector_cfg)
    try:
        detector.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"{checkpoint}: weights do not fit the model of {config}: "
                          f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}") from None
    if metrics is None:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        metrics = dict(ckpt.get("metrics", {})) if isinstance(ckpt, dict) else {}
        if isinstance(ckpt, dict) and "global_step" in ckpt:
            metrics.setdefault("train_global_step", int(ckpt["global_step"]))
    prov = {"method": "baseline", "teacher": None, "pruning_ratio": 0.0, "checkpoint": str(checkpoint)}
    prov.update(provenance or {})
    return save_bundle(out, detector.eval(), detector_cfg, training_config=train_dict or {}, provenance=prov,
                       metrics=metrics, export_onnx=export_onnx)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Export a trainer checkpoint as a clean_ros model bundle.")
    ap.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint (.pt) or bare state_dict")
    ap.add_argument("--config", type=Path, required=True, help="training YAML (model: section) or detector YAML")
    ap.add_argument("--out", type=Path, required=True, help="bundle directory to write (replaced atomically)")
    ap.add_argument("--method", default="baseline", help="provenance: how the model was made")
    ap.add_argument("--teacher", default=None, help="provenance: teacher model, if distilled")
    ap.add_argument("--pruning-ratio", type=float, default=0.0, help="provenance: fraction of channels pruned")
    ap.add_argument("--metrics", type=Path, help="JSON object of metrics to record (default: the checkpoint's)")
    ap.add_argument("--no-onnx", action="store_true", help="weights only (the torch backend can still run it)")
    add_override_argument(ap)
    args = ap.parse_args(argv)
    try:
        metrics = None
        if args.metrics is not None:
            try:
                metrics = json.loads(args.metrics.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ExportError(f"--metrics {args.metrics}: not a readable JSON file: {exc}") from None
            if not isinstance(metrics, dict):
                raise ExportError(f"--metrics {args.metrics}: must hold a JSON object")
        out = export_checkpoint(args.checkpoint, args.config, args.out, overrides=args.overrides,
                                provenance={"method": args.method, "teacher": args.teacher,
                                            "pruning_ratio": args.pruning_ratio},
                                metrics=metrics, export_onnx=not args.no_onnx)
    except (ExportError, ConfigError, CheckpointError, BundleError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote bundle {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
