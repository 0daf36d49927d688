"""The policy interface every policy of this project implements: batched, resettable per row."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Policy(ABC):
    """Maps a batch of observations to a batch of normalised actions in [-1, 1].

    Observations are dicts of arrays with a leading batch axis of `num_envs` rows
    (``{"pixels": (B, H, W, 3) uint8, "agent_pos": (B, D) float32}``), as a Gymnasium vector
    env returns them. `reset(mask)` forgets what rows `mask` remembered, at episode starts.
    """

    num_envs: int
    action_dim: int
    kind: str = ""  # the name a saved policy is restored by; "" for policies that cannot be saved

    def params(self) -> dict:
        """JSON-serialisable constructor arguments saved with the policy."""
        return {}

    def tensors(self) -> dict:
        """Named weights (torch tensors) saved with the policy, in safetensors."""
        return {}

    @abstractmethod
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(num_envs, action_dim) float32 actions for the current observations."""

    def reset(self, mask: np.ndarray | None = None, seeds: list[int] | None = None) -> None:  # noqa: B027 (stateless policies keep this no-op)
        """Start new episodes for the rows in `mask` (all rows when None), optionally reseeding them."""
