"""Box geometry: exact rotated IoU against hand values and a slow polygon-clipping reference, NMS, coding."""
import math
import random

import pytest
import torch

from clean_ros.cloud import geometry as G


def box(x=0.0, y=0.0, z=0.0, l=1.0, w=1.0, h=1.0, yaw=0.0):
    return [x, y, z, l, w, h, yaw]


def T(*boxes):
    return torch.tensor(boxes, dtype=torch.float32)


# --------------------------------------------------------------------------- slow reference (plain Python)
def _corners(b):
    x, y, _, l, w, _, r = b
    c, s = math.cos(r), math.sin(r)
    return [(x + c * px - s * py, y + s * px + c * py) for px, py in ((l / 2, -w / 2), (l / 2, w / 2), (-l / 2, w / 2), (-l / 2, -w / 2))]


def _clip(subject, a, b):
    """Keep the part of polygon subject left of the directed line a->b (Sutherland-Hodgman step)."""
    def side(p):
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

    out = []
    for k in range(len(subject)):
        p, q = subject[k], subject[(k + 1) % len(subject)]
        sp, sq = side(p), side(q)
        if sp >= 0:
            out.append(p)
        if (sp >= 0) != (sq >= 0):
            t = sp / (sp - sq)
            out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return out


def _area(poly):
    return 0.5 * sum(poly[k][0] * poly[(k + 1) % len(poly)][1] - poly[(k + 1) % len(poly)][0] * poly[k][1]
                     for k in range(len(poly))) if len(poly) >= 3 else 0.0


def slow_bev_iou(a, b):
    poly = _corners(a)
    cb = _corners(b)
    for k in range(4):
        poly = _clip(poly, cb[k], cb[(k + 1) % 4])
        if not poly:
            break
    inter = _area(poly)
    return inter / (a[3] * a[4] + b[3] * b[4] - inter)


# --------------------------------------------------------------------------- hand values
def test_identical_boxes_iou_is_one():
    boxes = T(box(), box(3.0, -2.0, 1.0, 4.2, 1.7, 1.5, 0.3), box(10, 10, 0, 0.8, 0.6, 1.7, -2.9), box(yaw=math.pi / 4))
    assert torch.allclose(G.bev_iou_aligned(boxes, boxes.clone()), torch.ones(4), atol=1e-6)
    assert torch.allclose(G.iou_3d_aligned(boxes, boxes.clone()), torch.ones(4), atol=1e-6)
    assert torch.allclose(G.bev_iou(boxes, boxes).diagonal(), torch.ones(4), atol=1e-6)


def test_disjoint_and_touching_boxes():
    a = T(box(), box())
    b = T(box(x=5.0), box(x=1.0))  # far apart; sharing one edge
    assert G.bev_iou_aligned(a, b).tolist() == pytest.approx([0.0, 0.0], abs=1e-9)
    # touching at a single corner, and a 45-deg square touching a square's edge with its tip
    corner = G.bev_iou_aligned(T(box(), box()), T(box(x=1.0, y=1.0), box(x=0.5 + math.sqrt(0.5), yaw=math.pi / 4)))
    assert corner.tolist() == pytest.approx([0.0, 0.0], abs=1e-9)


def test_square_vs_rotated_square():
    # Unit square vs itself turned 45 deg: a regular octagon, square minus 4 corner triangles with legs 1 - sqrt(2)/2,
    # area 1 - 2 (1 - sqrt(2)/2)^2 = 2 (sqrt(2) - 1); IoU = 2 (sqrt(2) - 1) / (2 - 2 (sqrt(2) - 1)) = 1 / sqrt(2).
    inter = G.bev_intersection_aligned(T(box()), T(box(yaw=math.pi / 4)))
    assert inter.item() == pytest.approx(2 * (math.sqrt(2) - 1), abs=1e-9)
    assert G.bev_iou(T(box()), T(box(yaw=math.pi / 4))).item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)


def test_nested_and_half_overlapping():
    assert G.bev_iou_aligned(T(box(l=4, w=2, yaw=0.7)), T(box(l=1, w=1, yaw=-0.2))).item() == pytest.approx(1 / 8, abs=1e-6)
    # 2 x 1 boxes shifted by 1 along their length: intersection 1, union 3.
    assert G.bev_iou_aligned(T(box(l=2)), T(box(x=1, l=2))).item() == pytest.approx(1 / 3, abs=1e-6)
    # the same rotated by 30 deg (shift along the rotated length axis)
    r = math.radians(30)
    assert G.bev_iou_aligned(T(box(l=2, yaw=r)), T(box(x=math.cos(r), y=math.sin(r), l=2, yaw=r))).item() == \
        pytest.approx(1 / 3, abs=1e-6)


def test_degenerate_boxes_give_zero_not_nan():
    a = T(box(l=0.0, w=0.0), box(l=0.0, w=1.0), box(l=0, w=0, h=0))
    b = T(box(), box(), box(l=0, w=0, h=0))
    # (boundary tolerance is 1e-11 m, so a zero-width box may register ~1e-11 of area, never more)
    assert G.bev_iou_aligned(a, b).tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert G.iou_3d_aligned(a, b).tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert not torch.isnan(G.bev_iou(a, b)).any()


