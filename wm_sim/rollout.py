"""Open-loop imagination: real context frames in, the world model's own predictions from then on.

This is how the evaluation measures drift, and how environments built on the world model advance:
the context frames are encoded once and streamed through the key-value cache, then each predicted
frame's latents and state are fed back as the next input, with the next action.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from wm_sim.data.schema import ACTION_KEY, STATE_KEY
from wm_sim.data.store import EpisodeStore
from wm_sim.media import comparison_frames, side_by_side, to_uint8, write_video
from wm_sim.stream_cache import StreamCache
from wm_sim.world_model import Anchor, Prediction, WorldModel


@dataclass
class Rollout:
    """Predictions for horizons 1..H after the context; row b, column h-1 is horizon h."""

    latents: torch.Tensor  # (B, H, N, C)
    state: torch.Tensor  # (B, H, D), in the dataset's units
    reward: torch.Tensor  # (B, H)
    continue_prob: torch.Tensor  # (B, H)
    anchor: Anchor  # the last context frame: what decode(latents, anchor) composites over

    def frames(self, model: WorldModel) -> torch.Tensor:
        """The predicted frames (B, H, S, S, 3), float in [0, 1]."""
        return model.decode(self.latents, self.anchor, model.normalise_state(self.state))


@torch.no_grad()
def warm_up(
    model: WorldModel, frames: torch.Tensor, state: torch.Tensor, actions: torch.Tensor
) -> tuple[StreamCache, Prediction]:
    """Stream real context through a fresh cache.

    frames (B, K, S, S, 3) uint8, state (B, K, D) in dataset units, actions (B, K, A): the action taken
    at each context frame, the last of which leads to the first predicted frame. Returns the cache
    and the prediction after the context (T = 1).
    """
    b, k = frames.shape[:2]
    cache = model.new_stream(b, frames.device)
    latents = model.encode(frames)  # (B, K, N, C)
    norm_state = model.normalise_state(state)
    for t in range(k):
        pred = model.stream_step(cache, latents[:, t], norm_state[:, t], actions[:, t])
    return cache, pred


@torch.no_grad()
def open_loop(
    model: WorldModel,
    frames: torch.Tensor,
    state: torch.Tensor,
    actions: torch.Tensor,
    context: int,
) -> Rollout:
    """Roll out with recorded actions: the first `context` frames are real, the rest imagined.

    frames (B, K, S, S, 3) uint8 and state (B, K, D) hold at least the context; actions (B, T, A)
    hold the action at every frame from the first, so H = T - context + 1 frames are predicted.
    """
    if context < 1 or actions.shape[1] < context:
        raise ValueError(f"need 1 <= context <= actions, got context={context}, {actions.shape[1]} actions")
    horizon = actions.shape[1] - context + 1
    anchor = model.anchor(frames[:, context - 1], context=frames[:, :context])
    cache, pred = warm_up(model, frames[:, :context], state[:, :context], actions[:, :context])
    out_latents, out_state, out_reward, out_cont = [], [], [], []
    for h in range(horizon):
        action = actions[:, context - 1 + h]  # the action leading to frame h + 1
        if h:
            pred = model.stream_step(cache, pred.latents[:, 0], pred.state[:, 0], action)
        latents = pred.latents[:, 0]
        # a frame reward reads the frame shown; other models' rewards need no decode
        shown = model.reward_head is not None
        seen = model.decode_and_reencode(latents, anchor, pred.state[:, 0])[1] if shown else None
        out_latents.append(latents)
        out_state.append(pred.state[:, 0])
        out_reward.append(model.imagined_reward(pred, seen, action))
        out_cont.append(torch.sigmoid(pred.continue_logit[:, 0]))
    return Rollout(
        latents=torch.stack(out_latents, 1),
        state=model.denormalise_state(torch.stack(out_state, 1)),
        reward=torch.stack(out_reward, 1),
        continue_prob=torch.stack(out_cont, 1),
        anchor=anchor,
    )


@torch.no_grad()
def rollout_video(
    model: WorldModel, store: EpisodeStore, episode: int, cameras: list[str], folder: Path, step: int
) -> Path:
    """An MP4 of one held-out episode (true | predicted | difference; cameras side by side), for
    the experiment log."""
    model.eval()
    first, stop = store.episode_bounds(episode)
    frames = store.read_frames(cameras, first, stop)
    image, state, action = (
        torch.from_numpy(x[None])
        for x in (frames, store.read(STATE_KEY, first, stop), store.read(ACTION_KEY, first, stop))
    )
    context = min(4, len(frames) - 1)
    device = next(model.parameters()).device
    rollout = open_loop(model, image.to(device), state.to(device), action[:, :-1].to(device), context)
    predicted = to_uint8(rollout.frames(model)[0].cpu().numpy())
    folder.mkdir(parents=True, exist_ok=True)
    return write_video(
        folder / f"rollout-{step:07d}.mp4",
        comparison_frames([(side_by_side(frames[context:]), side_by_side(predicted))]),
        fps=min(store.info.fps, 30.0),
    )
