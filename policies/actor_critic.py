"""An actor-critic that acts from what a real robot has: a camera image and proprioception.

The policy reads an observation through the world model's eyes: the encoder's latent tokens of the
frame and the normalised agent_pos. In imagination those are exactly the latents the dynamics
predicts, so training never decodes a frame; in MuJoCo, or on a robot, the same encoder reads the
real camera image. The encoder's weights are saved with the policy, so a policy file stands alone.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
from wm_sim.policies.base import Policy

from wm_sim.data.schema import observed_frames
from wm_sim.tokenizer import Encoder
from wm_sim.world_model import WorldModel, WorldModelConfig


@dataclass(frozen=True)
class ActorCriticConfig:
    """Sizes of the actor and critic MLPs; saved with every policy."""

    hidden: int = 256
    layers: int = 2
    init_std: float = 0.6  # exploration noise at the start, in action units
    min_std: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(inputs: int, hidden: int, layers: int, outputs: int) -> nn.Sequential:
    sizes = [inputs] + [hidden] * layers
    body: list[nn.Module] = [nn.LayerNorm(inputs)]
    for a, b in itertools.pairwise(sizes):
        body += [nn.Linear(a, b), nn.ELU()]
    return nn.Sequential(*body, nn.Linear(sizes[-1], outputs))


class ActorCritic(nn.Module):
    """features (B, F) -> a Gaussian over actions (B, A) (mean in [-1, 1]) and a value (B,)."""

    def __init__(self, feature_dim: int, action_dim: int, config: ActorCriticConfig = ActorCriticConfig()):
        super().__init__()
        self.config, self.feature_dim, self.action_dim = config, feature_dim, action_dim
        self.actor = _mlp(feature_dim, config.hidden, config.layers, action_dim)
        self.critic = _mlp(feature_dim, config.hidden, config.layers, 1)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(config.init_std)))
        nn.init.zeros_(self.actor[-1].bias)
        self.actor[-1].weight.data.mul_(0.01)  # start near the zero action: small control cost

    def distribution(self, features: torch.Tensor) -> torch.distributions.Normal:
        mean = torch.tanh(self.actor(features))
        std = self.log_std.exp().clamp(min=self.config.min_std).expand_as(mean)
        return torch.distributions.Normal(mean, std)

    def value(self, features: torch.Tensor) -> torch.Tensor:
        return self.critic(features).squeeze(-1)


def policy_features(latents: torch.Tensor, norm_state: torch.Tensor) -> torch.Tensor:
    """latents (B, N, C) and normalised agent_pos (B, D) -> features (B, N*C + D)."""
    return torch.cat([latents.flatten(1), norm_state], dim=-1)


def feature_dim(config: WorldModelConfig) -> int:
    return config.tokens * config.latent_dim + config.state_dim


class ObservationEncoder(nn.Module):
    """The world model's frame encoder and state normalisation, copied out of it."""

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.image_size, config.grid, config.latent_dim, config.tokenizer_width)
        self.register_buffer("state_mean", torch.zeros(config.state_dim))
        self.register_buffer("state_std", torch.ones(config.state_dim))

    @classmethod
    def from_world_model(cls, model: WorldModel) -> ObservationEncoder:
        out = cls(model.config)
        out.encoder.load_state_dict(model.encoder.state_dict())
        out.state_mean.copy_(model.state_mean)
        out.state_std.copy_(model.state_std)
        return out.eval()

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor, agent_pos: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) uint8 and (B, D) -> features (B, F)."""
        latents = self.encoder(pixels)
        return policy_features(latents, (agent_pos.float() - self.state_mean) / self.state_std)


class ActorCriticPolicy(Policy):
    """The Policy interface over an ActorCritic: mean actions by default, samples if `stochastic`."""

    kind = "actor_critic"

    def __init__(
        self,
        net: ActorCritic,
        observer: ObservationEncoder,
        num_envs: int = 1,
        stochastic: bool = False,
        seed: int = 0,
    ):
        self.net, self.observer = net.eval(), observer.eval()
        self.num_envs, self.action_dim = num_envs, net.action_dim
        self.stochastic = stochastic
        self._generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        pixels = torch.as_tensor(observed_frames(obs["pixels"]))
        agent_pos = torch.as_tensor(np.asarray(obs["agent_pos"], dtype=np.float32))
        dist = self.net.distribution(self.observer(pixels, agent_pos))
        action = dist.mean
        if self.stochastic:
            action = action + dist.stddev * torch.randn(action.shape, generator=self._generator)
        return action.clamp(-1.0, 1.0).numpy().astype(np.float32)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            **{f"net.{k}": v for k, v in self.net.state_dict().items()},
            **{f"observer.{k}": v for k, v in self.observer.state_dict().items()},
        }

    def params(self) -> dict:
        return {
            "net": self.net.config.to_dict(),
            "feature_dim": self.net.feature_dim,
            "action_dim": self.net.action_dim,
            "world_model": self.observer.config.to_dict(),
        }

    @classmethod
    def restore(
        cls, params: dict, tensors: dict[str, torch.Tensor], num_envs: int, seed: int
    ) -> ActorCriticPolicy:
        net = ActorCritic(params["feature_dim"], params["action_dim"], ActorCriticConfig(**params["net"]))
        observer = ObservationEncoder(WorldModelConfig(**params["world_model"]))
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
        observer.load_state_dict(
            {k[9:]: v for k, v in tensors.items() if k.startswith("observer.")}, strict=True
        )
        return cls(net, observer, num_envs=num_envs, seed=seed)
