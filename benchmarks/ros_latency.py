"""Lock-step round trip over ROS 2: `RosEnv.step` against `wm-sim ros serve` in another process.

    python -m wm_sim.benchmarks.ros_latency                       # shipped reacher model, 500 steps
    python -m wm_sim.benchmarks.ros_latency --env wm_sim/Reacher-MuJoCo-v0

One round trip is what an RL loop over ROS pays per step: publish the command, the server steps
the env and publishes image, joint state, reward and done, and the client has them all. Beside
it, in the same run, the env's own `step` in this process: the difference is the cost of ROS.
Writes benchmarks/results/ros_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

RESULTS = Path(__file__).resolve().parent / "results"


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 / mean in milliseconds."""
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def env_step_times(env_id: str, steps: int, seed: int = 0) -> list[float]:
    """The env's own step in this process, one thread: the floor under a ROS round trip."""
    import gymnasium
    import torch

    import wm_sim  # noqa: F401

    torch.set_num_threads(1)
    env = gymnasium.make(env_id)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    times = []
    for _ in tqdm(range(steps), desc=f"{env_id} step, in process", leave=False):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        start = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        times.append(time.perf_counter() - start)
        if terminated or truncated:
            env.reset()
    env.close()
    return times


def round_trip_times(env_id: str, steps: int, warmup: int, seed: int = 0) -> list[float]:
    """RosEnv.step against `wm-sim ros serve env=<env_id> mode=lockstep` in a child process."""
    from wm_sim.ros.ros_env import RosEnv

    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    server = subprocess.Popen(
        [sys.executable, "-m", "wm_sim", "ros", "serve", f"env={env_id}", "mode=lockstep", "threads=1"],
        stdout=subprocess.DEVNULL,
    )
    try:
        env = RosEnv(connect_timeout=120.0, timeout=10.0)
        rng = np.random.default_rng(seed)
        times = []
        env.reset(seed=seed)
        for i in tqdm(range(warmup + steps), desc=f"{env_id} round trip over ROS 2", leave=False):
            action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            start = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            if i >= warmup:
                times.append(time.perf_counter() - start)
            if terminated or truncated:
                env.reset()
        env.close()
        return times
    finally:
        server.terminate()
        server.wait(timeout=30)


def measure(env_id: str = "wm_sim/Reacher-v0", steps: int = 500, warmup: int = 50) -> dict:
    in_process = percentiles(env_step_times(env_id, steps))
    over_ros = percentiles(round_trip_times(env_id, steps, warmup))
    return {
        "env": env_id,
        "steps": steps,
        "round_trip": over_ros,
        "env_step_in_process": in_process,
        "ros_overhead_p50_ms": over_ros["p50_ms"] - in_process["p50_ms"],
        "target": {"round_trip_p50_ms_at_most": 30.0, "met": over_ros["p50_ms"] <= 30.0},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="wm_sim/Reacher-v0")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--out", default=str(RESULTS / "ros_latency.json"))
    args = parser.parse_args(argv)
    import platform

    import torch

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "torch": torch.__version__,
        **measure(args.env, args.steps, args.warmup),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.partial")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    rt, local = result["round_trip"], result["env_step_in_process"]
    print("| measure | p50 | p90 | p99 |\n|---|---|---|---|")
    print(
        f"| RosEnv.step round trip ({args.env}) | {rt['p50_ms']:.1f} ms | {rt['p90_ms']:.1f} ms | {rt['p99_ms']:.1f} ms |"
    )
    print(
        f"| env.step in process | {local['p50_ms']:.1f} ms | {local['p90_ms']:.1f} ms | {local['p99_ms']:.1f} ms |"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
