"""Box geometry on torch tensors (CPU and CUDA): rotated IoU, NMS, box coding, point-in-box.

Box convention (LiDAR frame): (x, y, z centre, l, w, h, yaw), yaw about +z, yaw 0 puts l along +x.

Rotated overlap is exact: the area of the intersection of two rectangles is the boundary integral (Green's
theorem, shoelace terms) over the parts of each rectangle's edges that lie inside the other one; each part is a
single segment found by Liang-Barsky clipping. No vertex sorting is needed, and boundary shared by both boxes is
counted once (same direction) or cancels (opposite direction). All polygon work runs in float64 (identical,
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
# Tolerances of the polygon code: an edge within _PARALLEL_SIN (sine of the angle) of a side of the other box
# is parallel to it, and lies on it when within _ON_EDGE_EPS metres.
_ON_EDGE_EPS = 1e-9
_PARALLEL_SIN = 1e-10


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


# Corner signs (along l, along w), counter-clockwise; edge k runs from corner k to corner k+1.
_CORNER_SIGNS = ((1.0, -1.0), (1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0))


def _edge_inside_interval(start: torch.Tensor, edge: torch.Tensor, half: torch.Tensor):
    """Parameter interval [t0, t1] of segments start + t * edge (t in [0, 1]) inside the axis-aligned rectangle
    |x| <= half_x, |y| <= half_y (Liang-Barsky). start, edge (P, 4, 2); half (P, 2).

    Crossings are computed exactly; only an edge parallel to a side (within _PARALLEL_SIN) is judged as a whole,
    with tolerance _ON_EDGE_EPS, so that edges lying on the other box's boundary are kept. A tolerance on the
    crossings themselves would move them by tolerance / sin(angle), which is large for nearly parallel edges."""
    length = edge.norm(dim=-1)
    t0 = torch.zeros_like(length)
    t1 = torch.ones_like(length)
    for axis in (0, 1):
        p, e = start[..., axis], edge[..., axis]
        limit = half[:, axis:axis + 1]
        parallel = e.abs() <= _PARALLEL_SIN * length  # zero-length edges too
        safe = torch.where(parallel, torch.ones_like(e), e)
        ta, tb = (-limit - p) / safe, (limit - p) / safe
        inside = p.abs() <= limit + _ON_EDGE_EPS
        lo = torch.where(parallel, torch.where(inside, -math.inf, math.inf), torch.minimum(ta, tb))
        hi = torch.where(parallel, torch.where(inside, math.inf, -math.inf), torch.maximum(ta, tb))
        t0, t1 = torch.maximum(t0, lo), torch.minimum(t1, hi)
    return t0, t1


def _on_same_direction_edge(start: torch.Tensor, edge: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """(P, 4) True where an edge runs along an edge of the axis-aligned rectangle `half`, in the same direction
    (counter-clockwise rectangle: +y on x = +hx, -x on y = +hy, -y on x = -hx, +x on y = -hy)."""
    length = edge.norm(dim=-1)
    along_x = edge[..., 1].abs() <= _PARALLEL_SIN * length
    along_y = edge[..., 0].abs() <= _PARALLEL_SIN * length
    hx, hy = half[:, 0:1], half[:, 1:2]
    px, py = start[..., 0], start[..., 1]
    return (length > 0) & (
        (along_y & (edge[..., 1] > 0) & ((px - hx).abs() <= _ON_EDGE_EPS))
        | (along_x & (edge[..., 0] < 0) & ((py - hy).abs() <= _ON_EDGE_EPS))
        | (along_y & (edge[..., 1] < 0) & ((px + hx).abs() <= _ON_EDGE_EPS))
        | (along_x & (edge[..., 0] > 0) & ((py + hy).abs() <= _ON_EDGE_EPS)))


def _boundary_integral(start_own: torch.Tensor, edge_own: torch.Tensor, start_other: torch.Tensor,
                       edge_other: torch.Tensor, half_other: torch.Tensor) -> torch.Tensor:
    """Sum over a rectangle's edges of the shoelace term of the edge part inside the other rectangle.

    The edges are given twice: in the frame the result is accumulated in (own) and in the other box's frame,
    where the other box is axis-aligned (clipping)."""
    t0, t1 = _edge_inside_interval(start_other, edge_other, half_other)
    p0 = start_own + t0[..., None] * edge_own
    p1 = start_own + t1[..., None] * edge_own
    term = 0.5 * _cross(p0, p1)
    # Boundary shared by both boxes, same direction: each box contributes half of it (opposite directions cancel).
    weight = torch.where(_on_same_direction_edge(start_other, edge_other, half_other), 0.5, 1.0)
    return torch.where(t1 > t0, term * weight, torch.zeros_like(term)).sum(-1)


def _intersection_area_chunk(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact BEV intersection areas of paired float64 boxes a[i], b[i] (P, 7) -> (P,).

    Green's theorem: the area of the intersection is the boundary integral over the parts of each box's edges
    that lie inside the other box; each part is one segment (the boxes are convex), found by Liang-Barsky
    clipping in the other box's own frame. Everything is expressed relative to box a's centre and axes."""
    signs = torch.tensor(_CORNER_SIGNS, dtype=a.dtype, device=a.device)
    half_a = a[:, 3:5].abs() / 2
    half_b = b[:, 3:5].abs() / 2
    cos_a, sin_a = torch.cos(a[:, 6:7]), torch.sin(a[:, 6:7])
    dx, dy = b[:, 0:1] - a[:, 0:1], b[:, 1:2] - a[:, 1:2]
    bx, by = dx * cos_a + dy * sin_a, -dx * sin_a + dy * cos_a  # b's centre in a's frame
    turn = b[:, 6:7] - a[:, 6:7]
    cos_d, sin_d = torch.cos(turn), torch.sin(turn)

    corners_a = signs * half_a[:, None, :]  # a's corners in a's frame (P, 4, 2)
    local_b = signs * half_b[:, None, :]  # b's corners in b's frame
    corners_b = torch.stack([local_b[..., 0] * cos_d - local_b[..., 1] * sin_d + bx,
                             local_b[..., 0] * sin_d + local_b[..., 1] * cos_d + by], -1)  # in a's frame
    rel = corners_a - torch.stack([bx, by], -1)
    corners_a_in_b = torch.stack([rel[..., 0] * cos_d + rel[..., 1] * sin_d,
                                  -rel[..., 0] * sin_d + rel[..., 1] * cos_d], -1)

    def edges(c: torch.Tensor) -> torch.Tensor:
        return torch.roll(c, -1, dims=1) - c

    area = (_boundary_integral(corners_a, edges(corners_a), corners_a_in_b, edges(corners_a_in_b), half_b)
            + _boundary_integral(corners_b, edges(corners_b), corners_b, edges(corners_b), half_a))
    return area.clamp(min=0)