def test_iou_3d_with_z_offsets():
    a = T(box(h=2.0), box(h=2.0), box(h=2.0, l=2))
    b = T(box(z=1.0, h=2.0), box(z=3.0, h=2.0), box(z=0.5, h=1.0, x=1, l=2))
    # identical footprint, half the height shared: 1 / (2 + 2 - 1); touching in z: 0;
    # footprint inter 1 (of 2 and 2), z overlap 1 (b inside a's extent): inter 1, union 4 + 2 - 1 = 5
    assert G.iou_3d_aligned(a, b).tolist() == pytest.approx([1 / 3, 0.0, 1 / 5], abs=1e-6)
    assert G.iou_3d(a, b).diagonal().tolist() == pytest.approx([1 / 3, 0.0, 1 / 5], abs=1e-6)


def test_nearest_bev_iou_turns_boxes_to_the_nearest_axis_aligned_rectangle():
    car = box(l=4.0, w=2.0)
    turned = [box(l=4.0, w=2.0, yaw=y) for y in (0.3, -0.7, 3.0, math.pi + 0.7)]  # |yaw mod pi| < pi/4: l along x
    across = [box(l=4.0, w=2.0, yaw=y) for y in (1.2, -1.5, math.pi / 2, 2.0)]  # otherwise l along y
    iou = G.nearest_bev_iou(T(car), T(*turned, *across))
    assert iou[0].tolist() == pytest.approx([1.0] * 4 + [1.0 / 3.0] * 4, abs=1e-6)  # across: 2 x 2 / (8 + 8 - 4)
    assert G.bev_iou(T(car), T(turned[0])).item() < 0.8  # the exact IoU does see the 0.3 rad turn
    assert G.nearest_bev_rectangles(T(across[0]))[0].tolist() == pytest.approx([-1.0, -2.0, 1.0, 2.0], abs=1e-9)
    # shifted along x by 1 m: overlap 3 x 2 of 8 + 8 - 6; disjoint; an empty side
    shifted = G.nearest_bev_iou(T(car), T(box(x=1.0, l=4.0, w=2.0, yaw=0.2), box(x=9.0, l=4.0, w=2.0)))
    assert shifted[0].tolist() == pytest.approx([0.6, 0.0], abs=1e-6)
    assert G.nearest_bev_iou(torch.zeros(0, 7), T(car)).shape == (0, 1)
    # axis-aligned boxes (yaw 0 / pi/2, as anchors are): equal to the exact rotated IoU
    rng = random.Random(1)
    aligned = T(*[box(rng.uniform(-3, 3), rng.uniform(-3, 3), 0, rng.uniform(0.5, 4), rng.uniform(0.5, 2), 1,
                      rng.choice([0.0, math.pi / 2, math.pi, -math.pi / 2])) for _ in range(40)])
    exact = G.bev_iou(aligned, aligned)
    assert (exact > 0).sum() > 60 and torch.allclose(G.nearest_bev_iou(aligned, aligned), exact, atol=1e-5)


def test_bev_iou_matches_slow_reference_on_random_pairs():
    rng = random.Random(0)
    pairs = []
    for _ in range(400):
        a = box(rng.uniform(-2, 2), rng.uniform(-2, 2), 0, rng.uniform(0.3, 5), rng.uniform(0.3, 3), 1, rng.uniform(-4, 4))
        b = box(a[0] + rng.uniform(-2, 2), a[1] + rng.uniform(-2, 2), 0, rng.uniform(0.3, 5), rng.uniform(0.3, 3), 1,
                rng.uniform(-4, 4))
        if rng.random() < 0.1:  # exact or nearly exact copies, and axis-aligned copies shifted along an edge
            b = list(a)
            b[6] += rng.choice([0.0, math.pi, 1e-9])
        pairs.append((a, b))
    a = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    b = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    expected = torch.tensor([slow_bev_iou(*p) for p in pairs], dtype=torch.float64)
    assert (expected > 0).sum() > 200  # the test exercises real overlaps
    assert torch.allclose(G.bev_iou_aligned(a, b), expected, atol=1e-5)
    dense = G.bev_iou(a[:100], b[:100])  # all 100 x 100 pairs; the diagonal must match
    assert torch.allclose(dense.diagonal(), expected[:100], atol=1e-5)
    # a few off-diagonal entries against the reference too
    for i, j in [(0, 5), (17, 3), (60, 61), (99, 98)]:
        assert dense[i, j].item() == pytest.approx(slow_bev_iou(pairs[i][0], pairs[j][1]), abs=1e-5)


