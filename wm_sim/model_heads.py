"""The world model's small heads: the robot's state transition and the two rewards.

Each is a small net fitted on far more rows than the transformer's windows hold
(wm_sim.head_fitting), then read by the model (wm_sim.world_model): the transition predicts
s_t+1 from (s_t, a_t) and the transformer reads it; a FrameReward reads r_t+1 off the frame
shown; a SceneReward gives the reward of an imagined state in the scene a real frame shows, what
the latent planner and the latent actor imagine with.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from wm_sim.layout_kernels import InplaceGELU


def wrap_angle(x: torch.Tensor) -> torch.Tensor:
    """Angles into [-pi, pi)."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


class StateTransition(nn.Module):
    """s_t+1 from (s_t, a_t) in raw units: an MLP predicting the change, in typical one-step changes.

    Entries listed in `periodic` are angles wrapped into [-pi, pi) (a joint that turns freely):
    the MLP reads their sine and cosine, so crossing pi is no jump, and changes wrap too.
    """

    def __init__(self, state_dim: int, action_dim: int, periodic: tuple[int, ...], width: int = 256):
        super().__init__()
        self.periodic = list(periodic)
        self.features = state_dim + 2 * len(self.periodic)  # what encode() gives per state
        self.net = nn.Sequential(
            nn.Linear(self.features + action_dim, width),
            InplaceGELU(),
            nn.Linear(width, width),
            InplaceGELU(),
            nn.Linear(width, state_dim),
        )
        # Fitted from the data (wm_sim.head_fitting.fit_transition) and saved with the weights: the
        # state's spread, and the spread of its one-step change, per entry.
        self.register_buffer("state_scale", torch.ones(state_dim))
        self.register_buffer("step_scale", torch.ones(state_dim))

    def encode(self, state: torch.Tensor) -> torch.Tensor:
        """Raw state (..., D) -> what the MLP reads about it (..., D + 2P)."""
        angles = state[..., self.periodic]
        return torch.cat([state / self.state_scale, torch.sin(angles), torch.cos(angles)], dim=-1)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Raw state (..., D), action (..., A) -> raw next state (..., D).

        Always in float32, also under bf16 autocast: a state is integrated step after step, and
        bf16's 8-bit mantissa moved a joint by up to 0.07 rad in one step (the MLP is a sliver of
        a step's cost)."""
        with torch.autocast(state.device.type, enabled=False):
            state, action = state.float(), action.float()
            change = self.net(torch.cat([self.encode(state), action], dim=-1)) * self.step_scale
            return self.wrap(state + change)

    def wrap(self, state: torch.Tensor) -> torch.Tensor:
        """Raw states (or changes) with the periodic entries wrapped into [-pi, pi)."""
        if not self.periodic:
            return state
        out = state.clone()
        out[..., self.periodic] = wrap_angle(state[..., self.periodic])
        return out