def bev_intersection_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact BEV intersection area of a[i] and b[i], (N, 7) x (N, 7) -> (N,) float64."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    out = torch.zeros(a.shape[0], dtype=torch.float64, device=a.device)
    if a.shape[0] == 0:
        return out
    # Only pairs whose axis-aligned bounding rectangles meet can overlap.
    reach = _half_extents(a64) + _half_extents(b64) + 1e-6
    near = ((a64[:, :2] - b64[:, :2]).abs() <= reach).all(dim=1)
    idx = torch.nonzero(near).squeeze(1)
    for start in range(0, idx.numel(), _PAIR_CHUNK):
        sel = idx[start:start + _PAIR_CHUNK]
        out[sel] = _intersection_area_chunk(a64[sel], b64[sel])
    return out


def _half_extents(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 2) half sizes of the axis-aligned bounding rectangles of BEV boxes."""
    cos, sin = torch.cos(boxes[:, 6]).abs(), torch.sin(boxes[:, 6]).abs()
    half_l, half_w = boxes[:, 3].abs() / 2, boxes[:, 4].abs() / 2
    return torch.stack([half_l * cos + half_w * sin, half_l * sin + half_w * cos], dim=1)


def _candidate_pairs(a: torch.Tensor, b: torch.Tensor, upper_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) whose axis-aligned BEV bounding rectangles meet (a necessary condition for overlap).

    b is sorted by x; each box of a scans only the window of b that its x-extent can reach, in row chunks of
    bounded size, so that sparse scenes never build an N x M matrix. upper_only keeps i < j (self-pairs of NMS).
    """
    empty = torch.zeros(0, dtype=torch.long, device=a.device)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return empty, empty
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    ext_a, ext_b = _half_extents(a64), _half_extents(b64)
    margin = 1e-6  # admits touching boxes; the exact code decides
    order = torch.argsort(b64[:, 0])
    b_x = b64[order, 0].contiguous()
    reach = ext_a[:, 0] + ext_b[:, 0].max() + margin
    low = torch.searchsorted(b_x, (a64[:, 0] - reach).contiguous())
    high = torch.searchsorted(b_x, (a64[:, 0] + reach).contiguous(), right=True)
    counts = high - low
    ends = counts.cumsum(0)
    rows_i, rows_j = [], []
    start = 0
    n = a.shape[0]
    while start < n:
        # rows [start, stop) hold at most _PREFILTER_CHUNK window entries (at least one row)
        base = ends[start - 1] if start > 0 else ends.new_zeros(())
        stop = int(torch.searchsorted(ends, base + _PREFILTER_CHUNK, right=True))
        stop = min(max(stop, start + 1), n)
        rows = torch.arange(start, stop, device=a.device)
        rows = torch.repeat_interleave(rows, counts[start:stop])
        offset = torch.arange(rows.numel(), device=a.device) - (ends[rows] - counts[rows] - base)
        cols = order[low[rows] + offset]
        near = (((a64[rows, 0] - b64[cols, 0]).abs() <= ext_a[rows, 0] + ext_b[cols, 0] + margin)
                & ((a64[rows, 1] - b64[cols, 1]).abs() <= ext_a[rows, 1] + ext_b[cols, 1] + margin))
        if upper_only:
            near &= rows < cols
        rows_i.append(rows[near])
        rows_j.append(cols[near])
        start = stop
    i, j = torch.cat(rows_i), torch.cat(rows_j)
    sort = torch.argsort(i * b.shape[0] + j)  # deterministic (i, j) order
    return i[sort], j[sort]


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


