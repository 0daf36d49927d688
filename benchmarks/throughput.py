"""`throughput`: imagined frames/s of the vector env against MuJoCo making the same frames.

For each env count, `gym.make_vec(..., num_envs=n)` stepped under random actions (autoresets
included) gives frames/s; beside it, in every repeat, MuJoCo steps the same task and renders the
same 64x64 camera, as a user choosing between the two would run it: one simulator process per
core, their frames summed (the headline and the target), and also in one process and stepping
without rendering. Figures are ratios per repeat, then their median: the machine's load moves
both sides together. What bounds the best count is named from the split of its step time.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm
from wm_sim.benchmarks.context import Bench
from wm_sim.benchmarks.latency import split_of
from wm_sim.benchmarks.physics import all_cores_frames_per_s
from wm_sim.benchmarks.stats import ratios, summarize, target
from wm_sim.benchmarks.timing import frames_per_s

RATIO_BOUND = 3.0  # x MuJoCo step + render on every core, at the best env count


def vector_env_rate(envs, actions: np.ndarray, seconds: float, device) -> float:
    """Frames/s of `envs.step` cycling through `actions` (C, num_envs, A) for `seconds`."""
    return frames_per_s(lambda i: envs.step(actions[i % len(actions)]), envs.num_envs, seconds, device)


def bound_of(split: dict[str, float]) -> str:
    """The stage that takes the most of a step, in words."""
    stage = max(split, key=split.get)
    return f"{stage} ({split[stage]:.0%} of the step time)"


def run(bench: Bench) -> dict:
    sizes, device = bench.sizes, bench.device
    rng = np.random.default_rng(0)
    envs, actions = {}, {}
    for n in tqdm(sizes.num_envs, desc="throughput: start envs", unit="env"):
        envs[n] = bench.make_vec(n)
        envs[n].reset(seed=0)
        actions[n] = rng.uniform(-1, 1, (16, n, envs[n].single_action_space.shape[0])).astype(np.float32)
        for i in range(bench.model.config.window + 2):  # fill the window (and compile): steady state
            envs[n].step(actions[n][i % 16])
    physics = bench.physics()
    # the fair rival: a simulator per core (smoke runs and one-core machines: one process)
    processes = bench.cores if sizes.all_cores else 1
    render, step_only, parallel, rates = [], [], [], {n: [] for n in envs}
    for _ in tqdm(range(bench.repeats), desc="throughput", unit="repeat"):
        render.append(physics.render_frames_per_s(sizes.seconds))
        step_only.append(physics.step_frames_per_s(sizes.seconds))
        parallel.append(
            all_cores_frames_per_s(bench.task, bench.image_size, processes, sizes.seconds)
            if processes > 1
            else render[-1]
        )
        for n, env in envs.items():
            rates[n].append(vector_env_rate(env, actions[n], sizes.seconds, device))
    best = max(rates, key=lambda n: float(np.median(rates[n])))
    for env in envs.values():
        env.close()
    split_env = bench.eager().make_vec(best)
    split_env.reset(seed=0)
    split = split_of(split_env, actions[best][np.arange(20) % 16], device)
    split_env.close()

    vs_render = {n: summarize(ratios(r, render)) for n, r in rates.items()}
    vs_cores = summarize(ratios(rates[best], parallel))
    figures = {
        "mujoco_step_render_frames_per_s": summarize(render).to_dict(),
        "mujoco_step_render_all_cores_frames_per_s": summarize(parallel).to_dict(),
        "mujoco_processes": processes,
        "vector_env_frames_per_s": {str(n): summarize(r).to_dict() for n, r in rates.items()},
        "best_vs_mujoco_all_cores": vs_cores.to_dict(),
        "vs_mujoco_step_render": {str(n): s.to_dict() for n, s in vs_render.items()},
        "best_num_envs": best,
        "best_split": {k: round(v, 4) for k, v in split.items()},
    }
    table = [
        [
            f"best ({best} envs) vs MuJoCo step + render on every core ({processes} processes)",
            vs_cores.text("{:.2f}") + "x",
        ],
        [f"MuJoCo step + render, {processes} processes (frames/s)", summarize(parallel).text("{:.0f}")],
        ["MuJoCo step + render, 1 process (frames/s)", summarize(render).text("{:.0f}")],
        [
            "vector env frames/s at " + " / ".join(str(n) for n in rates) + " envs",
            " / ".join(summarize(r).text("{:.0f}") for r in rates.values()),
        ],
        [f"best ({best} envs) vs MuJoCo step + render in 1 process", vs_render[best].text("{:.2f}") + "x"],
    ]
    if step_only[0] is not None:
        vs_step = summarize(ratios(rates[best], step_only))
        figures["mujoco_step_frames_per_s"] = summarize(step_only).to_dict()
        figures["best_vs_mujoco_step"] = vs_step.to_dict()
        table.append(
            [f"best ({best} envs) vs MuJoCo stepping without rendering", vs_step.text("{:.2f}") + "x"]
        )
    return {
        "figures": figures,
        "targets": [
            target(
                "best vector env vs MuJoCo step + render on every core",
                vs_cores.median,
                ">=",
                RATIO_BOUND,
                "x",
            )
        ],
        "table": table,
        "bound": bound_of(split),
    }
