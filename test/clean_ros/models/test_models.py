"""Detectors built from config: encoders, BEV backbone, heads, HeadOutput shapes, pruned widths, FLOP counting."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clean_ros.models.anchors import generate_anchors
from clean_ros.models.detector_config import load_detector_config
from clean_ros.models.detector import HeadOutput, build_detector
from clean_ros.models.flops import count_flops, count_parameters
from clean_ros.models.pillar import PillarFeatureNet, PillarScatter
from clean_ros.models.vfe import MeanVFE
from clean_ros.inference.voxelize import PointVoxels, voxelize_batch
from shared_helpers import read_velodyne
from training.config_paths import find_config

TINY = ["pointpillars_tiny", "centerpoint_pillar_tiny"]


def _voxels(cfg, clouds):
    voxels, _ = voxelize_batch([torch.from_numpy(c) for c in clouds], cfg.point_cloud_range, cfg.voxel_size,
                               cfg.max_points_per_voxel, cfg.max_voxels_train)
    return voxels


def _random_cloud(rng, cfg, n=3000):
    r = cfg.point_cloud_range
    low, high = np.array(r[:3]), np.array(r[3:])
    xyz = rng.uniform(low, high, size=(n, 3))
    return np.concatenate([xyz, rng.uniform(0, 1, (n, 1))], 1).astype(np.float32)


def _check_output(out: HeadOutput, cfg, batch: int):
    h, w = cfg.feature_map_size
    c = cfg.num_classes
    assert out.bev_features.shape == (batch, cfg.bev_backbone.out_channels, h, w)
    if cfg.head.type == "anchor":
        a = 2 * c  # two rotations per class
        p = h * w * a
        assert out.cls_logits.shape == (batch, p, c) and out.box_preds.shape == (batch, p, 7)
        assert out.dir_logits.shape == (batch, p, 2) and out.anchors.shape == (p, 7)
        assert out.anchor_classes.shape == (p,) and out.grid.num_positions == p
    else:
        p = h * w
        assert out.cls_logits.shape == (batch, p, c) and out.box_preds.shape == (batch, p, 8)
        assert out.dir_logits is None and out.anchors is None
    assert (out.iou_logits is not None) == cfg.head.iou_branch
    if out.iou_logits is not None:
        assert out.iou_logits.shape == (batch, p)
    for t in (out.cls_logits, out.box_preds):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("iou_branch", [False, True])
def test_forward_backward_real_kitti_frame(kitti_sample, name, iou_branch):
    torch.manual_seed(0)
    cfg = load_detector_config(find_config(name), [f"head.iou_branch={str(iou_branch).lower()}"])
    model = build_detector(cfg)
    points = read_velodyne(kitti_sample / "training/velodyne/000000.bin")
    out = model(_voxels(cfg, [points]), 1)
    _check_output(out, cfg, 1)
    loss = out.cls_logits.sum() + out.box_preds.square().sum()
    for extra in (out.dir_logits, out.iou_logits):
        if extra is not None:
            loss = loss + extra.sum()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["encoder.linears.0.weight"].abs().sum() > 0  # gradient reaches the PointNet through the scatter
    if iou_branch:
        iou_param = "head.conv_iou.weight" if cfg.head.type == "anchor" else "head.iou.3.weight"
        assert grads[iou_param].abs().sum() > 0


@pytest.mark.parametrize("name", TINY)
def test_random_batch_of_two_and_dense_path_agrees(name, rng):
    torch.manual_seed(0)
    cfg = load_detector_config(find_config(name))
    model = build_detector(cfg).eval()
    clouds = [_random_cloud(rng, cfg), _random_cloud(rng, cfg, 500)]
    voxels = _voxels(cfg, clouds)
    with torch.no_grad():
        out = model(voxels, 2)
        single = model(_voxels(cfg, clouds[1:]), 1)
        maps = model.forward_dense(model.encode(voxels, 2))
    _check_output(out, cfg, 2)
    # frame 1 of the batch equals frame 1 alone (eval mode): batch index scatter is right
    assert torch.allclose(out.cls_logits[1], single.cls_logits[0], atol=1e-5)
    assert torch.allclose(out.box_preds[1], single.box_preds[0], atol=1e-5)
    assert len(maps) == len(model.dense_output_names)
    rebuilt = model.head_output(maps, out.bev_features)
    assert torch.equal(rebuilt.cls_logits, out.cls_logits)
    model.train()
    out = model(voxels, 2)
    (out.cls_logits.mean() + out.box_preds.mean()).backward()


def test_pillar_scatter_places_features_at_coords():
    scatter = PillarScatter(nx=5, ny=4)
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    coords = torch.tensor([[0, 0, 1, 2], [1, 0, 3, 4], [1, 0, 0, 0]], dtype=torch.int32)
    canvas = scatter(feats, coords, batch_size=2)
    assert canvas.shape == (2, 2, 4, 5)
    assert canvas[0, :, 1, 2].tolist() == [1.0, 2.0] and canvas[1, :, 3, 4].tolist() == [3.0, 4.0]
    assert canvas[1, :, 0, 0].tolist() == [5.0, 6.0] and canvas.abs().sum() == 21.0
    canvas[1, 0, 3, 4].backward()
    assert feats.grad.tolist() == [[0, 0], [1, 0], [0, 0]]


def test_pillar_feature_net_decoration_and_masking():
    net = PillarFeatureNet(4, [8, 6], voxel_size=[0.5, 0.5, 4.0], point_cloud_range=[0, -10, -3, 10, 10, 1]).eval()
    features = torch.zeros(1, 4, 4)
    features[0, :2] = torch.tensor([[1.1, -9.9, 0.0, 0.5], [1.3, -9.7, 1.0, 0.7]])
    num_points = torch.tensor([2], dtype=torch.int32)
    coords = torch.tensor([[0, 0, 0, 2]], dtype=torch.int32)  # pillar x in [1.0, 1.5), y in [-10, -9.5)
    decorated, mask = net.augment(features, num_points, coords)
    assert decorated.shape == (1, 4, 10) and mask[0, :, 0].tolist() == [1, 1, 0, 0]
    # offsets to the points' mean (1.2, -9.8, 0.5) and to the pillar centre (1.25, -9.75, -1.0)
    assert torch.allclose(decorated[0, 0, 4:], torch.tensor([-0.1, -0.1, -0.5, -0.15, -0.15, 1.0]), atol=1e-5)
    assert decorated[0, 2:].abs().sum() == 0
    out = net(features, num_points, coords)
    garbage = features.clone()
    garbage[0, 2:] = torch.randn(2, 4) * 100  # padding slots must not matter
    assert out.shape == (1, 6) and torch.allclose(net(garbage, num_points, coords), out)


@pytest.mark.parametrize("widths, with_distance", [([8, 6], False), ([16], True), ([6, 8, 5], False)])
def test_pillar_feature_net_per_point_inference_equals_padded(widths, with_distance):
    """Inference runs the PointNet on the real points only (scatter-max into zeroed pillars); training, ONNX export
    and tracing keep the padded grid. Same function: random weights and BN statistics, pillars from empty to full."""
    gen = torch.Generator().manual_seed(3)
    net = PillarFeatureNet(4, widths, voxel_size=[0.5, 0.5, 4.0], point_cloud_range=[0, -10, -3, 10, 10, 1],
                           with_distance=with_distance)
    with torch.no_grad():
        for linear, norm in zip(net.linears, net.norms):
            linear.weight.normal_(generator=gen)
            norm.weight.normal_(generator=gen)
            norm.bias.normal_(generator=gen)
            norm.running_mean.normal_(generator=gen)
            norm.running_var.uniform_(0.5, 2.0, generator=gen)
    v, t = 40, 8
    features = torch.randn(v, t, 4, generator=gen) * 3
    num_points = torch.randint(0, t + 1, (v,), generator=gen, dtype=torch.int32)
    num_points[:3] = torch.tensor([0, 1, t], dtype=torch.int32)
    coords = torch.stack([torch.zeros(v, dtype=torch.int32), torch.zeros(v, dtype=torch.int32),
                          torch.randint(0, 40, (v,), generator=gen, dtype=torch.int32),
                          torch.randint(0, 20, (v,), generator=gen, dtype=torch.int32)], dim=1)
    net.eval()
    padded = net._forward_padded(features, num_points, coords)
    per_point = net(features, num_points, coords)
    assert per_point.shape == padded.shape == (v, widths[-1])
    assert torch.allclose(per_point, padded, rtol=1e-5, atol=1e-5) and padded.abs().max() > 0.5
    assert (per_point[0] == 0).all()  # an empty pillar: all padding
    # The runtime's layout (PointVoxels: real points only, no padded grid) gives the same bits as the padded input.
    keep = torch.arange(t).unsqueeze(0) < num_points.unsqueeze(1)
    packed = PointVoxels(features[keep], torch.arange(v).repeat_interleave(num_points.long()), num_points, coords, t)
    assert torch.equal(packed.padded().features, features * keep.unsqueeze(2))
    assert torch.equal(net.forward_point_voxels(packed), per_point)
    # FLOPs are counted over the padded grid (the references' convention), and inference is per point again after
    report = count_flops(net, features, num_points, coords)
    assert report.flops == v * t * sum(i * o for i, o in zip([net.in_channels] + [2 * w for w in widths[:-1]], widths))
    assert net.per_point_inference
    net.per_point_inference = False  # a caller's own setting survives the count
    count_flops(net, features, num_points, coords)
    assert not net.per_point_inference
    net.per_point_inference = True
    if len(widths) == 1:  # the regrouped single layer runs unless something observes the layer; then the module runs
        seen = []
        handle = net.linears[0].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
        hooked = net(features, num_points, coords)
        handle.remove()
        assert seen == [(int(num_points.sum()), widths[0])]
        assert torch.allclose(hooked, padded, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the path taken: zeroing the padded path's output shows which one ran
        net._forward_padded = lambda *a: torch.zeros_like(padded)
        assert not torch.equal(net(features, num_points, coords), torch.zeros_like(padded))
        net.train()
        assert torch.equal(net(features, num_points, coords), torch.zeros_like(padded))
        assert torch.equal(net.forward_point_voxels(packed), torch.zeros_like(padded))  # training: padded again


def test_mean_vfe():
    features = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]])
    assert MeanVFE(2)(features, torch.tensor([2], dtype=torch.int32)).tolist() == [[2.0, 3.0]]


def test_anchor_layout_matches_head_channels():
    cfg = load_detector_config(find_config("pointpillars_tiny"))
    model = build_detector(cfg)
    grid = model.grid
    anchors, classes = model.anchors, model.anchor_classes
    a = grid.positions_per_cell
    assert a == 6 and anchors.shape[0] == grid.height * grid.width * a
    # position p = (row * W + col) * A + class * 2 + rotation
    row, col, k = 3, 7, 4  # class 2 (Cyclist), rotation 0
    p = (row * grid.width + col) * a + k
    assert classes[p] == 2
    x = cfg.point_cloud_range[0] + (col + 0.5) * grid.cell_x
    y = cfg.point_cloud_range[1] + (row + 0.5) * grid.cell_y
    cyc = cfg.head.anchors[2]
    expected = [x, y, cyc.bottom_z + cyc.size[2] / 2, *cyc.size, 0.0]
    assert torch.allclose(anchors[p], torch.tensor(expected), atol=1e-5)
    assert anchors[p + 1, 6] == pytest.approx(math.pi / 2, abs=1e-6)
    assert grid.cell_of_position(torch.tensor([p])).item() == row * grid.width + col
    # the head's cls channel a*C + c of cell (row, col) is position p's class logit
    out_maps = model.head(torch.randn(1, cfg.bev_backbone.out_channels, grid.height, grid.width))
    flat = model.head_output(out_maps, torch.zeros(1)).cls_logits
    assert torch.equal(flat[0, p], out_maps[0][0, k * 3:(k + 1) * 3, row, col])
    with pytest.raises(ValueError, match="same number of rotations"):
        from dataclasses import replace
        generate_anchors(grid, [cfg.head.anchors[0], replace(cfg.head.anchors[1], rotations=[0.0])])


def test_pruned_widths_rebuild_from_config_alone():
    widths = "[[5, 7], [9, 3, 11], [13, 6, 4]]"
    cfg = load_detector_config(find_config("pointpillars_tiny"),
                               [f"bev_backbone.layer_widths={widths}", "bev_backbone.num_upsample_filters=[3, 5, 2]",
                                "encoder.widths=[6, 10]"])
    model = build_detector(cfg)
    state = model.state_dict()
    assert state["encoder.linears.1.weight"].shape == (10, 12)
    assert state["bev_backbone.blocks.0.0.weight"].shape == (5, 10, 3, 3)
    assert state["bev_backbone.blocks.1.3.weight"].shape == (3, 9, 3, 3)
    assert state["bev_backbone.blocks.2.6.weight"].shape == (4, 6, 3, 3)
    assert state["bev_backbone.deblocks.1.0.weight"].shape == (11, 5, 2, 2)  # ConvTranspose2d [in, out, k, k]
    assert state["head.conv_cls.weight"].shape == (18, 10, 1, 1)
    out = model(_voxels(cfg, [_random_cloud(np.random.default_rng(0), cfg, 800)]), 1)
    assert out.bev_features.shape[1] == 10
    # a config saved from the pruned model rebuilds the same shapes
    from clean_ros.yaml_config import to_dict, load_config
    from clean_ros.models.detector_config import DetectorConfig
    again = build_detector(load_config(DetectorConfig, data=to_dict(cfg)))
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in state.items()}


def test_downsampling_deblock():
    cfg = load_detector_config(find_config("pointpillars_tiny"),
                               ["bev_backbone.upsample_strides=[0.5, 1, 2]"])
    model = build_detector(cfg)
    assert cfg.feature_map_size == (40, 40)
    out = model(_voxels(cfg, [_random_cloud(np.random.default_rng(0), cfg, 500)]), 1)
    assert out.bev_features.shape[2:] == (40, 40) and isinstance(model.bev_backbone.deblocks[0][0], torch.nn.Conv2d)


MICRO = ["name=micro", "class_names=[Car]", "point_cloud_range=[0.0, 0.0, -3.0, 2.56, 2.56, 1.0]",
         "voxel_size=[0.32, 0.32, 4.0]", "max_points_per_voxel=3", "encoder.widths=[4]",
         "bev_backbone.layer_nums=[1]", "bev_backbone.layer_strides=[2]", "bev_backbone.layer_widths=[[6, 6]]",
         "bev_backbone.upsample_strides=[1]", "bev_backbone.num_upsample_filters=[5]",
         "head.anchors=[{name: Car, size: [0.5, 0.3, 1.0], bottom_z: -1.0}]", "postprocess.score_thresholds=[0.1]"]


def test_param_and_flop_counts_by_hand():
    cfg = load_detector_config(find_config("pointpillars_tiny"), MICRO)
    model = build_detector(cfg)
    # PFN 10->4 (+BN 2x4); conv 4->6 3x3, conv 6->6 3x3 (+BN); deconv 6->5 1x1 (+BN); heads 5->2, 5->14, 5->4 (+bias)
    params = 40 + 8 + 216 + 12 + 324 + 12 + 30 + 10 + (10 + 2) + (70 + 14) + (20 + 4)
    assert count_parameters(model) == params == 772
    points = torch.tensor([[0.1, 0.1, 0.0, 0.5], [0.2, 0.1, 0.0, 0.5], [1.0, 2.0, 0.0, 0.5]])
    voxels, _ = voxelize_batch([points], cfg.point_cloud_range, cfg.voxel_size, 3, 100)
    report = count_flops(model, voxels, 1)
    assert voxels.features.shape[:2] == (2, 3)
    grid_out = 4 * 4  # 8x8 pillars -> stride 2
    expected = {
        "encoder.linears.0": 2 * 3 * 10 * 4,  # every slot of every pillar goes through the linear layer
        "bev_backbone.blocks.0.0": grid_out * 6 * 4 * 9,
        "bev_backbone.blocks.0.3": grid_out * 6 * 6 * 9,
        "bev_backbone.deblocks.0.0": grid_out * 6 * 5,
        "head.conv_cls": grid_out * 2 * 5, "head.conv_box": grid_out * 14 * 5, "head.conv_dir": grid_out * 4 * 5,
    }
    assert report.by_layer == expected
    assert report.flops == 240 + 3456 + 5184 + 480 + 160 + 1120 + 320 and report.params == 772
    assert report.by_prefix(1) == {"encoder": 240, "bev_backbone": 3456 + 5184 + 480, "head": 1600}


def test_deconv_and_sparse_conv_flop_hooks():
    deconv = torch.nn.ConvTranspose2d(3, 4, 2, stride=2)
    assert count_flops(deconv, torch.zeros(1, 3, 5, 5)).flops == 25 * 3 * 4 * 4  # input sites x Cin x Cout x k^2
    sparse = pytest.importorskip("clean_ros.models.sparse")
    conv = sparse.SubMConv3d(2, 3, 3, padding=1, bias=False)
    coords = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 1, 1], [0, 2, 2, 2], [0, 3, 0, 2]], dtype=torch.int32)
    x = sparse.sparse_tensor(torch.randn(5, 2), coords, (4, 4, 4), 1)
    report = count_flops(conv, x)
    assert report.flops == 5 * 27 * 2 * 3  # active sites x kernel volume x Cin x Cout


@pytest.mark.parametrize("head", ["anchor", "center"])
def test_encoder_and_dense_path_export_to_onnx(head):
    ort = pytest.importorskip("onnxruntime")
    import io
    import warnings
    overrides = MICRO + ["head.iou_branch=true"] + (["head.type=center", "head.anchors=[]"] if head == "center" else [])
    cfg = load_detector_config(find_config("pointpillars_tiny"), overrides)
    model = build_detector(cfg).eval()
    voxels = _voxels(cfg, [_random_cloud(np.random.default_rng(1), cfg, 200)])
    with torch.no_grad():
        bev = model.encode(voxels, 1)
    dense = model.dense_module()
    assert not dense.training
    for module, inputs, names in [(model.encoder, tuple(voxels), ["features", "num_points", "coords"]),
                                  (dense, (bev,), ["bev"])]:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, inputs, buffer, input_names=names, opset_version=17, dynamo=False)
        got = ort.InferenceSession(buffer.getvalue()).run(None, {n: t.numpy() for n, t in zip(names, inputs)})
        with torch.no_grad():
            expected = module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert np.allclose(g, e.numpy(), atol=1e-4)
