"""Scripted policies: random, standing still, the task's expert, and a noisy mixture for collection.

The expert reads the physics state, so these policies hold the tasks they act in; that is fine
for collection and for the reference return, and the reason they cannot drive a world model.
ReacherGoalExpert and PushFrameExpert are the exceptions: they read only observations (and a goal
fixed at the start), so they drive a world model too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from wm_sim.envs.task import MujocoTask
from wm_sim.policies.base import Policy

from wm_sim.errors import WmSimError

SCRIPTED_POLICIES = ("random", "expert", "mixed", "mixed_rest")


class RandomPolicy(Policy):
    """Uniform random actions in [-1, 1]."""

    kind = "random"

    def __init__(self, action_dim: int, num_envs: int = 1, seed: int = 0):
        self.action_dim, self.num_envs = action_dim, num_envs
        self._rngs = [np.random.default_rng([seed, row]) for row in range(num_envs)]

    def params(self) -> dict:
        return {"action_dim": self.action_dim}

    @classmethod
    def restore(cls, params: dict, tensors: dict, num_envs: int, seed: int) -> RandomPolicy:
        return cls(int(params["action_dim"]), num_envs=num_envs, seed=seed)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.stack([rng.uniform(-1.0, 1.0, self.action_dim) for rng in self._rngs]).astype(np.float32)

    def reset(self, mask: np.ndarray | None = None, seeds: list[int] | None = None) -> None:
        for row in _rows(mask, self.num_envs):
            if seeds is not None:
                self._rngs[row] = np.random.default_rng(seeds[row])


class ZeroPolicy(Policy):
    """All-zero actions: the arm stands still. A reference that needs no physics, so it runs in
    imagination too; on reacher it shows how much of random's deficit is only control cost."""

    def __init__(self, action_dim: int, num_envs: int = 1):
        self.action_dim, self.num_envs = action_dim, num_envs

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.zeros((self.num_envs, self.action_dim), np.float32)


class ExpertPolicy(Policy):
    """Each task's scripted expert, reading that task's physics state."""

    def __init__(self, tasks: Sequence[MujocoTask]):
        self.tasks = list(tasks)
        self.num_envs, self.action_dim = len(self.tasks), self.tasks[0].action_dim

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.stack([task.expert_action() for task in self.tasks]).astype(np.float32)


class ReacherGoalExpert(Policy):
    """Reacher's expert acting on observations alone: agent_pos, and the goal known at the start.

    ExpertPolicy reads the physics, which a world model does not have; this one reads only the
    (imagined or real) agent_pos, so it drives either. On the same state it acts as ExpertPolicy
    up to agent_pos's float32 rounding and speed clipping.
    """

    def __init__(self, goals: np.ndarray):
        self.goals = np.asarray(goals, dtype=np.float64).reshape(-1, 2)  # (num_envs, 2)
        self.num_envs, self.action_dim = len(self.goals), 2

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        from wm_sim.envs.reacher import reacher_expert

        state = np.asarray(obs["agent_pos"], dtype=np.float64).reshape(self.num_envs, 4)
        return np.stack(
            [reacher_expert(s[:2].copy(), s[2:], goal) for s, goal in zip(state, self.goals, strict=True)]
        ).astype(np.float32)


class PushFrameExpert(Policy):
    """Push's expert acting on observations alone: agent_pos, the goal known at the start, and the
    puck where the (imagined or real) top-view frame shows it.

    The puck moves, so unlike reacher's target it is read off every frame, by its colour. Where a
    frame shows too little of it (the arm passes over it), the last place seen stands in. In
    MuJoCo it acts as ExpertPolicy up to the few millimetres a 64x64 frame resolves. A single
    camera's frames are taken to be the top view (push's first camera).
    """

    def __init__(self, goals: np.ndarray):
        self.goals = np.asarray(goals, dtype=np.float64).reshape(-1, 2)  # (num_envs, 2)
        self.num_envs, self.action_dim = len(self.goals), 2
        self._puck = np.full((self.num_envs, 2), np.nan)  # last seen, per row

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        from wm_sim.envs.push import puck_seen, push_expert

        pixels = obs["pixels"]  # one camera's frames, or a dict of them by camera
        if isinstance(pixels, dict) and "top" not in pixels:
            raise WmSimError(
                f"push's frame expert reads the top camera; the observation has {sorted(pixels)}"
            )
        self._puck = puck_seen(pixels["top"] if isinstance(pixels, dict) else pixels, self._puck)
        state = np.asarray(obs["agent_pos"], dtype=np.float64).reshape(self.num_envs, 4)
        actions = np.zeros((self.num_envs, 2), np.float32)
        for i, (s, puck, goal) in enumerate(zip(state, self._puck, self.goals, strict=True)):
            if not np.isnan(puck).any():  # never seen yet: stand still
                actions[i] = push_expert(s[:2].copy(), s[2:], puck, goal)
        return actions

    def reset(self, mask: np.ndarray | None = None, seeds: list[int] | None = None) -> None:
        self._puck[_rows(mask, self.num_envs)] = np.nan


