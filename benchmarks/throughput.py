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

from wm_sim import compiled_kernels

RATIO_BOUND = 3.0  # x MuJoCo step + render on every core, at the best env count


def vector_env_rate(envs, actions: np.ndarray, seconds: float, device) -> float:
    """Frames/s of `envs.step` cycling through `actions` (C, num_envs, A) for `seconds`."""
    return frames_per_s(lambda i: envs.step(actions[i % len(actions)]), envs.num_envs, seconds, device)


def bound_of(split: dict[str, float]) -> str:
    """The stage that takes the most of a step, in words."""
    stage = max(split, key=split.get)
    return f"{stage} ({split[stage]:.0%} of the step time)"


def _started(make_vec, counts, actions: dict, warm_steps: int, desc: str) -> dict:
    """Vector envs of each count, reset and stepped through the window (and any compile)."""
    envs = {}
    for n in tqdm(counts, desc=desc, unit="env"):
        envs[n] = make_vec(n)
        envs[n].reset(seed=0)
        for i in range(warm_steps):  # fill the window (and compile): steady state
            envs[n].step(actions[n][i % len(actions[n])])
    return envs


def run(bench: Bench) -> dict:
    sizes, device = bench.sizes, bench.device
    rng = np.random.default_rng(0)
    dim = bench.model.config.action_dim
    actions = {n: rng.uniform(-1, 1, (16, n, dim)).astype(np.float32) for n in sizes.num_envs}
    warm = bench.model.config.window + 2
    envs = _started(bench.make_vec, sizes.num_envs, actions, warm, "throughput: start envs")
    # an accelerated run measures the eager float32 step beside it: the change, in the same run
    eager = bench.eager()
    before = (
        _started(eager.make_vec, sizes.num_envs, actions, warm, "throughput: start float32 envs")
        if bench.acceleration.active
        else {}
    )
    physics = bench.physics()
    # the fair rival: a simulator per core (smoke runs and one-core machines: one process)
    processes = bench.cores if sizes.all_cores else 1
    render, step_only, parallel = [], [], []
    rates, eager_rates = {n: [] for n in envs}, {n: [] for n in before}
    # where a bf16 CPU step runs compiled kernels, also torch's passes they replaced
    passes_rates = {n: [] for n in envs} if bench.runs_compiled_kernels() else {}
    for _ in tqdm(range(bench.repeats), desc="throughput", unit="repeat"):
        render.append(physics.render_frames_per_s(sizes.seconds))
        step_only.append(physics.step_frames_per_s(sizes.seconds))
        parallel.append(
            all_cores_frames_per_s(bench.task, bench.image_size, processes, sizes.seconds)
            if processes > 1
            else render[-1]
        )
        for measured, started in ((rates, envs), (eager_rates, before)):
            for n, env in started.items():
                measured[n].append(vector_env_rate(env, actions[n], sizes.seconds, device))
        with compiled_kernels.torch_ops_only():  # the same envs, the step before the kernels
            for n in passes_rates:
                passes_rates[n].append(vector_env_rate(envs[n], actions[n], sizes.seconds, device))
    best = max(rates, key=lambda n: float(np.median(rates[n])))
    for env in (*envs.values(), *before.values()):
        env.close()
    split_env = eager.make_vec(best)
    split_env.reset(seed=0)
    split = split_of(split_env, actions[best][np.arange(20) % 16], device)
    split_env.close()
    result = _report(best, rates, render, parallel, processes, split)
    _add_step_only(result, rates[best], step_only)
    if before:
        _add_before(result, best, rates, eager_rates, bench.acceleration.describe())
    if passes_rates:
        _add_torch_passes(result, best, rates, passes_rates)
    return result


def _report(best: int, rates: dict, render: list, parallel: list, processes: int, split: dict) -> dict:
    """Figures, target and table of the vector env against MuJoCo on every core and in one process."""
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
    measure = "best vector env vs MuJoCo step + render on every core"
    return {
        "figures": figures,
        "targets": [target(measure, vs_cores.median, ">=", RATIO_BOUND, "x")],
        "table": table,
        "bound": bound_of(split),
    }


def _add_step_only(result: dict, best_rates: list, step_only: list) -> None:
    if step_only[0] is None:
        return
    vs_step = summarize(ratios(best_rates, step_only))
    result["figures"]["mujoco_step_frames_per_s"] = summarize(step_only).to_dict()
    result["figures"]["best_vs_mujoco_step"] = vs_step.to_dict()
    result["table"].append(["best vs MuJoCo stepping without rendering", vs_step.text("{:.2f}") + "x"])


def _add_before(result: dict, best: int, rates: dict, eager_rates: dict, accelerated: str) -> None:
    """The eager float32 step's frames/s, measured in the same repeats, and the speed-up over it."""
    speedup = summarize(ratios(rates[best], eager_rates[best]))
    result["figures"]["eager_float32_frames_per_s"] = {
        str(n): summarize(r).to_dict() for n, r in eager_rates.items()
    }
    result["figures"]["best_vs_eager_float32"] = speedup.to_dict()
    result["table"] += [
        [
            "eager float32 frames/s at " + " / ".join(str(n) for n in eager_rates) + " envs",
            " / ".join(summarize(r).text("{:.0f}") for r in eager_rates.values()),
        ],
        [f"{accelerated} vs eager float32 at {best} envs", speedup.text("{:.2f}") + "x"],
    ]


def _add_torch_passes(result: dict, best: int, rates: dict, passes_rates: dict) -> None:
    """The same step with torch's passes instead of the compiled kernels (wm_sim.compiled_kernels),
    measured in the same repeats, and the speed-up."""
    speedup = summarize(ratios(rates[best], passes_rates[best]))
    figures = {str(n): summarize(r).to_dict() for n, r in passes_rates.items()}
    result["figures"]["torch_passes_frames_per_s"] = figures
    result["figures"]["best_vs_torch_passes"] = speedup.to_dict()
    result["table"] += [
        [
            "with torch's passes for the compiled kernels, frames/s at " + " / ".join(str(n) for n in passes_rates),
            " / ".join(summarize(r).text("{:.0f}") for r in passes_rates.values()),
        ],
        [f"compiled kernels vs torch's passes at {best} envs", speedup.text("{:.2f}") + "x"],
    ]
