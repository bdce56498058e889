"""Post-processing on hand-made head outputs: decode, IoU gate, thresholds, NMS, top-k, Detections."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clean_ros.models.anchors import FeatureGrid
from clean_ros.models.detector_config import load_detector_config
from clean_ros.models.detector import HeadOutput
from clean_ros.inference.postprocess import apply_iou_gate, candidate_rows, postprocess, postprocess_tensors
from clean_ros.types import Detections
from training.config_paths import find_config

CAR = [3.9, 1.6, 1.56]
PED = [0.8, 0.6, 1.73]
CYC = [1.76, 0.6, 1.73]
ANCHORS = torch.tensor([
    [10.0, 0.0, -1.0, *CAR, 0.0],  # 0: car, best
    [10.3, 0.0, -1.0, *CAR, 0.0],  # 1: overlaps 0, predicted Pedestrian
    [20.0, 5.0, -0.6, *PED, 0.0],  # 2: pedestrian
    [30.0, -5.0, -0.6, *CYC, 0.0],  # 3: cyclist, low score
    [40.0, 0.0, -1.0, *CAR, 0.0],  # 4: below every threshold
])
LOGITS = torch.tensor([[2.0, -5, -5], [-5, 1.0, -5], [-5, 0.5, -5], [-5, -5, -1.0], [-3.0, -5, -5]])


def _cfg(*overrides, name="pointpillars_tiny"):
    return load_detector_config(find_config(name), list(overrides))


def _anchor_output(iou_logits=None):
    box = torch.zeros(1, 5, 7)
    box[0, 0, 0] = 0.1  # dx in units of the anchor diagonal
    box[0, 2, 3] = math.log(1.5)  # l = 1.5 * 0.8
    dirs = torch.tensor([[[0.0, 5.0], [0.0, 5.0], [5.0, 0.0], [0.0, 5.0], [0.0, 5.0]]])
    grid = FeatureGrid(1, 5, 0.0, 0.0, 1.0, 1.0, 1)
    return HeadOutput(LOGITS.unsqueeze(0), box, dirs, iou_logits, ANCHORS, torch.tensor([0, 0, 1, 2, 0]), grid,
                      torch.zeros(1, 1, 1, 5), "anchor")


def _yaw_close(a, b):
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi) < 1e-4


def test_anchor_decode_threshold_nms_class_agnostic():
    cfg = _cfg()
    frame = postprocess_tensors(_anchor_output(), cfg)[0]
    assert frame.positions.tolist() == [0, 2, 3]  # 1 suppressed by 0 (any class), 4 below threshold
    assert frame.labels.tolist() == [0, 1, 2]
    assert torch.allclose(frame.scores, torch.sigmoid(torch.tensor([2.0, 0.5, -1.0])))
    diag = math.hypot(3.9, 1.6)
    assert torch.allclose(frame.boxes[0, :6], torch.tensor([10 + 0.1 * diag, 0.0, -1.0, *CAR]), atol=1e-5)
    assert _yaw_close(frame.boxes[0, 6].item(), 0.0)
    assert frame.boxes[1, 3].item() == pytest.approx(1.2, abs=1e-5)
    assert _yaw_close(frame.boxes[1, 6].item(), math.pi)  # direction bin 0 turns the heading around
    assert (frame.boxes[:, 6] >= -math.pi - 1e-6).all() and (frame.boxes[:, 6] < math.pi).all()  # float32 -pi


def test_class_aware_nms_thresholds_and_topk():
    frame = postprocess_tensors(_anchor_output(), _cfg("postprocess.class_agnostic_nms=false"))[0]
    assert frame.positions.tolist() == [0, 1, 2, 3]  # 0 and 1 overlap but differ in class
    frame = postprocess_tensors(_anchor_output(), _cfg("postprocess.score_thresholds=[0.1, 0.7, 0.2]"))[0]
    assert frame.positions.tolist() == [0, 3]  # pedestrians need 0.7 now (1 and 2 are gone, so 1 cannot suppress)
    frame = postprocess_tensors(_anchor_output(), _cfg("postprocess.nms_post_max=1"))[0]
    assert frame.positions.tolist() == [0]
    frame = postprocess_tensors(_anchor_output(), _cfg("postprocess.nms_pre_max=2", "postprocess.nms_post_max=2"))[0]
    assert frame.positions.tolist() == [0]  # top-2 before NMS are 0 and 1; 1 is suppressed


def test_iou_gates():
    quality = torch.tensor([[0.4, 0.9, 0.3, 0.1, 0.9]])
    iou_logits = torch.logit(quality)
    hard = _cfg("head.iou_branch=true", "postprocess.iou_gate.mode=hard")
    frame = postprocess_tensors(_anchor_output(iou_logits), hard)[0]
    # car needs quality > 0.5 (0 fails), ped/cyc > 0.2 (2 passes, 3 fails); 1 survives now that 0 is gone
    assert frame.positions.tolist() == [1, 2]
    assert torch.allclose(frame.scores, torch.sigmoid(torch.tensor([1.0, 0.5])))
    soft = _cfg("head.iou_branch=true", "postprocess.iou_gate.mode=soft", "postprocess.iou_gate.alphas=[0.5, 0.5, 0.25]")
    scores = apply_iou_gate(torch.sigmoid(LOGITS).unsqueeze(0), iou_logits, soft.postprocess.iou_gate)
    s = torch.sigmoid(LOGITS)
    assert scores[0, 0, 0].item() == pytest.approx(math.sqrt(s[0, 0].item() * 0.4), rel=1e-5)
    assert scores[0, 3, 2].item() == pytest.approx(s[3, 2].item() ** 0.75 * 0.1 ** 0.25, rel=1e-5)
    frame = postprocess_tensors(_anchor_output(iou_logits), soft)[0]
    # gated: 0 -> 0.594, 1 -> 0.811 (now the best, suppresses 0), 2 -> 0.432, 3 -> 0.210, 4 -> 0.207 (>= 0.1)
    assert frame.positions.tolist() == [1, 2, 3, 4]
    assert frame.scores[0].item() == pytest.approx(math.sqrt(s[1, 1].item() * 0.9), rel=1e-5)
    with pytest.raises(ValueError, match="no IoU branch"):
        apply_iou_gate(scores, None, hard.postprocess.iou_gate)


def test_center_peaks_and_decoding():
    cfg = _cfg("class_names=[Car, Pedestrian]", "postprocess.score_thresholds=[0.1, 0.1]",
               "head.anchors=[]", name="centerpoint_pillar_tiny")
    grid = FeatureGrid(8, 8, 0.0, -2.56, 0.64, 0.64, 1)
    heat = torch.full((1, 8, 8, 2), -10.0)
    heat[0, 3, 4, 0] = 3.0  # peak
    heat[0, 3, 5, 0] = 2.0  # neighbour of the peak: not a local maximum
    heat[0, 6, 1, 1] = 1.0  # another class, another peak
    box = torch.zeros(1, 8, 8, 8)
    box[0, 3, 4] = torch.tensor([0.5, 0.25, -1.0, math.log(4.0), math.log(1.5), math.log(1.6),
                                 math.sin(0.7), math.cos(0.7)])
    box[..., 7] += 1e-3  # defined yaw everywhere
    out = HeadOutput(heat.view(1, 64, 2), box.view(1, 64, 8), None, None, None, None, grid, torch.zeros(1), "center")
    dets = postprocess(out, cfg)
    assert len(dets) == 1 and isinstance(dets[0], Detections)
    d = dets[0]
    assert d.labels.tolist() == [0, 1] and d.class_names == ("Car", "Pedestrian")
    assert np.allclose(d.scores, torch.sigmoid(torch.tensor([3.0, 1.0])).numpy())
    expected = [(4 + 0.5) * 0.64, -2.56 + (3 + 0.25) * 0.64, -1.0, 4.0, 1.5, 1.6, 0.7]
    assert np.allclose(d.boxes[0], expected, atol=1e-3)
    assert d.boxes.dtype == np.float32 and d.labels.dtype == np.int64
    # with NMS out of the way, only the max-pool peak test removes the neighbour (3, 5)
    common = ["class_names=[Car, Pedestrian]", "postprocess.score_thresholds=[0.1, 0.1]", "head.anchors=[]",
              "postprocess.nms_iou=0.99"]
    frame = postprocess_tensors(out, _cfg(*common, name="centerpoint_pillar_tiny"))[0]
    assert frame.positions.tolist() == [3 * 8 + 4, 6 * 8 + 1]
    no_peaks = postprocess_tensors(out, _cfg(*common, "postprocess.peak_kernel=1", name="centerpoint_pillar_tiny"))[0]
    assert no_peaks.positions.tolist() == [3 * 8 + 4, 3 * 8 + 5, 6 * 8 + 1]


def test_batch_and_empty_frames():
    out = _anchor_output()
    empty_logits = torch.full_like(out.cls_logits, -10.0)
    batched = out._replace(cls_logits=torch.cat([out.cls_logits, empty_logits]), box_preds=out.box_preds.repeat(2, 1, 1),
                           dir_logits=out.dir_logits.repeat(2, 1, 1))
    dets = postprocess(batched, _cfg())
    assert [len(d) for d in dets] == [3, 0]
    assert dets[1].boxes.shape == (0, 7) and dets[1].names.shape == (0,)
    assert list(dets[0].names) == ["Car", "Pedestrian", "Cyclist"]


def _reference_frames(out, cfg):
    """Post-processing as it was before thresholds moved ahead of decoding: decode every position, then select."""
    from clean_ros.cloud import geometry
    from clean_ros.inference.postprocess import decode, range_thresholds

    boxes, scores = decode(out, cfg.head, cfg.postprocess.peak_kernel)
    if out.head_type == "center":  # every pixel decoded by hand, independently of decode_center_boxes
        g, reg = out.grid, out.box_preds
        rows, cols = torch.meshgrid(torch.arange(g.height), torch.arange(g.width), indexing="ij")
        boxes = torch.cat([(g.x_min + (cols.reshape(1, -1) + reg[..., 0]) * g.cell_x).unsqueeze(-1),
                           (g.y_min + (rows.reshape(1, -1) + reg[..., 1]) * g.cell_y).unsqueeze(-1), reg[..., 2:3],
                           reg[..., 3:6].exp(), torch.atan2(reg[..., 6], reg[..., 7]).unsqueeze(-1)], dim=-1)
    scores = apply_iou_gate(scores, out.iou_logits, cfg.postprocess.iou_gate)
    boxes = torch.cat([boxes[..., :6], geometry.normalize_yaw(boxes[..., 6:7])], dim=-1)
    pp, frames = cfg.postprocess, []
    for b in range(boxes.shape[0]):
        s, thresholds = scores[b], scores.new_tensor(pp.score_thresholds)
        if pp.class_agnostic_nms:
            best, labels = s.max(dim=1)
            positions = (best >= thresholds[labels]).nonzero().squeeze(1)
            cand_scores, cand_labels = best[positions], labels[positions]
        else:
            positions, cand_labels = (s >= thresholds.unsqueeze(0)).nonzero(as_tuple=True)
            cand_scores = s[positions, cand_labels]
        if pp.range_breakpoints:
            keep = cand_scores >= range_thresholds(boxes[b, positions], cand_labels, pp, s.shape[1])
            positions, cand_labels, cand_scores = positions[keep], cand_labels[keep], cand_scores[keep]
        if pp.nms_pre_max and cand_scores.numel() > pp.nms_pre_max:
            top = cand_scores.topk(pp.nms_pre_max).indices
            positions, cand_labels, cand_scores = positions[top], cand_labels[top], cand_scores[top]
        nms_boxes = boxes[b, positions].clone()
        if not pp.class_agnostic_nms:
            nms_boxes[:, 0] += cand_labels.to(nms_boxes.dtype) * 1.0e4
        kept = geometry.nms_bev(nms_boxes, cand_scores, pp.nms_iou, post_max_size=pp.nms_post_max or None)
        frames.append((boxes[b, positions[kept]], cand_scores[kept], cand_labels[kept], positions[kept]))
    return frames


@pytest.mark.parametrize("head, gate", [("anchor", "soft"), ("anchor", "hard"), ("anchor", "none"), ("center", "none")])
@pytest.mark.parametrize("settings", [
    [],
    ["postprocess.score_thresholds=[0.2, 1.0, 0.3]"],  # a class switched off: only sigmoid == 1.0 passes it
    ["postprocess.class_agnostic_nms=false"],
    ["postprocess.range_breakpoints=[12.0]", "postprocess.range_score_thresholds=[0.3, 0.5, 0.3, 0.5, 0.3, 0.5]",
     "postprocess.nms_pre_max=40", "postprocess.nms_post_max=15", "postprocess.nms_iou=0.2"],
])
def test_decoding_only_the_candidates_equals_decoding_everything(head, gate, settings):
    """Post-processing decodes only the boxes that pass the thresholds, and anchor heads (without the soft gate)
    score only the rows whose logits can pass (candidate_rows); the detections are those of scoring and decoding
    every position first, to the bit (random outputs, two frames, dense enough that NMS, top-k and range bands all
    act)."""
    gen = torch.Generator().manual_seed(7)
    grid = FeatureGrid(12, 16, 0.0, -3.84, 0.64, 0.64, 2)
    p = 12 * 16 * (2 if head == "anchor" else 1)
    logits = torch.randn(2, p, 3, generator=gen) * 2.0 - 2.0
    logits[:, ::17, 1] = 20.0  # sigmoid rounds to 1.0 in float32: passes even a threshold of 1.0
    if head == "anchor":
        sizes = torch.tensor([CAR, PED, CYC]).repeat(p // 3 + 1, 1)[:p]
        cells = torch.arange(p) // 2
        anchors = torch.stack([(cells % 16) * 0.64 + 0.32, -3.84 + (cells // 16) * 0.64 + 0.32, torch.full((p,), -1.0),
                               *sizes.T, (torch.arange(p) % 2) * math.pi / 2], dim=1)
        out = HeadOutput(logits, torch.randn(2, p, 7, generator=gen) * 0.3, torch.randn(2, p, 2, generator=gen),
                         torch.randn(2, p, generator=gen), anchors, torch.arange(p) % 3, grid, torch.zeros(1), "anchor")
        cfg = _cfg("postprocess.score_thresholds=[0.2, 0.2, 0.2]", "head.iou_branch=true",
                   f"postprocess.iou_gate.mode={gate}", "postprocess.iou_gate.thresholds=[0.3, 0.3, 0.3]", *settings)
        rows = candidate_rows(out, 0, cfg.postprocess)
        if gate == "soft":
            assert rows is None  # its powers would round differently on a subset: every position is scored
        else:
            assert rows is not None and 0 < rows.numel() < p and torch.equal(rows, rows.sort().values)
    else:
        box = torch.randn(2, p, 8, generator=gen) * 0.3
        box[..., 3:6] += 0.5
        out = HeadOutput(logits, box, None, None, None, None, grid._replace(positions_per_cell=1), torch.zeros(1), "center")
        cfg = _cfg("class_names=[Car, Pedestrian, Cyclist]", "postprocess.score_thresholds=[0.2, 0.2, 0.2]",
                   "head.anchors=[]", *settings, name="centerpoint_pillar_tiny")
    frames = postprocess_tensors(out, cfg)
    reference = _reference_frames(out, cfg)
    assert sum(len(f.scores) for f in frames) > 10
    for frame, (boxes, scores, labels, positions) in zip(frames, reference, strict=True):
        assert torch.equal(frame.positions, positions) and torch.equal(frame.labels, labels)
        assert torch.equal(frame.scores, scores)
        assert torch.allclose(frame.boxes, boxes, atol=1e-5)
