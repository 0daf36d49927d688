"""`wm-sim train-policy`: an actor-critic trained only inside the world model.

Each update starts a batch of imagined rollouts from real recorded states (a few real context
frames streamed into the model's cache), lets the policy act for `horizon` steps on the latents
the model predicts, and improves it with PPO's clipped objective on lambda-returns bootstrapped by
the critic. No physics step is taken. Each imagined frame is decoded and encoded again, and the
policy reads those latents (what the encoder makes of a camera image, as in MuJoCo), not the
predicted ones, which drift off them within a few steps while the frames still look right; a
frame-reward model's reward is read off them too. The round trip costs about as much as the step.

Why short rollouts from recorded states, and not 200-step episodes of the batched env: the
model's open-loop reward error is small out to 64 steps (the shipped model's metrics.json), but a
learning policy steers into the model's errors and the gap it opens grows with the horizon.

Every `verify_every` updates, a batch of the imagined action sequences is replayed in MuJoCo from
the recorded physics states they started at, and the true-vs-imagined reward gap is logged: when
the policy starts exploiting the model's errors, the gap grows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wm_sim.behaviour_cloning import train_behaviour_cloning
from wm_sim.checkpoint import LAST, lock_run_directory, read_json, read_train_state
from wm_sim.data.schema import ACTION_KEY, STATE_KEY, image_key
from wm_sim.data.store import EpisodeStore
from wm_sim.errors import WmSimError
from wm_sim.paired_rollout import replay_in_physics
from wm_sim.policy_inputs import policy_inputs, run_directory
from wm_sim.run_lifecycle import (
    checkpoint_due,
    restore_training_state,
    resume_auto,
    resumes,
    training_state,
)
from wm_sim.tracking import Tracker, WandbConfig, new_run_id
from wm_sim.train_latent_actor import train_latent_actor
from wm_sim.world_model import WorldModel

PHYSICS_KEY = "physics_state"


@dataclass
class TrainPolicyConfig:
    """Options of `wm-sim train-policy`."""

    task: str = field(default="reacher", metadata={"help": "the task the world model simulates"})
    algo: str = field(
        default="actor_critic",
        metadata={
            "help": "actor_critic (PPO on imagined rollouts) | latent_actor (backprop through the "
            "latent model) | bc (clones the recorded actions)"
        },
    )
    checkpoint: str = field(default="", metadata={"help": "world model; empty: shipped:<task>"})
    data: str = field(
        default="", metadata={"help": "recorded episodes to start from; empty: datasets/<task>.zarr"}
    )
    out: str = field(default="", metadata={"help": "run directory; empty: outputs/policies/<task>-<algo>"})
    steps: int = field(default=300, metadata={"help": "policy updates"})
    batch: int = field(default=256, metadata={"help": "imagined rollouts per update"})
    horizon: int = field(default=15, metadata={"help": "imagined steps per rollout"})
    context: int = field(
        default=4, metadata={"help": "most real frames a rollout starts from (1 to this, per update)"}
    )
    early_fraction: float = field(
        default=0.5, metadata={"help": "share of rollouts starting in an episode's first early_steps"}
    )
    early_steps: int = field(default=40, metadata={"help": "what counts as an episode's start"})
    gamma: float = field(default=0.98, metadata={"help": "discount"})
    lam: float = field(default=0.95, metadata={"help": "lambda of the lambda-returns"})
    lr: float = field(default=3e-4, metadata={"help": "Adam learning rate"})
    epochs: int = field(default=4, metadata={"help": "PPO epochs over each batch"})
    minibatches: int = field(default=4, metadata={"help": "PPO minibatches per epoch"})
    clip: float = field(default=0.2, metadata={"help": "PPO ratio clip"})
    entropy: float = field(default=0.0, metadata={"help": "entropy bonus"})
    checkpoint_every: int = field(default=50, metadata={"help": "updates between checkpoints"})
    verify_every: int = field(default=25, metadata={"help": "updates between MuJoCo replays (0: never)"})
    verify_rows: int = field(default=8, metadata={"help": "imagined rollouts replayed in MuJoCo each time"})
    verify_horizon: int = field(
        default=64, metadata={"help": "steps of the deployed (mean-action) policy also replayed (0: none)"}
    )
    resume: str = field(default="false", metadata={"help": "false | auto (continue the run in out=)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda"})
    wandb: WandbConfig = field(default_factory=WandbConfig, metadata={"help": "logging"})


@dataclass
class StartStates:
    """Every recorded frame as the world model sees it, and where each episode begins."""

    latents: torch.Tensor  # (F, N, C) float16
    pixels: torch.Tensor | None  # (F, S, S, 3) uint8, what an anchored decoder composites over; else None
    norm_state: torch.Tensor  # (F, D)
    actions: torch.Tensor  # (F, A)
    physics: np.ndarray  # (F, P)
    starts: np.ndarray  # rows with `context - 1` earlier rows in the same episode
    early: np.ndarray  # those of them among the first `early_steps` of an episode


@dataclass
class Imagined:
    """One update's imagined rollouts, time-major."""

    features: torch.Tensor  # (H, B, F)
    actions: torch.Tensor  # (H, B, A), as sampled (unclipped)
    log_probs: torch.Tensor  # (H, B)
    values: torch.Tensor  # (H + 1, B)
    rewards: torch.Tensor  # (H, B)
    continues: torch.Tensor  # (H, B)
    rows: np.ndarray  # (B,) start rows


