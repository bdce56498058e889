"""PointDistiller baseline (METHOD.md section 6): local distillation with dynamic graphs over voxels / pillars.

Per frame of the batch:
1. nodes = the top N voxels by point count (or by the max of the teacher's feature);
2. kNN graph (K neighbours, the node itself excluded) in TEACHER feature space over those nodes;
3. edge feature of node i and neighbour j: [f_j ; f_i] for the teacher's and the student's features (same graph);
4. separate trainable 1x1 conv + BN + ReLU encoders map teacher (2 C_T) and student (2 C_S) edges to C';
5. loss = weight * mean_i w_i * mean_{k, c} (e^S - e^T)^2 with w = N * softmax(importance / tau) over the nodes,
   averaged over the frames that have at least two nodes.
importance: the node voxel's point count (points, the reference's), the teacher's max class probability in the
node's BEV cell (teacher_score), the teacher feature's max (teacher_feature) or 0 (uniform: w = 1). Default N, K,
tau, importance and weight: the authors' released setting (training/distill/distill_config.py PointDistillerConfig).
Features are the encoder outputs (V, C) of the pillar / voxel encoder, read with forward hooks (student: on
model.encoder; teacher: TeacherRunner). Each network voxelises the raw points itself on one grid; teacher features
are paired with the student's voxels by grid cell (match_voxels), and nodes are drawn from the voxels both have.
"""
from __future__ import annotations

import torch
from torch import nn

from clean_ros.models.detector import Detector, HeadOutput
from clean_ros.inference.voxelize import Voxels
from training.distill.distill_config import PointDistillerConfig
from training.distill.teacher import TeacherRunner
from training.task import LossContext


def knn_graph(features: torch.Tensor, k: int) -> torch.Tensor:
    """(N, C) -> (N, k) indices of each node's k nearest other nodes (Euclidean), nearest first."""
    dist = torch.cdist(features.float(), features.float())
    dist.fill_diagonal_(float("inf"))
    return dist.topk(k, dim=1, largest=False).indices


