"""Distributed data-parallel training under ``torchrun`` (env:// init; gloo on CPU, nccl on CUDA).

Only rank 0 validates, checkpoints, logs and exports; the other ranks train on their own share of
the data (cases split across ranks like ``DistributedSampler``, and a per-rank sampling seed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass
class DistContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1); else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, init_method="env://")
    return DistContext(rank, world, local_rank)


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """On CUDA each local rank gets its own GPU."""
    if device.type == "cuda" and ctx.distributed:
        return torch.device("cuda", ctx.local_rank)
    return device


def shard(items: Sequence[T], ctx: DistContext) -> list[T]:
    """This rank's share (``items[rank::world]``); every rank keeps all items when there are too few."""
    if not ctx.distributed or len(items) < ctx.world_size:
        return list(items)
    return list(items[ctx.rank::ctx.world_size])


def wrap_networks(nets: Mapping[str, torch.nn.Module], ctx: DistContext,
                  device: torch.device) -> dict[str, torch.nn.Module]:
    """Networks with trainable parameters wrapped in DDP (parameters broadcast from rank 0)."""
    if not ctx.distributed:
        return dict(nets)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    wrapped: dict[str, torch.nn.Module] = {}
    for name, net in nets.items():
        if any(p.requires_grad for p in net.parameters()):
            # several networks (GANs) take turns: a network may not join every backward pass
            wrapped[name] = DDP(net, device_ids=ids, find_unused_parameters=len(nets) > 1, broadcast_buffers=False)
        else:
            wrapped[name] = net
    return wrapped


def seed_rank(ctx: DistContext, seed: int, step: int) -> None:
    """Under torchrun, give each rank its own torch random stream from here on (diffusion noise and timesteps,
    dropout): seeded alike, every rank drew the same noise. The step is part of the seed, so a resumed run does
    not replay its first steps' noise. A single process keeps its stream (its resume restores it exactly)."""
    if ctx.distributed:
        torch.manual_seed(seed + 7919 * (ctx.rank + 1) + 104729 * step)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def cleanup(ctx: DistContext) -> None:
    """Leave the process group (no-op in a single process)."""
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