class NoisyPolicy(Policy):
    """Another policy's actions plus Gaussian noise of a fixed scale, clipped to [-1, 1].

    Noisy experts of several scales make a population of graded quality for `wm-sim rank`.
    """

    def __init__(self, inner: Policy, noise: float, seed: int = 0):
        if noise < 0:
            raise WmSimError(f"action noise must be >= 0, got {noise}")
        self.inner, self.noise = inner, float(noise)
        self.num_envs, self.action_dim = inner.num_envs, inner.action_dim
        self._rng = np.random.default_rng([seed, 1])

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        actions = self.inner.act(obs).astype(np.float64)
        actions += self._rng.normal(0.0, self.noise, actions.shape)
        return np.clip(actions, -1.0, 1.0).astype(np.float32)

    def reset(self, mask: np.ndarray | None = None, seeds: list[int] | None = None) -> None:
        self.inner.reset(mask, seeds)


class MixedPolicy(Policy):
    """The expert with per-episode action noise, interrupted by segments of random actions.

    The world model must see both purposeful motion (to imagine good policies) and exploratory
    motion (to answer for actions an expert would never take). Each episode draws its noise
    scale in [0, max_noise]; at each step a random segment of 5-20 steps starts with
    probability `segment_rate`, during which a random action is held with slow drift.

    With `rest_probability` > 0 (`mixed_rest`), a random segment is followed, that often, by a
    rest of 10-60 steps with no action, wherever the segment left the robot. Without rests, a
    still robot in the data is almost always one that has reached its goal, and a world model
    learns "still means success": a policy that stops moving is then imagined succeeding.
    """

    def __init__(
        self,
        tasks: Sequence[MujocoTask],
        seed: int = 0,
        max_noise: float = 0.3,
        segment_rate: float = 0.02,
        rest_probability: float = 0.0,
    ):
        self.expert = ExpertPolicy(tasks)
        self.num_envs, self.action_dim = self.expert.num_envs, self.expert.action_dim
        self.max_noise, self.segment_rate = max_noise, segment_rate
        self.rest_probability = rest_probability
        self._rngs = [np.random.default_rng([seed, row]) for row in range(self.num_envs)]
        self._noise = np.zeros(self.num_envs)
        self._segment_left = np.zeros(self.num_envs, dtype=np.int64)
        self._rest_left = np.zeros(self.num_envs, dtype=np.int64)
        self._held = np.zeros((self.num_envs, self.action_dim))
        self.reset()

    def reset(self, mask: np.ndarray | None = None, seeds: list[int] | None = None) -> None:
        for row in _rows(mask, self.num_envs):
            if seeds is not None:
                self._rngs[row] = np.random.default_rng(seeds[row])
            self._noise[row] = self._rngs[row].uniform(0.0, self.max_noise)
            self._segment_left[row] = 0
            self._rest_left[row] = 0

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        actions = self.expert.act(obs).astype(np.float64)
        for row, rng in enumerate(self._rngs):
            if self._rest_left[row] > 0:
                self._rest_left[row] -= 1
                actions[row] = 0.0
                continue
            if self._segment_left[row] == 0 and rng.random() < self.segment_rate:
                self._segment_left[row] = rng.integers(5, 21)
                self._held[row] = rng.uniform(-1.0, 1.0, self.action_dim)
            if self._segment_left[row] > 0:
                self._segment_left[row] -= 1
                self._held[row] = np.clip(self._held[row] + rng.normal(0.0, 0.2, self.action_dim), -1, 1)
                actions[row] = self._held[row]
                # a segment's end draws a rest only when rests are on: plain mixed draws as before
                ends = self._segment_left[row] == 0 and self.rest_probability > 0
                if ends and rng.random() < self.rest_probability:
                    self._rest_left[row] = rng.integers(10, 61)
            else:
                actions[row] += rng.normal(0.0, self._noise[row], self.action_dim)
        return np.clip(actions, -1.0, 1.0).astype(np.float32)


def make_scripted_policy(name: str, tasks: Sequence[MujocoTask], seed: int) -> Policy:
    """Build scripted policy `name` acting in `tasks` (one per batch row)."""
    if name not in SCRIPTED_POLICIES:
        raise WmSimError(f"unknown policy {name!r}; expected one of: {', '.join(SCRIPTED_POLICIES)}")
    if name == "random":
        return RandomPolicy(tasks[0].action_dim, num_envs=len(tasks), seed=seed)
    if name == "expert":
        return ExpertPolicy(tasks)
    return MixedPolicy(tasks, seed=seed, rest_probability=0.5 if name == "mixed_rest" else 0.0)


def _rows(mask: np.ndarray | None, num_envs: int) -> list[int]:
    if mask is None:
        return list(range(num_envs))
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (num_envs,):
        raise WmSimError(f"reset mask must have shape ({num_envs},), got {mask.shape}")
    return [int(i) for i in np.flatnonzero(mask)]