def _sparse_iou(a: torch.Tensor, b: torch.Tensor, three_d: bool,
                upper_only: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i, j, iou float64) for all pairs that can overlap; pairs not listed have IoU 0."""
    i, j = _candidate_pairs(a, b, upper_only)
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


def nearest_bev_rectangles(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 7) -> (N, 4) float64 [x_min, y_min, x_max, y_max] of each box turned to its nearest axis-aligned
    rectangle: l lies along x when the yaw, folded by half-turns into [-pi/2, pi/2), is within pi/4 of 0, along y
    otherwise (the anchor-matching convention of the reference detectors)."""
    b = boxes.to(torch.float64)
    along_y = limit_period(b[:, 6], 0.5, math.pi).abs() >= math.pi / 4
    size_x = torch.where(along_y, b[:, 4], b[:, 3]).abs()
    size_y = torch.where(along_y, b[:, 3], b[:, 4]).abs()
    return torch.stack([b[:, 0] - size_x / 2, b[:, 1] - size_y / 2, b[:, 0] + size_x / 2, b[:, 1] + size_y / 2], 1)


def nearest_bev_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Nearest axis-aligned BEV IoU of every box in a (N, 7) with every box in b (M, 7) -> (N, M), dtype of a:
    the plain rectangle IoU of nearest_bev_rectangles(a) and nearest_bev_rectangles(b). Cheaper than bev_iou and
    blind to yaw within +-pi/4; the reference detectors match anchors with it."""
    ra, rb = nearest_bev_rectangles(a), nearest_bev_rectangles(b)
    overlap_x = (torch.minimum(ra[:, None, 2], rb[None, :, 2]) - torch.maximum(ra[:, None, 0], rb[None, :, 0]))
    overlap_y = (torch.minimum(ra[:, None, 3], rb[None, :, 3]) - torch.maximum(ra[:, None, 1], rb[None, :, 1]))
    inter = overlap_x.clamp(min=0) * overlap_y.clamp(min=0)
    area_a = (ra[:, 2] - ra[:, 0]) * (ra[:, 3] - ra[:, 1])
    area_b = (rb[:, 2] - rb[:, 0]) * (rb[:, 3] - rb[:, 1])
    iou = _safe_ratio(inter, area_a[:, None] + area_b[None, :] - inter)
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
    i, j, iou = _sparse_iou(candidates, candidates, three_d=False, upper_only=True)
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
