"""`wm-sim train-policy algo=bc`: behaviour cloning from the recorded dataset, a reference policy.

The policy acts exactly as the imagination-trained one does (policies/actor_critic.py): the world
model's frozen encoder reads the camera frame, the normalised agent_pos joins it, and the actor
MLP's tanh mean is the action. Only the actor is trained, by MSE to the action recorded at each
(frame_t, agent_pos_t) of the training episodes; the critic and log_std stay as initialised,
since verify and deployment act on the mean. What it scores in `wm-sim verify` says how much the
imagination training adds over copying the data with the same eyes and the same network.

Episodes are split as the world model's training split them (every 1/val_fraction-th episode is
held out, wm_sim/data/windows.py), so the validation MSE is on episodes neither model trained on.
Every frame is encoded once up front (about 80 s for 120,000 frames on two CPU cores); `steps`
are then Adam minibatch updates of `batch` pairs, cheap next to the encoding. On a busy two-core
host pass threads=1: two threads contending with other processes made each update 30x slower.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wm_sim.checkpoint import LAST
from wm_sim.data.schema import ACTION_KEY, STATE_KEY, image_key
from wm_sim.data.store import EpisodeStore
from wm_sim.data.windows import split_episodes
from wm_sim.errors import WmSimError
from wm_sim.policies.actor_critic import ActorCritic, ActorCriticPolicy, ObservationEncoder, feature_dim
from wm_sim.policy_inputs import policy_inputs
from wm_sim.tracking import Tracker, new_run_id

if TYPE_CHECKING:
    from wm_sim.train_policy import TrainPolicyConfig
    from wm_sim.world_model import WorldModelConfig

DEFAULT_VAL_FRACTION = 0.1  # when the world model held nothing out, still hold out one in ten


@dataclass
class ClonePairs:
    """Every recorded frame as the policy sees it, its recorded action, and the split by episode."""

    features: torch.Tensor  # (N, F) float32, what ObservationEncoder makes of (frame_t, agent_pos_t)
    actions: torch.Tensor  # (N, A), action_t
    train_rows: torch.Tensor  # rows of the training episodes
    val_rows: torch.Tensor  # rows of the held-out episodes
    val_episodes: list[int]


def check_options(cfg: TrainPolicyConfig) -> None:
    """The options behaviour cloning reads, refused before anything is loaded or written."""
    for name in ("steps", "batch"):
        if getattr(cfg, name) < 1:
            raise WmSimError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise WmSimError(f"lr must be a positive finite number, got {cfg.lr}")
    if str(cfg.resume).lower() != "false":
        raise WmSimError(f"algo=bc trains in one go and does not resume; got resume={cfg.resume!r}")


@torch.no_grad()
def encode_pairs(
    observer: ObservationEncoder, data: str, val_fraction: float, block: int = 512
) -> ClonePairs:
    """Encode every frame of `data` once with the frozen encoder, under a progress bar."""
    store = EpisodeStore.open(data)
    try:
        train_rows, val_rows = _split_rows(store, data, observer.config, val_fraction)
        pixels_key, n = image_key(store.info.cameras[0]), store.num_frames
        features = torch.empty(n, feature_dim(observer.config))
        for start in tqdm(range(0, n, block), desc="encoding frames", unit="block"):
            stop = min(start + block, n)
            pixels = torch.from_numpy(store.read(pixels_key, start, stop))
            state = torch.from_numpy(store.read(STATE_KEY, start, stop))
            features[start:stop] = observer(pixels, state)
        actions = torch.from_numpy(store.read(ACTION_KEY, 0, n)).float()
        val_episodes = split_episodes(store.num_episodes, "val", val_fraction)
    finally:
        store.close()
    return ClonePairs(features, actions, train_rows, val_rows, val_episodes)


def _split_rows(
    store: EpisodeStore, data: str, config: WorldModelConfig, val_fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training and held-out rows, once the store is known to fit the world model."""
    sizes = (store.info.image_size, *(store.info.features[k].shape[0] for k in (STATE_KEY, ACTION_KEY)))
    wants = (config.image_size, config.state_dim, config.action_dim)
    if sizes != wants:
        raise WmSimError(f"{data} has image_size, state and action sizes {sizes}; the world model {wants}")
    train, val = (_rows(store, split, val_fraction) for split in ("train", "val"))
    if len(train) == 0 or len(val) == 0:
        raise WmSimError(
            f"{data} has {store.num_episodes} episodes: none left for training or none held out "
            f"(every 1/{val_fraction:g}-th is held out); collect more episodes"
        )
    return train, val


