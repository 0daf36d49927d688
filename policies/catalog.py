"""Policies by name: what `policy=` and `policies=[...]` of `wm-sim verify` and `wm-sim rank` accept.

    random                 uniform random actions
    zero                   all-zero actions: standing still (needs no physics, so imagination too)
    expert                 the task's scripted expert (reads the physics state; the reference return)
    noisy_expert:0.3       the expert plus Gaussian action noise of that scale
    cem, cem:horizon=8     the sampling-based planner over world-model forks (options after the colon;
                           on the command line quote them: "policy='cem:horizon=8,population=16'")
    cem_stream             the same search through the world model's streaming step, for tasks
                           whose latent model holds no object (push); slower
    shipped:reacher        the imagination-trained policy packaged with wm-sim
    outputs/policies/run   a saved policy: a run directory (its `last`) or one checkpoint

Scripted experts read the physics, which imagination does not have: in the world model, reacher's
expert is its observation-only twin (ReacherGoalExpert), given the target seen at the start, and
push's reads the puck off each frame (PushFrameExpert).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from wm_sim.envs.task import MujocoTask
from wm_sim.policies.base import Policy

from wm_sim.errors import WmSimError

NAMED = ("random", "zero", "expert", "noisy_expert", "cem", "cem_stream")


@dataclass
class Setting:
    """Where a policy acts: MuJoCo tasks (one per row), or imagination with the start goals."""

    task: str
    num_envs: int
    action_dim: int
    image_size: int
    state_dim: int
    tasks: Sequence[MujocoTask] | None = None  # physics rows
    goals: np.ndarray | None = None  # (num_envs, 2) reacher targets, for imagination
    world_model: str = ""  # the checkpoint planners imagine with
    seed: int = 0


def describe(ref: str) -> str:
    """A short label for plots and tables."""
    text = str(ref)
    return text.rstrip("/").split("/")[-1] if "/" in text and not text.startswith("shipped:") else text


def make_policy(ref: str, setting: Setting) -> Policy:
    """The policy named `ref`, acting in `setting`; a mismatch with the task is one clear error."""
    from wm_sim.policies.scripted import (
        ExpertPolicy,
        NoisyPolicy,
        PushFrameExpert,
        RandomPolicy,
        ReacherGoalExpert,
        ZeroPolicy,
    )

    name, _, options = str(ref).partition(":")
    if name == "random":
        return RandomPolicy(setting.action_dim, num_envs=setting.num_envs, seed=setting.seed)
    if name == "zero":
        return ZeroPolicy(setting.action_dim, num_envs=setting.num_envs)
    if name in ("expert", "noisy_expert"):
        if setting.tasks is not None:
            expert: Policy = ExpertPolicy(setting.tasks)
        elif setting.task == "reacher" and setting.goals is not None:
            expert = ReacherGoalExpert(setting.goals)
        elif setting.task == "push" and setting.goals is not None:
            expert = PushFrameExpert(setting.goals)
        else:
            raise WmSimError(
                f"task {setting.task!r} has no expert that acts without the physics state; "
                "rank it in MuJoCo only, or leave it out"
            )
        if name == "expert":
            return expert
        try:
            noise = float(options)
        except ValueError as exc:
            raise WmSimError(
                f"noisy_expert takes its noise scale, e.g. noisy_expert:0.3; got {ref!r}"
            ) from exc
        return NoisyPolicy(expert, noise, seed=setting.seed)
    if name == "cem":
        from wm_sim.policies.planner import CEMConfig, CEMPlanner

        return CEMPlanner(setting.world_model, setting.num_envs, CEMConfig.parse(options), seed=setting.seed)
    if name == "cem_stream":
        from wm_sim.policies.stream_planner import StreamCEMConfig, StreamPlanner

        config = StreamCEMConfig.parse(options)
        return StreamPlanner(
            setting.world_model, setting.num_envs, config, seed=setting.seed, goals=setting.goals
        )
    from wm_sim.policies.saved import load_policy

    policy, meta = load_policy(ref, num_envs=setting.num_envs, seed=setting.seed)
    check_fits(ref, meta, setting)
    return policy


def check_fits(ref: str, meta: dict[str, Any], setting: Setting) -> None:
    """A saved policy acts in the task's spaces, or one error naming both."""
    params = meta.get("params", {})
    wm = params.get("world_model", {})
    acts = (params.get("action_dim"), meta.get("task"), wm.get("image_size"), wm.get("state_dim"))
    wants = (setting.action_dim, setting.task, setting.image_size, setting.state_dim)
    for got, want in zip(acts, wants, strict=True):
        if got is not None and got != want:
            raise WmSimError(
                f"policy {ref} acts in task {acts[1]!r} with {acts[0]} actions from {acts[2]}x{acts[2]} pixels "
                f"and {acts[3]} proprioceptive values; task {setting.task!r} has {setting.action_dim} actions, "
                f"{setting.image_size}x{setting.image_size} pixels and {setting.state_dim} values"
            )
