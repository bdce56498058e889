"""Process-group plumbing for training: one process (default) or `torchrun` DDP (gloo on CPU, nccl on CUDA).

`torchrun --nproc_per_node=N` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; without them the
run is single-process and nothing is initialised. Only rank 0 logs and writes files.

Batch norm over the global batch: torch's SyncBatchNorm runs on CUDA only, so on CPU the batch-norm layers are
swapped for `GlobalBatchNorm`, which all-reduces the per-channel sums (differentiably) across processes. Then
N processes with batch b compute the same forward and gradient as one process with batch N * b.
"""
from __future__ import annotations

import datetime
import gc
import logging
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean over processes (a copy; no gradient)."""
        if not self.distributed:
            return value.detach().clone()
        out = value.detach().clone()
        dist.all_reduce(out)
        return out / self.world_size

    def shard(self, count: int) -> list[int]:
        """This process's share of `count` items: rank r takes r, r + W, ... (every item once over all ranks)."""
        return list(range(self.rank, count, self.world_size))

    def all_reduce_sum_(self, value: torch.Tensor) -> torch.Tensor:
        """In-place sum over processes (no gradient); returns `value`."""
        if self.distributed:
            dist.all_reduce(value)
        return value

    def all_gather_object(self, obj) -> list:
        """Every rank's value, in rank order (small picklable values between our own processes only)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """rank 0's value on every rank (small picklable values between our own processes only)."""
        if not self.distributed:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]


def init_distributed(device: str = "auto") -> DistContext:
    """Read torchrun's environment; initialise the process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=30))
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def cleanup_distributed() -> None:
    """Destroy the process group while the interpreter is fully alive. The garbage collection first frees what
    still holds gloo work (a DDP reducer in a reference cycle): freed later, at interpreter finalisation, such work
    can abort the process ("terminate called without an active exception", exit -6) after a run that succeeded."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """sys.exit(code); in a torchrun worker (WORLD_SIZE > 1), flush the logs and streams and leave with os._exit.

    After cleanup_distributed, gloo can still own threads whose destruction at interpreter finalisation aborts a rank
    ("terminate called without an active exception", exit -6) after a run that had written everything: torchrun then
    reports the run as failed. Seen twice in the full test suite, even after the reducer was freed first. A worker has
    closed its files by now (run folder, checkpoints, TensorBoard), so skipping finalisation loses nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of every input is the sum of the output gradients of all processes."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce (sum)."""
    return _AllReduceSum.apply(tensor)


def per_process_count(count: torch.Tensor) -> torch.Tensor:
    """A loss normaliser counted over the batch (positives, peaks, objects), made world-size invariant: under DDP the
    count over the GLOBAL batch divided by the number of processes. DDP averages the gradients of the processes, so
    sum_r(local_sum_r / (N / W)) / W = (sum of every process's terms) / N: N processes with batch b then train like
    one process with batch N * b. Without a process group it is `count` itself."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return count
    total = count.detach().to(torch.float64).clone()
    dist.all_reduce(total)
    return (total / dist.get_world_size()).to(count.dtype if count.is_floating_point() else torch.float32)


class GlobalBatchNorm(_BatchNorm):
    """Batch norm whose training statistics cover the batches of all processes (CPU-capable SyncBatchNorm).

    Per channel: all-reduce (count, sum) -> mean, then all-reduce sum of squared deviations -> biased variance
    (two passes: no cancellation). The all-reduces are differentiable, so gradients flow to every process's
    inputs as in one big batch. Running statistics use the unbiased global variance, as nn.BatchNorm does.
    Without an initialised process group it is exactly nn.BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        channels = input.shape[1]
        dims = [d for d in range(input.dim()) if d != 1]
        local_count = input.numel() // channels
        stats = torch.cat([input.sum(dim=dims), input.new_tensor([float(local_count)])])
        stats = all_reduce_sum(stats)
        count = stats[-1].detach()
        mean = stats[:channels] / count
        shape = [1, channels] + [1] * (input.dim() - 2)
        centred = input - mean.view(shape)
        var = all_reduce_sum((centred * centred).sum(dim=dims)) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach() * momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased * momentum)
        return out


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Batch norm over the global batch: torch SyncBatchNorm on CUDA, GlobalBatchNorm elsewhere (in place)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_to_global(module)


def _convert_to_global(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
        if module.track_running_stats:
            out.running_mean.copy_(module.running_mean)
            out.running_var.copy_(module.running_var)
            out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_to_global(child))
    return out


__all__ = ["DistContext", "init_distributed", "cleanup_distributed", "exit_process", "GlobalBatchNorm",
           "convert_batchnorm"]
