"""Helpers shared by the distillation tests (test_distill_*.py): tiny configs (40 x 40 feature map, 16 channels,
so each file stays well under two minutes on a busy CPU), batches, and `TwoStageDouble`, a TEST DOUBLE of the
clean_ros.models.two_stage.TwoStageDetector contract (rpn, roi_forward, predict). `real_teacher` builds the
real TwoStageDetector. The fixture `plain_pair` is in conftest.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from clean_ros.models.detector_config import load_detector_config
from clean_ros.models.detector import HeadOutput, build_detector
from clean_ros.inference.postprocess import decode
from clean_ros.types import Detections
from clean_ros.inference.voxelize import voxelize_batch
from training.config_paths import find_config
from training.data.sample import Batch
from training.distill.teacher import TEACHER_VOXELS, teacher_voxelizer
from training.targets import build_targets
from training.task import LossContext

SMALL = ["point_cloud_range=[0.0, -12.8, -3.0, 25.6, 12.8, 1.0]", "encoder.widths=[16]",
         "bev_backbone.layer_widths=[[16, 16], [16, 16, 16], [16, 16, 16]]",
         "bev_backbone.num_upsample_filters=[16, 16, 16]"]


def small_cfg(name="pointpillars_tiny", *extra):
    return load_detector_config(find_config(name), SMALL + list(extra))


def make_batch(cfg, gt_boxes, gt_labels, seed=0, points=1500, teacher_cfg=None):
    """Random clouds voxelised for the student (cfg) and, as the collator does for distillation, by the teacher's own
    voxelizer (teacher_cfg, default the student's config) into extra_voxels["teacher"]."""
    rng = np.random.default_rng(seed)
    r = cfg.point_cloud_range
    clouds = []
    for _ in range(gt_boxes.shape[0]):
        xyz = rng.uniform(r[:3], r[3:], (points, 3))
        clouds.append(torch.from_numpy(np.concatenate([xyz, rng.uniform(0, 1, (points, 1))], 1).astype(np.float32)))
    voxels, _ = voxelize_batch(clouds, r, cfg.voxel_size, cfg.max_points_per_voxel, cfg.max_voxels_train)
    teacher_voxels, _ = teacher_voxelizer(teacher_cfg or cfg).batch(clouds)
    return Batch(voxels=voxels, gt_boxes=gt_boxes.float(), gt_labels=gt_labels.long(),
                 frame_ids=[str(i) for i in range(gt_boxes.shape[0])], batch_size=gt_boxes.shape[0],
                 extra_voxels={TEACHER_VOXELS: teacher_voxels})


def car(x, y, yaw=0.0):
    return [x, y, -1.0, 3.9, 1.6, 1.56, yaw]


def one_car_batch(cfg, seed=0, teacher_cfg=None):
    """Frame 0: one Car; frame 1: no GT (padding row, label -1)."""
    gt = torch.tensor([[car(10.16, 0.32)], [[0.0] * 7]])
    return make_batch(cfg, gt, torch.tensor([[0], [-1]]), seed, teacher_cfg=teacher_cfg)


class TwoStageDouble(nn.Module):
    """TEST DOUBLE of the TwoStageDetector contract: `rpn` (one-stage anchor Detector), roi_forward(rpn_output,
    rois) -> (iou_logits (B, R), refined boxes), predict(voxels, batch_size) -> list[Detections].

    mode "echo": the IoU logit of a RoI is the RPN's max-class logit at the anchor whose decoded box is that RoI
    (so a student equal to the RPN has zero CaKD loss, and a wrong RoI mapping shows up). mode "learned": a small
    BN + linear head on the RoI box. `final` fixes what predict returns.
    """

    def __init__(self, cfg, mode="learned", final=None):
        super().__init__()
        self.cfg = cfg
        self.rpn = build_detector(cfg)
        self.mode = mode
        self.final = final
        self.roi_norm = nn.BatchNorm1d(7)
        self.roi_fc = nn.Linear(7, 1)
        self.calls = {"rpn": 0, "roi": 0, "predict": 0}
        self.rpn.register_forward_hook(lambda *a: self.calls.__setitem__("rpn", self.calls["rpn"] + 1))

    def roi_forward(self, rpn_output: HeadOutput, rois: torch.Tensor):
        self.calls["roi"] += 1
        if self.mode == "echo":
            boxes, _ = decode(rpn_output, self.cfg.head)
            logits = rpn_output.cls_logits.max(dim=-1).values
            nearest = torch.cdist(rois, boxes).argmin(dim=2)  # (B, R)
            return logits.gather(1, nearest), rois
        b, r, _ = rois.shape
        return self.roi_fc(self.roi_norm(rois.reshape(-1, 7))).reshape(b, r), rois

    def predict(self, voxels, batch_size):
        self.calls["predict"] += 1
        return self.final[:batch_size]


def open_head(detector, bias=0.0):
    """Class bias so that many positions pass the CaKD score threshold (the focal prior keeps all below it)."""
    head = detector.head
    conv = head.conv_cls if hasattr(head, "conv_cls") else head.heatmap[-1]
    nn.init.constant_(conv.bias, bias)


def loss_context(task, batch):
    output = task.model(batch.voxels, batch.batch_size)
    gt_boxes, gt_labels = batch.gt_boxes, batch.gt_labels
    for hook in task.target_hooks:
        gt_boxes, gt_labels = hook(batch, gt_boxes, gt_labels)
    targets = build_targets(output, gt_boxes, gt_labels, task.cfg)
    return LossContext(batch, output, targets, gt_boxes, gt_labels, None, task.model)


def final_detections(boxes, scores, labels):
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 7), np.asarray(scores, np.float32),
                      np.asarray(labels, np.int64), ("Car", "Pedestrian", "Cyclist"))


def real_teacher(rpn_name="pointpillars_tiny", pool=("bev",)):
    two_stage = pytest.importorskip("clean_ros.models.two_stage", reason="TwoStageDetector not in the tree yet")
    from clean_ros.models.two_stage_config import RoIHeadConfig, TwoStageConfig
    rpn = small_cfg() if rpn_name == "pointpillars_tiny" else load_detector_config(
        find_config(rpn_name), ["point_cloud_range=[0.0, -12.8, -3.0, 25.6, 12.8, 1.0]"])
    head = RoIHeadConfig(pool_sources=list(pool), bev_grid_size=3, voxel_grid_size=3, point_width=8, mlp_widths=[16],
                         dropout=0.0, proposal_pre_nms_test=256, num_rois_test=20)
    return two_stage.TwoStageDetector(TwoStageConfig(rpn=rpn, roi_head=head))
