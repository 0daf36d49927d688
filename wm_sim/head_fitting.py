"""Fitting the world model's small parts up front, before (or without) training the rest.

The state transition, the frame reward and the scene reward each learn from far more rows than
windows of frames can feed them (every transition of the data, each costing microseconds), so
each is fitted once on all of them with its own short AdamW run, then frozen (or, the frame
reward, trained on with the rest). `wm-sim train` calls these where a model gains such a part.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from wm_sim.data.schema import ACTION_KEY, REWARD_KEY, STATE_KEY
from wm_sim.data.store import EpisodeStore
from wm_sim.errors import WmSimError
from wm_sim.world_model import WorldModel


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
    return fit_up_front(
        list(transition.parameters()), batch_loss, len(first), steps, seed, batch_size, desc, lr, clip
    )


def fit_up_front(
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
    # no gradient outlives the fit: a stale one would count in the next trainer's clipping norm
    optimiser.zero_grad(set_to_none=True)
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

    return fit_up_front(
        list(head.parameters()), batch_loss, len(latent), steps, seed, batch_size, "frame reward"
    )


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
    state, action, reward = (
        torch.from_numpy(np.concatenate(x)).float().to(device) for x in (states, actions, rewards)
    )
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
            _reseat_goals(
                head, goals.weight, state[t + 1], action[t], reward[t], episode_of[first].to(device)
            )

    reward_error = fit_up_front(
        stage_1, reward_loss, len(first), steps, seed, 1024, "scene reward: effector", before_step=reseat
    )
    found = goals.weight.detach()
    goal_net = [*head.keypoint_net.parameters(), *head.goal_net.parameters()]
    generator = torch.Generator().manual_seed(seed + 2)

    def goal_loss(picks: torch.Tensor) -> torch.Tensor:
        e = picks.cpu()
        frame = starts[e] + (torch.rand(len(e), generator=generator) * lengths[e]).long()
        return F.mse_loss(head.goal(pixels[frame].to(device)), found[e.to(device)])

    goal_error = fit_up_front(goal_net, goal_loss, len(lengths), goal_steps, seed, 128, "scene reward: goal")
    return reward_error, goal_error


@torch.no_grad()
def _reseat_goals(
    head,
    goals: torch.Tensor,
    state: torch.Tensor,
    action: torch.Tensor,
    reward: torch.Tensor,
    episode: torch.Tensor,
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
