"""Data-parallel training under `torchrun`: which process this is, and the gradient all-reduce."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> Distributed:
        """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; absent, this is a single process."""
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )


def average_gradients(model: nn.Module, world_size: int) -> None:
    """Average the gradients over the processes: one all-reduce of them all, after backward.

    This is what DistributedDataParallel does, without launching the collectives from inside
    backward. A gloo collective launched there keeps a Python object (backward's stashed context)
    until its worker thread drops it, which takes the GIL; when the process group was then
    destroyed by a thread holding the GIL, that thread waited on the worker and the worker on the
    GIL, forever (CI's torchrun test hung so twice in a row; here 2 runs of about 150). Collectives
    launched out here hold no Python object, so tearing the group down cannot wait on the GIL.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:  # each gradient becomes a view of the averaged buffer: no copy back
        p.grad = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
