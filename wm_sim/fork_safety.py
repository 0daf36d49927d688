"""A process forked from one that already ran torch on several threads runs torch on one.

torch's CPU kernels run on an OpenMP thread pool. A fork copies the pool's bookkeeping but none
of its threads, so the child's first parallel kernel waits for threads that do not exist: with
Gymnasium's `AsyncVectorEnv(context="fork")` (its Linux default) every worker hung on its first
step, because the parent had already built an env to read the spaces. A forked child that sets
one intra-op thread never enters the pool, which is what torch's own DataLoader does in its
workers; one thread per worker process is also the right size for a worker per core. Spawned
and forkserver children start clean and keep torch's default.
"""

from __future__ import annotations

import functools
import os

import torch


def _one_thread() -> None:
    torch.set_num_threads(1)


@functools.cache
def one_thread_in_forked_children() -> None:
    """Register, once per process, the fork handler that gives each forked child one torch thread."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_one_thread)
