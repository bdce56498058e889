"""SECOND sparse 3D backbone: height-compression layout c*D+d by hand, the assembled backbone against a dense conv3d
re-computation (active-site masks, BN, ReLU, strides, z padding), SECOND / CenterPoint-voxel forward + backward on a
real KITTI frame and a random batch, sparse FLOPs, config errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clean_ros.yaml_config import ConfigError
from clean_ros.models import sparse as sp
from clean_ros.models.detector_config import Backbone3DConfig, load_detector_config
from clean_ros.models.detector import build_detector
from clean_ros.models.flops import count_flops, sparse_conv_macs
from clean_ros.models.sparse_backbone import SparseBackbone3D, bev_channels_of, height_compression
from clean_ros.models.sparse_layout import output_shape, stage_shapes
from clean_ros.inference.voxelize import voxelize_batch
from shared_helpers import read_velodyne
from training.config_paths import find_config


def test_height_compression_layout_is_c_times_D_plus_d():
    # 2 frames, C = 3 channels, grid (D, H, W) = (2, 2, 3); feature of channel c at (b, z, y, x) = 1000b + 100c + 10z + x + y/10
    coords, feats = [], []
    for b in range(2):
        for z in range(2):
            for y, x in [(0, 0), (1, 2)]:
                coords.append([b, z, y, x])
                feats.append([1000 * b + 100 * c + 10 * z + x + y / 10 for c in range(3)])
    x = sp.sparse_tensor(torch.tensor(feats), torch.tensor(coords), [2, 2, 3], 2)
    bev = height_compression(x)
    assert bev.shape == (2, 3 * 2, 2, 3)
    for b in range(2):
        for c in range(3):
            for d in range(2):
                assert bev[b, c * 2 + d, 0, 0] == 1000 * b + 100 * c + 10 * d
                assert bev[b, c * 2 + d, 1, 2] == pytest.approx(1000 * b + 100 * c + 10 * d + 2.1)
                assert bev[b, c * 2 + d, 0, 1] == 0  # empty site
    assert bev_channels_of([2, 0], depth=2).tolist() == [4, 5, 0, 1]
    assert bev_channels_of(torch.tensor([1]), depth=3).tolist() == [3, 4, 5]


def _dense_kernel(conv) -> torch.Tensor:
    return conv.weight.permute(0, 4, 1, 2, 3)  # [out, kz, ky, kx, in] -> conv3d's [out, in, kz, ky, kx]


def _dense_block(block, x, mask, stride=1, padding=1):
    """Dense re-computation of SparseSequential(conv, BN, ReLU): conv3d, new active set, BN (eval) and ReLU at
    active sites only."""
    conv, bn = block[0], block[1]
    out = F.conv3d(x, _dense_kernel(conv), stride=stride, padding=padding)
    if not conv.subm:
        kernel = torch.ones((1, 1, *conv.kernel_size))
        mask = F.conv3d(mask, kernel, stride=stride, padding=padding) > 0
        mask = mask.to(x.dtype)
    out = F.batch_norm(out, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return F.relu(out) * mask, mask


def test_backbone_matches_dense_conv3d_recomputation():
    torch.manual_seed(0)
    cfg = Backbone3DConfig(type="sparse", widths=[[3, 3], [4, 4], [5], [4, 4]], out_width=3, z_padding=1)
    grid = (16, 12, 24)  # z: 25 -> 13 -> 7 -> 3 -> out conv (3,1,1) s2 -> 1
    assert stage_shapes(cfg, grid) == [(25, 12, 16), (13, 6, 8), (7, 3, 4), (3, 2, 2), (1, 2, 2)]
    net = SparseBackbone3D(cfg, 2, grid).eval()
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    # 60 random sites in one frame, 40 in another
    coords = []
    for b, n in [(0, 60), (1, 40)]:
        flat = torch.randperm(25 * 12 * 16)[:n]
        z, rem = flat // (12 * 16), flat % (12 * 16)
        coords.append(torch.stack([torch.full_like(z, b), z, rem // 16, rem % 16], 1))
    coords = torch.cat(coords).int()
    feats = torch.randn(coords.shape[0], 2)
    with torch.no_grad():
        out = net(feats, coords, 2)
        x = sp.to_dense(sp.sparse_tensor(feats, coords, [25, 12, 16], 2))
        mask = (x.abs().sum(1, keepdim=True) > 0).to(x.dtype)
        for i, stage in enumerate(net.stages):
            for j, block in enumerate(stage):
                if i > 0 and j == 0:
                    x, mask = _dense_block(block, x, mask, stride=2, padding=(0, 1, 1) if i == 3 else 1)
                else:
                    x, mask = _dense_block(block, x, mask)
            assert torch.allclose(sp.to_dense(out.stages[i]), x, atol=1e-5), f"stage {i}"
        x, mask = _dense_block(net.out, x, mask, stride=(2, 1, 1), padding=0)
    expected_bev = x.reshape(2, 3 * 1, 2, 2)
    assert out.bev.shape == (2, 3, 2, 2)
    assert torch.allclose(out.bev, expected_bev, atol=1e-5)
    assert net.bev_channels == 3 and net.depth == 1


def _voxels(cfg, clouds):
    voxels, _ = voxelize_batch([torch.from_numpy(c) for c in clouds], cfg.point_cloud_range, cfg.voxel_size,
                               cfg.max_points_per_voxel, cfg.max_voxels_train)
    return voxels


def test_second_tiny_forward_backward_real_kitti_frame(kitti_sample, one_thread):
    torch.manual_seed(0)
    cfg = load_detector_config(find_config("second_tiny"))
    model = build_detector(cfg)
    assert model.backbone_3d.depth == 2 and model.backbone_3d.bev_channels == 32 * 2
    points = read_velodyne(kitti_sample / "training/velodyne/000000.bin")
    voxels = _voxels(cfg, [points])
    out = model(voxels, 1)
    h, w = cfg.feature_map_size
    assert (h, w) == (80, 80)
    assert out.cls_logits.shape == (1, h * w * 6, 3) and out.box_preds.shape == (1, h * w * 6, 7)
    assert out.anchors.shape == (h * w * 6, 7)
    loss = out.cls_logits.sum() + out.box_preds.square().sum() + out.dir_logits.sum()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["backbone_3d.stages.0.0.0.weight"].abs().sum() > 0  # through height compression and every stage
    # the BEV canvas really is the height-compressed sparse output
    with torch.no_grad():
        model.eval()
        bev_input, sparse_out = model.encode_with_3d(voxels, 1)
        assert torch.equal(bev_input, sp.to_dense(sparse_out.out).flatten(1, 2))


@pytest.mark.parametrize("name", ["second_tiny", "centerpoint_voxel_tiny"])
def test_random_batch_of_two(name, rng, one_thread):
    torch.manual_seed(0)
    cfg = load_detector_config(find_config(name))
    model = build_detector(cfg)
    r = cfg.point_cloud_range
    clouds = []
    for n in (2000, 1500):
        xyz = rng.uniform(np.array(r[:3]), np.array(r[3:]), size=(n, 3))
        clouds.append(np.concatenate([xyz, rng.uniform(0, 1, (n, 1))], 1).astype(np.float32))
    out = model(_voxels(cfg, clouds), 2)
    h, w = cfg.feature_map_size
    per_cell = 6 if cfg.head.type == "anchor" else 1
    assert out.cls_logits.shape == (2, h * w * per_cell, 3)
    assert out.bev_features.shape == (2, cfg.bev_backbone.out_channels, h, w)
    out.cls_logits.sum().backward()
    assert model.backbone_3d.stages[0][0][0].weight.grad.abs().sum() > 0
    # frame 1 alone gives the same result as in the batch (eval mode): no cross-frame leakage in the sparse convs
    model.eval()
    with torch.no_grad():
        both = model(_voxels(cfg, clouds), 2).cls_logits[1]
        alone = model(_voxels(cfg, clouds[1:]), 1).cls_logits[0]
    assert torch.allclose(both, alone, atol=1e-4)


def test_sparse_flops_counted_by_active_sites(kitti_sample, one_thread):
    cfg = load_detector_config(find_config("second_tiny"))
    model = build_detector(cfg).eval()
    voxels = _voxels(cfg, [read_velodyne(kitti_sample / "training/velodyne/000000.bin")])
    report = count_flops(model, voxels, 1)
    n = voxels.coords.shape[0]
    assert report.by_layer["backbone_3d.stages.0.0.0"] == sparse_conv_macs(n, 27, 4, 8)  # SubM keeps the sites
    assert report.by_layer["backbone_3d.stages.0.1.0"] == sparse_conv_macs(n, 27, 8, 8)
    assert report.by_prefix(1)["backbone_3d"] > 0 and report.by_prefix(1)["bev_backbone"] > 0
    second = load_detector_config(find_config("second"))
    assert second.bev_input_shape == (256, 200, 176) and second.feature_map_size == (200, 176)
    assert output_shape(second.backbone_3d, second.grid_size) == (2, 200, 176)


def test_config_errors_are_clear(tmp_path):
    base = find_config("second_tiny")
    with pytest.raises(ConfigError, match="no depth"):
        load_detector_config(base, ["voxel_size=[0.16, 0.16, 0.25]"])
    with pytest.raises(ConfigError, match="4 non-empty lists"):
        load_detector_config(base, ["backbone_3d.widths=[[8], [16]]"])
    with pytest.raises(ConfigError, match="mean_vfe"):
        load_detector_config(base, ["encoder.type=pillar", "encoder.widths=[32]"])