@torch.no_grad()
def encode_dataset(
    model: WorldModel, data: str, context: int, early_steps: int = 40, block: int = 512
) -> StartStates:
    """Encode every frame of `data` once (the encoder is frozen), under a progress bar."""
    store = EpisodeStore.open(data)
    trained = model.config
    if store.info.image_size != trained.image_size:
        raise WmSimError(
            f"{data} has image_size {store.info.image_size}, the world model {trained.image_size}"
        )
    pixels_key = image_key(store.info.cameras[0])
    if PHYSICS_KEY not in store.keys:
        raise WmSimError(f"{data} has no {PHYSICS_KEY}: record it with `wm-sim collect`")
    n = store.num_frames
    latents = torch.empty(n, trained.tokens, trained.latent_dim, dtype=torch.float16)
    size = trained.image_size
    pixels = torch.empty(n, size, size, 3, dtype=torch.uint8) if trained.anchored else None
    for start in tqdm(range(0, n, block), desc="encoding start states", unit="block"):
        stop = min(start + block, n)
        frames = torch.from_numpy(store.read(pixels_key, start, stop))
        latents[start:stop] = model.encode(frames).half()
        if pixels is not None:
            pixels[start:stop] = frames
    state = torch.from_numpy(store.read(STATE_KEY, 0, n)).float()
    actions = torch.from_numpy(store.read(ACTION_KEY, 0, n)).float()
    physics = store.read(PHYSICS_KEY, 0, n)
    starts, early = [], []
    for episode in range(store.num_episodes):
        first, stop = store.episode_bounds(episode)
        starts.extend(range(first + context - 1, stop))
        early.extend(range(first + context - 1, min(first + early_steps, stop)))
    store.close()
    return StartStates(
        latents, pixels, model.normalise_state(state), actions, physics, np.asarray(starts), np.asarray(early)
    )


