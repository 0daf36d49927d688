"""`ros`: the lock-step round trip over ROS 2, and the rate a realtime server holds under load.

One round trip is what an RL loop over ROS pays per step: publish the command; the server, in
its own process, steps the env and publishes image, joint state, reward and done; the client
has them all. Beside it, in the same run, the env's own `step` in this process at one thread
(what the server does inside each round trip): the difference is what ROS costs. The server
runs on the CPU with one torch thread, as `wm-sim ros serve threads=1`.

Realtime: `wm-sim ros serve mode=realtime rate=50` with its default threads, measured by a
subscriber in another process (`ros_flood`) counting frames: quiet, while that process floods
the command topic as fast as it can, and with that flood while every core also runs a busy loop.
The server should hold its rate within 10% and report each overrun on /diagnostics. Beside it,
in the same run, the busy case again with the server at torch's default threads, for comparison.

Needs the `ros` extra; without it the suite reports itself skipped instead of failing `all`.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import torch
from tqdm import tqdm
from wm_sim.benchmarks.context import Bench
from wm_sim.benchmarks.latency import step_times_ms
from wm_sim.benchmarks.stats import percentiles, summarize, target

from wm_sim.errors import WmSimError
from wm_sim.optional import is_available

P50_BOUND_MS = 30.0
REALTIME_RATE_HZ = 50.0
REALTIME_BOUND_HZ = 45.0  # within 10% of the rate asked for
FLOOD = "command flood"
BUSY = "command flood + every core busy"
SCENARIOS = ("quiet", FLOOD, BUSY)
CPU = torch.device("cpu")  # the server steps on the CPU: nothing to synchronise


def env_step_ms(checkpoint: str, actions: np.ndarray) -> list[float]:
    """The env's own step in this process, one torch thread, CPU: the floor under a round trip."""
    import gymnasium as gym

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    env = gym.make("wm_sim/WorldModel-v0", checkpoint=checkpoint)
    try:
        env.reset(seed=0)
        return step_times_ms(env, actions, CPU)
    finally:
        env.close()
        torch.set_num_threads(threads)


def start_server(checkpoint: str, *options: str) -> subprocess.Popen:
    """`wm-sim ros serve` of `checkpoint` with `options`, in a child process on its own ROS domain."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    return subprocess.Popen(
        [
            sys.executable, "-m", "wm_sim", "ros", "serve", "env=wm_sim/WorldModel-v0",
            f"+env_kwargs.checkpoint={checkpoint}", *options,
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def connect(server: subprocess.Popen, env_class: type, within_s: float = 120.0):
    """A RosEnv on `server`, retrying while it starts; a server that died is one clear error."""
    from wm_sim.ros.ros_env import RosTimeoutError

    deadline = time.monotonic() + within_s
    while True:
        if server.poll() is not None:
            raise WmSimError(f"`wm-sim ros serve` exited with code {server.returncode} before answering")
        try:
            return env_class(connect_timeout=5.0, timeout=20.0)
        except RosTimeoutError:
            if time.monotonic() > deadline:
                raise


def stop(server: subprocess.Popen) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it has not gone within 30 s."""
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def busy_cores() -> list[subprocess.Popen]:
    """One busy Python loop per core: another job wanting every core the server runs on."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]


def count_frames(seconds: float, warm_up: float, flood: bool, action_dim: int) -> dict:
    """`ros_flood` in its own process: the served rate (and its flood, if asked for)."""
    command = [
        sys.executable, "-m", "wm_sim.benchmarks.ros_flood", str(seconds), f"--warm-up={warm_up}",
        f"--action-dim={action_dim}", *(["--flood"] if flood else []),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + warm_up + 180)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise WmSimError(f"the ROS frame counter exited with code {done.returncode}: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def realtime_rates(bench: Bench, action_dim: int, scenarios=SCENARIOS, *options: str) -> dict[str, dict]:
    """Each scenario's figures, from one realtime server (its default threads unless `options`)."""
    sizes = bench.sizes
    server = start_server(bench.checkpoint, "mode=realtime", f"rate={REALTIME_RATE_HZ:g}", *options)
    rates = {}
    try:
        for scenario in tqdm(scenarios, desc=f"ros realtime {' '.join(options)}", unit="scenario"):
            load = busy_cores() if scenario == BUSY else []
            try:
                rates[scenario] = count_frames(
                    sizes.realtime_seconds, sizes.realtime_warm_up, scenario != "quiet", action_dim
                )
            finally:
                for process in load:
                    process.kill()
                    process.wait()
            if server.poll() is not None:
                raise WmSimError(f"`wm-sim ros serve mode=realtime` exited with code {server.returncode}")
    finally:
        stop(server)
    return rates


