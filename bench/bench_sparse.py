"""Time a SECOND-like sparse 3D backbone (stride 8) on one real KITTI frame, CPU:
clean_ros.models.sparse (torch gather-mm-scatter path) vs raw spconv 2.3.8 CPU kernels.

Raw spconv is timed with 1 thread only (it races with more, and has no CPU backward).
Usage: .venv/bin/python bench/bench_sparse.py [--frame PATH] [--repeats N]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import spconv.pytorch as raw_spconv  # noqa: E402
from clean_ros.models import sparse as sp  # noqa: E402

POINT_CLOUD_RANGE = (0.0, -40.0, -3.0, 70.4, 40.0, 1.0)
VOXEL_SIZE = (0.05, 0.05, 0.1)
DEFAULT_FRAME = REPO.parent / "shared/data/kitti_sample/training/velodyne/000000.bin"


def voxel_input(frame: Path, max_voxels: int = 40000):
    """(features (V, 4) = mean of the voxel's points, coords (V, 4) [0, z, y, x], spatial shape [nz+1, ny, nx])."""
    points = torch.from_numpy(np.fromfile(frame, dtype=np.float32).reshape(-1, 4))
    from clean_ros.inference.voxelize import grid_size, voxelize
    voxels = voxelize(points, POINT_CLOUD_RANGE, VOXEL_SIZE, max_points_per_voxel=5, max_voxels=max_voxels)
    nx, ny, nz = grid_size(POINT_CLOUD_RANGE, VOXEL_SIZE)
    mean = voxels.features[..., :4].sum(1) / voxels.num_points.clamp(min=1)[:, None].float()
    return mean, voxels.coords, [nz + 1, ny, nx]  # +1 in z: SECOND's usual padding so stride 8 leaves 2 in z


def second_backbone(layers) -> nn.Module:
    """4 -> 16 -> 32 -> 64 -> 64 -> 128 channels, strides 1, 2, 4, 8 then a (3,1,1) z-reduction; BN + ReLU."""
    def block(conv):
        return layers.SparseSequential(conv, nn.BatchNorm1d(conv.out_channels, eps=1e-3, momentum=0.01), nn.ReLU())

    def subm(cin, cout, key):
        return block(layers.SubMConv3d(cin, cout, 3, padding=1, bias=False, indice_key=key))

    def down(cin, cout, padding, key):
        return block(layers.SparseConv3d(cin, cout, 3, stride=2, padding=padding, bias=False, indice_key=key))

    return layers.SparseSequential(
        subm(4, 16, "subm1"), subm(16, 16, "subm1"),
        down(16, 32, 1, "down2"), subm(32, 32, "subm2"), subm(32, 32, "subm2"),
        down(32, 64, 1, "down3"), subm(64, 64, "subm3"), subm(64, 64, "subm3"),
        down(64, 64, (0, 1, 1), "down4"), subm(64, 64, "subm4"), subm(64, 64, "subm4"),
        block(layers.SparseConv3d(64, 128, (3, 1, 1), stride=(2, 1, 1), padding=0, bias=False,
                                  indice_key="down_z")),
    )


def time_interleaved(cases: dict, repeats: int) -> dict:
    """Median and min ms per case. Cases run round-robin so that load from other users of a shared machine
    hits them alike; each case sets its own thread count."""
    for threads, fn in cases.values():
        torch.set_num_threads(threads)
        fn()  # warm-up (lazy init, allocator)
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (threads, fn) in cases.items():
            torch.set_num_threads(threads)
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame", type=Path, default=DEFAULT_FRAME)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-voxels", type=int, default=40000, help="KITTI SECOND caps: 16000 train, 40000 test")
    args = parser.parse_args()
    if not args.frame.is_file():
        sys.exit(f"bench_sparse: KITTI velodyne frame not found: {args.frame}")

    features, coords, shape = voxel_input(args.frame, args.max_voxels)
    print(f"frame {args.frame.name}: {coords.shape[0]} voxels, grid (z, y, x) = {shape}")

    torch.manual_seed(0)
    ours = second_backbone(sp).eval()
    raw = second_backbone(raw_spconv).eval()
    raw.load_state_dict(ours.state_dict())  # same parameter names and weight layout

    def make_input(requires_grad=False):
        return sp.sparse_tensor(features.clone().requires_grad_(requires_grad), coords, shape, 1)

    torch.set_num_threads(1)
    with torch.no_grad():
        ref = raw(make_input())
        got = ours(make_input())
    assert torch.equal(ref.indices, got.indices)
    print(f"output: {got.indices.shape[0]} voxels x {got.features.shape[1]} ch, grid {got.spatial_shape}; "
          f"max |ours - raw spconv (1 thread)| = {(got.features - ref.features).abs().max().item():.2e}")

    def forward(model):
        def run():
            with torch.no_grad():
                model(make_input())
        return run

    def forward_backward():
        ours.train()
        out = ours(make_input(requires_grad=True))
        out.features.square().mean().backward()
        ours.zero_grad()
        ours.eval()

    cases = {
        ("raw spconv CPU, forward", 1): (1, forward(raw)),
        ("clean_ros sparse, forward", 1): (1, forward(ours)),
        ("clean_ros sparse, forward+backward", 1): (1, forward_backward),
        ("clean_ros sparse, forward", 2): (2, forward(ours)),
        ("clean_ros sparse, forward+backward", 2): (2, forward_backward),
    }
    results = time_interleaved(cases, args.repeats)
    print(f"{'path':<38}{'threads':>8}{'median ms':>12}{'min ms':>10}")
    for (name, threads), (median, best) in results.items():
        print(f"{name:<38}{threads:>8}{median:>12.1f}{best:>10.1f}")
    print("raw spconv: no CPU backward (needs CUDA); with >1 thread its CPU forward is wrong, so not timed.")


if __name__ == "__main__":
    main()
