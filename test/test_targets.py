"""Target assignment (anchor and center heads) and the detection losses, against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clean_ros.models.configs import LossConfig, load_detector_config
from clean_ros.models.detector import build_detector
from clean_ros.postprocess import decode_anchor_boxes
from training.config_paths import find_config
from training.losses import (anchor_losses, center_focal_loss, center_losses, detection_loss, sigmoid_focal_loss,
                             smooth_l1)
from training.targets import (assign_anchor_targets, assign_center_targets, build_targets, direction_bins,
                              gaussian_radius)


@pytest.fixture(scope="module")
def anchor_model():
    cfg = load_detector_config(find_config("pointpillars_tiny"))
    return cfg, build_detector(cfg)


@pytest.fixture(scope="module")
def center_model():
    cfg = load_detector_config(find_config("centerpoint_pillar_tiny"), ["head.iou_branch=true"])
    return cfg, build_detector(cfg)


def _position(grid, row, col, k):
    return (row * grid.width + col) * grid.positions_per_cell + k


def _axis_aligned_iou(anchors: np.ndarray, box: np.ndarray) -> np.ndarray:
    """BEV IoU of anchors with yaw 0 / pi/2 and a yaw-0 box: plain rectangle overlap, independent of geometry.py."""
    turned = np.isclose(anchors[:, 6], math.pi / 2, atol=1e-5)
    half_x = np.where(turned, anchors[:, 4], anchors[:, 3]) / 2
    half_y = np.where(turned, anchors[:, 3], anchors[:, 4]) / 2
    ox = np.clip(np.minimum(anchors[:, 0] + half_x, box[0] + box[3] / 2)
                 - np.maximum(anchors[:, 0] - half_x, box[0] - box[3] / 2), 0, None)
    oy = np.clip(np.minimum(anchors[:, 1] + half_y, box[1] + box[4] / 2)
                 - np.maximum(anchors[:, 1] - half_y, box[1] - box[4] / 2), 0, None)
    inter = ox * oy
    return inter / (anchors[:, 3] * anchors[:, 4] + box[3] * box[4] - inter)


def _expected_labels(iou: np.ndarray, matched: float, unmatched: float) -> np.ndarray:
    best = iou.max()
    positive = (iou >= matched) | (np.isclose(iou, best, rtol=0, atol=1e-9) & (best > 0))
    labels = np.full(iou.shape, -1)
    labels[(iou < unmatched) & ~positive] = 0
    labels[positive] = 1
    return labels


def test_box_on_an_anchor_is_its_positive_with_zero_residual(anchor_model):
    cfg, model = anchor_model
    grid, anchors, classes = model.grid, model.anchors, model.anchor_classes
    p = _position(grid, 40, 20, 0)  # Car anchor, rotation 0
    gt_boxes = torch.zeros(2, 3, 7)
    gt_boxes[0, 0] = anchors[p]
    gt_labels = torch.tensor([[0, -1, -1], [-1, -1, -1]])
    t = assign_anchor_targets(anchors, classes, gt_boxes, gt_labels, cfg.head.anchors)
    assert t.labels[0, p] == 1 and t.matched_gt[0, p] == 0
    assert torch.allclose(t.box_targets[0, p], torch.zeros(7), atol=1e-6)
    assert t.iou_targets[0, p] == pytest.approx(1.0)
    assert t.dir_targets[0, p] == 1  # yaw 0 lies in the second half-turn after the pi/4 offset
    # Car anchors: positives / negatives / ignored exactly as rectangle overlap and the 0.6 / 0.45 thresholds say
    car = (classes == 0).nonzero().squeeze(1)
    iou = _axis_aligned_iou(anchors[car].double().numpy(), anchors[p].double().numpy())
    expected = _expected_labels(iou, 0.6, 0.45)
    assert np.array_equal(t.labels[0, car].numpy(), expected)
    assert 1 < (expected == 1).sum() < 10 and (expected == -1).sum() > 0  # neighbours shifted one cell still match
    assert np.allclose(t.iou_targets[0, car].numpy(), iou, atol=1e-5)
    # Pedestrian / Cyclist anchors see no box of their class: all background; frame 1 has no boxes at all
    assert (t.labels[0, classes != 0] == 0).all() and (t.labels[1] == 0).all()
    assert (t.iou_targets[1] == 0).all() and (t.matched_gt[1] == -1).all()
    far = _position(grid, 5, 70, 0)
    assert t.labels[0, far] == 0 and t.iou_targets[0, far] == 0


def test_anchor_matching_nearest_axis_aligned_by_default_rotated_on_request(anchor_model):
    from clean_ros.config import ConfigError
    from clean_ros.models.configs import HeadConfig
    from clean_ros import geometry

    cfg, model = anchor_model
    assert HeadConfig().anchor_matching == "nearest_bev" and cfg.head.anchor_matching == "nearest_bev"
    grid, anchors, classes = model.grid, model.anchors, model.anchor_classes
    p = _position(grid, 40, 20, 0)
    box = anchors[p].clone()
    box[6] = 0.5  # turned 0.5 rad: the nearest axis-aligned rectangle is the yaw-0 anchor's own
    car = (classes == 0).nonzero().squeeze(1)
    nearest = assign_anchor_targets(anchors, classes, box.view(1, 1, 7), torch.tensor([[0]]), cfg.head.anchors)
    flat = box.clone()
    flat[6] = 0.0
    iou = _axis_aligned_iou(anchors[car].double().numpy(), flat.double().numpy())  # independent of geometry.py
    assert np.array_equal(nearest.labels[0, car].numpy(), _expected_labels(iou, 0.6, 0.45))
    assert np.allclose(nearest.iou_targets[0, car].numpy(), iou, atol=1e-5) and nearest.iou_targets[0, p] == 1.0
    rotated = assign_anchor_targets(anchors, classes, box.view(1, 1, 7), torch.tensor([[0]]), cfg.head.anchors,
                                    matching="rotated_bev")
    exact = geometry.bev_iou(anchors[car], box.view(1, 7))[:, 0].double().numpy()
    assert np.array_equal(rotated.labels[0, car].numpy(), _expected_labels(exact, 0.6, 0.45))
    assert rotated.iou_targets[0, p] == pytest.approx(float(exact.max()), abs=1e-6) and exact.max() < 0.8
    assert int(nearest.positives.sum()) > int(rotated.positives.sum()) >= 1
    # build_targets follows the config
    rot_cfg = load_detector_config(find_config("pointpillars_tiny"), ["head.anchor_matching=rotated_bev"])
    out = model.head_output(model.head(torch.zeros(1, cfg.bev_backbone.out_channels, grid.height, grid.width)),
                            torch.zeros(1))
    assert torch.equal(build_targets(out, box.view(1, 1, 7), torch.tensor([[0]]), rot_cfg).labels, rotated.labels)
    assert torch.equal(build_targets(out, box.view(1, 1, 7), torch.tensor([[0]]), cfg).labels, nearest.labels)
    with pytest.raises(ValueError, match="anchor matching"):
        assign_anchor_targets(anchors, classes, box.view(1, 1, 7), torch.tensor([[0]]), cfg.head.anchors,
                              matching="exact")
    with pytest.raises(ConfigError, match="anchor_matching"):
        load_detector_config(find_config("pointpillars_tiny"), ["head.anchor_matching=rotated"])


def test_best_anchor_is_forced_positive_and_ignore_band(anchor_model):
    cfg, model = anchor_model
    grid, anchors, classes = model.grid, model.anchors, model.anchor_classes
    p = _position(grid, 30, 50, 0)
    box = anchors[p].clone()
    box[3:5] = torch.tensor([3.0, 1.2])  # IoU 3.6 / 6.24 = 0.577 < 0.6 with its own anchor
    t = assign_anchor_targets(anchors, classes, box.view(1, 1, 7), torch.tensor([[0]]), cfg.head.anchors)
    assert t.labels[0, p] == 1 and (t.labels[0] > 0).sum() == 1
    assert t.iou_targets[0, p] == pytest.approx(3.6 / 6.24, abs=1e-5)
    east = p + grid.positions_per_cell  # one cell along +x: IoU 3.372 / 6.468 = 0.521 -> between 0.45 and 0.6
    assert t.iou_targets[0, east] == pytest.approx(3.372 / 6.468, abs=1e-5) and t.labels[0, east] == -1
    expected_residual = torch.tensor([0, 0, 0, math.log(3.0 / 3.9), math.log(1.2 / 1.6), 0, 0])
    assert torch.allclose(t.box_targets[0, p], expected_residual, atol=1e-6)


def test_prepended_boxes_and_untrained_labels(anchor_model):
    cfg, model = anchor_model
    grid, anchors, classes = model.grid, model.anchors, model.anchor_classes
    ped = _position(grid, 10, 10, 2)  # Pedestrian anchor, rotation 0
    cyc = _position(grid, 60, 60, 5)  # Cyclist anchor, rotation pi/2
    gt = torch.stack([anchors[ped], anchors[cyc], anchors[_position(grid, 40, 40, 0)]]).unsqueeze(0)
    t = assign_anchor_targets(anchors, classes, gt, torch.tensor([[1, 2, -1]]), cfg.head.anchors)
    assert t.labels[0, ped] == 2 and t.labels[0, cyc] == 3
    assert (t.labels[0, classes == 0] == 0).all()  # the -1 box trains nothing: Car anchors all background
    with pytest.raises(ValueError, match="class 3 but the model has 3 classes"):
        assign_anchor_targets(anchors, classes, gt, torch.tensor([[3, 2, -1]]), cfg.head.anchors)


def test_direction_bins_round_trip_through_decode():
    yaws = torch.tensor([0.0, 0.5, 2.0, math.pi, -2.5, -0.2, 3.0])
    bins = direction_bins(yaws, 0.78539, 2)
    assert bins.tolist() == [1, 1, 0, 0, 0, 1, 0]  # bin 0 = yaw in [pi/4, 5pi/4) mod 2pi
    anchors = torch.tensor([[0, 0, 0, 3.9, 1.6, 1.56, 0.0], [0, 0, 0, 3.9, 1.6, 1.56, math.pi / 2]]).repeat(4, 1)[:7]
    residuals = torch.zeros(1, 7, 7)
    residuals[0, :, 6] = yaws - anchors[:, 6]
    dir_logits = torch.nn.functional.one_hot(bins, 2).float().unsqueeze(0) * 10
    # a half-turned regression (what the sin-difference loss cannot tell apart) is fixed by the direction bin
    residuals[0, 3, 6] += math.pi
    decoded = decode_anchor_boxes(residuals, anchors, dir_logits, 0.78539, 0.0, 2)[0, :, 6]
    diff = torch.remainder(decoded - yaws + math.pi, 2 * math.pi) - math.pi
    assert torch.allclose(diff, torch.zeros(7), atol=1e-5)


def test_gaussian_radius_hand_value():
    # 10 x 5 cells at overlap 0.1: the three cases give 11.42, 21.71 and 3.0 -> 3.0
    assert gaussian_radius(torch.tensor([10.0]), torch.tensor([5.0]), 0.1).item() == pytest.approx(3.0, abs=1e-5)


def test_center_targets_heatmap_and_regression(center_model):
    cfg, model = center_model
    grid = model.grid
    row, col = 40, 20
    x = grid.x_min + (col + 0.25) * grid.cell_x
    y = grid.y_min + (row + 0.75) * grid.cell_y
    gt = torch.tensor([[[x, y, -0.9, 3.9, 1.6, 1.56, 0.3], [100.0, 0.0, -0.9, 3.9, 1.6, 1.56, 0.0]]])
    t = assign_center_targets(grid, gt, torch.tensor([[0, 1]]), cfg.num_classes, cfg.head)
    pixel = row * grid.width + col
    assert t.heatmap[0, pixel, 0] == 1.0 and (t.heatmap[0, :, 0] == 1).sum() == 1
    assert (t.heatmap[0, :, 1:] == 0).all()  # the box outside the map draws nothing
    assert t.mask[0].tolist()[:2] == [True, False] and t.indices[0, 0] == pixel
    radius = max(cfg.head.min_radius, math.floor(gaussian_radius(torch.tensor([3.9 / 0.64]), torch.tensor([1.6 / 0.64]),
                                                                 0.1).item()))
    sigma = (2 * radius + 1) / 6
    assert t.heatmap[0, pixel + 1, 0] == pytest.approx(math.exp(-1 / (2 * sigma ** 2)), rel=1e-5)
    assert t.heatmap[0, pixel + radius + 1, 0] == 0 and t.heatmap[0, pixel + radius, 0] > 0
    expected = [0.25, 0.75, -0.9, math.log(3.9), math.log(1.6), math.log(1.56), math.sin(0.3), math.cos(0.3)]
    assert torch.allclose(t.box_targets[0, 0], torch.tensor(expected), atol=1e-5)
    assert t.iou_targets[0, pixel] == 1 and t.iou_targets.sum() == 1


# --------------------------------------------------------------------------- losses
def test_focal_and_smooth_l1_hand_values():
    logits = torch.tensor([0.0, 0.0, 20.0, -20.0])
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0])
    loss = sigmoid_focal_loss(logits, targets, 0.25, 2.0)
    ln2 = math.log(2)
    assert loss[:2].tolist() == pytest.approx([0.25 * 0.25 * ln2, 0.75 * 0.25 * ln2], rel=1e-6)
    assert loss[2:].abs().max() < 1e-12
    beta = 1 / 9
    assert smooth_l1(torch.tensor([0.05, -1.0]), beta).tolist() == pytest.approx([0.5 * 0.05 ** 2 / beta, 1 - beta / 2])


def _perfect_logits(targets, num_classes):
    one_hot = torch.nn.functional.one_hot(targets.labels.clamp(min=0), num_classes + 1)[..., 1:].float()
    return one_hot * 60 - 30  # ignored positions: anything


def test_anchor_losses_zero_when_perfect_and_exact_when_not(anchor_model):
    cfg, model = anchor_model
    grid, anchors = model.grid, model.anchors
    gt = torch.stack([anchors[_position(grid, 40, 20, 0)], anchors[_position(grid, 10, 10, 2)]]).unsqueeze(0)
    gt[0, 0, 6] = 3.0  # a heading that is not the anchor's
    t = assign_anchor_targets(anchors, model.anchor_classes, gt, torch.tensor([[0, 1]]), cfg.head.anchors)
    out = model.head_output(model.head(torch.zeros(1, cfg.bev_backbone.out_channels, grid.height, grid.width)),
                            torch.zeros(1))
    iou_logit = torch.logit(t.iou_targets.clamp(1e-7, 1 - 1e-7)).double()
    perfect = out._replace(cls_logits=_perfect_logits(t, 3), box_preds=t.box_targets.clone(),
                           dir_logits=torch.nn.functional.one_hot(t.dir_targets, 2).float() * 60 - 30,
                           iou_logits=iou_logit.float())
    loss_cfg = LossConfig()
    parts = anchor_losses(perfect, t, loss_cfg).as_floats()
    assert set(parts) == {"total", "cls", "box", "dir", "iou"} and parts["total"] < 1e-6
    # yaw regressed half a turn off: sin-difference box loss stays zero, the direction loss is what notices
    num_pos = int((t.labels > 0).sum())
    flipped = perfect.box_preds.clone()
    flipped[..., 6] += math.pi
    assert anchor_losses(perfect._replace(box_preds=flipped), t, loss_cfg).parts["box"] < 1e-5
    shifted = perfect.box_preds.clone()
    first = (t.labels[0] > 0).nonzero()[0, 0]
    shifted[0, first, 0] += 1.0
    box = anchor_losses(perfect._replace(box_preds=shifted), t, loss_cfg).parts["box"].item()
    assert box == pytest.approx(2.0 * (1 - (1 / 9) / 2) / num_pos, rel=1e-5)
    # IoU branch predicting 0 everywhere: sum of squared targets / positives
    silent = anchor_losses(perfect._replace(iou_logits=torch.full_like(perfect.iou_logits, -60)), t, loss_cfg)
    assert silent.parts["iou"].item() == pytest.approx(float((t.iou_targets ** 2).sum()) / num_pos, rel=1e-5)
    # ignored anchors contribute nothing to classification
    ignored = t.labels == -1
    assert ignored.any()
    noisy = perfect.cls_logits.clone()
    noisy[ignored] = 5.0
    assert anchor_losses(perfect._replace(cls_logits=noisy), t, loss_cfg).parts["cls"] < 1e-6


def test_detection_loss_backward_on_real_head(anchor_model, center_model):
    for cfg, model in (anchor_model, center_model):
        torch.manual_seed(0)
        grid = model.grid
        bev = torch.randn(2, cfg.bev_backbone.out_channels, grid.height, grid.width)
        out = model.head_output(model.head(bev), bev)
        gt = torch.tensor([[[10.0, 2.0, -0.9, 3.9, 1.6, 1.56, 0.3], [0, 0, 0, 0, 0, 0, 0]],
                           [[20.0, -5.0, -0.9, 0.8, 0.6, 1.73, 1.0], [30.0, 5.0, -0.9, 1.76, 0.6, 1.73, -1.0]]])
        loss, targets = detection_loss(out, gt, torch.tensor([[0, -1], [1, 2]]), cfg)
        assert torch.isfinite(loss.total) and loss.total > 0
        assert loss.total.item() == pytest.approx(sum(v.item() for v in loss.parts.values()), rel=1e-6)
        loss.total.backward()
        assert model.head.parameters().__next__().grad is not None
        model.zero_grad()


def test_center_losses(center_model):
    cfg, model = center_model
    grid = model.grid
    gt = torch.tensor([[[10.0, 2.0, -0.9, 3.9, 1.6, 1.56, 0.3]]])
    out = model.head_output(model.head(torch.zeros(1, cfg.bev_backbone.out_channels, grid.height, grid.width)),
                            torch.zeros(1))
    t = build_targets(out, gt, torch.tensor([[0]]), cfg)
    box_preds = torch.zeros_like(out.box_preds)
    box_preds[0, t.indices[0, 0]] = t.box_targets[0, 0]
    good_heat = torch.logit(t.heatmap.clamp(1e-4, 1 - 1e-4))
    good = out._replace(box_preds=box_preds, cls_logits=good_heat,
                        iou_logits=torch.logit(t.iou_targets.clamp(1e-6, 1 - 1e-6)))
    parts = center_losses(good, t, cfg.head.loss).parts
    assert parts["reg"] < 1e-6 and parts["iou"] < 1e-3
    bad = good._replace(cls_logits=torch.zeros_like(good_heat))
    assert center_losses(bad, t, cfg.head.loss).parts["heatmap"] > 10 * parts["heatmap"]
    # CenterNet focal: one peak predicted 0.5, nothing else: -log(0.5) * 0.5^2 over 1 peak
    heat = torch.zeros(1, 4, 1)
    heat[0, 0, 0] = 1.0
    logits = torch.full((1, 4, 1), -30.0)
    logits[0, 0, 0] = 0.0
    assert center_focal_loss(logits, heat).item() == pytest.approx(math.log(2) * 0.25, rel=1e-3)