class FrameReward(nn.Module):
    """r_t+1 from the latents of frame t+1 and the action a_t: what a task's reward depends on.

    A reward read off the transformer's features (which also carry motion) learns the data's
    shortcuts: where an arm that stops has almost always stopped on its target, "still" reads as
    "near", and a still arm far from the target scores as if it were on it. One frame shows where
    things are and nothing of how they move, so this head has to locate them; the action pays for
    the control cost. It learns from real frames only (wm_sim.objective), and in rollouts reads the
    frame shown, encoded again (WorldModel.decode_and_reencode).
    """

    def __init__(self, tokens: int, latent_dim: int, action_dim: int, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(tokens * latent_dim + 2 * action_dim, width),
            InplaceGELU(),
            nn.Linear(width, width),
            InplaceGELU(),
            nn.Linear(width, 1),
        )
        # The least and the most reward of the frames it was fitted on (wm_sim.head_fitting.fit_frame_reward),
        # saved with the weights: what it reads off imagined frames stays inside them.
        self.register_buffer("low", torch.tensor(-math.inf))
        self.register_buffer("high", torch.tensor(math.inf))

    def forward(self, latents: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """latents (..., N, C) of the frame after `action` (..., A) -> reward (...), in float32
        also under bf16 autocast (a per-step control cost is a few thousandths)."""
        with torch.autocast(latents.device.type, enabled=False):
            x = torch.cat([latents.float().flatten(-2), action.float(), action.float().square()], dim=-1)
            return self.net(x).squeeze(-1)

    def read(self, latents: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The reward of an imagined frame: forward, kept inside the rewards the data holds.

        A policy trained in imagination seeks out frames unlike any real one (an arm folded
        further than the real one goes, half drawn), where the head extrapolates; on reacher it
        read rewards above the best the task pays (+0.15 per step where no step pays above 0).
        """
        return torch.clamp(self(latents, action), self.low, self.high)


class SceneReward(nn.Module):
    """r_t+1 from a real frame of the scene, the robot's state s_t+1 and the action a_t, as

        r = offset - gain * |effector(s_t+1) - goal(frame)| - control * |a_t|^2

    What a planner needs: the reward of a state it has only imagined, in the scene the camera
    shows now. Two small nets, each with one job: `effector` maps the robot's state to a point
    (where its hand is), `goal` finds a point in the frame (where the task wants the hand: a
    small conv net whose channels each end in a spatial soft-argmax, then an MLP over those
    positions). The reward is their distance, so it is exact in the last centimetres, where a
    reward MLP over keypoints and state was off by as much as the last 2 cm pay (0.017 per step
    on unseen scenes: its CEM stopped 2-12 cm off). Fitted in two stages
    (wm_sim.head_fitting.fit_scene_reward): the effector and one goal per recorded episode from the
    rewards, then the goal net from every frame of each episode, wherever the arm stands in it.
    The points are in the reward's own units; nothing about the task is written here.
    """

    def __init__(
        self, image_size: int, state_dim: int, action_dim: int, periodic: tuple[int, ...],
        first_camera: bool = False, keypoints: int = 16, width: int = 256,
    ):  # fmt: skip
        super().__init__()
        self.periodic = list(periodic)
        self.first_camera = first_camera  # frames (B, K, S, S, 3): the goal is read off camera 0
        self.keypoint_net = nn.Sequential(  # at half resolution: positions, not textures
            nn.Conv2d(3, 32, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(32, keypoints, 3, padding=1),
        )
        side = torch.linspace(-1.0, 1.0, image_size // 2)
        self.register_buffer("grid_x", side.repeat(image_size // 2), persistent=False)
        self.register_buffer("grid_y", side.repeat_interleave(image_size // 2), persistent=False)
        self.goal_net = nn.Sequential(nn.Linear(2 * keypoints, 128), nn.GELU(), nn.Linear(128, 2))
        self.state_features = state_dim + 2 * len(self.periodic)
        self.effector = nn.Sequential(
            nn.Linear(self.state_features, width),
            nn.GELU(),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Linear(width, 2),
        )
        self.coefficients = nn.Parameter(torch.tensor([1.0, 1.0, 0.0]))  # gain, control, offset
        # The state's spread per entry and the least and most reward of the fitted frames, saved
        # with the weights (wm_sim.head_fitting.fit_scene_reward), as FrameReward keeps its bounds.
        self.register_buffer("state_scale", torch.ones(state_dim))
        self.register_buffer("low", torch.tensor(-math.inf))
        self.register_buffer("high", torch.tensor(math.inf))

    def goal(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) uint8 frames (or (B, K, S, S, 3): the first camera's) -> (B, 2): the point
        the scene asks the effector to reach."""
        if self.first_camera:
            frames = frames[:, 0]
        x = self.keypoint_net(frames.permute(0, 3, 1, 2).float() / 255.0)
        weights = x.flatten(2).softmax(dim=-1)  # (B, K, S/2 * S/2)
        return self.goal_net(torch.cat([weights @ self.grid_x, weights @ self.grid_y], dim=-1))

    def encode_state(self, state: torch.Tensor) -> torch.Tensor:
        """Raw state (..., D) -> what the nets read about it (..., D + 2P): periodic entries as sin, cos."""
        angles = state[..., self.periodic]
        return torch.cat([state / self.state_scale, torch.sin(angles), torch.cos(angles)], dim=-1)

    def forward(self, goal: torch.Tensor, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """goal (..., 2) of a scene, raw state s_t+1 (..., D), action a_t (..., A) -> reward (...)."""
        gain, control, offset = self.coefficients
        gap = self.effector(self.encode_state(state)) - goal
        distance = gap.square().sum(-1).add(1e-8).sqrt()  # smooth at zero, for the planner's gradient
        return offset - gain * distance - control * action.square().sum(-1)

    def read(self, goal: torch.Tensor, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """forward, kept inside the rewards the data holds: a planner seeks out the head's errors."""
        return torch.clamp(self(goal, state, action), self.low, self.high)
