"""`wm-sim train`: fit the world model to a collected dataset, with checkpoints and resume.

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

import faulthandler
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from wm_sim.checkpoint import (
    CONTEXT_FRAMES,
    LAST,
    RUN_CONTEXTS,
    load_checkpoint,
    load_train_state,
    lock_run_directory,
    save_checkpoint,
    start_contexts,
)
from wm_sim.data.angles import episode_states, wrapped_entries
from wm_sim.data.schema import ACTION_KEY, REWARD_KEY, STATE_KEY, TERMINATED_KEY, frames_of, image_key
from wm_sim.data.store import EpisodeStore
from wm_sim.data.windows import EpisodeWindows, episodes_with_frames
from wm_sim.errors import WmSimError
from wm_sim.media import comparison_frames, side_by_side, to_uint8, write_video
from wm_sim.metrics import background_frame
from wm_sim.rollout import open_loop
from wm_sim.tracking import Tracker, WandbConfig, new_run_id
from wm_sim.world_model import Anchor, Prediction, WorldModel, WorldModelConfig


@dataclass
class ModelSize:
    """The size of the world model (a file of configs/model/); the data fixes the rest of its shape."""

    grid: int = field(default=4, metadata={"help": "latent tokens per frame: grid x grid"})
    latent_dim: int = field(default=32, metadata={"help": "numbers per latent token"})
    tokenizer_width: int = field(default=128, metadata={"help": "encoder/decoder channels (x16)"})
    dim: int = field(default=128, metadata={"help": "transformer width"})
    depth: int = field(default=4, metadata={"help": "transformer blocks"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    mlp_ratio: int = field(default=4, metadata={"help": "MLP hidden size / dim"})
    window: int = field(default=8, metadata={"help": "frames attended to (and trained on)"})
    residual: bool = field(default=True, metadata={"help": "predict the change of each latent"})
    anchored: bool = field(
        default=False, metadata={"help": "decode over a real anchor frame (see also wm-sim tune-decoder)"}
    )
    transition: bool = field(
        default=False,
        metadata={"help": "predict agent_pos with a state-transition MLP the transformer reads"},
    )
    frame_reward: bool = field(
        default=False,
        metadata={"help": "read the reward off the next frame (re-encoded in rollouts) and the action"},
    )
    scene_reward: bool = field(
        default=False,
        metadata={"help": "a reward of (real frame, state, action) for the latent planner and actor"},
    )

    def __post_init__(self) -> None:
        # refused where the option is read (model.depth=0), not as a shape error deep in the model
        for name in ("grid", "latent_dim", "tokenizer_width", "dim", "depth", "heads", "mlp_ratio", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise WmSimError(f"model.{name} must be a positive integer, got {value!r}")


@dataclass
class TrainingConfig:
    """How the model is fitted (a file of configs/training/): batch, optimiser, losses, cadence."""

    batch_size: int = field(default=32, metadata={"help": "windows per step"})
    lr: float = field(
        default=5e-4, metadata={"help": "peak learning rate of the dynamics (warm-up, then cosine decay)"}
    )
    tokenizer_lr: float = field(
        default=2e-3, metadata={"help": "peak learning rate of the encoder and decoder (same schedule)"}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    context_noise: float = field(
        default=0.1, metadata={"help": "max std of the noise added to input latents"}
    )
    rollout_passes: int = field(
        default=3, metadata={"help": "passes over the model's own predictions per step (0: teacher forcing)"}
    )
    foreground_weight: float = field(
        default=2.0, metadata={"help": "extra pixel-loss weight where a frame differs from the background"}
    )
    reward_weight: float = field(
        default=0.1, metadata={"help": "weight of the reward loss (latent terms weigh 1, pixels 1)"}
    )
    transition_steps: int = field(
        default=20000,
        metadata={"help": "steps fitting a new state transition on every training transition, up front"},
    )
    refit_transition: bool = field(
        default=False,
        metadata={"help": "fit init's state transition again up front (transition_steps more steps)"},
    )
    transition_lr: float = field(
        default=1e-3, metadata={"help": "peak learning rate of the up-front state-transition fit"}
    )
    transition_horizon: int = field(
        default=1,
        metadata={"help": "steps the state transition is rolled out on its own predictions when fitted"},
    )
    reward_fit_steps: int = field(
        default=3000,
        metadata={"help": "steps fitting a new frame-reward head on every real frame of the data, up front"},
    )
    scene_reward_steps: int = field(
        default=20000,
        metadata={"help": "steps fitting a new scene reward's effector and per-episode goals, up front"},
    )
    scene_goal_steps: int = field(
        default=2000,
        metadata={"help": "steps then fitting its goal net to find each episode's goal in every frame"},
    )
    val_every: int = field(default=500, metadata={"help": "steps between validations"})
    checkpoint_every: int = field(default=500, metadata={"help": "steps between checkpoints"})

    def __post_init__(self) -> None:
        # 0 is a valid rate: it freezes that part (the shipped stage 10 refit only its transition)
        rates = ("lr", "tokenizer_lr", "weight_decay", "context_noise")
        for name in (*rates, "transition_steps", "reward_fit_steps", "scene_reward_steps", "scene_goal_steps"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:  # NaN fails this too
                raise WmSimError(f"training.{name} must be a finite number >= 0, got {value!r}")


@dataclass
class TrainConfig:
    """Options of `wm-sim train`. Groups: model=, training=, wandb= (files under configs/)."""

    data: str = field(default="datasets/reacher.zarr", metadata={"help": "the zarr dataset to train on"})
    model: ModelSize = field(default_factory=ModelSize, metadata={"help": "model size: model=small|tiny"})
    out: str = field(default="outputs/reacher", metadata={"help": "run directory: checkpoints and logs"})
    steps: int = field(
        default=20000, metadata={"help": "optimiser steps in all (a resumed run counts from its start)"}
    )
    resume: str = field(
        default="false", metadata={"help": "false: new run; auto: continue out/last if present"}
    )
    training: TrainingConfig = field(
        default_factory=TrainingConfig,
        metadata={"help": "training=default|quick; training.lr=... and the rest one by one"},
    )
    init: str = field(
        default="", metadata={"help": "start from this checkpoint's weights (fine-tuning); '' for scratch"}
    )
    val_fraction: float = field(
        default=0.1, metadata={"help": "every 1/f-th episode is held out for validation"}
    )
    seed: int = field(default=0, metadata={"help": "seeds the initialisation and the batch order"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if available), cpu, cuda"})
    dist_timeout_s: float = field(
        default=1800.0,
        metadata={"help": "under torchrun: seconds one process waits for the others before failing"},
    )
    wandb: WandbConfig = field(
        default_factory=WandbConfig,
        metadata={"help": "logging: wandb=offline|online|disabled, or wandb.mode=..."},
    )

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise WmSimError(f"threads must be at least 0 (0: torch's default), got {self.threads}")
        if self.seed < 0:  # numpy's generators take no negative seed
            raise WmSimError(f"seed must be a non-negative integer, got {self.seed}")


def model_config(size: ModelSize, store: EpisodeStore) -> WorldModelConfig:
    """The full model shape: the chosen size, plus what the dataset fixes."""
    info = store.info
    return WorldModelConfig(
        image_size=info.image_size,
        action_dim=info.features[ACTION_KEY].shape[0],
        state_dim=info.features[STATE_KEY].shape[0],
        periodic_state=wrapped_entries(episode_states(store)) if size.transition else (),
        cameras=len(info.cameras),
        **{k: getattr(size, k) for k in ModelSize.__dataclass_fields__},
    )


def fit_transition(
    model: WorldModel,
    store: EpisodeStore,
    episodes: list[int],
    steps: int,
    seed: int,
    horizon: int = 1,
    lr: float = 1e-3,
    batch_size: int = 1024,
) -> float:
    """Fit the model's state transition on `episodes`; returns the last loss (the squared error in
    typical one-step changes, averaged over the horizon).

    Each sample starts from a real state s_t and rolls the transition out on its own predictions
    under the real actions a_t .. a_t+H-1, scored against the real s_t+1 .. s_t+H. With H = 1
    that is the one-step fit; a longer horizon teaches the MLP what its own errors lead to, which
    is how it is used in a rollout (on reacher, H = 32 took the fingertip's drift after 200 steps
    from 4.4 to 3.4 cm: docs/model.md). Done once, before the world model trains: the MLP needs far more
    transitions than windows of frames can feed it, and each costs microseconds. It is then frozen.
    """
    transition = model.transition
    states, actions, starts, offset = [], [], [], 0
    for e in episodes:
        start, stop = store.episode_bounds(e)
        states.append(store.read(STATE_KEY, start, stop))
        actions.append(store.read(ACTION_KEY, start, stop))
        starts.append(offset + np.arange(max(stop - start - horizon, 0)))  # H more frames follow
        offset += stop - start
    device = next(model.parameters()).device
    state, action = (torch.from_numpy(np.concatenate(x)).float().to(device) for x in (states, actions))
    first = torch.from_numpy(np.concatenate(starts)).to(device)
    if len(first) == 0:
        raise WmSimError(
            f"no transitions to fit the state transition on: no episode has more than {horizon} frame(s)"
        )
    one_step = torch.cat([first + k for k in range(horizon)]).unique()  # every transition a sample scores
    transition.state_scale.copy_(state[one_step].std(0) + 1e-3)
    transition.step_scale.copy_(transition.wrap(state[one_step + 1] - state[one_step]).std(0) + 1e-3)

    def batch_loss(picks: torch.Tensor) -> torch.Tensor:
        rows = first[picks]
        predicted, loss = state[rows], 0.0
        for k in range(horizon):
            predicted = transition(predicted, action[rows + k])
            loss = (
                loss
                + (transition.wrap(predicted - state[rows + k + 1]) / transition.step_scale).pow(2).mean()
            )
        return loss / horizon

    # Rolled out, a gradient passes through H steps of the MLP: clipped, so that one unstable
    # rollout early in the fit cannot throw the weights off
    clip = None if horizon == 1 else 1.0
    desc = "state transition" + (f" ({horizon}-step rollouts)" if horizon > 1 else "")
    return _fit_up_front(list(transition.parameters()), batch_loss, len(first), steps, seed, batch_size, desc, lr, clip)


def _fit_up_front(
    parameters: list[nn.Parameter],
    batch_loss,
    rows: int,
    steps: int,
    seed: int,
    batch_size: int,
    desc: str,
    lr: float = 1e-3,
    clip: float | None = None,
    before_step: Callable[[int], None] | None = None,
) -> float:
    """`steps` AdamW steps (peak learning rate `lr`, cosine decay) of `parameters` on `batch_loss(picks)`
    over random batches of `rows` rows, gradients clipped to norm `clip` if given, under a
    progress bar, calling `before_step(step)` first if given; returns the last loss."""
    device = parameters[0].device
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    loss = torch.tensor(float("nan"))
    bar = tqdm(range(steps), desc=desc, unit="step")
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        if before_step is not None:
            before_step(step)
        loss = batch_loss(torch.randint(0, rows, (batch_size,), generator=generator).to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(parameters, clip)
        optimiser.step()
        if step % 100 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.5f}")
    return loss.item()


def fit_frame_reward(
    model: WorldModel,
    store: EpisodeStore,
    episodes: list[int],
    steps: int,
    seed: int,
    batch_size: int = 1024,
) -> float:
    """Fit the model's FrameReward head on every real (frame t+1, a_t) -> r_t+1 of `episodes`;
    returns the last loss (mean squared reward error).

    Done once, before the world model trains, on the encoder's latents of real frames: far more
    frames than windows can feed it. Training goes on after on the real frames of each batch
    (losses). The head's bounds become the least and the most reward of these frames.
    """
    head, device = model.reward_head, next(model.parameters()).device
    cameras = store.info.cameras  # the model sees every camera of its dataset
    latents, actions, rewards = [], [], []
    with torch.no_grad():
        for e in tqdm(episodes, desc="frame reward: encoding", unit="episode"):
            start, stop = store.episode_bounds(e)
            if stop - start < 2:
                continue
            pixels = torch.from_numpy(store.read_frames(cameras, start + 1, stop)).to(device)
            latents.append(torch.cat([model.encode(chunk) for chunk in pixels.split(512)]))
            actions.append(torch.from_numpy(store.read(ACTION_KEY, start, stop - 1)).float().to(device))
            rewards.append(torch.from_numpy(store.read(REWARD_KEY, start, stop - 1)).float().to(device))
    if not latents:
        raise WmSimError("no transitions to fit the frame reward on: every episode has one frame")
    latent, action, reward = torch.cat(latents), torch.cat(actions), torch.cat(rewards)
    head.low.copy_(reward.min())
    head.high.copy_(reward.max())

    def batch_loss(picks: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(head(latent[picks], action[picks]), reward[picks])

    return _fit_up_front(list(head.parameters()), batch_loss, len(latent), steps, seed, batch_size, "frame reward")


def fit_scene_reward(
    model: WorldModel,
    store: EpisodeStore,
    episodes: list[int],
    steps: int,
    goal_steps: int,
    seed: int,
) -> tuple[float, float]:
    """Fit the model's SceneReward on the real (s_t+1, a_t) -> r_t+1 of `episodes`, in two stages;
    returns each stage's last loss (mean squared reward error, then squared goal error).

    1. The effector, the coefficients and one free goal per episode, on every transition: a
       target that stays put is one point per episode, and hundreds of rewards at known states
       pin it down (as GPS pins a receiver), with no frame involved.
    2. The goal net, to find its episode's goal in any frame of the episode: the planner reads
       the scene off the frame the camera shows now, with the arm wherever it stands, so the net
       must see the goal wherever the arm is (and whatever it covers).
    The frames stay in memory as uint8 for stage 2. The bounds become the least and most reward.
    """
    head, device = model.scene_reward, next(model.parameters()).device
    frames, states, actions, rewards, rows, owner = [], [], [], [], [], []
    offset = 0
    for e in tqdm(episodes, desc="scene reward: reading", unit="episode"):
        start, stop = store.episode_bounds(e)
        if stop - start < 2:
            continue
        frames.append(store.read_frames(store.info.cameras, start, stop))
        states.append(store.read(STATE_KEY, start, stop))
        actions.append(store.read(ACTION_KEY, start, stop))
        rewards.append(store.read(REWARD_KEY, start, stop))
        rows.append(offset + np.arange(stop - start - 1))  # t, whose s_t+1 is in the episode
        owner.append(np.full(stop - start, len(owner)))
        offset += stop - start
    if not rows:
        raise WmSimError("no transitions to fit the scene reward on: every episode has one frame")
    pixels = torch.from_numpy(np.concatenate(frames))
    state, action, reward = (torch.from_numpy(np.concatenate(x)).float().to(device) for x in (states, actions, rewards))
    first = torch.from_numpy(np.concatenate(rows))
    episode_of = torch.from_numpy(np.concatenate(owner))
    lengths = torch.bincount(episode_of)
    starts = torch.cumsum(lengths, 0) - lengths
    head.state_scale.copy_(state.std(0) + 1e-3)
    head.low.copy_(reward[first].min())
    head.high.copy_(reward[first].max())
    goals = nn.Embedding(len(lengths), 2).to(device)
    nn.init.normal_(goals.weight, std=0.1, generator=torch.Generator().manual_seed(seed + 1))
    stage_1 = [*head.effector.parameters(), head.coefficients, goals.weight]

    def reward_loss(picks: torch.Tensor) -> torch.Tensor:
        t = first[picks.cpu()]
        predicted = head(goals(episode_of[t].to(device)), state[t + 1], action[t])
        return F.mse_loss(predicted, reward[t])

    def reseat(step: int) -> None:  # every 1,000 steps of the first three quarters
        if step and step % 1000 == 0 and step < 0.75 * steps:
            t = first.to(device)
            _reseat_goals(head, goals.weight, state[t + 1], action[t], reward[t], episode_of[first].to(device))

    reward_error = _fit_up_front(
        stage_1, reward_loss, len(first), steps, seed, 1024, "scene reward: effector", before_step=reseat
    )
    found = goals.weight.detach()
    goal_net = [*head.keypoint_net.parameters(), *head.goal_net.parameters()]
    generator = torch.Generator().manual_seed(seed + 2)

    def goal_loss(picks: torch.Tensor) -> torch.Tensor:
        e = picks.cpu()
        frame = starts[e] + (torch.rand(len(e), generator=generator) * lengths[e]).long()
        return F.mse_loss(head.goal(pixels[frame].to(device)), found[e.to(device)])

    goal_error = _fit_up_front(goal_net, goal_loss, len(lengths), goal_steps, seed, 128, "scene reward: goal")
    return reward_error, goal_error


@torch.no_grad()
def _reseat_goals(
    head, goals: torch.Tensor, state: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, episode: torch.Tensor
) -> None:
    """Move each episode's goal (E, 2) to the best point of a 41 x 41 grid over the effector's
    reach, where that fits its rewards better than where the gradient left it.

    A goal fitted by gradient alone can settle on the wrong side of the arm's reach, a local
    minimum it leaves only slowly (seen: a fit that stopped at 0.021 RMS reward error where
    another seed reached 0.0003); a grid search per episode, given the effector, finds the right
    side at once. Rows: every transition, its s_t+1, a_t, r_t+1 and episode.
    """
    gain, control, offset = head.coefficients
    points = head.effector(head.encode_state(state))
    low, high = points.min(0).values, points.max(0).values
    side = torch.linspace(0.0, 1.0, 41, device=points.device)
    grid = torch.stack(torch.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 2) * (high - low) + low
    wanted = reward + control * action.square().sum(-1) - offset  # = -gain * distance
    per_episode = torch.zeros(len(goals), len(grid), device=points.device)
    for chunk in range(0, len(grid), 128):
        candidates = grid[chunk : chunk + 128]
        misfit = (-gain * torch.cdist(points, candidates) - wanted[:, None]).square()
        per_episode[:, chunk : chunk + 128].index_add_(0, episode, misfit)
    now = (-gain * (points - goals[episode]).norm(dim=-1) - wanted).square()
    now = torch.zeros(len(goals), device=points.device).index_add_(0, episode, now)
    best = per_episode.min(dim=1)
    better = best.values < now
    goals[better] = grid[best.indices[better]]


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
    # An anchored decoder composites over another real frame of the same episode: a random one.
    rows, pick = torch.arange(pixels.shape[0]), torch.randint(0, pixels.shape[1], (pixels.shape[0],))
    anchor = Anchor(latents[rows, pick].detach(), target[rows, pick].movedim(-1, -3))
    # Reconstruct two random frames of each window: decoding all T+1 costs more than it teaches.
    frames = torch.randint(0, pixels.shape[1], (2,))
    recon = _weighted_mse(model.decode(latents[:, frames], anchor), target[:, frames], weight[:, frames])
    state = model.normalise_state(batch["state"])  # (B, T+1, D)
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
    pixel_error = _weighted_mse(model.decode(last, anchor), target[:, t + 1], weight[:, t + 1], per_row=True)
    terms["predicted_pixels"] = (pixel_error * has_next[:, t]).sum() / has_next[:, t].sum().clamp(min=1)
    weights = {
        "recon": 1.0,
        "predicted_pixels": 1.0,
        "teacher_reward": reward_weight,
        "own_reward": reward_weight,
        "frame_reward": reward_weight,
    }
    terms["total"] = sum(weights.get(k, 1.0 if "latent" in k else 0.1) * v for k, v in terms.items())
    return terms


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


def _weighted_mse(
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
        self, batch: dict[str, torch.Tensor], context_noise: float | None = None
    ) -> dict[str, torch.Tensor]:
        """The loss terms; `context_noise` overrides the training one (validation uses 0)."""
        noise = self.context_noise if context_noise is None else context_noise
        return losses(
            self.model,
            batch,
            noise,
            self.rollout_passes,
            self.background,
            self.foreground_weight,
            self.reward_weight,
        )


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> Distributed:
        """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; absent, this is a single process."""
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )


def _device(cfg: TrainConfig, job: Distributed) -> torch.device:
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise WmSimError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise WmSimError("device=cuda, but torch sees no CUDA device")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda", job.local_rank) if use_cuda else torch.device("cpu")


def train(cfg: TrainConfig) -> Path:
    """Train (or continue training) a world model; returns the run directory.

    Under `torchrun --nproc_per_node=N`, each process takes 1/N of every batch and the gradients
    are averaged over the processes after each backward (NCCL on CUDA, gloo on CPU); all processes
    draw the same batch indices, so a run's data order does not depend on N. Only rank 0
    validates, writes checkpoints and logs.
    """
    fit = cfg.training
    if cfg.steps <= 0 or fit.batch_size <= 0:
        raise WmSimError(
            f"steps and training.batch_size must be positive, got {cfg.steps} and {fit.batch_size}"
        )
    resume = str(cfg.resume).lower()  # Hydra reads `resume=false` as a bool
    if resume not in ("false", "auto"):
        raise WmSimError(f"resume must be false or auto, got {cfg.resume!r}")
    if fit.val_every <= 0 or fit.checkpoint_every <= 0:
        raise WmSimError(
            f"training.val_every and training.checkpoint_every must be positive, got {fit.val_every}, {fit.checkpoint_every}"
        )
    if cfg.dist_timeout_s <= 0:
        raise WmSimError(f"dist_timeout_s must be positive, got {cfg.dist_timeout_s}")
    if fit.rollout_passes < 0 or fit.foreground_weight < 0 or fit.reward_weight < 0:
        raise WmSimError(
            "training.rollout_passes, training.foreground_weight and training.reward_weight must be >= 0, got "
            f"{fit.rollout_passes}, {fit.foreground_weight}, {fit.reward_weight}"
        )
    if fit.transition_horizon < 1 or fit.transition_lr <= 0:
        raise WmSimError(
            "training.transition_horizon must be at least 1 and training.transition_lr positive, got "
            f"{fit.transition_horizon}, {fit.transition_lr}"
        )
    if fit.refit_transition and not (cfg.model.transition and cfg.init):
        raise WmSimError(
            "training.refit_transition=true fits init's state transition again: it needs init= and "
            f"model.transition=true, got init={cfg.init!r}, model.transition={cfg.model.transition}"
        )
    job = Distributed.from_environment()
    if job.is_main:  # before any work: refuses an out= another process writes, or that cannot be made
        lock_run_directory(cfg.out).release()
    if fit.batch_size % job.world_size:
        raise WmSimError(
            f"training.batch_size={fit.batch_size} must divide evenly over {job.world_size} processes"
        )
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg, job)
    store = EpisodeStore.open(cfg.data)
    try:
        config = model_config(cfg.model, store)
    except ValueError as exc:
        raise WmSimError(f"model size {cfg.model} does not fit {cfg.data}: {exc}") from exc
    cameras = store.info.cameras  # the model sees every camera of its dataset at once
    keys = [*map(image_key, cameras), STATE_KEY, ACTION_KEY, REWARD_KEY, TERMINATED_KEY]
    train_set = EpisodeWindows(
        store,
        config.window + 1,
        0,
        "train",
        cfg.val_fraction,
        keys,
        in_memory=True,
        pad_end=True,
        progress=job.is_main,
    )
    val_set = EpisodeWindows(store, config.window + 1, 0, "val", cfg.val_fraction, keys, pad_end=True)
    if len(train_set) < fit.batch_size:
        raise WmSimError(
            f"{cfg.data} has {len(train_set)} training windows of {config.window + 1} frames, fewer than one "
            f"batch of {fit.batch_size}: collect more episodes or lower training.batch_size"
        )
    run_dir = Path(cfg.out)
    resuming = resume == "auto" and (run_dir / LAST).exists()
    if _holds_a_run(run_dir) and not resuming:
        raise WmSimError(
            f"{run_dir} already holds a run; pass resume=auto to continue it, or choose another out="
        )
    run_meta = _run_meta(cfg, store, job.world_size)
    model, optimiser, step, rng, run_meta = _start(
        cfg, config, store, train_set.episodes, run_meta, run_dir if resuming else None, device
    )
    # The background from training frames only, the same sample on every (resumed) run.
    samples = np.linspace(0, len(train_set) - 1, min(len(train_set), 256)).astype(int)
    background = background_frame(np.stack([frames_of(train_set[int(i)], cameras)[0] for i in samples]))
    objective = Objective(
        model,
        fit.context_noise,
        fit.rollout_passes,
        torch.from_numpy(background),
        fit.foreground_weight,
        fit.reward_weight,
    ).to(device)
    joined = job.world_size > 1 and not dist.is_initialized()
    if joined:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=cfg.dist_timeout_s))
        # torchrun stops the other workers with SIGTERM when one fails: each then prints where it
        # was, so a stalled collective shows which process waited on which.
        faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)
    if job.world_size > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)  # every process starts from rank 0's weights
    contexts = run_contexts(store, cameras, cfg.val_fraction, config.window) if job.is_main else None
    run_lock = lock_run_directory(run_dir) if job.is_main else None  # held until the run ends
    tracker = Tracker(cfg.wandb, run_dir, run_meta["wandb_run_id"], run_meta, active=job.is_main)
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", disable=not job.is_main)
    started, seen = time.perf_counter(), 0
    share = fit.batch_size // job.world_size
    try:
        while step < cfg.steps:
            objective.train()
            _set_lr(optimiser, step, cfg.steps)
            picks = rng.integers(0, len(train_set), fit.batch_size)[job.rank * share : (job.rank + 1) * share]
            terms = objective(to_batch([train_set[int(i)] for i in picks], cameras, device))
            total = terms["total"].detach().clone()
            if job.world_size > 1:
                dist.all_reduce(total)  # every rank stops together on a NaN anywhere
            if not torch.isfinite(total):
                raise WmSimError(
                    f"loss became {total.item()} at step {step}; the last good checkpoint is {run_dir / LAST}"
                )
            optimiser.zero_grad(set_to_none=True)
            terms["total"].backward()
            if job.world_size > 1:
                _average_gradients(model, job.world_size)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            step += 1
            seen += fit.batch_size
            rate = seen / (time.perf_counter() - started)
            bar.update(1)
            bar.set_postfix(loss=f"{total.item() / job.world_size:.4f}", samples_per_s=f"{rate:.1f}")
            if not job.is_main:
                continue
            if step % 10 == 0 and tracker.active:
                tracker.log(
                    {f"train/{k}": v.item() for k, v in terms.items()} | {"samples_per_s": rate}, step
                )
            if step % fit.val_every == 0 or step == cfg.steps:
                run_meta["val"] = validate(objective, val_set, cameras, fit.batch_size, device)
                run_meta["val_step"] = step
                bar.write(
                    f"step {step}: " + ", ".join(f"val_{k}={v:.4f}" for k, v in run_meta["val"].items())
                )
                tracker.log({f"val/{k}": v for k, v in run_meta["val"].items()}, step)
                if tracker.active and cfg.wandb.videos and val_set.episodes:
                    video = rollout_video(model, store, val_set.episodes[0], cameras, run_dir / "media", step)
                    tracker.video("val/rollout", video, step)
            if step % fit.checkpoint_every == 0 or step == cfg.steps:
                _checkpoint(run_dir, step, model, optimiser, rng, run_meta, contexts)
    finally:
        bar.close()
        tracker.finish()
        if joined:
            dist.destroy_process_group()
            faulthandler.unregister(signal.SIGTERM)
        if run_lock is not None:
            run_lock.release()
    return run_dir


def _average_gradients(model: nn.Module, world_size: int) -> None:
    """Average the gradients over the processes: one all-reduce of them all, after backward.

    This is what DistributedDataParallel does, without launching the collectives from inside
    backward. A gloo collective launched there keeps a Python object (backward's stashed context)
    until its worker thread drops it, which takes the GIL; when the process group was then
    destroyed by a thread holding the GIL, that thread waited on the worker and the worker on the
    GIL, forever (CI's torchrun test hung so twice in a row; here 2 runs of about 150). Collectives
    launched out here hold no Python object, so tearing the group down cannot wait on the GIL.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:  # each gradient becomes a view of the averaged buffer: no copy back
        p.grad = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()


def _holds_a_run(run_dir: Path) -> bool:
    """Whether a directory holds checkpoints (not just debris of a cut-short write, or logs)."""
    if not run_dir.exists():
        return False
    return any(not p.name.startswith(".") and p.name not in ("wandb", "media") for p in run_dir.iterdir())


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
        torch.from_numpy(x[None]) for x in (frames, store.read(STATE_KEY, first, stop), store.read(ACTION_KEY, first, stop))
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


def _run_meta(cfg: TrainConfig, store: EpisodeStore, world_size: int) -> dict:
    """What a checkpoint records about its data and run, so it can be used without the dataset."""
    info = store.info
    options = asdict(cfg)
    return {
        "dataset": {
            "path": str(Path(cfg.data).resolve()),
            "task": info.task,
            "fps": info.fps,
            "image_size": info.image_size,
            "camera": info.cameras[0],  # what a reader from before several cameras reads
            "cameras": list(info.cameras),
            "action_low": info.action_low,
            "action_high": info.action_high,
            "state_names": info.features[STATE_KEY].names,
            "action_names": info.features[ACTION_KEY].names,
            "episode_steps": info.episode_steps,
            "num_episodes": store.num_episodes,
            "num_frames": store.num_frames,
        },
        # flat: the run's options with the training group's inlined (what resume compares)
        "train": {k: v for k, v in options.items() if k not in ("model", "wandb", "training")}
        | options["training"],
        "wandb": options["wandb"],
        "wandb_run_id": new_run_id(),
        "world_size": world_size,
    }


def _start(
    cfg: TrainConfig,
    config: WorldModelConfig,
    store: EpisodeStore,
    train_episodes: list[int],
    run_meta: dict,
    resume_from: Path | None,
    device: torch.device,
):
    """(model, optimiser, step, batch rng, run metadata): fresh, or exactly as a checkpoint left them."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if resume_from is None:
        model, saved = _initial_model(cfg.init, config, store, train_episodes)
        model.to(device)
        if model.transition is not None and (
            cfg.training.refit_transition or not (saved and saved.transition)
        ):
            fit = cfg.training
            fit_transition(
                model,
                store,
                train_episodes,
                fit.transition_steps,
                cfg.seed,
                fit.transition_horizon,
                fit.transition_lr,
            )
        if model.reward_head is not None and not (saved and saved.frame_reward):
            fit_frame_reward(model, store, train_episodes, cfg.training.reward_fit_steps, cfg.seed)
        if model.scene_reward is not None and not (saved and saved.scene_reward):
            fit = cfg.training
            fit_scene_reward(model, store, train_episodes, fit.scene_reward_steps, fit.scene_goal_steps, cfg.seed)
        _freeze(model, cfg.training)
        return model, _optimiser(model, cfg.training), 0, rng, run_meta
    model, meta = load_checkpoint(resume_from / LAST)
    if model.config != config:
        raise WmSimError(
            f"cannot resume {resume_from}: its model differs from this run's in "
            + _differences(model.config, config)
        )
    _check_same_run(resume_from, meta, run_meta)
    model.to(device)  # before the optimiser state is loaded, so that state lands on the same device
    _freeze(model, cfg.training)
    optimiser = _optimiser(model, cfg.training)
    tensors, train_meta = load_train_state(resume_from / LAST)
    optimiser.load_state_dict(_unflatten(train_meta["optimiser"], tensors))
    rng.bit_generator.state = train_meta["rng"]
    torch.set_rng_state(tensors["torch_rng"])
    # the same wandb run continues; the last validation stays on record until the next one
    kept = {k: meta[k] for k in ("wandb_run_id", "val", "val_step") if k in meta}
    return model, optimiser, int(train_meta["step"]), rng, {**run_meta, **kept}


def _initial_model(
    init: str, config: WorldModelConfig, store: EpisodeStore, train_episodes: list[int]
) -> tuple[WorldModel, WorldModelConfig | None]:
    """A new run's model, and the shape `init` saved it in: `init`'s weights (fine-tuning) or,
    with no init, fresh ones (and None)."""
    if init:  # the weights and the state normalisation they were trained with
        model, _ = load_checkpoint(init)
        return _upgraded(model, config, init), model.config
    model = WorldModel(config)
    # Normalisation statistics from the training episodes only: validation stays unseen.
    states = np.concatenate([store.read(STATE_KEY, *store.episode_bounds(e)) for e in train_episodes])
    model.state_mean.copy_(torch.from_numpy(states.mean(0)))
    model.state_std.copy_(torch.from_numpy(states.std(0) + 1e-3))
    return model, None


def _differences(saved: WorldModelConfig, now: WorldModelConfig) -> str:
    """The fields two model shapes disagree on, as the overrides that would match the saved one."""
    a, b = saved.to_dict(), now.to_dict()
    sizes = set(ModelSize.__dataclass_fields__)  # the rest (image and action size...) come from the data
    return ", ".join(
        f"{k} (saved {a[k]}, this run {b[k]}: "
        + (f"pass model.{k}={a[k]})" if k in sizes else "fixed by the dataset)")
        for k in a
        if a[k] != b[k]
    )


def _upgraded(model: WorldModel, config: WorldModelConfig, init: str) -> WorldModel:
    """`model`'s weights in the shape `config` asks for, where it only adds what later models have.

    residual: the change head starts at zero, so before any step it predicts "nothing moves",
    the copy-last baseline, and learns from there. transition: a new state-transition MLP (fitted
    before training), read through an input that starts at zero, so the transformer starts as it
    was; the old state head goes. frame_reward: a new FrameReward head (fitted before training);
    the old reward row of the pooled head goes.
    """
    saved = model.config
    adds = {}
    if config.residual and not saved.residual:
        adds["residual"] = True
    if config.transition and not saved.transition:
        adds |= {"transition": True, "periodic_state": config.periodic_state}
    if config.frame_reward and not saved.frame_reward:
        adds["frame_reward"] = True
    if config.scene_reward and not saved.scene_reward:
        adds["scene_reward"] = True
    if replace(saved, **adds) != config:
        raise WmSimError(
            f"cannot start from {init}: its model differs from this run's in " + _differences(saved, config)
        )
    if not adds:
        return model
    converted = WorldModel(config)
    weights = model.state_dict()
    # The rows of the pooled head: [state (without a transition), reward (without a frame
    # reward), continue]; drop those a new part takes over.
    rows = ["state"] * (0 if saved.transition else saved.state_dim)
    rows += ([] if saved.frame_reward else ["reward"]) + ["continue"]
    dropped = {"state"} if "transition" in adds else set()
    dropped |= {"reward"} if "frame_reward" in adds else set()
    keep = [i for i, row in enumerate(rows) if row not in dropped]
    weights["heads.weight"], weights["heads.bias"] = (
        weights["heads.weight"][keep],
        weights["heads.bias"][keep],
    )
    missing, unexpected = converted.load_state_dict(weights, strict=False)
    new_parts = ("transition.", "next_state_in.", "reward_head.", "scene_reward.")
    assert not unexpected and all(k.startswith(new_parts) for k in missing), (
        missing,
        unexpected,
    )
    if "residual" in adds:
        nn.init.zeros_(converted.latent_out.weight)
        nn.init.zeros_(converted.latent_out.bias)
    if "transition" in adds:
        nn.init.zeros_(converted.next_state_in.weight)
        nn.init.zeros_(converted.next_state_in.bias)
    return converted


def _freeze(model: WorldModel, fit: TrainingConfig) -> None:
    """Turn off gradients of what this run does not train.

    The state transition is fitted once, up front (fit_transition), and not trained after. With
    `tokenizer_lr=0` the encoder and decoder stay as they are (latents, and policies trained on
    them, stay valid): computing their gradients would cost time and, through gradient clipping,
    shrink the dynamics' steps.
    """
    if model.transition is not None:
        model.transition.requires_grad_(False)
    if model.scene_reward is not None:  # fitted up front too, on far more frames than windows hold
        model.scene_reward.requires_grad_(False)
    if fit.tokenizer_lr == 0:
        model.encoder.requires_grad_(False)
        model.decoder.requires_grad_(False)


# What must not change for a resumed run to be the same run (steps, resume, threads, cadence may).
RUN_IDENTITY = (
    "batch_size",
    "lr",
    "tokenizer_lr",
    "weight_decay",
    "context_noise",
    "rollout_passes",
    "foreground_weight",
    "reward_weight",
    "init",
    "val_fraction",
    "seed",
    "data",
)


# Options that runs from before they existed were trained with, in effect.
LEGACY_OPTIONS = {"rollout_passes": 1, "foreground_weight": 0.0, "init": "", "reward_weight": 0.1}


def _check_same_run(run_dir: Path, saved: dict, now: dict) -> None:
    for key in RUN_IDENTITY:
        was = saved.get("train", {}).get(key, LEGACY_OPTIONS.get(key))
        if was != now["train"][key]:
            raise WmSimError(
                f"cannot resume {run_dir}: it was trained with {key}={was!r}, this run asks for {now['train'][key]!r}"
            )
    for key in ("path", "num_frames"):
        if saved.get("dataset", {}).get(key) != now["dataset"][key]:
            raise WmSimError(
                f"cannot resume {run_dir}: its dataset {key} was {saved.get('dataset', {}).get(key)!r}, "
                f"now {now['dataset'][key]!r} (a changed dataset makes a different run; start a new out=)"
            )


def _optimiser(model: WorldModel, fit: TrainingConfig) -> torch.optim.Optimizer:
    # The tokenizer is a plain autoencoder and learns faster at a higher rate than the transformer
    # tolerates: the small moving arm only appears in its reconstructions after ~1000 steps at 2e-3.
    tokenizer = [*model.encoder.parameters(), *model.decoder.parameters()]
    ids = {id(p) for p in tokenizer}
    dynamics = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": tokenizer, "lr": fit.tokenizer_lr, "peak_lr": fit.tokenizer_lr},
            {"params": dynamics, "lr": fit.lr, "peak_lr": fit.lr},
        ],
        weight_decay=fit.weight_decay,
    )


def run_contexts(
    store: EpisodeStore, cameras: list[str], val_fraction: float, window: int
) -> dict[str, torch.Tensor] | None:
    """Start contexts from held-out episodes for every checkpoint of a run, so any checkpoint
    resets as an env without `wm-sim package`; None when no episode is held out."""
    frames = min(CONTEXT_FRAMES, window)
    if not episodes_with_frames(store, "val", val_fraction, frames):
        return None
    return start_contexts(store, cameras, val_fraction, RUN_CONTEXTS, frames)


def _checkpoint(
    run_dir: Path,
    step: int,
    model: WorldModel,
    optimiser,
    rng: np.random.Generator,
    meta: dict,
    contexts: dict[str, torch.Tensor] | None,
) -> None:
    skeleton, tensors = _flatten(optimiser.state_dict())
    tensors["torch_rng"] = torch.get_rng_state()
    save_checkpoint(
        run_dir,
        f"step-{step:07d}",
        model,
        {**meta, "step": step},
        train_tensors=tensors,
        train_meta={"step": step, "optimiser": skeleton, "rng": rng.bit_generator.state},
        contexts=contexts,
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


def _set_lr(optimiser: torch.optim.Optimizer, step: int, total: int) -> None:
    warmup = max(1, min(500, total // 20))
    scale = (
        (step + 1) / warmup
        if step < warmup
        else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    )
    for group in optimiser.param_groups:
        group["lr"] = group["peak_lr"] * max(scale, 0.05)


def _flatten(obj, prefix: str = "t", tensors: dict | None = None):
    """Split a nested state (dicts, lists, tensors, numbers) into named tensors and a JSON skeleton."""
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}, tensors
    if isinstance(obj, dict):  # keys keep their type (optimiser state is keyed by int)
        return {
            "__dict__": [
                [k, _flatten(v, f"{prefix}.{i}", tensors)[0]] for i, (k, v) in enumerate(obj.items())
            ]
        }, tensors
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}.{i}", tensors)[0] for i, v in enumerate(obj)], tensors
    return obj, tensors


def _unflatten(skeleton, tensors: dict[str, torch.Tensor]):
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {k: _unflatten(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [_unflatten(v, tensors) for v in skeleton]
    return skeleton
