"""Reproduction script (docs/results/release_capacity/README.md): a stored stage model of a compress run (e.g. the
full-width student without KD, runs/release_default/stages/student_baseline) as a bundle with the shipped bundle's
sensor height and intensity level, so real_check and operating_point.py can score it. Checking only, not a tool.

    PYTHONPATH=. python docs/results/release_capacity/export_stage.py runs/release_default/stages/student_baseline OUT
"""
import json
import sys
from pathlib import Path

from clean_ros.inference.bundle import save_bundle
from training.compression.stored_models import load_model

stage, out = Path(sys.argv[1]), Path(sys.argv[2])
kind, cfg, module = load_model(stage)
if kind != "detector":
    raise SystemExit(f"{stage}: a {kind} model, not a one-stage detector")
shipped = json.loads(Path("models/default/manifest.json").read_text())
save_bundle(out, module.eval(), cfg, provenance={"method": f"stage {stage} (checking only)"},
            sensor_height=shipped["sensor_height"], intensity_level=shipped["intensity_level"])
print(f"{out}: {sum(p.numel() for p in module.parameters())} parameters, IoU branch {cfg.head.iou_branch}")
