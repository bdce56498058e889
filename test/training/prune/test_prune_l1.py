"""L1-norm pruning (the ablation "L1-norm pruning instead of category importance"): a filter's importance is the L1
norm of its weights divided by its layer's mean norm, computed from the weights alone (no frames), over the same
layers the category criteria score, and the global ranking keeps the largest."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from clean_ros.yaml_config import ConfigError, load_config
from clean_ros.models.detector_config import load_detector_config
from clean_ros.models.detector import build_detector
from training.config_paths import find_config
from training.prune import PruneConfig, build_graph, prune_detector, score_filters, select_filters

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["point_cloud_range=[0.0, -12.8, -3.0, 25.6, 12.8, 1.0]",
         "bev_backbone.layer_widths=[[6, 6], [8, 8, 8], [10, 10, 10]]",
         "bev_backbone.num_upsample_filters=[4, 5, 6]", "encoder.widths=[8, 12]"]
SMALL_SECOND = ["point_cloud_range=[0.0, -6.4, -3.0, 12.8, 6.4, 1.0]",
                "backbone_3d.widths=[[4, 4], [6, 6], [8, 8], [8, 8]]", "backbone_3d.out_width=6",
                "bev_backbone.layer_widths=[[8, 8], [10, 10, 10]]", "bev_backbone.num_upsample_filters=[4, 5]"]


class _NoFrames:
    """A loader that must not be read: the L1 criterion is data-free."""

    def __iter__(self):
        raise AssertionError("the l1 criterion iterated the loader")


def _detector(name: str, seed: int = 0):
    torch.manual_seed(seed)
    overrides = SMALL_SECOND if name.startswith("second") else SMALL
    return build_detector(load_detector_config(find_config(name), overrides)).eval()


def _hand_l1(module: nn.Module) -> torch.Tensor:
    """L1 norm of each output filter, written out per weight layout."""
    w = module.weight.detach().double().abs()
    if isinstance(module, nn.ConvTranspose2d):  # [in, out, kh, kw]
        return w.sum(dim=(0, 2, 3))
    if isinstance(module, nn.Linear):  # [out, in]
        return w.sum(dim=1)
    if isinstance(module, nn.Conv2d):  # [out, in, kh, kw]
        return w.sum(dim=(1, 2, 3))
    assert w.dim() == 5, type(module)  # spconv [out, kz, ky, kx, in]
    return w.sum(dim=(1, 2, 3, 4))


@pytest.mark.parametrize("name", ["pointpillars_tiny", "second_tiny"])
def test_l1_scores_are_the_layer_normalised_l1_norms(name):
    detector = _detector(name)
    cfg = PruneConfig(criterion="l1", prune_encoder=True)
    scores = score_filters(detector, _NoFrames(), cfg)
    graph = build_graph(detector, prune_encoder=True)
    assert [layer.name for layer in scores.layers] == [layer.name for layer in graph]
    assert set(scores.scores) == {layer.name for layer in graph}
    kinds = {layer.kind for layer in graph}
    assert kinds >= ({"sparse", "deconv", "conv"} if name.startswith("second") else {"linear", "conv", "deconv"})
    for layer in graph:
        norms = _hand_l1(detector.get_submodule(layer.name))
        expected = norms / norms.mean()
        got = scores.scores[layer.name]
        assert got.dtype == torch.float64 and got.shape == (layer.width,)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0.0, msg=layer.name)
        assert abs(float(got.mean()) - 1.0) < 1e-9  # normalised: every layer's mean is 1
    assert scores.num_frames == 0 and scores.frames_without_detections == 0


def test_l1_is_per_layer_scale_free_and_keeps_the_largest():
    detector = _detector("pointpillars_tiny", 1)
    name = "bev_backbone.blocks.1.3"
    conv = detector.get_submodule(name)
    with torch.no_grad():
        conv.weight[2] *= 10.0  # the clearly largest filter of its layer
        conv.weight[5] *= 0.01  # the clearly smallest
    cfg = PruneConfig(criterion="l1", keep_ratio=0.5)
    scores = score_filters(detector, _NoFrames(), cfg)
    flat = torch.cat([scores.scores[layer.name] for layer in scores.layers])
    assert float(scores.scores[name][2]) == float(flat.max())  # ~ 10x its layer's mean beats every other filter

    pruned, pruned_cfg, report = prune_detector(detector, scores, cfg.keep_ratio, cfg.fold_constants)
    assert 2 in report.keep[name].tolist() and 5 not in report.keep[name].tolist()
    # global ranking of the normalised norms: the kept filters are exactly the top ones (no layer hit the floor)
    total = flat.numel()
    threshold = torch.sort(flat, descending=True).values[round(cfg.keep_ratio * total) - 1]
    for layer in scores.layers:
        kept = report.keep[layer.name]
        assert bool((scores.scores[layer.name][kept] >= threshold).all()), layer.name
        dropped = torch.ones(layer.width, dtype=torch.bool)
        dropped[kept] = False
        assert bool((scores.scores[layer.name][dropped] <= threshold).all()), layer.name
    assert report.filters_after == round(cfg.keep_ratio * total)
    assert pruned.bev_backbone.blocks[1][3].out_channels == len(report.keep[name])
    # the pruned conv inherits the kept filters' weights
    kept_weight = conv.weight.detach()[report.keep[name]]
    assert torch.equal(pruned.bev_backbone.blocks[1][3].weight.detach()[:, :, :, :],
                       kept_weight[:, report.keep["bev_backbone.blocks.1.0"]])

    # scaling a whole layer changes its raw norms, not its normalised scores, so the cut does not move
    with torch.no_grad():
        detector.get_submodule("bev_backbone.blocks.2.0").weight *= 64.0  # a power of 2: exact in float32
    rescaled = score_filters(detector, _NoFrames(), cfg)
    for layer in scores.layers:
        torch.testing.assert_close(rescaled.scores[layer.name], scores.scores[layer.name], rtol=1e-12, atol=0.0)
    assert {k: v.tolist() for k, v in select_filters(rescaled.scores, 0.5).items()} == \
        {k: v.tolist() for k, v in report.keep.items()}


def test_l1_criterion_is_configured_and_recorded():
    assert load_config(PruneConfig, data={"criterion": "l1"}).criterion == "l1"
    with pytest.raises(ConfigError, match="criterion"):
        load_config(PruneConfig, data={"criterion": "l2"})
    with pytest.raises(ValueError, match="masked, unmasked, l1"):
        PruneConfig(criterion="l2")
    detector = _detector("pointpillars_tiny", 2)
    scores = score_filters(detector, _NoFrames(), PruneConfig(criterion="l1"))
    assert scores.criterion == "l1"
    _, _, report = prune_detector(detector, scores, 0.5)
    assert report.criterion == "l1" and report.as_dict()["criterion"] == "l1"
    assert report.to_markdown().startswith("Pruning (l1, keep ratio 0.5)")
    # the evaluation-split guard still applies (a val loader is a mistake even when it is not read)
    config = type("C", (), {"train_split": "train", "val_split": "val", "test_split": "test"})()
    val_loader = type("L", (), {"dataset": type("D", (), {"split": "val", "config": config})()})()
    with pytest.raises(ValueError, match="training frames"):
        score_filters(detector, val_loader, PruneConfig(criterion="l1"))
