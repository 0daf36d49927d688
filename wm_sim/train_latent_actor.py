"""`wm-sim train-policy algo=latent_actor`: an actor trained only in the world model's latent model.

Each update starts a batch of imagined rollouts from real recorded states, each in the scene of a
real frame of its own episode (its goal point, read once), lets the actor act for `horizon` steps
through the state transition, and scores each step with the scene reward (wm_sim.latent_model).
Both are differentiable MLPs, so the actor follows the gradient of its discounted imagined return
through the whole rollout (backpropagation through the model, as Dreamer's actor does through its
dynamics) instead of estimating it from samples. No physics step and no frame is made.

The scene frame is drawn anywhere in the episode, not at the start state: in MuJoCo the actor
reads the frame the camera shows at each step, with the arm wherever it is, and must find the
target in it all the same.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from wm_sim.checkpoint import LAST, load_checkpoint
from wm_sim.data.schema import STATE_KEY, image_key
from wm_sim.data.store import EpisodeStore
from wm_sim.data.windows import split_episodes
from wm_sim.errors import WmSimError
from wm_sim.latent_model import LatentModel
from wm_sim.policy_inputs import run_directory


def recorded_scenes(
    model: LatentModel, store: EpisodeStore, episodes: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Goals (N, 2) of every frame and states (N, D) of `episodes`, with each row's episode
    start and length (N,) to draw a scene of the same episode from."""
    pixels_key = image_key(store.info.cameras[0])
    goals, states, starts, lengths, offset = [], [], [], [], 0
    with torch.no_grad():
        for e in tqdm(episodes, desc="latent actor: reading scenes", unit="episode"):
            start, stop = store.episode_bounds(e)
            frames = torch.from_numpy(store.read(pixels_key, start, stop))
            goals.append(torch.cat([model.goal(chunk) for chunk in frames.split(256)]))
            states.append(torch.from_numpy(store.read(STATE_KEY, start, stop)).float())
            starts.append(torch.full((stop - start,), offset))
            lengths.append(torch.full((stop - start,), stop - start))
            offset += stop - start
    if not states:
        raise WmSimError("no episodes to train the latent actor on")
    return torch.cat(goals), torch.cat(states), torch.cat(starts), torch.cat(lengths)


def imagined_loss(
    actor, model: LatentModel, goal: torch.Tensor, state: torch.Tensor, horizon: int, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(minus the mean discounted imagined return, the mean return) of rollouts from raw states
    (B, D) in scenes (B, 2)."""
    total = torch.zeros(state.shape[0])
    for t in range(horizon):
        action = actor(goal, state)
        state, reward = model.step(goal, state, action)
        total = total + gamma**t * reward
    return -total.mean(), total.detach().mean()


def train_latent_actor(cfg) -> Path:
    """Train a LatentActorPolicy in imagination (cfg: wm_sim.train_policy.TrainPolicyConfig)."""
    from wm_sim.policies.latent_actor import LatentActor, LatentActorPolicy
    from wm_sim.policies.saved import save_policy

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    checkpoint = cfg.checkpoint or f"shipped:{cfg.task}"
    out = run_directory(cfg)
    if (out / LAST).exists():
        raise WmSimError(f"{out} already holds a policy run; choose another out= (it is never overwritten)")
    world, _ = load_checkpoint(checkpoint)
    model = LatentModel.of(world, f"world model {checkpoint}")
    model.requires_grad_(False)  # the gradient flows through the model to the actor, not into it
    store = EpisodeStore.open(cfg.data or f"datasets/{cfg.task}.zarr")
    episodes = split_episodes(store.num_episodes, "train", 0.1)
    goals, states, starts, lengths = recorded_scenes(model, store, episodes)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    actor = LatentActor(model.scene_reward, world.config.action_dim)
    # the actor owns a copy of the scene net: the world model's stays as it is
    actor.scene.load_state_dict(model.scene_reward.state_dict())
    actor.scene.requires_grad_(False)
    with torch.no_grad():
        actor.point_scale.copy_(model.scene_reward.effector(model.scene_reward.encode_state(states)).std(0))
    trainable = [p for p in actor.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(trainable, lr=cfg.lr)
    started = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="latent actor", unit="update")
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        rows = torch.randint(0, len(states), (cfg.batch,), generator=generator)
        scene = starts[rows] + (torch.rand(cfg.batch, generator=generator) * lengths[rows]).long()
        loss, imagined = imagined_loss(actor, model, goals[scene], states[rows], cfg.horizon, cfg.gamma)
        if not torch.isfinite(loss):
            raise WmSimError(f"the imagined loss became {loss.item()} at update {step}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimiser.step()
        if step % 20 == 0 or step == cfg.steps - 1:
            bar.set_postfix(imagined_return=f"{imagined.item():.3f}")
    bar.close()
    policy = LatentActorPolicy(actor)
    meta = {
        "task": cfg.task,
        "algo": "latent_actor",
        "world_model": checkpoint,
        "data": str(store.path),
        "updates": cfg.steps,
        "batch": cfg.batch,
        "horizon": cfg.horizon,
        "gamma": cfg.gamma,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "seconds": round(time.perf_counter() - started, 1),
        "final_imagined_return": float(imagined),
    }
    path = save_policy(out, f"step-{cfg.steps:07d}", policy, meta)
    print(f"wrote {path} (imagined discounted return {float(imagined):.3f}, {meta['seconds']:.0f} s)")
    return out
