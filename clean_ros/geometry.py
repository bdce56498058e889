"""Box geometry on torch tensors (CPU and CUDA): rotated IoU, NMS, box coding, point-in-box.

Box convention (LiDAR frame): (x, y, z centre, l, w, h, yaw), yaw about +z, yaw 0 puts l along +x.

Rotated overlap is exact: the intersection of two rectangles is the convex polygon spanned by the corners of
each rectangle that lie inside the other plus the crossings of their edges; its area follows from the shoelace
formula after sorting those points by angle around their mean. All polygon work runs in float64 (identical,
touching and nested boxes come out right to ~1e-12) on *candidate pairs only*: pairs whose bounding circles
do not meet are skipped, and the pairs that remain are processed in bounded chunks, so N x M problems
(anchor matching, NMS over thousands of boxes) never materialise per-pair clipping temporaries for all pairs.
"""
from __future__ import annotations

import math

import torch

# Pairs processed per chunk by the polygon code (each pair holds ~24 points of float64 temporaries).
_PAIR_CHUNK = 16384
# Elements of an N x M prefilter matrix built at once.
_PREFILTER_CHUNK = 1 << 22
# Tolerances of the polygon code, in metres (inside test) and as a sine (parallel edges) / edge fraction.
_INSIDE_EPS = 1e-9
_PARALLEL_SIN = 1e-10
_EDGE_EPS = 1e-9


# --------------------------------------------------------------------------- angles
def limit_period(val: torch.Tensor, offset: float = 0.5, period: float = 2 * math.pi) -> torch.Tensor:
    """Wrap val into [-offset * period, (1 - offset) * period)."""
    return val - torch.floor(val / period + offset) * period


def normalize_yaw(yaw: torch.Tensor) -> torch.Tensor:
    """Wrap angles to [-pi, pi)."""
    return limit_period(yaw, 0.5, 2 * math.pi)


# --------------------------------------------------------------------------- corners
# Unit corner template, counter-clockwise seen from above: front-right, front-left, rear-left, rear-right.
_BEV_TEMPLATE = ((0.5, -0.5), (0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5))


def boxes_to_corners_bev(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 7) boxes -> (..., 4, 2) BEV corners, counter-clockwise (front-right, front-left, rear-left, rear-right)."""
    template = torch.tensor(_BEV_TEMPLATE, dtype=boxes.dtype, device=boxes.device)
    local = template * boxes[..., None, 3:5]  # (..., 4, 2) scaled by (l, w)
    cos, sin = torch.cos(boxes[..., 6:7]), torch.sin(boxes[..., 6:7])
    x = local[..., 0] * cos - local[..., 1] * sin + boxes[..., 0:1]
    y = local[..., 0] * sin + local[..., 1] * cos + boxes[..., 1:2]
    return torch.stack([x, y], dim=-1)


def boxes_to_corners_3d(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 7) boxes -> (N, 8, 3) corners: bottom face (BEV order, z - h/2) then top face (z + h/2)."""
    bev = boxes_to_corners_bev(boxes)  # (N, 4, 2)
    z_low = (boxes[:, 2] - boxes[:, 5] / 2)[:, None, None].expand(-1, 4, 1)
    z_high = (boxes[:, 2] + boxes[:, 5] / 2)[:, None, None].expand(-1, 4, 1)
    return torch.cat([torch.cat([bev, z_low], -1), torch.cat([bev, z_high], -1)], dim=1)


# --------------------------------------------------------------------------- exact rectangle intersection
def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _points_in_rect(points: torch.Tensor, boxes: torch.Tensor, eps: float) -> torch.Tensor:
    """points (P, K, 2), boxes (P, 7) float64 -> (P, K) bool, boundary (within eps) counts as inside."""
    rel = points - boxes[:, None, 0:2]
    cos, sin = torch.cos(boxes[:, 6:7]), torch.sin(boxes[:, 6:7])
    along = rel[..., 0] * cos + rel[..., 1] * sin
    across = -rel[..., 0] * sin + rel[..., 1] * cos
    return (along.abs() <= boxes[:, 3:4].abs() / 2 + eps) & (across.abs() <= boxes[:, 4:5].abs() / 2 + eps)


