"""Target assignment (anchor and center heads) and the detection losses, against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clean_ros.yaml_config import ConfigError
from clean_ros.models.detector_config import LossConfig, load_detector_config
from clean_ros.models.detector import build_detector
from clean_ros.inference.postprocess import decode_anchor_boxes, postprocess_tensors
from training.config_paths import find_config
from training.losses import (anchor_losses, balanced_iou_branch_loss, center_focal_loss, center_losses, detection_loss,
                             iou_branch_loss, sigmoid_focal_loss, smooth_l1)
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
    from clean_ros.yaml_config import ConfigError
    from clean_ros.models.detector_config import HeadConfig
    from clean_ros.cloud import geometry

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


# --------------------------------------------------------------------------- IoU-branch targets
def _decode_reference(residual: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """The residual coder written out (docs/HELPERS.md), independent of geometry.decode_boxes."""
    diagonal = math.hypot(anchor[3], anchor[4])
    return np.array([anchor[0] + residual[0] * diagonal, anchor[1] + residual[1] * diagonal,
                     anchor[2] + residual[2] * anchor[5], *(np.exp(residual[3:6]) * anchor[3:6]),
                     anchor[6] + residual[6]])


def _iou_reference(a: np.ndarray, b: np.ndarray, three_d: bool, samples: int = 700) -> float:
    """IoU of two rotated boxes by counting BEV sample points inside each (z overlap exact), independent of
    geometry.py; accurate to about 1%."""
    reach = max(math.hypot(a[3], a[4]), math.hypot(b[3], b[4])) / 2
    lo = np.minimum(a[:2], b[:2]) - reach
    hi = np.maximum(a[:2], b[:2]) + reach
    xs = np.linspace(lo[0], hi[0], samples, endpoint=False) + (hi[0] - lo[0]) / samples / 2
    ys = np.linspace(lo[1], hi[1], samples, endpoint=False) + (hi[1] - lo[1]) / samples / 2
    gx, gy = np.meshgrid(xs, ys)
    cell = (hi[0] - lo[0]) * (hi[1] - lo[1]) / samples ** 2

    def inside(box):
        dx, dy = gx - box[0], gy - box[1]
        c, s = math.cos(box[6]), math.sin(box[6])
        return (np.abs(c * dx + s * dy) <= box[3] / 2) & (np.abs(-s * dx + c * dy) <= box[4] / 2)

    inter = (inside(a) & inside(b)).sum() * cell
    if not three_d:
        return inter / (a[3] * a[4] + b[3] * b[4] - inter)
    z_overlap = max(0.0, min(a[2] + a[5] / 2, b[2] + b[5] / 2) - max(a[2] - a[5] / 2, b[2] - b[5] / 2))
    inter *= z_overlap
    return inter / (a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter)


def _scene(model):
    """Frame 0: a turned Car, a Pedestrian at a cell corner, a Cyclist; frame 1: one Car and a padding row."""
    grid, anchors = model.grid, model.anchors
    car = anchors[_position(grid, 40, 20, 0)].clone()
    car[[0, 1, 6]] += torch.tensor([0.2, -0.1, 0.3])
    ped = anchors[_position(grid, 10, 10, 2)].clone()
    ped[:2] += torch.tensor([grid.cell_x / 2, grid.cell_y / 2])  # equally far from four cell centres
    cyc = anchors[_position(grid, 60, 30, 4)].clone()
    cyc[6] = -1.0
    other = anchors[_position(grid, 30, 60, 1)].clone()
    gt = torch.stack([torch.stack([car, ped, cyc]), torch.stack([other, torch.zeros(7), torch.zeros(7)])])
    return gt, torch.tensor([[0, 1, 2], [0, -1, -1]])


def _head_output(cfg, model, box_preds=None):
    grid = model.grid
    out = model.head_output(model.head(torch.zeros(2, cfg.bev_backbone.out_channels, grid.height, grid.width)),
                            torch.zeros(2))
    return out if box_preds is None else out._replace(box_preds=box_preds)


@pytest.mark.parametrize("mode", ["predicted", "predicted_bev"])
def test_predicted_iou_targets_match_brute_force(anchor_model, mode):
    cfg, model = anchor_model
    cfg = load_detector_config(find_config("pointpillars_tiny"), [f"head.loss.iou_target={mode}"])
    gt, labels = _scene(model)
    box_preds = torch.randn(2, model.grid.num_positions, 7, generator=torch.Generator().manual_seed(3)) * 0.15
    t = build_targets(_head_output(cfg, model, box_preds), gt, labels, cfg)
    plain = assign_anchor_targets(model.anchors, model.anchor_classes, gt, labels, cfg.head.anchors)
    assert torch.equal(t.labels, plain.labels) and torch.equal(t.matched_gt, plain.matched_gt)
    frames, positions = t.positives.nonzero(as_tuple=True)
    assert set((t.labels[frames, positions] - 1).tolist()) == {0, 1, 2}  # every class has positives
    anchors, boxes = model.anchors.double().numpy(), box_preds.double().numpy()
    for b, p in zip(frames.tolist(), positions.tolist()):
        predicted = _decode_reference(boxes[b, p], anchors[p])
        assigned = gt[b, t.matched_gt[b, p]].double().numpy()
        expected = _iou_reference(predicted, assigned, three_d=mode == "predicted")
        assert float(t.iou_targets[b, p]) == pytest.approx(expected, abs=0.02), (b, p)
    assert (t.iou_targets[~t.positives] == 0).all()  # every other anchor: 0, whatever its own overlap
    assert (plain.iou_targets[~t.positives] > 0).any()
    # a perfect regression scores 1 at every positive, whatever the class
    perfect = build_targets(_head_output(cfg, model, plain.box_targets.clone()), gt, labels, cfg)
    assert torch.allclose(perfect.iou_targets[perfect.positives], torch.ones(len(frames)), atol=1e-4)


def test_anchor_iou_target_option_keeps_the_anchor_overlap(anchor_model):
    _, model = anchor_model
    cfg = load_detector_config(find_config("pointpillars_tiny"), ["head.loss.iou_target=anchor"])
    gt, labels = _scene(model)
    t = build_targets(_head_output(cfg, model, torch.randn(2, model.grid.num_positions, 7)), gt, labels, cfg)
    plain = assign_anchor_targets(model.anchors, model.anchor_classes, gt, labels, cfg.head.anchors)
    assert torch.equal(t.iou_targets, plain.iou_targets)
    assert LossConfig().iou_target == "predicted" and LossConfig().iou_loss == "balanced"
    with pytest.raises(ConfigError, match="iou_target: 'bogus' is not one of"):
        load_detector_config(find_config("pointpillars_tiny"), ["head.loss.iou_target=bogus"])


def _well_localised_output(cfg, model, gt, labels, targets_mode):
    """Every object detected (class logit +4 at its positive anchors, -10 elsewhere; residuals exact) and an IoU
    branch that outputs exactly its training target: the best a branch trained on that target can do."""
    assign = load_detector_config(find_config("pointpillars_tiny"), [f"head.loss.iou_target={targets_mode}"])
    plain = assign_anchor_targets(model.anchors, model.anchor_classes, gt, labels, cfg.head.anchors)
    out = _head_output(cfg, model, plain.box_targets.clone())
    t = build_targets(out, gt, labels, assign)
    cls = torch.full_like(out.cls_logits, -10.0)
    frames, positions = t.positives.nonzero(as_tuple=True)
    cls[frames, positions, t.labels[frames, positions] - 1] = 4.0
    dirs = torch.nn.functional.one_hot(t.dir_targets, 2).float() * 20 - 10
    return out._replace(cls_logits=cls, dir_logits=dirs, iou_logits=torch.logit(t.iou_targets.clamp(1e-4, 1 - 1e-4))), t


def test_hard_gate_keeps_every_class_of_well_localised_detections(anchor_model):
    """The gate removes poorly localised boxes, never a class: with the predicted-box target a Pedestrian that
    sits between four cells keeps its detection. The anchor's own IoU there (0.177 < tau_ped 0.2) would remove
    it even with a branch that learned its target perfectly, the defect behind iou_target=predicted."""
    _, model = anchor_model
    gated = load_detector_config(find_config("pointpillars_tiny"),
                                 ["head.iou_branch=true", "postprocess.iou_gate.mode=hard"])
    ungated = load_detector_config(find_config("pointpillars_tiny"), ["head.iou_branch=true"])
    assert gated.postprocess.iou_gate.thresholds == [0.5, 0.2, 0.2]
    gt, labels = _scene(model)
    out, t = _well_localised_output(gated, model, gt, labels, "predicted")
    plain_frames = postprocess_tensors(out, ungated)
    assert sorted(plain_frames[0].labels.tolist()) == [0, 1, 2] and plain_frames[1].labels.tolist() == [0]
    for plain, kept in zip(plain_frames, postprocess_tensors(out, gated)):
        assert sorted(kept.labels.tolist()) == sorted(plain.labels.tolist())
        assert torch.allclose(kept.scores, plain.scores)
    ped = (t.labels[0] == 2)
    assert (t.iou_targets[0, ped] > 0.99).all()
    out_anchor, t_anchor = _well_localised_output(gated, model, gt, labels, "anchor")
    assert float(t_anchor.iou_targets[0, ped].max()) == pytest.approx(0.1444 / (0.96 - 0.1444), abs=1e-4)
    assert sorted(postprocess_tensors(out_anchor, ungated)[0].labels.tolist()) == [0, 1, 2]
    assert 1 not in postprocess_tensors(out_anchor, gated)[0].labels.tolist()


def test_balanced_iou_loss_lets_a_blind_branch_reach_the_pedestrian_threshold(anchor_model):
    """A branch that cannot tell positions apart (one shared logit) settles at the loss's minimum: over all
    positions / positives (METHOD.md) that is ~0, below every gate threshold; balanced it is half the positives'
    mean target. Why the all_positions loss held the pedestrian branch near 0 on the default grid."""
    _, model = anchor_model
    cfg = load_detector_config(find_config("pointpillars_tiny"), ["head.iou_branch=true"])
    gt, labels = _scene(model)
    out, t = _well_localised_output(cfg, model, gt, labels, "predicted")
    grid_q = torch.linspace(0.005, 0.995, 199)
    positives, negatives = t.labels > 0, t.labels == 0

    def best_q(loss):
        losses = [loss(torch.full_like(out.iou_logits, float(torch.logit(q)))).item() for q in grid_q]
        return float(grid_q[int(np.argmin(losses))])

    assert best_q(lambda u: iou_branch_loss(u, t.iou_targets, positives.sum())) < 0.01
    balanced = best_q(lambda u: balanced_iou_branch_loss(u, t.iou_targets, positives, negatives))
    assert balanced == pytest.approx(0.5, abs=0.003)  # (mean target 1 + mean target 0) / 2


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
    # IoU branch predicting 0 everywhere. all_positions: sum of squared targets / positives
    silent_logits = perfect._replace(iou_logits=torch.full_like(perfect.iou_logits, -60))
    silent = anchor_losses(silent_logits, t, LossConfig(iou_loss="all_positions"))
    assert silent.parts["iou"].item() == pytest.approx(float((t.iou_targets ** 2).sum()) / num_pos, rel=1e-5)
    # balanced (default): mean squared target over the positives + over the negatives; ignored anchors add nothing
    negatives = t.labels == 0
    expected = (float((t.iou_targets[t.labels > 0] ** 2).mean()) + float((t.iou_targets[negatives] ** 2).mean()))
    assert anchor_losses(silent_logits, t, loss_cfg).parts["iou"].item() == pytest.approx(expected, rel=1e-5)
    ignored_noise = silent_logits.iou_logits.clone()
    ignored_noise[t.labels == -1] = 5.0
    assert anchor_losses(silent_logits._replace(iou_logits=ignored_noise), t, loss_cfg).parts["iou"].item() \
        == pytest.approx(expected, rel=1e-5)
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
