"""A sampling-based planner (the cross-entropy method) in the world model's latent space.

At every real step the planner reads the scene's goal point off the frame the camera shows, once,
and imagines `population` action sequences of `horizon` steps from the real proprioceptive state
with the world model's latent model (state transition + scene reward: wm_sim.latent_model), the
whole population of every env row in one batched pass per imagined step; no frame is decoded.
It refits a Gaussian to the best `elites` by imagined return, `iterations` times, executes the
first action of the final mean, and shifts the plan by one step to warm-start the next.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch
from wm_sim.policies.base import Policy

from wm_sim.data.schema import observed_frames
from wm_sim.errors import WmSimError


@dataclass(frozen=True)
class CEMConfig:
    """Search budget of the planner: `cem:horizon=12,population=256` on the command line."""

    horizon: int = 16
    population: int = 256
    elites: int = 32
    iterations: int = 6
    # Reacher pays a^2 per step: at 0.5 every sampled sequence cost more than it gained and the
    # zero plan it started from won every search (measured: the planner stood still)
    init_std: float = 0.3
    min_std: float = 0.05  # the spread a refit never goes below, so the search never stops

    @classmethod
    def parse(cls, options: str) -> CEMConfig:
        """`key=value,key=value` -> config; an unknown key or a bad value is one clear error."""
        kinds = {f.name: type(f.default) for f in fields(cls)}  # int, float or str, as the default
        values: dict = {}
        for item in filter(None, options.split(",")):
            key, _, value = item.partition("=")
            if key not in kinds:
                raise WmSimError(f"unknown cem option {key!r}; expected some of {sorted(kinds)}")
            try:
                values[key] = kinds[key](value)
            except ValueError as exc:
                raise WmSimError(f"cem option {key} must be {kinds[key].__name__}, got {value!r}") from exc
        config = cls(**values)
        if min(config.horizon, config.population, config.elites, config.iterations) < 1:
            raise WmSimError(
                f"cem options horizon, population, elites, iterations must be at least 1, got {config}"
            )
        if not (0 < config.init_std <= 2 and 0 <= config.min_std <= config.init_std):
            raise WmSimError(
                f"cem options must satisfy 0 < init_std <= 2 and 0 <= min_std <= init_std, got {config}"
            )
        if config.elites > config.population:
            raise WmSimError(f"cem elites ({config.elites}) cannot exceed population ({config.population})")
        return config


class CEMPlanner(Policy):
    """Plans each action by imagined return; acts from pixels and proprioception like any policy."""

    def __init__(self, checkpoint: str, num_envs: int = 1, config: CEMConfig = CEMConfig(), seed: int = 0):
        from wm_sim.checkpoint import load_checkpoint
        from wm_sim.latent_model import LatentModel

        model, _ = load_checkpoint(checkpoint)
        self.model = LatentModel.of(model, f"world model {checkpoint}")
        self.config = config
        self.num_envs = num_envs
        self.action_dim = model.config.action_dim
        self._generator = torch.Generator().manual_seed(seed)
        self._plan = torch.zeros(num_envs, config.horizon, self.action_dim)

    def reset(self, mask: np.ndarray | None = None, seeds: list[int] | None = None) -> None:
        rows = slice(None) if mask is None else torch.from_numpy(np.asarray(mask, dtype=bool))
        self._plan[rows] = 0.0

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        r, p, h, a = self.num_envs, self.config.population, self.config.horizon, self.action_dim
        goal = self.model.goal(torch.as_tensor(observed_frames(obs["pixels"])))  # (R, 2)
        state = torch.as_tensor(np.asarray(obs["agent_pos"], dtype=np.float32))  # (R, D)
        scenes, starts = goal.repeat_interleave(p, 0), state.repeat_interleave(p, 0)

        def returns_of(candidates: torch.Tensor) -> torch.Tensor:
            return self.model.returns(scenes, starts, candidates.reshape(r * p, h, a)).view(r, p)

        best = cem_search(returns_of, self._plan, self.config, self._generator)
        self._plan = torch.cat([best[:, 1:], torch.zeros_like(best[:, :1])], dim=1)
        return best[:, 0].numpy().astype(np.float32)


def cem_search(
    returns_of: Callable[[torch.Tensor], torch.Tensor],
    warm: torch.Tensor,
    config: CEMConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """The action sequences (R, H, A) with the highest imagined return the cross-entropy method
    finds, starting from `warm` (R, H, A); `returns_of` scores candidates (R, P, H, A) -> (R, P).

    The best sequence found, not the elites' mean: a mean of good sequences can be a poor one (it
    pays for their spread in control cost)."""
    c, (r, _, a) = config, warm.shape
    mean, std = warm.clone(), torch.full_like(warm, c.init_std)  # (R, H, A)
    best, best_return = warm.clone(), torch.full((r,), -torch.inf)
    for _ in range(c.iterations):
        noise = torch.randn(r, c.population, c.horizon, a, generator=generator)
        candidates = (mean[:, None] + std[:, None] * noise).clamp(-1.0, 1.0)  # (R, P, H, A)
        candidates[:, 0] = best  # the best plan so far always competes
        returns = returns_of(candidates).nan_to_num(nan=-torch.inf)  # NaN (unscored) never an elite
        top = returns.topk(c.elites, dim=1)  # (R, E)
        elites = torch.take_along_dim(candidates, top.indices[:, :, None, None], dim=1)
        mean, std = elites.mean(dim=1), elites.std(dim=1).clamp(min=c.min_std)
        better = top.values[:, 0] > best_return
        best[better], best_return[better] = elites[better, 0], top.values[better, 0]
    return best
