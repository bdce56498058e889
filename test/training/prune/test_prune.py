"""Structured pruning: importance (vectorised = brute force with really zeroed weights, masked vs unmasked, zero
filters first), global ranking, and the surgery's exactness: the physically pruned network with inherited weights
computes what the original computes with the removed filters forced to their outputs (0 without folding; BN
constant with folding, where the fold is exact)."""
from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
from torch import nn

from clean_ros.yaml_config import load_config, save_yaml
from clean_ros.models.detector_config import DetectorConfig, load_detector_config
from clean_ros.models.detector import build_detector
from clean_ros.models.flops import count_parameters
from clean_ros.inference.postprocess import postprocess_tensors
from clean_ros.inference.voxelize import voxelize_batch
from training.config_paths import find_config
from training.prune import (ImportanceScores, PruneConfig, build_graph, check_training_split, prune_detector,
                            prune_with_keep, score_filters, select_filters)

TINY = ["pointpillars_tiny", "centerpoint_pillar_tiny"]
ALL = TINY + ["second_tiny"]
# Narrow and small so that brute force (one full forward per filter) stays cheap; two encoder layers so the
# pillar [x ; max] concat is exercised; iou branch on so every head output is compared.
SMALL = ["point_cloud_range=[0.0, -12.8, -3.0, 25.6, 12.8, 1.0]",
         "bev_backbone.layer_widths=[[6, 6], [8, 8, 8], [10, 10, 10]]",
         "bev_backbone.num_upsample_filters=[4, 5, 6]", "encoder.widths=[8, 12]", "head.iou_branch=true"]
# SECOND: 80 x 80 x 41 voxels, sparse stride 8 -> 10 x 10 with depth D = 2; BEV deconvs x2 / x4.
SMALL_SECOND = ["point_cloud_range=[0.0, -6.4, -3.0, 12.8, 6.4, 1.0]",
                "backbone_3d.widths=[[4, 4], [6, 6], [8, 8], [8, 8]]", "backbone_3d.out_width=6",
                "bev_backbone.layer_widths=[[8, 8], [10, 10, 10]]", "bev_backbone.num_upsample_filters=[4, 5]",
                "head.iou_branch=true"]