def _intersection_area_chunk(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact BEV intersection areas of paired float64 boxes a[i], b[i] (P, 7) -> (P,)."""
    n = a.shape[0]
    ca, cb = boxes_to_corners_bev(a), boxes_to_corners_bev(b)  # (P, 4, 2)
    a_in_b = _points_in_rect(ca, b, _INSIDE_EPS)
    b_in_a = _points_in_rect(cb, a, _INSIDE_EPS)

    # Crossings of edge i of a (ca[i] + t * ea[i]) with edge j of b (cb[j] + u * eb[j]).
    ea = torch.roll(ca, -1, dims=1) - ca
    eb = torch.roll(cb, -1, dims=1) - cb
    denom = _cross(ea[:, :, None, :], eb[:, None, :, :])  # (P, 4, 4)
    offset = cb[:, None, :, :] - ca[:, :, None, :]  # (P, 4, 4, 2)
    # Parallel (or zero-length) edges never cross in a way that matters: the ends of overlapping collinear edges
    # are corners inside the other box, which are already collected.
    scale = ea.norm(dim=-1)[:, :, None] * eb.norm(dim=-1)[:, None, :]
    not_parallel = denom.abs() > _PARALLEL_SIN * scale
    safe = torch.where(not_parallel, denom, torch.ones_like(denom))
    t = _cross(offset, eb[:, None, :, :]) / safe
    u = _cross(offset, ea[:, :, None, :]) / safe
    crossing = not_parallel & (t >= -_EDGE_EPS) & (t <= 1 + _EDGE_EPS) & (u >= -_EDGE_EPS) & (u <= 1 + _EDGE_EPS)
    crossing_points = ca[:, :, None, :] + t[..., None] * ea[:, :, None, :]

    points = torch.cat([ca, cb, crossing_points.reshape(n, 16, 2)], dim=1)  # (P, 24, 2)
    valid = torch.cat([a_in_b, b_in_a, crossing.reshape(n, 16)], dim=1)
    count = valid.sum(1)
    weights = valid.to(points.dtype)[..., None]
    centre = (points * weights).sum(1) / count.clamp(min=1)[:, None].to(points.dtype)
    rel = points - centre[:, None, :]
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, math.inf))
    order = angle.argsort(dim=1)
    rel = torch.gather(rel, 1, order[..., None].expand(-1, -1, 2))
    valid = torch.gather(valid, 1, order)
    # Unused slots repeat the first point: they add zero-area triangles and close the ring.
    rel = torch.where(valid[..., None], rel, rel[:, :1, :])
    area = 0.5 * _cross(rel, torch.roll(rel, -1, dims=1)).sum(1)
    return torch.where(count >= 3, area.clamp(min=0), torch.zeros_like(area))


def bev_intersection_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact BEV intersection area of a[i] and b[i], (N, 7) x (N, 7) -> (N,) float64."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    out = torch.zeros(a.shape[0], dtype=torch.float64, device=a.device)
    if a.shape[0] == 0:
        return out
    # Only pairs whose bounding circles meet can overlap.
    radius_a = 0.5 * torch.hypot(a64[:, 3], a64[:, 4])
    radius_b = 0.5 * torch.hypot(b64[:, 3], b64[:, 4])
    near = torch.hypot(a64[:, 0] - b64[:, 0], a64[:, 1] - b64[:, 1]) <= radius_a + radius_b + _INSIDE_EPS
    idx = torch.nonzero(near).squeeze(1)
    for start in range(0, idx.numel(), _PAIR_CHUNK):
        sel = idx[start:start + _PAIR_CHUNK]
        out[sel] = _intersection_area_chunk(a64[sel], b64[sel])
    return out


def _candidate_pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) whose BEV bounding circles meet, row-chunked to bound memory."""
    n, m = a.shape[0], b.shape[0]
    rows_i, rows_j = [], []
    if n == 0 or m == 0:
        empty = torch.zeros(0, dtype=torch.long, device=a.device)
        return empty, empty
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    radius_a = 0.5 * torch.hypot(a64[:, 3], a64[:, 4])
    radius_b = 0.5 * torch.hypot(b64[:, 3], b64[:, 4])
    step = max(1, _PREFILTER_CHUNK // m)
    for start in range(0, n, step):
        ca = a64[start:start + step, :2]
        dist = torch.cdist(ca, b64[:, :2]) if ca.shape[0] * m > 64 else (ca[:, None] - b64[None, :, :2]).norm(dim=-1)
        # cdist may lose ~1e-7 relative; the margin only admits extra pairs, which the exact code rejects.
        near = dist <= (radius_a[start:start + step, None] + radius_b[None, :]) * (1 + 1e-6) + 1e-6
        i, j = torch.nonzero(near, as_tuple=True)
        rows_i.append(i + start)
        rows_j.append(j)
    return torch.cat(rows_i), torch.cat(rows_j)


def _bev_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 3] * boxes[:, 4]).abs().to(torch.float64)


