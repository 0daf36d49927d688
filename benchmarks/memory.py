"""`memory`: resident memory over a long run of env.step at batch 1, with a reset every 200 steps.

A learned simulator that leaks a little per step, or per episode, dies in a long run; the KV
cache is a ring buffer and every buffer is reused, so resident memory must be flat once warm.
20,000 steps and 100 resets (each from another bundled start context), sampled every few steps;
the figure is the growth between step 2,000 (a tenth of the run, after warm-up) and the end.
On a GPU, the allocator's live bytes are recorded too.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from tqdm import tqdm
from wm_sim.benchmarks.context import Bench
from wm_sim.benchmarks.stats import target

GROWTH_BOUND_PERCENT = 1.0


def rss_mb() -> float:
    """This process's resident memory in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def growth_percent(steps: list[int], samples: list[float], start: int) -> float:
    """Growth of `samples` from the first sample at or after step `start` to the last, in percent."""
    first = next(i for i, s in enumerate(steps) if s >= start)
    return 100.0 * (samples[-1] - samples[first]) / samples[first]


def run(bench: Bench) -> dict:
    sizes = bench.sizes
    env = bench.make_env()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (256, env.action_space.shape[0])).astype(np.float32)
    steps, rss, gpu, resets = [], [], [], 0
    for i in tqdm(range(1, sizes.memory_steps + 1), desc="memory", unit="step", mininterval=1.0):
        _, _, terminated, truncated, _ = env.step(actions[i % len(actions)])
        if terminated or truncated or i % sizes.memory_reset_every == 0:
            env.reset()
            resets += 1
        if i % sizes.memory_every == 0:
            steps.append(i)
            rss.append(round(rss_mb(), 2))
            if bench.device.type == "cuda":
                gpu.append(round(torch.cuda.memory_allocated(bench.device) / 2**20, 2))
    env.close()
    start = sizes.memory_steps // 10  # step 2,000 of 20,000
    growth = growth_percent(steps, rss, start)
    first = steps.index(next(s for s in steps if s >= start))
    figures = {
        "steps": steps,
        "rss_mb": rss,
        "growth_percent": round(growth, 3),
        "from_step": steps[first],
        "rss_mb_at_start_and_end": [rss[first], rss[-1]],
        "resets": resets,
    }
    if gpu:
        figures["cuda_allocated_mb"] = gpu
    return {
        "figures": figures,
        "targets": [
            target(
                f"resident memory growth, step {steps[first]:,} to {steps[-1]:,} ({resets} resets)",
                growth,
                "<=",
                GROWTH_BOUND_PERCENT,
                "%",
            )
        ],
        "table": [
            [
                f"resident memory at step {steps[first]:,} / {steps[-1]:,} (MiB)",
                f"{rss[first]:.1f} / {rss[-1]:.1f} ({growth:+.2f}%)",
            ]
        ],
    }
