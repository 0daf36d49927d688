"""The cross-entropy planner through the world model's own streaming step, for tasks whose state
the latent model does not hold (push: the puck is only in the pixels).

The latent planner (planner.py) imagines with the small latent model: the arm's state and a goal
point read once off the frame. Nothing there can move a puck. This planner imagines what the env
does: the last `context` real frames (with their states and the actions taken between them) are
streamed into a fresh cache for every candidate, and each candidate's actions are streamed on
through ImaginationEngine.step, the reward read off each imagined frame. The whole population of
every env row advances in one batched pass per imagined step.

What scores a frame: the model's frame reward, or (`reward=task`) the task's own reward read off
the imagined observation, as the task would read a real one (push: the puck by its colour).

A frame is decoded per candidate per step (the frame reward reads it), so this costs about a
thousand times the latent planner per imagined step. Two options buy horizon back: each planned
action is held for `repeat` frames, and a plan is executed for `replan` frames before the next
search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from wm_sim.policies.base import Policy
from wm_sim.policies.planner import CEMConfig, cem_search

from wm_sim.data.schema import observed_frames
from wm_sim.errors import WmSimError

if TYPE_CHECKING:
    from wm_sim.envs.imagination import StepOutput

REWARDS = ("model", "task")


@dataclass(frozen=True)
class StreamCEMConfig(CEMConfig):
    """Search budget: `cem_stream:horizon=8,population=32` (plus CEMConfig's options)."""

    horizon: int = 8  # planned actions, each held for `repeat` frames
    population: int = 32
    elites: int = 6
    iterations: int = 2
    init_std: float = 0.5
    min_std: float = 0.1
    context: int = 4  # real frames streamed in before the imagined ones
    repeat: int = 2
    replan: int = 4  # frames of a plan executed before the next search
    # what scores an imagined frame: the model's frame reward, or the task's reward read off the
    # imagined observation (envs.catalog.observed_reward: push reads its puck by colour)
    reward: str = "model"
    # the horizon's last reward counted this many times more: a value of what follows the plan, as
    # if its end state held (a task far longer than the horizon is otherwise judged on its start)
    tail: int = 0

    @classmethod
    def parse(cls, options: str) -> StreamCEMConfig:
        config = super().parse(options)
        if config.tail < 0:
            raise WmSimError(f"cem_stream tail must be >= 0, got {config.tail}")
        if min(config.context, config.repeat, config.replan) < 1:
            raise WmSimError(f"cem_stream options context, repeat, replan must be at least 1, got {config}")
        if config.reward not in REWARDS:
            raise WmSimError(f"cem_stream reward must be one of {', '.join(REWARDS)}, got {config.reward!r}")
        if config.replan > config.horizon * config.repeat:
            raise WmSimError(
                f"cem_stream replan ({config.replan}) cannot exceed the plan's horizon x repeat "
                f"({config.horizon * config.repeat} frames)"
            )
        return config


class StreamPlanner(Policy):
    """Plans by imagined return in the world model's frames; acts from pixels and agent_pos."""

    def __init__(
        self,
        checkpoint: str,
        num_envs: int = 1,
        config: StreamCEMConfig = StreamCEMConfig(),
        seed: int = 0,
        goals: np.ndarray | None = None,
    ):
        """`goals` (num_envs, 2): each row's goal, known at the start; reward=task reads them."""
        from wm_sim.envs.imagination import ImaginationEngine
        from wm_sim.envs.observed_reward import ObservedReward

        from wm_sim.checkpoint import checkpoint_cameras, load_checkpoint

        model, meta = load_checkpoint(checkpoint)
        self.config, self.num_envs = config, num_envs
        self._task_reward: ObservedReward | None = None
        if config.reward == "task":
            task = meta.get("dataset", {}).get("task", "")
            cameras = checkpoint_cameras(meta, [])
            self._task_reward = ObservedReward(task, cameras, goals, num_envs)
            candidates = np.repeat(self._task_reward.goals, config.population, axis=0)  # each row's in turn
            self._candidate_reward = ObservedReward(task, cameras, candidates, num_envs * config.population)
            self._object = self._task_reward.unseen()  # the task object's last place seen, per row
        self.action_dim = model.config.action_dim
        self.engine = ImaginationEngine(model, num_envs * config.population, episode_steps=None)
        self._generator = torch.Generator().manual_seed(seed)
        self._plan = torch.zeros(num_envs, config.horizon, self.action_dim)
        # the frames of the last plan to execute, each planned action held `repeat` of them
        self._due = torch.zeros(num_envs, config.horizon * config.repeat, self.action_dim)
        self._left = 0  # frames of _due not executed yet
        self._frames: list[torch.Tensor] = []  # the last real frames (R, *frame_shape), oldest first
        self._states: list[torch.Tensor] = []
        self._actions: list[torch.Tensor] = []  # the actions taken after each but the newest

    def reset(self, mask: np.ndarray | None = None, seeds: list[int] | None = None) -> None:
        """A reset of any row starts every row's memory of frames afresh (the rows share one context
        length); where the task object was last seen is forgotten for the reset rows alone."""
        self._plan.zero_()
        self._left = 0
        self._frames, self._states, self._actions = [], [], []
        if self._task_reward is not None:
            self._object[slice(None) if mask is None else np.asarray(mask, bool)] = np.nan

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self._remember(obs)
        if self._left == 0:
            self._search()
        action = self._due[:, self.config.replan - self._left]
        self._left -= 1
        self._actions.append(action)
        return action.numpy().astype(np.float32)

    def _remember(self, obs: dict[str, np.ndarray]) -> None:
        self._frames.append(torch.as_tensor(observed_frames(obs["pixels"])))
        self._states.append(torch.as_tensor(np.asarray(obs["agent_pos"], dtype=np.float32)))
        keep = self.config.context
        self._frames, self._states = self._frames[-keep:], self._states[-keep:]
        self._actions = self._actions[-(keep - 1) :] if keep > 1 else []
        if self._task_reward is not None:
            self._see_object()

    def _search(self) -> None:
        c, r, a = self.config, self.num_envs, self.action_dim
        p = c.population
        rows = torch.arange(r * p)
        frames = torch.stack(self._frames, 1).repeat_interleave(p, 0)
        states = torch.stack(self._states, 1).repeat_interleave(p, 0)
        actions = torch.stack(self._actions, 1) if self._actions else torch.zeros(r, 0, a)
        self.engine.reset_rows(rows, frames, states, actions.repeat_interleave(p, 0))
        start = self.engine.get_state()

        seen = None if self._task_reward is None else np.repeat(self._object, p, axis=0)

        def returns_of(candidates: torch.Tensor) -> torch.Tensor:
            self.engine.set_state(start)
            total, last = torch.zeros(r * p), seen
            for t in range(c.horizon):
                step = candidates[:, :, t].reshape(r * p, a)
                for _ in range(c.repeat):
                    reward, last = self._reward(self.engine.step(step), step, last)
                    total += reward
            return (total + c.tail * reward).view(r, p)

        best = cem_search(returns_of, self._plan, c, self._generator)
        self._due = best.repeat_interleave(c.repeat, dim=1)  # (R, H * repeat, A)
        self._left = c.replan
        shift = -(-c.replan // c.repeat)  # planned actions used up, rounded up
        self._plan = torch.cat([best[:, shift:], torch.zeros_like(best[:, :shift])], dim=1)

    def _reward(
        self, out: StepOutput, actions: torch.Tensor, last: np.ndarray | None
    ) -> tuple[torch.Tensor, np.ndarray | None]:
        """One imagined step's rewards (R * P,) and where the task object was seen in it. A row
        whose object no frame has shown yet scores NaN: its search keeps the warm plan."""
        if self._task_reward is None:
            return out.reward.cpu(), None
        reward, last = self._candidate_reward(
            out.pixels.cpu().numpy(), out.agent_pos.cpu().numpy(), actions.numpy(), last
        )
        return torch.from_numpy(reward).float(), last

    def _see_object(self) -> None:
        """Where the newest real frame shows the task object, per row, read as the task reads it
        (the last place seen stands in where the frame hides it)."""
        no_action = np.zeros((self.num_envs, self.action_dim))
        _, self._object = self._task_reward(
            self._frames[-1].numpy(), self._states[-1].numpy(), no_action, self._object
        )
