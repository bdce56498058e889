"""Does the importance stage give the shipped bundle's widths when the pillar encoder runs its padded path in eval
mode (the numerics of the code that made models/default), and this run's widths with today's per-point path?"""
import sys
from pathlib import Path
import torch
from safetensors import safe_open
from clean_ros.yaml_config import load_config
from training.compression.compress_config import CompressConfig
from training.compression.run_context import CompressRun
from training.compression.stored_models import load_model
from training.data.loader import Collator, make_dataloader
from training.prune import score_filters, build_graph, prune_detector
from training.trainer import seed_everything

torch.set_num_threads(1)
cfg = load_config(CompressConfig, Path("runs/release_default/config.yaml"), [])
run = CompressRun(cfg, Path("runs/release_default"), print, False)
f = safe_open("models/default/weights.safetensors", "pt")
shipped = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
for per_point in (sys.argv[1:] or ["False", "True"]):
    seed_everything(cfg.training.seed)
    kind, model_cfg, det = load_model(run.stage_dir("student_baseline"))
    det.encoder.per_point_inference = per_point == "True"
    p = cfg.prune
    train_set = run.datasets.split(cfg.data.train_split, model_cfg)
    loader = make_dataloader(train_set, batch_size=p.batch_size, shuffle=False, num_workers=0,
                             collate=Collator.from_config(model_cfg, training=False))
    scores = score_filters(det, loader, p)
    stored = torch.load("runs/release_default/stages/importance/importance.pt", map_location="cpu", weights_only=True)
    same_scores = all(torch.equal(scores.scores[k], stored["scores"][k]) for k in stored["scores"])
    layers = build_graph(det, p.prune_encoder, p.prune_backbone_3d)
    pruned, _, report = prune_detector(det, scores, p.keep_ratio, p.fold_constants)
    sd = pruned.state_dict()
    diff = [k for k in sd if k in shipped and tuple(sd[k].shape) != shipped[k]]
    print(f"per_point_inference={per_point}: scores equal to this run's importance.pt: {same_scores}; "
          f"params {report.params_after}; tensors whose shape differs from models/default: {len(diff)} {diff[:3]}", flush=True)
