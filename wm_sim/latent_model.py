"""The latent model: what the planner and the latent actor imagine with.

A world model's state transition (s_t, a_t) -> s_t+1 and its scene reward (the goal a real frame
shows, s_t+1, a_t) -> r_t+1, without the transformer and without frames. A planner evaluates
thousands of imagined action sequences per real step; through the transformer, decoding and
re-encoding every frame, one batch of 256 sequences costs ~150 ms a step on a 2-core CPU, so a
plan of 12 steps and 4 refits would take seconds. Here the scene is read once per real step from
the frame the camera shows (its goal point), the robot's state is rolled out by the transition,
and a step of a whole population is two small MLPs: the same imagination, in latent space.

What it cannot imagine: anything the state does not hold and the scene does not show as fixed.
A target that stays put is read off the frame; a puck that moves when pushed is not in the state,
so a contact task needs the transformer's frames (or a state that holds the object).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from wm_sim.errors import WmSimError
from wm_sim.model_heads import SceneReward, StateTransition
from wm_sim.world_model import WorldModel


class LatentModel(nn.Module):
    """A world model's state transition and scene reward, shared (not copied) with it."""

    def __init__(self, transition: StateTransition, scene_reward: SceneReward):
        super().__init__()
        self.transition, self.scene_reward = transition, scene_reward

    @classmethod
    def of(cls, model: WorldModel, source: str = "the world model") -> LatentModel:
        """The latent model of `model`; a model without the two parts is one clear error."""
        if model.transition is None or model.scene_reward is None:
            raise WmSimError(
                f"{source} has no state transition and scene reward to plan with (model.transition="
                f"{model.config.transition}, model.scene_reward={model.config.scene_reward}); train one "
                "with model.transition=true model.scene_reward=true, or add them with init="
            )
        return cls(model.transition, model.scene_reward).eval()

    def goal(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) uint8 real frames -> (B, 2): the goal point of the scene they show."""
        return self.scene_reward.goal(frames)

    def step(
        self, goal: torch.Tensor, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One imagined step of raw states (B, D) under actions (B, A) -> (next state, reward (B,))."""
        next_state = self.transition(state, action)
        return next_state, self.scene_reward.read(goal, next_state, action)

    def returns(self, goal: torch.Tensor, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Imagined returns (B,) of action sequences (B, H, A) from raw states (B, D) in scenes (B, 2)."""
        total = torch.zeros(actions.shape[0], dtype=actions.dtype, device=actions.device)
        for t in range(actions.shape[1]):
            state, reward = self.step(goal, state, actions[:, t])
            total = total + reward
        return total
