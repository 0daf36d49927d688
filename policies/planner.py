"""A sampling-based planner (the cross-entropy method) over forks of the batched world-model env.

At every real step the planner restarts its imagination from the last few real observations and
actions, forks that state with `get_state`, and for each iteration restores it with `set_state`,
imagines `population` action sequences of `horizon` steps in one batched forward pass per step,
and refits a Gaussian to the best `elites` by imagined return. It executes the first action of
the final mean, and shifts the plan by one step to warm-start the next.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from wm_sim.policies.base import Policy

from wm_sim.errors import WmSimError


@dataclass(frozen=True)
class CEMConfig:
    """Search budget of the planner: `cem:horizon=8,population=32` on the command line."""

    horizon: int = 8
    population: int = 32
    elites: int = 6
    iterations: int = 2
    context: int = 4  # real frames the imagination restarts from at each step
    init_std: float = 0.5

    @classmethod
    def parse(cls, options: str) -> CEMConfig:
        """`key=value,key=value` -> config; an unknown key or a bad value is one clear error."""
        known = {f.name: f.type for f in fields(cls)}
        values: dict = {}
        for item in filter(None, options.split(",")):
            key, _, value = item.partition("=")
            if key not in known:
                raise WmSimError(f"unknown cem option {key!r}; expected some of {sorted(known)}")
            try:
                values[key] = float(value) if key == "init_std" else int(value)
            except ValueError as exc:
                raise WmSimError(f"cem option {key} must be a number, got {value!r}") from exc
        config = cls(**values)
        if min(config.horizon, config.population, config.elites, config.iterations, config.context) < 1:
            raise WmSimError(f"cem options must be positive, got {config}")
        if config.elites > config.population:
            raise WmSimError(f"cem elites ({config.elites}) cannot exceed population ({config.population})")
        return config


class CEMPlanner(Policy):
    """Plans each action by imagined return; acts from pixels and proprioception like any policy."""

    def __init__(self, checkpoint: str, num_envs: int = 1, config: CEMConfig = CEMConfig(), seed: int = 0):
        from wm_sim.envs.world_model_env import WorldModelVectorEnv

        self.config = config
        self.num_envs = num_envs
        self.env = WorldModelVectorEnv(num_envs=num_envs * config.population, checkpoint=checkpoint)
        self.env.reset(seed=seed)  # every row started once: later restarts are partial
        self.action_dim = int(self.env.single_action_space.shape[0])
        self._rng = np.random.default_rng([seed, 2])
        self._history: list[list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]] = [
            [] for _ in range(num_envs)
        ]
        self._plan = np.zeros((num_envs, config.horizon, self.action_dim))

    def reset(self, mask: np.ndarray | None = None, seeds: list[int] | None = None) -> None:
        rows = range(self.num_envs) if mask is None else np.flatnonzero(np.asarray(mask, dtype=bool))
        for row in rows:
            self._history[int(row)] = []
            self._plan[int(row)] = 0.0

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        c, p = self.config, self.config.population
        for row in range(self.num_envs):
            history = self._history[row]
            history.append((np.asarray(obs["pixels"][row]), np.asarray(obs["agent_pos"][row]), None))
            del history[: max(0, len(history) - c.context)]
        self._restart()
        start = self.env.get_state()
        mean, std = self._plan.copy(), np.full_like(self._plan, c.init_std)
        for _ in range(c.iterations):
            noise = self._rng.standard_normal((self.num_envs, p, c.horizon, self.action_dim))
            candidates = np.clip(mean[:, None] + std[:, None] * noise, -1.0, 1.0)  # (R, P, H, A)
            self.env.set_state(start)
            returns = np.zeros((self.num_envs, p))
            for t in range(c.horizon):
                _, reward, _, _, _ = self.env.step(candidates[:, :, t].reshape(-1, self.action_dim))
                returns += reward.reshape(self.num_envs, p)
            best = np.argsort(-returns, axis=1)[:, : c.elites]  # (R, E)
            elites = np.take_along_axis(candidates, best[:, :, None, None], axis=1)
            mean, std = elites.mean(axis=1), elites.std(axis=1) + 0.05
        action = mean[:, 0].astype(np.float32)
        self._plan = np.concatenate([mean[:, 1:], np.zeros_like(mean[:, :1])], axis=1)
        for row in range(self.num_envs):
            pixels, agent_pos, _ = self._history[row][-1]
            self._history[row][-1] = (pixels, agent_pos, action[row])
        return action

    def _restart(self) -> None:
        """Every candidate row of every env restarts from that env's recent real history."""
        frames, states, actions = [], [], []
        length = min(len(h) for h in self._history)
        for history in self._history:
            recent = history[-length:]
            frames.append(np.stack([f for f, _, _ in recent]))
            states.append(np.stack([s for _, s, _ in recent]))
            actions.append(
                np.stack([a for _, _, a in recent[:-1]]) if length > 1 else np.zeros((0, self.action_dim))
            )
        repeat = self.config.population
        self.env.reset_to(*(np.repeat(np.stack(x), repeat, axis=0) for x in (frames, states, actions)))