def _rows(store: EpisodeStore, split: str, val_fraction: float) -> torch.Tensor:
    episodes = split_episodes(store.num_episodes, split, val_fraction)
    ranges = [np.arange(*store.episode_bounds(e)) for e in episodes]
    return torch.from_numpy(np.concatenate(ranges) if ranges else np.zeros(0, np.int64))


@torch.no_grad()
def action_mse(net: ActorCritic, pairs: ClonePairs, rows: torch.Tensor, block: int = 8192) -> float:
    """Mean squared error of the actor's mean action against the recorded one, over `rows`."""
    device = next(net.parameters()).device
    total = 0.0
    for chunk in rows.split(block):
        mean = torch.tanh(net.actor(pairs.features[chunk].to(device)))
        total += float(F.mse_loss(mean, pairs.actions[chunk].to(device), reduction="sum"))
    return total / (len(rows) * pairs.actions.shape[1])


def clone(net: ActorCritic, pairs: ClonePairs, cfg: TrainPolicyConfig, tracker: Tracker) -> float:
    """`cfg.steps` Adam updates of the actor on random minibatches; returns the last 50's mean MSE."""
    device = next(net.parameters()).device
    optimiser = torch.optim.Adam(net.actor.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    recent: list[float] = []
    net.train()
    with tqdm(range(1, cfg.steps + 1), desc="train-policy bc", unit="update") as bar:
        for step in bar:
            pick = sample_rows(pairs.train_rows, cfg.batch, generator)
            mean = torch.tanh(net.actor(pairs.features[pick].to(device)))
            loss = F.mse_loss(mean, pairs.actions[pick].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            recent = [*recent[-49:], float(loss.detach())]
            tracker.log({"bc/loss": recent[-1]}, step)
            if step % 10 == 0 or step == cfg.steps:
                bar.set_postfix(mse=f"{np.mean(recent):.4f}")
    net.eval()
    return float(np.mean(recent))


def sample_rows(rows: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    """`batch` training rows drawn uniformly, with replacement."""
    return rows[torch.randint(len(rows), (batch,), generator=generator)]


def train_behaviour_cloning(cfg: TrainPolicyConfig) -> Path:
    """Clone the dataset's actions into an ActorCritic's actor; returns the run directory."""
    from wm_sim.policies.saved import save_policy

    check_options(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    checkpoint, data, run_dir, model, wm_meta = policy_inputs(cfg)
    if (run_dir / LAST).exists() or any(run_dir.glob("step-*")):
        raise WmSimError(f"{run_dir} already holds a run; choose another out=")
    val_fraction = float(wm_meta.get("train", {}).get("val_fraction", 0.0)) or DEFAULT_VAL_FRACTION

    observer = ObservationEncoder.from_world_model(model)
    pairs = encode_pairs(observer, data, val_fraction)
    torch.manual_seed(cfg.seed)
    net = ActorCritic(feature_dim(model.config), model.config.action_dim).to(cfg.device)
    untrained = action_mse(net, pairs, pairs.val_rows)
    run_id = new_run_id()
    train_meta = {**asdict(cfg), "checkpoint": checkpoint, "data": data, "val_fraction": val_fraction,
                  "wandb_run_id": run_id}  # fmt: skip
    tracker = Tracker(cfg.wandb, run_dir, run_id, train_meta)
    try:
        train_mse = clone(net, pairs, cfg, tracker)
        metrics = {
            "bc/train_mse": train_mse,
            "bc/val_mse": action_mse(net, pairs, pairs.val_rows),
            "bc/val_mse_untrained": untrained,
            "bc/val_mse_zero_action": float(pairs.actions[pairs.val_rows].square().mean()),
            "bc/train_pairs": len(pairs.train_rows),
            "bc/val_pairs": len(pairs.val_rows),
            "bc/val_episodes": len(pairs.val_episodes),
        }
        tracker.log({k: v for k, v in metrics.items() if "mse" in k}, cfg.steps)
    finally:
        tracker.finish()
    policy = ActorCriticPolicy(net.cpu(), observer)
    meta = {
        "step": cfg.steps,
        "task": cfg.task,
        "world_model": checkpoint,
        "train": train_meta,
        "metrics": metrics,
    }
    path = save_policy(run_dir, f"step-{cfg.steps:07d}", policy, meta)
    print(
        f"bc: validation MSE {metrics['bc/val_mse']:.4f} on {metrics['bc/val_pairs']} pairs of "
        f"{metrics['bc/val_episodes']} held-out episodes (untrained actor {untrained:.4f}, zero action "
        f"{metrics['bc/val_mse_zero_action']:.4f}; training {train_mse:.4f}); saved {path}"
    )
    return run_dir
