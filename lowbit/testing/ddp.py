"""A DistributedDataParallel check of simulated training (gloo on CPU).

``python -m lowbit.testing.ddp OUT.pt`` with the usual ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
and ``MASTER_PORT`` variables trains a small posit8-simulated CNN for a few SGD steps on this
rank's shard of a fixed global batch, and rank 0 writes the final parameters to OUT.pt.
`reference_parameters` computes the same run in one process: per-shard gradients averaged,
which is what DDP's all-reduce does. The test suite starts 2 processes and compares them.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

CONFIG = {"weight": "posit8_es2", "input": "posit8_es2", "grad": "posit8_es2"}
STEPS, GLOBAL_BATCH, LR = 3, 16, 0.05


def build_model() -> nn.Module:
    """A LeNet-like CNN for 1×8×8 inputs, simulated in posit8_es2, with fixed initial weights."""
    import lowbit as lb

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 10))
    return lb.quantize_(model, CONFIG)


def global_batch() -> "tuple[torch.Tensor, torch.Tensor]":
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, GLOBAL_BATCH, 1, 8, 8, generator=g), torch.randint(0, 10, (STEPS, GLOBAL_BATCH), generator=g)


def _shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    per = t.shape[0] // world
    return t[rank * per:(rank + 1) * per]


def reference_parameters(world: int) -> "list[torch.Tensor]":
    """The DDP run emulated in one process: each step averages the per-shard gradients."""
    torch.set_num_threads(1)
    model = build_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    xs, ys = global_batch()
    for step in range(STEPS):
        grads = []
        for rank in range(world):
            model.zero_grad()
            x, y = _shard(xs[step], rank, world), _shard(ys[step], rank, world)
            nn.functional.cross_entropy(model(x), y).backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for i, p in enumerate(model.parameters()):
            p.grad = sum(g[i] / world for g in grads)
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _train_shard(out: str, rank: int, world: int) -> None:
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(build_model())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    xs, ys = global_batch()
    for step in range(STEPS):
        opt.zero_grad()
        x, y = _shard(xs[step], rank, world), _shard(ys[step], rank, world)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    if rank == 0:
        torch.save([p.detach().clone() for p in model.module.parameters()], out)


def main(out: str) -> None:
    import gc

    import torch.distributed as dist

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _train_shard(out, rank, world)
        # the DDP wrapper (its reducer holds the process group) is gone before the group is torn
        # down, and both ranks tear down together: otherwise a rank can die at exit in a
        # background thread ("terminate called without an active exception"), as CI runs showed
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
