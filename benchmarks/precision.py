"""`precision`: the frames of the measured step against the eager float32 step's.

A faster step is only worth having if it shows the same world. From the same bundled real start
contexts and the same random actions, a batch of 64 vector envs of each kind is stepped 60
times; per step, the PSNR of each row's accelerated frame against its float32 frame (the worst
row and the median) and the largest agent_pos and reward differences. Targets: the worst row
stays at or above 40 dB at the last step (a few grey levels on a handful of pixels), and
agent_pos, where a state transition predicts it, is the same to 1e-5 (it runs in float32 under
bf16). Where a bf16 CPU step runs compiled kernels (wm_sim.compiled_kernels), a third batch
steps the same accelerated env with torch's passes, the code before them, held to the same 40 dB
(the decoder's pass alone keeps levels within one; attention's float32 scores and weights, where
torch rounds them to bf16, move the latents within bf16 rounding). Without an acceleration
(accelerate=off, or a CPU without native bf16) both sides are the same step, and the frames must
be identical.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm
from wm_sim.benchmarks.context import Bench
from wm_sim.benchmarks.stats import target

from wm_sim import compiled_kernels
from wm_sim.metrics import MAX_PSNR, psnr

PSNR_BOUND_DB = 40.0
STATE_BOUND = 1e-5
BATCH, STEPS, REPORTED = 64, 60, (1, 4, 16, 60)


def frame_psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row PSNR (dB) of uint8 frames (B, S, S, 3), as evaluate's (identical rows: MAX_PSNR)."""
    return psnr(torch.from_numpy(a) / 255.0, torch.from_numpy(b) / 255.0).numpy()


def run(bench: Bench) -> dict:
    batch, steps = (4, 8) if bench.smoke else (BATCH, STEPS)
    fast, plain = bench.make_vec(batch), bench.eager().make_vec(batch)
    fast.reset(seed=0)
    plain.reset(seed=0)
    rng = np.random.default_rng(0)
    dim = fast.single_action_space.shape[0]
    curves: dict[str, list[float]] = {
        "worst_psnr_db": [],
        "median_psnr_db": [],
        "state_max": [],
        "reward_max": [],
    }
    identical = True
    passes = _torch_passes_twin(bench, batch)
    level_gaps, passes_psnr = [], []
    for _ in tqdm(range(steps), desc="precision", unit="step"):
        actions = rng.uniform(-1, 1, (batch, dim)).astype(np.float32)
        (a, ra, *_), (b, rb, *_) = fast.step(actions), plain.step(actions)
        if passes is not None:
            with compiled_kernels.torch_ops_only():
                c = passes.step(actions)[0]["pixels"]
            level_gaps.append(int(np.abs(a["pixels"].astype(np.int16) - c).max()))
            passes_psnr.append(float(frame_psnr(a["pixels"], c).min()))
        psnr = frame_psnr(a["pixels"], b["pixels"])
        identical &= bool(np.array_equal(a["pixels"], b["pixels"]))
        curves["worst_psnr_db"].append(float(psnr.min()))
        curves["median_psnr_db"].append(float(np.median(psnr)))
        curves["state_max"].append(float(np.abs(a["agent_pos"] - b["agent_pos"]).max()))
        curves["reward_max"].append(float(np.abs(ra - rb).max()))
    for env in (fast, plain, passes):
        if env is not None:
            env.close()
    at = [h for h in REPORTED if h <= steps]
    accelerated = bench.acceleration.describe()
    table = [
        [
            f"{accelerated} vs eager float32, {batch} envs: worst / median row PSNR at step "
            + " / ".join(map(str, at))
            + " (dB)",
            " ; ".join(
                f"{_db(curves['worst_psnr_db'][h - 1])} / {_db(curves['median_psnr_db'][h - 1])}" for h in at
            ),
        ],
        [
            "largest agent_pos / reward difference over the rollout",
            f"{max(curves['state_max']):.2g} / {max(curves['reward_max']):.2g}",
        ],
    ]
    targets = [
        target(
            f"worst row PSNR vs float32 at step {steps}",
            curves["worst_psnr_db"][-1],
            ">=",
            PSNR_BOUND_DB,
            "dB",
        ),
    ]
    if bench.model.transition is not None:  # else agent_pos is the transformer's, in bf16 too
        targets.append(
            target("largest agent_pos difference vs float32", max(curves["state_max"]), "<=", STATE_BOUND)
        )
    if level_gaps:
        _add_torch_passes(table, targets, at, passes_psnr, level_gaps)
    if not bench.acceleration.active:  # the same step on both sides: nothing may differ
        targets.append(target("frames identical to float32 (1 = yes)", float(identical), ">=", 1.0))
    figures = {"batch": batch, "steps": steps, "accelerated": accelerated, "identical": identical, **curves}
    if level_gaps:
        figures["torch_passes_level_gap"] = level_gaps
        figures["torch_passes_worst_psnr_db"] = passes_psnr
    return {"figures": figures, "targets": targets, "table": table}


def _add_torch_passes(table: list, targets: list, at: list[int], psnr: list[float], gaps: list[int]) -> None:
    """The kernels' frames against torch's passes: a row of the table and a target."""
    table.append(
        [
            "compiled kernels vs torch's passes: worst row PSNR at step "
            + " / ".join(map(str, at))
            + " (dB); largest level gap",
            " ; ".join(_db(psnr[h - 1]) for h in at) + f"; {max(gaps)}",
        ]
    )
    steps = len(psnr)
    targets.append(target(f"worst row PSNR vs torch's passes at step {steps}", psnr[-1], ">=", PSNR_BOUND_DB, "dB"))


def _torch_passes_twin(bench: Bench, batch: int):
    """The accelerated vector env again, reset alike, where its steps run compiled kernels
    (stepped under torch_ops_only, it shows the code before them); else None."""
    if not bench.runs_compiled_kernels():
        return None
    env = bench.make_vec(batch)
    env.reset(seed=0)
    return env


def _db(value: float) -> str:
    return "identical" if value >= MAX_PSNR else f"{value:.1f}"