def edge_features(features: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """(N, C), (N, k) -> (N, k, 2C) edges [neighbour ; centre]."""
    centre = features.unsqueeze(1).expand(-1, neighbours.shape[1], -1)
    return torch.cat([features[neighbours], centre], dim=-1)


def match_voxels(student: Voxels, teacher: Voxels) -> torch.Tensor:
    """(V_s,) index of the teacher voxel at each student voxel's (batch, z, y, x), -1 where the teacher has none.
    Both voxelise the raw points themselves on one grid; their voxel caps may keep different voxels."""
    s_coords, t_coords = student.coords.long(), teacher.coords.long()
    missing = torch.full((len(s_coords),), -1, dtype=torch.long, device=s_coords.device)
    if len(s_coords) == 0 or len(t_coords) == 0:
        return missing
    span = torch.cat([s_coords, t_coords]).amax(0) + 1

    def keys(c: torch.Tensor) -> torch.Tensor:
        return ((c[:, 0] * span[1] + c[:, 1]) * span[2] + c[:, 2]) * span[3] + c[:, 3]

    t_keys, order = keys(t_coords).sort()
    s_keys = keys(s_coords)
    pos = torch.searchsorted(t_keys, s_keys).clamp(max=len(t_keys) - 1)
    return torch.where(t_keys[pos] == s_keys, order[pos], missing)


def select_nodes(voxels: Voxels, frame: int, count: int, teacher_features: torch.Tensor, by: str,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (into V) of the frame's top `count` voxels by point count or teacher feature max (among `valid`)."""
    in_frame = voxels.coords[:, 0] == frame
    index = (in_frame if valid is None else in_frame & valid).nonzero().squeeze(1)
    if by == "points":
        key = voxels.num_points[index].float()
    elif by == "teacher_feature":
        key = teacher_features[index].float().max(dim=1).values
    else:
        raise ValueError(f"pointdistiller.select_by must be 'points' or 'teacher_feature', got {by!r}")
    if index.numel() > count:
        index = index[key.topk(count).indices]
    return index


def voxel_cell_scores(teacher: HeadOutput, voxels: Voxels, nodes: torch.Tensor, voxel_size, pc_range,
                      frame: int) -> torch.Tensor:
    """Teacher max class probability over the anchors of the head cell containing each node's voxel centre."""
    g = teacher.grid
    x = pc_range[0] + (voxels.coords[nodes, 3].double() + 0.5) * voxel_size[0]
    y = pc_range[1] + (voxels.coords[nodes, 2].double() + 0.5) * voxel_size[1]
    cols = torch.floor((x - g.x_min) / g.cell_x).long().clamp(0, g.width - 1)
    rows = torch.floor((y - g.y_min) / g.cell_y).long().clamp(0, g.height - 1)
    a = g.positions_per_cell
    positions = (rows * g.width + cols).unsqueeze(1) * a + torch.arange(a, device=nodes.device)
    return torch.sigmoid(teacher.cls_logits[frame].float()[positions]).amax(dim=(1, 2))


def _edge_encoder(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU())


class PointDistillerLoss(nn.Module):
    name = "pointdistiller"

    def __init__(self, cfg: PointDistillerConfig, runner: TeacherRunner, student: Detector):
        super().__init__()
        if not any(p.requires_grad for p in student.encoder.parameters()):
            raise ValueError("pointdistiller distils the encoder's (V, C) outputs, but this student's encoder "
                             f"({type(student.encoder).__name__}) has no trainable weights; distilling sparse-backbone "
                             "voxel features is not wired yet")
        self.cfg = cfg
        self.runner = runner  # plain object: the teacher is not registered
        s_channels = student.encoder.out_channels
        t_channels = runner.dense.encoder.out_channels
        self.student_edges = _edge_encoder(2 * s_channels, cfg.embed_channels)
        self.teacher_edges = _edge_encoder(2 * t_channels, cfg.embed_channels)
        self._voxel_size = list(student.cfg.voxel_size)
        self._pc_range = list(student.cfg.point_cloud_range)
        self._student_features: torch.Tensor | None = None
        # A hook, not a reference: the student must not become a sub-module of its own loss term.
        self._hook = student.encoder.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output) -> None:
        self._student_features = output

    def importance(self, ctx: LossContext, nodes: torch.Tensor, teacher_features: torch.Tensor, frame: int
                   ) -> torch.Tensor:
        if self.cfg.importance == "uniform":
            return teacher_features.new_zeros(nodes.shape[0]).float()
        if self.cfg.importance == "points":
            return ctx.batch.voxels.num_points[nodes].float()
        if self.cfg.importance == "teacher_feature":
            return teacher_features[nodes].float().max(dim=1).values
        teacher = self.runner.dense_output(ctx.batch)
        return voxel_cell_scores(teacher, ctx.batch.voxels, nodes, self._voxel_size, self._pc_range, frame)

    def graph_loss(self, student_features: torch.Tensor, teacher_features: torch.Tensor,
                   node_sets: list[torch.Tensor], importances: list[torch.Tensor]) -> torch.Tensor:
        """Loss over frames given their node indices (each >= 2 nodes) and node importances."""
        k = min(self.cfg.k, min(n.numel() for n in node_sets) - 1)
        t_edges, s_edges = [], []
        for nodes in node_sets:
            t = teacher_features[nodes].float()
            neighbours = knn_graph(t, k)
            t_edges.append(edge_features(t, neighbours))
            s_edges.append(edge_features(student_features[nodes].float(), neighbours))
        # One encoder call over all frames' edges: (1, 2C, sum N, k), so batch norm sees the whole batch.
        t_emb = self.teacher_edges(torch.cat(t_edges).permute(2, 0, 1).unsqueeze(0))
        s_emb = self.student_edges(torch.cat(s_edges).permute(2, 0, 1).unsqueeze(0))
        error = ((s_emb - t_emb) ** 2).mean(dim=(0, 1, 3))  # (sum N,)
        loss, start = error.new_zeros(()), 0
        for nodes, imp in zip(node_sets, importances):
            n = nodes.numel()
            weights = n * torch.softmax(imp.float() / self.cfg.temperature, dim=0)
            loss = loss + (weights * error[start:start + n]).mean()
            start += n
        return self.cfg.weight * loss / len(node_sets)

    def forward(self, ctx: LossContext) -> torch.Tensor:
        student_features, self._student_features = self._student_features, None
        if student_features is None:
            raise RuntimeError("pointdistiller: the student's encoder output was not captured (the forward hook "
                               "sits on the model given at construction)")
        # The teacher encodes its own voxelisation: pair its features with the student's voxels by grid cell.
        match = match_voxels(ctx.batch.voxels, self.runner.teacher_voxels(ctx.batch))
        own_features = self.runner.encoder_features(ctx.batch).detach()
        teacher_features = own_features[match.clamp(min=0)] * (match >= 0).unsqueeze(1).to(own_features.dtype)
        node_sets, importances = [], []
        for b in range(ctx.batch.batch_size):
            nodes = select_nodes(ctx.batch.voxels, b, self.cfg.num_nodes, teacher_features, self.cfg.select_by,
                                 valid=match >= 0)
            if nodes.numel() >= 2:
                node_sets.append(nodes)
                importances.append(self.importance(ctx, nodes, teacher_features, b))
        if not node_sets:
            return 0.0 * student_features.sum()
        return self.graph_loss(student_features, teacher_features, node_sets, importances)


__all__ = ["PointDistillerLoss", "knn_graph", "edge_features", "select_nodes", "voxel_cell_scores", "match_voxels"]