def _volume(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 3] * boxes[:, 4] * boxes[:, 5]).abs().to(torch.float64)


def _z_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    top = torch.minimum(a64[:, 2] + a64[:, 5].abs() / 2, b64[:, 2] + b64[:, 5].abs() / 2)
    bottom = torch.maximum(a64[:, 2] - a64[:, 5].abs() / 2, b64[:, 2] - b64[:, 5].abs() / 2)
    return (top - bottom).clamp(min=0)


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0 where den <= 0 (degenerate boxes give IoU 0, never NaN)."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _sparse_iou(a: torch.Tensor, b: torch.Tensor, three_d: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i, j, iou float64) for all pairs that can overlap; pairs not listed have IoU 0."""
    i, j = _candidate_pairs(a, b)
    inter = bev_intersection_aligned(a[i], b[j])
    if three_d:
        inter = inter * _z_overlap(a[i], b[j])
        union = _volume(a)[i] + _volume(b)[j] - inter
    else:
        union = _bev_area(a)[i] + _bev_area(b)[j] - inter
    return i, j, _safe_ratio(inter, union)


def _dense(i: torch.Tensor, j: torch.Tensor, values: torch.Tensor, n: int, m: int, like: torch.Tensor) -> torch.Tensor:
    dtype = like.dtype if like.is_floating_point() else torch.float32
    out = torch.zeros(n, m, dtype=dtype, device=like.device)
    out[i, j] = values.to(dtype)
    return out


# --------------------------------------------------------------------------- IoU
def bev_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact rotated BEV IoU of every box in a (N, 7) with every box in b (M, 7) -> (N, M), dtype of a."""
    i, j, iou = _sparse_iou(a, b, three_d=False)
    return _dense(i, j, iou, a.shape[0], b.shape[0], a)


def bev_iou_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact rotated BEV IoU of a[i] with b[i], (N, 7) x (N, 7) -> (N,), dtype of a."""
    inter = bev_intersection_aligned(a, b)
    iou = _safe_ratio(inter, _bev_area(a) + _bev_area(b) - inter)
    return iou.to(a.dtype if a.is_floating_point() else torch.float32)


def iou_3d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """3D IoU (BEV intersection x z-overlap / union volume) of all pairs, (N, 7) x (M, 7) -> (N, M)."""
    i, j, iou = _sparse_iou(a, b, three_d=True)
    return _dense(i, j, iou, a.shape[0], b.shape[0], a)


def iou_3d_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """3D IoU of a[i] with b[i], (N, 7) x (N, 7) -> (N,)."""
    inter = bev_intersection_aligned(a, b) * _z_overlap(a, b)
    iou = _safe_ratio(inter, _volume(a) + _volume(b) - inter)
    return iou.to(a.dtype if a.is_floating_point() else torch.float32)


# --------------------------------------------------------------------------- NMS
def _greedy_suppress(n: int, i: torch.Tensor, j: torch.Tensor, post_max_size: int | None) -> list[int]:
    """Greedy pass over candidates 0..n-1 (already in score order) given directed 'i suppresses j' pairs."""
    i_np, j_np = i.cpu().numpy(), j.cpu().numpy()
    keep_mask = i_np < j_np  # a box only suppresses lower-scored ones
    i_np, j_np = i_np[keep_mask], j_np[keep_mask]
    order = i_np.argsort(kind="stable")
    i_np, j_np = i_np[order], j_np[order]
    starts = torch.from_numpy(i_np).bincount(minlength=n).cumsum(0).numpy()
    removed = [False] * n
    kept: list[int] = []
    begin = 0
    for box in range(n):
        end = int(starts[box])
        if not removed[box]:
            kept.append(box)
            if post_max_size is not None and len(kept) >= post_max_size:
                break
            for other in j_np[begin:end].tolist():
                removed[other] = True
        begin = end
    return kept


