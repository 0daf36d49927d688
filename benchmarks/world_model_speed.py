"""World-model speed and memory, against MuJoCo on the same machine in the same run.

    python benchmarks/world_model_speed.py                       # the shipped reacher model
    python benchmarks/world_model_speed.py --checkpoint outputs/reacher-small

Measures, on the CPU threads torch is given (default: every core):
  1. the machine's float32 matmul peak (best of repeated 1024^3 and 2048^3 products);
  2. MuJoCo reference: the task's step + 64x64 offscreen render, in one process and in one
     process per core (the most this machine simulates);
  3. the world model's streaming step at batch 1 (predict + decode one frame): median, p90, p99;
  4. batched stepping (predict + decode every row) at several batch sizes: frames/s, and the
     FLOP/s achieved (FLOPs counted by torch's FlopCounterMode) as a fraction of the matmul peak;
  5. resident memory over a 10,000-step batch-1 rollout, sampled every 500 steps after warm-up.
Writes benchmarks/results/world_model_speed.json and prints a table. Bounds (issue 3): batch-1
median <= 20 ms; best batched frames/s >= 3x MuJoCo's single-process frames/s; flat memory.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

RESULTS = Path(__file__).parent / "results" / "world_model_speed.json"


def matmul_peak(seconds: float = 3.0) -> float:
    """Best float32 GFLOP/s of square matmuls, over several sizes and repeats."""
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        deadline = time.perf_counter() + seconds / 2
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def _mujoco_worker(task_name: str, frames: int, queue) -> None:
    from wm_sim.envs.catalog import make_task

    task = make_task(task_name, image_size=64)
    task.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (frames, task.action_dim))
    for a in actions[:20]:  # warm-up: first render creates the GL context
        task.step(a)
    t0 = time.perf_counter()
    for i, a in enumerate(actions):
        if i % task.episode_steps == 0:
            task.reset(seed=i)
        task.step(a)
    queue.put(frames / (time.perf_counter() - t0))


def mujoco_frames_per_s(task_name: str, processes: int, frames: int = 2000) -> float:
    """Frames/s of MuJoCo step + 64x64 render, summed over `processes` parallel simulators."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_mujoco_worker, args=(task_name, frames, queue)) for _ in range(processes)]
    for w in workers:
        w.start()
    rates = [queue.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    return float(sum(rates))


class Stepper:
    """The imagined step an environment takes: predict the next frame, decode it to pixels."""

    def __init__(self, model, batch: int):
        c = model.config
        self.model = model
        self.cache = model.new_stream(batch)
        self.latents = torch.zeros(batch, c.tokens, c.latent_dim)
        self.state = torch.zeros(batch, c.state_dim)
        self.action = torch.zeros(batch, c.action_dim)

    @torch.inference_mode()
    def __call__(self) -> torch.Tensor:
        pred = self.model.stream_step(self.cache, self.latents, self.state, self.action)
        self.latents, self.state = pred.latents[:, 0], pred.state[:, 0]
        return self.model.decode(self.latents)


def step_latency(model, steps: int = 1000) -> dict[str, float]:
    step = Stepper(model, 1)
    for _ in range(50):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[int(0.9 * len(times))],
        "p99_ms": times[int(0.99 * len(times))],
    }


def batched(model, batch: int, seconds: float = 4.0) -> dict[str, float]:
    step = Stepper(model, batch)
    for _ in range(max(3, model.config.window + 1)):  # fill the window: steady-state cost
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        step()
        n += 1
    elapsed = time.perf_counter() - t0
    return {"frames_per_s": batch * n / elapsed, "gflop_per_s": flops * n / elapsed / 1e9}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_over_rollout(model, steps: int = 10_000, every: int = 500) -> dict:
    step = Stepper(model, 1)
    samples = []
    for i in range(1, steps + 1):
        step()
        if i % every == 0:
            samples.append(rss_mb())
    after_warmup = samples[1:]  # the first sample includes allocator warm-up
    return {
        "steps": steps,
        "rss_mb": [round(s, 1) for s in samples],
        "growth_after_warmup_mb": round(max(after_warmup) - after_warmup[0], 2),
    }


def machine() -> dict:
    """What the figures were measured on."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count() or 1,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def write_result(path: str | Path, result: dict) -> None:
    """Write the JSON atomically and print the bounds it checked."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(json.dumps(result["bounds"]))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="shipped:reacher")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    parser.add_argument("--batches", default="1,16,64,256,1024")
    parser.add_argument("--rollout-steps", type=int, default=10_000, help="steps of the memory rollout")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from wm_sim.checkpoint import load_checkpoint

    cores = os.cpu_count() or 1
    torch.set_num_threads(args.threads or cores)
    model, meta = load_checkpoint(args.checkpoint)
    model.eval()
    task = meta["dataset"]["task"]
    print(
        f"model {args.checkpoint} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters), "
        f"task {task}, {torch.get_num_threads()} torch threads, {cores} cores"
    )

    peak = matmul_peak()
    print(f"matmul peak: {peak:.1f} GFLOP/s")
    mujoco_1 = mujoco_frames_per_s(task, 1)
    mujoco_all = mujoco_frames_per_s(task, cores)
    print(f"MuJoCo step + 64x64 render: {mujoco_1:.0f} frames/s in 1 process, {mujoco_all:.0f} in {cores}")
    latency = step_latency(model)
    print(
        f"batch 1 step (predict + decode): median {latency['median_ms']:.2f} ms, "
        f"p90 {latency['p90_ms']:.2f}, p99 {latency['p99_ms']:.2f}"
    )
    rows = {}
    for b in (int(x) for x in args.batches.split(",")):
        rows[b] = batched(model, b)
        r = rows[b]
        print(
            f"batch {b:5d}: {r['frames_per_s']:8.0f} frames/s, {r['gflop_per_s']:6.1f} GFLOP/s "
            f"({r['gflop_per_s'] / peak:.0%} of matmul peak), {r['frames_per_s'] / mujoco_1:5.1f}x MuJoCo"
        )
    memory = memory_over_rollout(model, args.rollout_steps)
    print(
        f"memory over {memory['steps']} steps: {memory['rss_mb'][0]:.1f} -> {memory['rss_mb'][-1]:.1f} MB "
        f"(growth after warm-up {memory['growth_after_warmup_mb']} MB)"
    )

    best = max(rows.values(), key=lambda r: r["frames_per_s"])
    result = {
        "machine": machine(),
        "checkpoint": args.checkpoint,
        "task": task,
        "matmul_peak_gflop_per_s": peak,
        "mujoco_frames_per_s": {"1_process": mujoco_1, f"{cores}_processes": mujoco_all},
        "batch1_step": latency,
        "batched": {str(b): r for b, r in rows.items()},
        "memory": memory,
        "bounds": {
            "batch1_median_le_20ms": latency["median_ms"] <= 20.0,
            "batched_ge_3x_mujoco_1_process": best["frames_per_s"] >= 3 * mujoco_1,
            "batched_ge_3x_mujoco_all_cores": best["frames_per_s"] >= 3 * mujoco_all,
            "memory_flat": memory["growth_after_warmup_mb"] < 5.0,
        },
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
