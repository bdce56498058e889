"""PointDistiller baseline (training/distill/pointdistiller.py): kNN graphs in the teacher's feature space,
edge encoders and importance re-weighting."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from clean_ros.models.detector import build_detector
from training.distill.distill_config import PointDistillerConfig
from training.distill.pointdistiller import PointDistillerLoss, edge_features, knn_graph
from training.distill.teacher import TeacherRunner
from training.task import DetectionTask

from distill_helpers import one_car_batch, loss_context

# the shared machine: one thread is much faster under load (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_knn_graph_in_feature_space_and_edge_layout():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
    assert knn_graph(features, 1).squeeze(1).tolist() == [1, 0, 1, 2]
    assert knn_graph(features, 2).tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    edges = edge_features(features, knn_graph(features, 1))
    assert edges.shape == (4, 1, 4)
    assert edges[2, 0].tolist() == [1.0, 0.0, 3.0, 0.0]  # [neighbour ; centre]


def test_pointdistiller_graph_is_built_in_teacher_space(plain_pair):
    cfg, teacher, _ = plain_pair
    runner = TeacherRunner(copy.deepcopy(teacher))
    student = build_detector(cfg)
    term = PointDistillerLoss(PointDistillerConfig(k=1, importance="uniform", weight=1.0), runner, student)
    term.eval()  # deterministic BN for comparing two computations
    teacher_f = torch.tensor([[0.0] * 15 + [v] for v in (0.0, 1.0, 3.0, 10.0)])
    student_f = torch.tensor([[0.0] * 15 + [v] for v in (0.0, 10.0, 1.0, 3.0)])  # other neighbours in its own space
    nodes = torch.arange(4)
    loss = term.graph_loss(student_f, teacher_f, [nodes], [torch.zeros(4)])

    def reference(graph_space):
        nb = knn_graph(graph_space, 1)
        t = term.teacher_edges(edge_features(teacher_f, nb).permute(2, 0, 1).unsqueeze(0))
        s = term.student_edges(edge_features(student_f, nb).permute(2, 0, 1).unsqueeze(0))
        return ((s - t) ** 2).mean()
    assert float(loss) == pytest.approx(float(reference(teacher_f)), rel=1e-6)
    assert float(loss) != pytest.approx(float(reference(student_f)), rel=1e-3)


def test_pointdistiller_zero_when_equal_positive_otherwise_and_reweighting(plain_pair):
    cfg, teacher, student = plain_pair
    batch = one_car_batch(cfg)
    runner = TeacherRunner(copy.deepcopy(teacher))
    s = copy.deepcopy(student).eval()
    term = PointDistillerLoss(PointDistillerConfig(num_nodes=64, k=4), runner, s)
    term.student_edges.load_state_dict(term.teacher_edges.state_dict())
    task = DetectionTask(cfg, s, loss_terms=[term])
    assert float(term(loss_context(task, batch))) < 1e-12
    other = build_detector(cfg)
    term = PointDistillerLoss(PointDistillerConfig(num_nodes=64, k=4), runner, other)
    task = DetectionTask(cfg, other, loss_terms=[term])
    result = task(batch)
    assert float(result.parts["pointdistiller"]) > 0
    result.total.backward()
    assert float(other.encoder.linears[0].weight.grad.abs().sum()) > 0
    assert float(term.teacher_edges[0].weight.grad.abs().sum()) > 0  # the teacher's edge encoder is trained
    # N * softmax(importance / tau) weights: error concentrated on the important node
    err_nodes = torch.arange(3)
    t_f = torch.randn(3, 16)
    w_loss = term.graph_loss(torch.zeros(3, 16), t_f, [err_nodes], [torch.tensor([100.0, 0.0, 0.0])])
    u_loss = term.graph_loss(torch.zeros(3, 16), t_f, [err_nodes], [torch.zeros(3)])
    assert float(w_loss) != pytest.approx(float(u_loss), rel=1e-3)


def test_pointdistiller_defaults_are_the_released_setting_and_every_importance_works(plain_pair):
    cfg, teacher, student = plain_pair
    default = PointDistillerConfig()
    # the authors' PointPillars 4x setting: N 6000, K 128, tau 1e-2, point-count reweighting, loss x 2, C' 32
    assert (default.num_nodes, default.k, default.temperature, default.importance, default.weight,
            default.embed_channels, default.select_by) == (6000, 128, 0.01, "points", 2.0, 32, "points")
    batch = one_car_batch(cfg)
    runner = TeacherRunner(copy.deepcopy(teacher))
    other = build_detector(cfg)
    term = PointDistillerLoss(default, runner, other)
    ctx = loss_context(DetectionTask(cfg, other, loss_terms=[term]), batch)
    nodes = torch.arange(5)
    assert torch.equal(term.importance(ctx, nodes, torch.zeros(5, 16), 0), batch.voxels.num_points[:5].float())
    # tau = 1e-2 puts (nearly) all the weight N * softmax(count / tau) on the fullest voxel(s)
    counts = torch.tensor([3.0, 7.0, 7.0, 1.0])
    weights = 4 * torch.softmax(counts / default.temperature, dim=0)
    assert weights.tolist() == pytest.approx([0.0, 2.0, 2.0, 0.0], abs=1e-6)
    losses = {}
    for importance in ("points", "teacher_score", "teacher_feature", "uniform"):
        torch.manual_seed(0)
        term = PointDistillerLoss(PointDistillerConfig(importance=importance), runner, other)
        ctx = loss_context(DetectionTask(cfg, other, loss_terms=[term]), batch)
        losses[importance] = float(term(ctx))
        assert losses[importance] > 0 and math.isfinite(losses[importance]), importance
    assert losses["points"] != pytest.approx(losses["uniform"], rel=1e-3)  # the reweighting is in effect
    with pytest.raises(ValueError, match="importance"):
        PointDistillerConfig(importance="random")
