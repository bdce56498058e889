"""Teacher-guided initialisation (training/distill/teacher_init.py): leading slices of the teacher's weights,
concatenated segments, sparse-backbone BEV channels, agreement with the pruning surgery."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from clean_ros.models.detector_config import load_detector_config
from clean_ros.models.detector import build_detector
from clean_ros.models.sparse_backbone import bev_channels_of
from training.config_paths import find_config
from training.distill.teacher_init import concat_channels, teacher_guided_init

from distill_helpers import small_cfg, one_car_batch, real_teacher

# the shared machine: one thread is much faster under load (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_teacher_guided_init_copies_leading_slices_and_concat_segments():
    teacher_cfg = small_cfg("pointpillars_tiny", "encoder.widths=[8, 16]",
                            "bev_backbone.layer_widths=[[16, 16], [24, 24, 24], [32, 32, 32]]",
                            "bev_backbone.num_upsample_filters=[16, 16, 16]", "head.iou_branch=true")
    student_cfg = small_cfg("pointpillars_tiny", "encoder.widths=[4, 8]",
                            "bev_backbone.layer_widths=[[8, 8], [12, 12, 12], [16, 16, 16]]",
                            "bev_backbone.num_upsample_filters=[8, 8, 8]", "head.iou_branch=true")
    torch.manual_seed(9)
    teacher, student = build_detector(teacher_cfg), build_detector(student_cfg)
    for m in teacher.modules():  # non-trivial statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    copied = teacher_guided_init(student, teacher)
    t, s = teacher.state_dict(), student.state_dict()
    assert set(copied) == set(s)
    assert torch.equal(s["encoder.linears.0.weight"], t["encoder.linears.0.weight"][:4])
    assert torch.equal(s["encoder.linears.1.weight"], t["encoder.linears.1.weight"][:8][:, [0, 1, 2, 3, 8, 9, 10, 11]])
    assert torch.equal(s["bev_backbone.blocks.0.0.weight"], t["bev_backbone.blocks.0.0.weight"][:8, :8])
    assert torch.equal(s["bev_backbone.blocks.1.4.running_mean"], t["bev_backbone.blocks.1.4.running_mean"][:12])
    assert torch.equal(s["bev_backbone.deblocks.1.0.weight"], t["bev_backbone.deblocks.1.0.weight"][:12, :8])
    head_in = list(range(8)) + list(range(16, 24)) + list(range(32, 40))
    for name in ("conv_cls", "conv_box", "conv_dir", "conv_iou"):
        assert torch.equal(s[f"head.{name}.weight"], t[f"head.{name}.weight"][:, head_in])
        assert torch.equal(s[f"head.{name}.bias"], t[f"head.{name}.bias"])
    assert concat_channels([16, 16, 16], [8, 8, 8]).tolist() == head_in


def test_teacher_guided_init_with_equal_widths_reproduces_the_teacher(plain_pair):
    cfg, teacher, _ = plain_pair
    student = build_detector(cfg)
    teacher_guided_init(student, teacher)
    batch = one_car_batch(cfg)
    student.eval(), teacher.eval()
    with torch.no_grad():
        assert torch.equal(student(batch.voxels, 2).cls_logits, teacher(batch.voxels, 2).cls_logits)


def test_teacher_guided_init_agrees_with_pruning_surgery_on_leading_filters():
    """The same weight mapping as training.prune's physical surgery when it keeps the leading filters."""
    from training.prune import build_graph, prune_with_keep
    teacher_cfg = small_cfg("pointpillars_tiny", "encoder.widths=[8, 16]",
                            "bev_backbone.layer_widths=[[16, 16], [24, 24, 24], [32, 32, 32]]",
                            "bev_backbone.num_upsample_filters=[16, 16, 16]")
    student_cfg = small_cfg("pointpillars_tiny", "encoder.widths=[4, 8]",
                            "bev_backbone.layer_widths=[[8, 12], [12, 8, 12], [16, 16, 8]]",
                            "bev_backbone.num_upsample_filters=[8, 4, 8]")
    torch.manual_seed(12)
    teacher, student = build_detector(teacher_cfg), build_detector(student_cfg)
    teacher_guided_init(student, teacher)
    widths = {layer.name: layer.width for layer in build_graph(student, prune_encoder=True)}
    keep = {name: torch.arange(w) for name, w in widths.items()}
    pruned, _, _ = prune_with_keep(teacher, build_graph(teacher, prune_encoder=True), keep, fold_constants=False)
    ours, theirs = student.state_dict(), pruned.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_teacher_guided_init_sparse_backbone_uses_c_times_depth_plus_d():
    teacher = real_teacher("second_tiny", pool=("bev",)).rpn
    extra = ["point_cloud_range=[0.0, -12.8, -3.0, 25.6, 12.8, 1.0]",
             "backbone_3d.widths=[[4, 4], [8, 8], [12, 12], [16, 16]]", "backbone_3d.out_width=16",
             "bev_backbone.layer_widths=[[32, 32], [48, 48, 48]]", "bev_backbone.num_upsample_filters=[24, 24]"]
    student = build_detector(load_detector_config(find_config("second_tiny"), extra))
    teacher_guided_init(student, teacher)
    t, s = teacher.state_dict(), student.state_dict()
    depth = teacher.backbone_3d.depth
    assert depth == student.backbone_3d.depth == 2
    kept = bev_channels_of(torch.arange(16), depth)
    assert torch.equal(s["bev_backbone.blocks.0.0.weight"], t["bev_backbone.blocks.0.0.weight"][:32][:, kept])
    # spconv weights [out, kz, ky, kx, in]: leading out and leading in (last dim)
    assert torch.equal(s["backbone_3d.stages.1.1.0.weight"], t["backbone_3d.stages.1.1.0.weight"][:8, ..., :8])
    assert torch.equal(s["backbone_3d.stages.0.0.0.weight"], t["backbone_3d.stages.0.0.0.weight"][:4])
    head_in = list(range(24)) + list(range(48, 72))
    assert torch.equal(s["head.conv_cls.weight"], t["head.conv_cls.weight"][:, head_in])
