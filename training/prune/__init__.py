"""Masked category-knowledge structured pruning (METHOD.md section 4): score filters on training frames, rank
globally, rebuild a physically smaller detector with inherited weights. See docs/PRUNE.md.

    scores = score_filters(detector, train_loader, PruneConfig(keep_ratio=0.45))
    pruned, pruned_cfg, report = prune_detector(detector, scores, keep_ratio=0.45)
"""
from training.prune.prune_config import PruneConfig
from training.prune.graph import Consumer, PrunableLayer, build_graph
from training.prune.importance import ImportanceScores, check_training_split, l1_scores, score_filters
from training.prune.surgery import LayerChange, PruneReport, prune_detector, prune_with_keep, select_filters

__all__ = ["PruneConfig", "Consumer", "PrunableLayer", "build_graph", "ImportanceScores", "check_training_split",
           "score_filters", "l1_scores", "LayerChange", "PruneReport", "prune_detector", "prune_with_keep",
           "select_filters"]
