"""Collectives that autograd can differentiate through, for losses computed across DDP processes.

Plain ``torch.distributed`` (any backend: gloo on CPU, NCCL on GPUs), no Lightning. Every process
of the default group must call these in the same order, as with any collective.

Kept by hand: torch 2.13 deprecates the differentiable `torch.distributed.nn.functional`
all_gather/all_reduce (FutureWarning) for the private `torch.distributed._functional_collectives`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_rows", "all_reduce_sum", "is_distributed"]


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllGather(torch.autograd.Function):
    """Every process's tensor (all the same shape), concatenated along dim 0 in rank order.

    Backward: the gradient of this process's block is the sum, over all processes, of the
    gradients their losses sent to that block (all-reduce, then this process's slice).
    """

    @staticmethod
    def forward(ctx, local: Tensor) -> Tensor:
        blocks = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(blocks, local.contiguous())
        ctx.rows = local.shape[0]
        return torch.cat(blocks)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()  # all_reduce works in place on its own copy
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


class _AllReduceSum(torch.autograd.Function):
    """The sum over processes; its gradient is again summed over processes."""

    @staticmethod
    def forward(ctx, local: Tensor) -> Tensor:
        total = local.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_gather_rows(*tensors: Tensor) -> tuple[list[Tensor], int]:
    """Each tensor's rows (dim 0) from every process, in rank order, and where this process's start.

    Processes may hold different numbers of rows (the last batch of an epoch): every block is
    padded with zeros to the longest, so row ``offset + i`` of a result is this process's row
    ``i`` and zero rows stand for the padding. The tensors must have the same number of rows.
    Gradients flow back to each process's own rows (see `_AllGather`).
    """
    rows, device = tensors[0].shape[0], tensors[0].device
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([rows], device=device))
    longest = int(torch.cat(sizes).max())  # the one host sync: padding needs a Python int
    padded = [torch.cat([t, t.new_zeros((longest - rows, *t.shape[1:]))]) for t in tensors]
    return [_AllGather.apply(t) for t in padded], dist.get_rank() * longest


def all_reduce_sum(local: Tensor) -> Tensor:
    """The sum of ``local`` over all processes; differentiable (see `_AllReduceSum`)."""
    return _AllReduceSum.apply(local)
