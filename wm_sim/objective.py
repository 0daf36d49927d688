"""The world model's training objective: every loss term of one batch of windows.

One training step sees windows of `window + 1` frames and learns, all at once:
- to reconstruct frames through the tokenizer (pixel L2, two random frames per window), with the
  pixels that differ from the scene's background (the arm, the target) weighted up: they are a few
  percent of the frame and all of its meaning, and an unweighted loss learns them last or never;
- to predict each next frame's latents, state, reward and continue flag from the frames before;
- to do so from its own predictions too (`rollout_passes` more passes, each fed the previous
  pass's detached predictions, so pass k sees up to k steps of its own output), and from
  noise-augmented context latents: both teach the model to pull its own errors back instead of
  compounding them, which is what keeps long rollouts legible.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from wm_sim.data.schema import ACTION_KEY, REWARD_KEY, STATE_KEY, TERMINATED_KEY, frames_of
from wm_sim.data.windows import EpisodeWindows
from wm_sim.world_model import Anchor, Prediction, WorldModel


def losses(
    model: WorldModel,
    batch: dict[str, torch.Tensor],
    context_noise: float,
    rollout_passes: int = 1,
    background: torch.Tensor | None = None,
    foreground_weight: float = 0.0,
    reward_weight: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Every loss term of one batch of windows (B, T+1, ...).

    `background` (S, S, 3) in [0, 1] is the scene without the robot; pixels far from it weigh up to
    1 + foreground_weight in the pixel losses. The reward terms weigh `reward_weight`; state and
    continue terms 0.1.
    """
    pixels = batch["pixels"]  # (B, T+1, S, S, 3) uint8
    target = pixels.float() / 255.0
    weight = pixel_weights(target, background, foreground_weight)  # (B, T+1, S, S, 1)
    latents = model.encode(pixels)  # (B, T+1, N, C)
    if model.training:
        model.observe_latents(latents)
    # An anchored decoder composites over another real frame of the same episode: a random one.
    rows, pick = torch.arange(pixels.shape[0]), torch.randint(0, pixels.shape[1], (pixels.shape[0],))
    anchor = Anchor(latents[rows, pick].detach(), target[rows, pick].movedim(-1, -3))
    # Reconstruct two random frames of each window: decoding all T+1 costs more than it teaches.
    frames = torch.randint(0, pixels.shape[1], (2,))
    state = model.normalise_state(batch["state"])  # (B, T+1, D)
    recon = weighted_mse(model.decode(latents[:, frames], anchor, state[:, frames]), target[:, frames], weight[:, frames])
    action, reward, cont = batch["action"][:, :-1], batch["reward"][:, :-1], 1.0 - batch["terminated"][:, :-1]
    # The encoder learns from reconstruction only: were the dynamics losses to reach it, the
    # easiest way to predict the next latents would be latents that say nothing (a constant).
    latents = latents.detach()
    goal = latents[:, 1:]
    # A frame past the episode's end is padding: its own terms are masked, the transition into it
    # (reward, termination) is real.
    has_next = batch["valid"][:, 1:].float()  # (B, T)
    noise = torch.rand(latents.shape[0], 1, 1, 1, device=latents.device) * context_noise
    inputs = (latents[:, :-1] + noise * torch.randn_like(latents[:, :-1])).clamp(-1, 1)
    first = model(inputs, state[:, :-1], action)
    # Own passes: from frame 1 on, the inputs are the previous pass's own (detached) predictions.
    own_passes, previous = [], first
    for _ in range(rollout_passes):
        own = torch.cat([inputs[:, :1], previous.latents[:, :-1].detach()], dim=1)
        own_state = torch.cat([state[:, :1], previous.state[:, :-1].detach()], dim=1)
        previous = model(own, own_state, action)
        own_passes.append(previous)
    terms = {"recon": recon}
    if model.reward_head is not None:
        # The frame reward learns from real frames only (rollouts show it re-encoded frames).
        error = (model.reward_head(goal, action) - reward).pow(2)
        terms["frame_reward"] = (error * has_next).sum() / has_next.sum().clamp(min=1)
    for name, passes in (("teacher", [first]), ("own", own_passes)):
        per_pass = [_prediction_terms(model, p, goal, state[:, 1:], reward, cont, has_next) for p in passes]
        for key in per_pass[0] if per_pass else ():
            terms[f"{name}_{key}"] = sum(t[key] for t in per_pass) / len(per_pass)
    # Pixels of predicted frames, at one random time step: the decoder learns predicted latents too.
    t = int(torch.randint(0, first.latents.shape[1], (1,)))
    last = previous.latents[:, t]
    decoded = model.decode(last, anchor, previous.state[:, t])
    pixel_error = weighted_mse(decoded, target[:, t + 1], weight[:, t + 1], per_row=True)
    terms["predicted_pixels"] = (pixel_error * has_next[:, t]).sum() / has_next[:, t].sum().clamp(min=1)
    weights = {
        "recon": 1.0,
        "predicted_pixels": 1.0,
        "teacher_reward": reward_weight,
        "own_reward": reward_weight,
        "frame_reward": reward_weight,
    }
    terms["total"] = sum(weights.get(k, 1.0 if "latent" in k else 0.1) * v for k, v in terms.items())
    # Not a loss: the latent error of copying the last frame, the bar teacher_latent must clear.
    terms["copy_latent"] = _masked_mse(latents[:, :-1], goal, has_next)
    return terms


