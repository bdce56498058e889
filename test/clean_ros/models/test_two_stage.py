"""Two-stage teacher: RoI grid points and BEV / voxel pooling on hand-made ramps (incl. rotated RoIs), proposals,
roi_forward on hand-given RoIs (shapes, determinism, independence of the other RoIs, voxel features remembered for
a no-grad RPN call), RoI sampling and IoU-quality / residual targets by hand, the teacher task through the trainer's
interface, and a short training run in which the second stage refines jittered RoIs towards the ground truth and
ranks them by IoU."""
from __future__ import annotations

import math

import pytest
import torch

from clean_ros.cloud import geometry
from clean_ros.yaml_config import ConfigError
from clean_ros.models.anchors import FeatureGrid
from clean_ros.models.roi_head import (VoxelVolume, bev_grid_points, sample_bev, sample_volume,
                                       voxel_grid_points)
from clean_ros.models.two_stage import Proposals, TwoStageDetector
from clean_ros.models.two_stage_config import load_two_stage_config
from clean_ros.inference.voxelize import voxelize_batch
from shared_helpers import read_velodyne
from training.config_paths import find_config
from training.roi_targets import iou_quality_targets, roi_box_targets, sample_rois


# --------------------------------------------------------------------------- pooling geometry
def test_bev_grid_points_by_hand():
    roi = torch.tensor([[10.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
    pts = bev_grid_points(roi, 2)  # u in {-1, +1} (l / 4), v in {-0.5, +0.5} (w / 4); index i * G + j
    assert torch.allclose(pts[0], torch.tensor([[9.0, 1.5], [9.0, 2.5], [11.0, 1.5], [11.0, 2.5]]))
    rotated = roi.clone()
    rotated[0, 6] = math.pi / 2  # heading along +y: u moves y, v moves -x
    pts = bev_grid_points(rotated, 2)
    assert torch.allclose(pts[0], torch.tensor([[10.5, 1.0], [9.5, 1.0], [10.5, 3.0], [9.5, 3.0]]), atol=1e-6)
    pts3 = voxel_grid_points(roi, 2)
    assert pts3.shape == (1, 8, 3)
    assert torch.allclose(pts3[0, :2], torch.tensor([[9.0, 1.5, -0.375], [9.0, 1.5, 0.375]]))


def test_bev_pooling_samples_a_ramp_at_the_grid_points():
    # 2 channels: x and y of each cell centre, on a 20 x 30 map of 0.5 m cells starting at (-3, 4).
    grid = FeatureGrid(height=20, width=30, x_min=-3.0, y_min=4.0, cell_x=0.5, cell_y=0.5, positions_per_cell=1)
    centers = grid.cell_centers()  # (H*W, 2) row-major
    bev = centers.t().reshape(1, 2, 20, 30)
    bev = torch.cat([bev, bev + 100.0]).contiguous()  # a second frame with shifted values
    rois = torch.tensor([[[2.0, 8.0, 0.0, 3.0, 2.0, 1.0, 0.0], [5.0, 10.0, 0.0, 4.0, 1.5, 1.0, 0.7]],
                         [[1.0, 7.5, 0.0, 2.0, 2.0, 1.0, -2.5], [6.0, 9.0, 0.0, 1.0, 0.5, 1.0, math.pi / 2]]])
    points = bev_grid_points(rois, 4)  # (2, 2, 16, 2), all inside the map's interior
    pooled = sample_bev(bev, grid, points)  # (2, 2, 16, 2)
    assert pooled.shape == (2, 2, 16, 2)
    assert torch.allclose(pooled[0], points[0], atol=1e-4)  # bilinear samples of a linear ramp are exact
    assert torch.allclose(pooled[1], points[1] + 100.0, atol=1e-4)
    # a point outside the map samples zeros
    far = sample_bev(bev, grid, torch.tensor([[[[100.0, 100.0]]]]).expand(2, 1, 1, 2))
    assert torch.all(far == 0)


def test_voxel_pooling_samples_a_3d_ramp():
    d, h, w = 4, 6, 8
    origin, extent = (0.0, -2.0, -3.0), (8.0, 6.0, 4.0)  # 1 m cells
    zz, yy, xx = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack([xx + 0.5 + origin[0], yy + 0.5 + origin[1], zz + 0.5 + origin[2]]).float()
    volume = VoxelVolume(centres.unsqueeze(0), origin, extent)
    roi = torch.tensor([[[4.0, 1.0, -1.0, 3.0, 2.0, 1.5, 0.4]]])
    points = voxel_grid_points(roi, 3)
    assert torch.allclose(sample_volume(volume, points), points, atol=1e-4)


# --------------------------------------------------------------------------- the model
def _tiny_teacher(*overrides: str) -> TwoStageDetector:
    torch.manual_seed(0)
    return TwoStageDetector(load_two_stage_config(find_config("teacher_two_stage_tiny"), overrides))


def _kitti_voxels(cfg, kitti_sample, frames=("000000", "000001")):
    clouds = [torch.from_numpy(read_velodyne(kitti_sample / f"training/velodyne/{f}.bin")) for f in frames]
    voxels, _ = voxelize_batch(clouds, cfg.point_cloud_range, cfg.voxel_size, cfg.max_points_per_voxel,
                               cfg.max_voxels_test)
    return voxels


HAND_ROIS = torch.tensor([[[10.0, 2.0, -0.9, 3.9, 1.6, 1.56, 0.0], [20.0, -5.0, -0.9, 4.2, 1.7, 1.5, 1.2],
                           [8.0, 4.0, -0.6, 0.8, 0.6, 1.7, -0.3]],
                          [[30.0, 8.0, -1.0, 1.8, 0.6, 1.7, 2.0], [12.0, -3.0, -0.8, 3.9, 1.6, 1.56, -3.0],
                           [15.0, 0.0, -0.9, 4.0, 1.7, 1.6, 0.5]]])


def test_roi_forward_on_hand_given_rois(kitti_sample, one_thread):
    model = _tiny_teacher().eval()
    assert model.rpn.anchors.shape[0] == model.rpn.grid.num_positions  # the students' anchor layout
    voxels = _kitti_voxels(model.cfg.rpn, kitti_sample)
    with torch.no_grad():
        rpn = model.rpn(voxels, 2)
        iou_logits, boxes = model.roi_forward(rpn, HAND_ROIS)
        again, again_boxes = model.roi_forward(rpn, HAND_ROIS)
        first_two, _ = model.roi_forward(rpn, HAND_ROIS[:, :2])
        _, residuals = model.second_stage(rpn, HAND_ROIS)
    assert iou_logits.shape == (2, 3) and boxes.shape == (2, 3, 7)
    assert torch.equal(iou_logits, again) and torch.equal(boxes, again_boxes)  # deterministic
    assert torch.allclose(first_two, iou_logits[:, :2], atol=1e-6)  # a RoI's result does not depend on the others
    assert torch.allclose(boxes, geometry.decode_boxes(residuals, HAND_ROIS), atol=1e-6)
    # boxes start near their RoIs (residual head initialised small)
    assert (boxes[..., :3] - HAND_ROIS[..., :3]).abs().max() < 0.5
    # gradient flows when the caller asks for it (training path)
    model.train()
    rpn = model.rpn(voxels, 2)
    logits, _ = model.roi_forward(rpn, HAND_ROIS)
    logits.sum().backward()
    assert model.roi_head.iou_out.weight.grad.abs().sum() > 0
    assert model.rpn.backbone_3d.stages[0][0][0].weight.grad.abs().sum() > 0


def test_forward_proposals_and_predict(kitti_sample, one_thread):
    model = _tiny_teacher().eval()
    voxels = _kitti_voxels(model.cfg.rpn, kitti_sample)
    with torch.no_grad():
        out = model(voxels, 2)
    r = model.cfg.roi_head.num_rois_test
    assert out.rois.shape == (2, r, 7) and out.iou_logits.shape == (2, r) and out.box_residuals.shape == (2, r, 7)
    assert torch.allclose(out.refined_boxes, geometry.decode_boxes(out.box_residuals, out.rois), atol=1e-6)
    for b in range(2):
        valid = out.roi_labels[b] >= 0
        boxes, scores = out.rois[b, valid], out.roi_scores[b, valid]
        assert valid.sum() > 0 and torch.all(scores[:-1] >= scores[1:])  # sorted by RPN score
        iou = geometry.bev_iou(boxes, boxes).fill_diagonal_(0)
        assert iou.max() <= model.cfg.roi_head.proposal_nms_iou_test + 1e-4  # NMS'd
        assert torch.all(out.roi_scores[b, ~valid] == 0)
    # the final score rule (default iou: sigmoid(iou) alone, the reference teachers')
    p = torch.tensor([0.64, 0.25])
    logit = torch.logit(torch.tensor([0.25, 1.0 - 1e-6]))
    assert torch.allclose(model.final_scores(p, logit), torch.tensor([0.25, 1.0]), atol=1e-4)
    frames = model.select(out)
    low = model.cfg.rpn.postprocess.score_thresholds[0]
    for f in frames:
        assert torch.all(f.scores >= low) and torch.all(f.scores[:-1] >= f.scores[1:])
    detections = model.predict(voxels, 2)
    assert len(detections) == 2 and detections[0].boxes.shape[1] == 7


def test_final_score_rule_reference_default_and_the_other_rules(tmp_path):
    from clean_ros.models.two_stage_config import RoIHeadConfig

    assert RoIHeadConfig().score_rule == "iou"  # reference: the teacher's final score is sigmoid(IoU logit)
    for path in sorted(find_config("teacher_two_stage").parent.glob("teacher_two_stage*.yaml")):
        assert load_two_stage_config(path).roi_head.score_rule == "iou", path.name
    p = torch.tensor([0.64, 0.25, 0.0])
    logit = torch.logit(torch.tensor([0.25, 1.0 - 1e-6, 0.5]))
    expected = {"iou": [0.25, 1.0, 0.5], "sqrt": [0.4, 0.5, 0.0], "product": [0.16, 0.25, 0.0], "rpn": [0.64, 0.25, 0.0]}
    for rule, values in expected.items():
        model = _tiny_teacher(f"roi_head.score_rule={rule}")
        assert torch.allclose(model.final_scores(p, logit), torch.tensor(values), atol=1e-4), rule
    # the final score rule: sqrt(p_rpn * sigmoid(iou)), still read from a stored teacher config that names it
    stored = tmp_path / "model.yaml"
    stored.write_text(f"_base_: {find_config('teacher_two_stage_tiny')}\nroi_head: {{score_rule: sqrt}}\n")
    model = TwoStageDetector(load_two_stage_config(stored))
    assert torch.allclose(model.final_scores(p[:2], logit[:2]), torch.tensor([0.4, 0.5]), atol=1e-4)
    with pytest.raises(ConfigError, match="score_rule"):
        load_two_stage_config(find_config("teacher_two_stage_tiny"), ["roi_head.score_rule=mean"])


def test_voxel_pooling_teacher_remembers_its_sparse_stage(kitti_sample, one_thread):
    model = _tiny_teacher("roi_head.pool_sources=[bev, voxel]", "roi_head.voxel_grid_size=3").eval()
    voxels = _kitti_voxels(model.cfg.rpn, kitti_sample, frames=("000002",))
    rois = HAND_ROIS[:1]
    with torch.no_grad():
        rpn, volume = model.rpn_forward(voxels, 1)
        explicit, _ = model.roi_forward(rpn, rois, volume)
        assert volume.features.shape[1] == model.rpn.backbone_3d.stage_channels[3]
        rpn_again = model.rpn(voxels, 1)  # as a distillation runner calls it: the stage is remembered
        remembered, _ = model.roi_forward(rpn_again, rois)
    assert torch.allclose(explicit, remembered, atol=1e-5)
    with pytest.raises(ValueError, match="voxel_features"):
        with torch.no_grad():
            model.roi_forward(rpn, rois)  # an older RPN output: nothing remembered for it


def test_two_stage_config_errors():
    with pytest.raises(ConfigError, match="anchor head"):
        load_two_stage_config(find_config("teacher_two_stage_tiny"), ["rpn.head.type=center"])
    with pytest.raises(ConfigError, match="iou_bg_threshold"):
        load_two_stage_config(find_config("teacher_two_stage_tiny"), ["roi_head.iou_bg_threshold=0.8"])


# --------------------------------------------------------------------------- targets
def test_iou_quality_and_residual_targets_by_hand():
    ious = torch.tensor([0.0, 0.2, 0.25, 0.5, 0.6, 0.75, 0.9])
    assert torch.allclose(iou_quality_targets(ious), torch.tensor([0, 0, 0, 0.5, 0.7, 1, 1.0]))
    roi = torch.tensor([[10.0, 0.0, -1.0, 4.0, 2.0, 1.5, 0.1]])
    gt = torch.tensor([[10.5, 0.2, -0.9, 4.2, 1.8, 1.5, 0.1 + math.pi - 0.05]])  # heading flipped w.r.t. the RoI
    t = roi_box_targets(gt, roi)
    assert t[0, 6] == pytest.approx(-0.05, abs=1e-5)  # yaw residual wrapped to [-pi/2, pi/2)
    back = geometry.decode_boxes(t, roi)
    assert torch.allclose(back[0, :6], gt[0, :6], atol=1e-5)
    assert geometry.iou_3d(back, gt)[0, 0] > 0.999  # the same box, heading half a turn away


def test_sample_rois_balance_and_targets():
    torch.manual_seed(0)
    from clean_ros.models.two_stage_config import RoIHeadConfig

    cfg = RoIHeadConfig(num_rois_train=16, fg_fraction=0.5, gt_rois_train=0)
    gt = torch.tensor([[[10.0, 0.0, -1.0, 4.0, 2.0, 1.5, 0.0], [20.0, 5.0, -0.8, 0.8, 0.6, 1.7, 0.0]]])
    labels = torch.tensor([[0, 1]])
    shifts = torch.linspace(0.0, 3.0, 12)
    cars = gt[0, :1].repeat(12, 1)
    cars[:, 0] += shifts  # IoU falls from 1 to 0 along the shifts
    boxes = torch.cat([cars, gt[0, 1:2]]).unsqueeze(0)  # + an exact pedestrian, but labelled as a Car below
    props = Proposals(boxes, torch.ones(1, 13), torch.tensor([[0] * 12 + [0]]))
    t = sample_rois(props, gt, labels, cfg)
    assert t.rois.shape == (1, 16, 7) and t.iou_targets.shape == (1, 16)
    true_iou = geometry.iou_3d(t.rois[0], gt[0, :1])[:, 0]
    assert torch.allclose(t.ious[0], true_iou, atol=1e-5)  # same-class IoU: the mislabelled pedestrian gets 0
    fg = t.ious[0] >= cfg.reg_fg_threshold
    num_fg_candidates = int((geometry.iou_3d(cars, gt[0, :1])[:, 0] >= cfg.reg_fg_threshold).sum())
    assert 0 < num_fg_candidates < 8
    assert fg.sum() == num_fg_candidates  # at most half the RoIs are fg, each fg candidate once; the rest bg
    assert len({tuple(r.tolist()) for r in t.rois[0, fg]}) == num_fg_candidates
    assert torch.equal(t.reg_mask[0], t.ious[0] > cfg.reg_fg_threshold)
    assert torch.allclose(t.iou_targets, iou_quality_targets(t.ious))
    decoded = geometry.decode_boxes(t.box_targets[0, t.reg_mask[0]], t.rois[0, t.reg_mask[0]])
    assert torch.allclose(decoded, gt[0, :1].expand_as(decoded), atol=1e-5)
    # a frame without ground truth: everything is background with target 0
    empty = sample_rois(props, gt[:, :0], labels[:, :0], cfg)
    assert torch.all(empty.iou_targets == 0) and not empty.reg_mask.any()


# --------------------------------------------------------------------------- training
def _fixed_batch(cfg, kitti_sample, frame_ids):
    from training.data.data_config import DataConfig
    from training.data.kitti_dataset import KittiDataset
    from training.data.loader import Collator

    data = DataConfig(root=str(kitti_sample), point_cloud_range=tuple(cfg.point_cloud_range),
                      class_names=tuple(cfg.class_names))
    dataset = KittiDataset(data, "train", training=False)
    samples = [dataset[dataset.frame_ids.index(f)] for f in frame_ids]
    return Collator.from_config(cfg, training=False)(samples)


def _aligned_iou(boxes: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return geometry.iou_3d_aligned(boxes, gt)


def test_second_stage_learns_to_refine_and_rank(kitti_sample, one_thread):
    """Train the tiny teacher (RPN + RoI head, the TeacherTask losses) on two real frames with jittered-GT RoIs; on
    fresh jitter the refined boxes overlap the ground truth better than their RoIs, and the IoU logits rank the RoIs
    by their true IoU."""
    from training.roi_targets import jittered_gt_rois
    from training.teacher_task import TeacherTask

    torch.manual_seed(0)
    cfg = load_two_stage_config(find_config("teacher_two_stage_tiny"), MICRO_TEACHER)
    batch = _fixed_batch(cfg, kitti_sample, STEPS_FRAMES)
    task = TeacherTask(cfg)
    for m in task.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    optimizer = torch.optim.AdamW(task.parameters(), lr=3e-3, weight_decay=0.01)
    first = None
    for step in range(STEPS):
        result = task(batch)
        optimizer.zero_grad()
        result.total.backward()
        torch.nn.utils.clip_grad_norm_(task.parameters(), 10.0)
        optimizer.step()
        if first is None:
            first = {k: float(v) for k, v in result.parts.items()}
    last = {k: float(v) for k, v in result.parts.items()}
    assert last["roi_iou"] < first["roi_iou"] and last["roi_box"] < first["roi_box"]

    model = task.model.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(1234)  # fresh jitter, never trained on
    rois, gts = [], []
    frames = len(STEPS_FRAMES)
    for b in range(frames):
        real = batch.gt_labels[b] >= 0
        gt = batch.gt_boxes[b, real]
        assert gt.shape[0] >= 1
        rois.append(jittered_gt_rois(gt, 8, cfg.roi_head.gt_jitter))
        gts.append(gt.repeat(8, 1))
    torch.random.set_rng_state(generator_state)
    width = max(r.shape[0] for r in rois)
    padded = torch.stack([torch.cat([r, r[:1].expand(width - r.shape[0], 7)]) for r in rois])
    with torch.no_grad():
        rpn = model.rpn(batch.voxels, frames)
        iou_logits, refined = model.roi_forward(rpn, padded)
    roi_iou = torch.cat([_aligned_iou(r, g) for r, g in zip(rois, gts)])
    refined_iou = torch.cat([_aligned_iou(refined[b, :rois[b].shape[0]], gts[b]) for b in range(frames)])
    quality = torch.cat([torch.sigmoid(iou_logits[b, :rois[b].shape[0]]) for b in range(frames)])
    rank = lambda t: t.argsort().argsort().float()
    spearman = float(torch.corrcoef(torch.stack([rank(quality), rank(roi_iou)]))[0, 1])
    print(f"\nsecond stage after {STEPS} steps: mean 3D IoU of RoIs {roi_iou.mean():.3f} -> refined "
          f"{refined_iou.mean():.3f}; Spearman(sigmoid(iou logit), IoU) {spearman:.2f}; losses {first} -> {last}")
    assert refined_iou.mean() > roi_iou.mean() + 0.02
    assert spearman > 0.3


# A micro teacher (38.4 m x 38.4 m, 0.2 m voxels, narrow) so that a step takes well under a second.
MICRO_TEACHER = ["rpn.point_cloud_range=[0.0, -19.2, -3.0, 38.4, 19.2, 1.0]", "rpn.voxel_size=[0.2, 0.2, 0.1]",
                 "rpn.max_voxels_train=8000", "rpn.max_voxels_test=8000",
                 "rpn.backbone_3d.widths=[[8, 8], [16, 16], [16, 16], [24, 24]]", "rpn.backbone_3d.out_width=24",
                 "rpn.bev_backbone.layer_widths=[[32, 32], [48, 48, 48]]",
                 "rpn.bev_backbone.num_upsample_filters=[32, 32]",
                 "roi_head.gt_rois_train=8", "roi_head.num_rois_train=64", "roi_head.dropout=0.0",
                 "roi_head.proposal_pre_nms_train=256", "roi_head.num_proposals_train=64"]
STEPS = 60
STEPS_FRAMES = ("000000", "000002", "000003", "000005")  # a Car or Pedestrian within 38.4 m each


def test_train_cli_trains_the_teacher_and_resumes(kitti_sample, tmp_path):
    """training/train.py selects TeacherTask from `two_stage:`; the resolved config round-trips through a resume."""
    import subprocess
    import sys

    import yaml

    repo = find_config("second_tiny").parents[1]
    micro = dict(item.split("=", 1) for item in MICRO_TEACHER if item.startswith("rpn."))
    rpn = {"_base_": str(repo / "config" / "second_tiny.yaml")}
    for key, value in micro.items():  # "rpn.a.b=v" -> nested mapping under the RPN
        node = rpn
        parts = key.split(".")[1:]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    config = {"name": "teacher_cli", "model": rpn,
              "two_stage": {"_base_": str(repo / "config" / "teacher_two_stage_tiny.yaml"), "rpn": rpn},
              "data": {"root": str(kitti_sample), "train_split": "train", "val_split": "train"},
              "augment": {"gt_sampling": False}, "epochs": 1, "batch_size": 2, "workers": 0, "eval_interval": 0,
              "log_interval": 1, "max_iterations": 1}
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(repo / "training" / "train.py"), "--no-tensorboard", "--device", "cpu"]
    first = subprocess.run([*cmd, "--config", str(path), "--out", str(run)], capture_output=True, text=True,
                           timeout=240, env=env, cwd=repo)
    assert first.returncode == 130 or first.returncode == 0, first.stderr[-2000:]
    header = (run / "losses.csv").read_text().splitlines()[0].split(",")
    assert {"cls", "box", "dir", "roi_iou", "roi_box"} <= set(header)
    second = subprocess.run([*cmd, "--resume", str(run), "--set", "max_iterations=2"], capture_output=True,
                            text=True, timeout=240, env=env, cwd=repo)
    assert second.returncode in (0, 130), second.stderr[-2000:]
    assert len((run / "losses.csv").read_text().splitlines()) == 3  # header + steps 1 and 2
    from training.train_config import load_train_config

    bad = dict(config, model={**rpn, "max_voxels_test": 1234})
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="two_stage.rpn differs from model"):
        load_train_config(path)
