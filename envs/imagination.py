"""A batch of imagined episodes advancing together: the engine under both world-model envs.

Each row holds a "pending" frame: the latents and state of the frame the agent is looking at,
whose action has not been chosen yet. `step(actions)` streams every row's pending frame with its
action through the key-value cache in one batched forward pass, and the prediction becomes the new
pending frame. A reset streams a real context (frames, states, actions) into fresh cache rows and
leaves its last frame pending, so the first observation of an episode is a real camera image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wm_sim.fork_safety import one_thread_in_forked_children
from wm_sim.host_memory import retain_freed_memory
from wm_sim.world_model import Anchor, WorldModel


@dataclass
class StepOutput:
    """One batched step: numpy-free tensors on the model's device."""

    pixels: torch.Tensor  # (B, *frame_shape) uint8: (B, S, S, 3), or (B, K, S, S, 3) with K cameras
    agent_pos: torch.Tensor  # (B, D) float32, dataset units
    reward: torch.Tensor  # (B,) float32
    terminated: torch.Tensor  # (B,) bool
    truncated: torch.Tensor  # (B,) bool
    uncertainty: torch.Tensor  # (B,) float32


class ImaginationEngine:
    """B independent imagined episodes of one world model, stepped in one forward pass."""

    def __init__(
        self, model: WorldModel, batch: int, episode_steps: int | None, device: torch.device | str = "cpu"
    ):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        one_thread_in_forked_children()  # else AsyncVectorEnv(context="fork") workers hang (fork_safety)
        if self.device.type == "cpu":
            retain_freed_memory()  # else a step usually faults its activations in again (host_memory)
        self.batch = batch
        self.episode_steps = episode_steps  # None: a stream, never truncated
        c = model.config
        self.cache = model.new_stream(batch, self.device)
        self.latents = torch.zeros(batch, c.tokens, c.latent_dim, device=self.device)  # pending frame
        self.norm_state = torch.zeros(batch, c.state_dim, device=self.device)
        self.pixels = torch.zeros(batch, *c.frame_shape, dtype=torch.uint8, device=self.device)
        self.agent_pos = torch.zeros(batch, c.state_dim, device=self.device)
        self.steps = torch.zeros(batch, dtype=torch.long, device=self.device)
        # Each row's last real context frame, which an anchored decoder composites over.
        anchor_pixels = torch.zeros(batch, *c.frame_shape, device=self.device).movedim(-1, -3)
        # with anchor detail, the decoder's share of each row's anchor pixels, computed once per
        # episode (Decoder.anchor_term): (B, [K,] 16, S/2, S/2) in channels-last memory
        detail = None
        if model.decoder.anchor_detail:
            half, channels = c.image_size // 2, model.decoder.detail.out_channels
            shape = (batch, *c.frame_shape[:-3], half, half, channels)
            detail = torch.zeros(shape, device=self.device).movedim(-1, -3)
        self.anchor = Anchor(  # (B, [K,] 3, S, S) in (B, [K,] S, S, 3) memory: where the decoder blends
            torch.zeros_like(self.latents), anchor_pixels, detail
        )
        # Predicted proprioception is kept inside these bounds (the observation space's), if set.
        self.state_low: torch.Tensor | None = None
        self.state_high: torch.Tensor | None = None

    def bound_state(self, low: np.ndarray, high: np.ndarray) -> None:
        self.state_low = torch.as_tensor(low, dtype=torch.float32, device=self.device)
        self.state_high = torch.as_tensor(high, dtype=torch.float32, device=self.device)

    def _bounded(self, agent_pos: torch.Tensor) -> torch.Tensor:
        if self.state_low is None:
            return agent_pos
        return torch.maximum(torch.minimum(agent_pos, self.state_high), self.state_low)

    @torch.inference_mode()
    def reset_rows(
        self, rows: torch.Tensor, frames: torch.Tensor, state: torch.Tensor, actions: torch.Tensor
    ) -> None:
        """Start new episodes in `rows` (indices, k of them) from real contexts.

        frames (k, T, *frame_shape) uint8, state (k, T, D) dataset units, actions (k, T-1, A): the
        actions taken between the context frames. The last frame is left pending.
        """
        k, length = frames.shape[:2]
        frames, state, actions = (x.to(self.device) for x in (frames, state, actions))
        fresh = self.model.new_stream(k, self.device)
        latents = self.model.encode(frames)  # (k, K, N, C)
        norm_state = self.model.normalise_state(state.float())
        for t in range(length - 1):
            self.model.stream_step(fresh, latents[:, t], norm_state[:, t], actions[:, t].float())
        # the context streamed in float32 whatever the cache keeps (a bf16 cache: see acceleration)
        self.cache.keys[:, rows] = fresh.keys.to(self.cache.keys.dtype)
        self.cache.values[:, rows] = fresh.values.to(self.cache.values.dtype)
        self.cache.time[rows] = fresh.time
        self.latents[rows] = latents[:, -1]
        self.norm_state[rows] = norm_state[:, -1]
        self.pixels[rows] = frames[:, -1]
        self.anchor.latents[rows] = latents[:, -1]
        self.anchor.pixels[rows] = frames[:, -1].movedim(-1, -3).float() / 255.0
        if self.anchor.detail is not None:  # with anchor memory, of the earlier context frames too
            fresh = Anchor(latents[:, -1], self.anchor.pixels[rows], earlier=self.model.earlier_frames(frames))
            self.anchor.detail[rows] = self.model.anchor_detail_term(fresh).to(self.anchor.detail.dtype)
        self.agent_pos[rows] = self._bounded(state[:, -1].float())
        self.steps[rows] = 0

    @torch.inference_mode()
    def step(self, actions: torch.Tensor) -> StepOutput:
        """Advance every row by one frame under actions (B, A) in [-1, 1]."""
        actions = actions.to(self.device).float()
        pred = self.model.stream_step(self.cache, self.latents, self.norm_state, actions)
        self.latents, self.norm_state = pred.latents[:, 0], pred.state[:, 0]
        self.pixels, seen = self.model.decode_and_reencode(self.latents, self.anchor, self.norm_state)
        self.agent_pos = self._bounded(self.model.denormalise_state(self.norm_state))
        self.steps += 1
        # How far the prediction sits off what the tokenizer can produce: re-encoding the decoded
        # frame should give back the same latents; it grows as a rollout leaves the data it knows.
        uncertainty = F.mse_loss(seen, self.latents, reduction="none").mean((1, 2))
        reward = self.model.imagined_reward(pred, seen, actions)
        return StepOutput(
            pixels=self.pixels,
            agent_pos=self.agent_pos,
            reward=reward.float(),
            terminated=torch.sigmoid(pred.continue_logit[:, 0]) < 0.5,
            truncated=self.steps >= self.episode_steps
            if self.episode_steps is not None
            else torch.zeros_like(self.steps, dtype=torch.bool),
            uncertainty=uncertainty.float(),
        )

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """The live tensors that decide future frames, by the names get_state gives them."""
        return {
            "keys": self.cache.keys,
            "values": self.cache.values,
            "time": self.cache.time,
            "latents": self.latents,
            "norm_state": self.norm_state,
            "pixels": self.pixels,
            "agent_pos": self.agent_pos,
            "steps": self.steps,
            "anchor_latents": self.anchor.latents,
            "anchor_pixels": self.anchor.pixels,
        } | ({} if self.anchor.detail is None else {"anchor_detail": self.anchor.detail})

    def get_state(self) -> dict[str, Any]:
        """Everything that decides future frames, copied: set_state of it forks the simulator."""
        return {name: tensor.clone() for name, tensor in self._state_tensors().items()}

    def check_state(self, state: Any) -> None:
        """A ValueError naming what is off, unless `state` is a get_state of a batch like this one.

        Checked whole before anything is restored, so a refused state leaves the batch as it was.
        """
        live = self._state_tensors()
        if not isinstance(state, dict) or set(state) != set(live):
            got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"not a simulator state (from get_state): expected keys {sorted(live)}, got {got}"
            )
        for name, tensor in live.items():
            value = state[name]
            if (
                not isinstance(value, torch.Tensor)
                or value.shape != tensor.shape
                or value.dtype != tensor.dtype
            ):
                shown = (
                    f"{value.dtype} {tuple(value.shape)}"
                    if isinstance(value, torch.Tensor)
                    else type(value).__name__
                )
                raise ValueError(
                    f"state[{name!r}] must be a {tensor.dtype} tensor of shape {tuple(tensor.shape)} "
                    f"(a get_state of this batch), got {shown}"
                )

    def set_state(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.cache.keys.copy_(state["keys"])
        self.cache.values.copy_(state["values"])
        self.cache.time.copy_(state["time"])
        for name in ("latents", "norm_state", "pixels", "agent_pos", "steps"):
            setattr(self, name, state[name].clone().to(self.device))
        # in place, like the cache: a captured CUDA graph reads these very buffers
        self.anchor.latents.copy_(state["anchor_latents"])
        self.anchor.pixels.copy_(state["anchor_pixels"])
        if self.anchor.detail is not None:
            self.anchor.detail.copy_(state["anchor_detail"])


def stack_contexts(contexts: dict[str, torch.Tensor], picks: np.ndarray) -> tuple[torch.Tensor, ...]:
    """frames, state, actions-between-frames of bundled contexts `picks`."""
    index = torch.as_tensor(picks, dtype=torch.long)
    return contexts["frames"][index], contexts["state"][index], contexts["action"][index][:, :-1]
