"""Imagination checked against physics: the same actions from the same start, in both.

Every claim made in imagination is checked this way: `wm-sim demo` replays the imagined
episode's actions in MuJoCo, `wm-sim verify` replays MuJoCo's actions in the world model (and runs
the policy closed-loop in both), `train-policy` replays some imagined rollouts in MuJoCo to log
the reward gap. These are the two replays they share.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the tasks import MuJoCo, which only the callers that step physics need
    from wm_sim.envs.task import MujocoTask, StepResult


def replay_in_physics(task: MujocoTask, start: np.ndarray, actions: Iterable[np.ndarray]) -> list[StepResult]:
    """`actions` in real physics from physics state `start` (bit-exact replay): one result per step."""
    task.set_physics_state(start)
    return [task.step(np.asarray(action)) for action in actions]


def replay_in_imagination(env, frames: np.ndarray, agent_pos: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """(k, T) rewards of actions (k, T, A) run open-loop in a world-model vector env's first k rows,
    each started from its context (k, K, *frame) frames and (k, K, D) states; the other rows idle."""
    k, steps = actions.shape[:2]
    env.reset_to(frames, agent_pos, rows=np.arange(k))
    rewards = np.zeros((k, steps))
    for step in range(steps):
        _, reward, _, _, _ = env.step(padded(actions[:, step], env.num_envs))
        rewards[:, step] = reward[:k]
    return rewards


def padded(actions: np.ndarray, rows: int) -> np.ndarray:
    """Actions (k, A) for the first k of `rows` env rows; the others idle with zero actions (their
    results are ignored)."""
    full = np.zeros((rows, actions.shape[1]), np.float32)
    full[: len(actions)] = actions
    return full
