"""An actor that acts from the scene's goal and proprioception, trained in the latent model.

It reads a camera frame the way the world model's scene reward does (SceneReward.goal: the point
the scene asks the effector to reach) and the robot's state, sees where the scene reward puts
its effector and how far that is from the goal, and outputs a normalised action. The scene
reward's nets are copied out of the world model with the policy, so a policy file stands alone;
in MuJoCo, or on a robot, it reads the real camera image each step.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
from wm_sim.policies.base import Policy

from wm_sim.data.schema import observed_frames
from wm_sim.model_heads import SceneReward


@dataclass(frozen=True)
class LatentActorConfig:
    """Size of the actor MLP; saved with every policy."""

    hidden: int = 256
    layers: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


class LatentActor(nn.Module):
    """(goal (B, 2), raw state (B, D)) -> actions (B, A) in [-1, 1]."""

    def __init__(self, scene: SceneReward, action_dim: int, config: LatentActorConfig = LatentActorConfig()):
        super().__init__()
        self.config, self.action_dim = config, action_dim
        self.scene = scene  # its goal net, effector and state scale
        inputs = 6 + scene.state_features  # goal, effector, their gap, the state
        # The points' spread over recorded states (set by train_latent_actor, saved with the
        # policy): in the reward's units they span ~0.1, and the last centimetres of a gap that
        # small were lost to the net (measured: a 200-step imagined return of -44 after 250
        # updates unscaled, -12 scaled)
        self.register_buffer("point_scale", torch.ones(2))
        sizes = [inputs] + [config.hidden] * config.layers
        body: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            body += [nn.Linear(a, b), nn.ELU()]
        self.net = nn.Sequential(*body, nn.Linear(sizes[-1], action_dim))
        nn.init.zeros_(self.net[-1].bias)
        self.net[-1].weight.data.mul_(0.01)  # start near the zero action: small control cost

    def forward(self, goal: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        features = self.scene.encode_state(state)
        effector = self.scene.effector(features)
        points = torch.cat([goal, effector, goal - effector], dim=-1) / self.point_scale.repeat(3)
        return torch.tanh(self.net(torch.cat([points, features], dim=-1)))


class LatentActorPolicy(Policy):
    """The Policy interface over a LatentActor: the goal each frame shows, then the actor."""

    kind = "latent_actor"

    def __init__(self, actor: LatentActor, num_envs: int = 1):
        self.actor = actor.eval()
        self.num_envs, self.action_dim = num_envs, actor.action_dim

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        goal = self.actor.scene.goal(torch.as_tensor(observed_frames(obs["pixels"])))
        state = torch.as_tensor(np.asarray(obs["agent_pos"], dtype=np.float32))
        return self.actor(goal, state).numpy().astype(np.float32)

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.actor.state_dict())

    def params(self) -> dict:
        s = self.actor.scene
        return {
            "net": self.actor.config.to_dict(),
            "action_dim": self.actor.action_dim,
            "scene": {
                "image_size": int(s.grid_x.numel() ** 0.5) * 2,
                "state_dim": int(s.state_scale.numel()),
                "periodic": list(s.periodic),
                "keypoints": int(s.keypoint_net[-1].out_channels),
            },
        }

    @classmethod
    def restore(
        cls, params: dict, tensors: dict[str, torch.Tensor], num_envs: int, seed: int
    ) -> LatentActorPolicy:
        scene = params["scene"]
        reward = SceneReward(
            int(scene["image_size"]), int(scene["state_dim"]), int(params["action_dim"]),
            tuple(scene["periodic"]), keypoints=int(scene["keypoints"]),
        )  # fmt: skip
        actor = LatentActor(reward, int(params["action_dim"]), LatentActorConfig(**params["net"]))
        actor.load_state_dict(tensors, strict=True)
        return cls(actor, num_envs=num_envs)