def nms_bev(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, pre_max_size: int | None = None,
            post_max_size: int | None = None) -> torch.Tensor:
    """Greedy rotated-BEV NMS: keep the best-scored box, drop others with IoU > iou_threshold, repeat.

    Returns kept indices into boxes (LongTensor on boxes' device), by descending score.
    """
    order = scores.argsort(descending=True, stable=True)
    if pre_max_size is not None:
        order = order[:pre_max_size]
    candidates = boxes[order]
    i, j, iou = _sparse_iou(candidates, candidates, three_d=False)
    over = iou > iou_threshold
    kept = _greedy_suppress(order.numel(), i[over], j[over], post_max_size)
    return order[torch.tensor(kept, dtype=torch.long, device=order.device)]


def circle_nms(boxes: torch.Tensor, scores: torch.Tensor, min_distance: float,
               post_max_size: int | None = None) -> torch.Tensor:
    """Greedy NMS on BEV centre distance: a box is dropped if a better one lies closer than min_distance."""
    order = scores.argsort(descending=True, stable=True)
    centres = boxes[order, :2].to(torch.float64)
    n = order.numel()
    rows_i, rows_j = [], []
    step = max(1, _PREFILTER_CHUNK // max(n, 1))
    for start in range(0, n, step):
        dist = (centres[start:start + step, None, :] - centres[None, :, :]).norm(dim=-1)
        i, j = torch.nonzero(dist < min_distance, as_tuple=True)
        rows_i.append(i + start)
        rows_j.append(j)
    if n == 0:
        return order
    kept = _greedy_suppress(n, torch.cat(rows_i), torch.cat(rows_j), post_max_size)
    return order[torch.tensor(kept, dtype=torch.long, device=order.device)]


# --------------------------------------------------------------------------- box coding
def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Residuals of boxes w.r.t. anchors, (N, 7) x (N, 7) -> (N, 7):
    (dx, dy) / anchor BEV diagonal, dz / anchor height, log size ratios, yaw difference."""
    xa, ya, za, la, wa, ha, ra = anchors.unbind(-1)
    x, y, z, l, w, h, r = boxes.unbind(-1)
    diagonal = torch.sqrt(la ** 2 + wa ** 2)
    return torch.stack([(x - xa) / diagonal, (y - ya) / diagonal, (z - za) / ha,
                        torch.log(l / la), torch.log(w / wa), torch.log(h / ha), r - ra], dim=-1)


def decode_boxes(residuals: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Inverse of encode_boxes."""
    xa, ya, za, la, wa, ha, ra = anchors.unbind(-1)
    dx, dy, dz, dl, dw, dh, dr = residuals.unbind(-1)
    diagonal = torch.sqrt(la ** 2 + wa ** 2)
    return torch.stack([dx * diagonal + xa, dy * diagonal + ya, dz * ha + za,
                        torch.exp(dl) * la, torch.exp(dw) * wa, torch.exp(dh) * ha, dr + ra], dim=-1)


# --------------------------------------------------------------------------- points
def points_in_boxes(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(P, >=3) points x (M, 7) boxes -> (P, M) bool, True where the point lies in the box (boundary included)."""
    p, m = points.shape[0], boxes.shape[0]
    out = torch.zeros(p, m, dtype=torch.bool, device=points.device)
    if p == 0 or m == 0:
        return out
    cos, sin = torch.cos(boxes[:, 6]), torch.sin(boxes[:, 6])
    step = max(1, _PREFILTER_CHUNK // m)
    for start in range(0, p, step):
        pts = points[start:start + step, :3].to(boxes.dtype)
        rel = pts[:, None, :] - boxes[None, :, :3]  # (p, M, 3)
        along = rel[..., 0] * cos + rel[..., 1] * sin
        across = -rel[..., 0] * sin + rel[..., 1] * cos
        out[start:start + step] = ((along.abs() <= boxes[:, 3] / 2) & (across.abs() <= boxes[:, 4] / 2)
                                   & (rel[..., 2].abs() <= boxes[:, 5] / 2))
    return out
