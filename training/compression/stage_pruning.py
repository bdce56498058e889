"""Stages `importance` and `prune` (METHOD.md sections 5-6): filter importance scored on TRAIN frames of the
trained full-width student (never a held-out split), then the global top-rho filters kept in a physically smaller
network that inherits the student's weights."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from training.compression.run_context import CompressRun
from training.compression.stage_store import atomic_write_json
from training.compression.stored_models import load_model, save_model


def importance(run: CompressRun, folder: Path) -> dict:
    from training.checkpoint import atomic_torch_save
    from training.data.loader import Collator, make_dataloader
    from training.prune import score_filters
    from training.trainer import seed_everything

    seed_everything(run.cfg.training.seed)
    kind, model_cfg, detector = load_model(run.stage_dir("student_baseline"))  # the trained student
    p = run.cfg.prune
    train_set = run.datasets.split(run.cfg.data.train_split, model_cfg)  # TRAIN frames, never the eval split
    ctx = run.ctx
    if ctx.distributed:  # torchrun: rank r scores frames r, r + W, ... of the first num_frames; sums are reduced
        shard = ctx.shard(min(p.num_frames, len(train_set)))
        train_set = TrainSubset(train_set, shard)
        p = replace(p, num_frames=len(shard))
    loader = make_dataloader(train_set, batch_size=p.batch_size, shuffle=False, num_workers=0,
                             collate=Collator.from_config(model_cfg, training=False))
    scores = score_filters(detector.to(run.device), _progress(loader, run.progress, "importance"), p)
    if ctx.distributed and scores.criterion != "l1":  # l1 scores come from the weights: the same on every rank
        scores = reduce_scores(scores, ctx)
    if not ctx.is_main:
        return {}
    atomic_torch_save({"scores": scores.scores, "criterion": scores.criterion, "num_frames": scores.num_frames,
                       "frames_without_detections": scores.frames_without_detections},
                      folder / "importance.pt")
    return {"scored": "student_baseline", "criterion": scores.criterion, "num_frames": scores.num_frames,
            "frames_without_detections": scores.frames_without_detections,
            "layers": len(scores.layers), "filters": int(sum(v.numel() for v in scores.scores.values()))}


def reduce_scores(scores, ctx):
    """Sum every rank's importance sums (float64) and frame counts: the scores of all the frames scored."""
    from training.prune import ImportanceScores

    totals = {}
    for name in sorted(scores.scores):
        totals[name] = ctx.all_reduce_sum_(scores.scores[name].to(torch.float64).clone())
    counts = ctx.all_reduce_sum_(torch.tensor([scores.num_frames, scores.frames_without_detections],
                                              dtype=torch.int64))
    return ImportanceScores(scores.layers, totals, scores.criterion, int(counts[0]), int(counts[1]))


class TrainSubset(torch.utils.data.Subset):
    """A subset that still says which split it is (score_filters refuses frames that are not training frames)."""

    def __init__(self, dataset, indices):
        super().__init__(dataset, indices)
        for name in ("split", "config"):
            if hasattr(dataset, name):
                setattr(self, name, getattr(dataset, name))


def prune(run: CompressRun, folder: Path) -> dict:
    from training.prune import ImportanceScores, build_graph, prune_detector

    kind, model_cfg, detector = load_model(run.stage_dir("student_baseline"))  # inherits its weights
    p = run.cfg.prune
    stored = torch.load(run.stage_dir("importance") / "importance.pt", map_location="cpu", weights_only=True)
    layers = build_graph(detector, p.prune_encoder, p.prune_backbone_3d)
    scores = ImportanceScores(layers, stored["scores"], stored["criterion"], int(stored["num_frames"]),
                              int(stored["frames_without_detections"]))
    pruned, pruned_cfg, report = prune_detector(detector, scores, p.keep_ratio, p.fold_constants)
    save_model(folder, pruned, pruned_cfg, "detector", {"keep_ratio": p.keep_ratio})
    atomic_write_json(folder / "prune_report.json", report.as_dict())
    (folder / "prune_report.md").write_text(report.to_markdown())
    return {"params_before": report.params_before, "params_after": report.params_after,
            "filters_before": report.filters_before, "filters_after": report.filters_after,
            "layers": [vars(change).copy() for change in report.layers]}


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    class _Wrapped:  # keeps .dataset visible (score_filters refuses an evaluation-split loader)
        def __init__(self, inner):
            self.inner, self.dataset = inner, getattr(inner, "dataset", None)

        def __iter__(self):
            return iter(tqdm(self.inner, desc=desc, leave=False, dynamic_ncols=True))

    return _Wrapped(iterable)


__all__ = ["importance", "prune", "reduce_scores"]