def copying_warning(val: dict[str, float], margin: float = 0.9) -> str | None:
    """A warning when validation shows the dynamics predicting the next latents no better than
    copying the last frame's (teacher_latent above `margin` x copy_latent), else None.

    Their losses then look small and the run looks healthy, while every imagined frame repeats
    the context: what a push model did for 4,000 steps.
    """
    teacher, copy = val.get("teacher_latent"), val.get("copy_latent")
    if teacher is None or not copy or teacher < margin * copy:
        return None
    return (
        f"the dynamics predict the next latents about as well as copying the last frame "
        f"(val teacher_latent {teacher:.5f}, copy {copy:.5f}): imagined frames will barely move; "
        "if this lasts, try training.teacher_forced_steps (no own passes at first), "
        "model.normalised_latents=true and a higher training.lr (docs/model.md)"
    )


def _prediction_terms(
    model: WorldModel,
    pred: Prediction,
    goal: torch.Tensor,
    state: torch.Tensor,
    reward: torch.Tensor,
    cont: torch.Tensor,
    has_next: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """How far one pass's predictions are from the next frames' latents, states, rewards and flags
    (a frame-reward model's reward is not the pass's: see losses)."""
    terms = {
        "latent": _masked_mse(pred.latents, goal, has_next),
        "state": _masked_mse(model.state_difference(pred.state, state), torch.zeros_like(state), has_next),
        "continue": F.binary_cross_entropy_with_logits(pred.continue_logit, cont),
    }
    if model.reward_head is None:
        terms["reward"] = F.mse_loss(pred.reward, reward)
    return terms


def pixel_weights(
    target: torch.Tensor, background: torch.Tensor | None, foreground_weight: float
) -> torch.Tensor:
    """Per-pixel loss weights (..., S, S, 1): 1 on the background, up to 1 + foreground_weight off it.

    A pixel counts fully as foreground once any channel is 0.1 away from the background's.
    """
    if background is None or foreground_weight == 0:
        return torch.ones_like(target[..., :1])
    distance = (target - background).abs().amax(dim=-1, keepdim=True)  # (..., S, S, 1)
    return 1.0 + foreground_weight * (distance / 0.1).clamp(max=1.0)


def weighted_mse(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, per_row: bool = False
) -> torch.Tensor:
    """Weighted mean squared error of frames (..., S, S, 3), normalised by the weights' sum."""
    error = (pred - target).pow(2) * weight
    dims = tuple(range(1, error.dim())) if per_row else tuple(range(error.dim()))
    return error.sum(dims) / (weight.expand_as(error).sum(dims))


def _masked_mse(pred: torch.Tensor, goal: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the (B, T) steps where mask is 1."""
    error = (pred - goal).pow(2).flatten(2).mean(-1)  # (B, T)
    return (error * mask).sum() / mask.sum().clamp(min=1)


def to_batch(
    windows: list[dict[str, np.ndarray]], cameras: list[str], device: torch.device
) -> dict[str, torch.Tensor]:
    """Stack dataset windows into the tensors `losses` takes (pixels (B, T+1, *frame_shape))."""
    stack = {key: np.stack([w[key] for w in windows]) for key in windows[0]}
    return {
        "pixels": torch.from_numpy(frames_of(stack, cameras)).to(device),
        "state": torch.from_numpy(stack[STATE_KEY]).to(device),
        "action": torch.from_numpy(stack[ACTION_KEY]).to(device),
        "reward": torch.from_numpy(stack[REWARD_KEY]).to(device),
        "terminated": torch.from_numpy(stack[TERMINATED_KEY].astype(np.float32)).to(device),
        "valid": torch.from_numpy(stack["valid"]).to(device),
    }


class Objective(nn.Module):
    """The training losses as a module's forward: one call computes every term of a batch."""

    def __init__(
        self,
        model: WorldModel,
        context_noise: float,
        rollout_passes: int,
        background: torch.Tensor,
        foreground_weight: float,
        reward_weight: float,
    ):
        super().__init__()
        self.model = model
        self.context_noise = context_noise
        self.rollout_passes = rollout_passes
        self.foreground_weight = foreground_weight
        self.reward_weight = reward_weight
        self.register_buffer("background", background)  # (S, S, 3)

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        context_noise: float | None = None,
        rollout_passes: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """The loss terms; `context_noise` and `rollout_passes` override the training ones
        (validation uses no noise; teacher-forced steps no own passes)."""
        noise = self.context_noise if context_noise is None else context_noise
        return losses(
            self.model,
            batch,
            noise,
            self.rollout_passes if rollout_passes is None else rollout_passes,
            self.background,
            self.foreground_weight,
            self.reward_weight,
        )


@torch.no_grad()
def validate(
    objective: Objective, val_set: EpisodeWindows, cameras: list[str], batch_size: int, device
) -> dict[str, float]:
    """Mean loss terms over (up to 8 batches of) the validation windows, without context noise."""
    if len(val_set) == 0:
        return {}
    objective.model.eval()
    picks = np.linspace(0, len(val_set) - 1, min(len(val_set), 8 * batch_size)).astype(int)
    sums: dict[str, float] = {}
    # The same random frames at every validation, and the training RNG left untouched by it.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for chunk in np.array_split(picks, max(1, len(picks) // batch_size)):
            terms = objective(to_batch([val_set[int(i)] for i in chunk], cameras, device), context_noise=0.0)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(chunk)
    return {k: v / len(picks) for k, v in sums.items()}