def run(bench: Bench) -> dict:
    if not is_available("rclpy"):
        return {
            "skipped": 'needs the ros extra: pip install "wm-sim[ros]"',
            "figures": {},
            "targets": [
                target("RosEnv.step round trip p50", None, "<=", P50_BOUND_MS, "ms"),
                *(target(f"realtime rate, {s}", None, ">=", REALTIME_BOUND_HZ, "Hz") for s in (FLOOD, BUSY)),
            ],
            "table": [["lock-step round trip over ROS 2", 'skipped: needs pip install "wm-sim[ros]"']],
        }
    from wm_sim.ros.ros_env import RosEnv

    steps = bench.sizes.latency_steps
    server = start_server(bench.checkpoint, "mode=lockstep", "threads=1")
    try:
        env = connect(server, RosEnv)
        try:
            env.reset(seed=0)
            env.action_space.seed(0)
            actions = np.stack([env.action_space.sample() for _ in range(steps)])
            step_times_ms(env, actions[: min(50, steps)], CPU)  # warm-up: DDS, allocator, caches
            p50, p99, floor = [], [], []
            for _ in tqdm(range(bench.repeats), desc="ros round trip", unit="repeat"):
                times = step_times_ms(env, actions, CPU)  # RosEnv.step: the round trip
                spread = percentiles(times, (50, 99))
                p50.append(spread["p50"])
                p99.append(spread["p99"])
                floor.append(float(np.percentile(env_step_ms(bench.checkpoint, actions), 50)))
            action_dim = int(env.action_space.shape[0])
        finally:
            env.close()
    finally:
        stop(server)
    realtime = realtime_rates(bench, action_dim)
    # beside it, in the same run: the server at torch's default threads (serve's default before)
    realtime[f"{BUSY}, threads=0 (torch's default)"] = realtime_rates(
        bench, action_dim, (BUSY,), "threads=0"
    )[BUSY]
    p50_s, p99_s, floor_s = summarize(p50), summarize(p99), summarize(floor)
    overhead = summarize([a - b for a, b in zip(p50, floor, strict=True)])
    return {
        "figures": {
            "round_trip_p50_ms": p50_s.to_dict(),
            "round_trip_p99_ms": p99_s.to_dict(),
            "env_step_in_process_p50_ms": floor_s.to_dict(),
            "ros_overhead_p50_ms": overhead.to_dict(),
            "steps_per_repeat": steps,
            "realtime_target_hz": REALTIME_RATE_HZ,
            "realtime": realtime,
        },
        "targets": [
            target("RosEnv.step round trip p50", p50_s.median, "<=", P50_BOUND_MS, "ms"),
            *(
                target(f"realtime rate, {s}", realtime[s]["rate_hz"], ">=", REALTIME_BOUND_HZ, "Hz")
                for s in (FLOOD, BUSY)
            ),
        ],
        "table": [
            [
                "RosEnv.step lock-step round trip: p50 / p99 (ms)",
                f"{p50_s.text('{:.1f}')} / {p99_s.text('{:.1f}')}",
            ],
            ["env.step in process, 1 thread: p50 (ms)", floor_s.text("{:.1f}")],
            ["ROS 2 overhead at p50 (ms)", overhead.text("{:.1f}")],
            *(
                [
                    f"realtime at {REALTIME_RATE_HZ:g} Hz, {scenario}: served rate (Hz), worst gap (ms), overruns",
                    f"{r['rate_hz']:.1f}, {r['worst_gap_ms'] or 0:.0f}, {r['overrun_reports']}"
                    + (f" ({r['commands_per_s']:.0f} commands/s)" if r["commands_per_s"] else ""),
                ]
                for scenario, r in realtime.items()
            ),
        ],
    }