def test_bev_iou_large_sparse_problem_matches_dense_reference():
    g = torch.Generator().manual_seed(1)
    n = 1200
    boxes = torch.cat([torch.rand(n, 2, generator=g) * 60, torch.zeros(n, 1), 1 + 3 * torch.rand(n, 3, generator=g),
                       torch.rand(n, 1, generator=g) * 6], 1)
    iou = G.bev_iou(boxes, boxes)
    assert iou.shape == (n, n)
    assert torch.allclose(iou.diagonal(), torch.ones(n), atol=1e-6)
    assert torch.equal(iou, iou.T) or torch.allclose(iou, iou.T, atol=1e-6)
    i, j = torch.nonzero((iou > 0) & ~torch.eye(n, dtype=torch.bool), as_tuple=True)
    assert len(i) > 100
    for k in range(0, len(i), max(1, len(i) // 20)):
        assert iou[i[k], j[k]].item() == pytest.approx(slow_bev_iou(boxes[i[k]].tolist(), boxes[j[k]].tolist()), abs=1e-5)


# --------------------------------------------------------------------------- NMS
def test_nms_greedy_semantics():
    boxes = T(box(l=2), box(x=0.5, l=2), box(x=1.0, l=2), box(x=20), box(x=20.1, yaw=0.05))
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95])
    # IoU(A,B) = 1.5 / 2.5 = 0.6 > 0.5 -> B dropped; IoU(A,C) = 1/3 -> C kept although IoU(B,C) = 0.6 (B is gone);
    # E (0.95) beats D which it covers almost entirely.
    assert G.nms_bev(boxes, scores, 0.5).tolist() == [4, 0, 2]
    assert G.nms_bev(boxes, scores, 0.5, post_max_size=2).tolist() == [4, 0]
    assert G.nms_bev(boxes, scores, 0.5, pre_max_size=3).tolist() == [4, 0]  # top-3: E, A, B
    assert G.nms_bev(boxes, scores, 0.7).tolist() == [4, 0, 1, 2]
    assert G.nms_bev(boxes[:0], scores[:0], 0.5).tolist() == []


def test_circle_nms():
    boxes = T(box(), box(x=0.5), box(x=1.5), box(x=1.9))
    scores = torch.tensor([0.5, 0.9, 0.8, 0.1])
    # B(0.9) drops A (0.5 m); C (1.0 m from B) stays and drops D (0.4 m).
    assert G.circle_nms(boxes, scores, min_distance=0.8).tolist() == [1, 2]
    assert G.circle_nms(boxes, scores, min_distance=0.8, post_max_size=1).tolist() == [1]


# --------------------------------------------------------------------------- coding, angles, points
def test_encode_decode_round_trip_and_values():
    anchors = T(box(1, 2, -1, 3.9, 1.6, 1.56, 0.0), box(0, 0, 0, 0.8, 0.6, 1.73, math.pi / 2))
    boxes = T(box(2, 2, -0.5, 4.2, 1.7, 1.5, 0.3), box(-0.5, 1.0, 0.2, 0.9, 0.5, 1.8, 1.2))
    res = G.encode_boxes(boxes, anchors)
    diag = math.sqrt(3.9 ** 2 + 1.6 ** 2)
    assert res[0].tolist() == pytest.approx([1 / diag, 0, 0.5 / 1.56, math.log(4.2 / 3.9), math.log(1.7 / 1.6),
                                             math.log(1.5 / 1.56), 0.3], rel=1e-5)
    assert torch.allclose(G.decode_boxes(res, anchors), boxes, atol=1e-5)


def test_limit_period_and_normalize_yaw():
    yaw = torch.tensor([0.0, math.pi, -math.pi, 3 * math.pi / 2, -7.0, 2 * math.pi])
    out = G.normalize_yaw(yaw)
    assert (out >= -math.pi).all() and (out < math.pi).all()
    assert out.tolist() == pytest.approx([0.0, -math.pi, -math.pi, -math.pi / 2, -7.0 + 2 * math.pi, 0.0], abs=1e-6)
    assert G.limit_period(torch.tensor([4.0]), offset=0.0, period=math.pi).item() == pytest.approx(4.0 - math.pi)


def test_corners():
    c = G.boxes_to_corners_bev(T(box(1, 2, 0, 4, 2, 1, math.pi / 2)))
    assert c[0].flatten().tolist() == pytest.approx([2, 4, 0, 4, 0, 0, 2, 0], abs=1e-6)
    c3 = G.boxes_to_corners_3d(T(box(0, 0, 1, 2, 2, 2)))
    assert c3.shape == (1, 8, 3)
    assert c3[0, :4, 2].tolist() == [0, 0, 0, 0] and c3[0, 4:, 2].tolist() == [2, 2, 2, 2]


def test_points_in_rotated_box():
    b = T(box(10, 0, 0, 4, 1, 2, math.pi / 4))
    s = math.sqrt(0.5)
    pts = torch.tensor([[10, 0, 0], [10 + 1.9 * s, 1.9 * s, 0.9], [10 + 1.9 * s, 1.9 * s, 1.1],  # centre, near tip, above
                        [10 + 0.6 * s, -0.6 * s, 0], [10 + 0.4 * s, -0.4 * s, 0],  # beyond / within the half width
                        [11.9, 0, 0]])  # inside the axis-aligned extent only
    assert G.points_in_boxes(pts, b)[:, 0].tolist() == [True, True, False, False, True, False]
