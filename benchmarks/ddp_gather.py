"""Wall time of the contrastive loss's cross-process gather, on CPU processes (gloo).

    python benchmarks/ddp_gather.py                  # 2 processes, the default model's shapes
    python benchmarks/ddp_gather.py --world 4 --batch-size 64

Each process times forward + backward of `SupConLoss` on its own batch (B, A, P), with
`gather=False` (its own batch only) and `gather=True` (all processes' batches), and of the
collectives alone (what `gather=True` adds besides the larger similarity matrix), taking turns so
that all three see the same machine load, and prints the medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from absa_lightning.collectives import all_gather_rows, all_reduce_sum
from absa_lightning.losses import SupConLoss


def _collectives_only(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The collectives of `SupConLoss(gather=True)`, around a trivial loss."""
    (cells, _), _ = all_gather_rows(embeddings.flatten(0, 1), labels.flatten())
    return all_reduce_sum(cells.sum().reshape(1)).sum()


def _step_ms(loss_fn: Callable, embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    dist.barrier()  # start together: otherwise a gather also times the other process's lag
    start = time.perf_counter()
    leaf = embeddings.detach().requires_grad_()
    loss_fn(leaf, labels).backward()
    return (time.perf_counter() - start) * 1e3


def _process(rank: int, args: argparse.Namespace, init_file: str) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=args.world
    )
    gen = torch.Generator().manual_seed(rank)
    embeddings = F.normalize(torch.randn(args.batch_size, args.aspects, args.dim, generator=gen))
    labels = torch.randint(0, 4, (args.batch_size, args.aspects), generator=gen)
    losses = {
        "local": SupConLoss(gather=False),
        "gathered": SupConLoss(gather=True),
        "collectives": _collectives_only,
    }
    times: dict[str, list[float]] = {name: [] for name in losses}
    for i in range(args.warmup + args.iters):
        for name, loss_fn in losses.items():
            ms = _step_ms(loss_fn, embeddings, labels)
            if i >= args.warmup:
                times[name].append(ms)
    if rank == 0:
        local, gathered, collectives = (statistics.median(times[k]) for k in losses)
        cells = args.batch_size * args.aspects
        print(
            f"{args.world} gloo processes x {args.threads} thread(s), batch {args.batch_size} x "
            f"{args.aspects} aspects x {args.dim} dims ({cells} cells each), "
            f"median of {args.iters}, forward + backward:"
        )
        print(f"  own batch only (gather=false): {local:8.3f} ms")
        print(f"  all processes (gather=true):   {gathered:8.3f} ms")
        print(f"  overhead of the gather:        {gathered - local:8.3f} ms")
        print(f"    of which the 6 collectives:  {collectives:8.3f} ms")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2, help="processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--batch-size", type=int, default=32, help="comments per process")
    parser.add_argument("--aspects", type=int, default=10)
    parser.add_argument("--dim", type=int, default=64, help="projection size (model=small: 64)")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = str(Path(tmp) / "init")
        mp.start_processes(_process, args=(args, init_file), nprocs=args.world, start_method="fork")


if __name__ == "__main__":
    main()