@torch.no_grad()
def imagine(
    model: WorldModel,
    net,
    states: StartStates,
    rows: np.ndarray,
    horizon: int,
    context: int,
    device,
    deterministic: bool = False,
) -> Imagined:
    """Stream each row's real context, then let `net` act for `horizon` imagined steps.

    Actions are sampled from the policy, or its mean actions if `deterministic` (how it is deployed).
    """
    from wm_sim.policies.actor_critic import policy_features

    b = len(rows)
    cache = model.new_stream(b, device)
    for k in range(context - 1, 0, -1):
        index = torch.from_numpy(rows - k)
        model.stream_step(
            cache,
            states.latents[index].float().to(device),
            states.norm_state[index].to(device),
            states.actions[index].to(device),
        )
    index = torch.from_numpy(rows)
    latents, norm_state = states.latents[index].float().to(device), states.norm_state[index].to(device)
    anchor = None if states.pixels is None else model.anchor(states.pixels[index].to(device))
    seen = latents  # a real frame's: the encoder's own
    features, actions, log_probs, values, rewards, continues = [], [], [], [], [], []
    for _ in range(horizon):
        f = policy_features(seen, norm_state)
        dist = net.distribution(f)
        action = dist.mean if deterministic else dist.sample()
        applied = action.clamp(-1.0, 1.0)
        pred = model.stream_step(cache, latents, norm_state, applied)
        latents, norm_state = pred.latents[:, 0], pred.state[:, 0]
        seen = model.decode_and_reencode(latents, anchor, norm_state)[1]
        features.append(f)
        actions.append(action)
        log_probs.append(dist.log_prob(action).sum(-1))
        values.append(net.value(f))
        rewards.append(model.imagined_reward(pred, seen, applied))
        continues.append(torch.sigmoid(pred.continue_logit[:, 0]))
    values.append(net.value(policy_features(seen, norm_state)))
    stack = torch.stack
    return Imagined(
        stack(features),
        stack(actions),
        stack(log_probs),
        stack(values),
        stack(rewards),
        stack(continues),
        rows,
    )


