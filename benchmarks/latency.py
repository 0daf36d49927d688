"""`latency`: one env.step at batch 1, as a controller in a loop sees it.

p50 and p99 of `gym.make(...).step` over many steps (episode resets are not timed), and the
split of that time between the dynamics (the transformer's streaming step), the decode (latents
to pixels), the uncertainty re-encode and the conversion around them (action checks, copies,
numpy). The split is taken in a pass of its own, on an eager env: compiled or graphed steps on a
GPU have fused their stages.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm
from wm_sim.benchmarks.context import Bench
from wm_sim.benchmarks.machine import synchronize
from wm_sim.benchmarks.stats import percentiles, summarize, target
from wm_sim.benchmarks.timing import StageTimer

P50_BOUND_MS = 20.0


def step_times_ms(env, actions: np.ndarray, device, timer: StageTimer | None = None) -> list[float]:
    """Wall time of each env.step(actions[i]) in ms; resets after an episode's end are untimed."""
    times = []
    for action in actions:
        t0 = time.perf_counter()
        if timer is None:
            _, _, terminated, truncated, _ = env.step(action)
        else:
            with timer:
                _, _, terminated, truncated, _ = env.step(action)
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if np.ndim(terminated) == 0 and (terminated or truncated):  # a vector env autoresets
            env.reset()
    return times


def split_of(env, actions: np.ndarray, device) -> dict[str, float]:
    """Fractions of env.step time per stage over `actions` (an eager env: stages run one by one)."""
    timer = StageTimer(env.unwrapped.sim.engine.model, device)
    total = sum(step_times_ms(env, actions, device, timer)) / 1e3
    return timer.split(total)


def run(bench: Bench) -> dict:
    steps = bench.sizes.latency_steps
    env = bench.make_env()
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = np.stack([env.action_space.sample() for _ in range(steps)])
    step_times_ms(env, actions[: min(50, steps)], bench.device)  # warm-up (and compile)
    p50, p99 = [], []
    for _ in tqdm(range(bench.repeats), desc="latency", unit="repeat"):
        times = step_times_ms(env, actions, bench.device)
        spread = percentiles(times, (50, 99))
        p50.append(spread["p50"])
        p99.append(spread["p99"])
    if bench.acceleration.active:
        env.close()
        env = bench.eager().make_env()
        env.reset(seed=0)
    split = split_of(env, actions, bench.device)
    env.close()
    p50_s, p99_s = summarize(p50), summarize(p99)
    bound = max(split, key=split.get)
    return {
        "figures": {
            "env_step_p50_ms": p50_s.to_dict(),
            "env_step_p99_ms": p99_s.to_dict(),
            "split": {k: round(v, 4) for k, v in split.items()},
            "steps_per_repeat": steps,
        },
        "targets": [target("env.step p50 at batch 1", p50_s.median, "<=", P50_BOUND_MS, "ms")],
        "table": [
            ["env.step, batch 1: p50 / p99 (ms)", f"{p50_s.text('{:.1f}')} / {p99_s.text('{:.1f}')}"],
            [
                "time split: dynamics / decode / uncertainty / conversion",
                " / ".join(f"{split[k]:.0%}" for k in ("dynamics", "decode", "uncertainty", "conversion")),
            ],
        ],
        "bound": f"{bound} ({split[bound]:.0%} of env.step)",
    }
