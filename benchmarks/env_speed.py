"""Gymnasium-level speed of the imagined reacher, against MuJoCo in the same run.

    python benchmarks/env_speed.py                                # the shipped reacher model
    python benchmarks/env_speed.py --checkpoint outputs/my-model/last

What an RL user pays, not what the bare model costs (that is world_model_speed.py):
  1. MuJoCo reference: reacher step + 64x64 offscreen render in one process, and in one process
     per core;
  2. `gym.make("wm_sim/WorldModel-v0", checkpoint=...)` (`wm_sim/Reacher-v0` for the shipped
     model): `env.step` at batch 1 through the whole stack (action
     checks, the model's step, the frame decode, numpy observation): median, p90, p99;
  3. `gym.make_vec(..., num_envs=N)`: frames/s with numpy observations, and with the torch
     interface (tensors stay where the model is), autoresets included.
Writes benchmarks/results/env_speed.json. Bounds (issue 4): batch-1 `env.step` median <= 20 ms;
make_vec with 256 envs >= 3x MuJoCo's single-process frames/s (also reported: against one
MuJoCo process per core).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from world_model_speed import machine, mujoco_frames_per_s, write_result

RESULTS = Path(__file__).parent / "results" / "env_speed.json"


def single_env_latency(checkpoint: str, steps: int) -> dict[str, float]:
    import gymnasium as gym

    env = gym.make("wm_sim/WorldModel-v0", checkpoint=checkpoint)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps + 50)]
    times = []
    for i, action in enumerate(actions):
        t0 = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        if i >= 50:  # after warm-up
            times.append((time.perf_counter() - t0) * 1e3)
        if terminated or truncated:
            env.reset()
    env.close()
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[int(0.9 * len(times))],
        "p99_ms": times[int(0.99 * len(times))],
    }


def vector_env_rate(checkpoint: str, num_envs: int, array_type: str, seconds: float) -> float:
    import gymnasium as gym

    envs = gym.make_vec(
        "wm_sim/WorldModel-v0", num_envs=num_envs, checkpoint=checkpoint, array_type=array_type
    )
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (16, num_envs, 2)).astype(np.float32)
    if array_type == "torch":
        actions = torch.from_numpy(actions)
    for i in range(10):  # fill the attention window: steady-state cost
        envs.step(actions[i % 16])
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        envs.step(actions[n % 16])
        n += 1
    rate = num_envs * n / (time.perf_counter() - t0)
    envs.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="shipped:reacher")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    parser.add_argument("--num-envs", default="1,16,64,256")
    parser.add_argument("--steps", type=int, default=1000, help="batch-1 env.step calls timed")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per vector-env measurement")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    import wm_sim  # noqa: F401  (registers the envs)

    cores = os.cpu_count() or 1
    torch.set_num_threads(args.threads or cores)
    print(f"env {args.checkpoint}, {torch.get_num_threads()} torch threads, {cores} cores")
    mujoco_1 = mujoco_frames_per_s("reacher", 1)
    mujoco_all = mujoco_frames_per_s("reacher", cores)
    print(f"MuJoCo step + 64x64 render: {mujoco_1:.0f} frames/s in 1 process, {mujoco_all:.0f} in {cores}")
    latency = single_env_latency(args.checkpoint, args.steps)
    print(
        f"env.step, batch 1: median {latency['median_ms']:.2f} ms, p90 {latency['p90_ms']:.2f}, "
        f"p99 {latency['p99_ms']:.2f}"
    )
    rates: dict[str, dict[str, float]] = {}
    for n in (int(x) for x in args.num_envs.split(",")):
        rates[str(n)] = {a: vector_env_rate(args.checkpoint, n, a, args.seconds) for a in ("numpy", "torch")}
        r = rates[str(n)]
        print(
            f"make_vec num_envs={n:4d}: {r['numpy']:7.0f} frames/s numpy ({r['numpy'] / mujoco_1:4.1f}x MuJoCo), "
            f"{r['torch']:7.0f} torch ({r['torch'] / mujoco_1:4.1f}x)"
        )
    at_256 = rates.get("256", {}).get("numpy")
    result = {
        "machine": machine(),
        "checkpoint": args.checkpoint,
        "mujoco_frames_per_s": {"1_process": mujoco_1, f"{cores}_processes": mujoco_all},
        "env_step_batch1": latency,
        "make_vec_frames_per_s": rates,
        "bounds": {
            "env_step_median_le_20ms": latency["median_ms"] <= 20.0,
            "make_vec_256_ge_3x_mujoco_1_process": None if at_256 is None else at_256 >= 3 * mujoco_1,
            "make_vec_256_ge_3x_mujoco_all_cores": None if at_256 is None else at_256 >= 3 * mujoco_all,
        },
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