def lambda_returns(
    rewards: torch.Tensor, values: torch.Tensor, continues: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """(H, B) rewards and continue probabilities, (H + 1, B) values -> (H, B) lambda-returns."""
    returns = torch.empty_like(rewards)
    next_return = values[-1]
    for t in range(rewards.shape[0] - 1, -1, -1):
        discount = gamma * continues[t]
        next_return = rewards[t] + discount * ((1 - lam) * values[t + 1] + lam * next_return)
        returns[t] = next_return
    return returns


def ppo_update(net, optimiser, batch: Imagined, cfg: TrainPolicyConfig, generator: torch.Generator) -> dict:
    """PPO-clip epochs over one imagined batch; returns the mean loss terms."""
    returns = lambda_returns(batch.rewards, batch.values, batch.continues, cfg.gamma, cfg.lam)
    advantages = returns - batch.values[:-1]
    flat = {
        "features": batch.features.flatten(0, 1),
        "actions": batch.actions.flatten(0, 1),
        "log_probs": batch.log_probs.flatten(),
        "returns": returns.flatten(),
        "advantages": ((advantages - advantages.mean()) / (advantages.std() + 1e-8)).flatten(),
    }
    n = flat["returns"].shape[0]
    size = max(1, n // cfg.minibatches)
    sums: dict[str, float] = {}
    count = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            pick = order[start : start + size].to(flat["returns"].device)
            dist = net.distribution(flat["features"][pick])
            ratio = (dist.log_prob(flat["actions"][pick]).sum(-1) - flat["log_probs"][pick]).exp()
            adv = flat["advantages"][pick]
            policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv).mean()
            value_loss = F.mse_loss(net.value(flat["features"][pick]), flat["returns"][pick])
            entropy = dist.entropy().sum(-1).mean()
            loss = policy_loss + 0.5 * value_loss - cfg.entropy * entropy
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
            optimiser.step()
            for k, v in (("policy_loss", policy_loss), ("value_loss", value_loss), ("entropy", entropy)):
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            count += 1
    return {k: v / max(count, 1) for k, v in sums.items()}


def physics_reward_gap(task, states: StartStates, batch: Imagined) -> dict[str, float]:
    """Replay imagined action sequences in MuJoCo from their recorded start states: the reward gap."""
    imagined, true = [], []
    for column, row in enumerate(batch.rows):
        actions = batch.actions[:, column].clamp(-1.0, 1.0).cpu().numpy()
        true += [result.reward for result in replay_in_physics(task, states.physics[row], actions)]
        imagined += [float(r) for r in batch.rewards[:, column]]
    imagined_arr, true_arr = np.asarray(imagined), np.asarray(true)
    return {
        "reward_gap": float(np.abs(imagined_arr - true_arr).mean()),
        "imagined_reward": float(imagined_arr.mean()),
        "true_reward": float(true_arr.mean()),
    }


def train_policy(cfg: TrainPolicyConfig) -> Path:
    """`wm-sim train-policy`: train with the algorithm `cfg.algo` names; returns the run directory."""
    if cfg.algo not in ALGOS:
        raise WmSimError(f"unknown algo {cfg.algo!r}; expected one of: {', '.join(ALGOS)}")
    # one writer per run directory, as for `wm-sim train`; taking the lock also clears what a
    # killed save left there
    with lock_run_directory(run_directory(cfg)):
        return ALGOS[cfg.algo](cfg)


def train_actor_critic(cfg: TrainPolicyConfig) -> Path:
    """Train an actor-critic in imagination; returns the run directory."""
    from wm_sim.envs.catalog import make_task
    from wm_sim.policies.actor_critic import ActorCritic, ActorCriticPolicy, ObservationEncoder, feature_dim
    from wm_sim.policies.saved import save_policy

    _check_actor_critic_options(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    checkpoint, data, run_dir, model, wm_meta = policy_inputs(cfg, device)
    model.eval().requires_grad_(False)

    net = ActorCritic(feature_dim(model.config), model.config.action_dim).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=cfg.lr, eps=1e-5)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    step, run_id = 0, new_run_id()
    if resumes(cfg.resume, run_dir):
        step, run_id = _resume_actor_critic(run_dir, net, optimiser, rng, generator)

    states = encode_dataset(model, data, cfg.context, cfg.early_steps)
    if len(states.starts) == 0:
        raise WmSimError(f"{data} has no episode of at least context={cfg.context} frames to start from")
    early_pool = states.early if len(states.early) else states.starts
    observer = ObservationEncoder.from_world_model(model).cpu()
    task = make_task(cfg.task, image_size=model.config.image_size) if cfg.verify_every > 0 else None
    train_meta_json = {**asdict(cfg), "checkpoint": checkpoint, "data": data, "wandb_run_id": run_id}
    tracker = Tracker(cfg.wandb, run_dir, run_id, train_meta_json)
    episode_steps = int(wm_meta.get("dataset", {}).get("episode_steps", 200))
    bar = tqdm(total=cfg.steps, initial=step, desc="train-policy", unit="update")
    started, samples = time.perf_counter(), 0
    try:
        while step < cfg.steps:
            # Episode starts are rare in the data (the expert spends most of an episode on the
            # target), yet they are where a policy must travel: over-sample them. The context
            # length varies so the policy also meets the one-frame starts `wm-sim verify` uses.
            early = rng.random(cfg.batch) < cfg.early_fraction
            rows = np.where(early, rng.choice(early_pool, cfg.batch), rng.choice(states.starts, cfg.batch))
            context = int(rng.integers(1, cfg.context + 1))
            net.eval()
            batch = imagine(model, net, states, rows, cfg.horizon, context, device)
            net.train()
            terms = ppo_update(net, optimiser, batch, cfg, generator)
            step += 1
            samples += batch.rewards.numel()
            mean_reward = float(batch.rewards.mean())
            logged = {
                "imagined/reward_per_step": mean_reward,
                "imagined/return_per_episode": mean_reward * episode_steps,
                "policy/std": float(net.log_std.detach().exp().mean()),
                "samples_per_s": samples / (time.perf_counter() - started),
                **{f"loss/{k}": v for k, v in terms.items()},
            }
            if task is not None and (step % cfg.verify_every == 0 or step == cfg.steps):
                gaps, line = _physics_gap(task, model, net, states, batch, rows, context, cfg, device)
                logged |= gaps
                bar.write(f"update {step}: {line}")
            tracker.log(logged, step)
            bar.update(1)
            bar.set_postfix(imagined_return=f"{mean_reward * episode_steps:.1f}", std=f"{logged['policy/std']:.2f}")
            if checkpoint_due(step, cfg.checkpoint_every, cfg.steps):
                tensors, state = training_state(optimiser, rng, {"generator": generator})
                meta = {"step": step, "task": cfg.task, "world_model": checkpoint, "train": train_meta_json}
                policy = ActorCriticPolicy(net.cpu(), observer)
                save_policy(run_dir, f"step-{step:07d}", policy, meta | {"metrics": logged}, tensors, state)
                net.to(device)
    finally:
        bar.close()
        tracker.finish()
        if task is not None:
            task.close()
    return run_dir


def _resume_actor_critic(
    run_dir: Path, net, optimiser: torch.optim.Optimizer, rng: np.random.Generator, generator: torch.Generator
) -> tuple[int, str]:
    """Put the run in `run_dir` back as its last checkpoint left it; (update, wandb run id)."""
    from wm_sim.policies.saved import POLICY_JSON, load_policy

    last = (run_dir / LAST).resolve()
    saved = read_json(last / POLICY_JSON)
    net.load_state_dict(load_policy(last)[0].net.state_dict())
    train_tensors, train_meta = read_train_state(last)
    restore_training_state(train_tensors, train_meta, optimiser, rng, {"generator": generator})
    print(f"resuming {run_dir} at update {saved['step']}")
    return int(saved["step"]), saved["train"]["wandb_run_id"]


def _check_actor_critic_options(cfg: TrainPolicyConfig) -> None:
    """One clear error for options no actor-critic run can use, before anything is loaded."""
    if cfg.verify_horizon < 0:
        raise WmSimError(f"verify_horizon must be >= 0, got {cfg.verify_horizon}")
    if not 0.0 <= cfg.early_fraction <= 1.0:
        raise WmSimError(f"early_fraction must be in [0, 1], got {cfg.early_fraction}")
    for name in (
        "steps",
        "batch",
        "horizon",
        "context",
        "epochs",
        "minibatches",
        "checkpoint_every",
        "early_steps",
    ):
        if getattr(cfg, name) < 1:
            raise WmSimError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    resume_auto(cfg.resume)


def _physics_gap(
    task, model: WorldModel, net, states: StartStates, batch: Imagined, rows: np.ndarray, context: int,
    cfg: TrainPolicyConfig, device: torch.device,
) -> tuple[dict[str, float], str]:  # fmt: skip
    """How far the imagined rewards of some training rollouts are from MuJoCo's replaying the same
    actions (and, with verify_horizon, of longer rollouts of the mean actions): logged, and a line."""
    picks = np.arange(min(cfg.verify_rows, cfg.batch))
    sub = Imagined(
        batch.features[:, picks], batch.actions[:, picks], batch.log_probs[:, picks],
        batch.values[:, picks], batch.rewards[:, picks], batch.continues[:, picks], rows[picks],
    )  # fmt: skip
    gap = physics_reward_gap(task, states, sub)
    logged = {f"verify/{k}": v for k, v in gap.items()}
    line = (
        f"imagined reward/step {gap['imagined_reward']:.3f}, "
        f"MuJoCo {gap['true_reward']:.3f} (gap {gap['reward_gap']:.3f})"
    )
    if cfg.verify_horizon > 0:
        # The training rollouts are short; exploiting the model's drift shows over longer ones,
        # with the mean actions the policy is deployed with.
        net.eval()
        deployed = imagine(model, net, states, rows[picks], cfg.verify_horizon, context, device, True)
        long_gap = physics_reward_gap(task, states, deployed)
        logged |= {f"verify/deployed_{k}": v for k, v in long_gap.items()}
        line += (
            f"; deployed over {cfg.verify_horizon} steps: imagined {long_gap['imagined_reward']:.3f}, "
            f"MuJoCo {long_gap['true_reward']:.3f} (gap {long_gap['reward_gap']:.3f})"
        )
    return logged, line


# algo= name -> trainer taking the whole TrainPolicyConfig
ALGOS: dict[str, Callable[[TrainPolicyConfig], Path]] = {
    "actor_critic": train_actor_critic,
    "bc": train_behaviour_cloning,
    "latent_actor": train_latent_actor,
}