def _randomise(detector: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics (so BN constants are non-zero) and logits around 0 (so there are detections)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in detector.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
        head = detector.head
        cls_bias = head.conv_cls.bias if hasattr(head, "conv_cls") else head.heatmap[-1].bias
        cls_bias.zero_()


# the shared machine: one thread is much faster under load (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name: str, seed: int = 0, extra=()):
    """A randomised tiny detector whose score threshold lets through the top ~2% of its own positions."""
    torch.manual_seed(seed)
    cfg = load_detector_config(find_config(name), (SMALL_SECOND if name.startswith("second") else SMALL) + list(extra))
    detector = build_detector(cfg).eval()
    _randomise(detector, seed)
    batch = _batch(cfg, seed)
    with torch.no_grad():
        best = torch.sigmoid(detector(batch.voxels, batch.batch_size).cls_logits).max(-1).values
    threshold = float(torch.quantile(best.flatten(), 0.98))
    detector.cfg.postprocess.score_thresholds = [threshold] * cfg.num_classes
    return detector


def _batch(cfg, seed: int = 0, frames: int = 2, points: int = 1500):
    rng = np.random.default_rng(seed)
    r = np.asarray(cfg.point_cloud_range)
    clouds = []
    for _ in range(frames):
        xyz = rng.uniform(r[:3], r[3:], size=(points, 3))
        clouds.append(torch.from_numpy(np.concatenate([xyz, rng.uniform(0, 1, (points, 1))], 1).astype(np.float32)))
    voxels, _ = voxelize_batch(clouds, cfg.point_cloud_range, cfg.voxel_size, cfg.max_points_per_voxel, 4000)
    return types.SimpleNamespace(voxels=voxels, batch_size=frames)


def _raw_maps(detector, batch) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        bev = detector.bev_backbone(detector.encode(batch.voxels, batch.batch_size))
        return dict(zip(detector.head.output_names, detector.head(bev)))


def _maps_with_removed_filters_zeroed(detector, graph, keep, batch) -> dict[str, torch.Tensor]:
    """The unpruned detector's raw maps with every filter outside `keep` forced to output 0."""
    forcing = _ForceOutputs(detector, graph, keep, "zero")
    try:
        return _raw_maps(detector, batch)
    finally:
        forcing.remove()


def _zero_filter(detector, layer_name: str, kind: str, filters) -> None:
    weight = detector.get_submodule(layer_name).weight
    with torch.no_grad():
        if kind == "deconv":
            weight[:, filters] = 0.0
        else:
            weight[filters] = 0.0


def _brute_force_importance(detector, batch, layer, criterion: str) -> torch.Tensor:
    """Independent reference: really zero each filter's weights, full forward, the criterion by its definition."""
    with torch.no_grad():
        base = detector(batch.voxels, batch.batch_size)
        p = torch.sigmoid(base.cls_logits).double()
        frames = postprocess_tensors(base, detector.cfg)
        result = torch.zeros(layer.width, dtype=torch.float64)
        for f in range(layer.width):
            variant = copy.deepcopy(detector)
            _zero_filter(variant, layer.name, layer.kind, [f])
            pf = torch.sigmoid(variant(batch.voxels, batch.batch_size).cls_logits).double()
            change = (pf - p).abs().sum(-1)  # (B, P)
            for b, frame in enumerate(frames):
                if criterion == "masked":
                    positions = torch.unique(frame.positions)
                    if positions.numel():
                        result[f] += change[b, positions].mean()
                else:
                    result[f] += change[b].mean()
        return result


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("criterion", ["masked", "unmasked"])
def test_vectorised_importance_equals_really_zeroed_weights(name, criterion):
    detector = _model(name)
    batch = _batch(detector.cfg)
    graph = build_graph(detector, prune_encoder=True)
    # one layer of each kind / position: inner + last encoder linear, inner conv, a block's last conv (two
    # consumers), transposed-conv deblock
    chosen = [l for l in graph if l.name in ("encoder.linears.0", "encoder.linears.1", "bev_backbone.blocks.1.3",
                                             "bev_backbone.blocks.2.6", "bev_backbone.deblocks.2.0")]
    assert len(chosen) == 5
    scores = score_filters(detector, [batch], PruneConfig(criterion=criterion, filters_per_pass=3), layers=chosen)
    assert scores.num_frames == 2
    for layer in chosen:
        expected = _brute_force_importance(detector, batch, layer, criterion)
        assert expected.max() > 0, layer.name
        torch.testing.assert_close(scores.scores[layer.name], expected, rtol=1e-4, atol=1e-7, msg=layer.name)


def test_masked_and_unmasked_criteria_differ_and_use_detections():
    detector = _model("pointpillars_tiny")
    batch = _batch(detector.cfg)
    kept = [torch.unique(f.positions).numel() for f in postprocess_tensors(
        detector(batch.voxels, batch.batch_size), detector.cfg)]
    assert all(0 < k < 500 for k in kept)  # the mask is a real subset of the positions
    masked = score_filters(detector, [batch], PruneConfig(criterion="masked"))
    unmasked = score_filters(detector, [batch], PruneConfig(criterion="unmasked"))
    a = torch.cat(list(masked.scores.values()))
    b = torch.cat(list(unmasked.scores.values()))
    assert not torch.allclose(a, b)
    # not just a scale: the rankings differ
    assert not torch.equal(torch.argsort(a, descending=True), torch.argsort(b, descending=True))
    # without detections the masked criterion has nothing to average over
    silent = copy.deepcopy(detector)
    silent.cfg.postprocess.score_thresholds = [1.1, 1.1, 1.1]
    empty = score_filters(silent, [batch], PruneConfig(criterion="masked"))
    assert empty.frames_without_detections == 2
    assert all(float(s.abs().max()) == 0.0 for s in empty.scores.values())


def test_zero_filter_scores_zero_and_goes_first():
    detector = _model("pointpillars_tiny")
    _zero_filter(detector, "bev_backbone.blocks.1.3", "conv", [5])
    batch = _batch(detector.cfg)
    scores = score_filters(detector, [batch], PruneConfig())
    assert float(scores.scores["bev_backbone.blocks.1.3"][5]) == 0.0
    flat = torch.cat(list(scores.scores.values()))
    num_zero = int((flat == 0).sum())
    keep = select_filters(scores.scores, (flat.numel() - num_zero) / flat.numel())
    assert 5 not in keep["bev_backbone.blocks.1.3"].tolist()
    kept_min = min(float(scores.scores[n][k].min()) for n, k in keep.items())
    assert kept_min > 0.0


def test_global_ranking_and_at_least_one_per_layer():
    scores = {"a": torch.tensor([5.0, 1.0, 0.5]), "b": torch.tensor([0.1, 0.2]), "c": torch.tensor([4.0, 3.0])}
    keep = select_filters(scores, 4 / 7)  # 4 of 7 filters: 5, 4, 3, 1 -> layer b has none, keeps its best
    assert keep["a"].tolist() == [0, 1] and keep["c"].tolist() == [0, 1] and keep["b"].tolist() == [1]
    # global, no per-layer normalisation: scaling one layer up moves the cut
    keep = select_filters({**scores, "b": scores["b"] * 100}, 4 / 7)
    assert keep["b"].tolist() == [0, 1] and keep["a"].tolist() == [0] and keep["c"].tolist() == [0]
    assert select_filters(scores, 1.0)["a"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="keep_ratio"):
        select_filters(scores, 0.0)


def _random_keep(graph, seed: int, names=None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    keep = {}
    for layer in graph:
        if names is not None and layer.name not in names:
            continue
        n = int(torch.randint(1, layer.width, (1,), generator=g))  # at least one removed, at least one kept
        keep[layer.name] = torch.randperm(layer.width, generator=g)[:n].sort().values
    return keep


class _ForceOutputs:
    """Reference network: forward hooks on the BNs of pruned layers set removed channels' BN output to a value."""

    def __init__(self, detector, graph, keep, value: str):
        self.handles = []
        for layer in graph:
            if layer.name not in keep:
                continue
            removed = torch.ones(layer.width, dtype=torch.bool)
            removed[keep[layer.name]] = False
            bn = detector.get_submodule(layer.norm)
            if value == "zero":
                forced = torch.zeros(layer.width)
            else:  # BN constant: BN(0) = beta - gamma * mean / sqrt(var + eps), i.e. zeroed conv weights
                forced = (bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)).detach()
            self.handles.append(bn.register_forward_hook(self._hook(removed, forced)))

    @staticmethod
    def _hook(removed, forced):
        def hook(module, inputs, output):
            out = output.clone()
            out[:, removed] = forced[removed].view(-1, *([1] * (out.dim() - 2)))
            return out
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _max_error(a: dict, b: dict, margin: int = 0) -> float:
    assert a.keys() == b.keys()
    errors = []
    for k in a:
        x, y = a[k], b[k]
        if margin:
            x, y = x[..., margin:-margin, margin:-margin], y[..., margin:-margin, margin:-margin]
        errors.append(float((x - y).abs().max()))
    return max(errors)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seed", [0, 1])
def test_surgery_exact_without_fold_every_layer(name, seed):
    """Pruned (no fold) == original with the removed filters' outputs forced to 0, every layer: pillar encoder,
    sparse 3D convs (through the c * D + d height compression), BEV convs, deblocks (concat into the head)."""
    detector = _model(name, seed)
    batch = _batch(detector.cfg, seed)
    graph = build_graph(detector, prune_encoder=True)
    keep = _random_keep(graph, seed)
    pruned, pruned_cfg, folded = prune_with_keep(detector, graph, keep, fold_constants=False)
    assert folded == []
    reference = _maps_with_removed_filters_zeroed(detector, graph, keep, batch)
    got = _raw_maps(pruned, batch)
    assert set(got) >= {"iou"} and (("cls" in got and "dir" in got) or "heatmap" in got)
    assert _max_error(got, reference) < 1e-5
    # the pruning changed something: the unpruned outputs differ from the reference
    assert _max_error(_raw_maps(detector, batch), reference) > 1e-3
    # widths in the config are the kept counts
    if name.startswith("second"):
        assert pruned_cfg.backbone_3d.widths[2][1] == len(keep["backbone_3d.stages.2.1.0"])
        assert pruned_cfg.backbone_3d.out_width == len(keep["backbone_3d.out.0"])
        assert pruned_cfg.bev_backbone.layer_widths[1][2] == len(keep["bev_backbone.blocks.1.6"])
        return
    assert pruned_cfg.encoder.widths == [len(keep["encoder.linears.0"]), len(keep["encoder.linears.1"])]
    assert pruned_cfg.bev_backbone.layer_widths[1][2] == len(keep["bev_backbone.blocks.1.6"])
    assert pruned_cfg.bev_backbone.num_upsample_filters[2] == len(keep["bev_backbone.deblocks.2.0"])


@pytest.mark.parametrize("name, extra", [
    ("pointpillars_tiny", ["bev_backbone.upsample_strides=[]", "bev_backbone.num_upsample_filters=[]"]),  # no deblocks
    ("pointpillars_tiny", ["bev_backbone.upsample_strides=[0.5, 1, 2]"]),  # strided-conv deblock
    ("centerpoint_pillar_tiny", ["encoder.widths=[8]"]),  # one encoder layer: straight to the scatter
    ("second_tiny", ["backbone_3d.out_width=0"]),  # last stage conv -> height compression
], ids=["no-deblocks", "down-deblock", "one-encoder-layer", "second-no-out-conv"])
def test_surgery_exact_without_fold_structural_variants(name, extra):
    detector = _model(name, 0, extra)
    batch = _batch(detector.cfg, 0)
    graph = build_graph(detector, prune_encoder=True)
    keep = _random_keep(graph, 0)
    pruned, _, _ = prune_with_keep(detector, graph, keep, fold_constants=False)
    reference = _maps_with_removed_filters_zeroed(detector, graph, keep, batch)
    assert _max_error(_raw_maps(pruned, batch), reference) < 1e-5
    assert _max_error(_raw_maps(detector, batch), reference) > 1e-3


def test_surgery_exact_with_fold_where_consumers_are_pointwise():
    """Fold on: pruned == original with removed filters' conv weights ZEROED (BN constant), exactly everywhere,
    for layers whose consumers see a constant channel as a constant (pillar linear, 1x1 head convs with bias)."""
    detector = _model("pointpillars_tiny", 3)
    batch = _batch(detector.cfg, 3)
    graph = build_graph(detector, prune_encoder=True)
    names = {"encoder.linears.0", "bev_backbone.deblocks.0.0", "bev_backbone.deblocks.1.0",
             "bev_backbone.deblocks.2.0"}
    keep = _random_keep(graph, 3, names)
    pruned, _, folded = prune_with_keep(detector, graph, keep, fold_constants=True)
    assert "encoder.linears.0 -> encoder.norms.1" in folded and "bev_backbone.deblocks.1.0 -> head.conv_cls" in folded
    zeroed = copy.deepcopy(detector)
    for layer in graph:
        if layer.name in keep:
            removed = sorted(set(range(layer.width)) - set(keep[layer.name].tolist()))
            _zero_filter(zeroed, layer.name, layer.kind, removed)
    reference = _raw_maps(zeroed, batch)
    assert _max_error(_raw_maps(pruned, batch), reference) < 1e-5
    unfolded, _, _ = prune_with_keep(detector, graph, keep, fold_constants=False)
    assert _max_error(_raw_maps(unfolded, batch), reference) > 1e-3  # the fold is what makes it exact


@pytest.mark.parametrize("name", TINY)
def test_surgery_fold_exact_away_from_padded_borders(name):
    """Fold on, 3x3 pad-1 consumers: exact wherever the kernel does not overlap the zero padding."""
    detector = _model(name, 4)
    batch = _batch(detector.cfg, 4)
    graph = build_graph(detector)
    keep = _random_keep(graph, 4, {"bev_backbone.blocks.2.0", "bev_backbone.blocks.2.3"})
    pruned, _, _ = prune_with_keep(detector, graph, keep, fold_constants=True)
    zeroed = copy.deepcopy(detector)
    for layer in graph:
        if layer.name in keep:
            _zero_filter(zeroed, layer.name, layer.kind,
                         sorted(set(range(layer.width)) - set(keep[layer.name].tolist())))
    reference = _raw_maps(zeroed, batch)
    # the border band: 2 padded 3x3 convs in block 2 (stride 8) -> 2 cells = 8 head cells after the x4 deblock,
    # plus the center head's two 3x3 convs
    margin = 8 + (2 if name.startswith("centerpoint") else 0)
    got = _raw_maps(pruned, batch)
    assert _max_error(got, reference, margin) < 1e-5
    assert _max_error(got, reference) > 1e-4  # the border band is where the zero padding shows
    unfolded, _, _ = prune_with_keep(detector, graph, keep, fold_constants=False)
    assert _max_error(_raw_maps(unfolded, batch), reference, margin) > 1e-3


def _hand_param_count(cfg: DetectorConfig) -> int:
    """Parameters implied by the widths of a pillar detector with an anchor head (weights + BN gamma/beta)."""
    total, c = 0, cfg.num_point_features + 6
    for w in cfg.encoder.widths:
        total += c * w + 2 * w
        c = 2 * w
    c = cfg.encoder.widths[-1]
    for widths in cfg.bev_backbone.layer_widths:
        for w in widths:
            total += c * w * 9 + 2 * w
            c = w
    for widths, up, w in zip(cfg.bev_backbone.layer_widths, cfg.bev_backbone.upsample_strides,
                             cfg.bev_backbone.num_upsample_filters):
        total += widths[-1] * w * int(up) ** 2 + 2 * w
    anchors = 2 * cfg.num_classes
    outputs = anchors * (cfg.num_classes + 7 + cfg.head.num_dir_bins + int(cfg.head.iou_branch))
    return total + (sum(cfg.bev_backbone.num_upsample_filters) + 1) * outputs


def test_prune_detector_params_report_and_config_round_trip(tmp_path):
    detector = _model("pointpillars_tiny", 5)
    assert count_parameters(detector) == _hand_param_count(detector.cfg)
    batch = _batch(detector.cfg, 5)
    scores = score_filters(detector, [batch, _batch(detector.cfg, 6)], PruneConfig(num_frames=3, prune_encoder=True))
    assert scores.num_frames == 3
    pruned, pruned_cfg, report = prune_detector(detector, scores, 0.45)
    assert count_parameters(pruned) == _hand_param_count(pruned_cfg) == report.params_after
    assert report.params_after < report.params_before
    total = sum(layer.width for layer in scores.layers)
    assert report.filters_before == total
    assert report.filters_after >= round(0.45 * total)
    assert report.filters_after <= round(0.45 * total) + len(scores.layers)  # only the one-per-layer floor adds
    table = report.to_markdown()
    assert "| bev_backbone.deblocks.2.0 | bev | 6 |" in table
    for change in report.layers:
        assert change.width_after == len(report.keep[change.name]) >= 1
    # the pruned network rebuilds from its saved config alone and loads the surgery's weights
    path = save_yaml(pruned_cfg, tmp_path / "pruned.yaml")
    rebuilt = build_detector(load_config(DetectorConfig, path)).eval()
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    assert _max_error(_raw_maps(rebuilt, batch), _raw_maps(pruned, batch)) == 0.0
    # the original is untouched and the pruned net keeps its mode
    assert count_parameters(detector) == report.params_before and not pruned.training
    # scores from another graph (e.g. loaded from disk with other settings) are refused with a message
    stale = ImportanceScores(build_graph(detector, prune_encoder=False), scores.scores, "masked")
    with pytest.raises(ValueError, match="encoder.linears.0"):
        prune_detector(detector, stale, 0.45)


def test_scoring_refuses_the_evaluation_split_and_restores_mode():
    config = types.SimpleNamespace(train_split="train", val_split="val", test_split="test")
    with pytest.raises(ValueError, match="training frames"):
        check_training_split(types.SimpleNamespace(dataset=types.SimpleNamespace(split="val", config=config)))
    check_training_split(types.SimpleNamespace(dataset=types.SimpleNamespace(split="train", config=config)))
    detector = _model("centerpoint_pillar_tiny").train()
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    score_filters(detector, [_batch(detector.cfg, frames=1)], PruneConfig(filters_per_pass=16))
    assert detector.training
    assert all(torch.equal(before[k], v) for k, v in detector.state_dict().items())  # no BN stat updates either


def test_sparse_importance_equals_really_zeroed_weights():
    detector = _model("second_tiny")
    batch = _batch(detector.cfg)
    graph = build_graph(detector)
    # stage 0 (re-run from the voxels), a strided conv and a SubM conv (cached earlier stages), the output conv
    chosen = [l for l in graph if l.name in ("backbone_3d.stages.0.1.0", "backbone_3d.stages.2.0.0",
                                             "backbone_3d.stages.1.1.0", "backbone_3d.out.0",
                                             "bev_backbone.deblocks.1.0")]
    assert len(chosen) == 5
    scores = score_filters(detector, [batch], PruneConfig(filters_per_pass=4), layers=chosen)
    for layer in chosen:
        expected = _brute_force_importance(detector, batch, layer, "masked")
        assert expected.max() > 0, layer.name
        torch.testing.assert_close(scores.scores[layer.name], expected, rtol=1e-4, atol=1e-7, msg=layer.name)


def test_height_compression_maps_kept_channel_c_to_c_times_D_plus_d():
    detector = _model("second_tiny", 2)
    batch = _batch(detector.cfg, 2)
    graph = build_graph(detector)
    depth, width = detector.backbone_3d.depth, detector.backbone_3d.out_channels
    assert depth == 2
    (out_layer,) = [l for l in graph if l.name == "backbone_3d.out.0"]
    (consumer,) = out_layer.consumers
    assert consumer.module == "bev_backbone.blocks.0.0" and consumer.fold is None
    assert consumer.in_channels.tolist() == [[c * depth + d for d in range(depth)] for c in range(width)]
    keep = {"backbone_3d.out.0": torch.tensor([1, 4, 5])}
    pruned, pruned_cfg, _ = prune_with_keep(detector, graph, keep, fold_constants=False)
    assert pruned_cfg.backbone_3d.out_width == 3
    old = detector.bev_backbone.blocks[0][0].weight
    new = pruned.bev_backbone.blocks[0][0].weight
    assert new.shape[1] == 3 * depth
    assert torch.equal(new, old[:, [2, 3, 8, 9, 10, 11]])  # c = 1, 4, 5 -> 2c, 2c + 1
    reference = _maps_with_removed_filters_zeroed(detector, graph, keep, batch)
    assert _max_error(_raw_maps(pruned, batch), reference) < 1e-5
    # the reference code's mistake (channel-major c + C * d instead of c * D + d) is caught by the same check
    wrong = copy.deepcopy(graph)
    (wrong_out,) = [l for l in wrong if l.name == "backbone_3d.out.0"]
    wrong_out.consumers[0].in_channels = torch.stack([torch.arange(width) + width * d for d in range(depth)], 1)
    mismapped, _, _ = prune_with_keep(detector, wrong, keep, fold_constants=False)
    assert _max_error(_raw_maps(mismapped, batch), reference) > 1e-3
