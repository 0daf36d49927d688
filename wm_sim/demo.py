"""`wm-sim demo`: the learned simulator next to the real physics, on one screen.

From a real MuJoCo start, the shipped world model is driven by the scripted expert for a full
episode, then by a random policy for another; the same actions are replayed in MuJoCo from the
same state. Written to `out/`: `demo.mp4` (imagined | MuJoCo, side by side), `rewards.png`
(imagined vs true reward per step, and the distance between the imagined and the real fingertip)
and `report.json` (returns, PSNR and fingertip distance by horizon, how long the arm tracks,
step latency).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wm_sim.checkpoint import write_json
from wm_sim.errors import WmSimError
from wm_sim.evaluate import HORIZONS
from wm_sim.media import captioned_pair, save_figure, write_video
from wm_sim.metrics import finite_or_none, psnr
from wm_sim.paired_rollout import replay_in_physics


@dataclass
class DemoConfig:
    """Options of `wm-sim demo`."""

    checkpoint: str = field(default="shipped:reacher", metadata={"help": "a reacher world model"})
    out: str = field(
        default="outputs/demo", metadata={"help": "folder for demo.mp4, rewards.png, report.json"}
    )
    seed: int = field(
        default=0, metadata={"help": "MuJoCo start state of the first episode (+1: the second)"}
    )
    context: int = field(default=4, metadata={"help": "real MuJoCo frames the world model starts from"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    track_tolerance_m: float = field(
        default=0.03,
        metadata={"help": "the imagined arm tracks the real one while their fingertips are this close"},
    )


@dataclass
class Episode:
    """One policy's episode, imagined and replayed."""

    policy: str
    seed: int
    actions: list[np.ndarray] = field(default_factory=list)
    imagined_frames: list[np.ndarray] = field(default_factory=list)
    true_frames: list[np.ndarray] = field(default_factory=list)
    imagined_rewards: list[float] = field(default_factory=list)
    true_rewards: list[float] = field(default_factory=list)
    imagined_states: list[np.ndarray] = field(default_factory=list)
    true_states: list[np.ndarray] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def fingertip_error_m(self) -> np.ndarray:
        """(T,) distance between the fingertip where the model puts the arm (its agent_pos) and
        where MuJoCo has it: how far the imagined arm is from the real one, in metres."""
        from wm_sim.envs.reacher import fingertip

        imagined, true = np.stack(self.imagined_states), np.stack(self.true_states)
        return np.linalg.norm(fingertip(imagined[:, :2]) - fingertip(true[:, :2]), axis=-1)

    def summary(self, tolerance_m: float) -> dict:
        imagined = torch.from_numpy(np.stack(self.imagined_frames)).float() / 255.0
        true = torch.from_numpy(np.stack(self.true_frames)).float() / 255.0
        per_step = psnr(imagined, true)  # (T,)
        by_horizon = {str(h): finite_or_none(float(per_step[h - 1])) for h in HORIZONS if h <= len(per_step)}
        by_horizon["end"] = finite_or_none(float(per_step[-1]))
        tip = self.fingertip_error_m()
        tip_by_horizon = {str(h): round(float(tip[h - 1]), 4) for h in HORIZONS if h <= len(tip)}
        tip_by_horizon["end"] = round(float(tip[-1]), 4)
        off = np.flatnonzero(tip > tolerance_m)
        return {
            "policy": self.policy,
            "seed": self.seed,
            "steps": len(self.actions),
            "imagined_return": round(float(np.sum(self.imagined_rewards)), 4),
            "true_return": round(float(np.sum(self.true_rewards)), 4),
            "psnr": by_horizon,
            "psnr_mean": round(float(per_step.mean()), 3),
            "fingertip_error_m": tip_by_horizon,
            "fingertip_error_mean_m": round(float(tip.mean()), 4),
            # steps before the imagined fingertip first strays further than the tolerance
            "tracks_for_steps": int(off[0]) if len(off) else len(tip),
        }


def demo(cfg: DemoConfig) -> dict:
    """Run both episodes, write the three outputs, print a summary; returns the report."""
    import gymnasium as gym

    from wm_sim.envs.catalog import make_task
    from wm_sim.policies.scripted import RandomPolicy, ReacherGoalExpert

    started = time.perf_counter()
    out = Path(cfg.out)
    report_path = out / "report.json"
    if report_path.exists():
        raise WmSimError(f"{report_path} exists; choose another out= (a demo never overwrites one)")
    if cfg.context < 1:
        raise WmSimError(f"context must be at least 1 frame, got {cfg.context}")
    if not cfg.track_tolerance_m > 0:
        raise WmSimError(f"track_tolerance_m must be a positive distance, got {cfg.track_tolerance_m}")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    env = gym.make("wm_sim/WorldModel-v0", checkpoint=cfg.checkpoint).unwrapped
    if env.sim.task != "reacher":
        raise WmSimError(f"the demo drives reacher's expert; {cfg.checkpoint} models {env.sim.task!r}")
    task = make_task("reacher", env.sim.config.image_size)
    episodes = []
    bar = tqdm(total=2 * env.sim.engine.episode_steps, desc="demo", unit="step")
    for index, name in enumerate(("expert", "random")):
        seed = cfg.seed + index
        task.reset(seed)
        policy = ReacherGoalExpert(task.goal()) if name == "expert" else RandomPolicy(2, seed=seed)
        episodes.append(_episode(env, task, policy, name, seed, cfg.context, bar))
    bar.close()
    env.close()
    task.close()

    out.mkdir(parents=True, exist_ok=True)
    video = write_video(out / "demo.mp4", _side_by_side(episodes), fps=env.sim.fps)
    plot = save_figure(_reward_figure(episodes, cfg.track_tolerance_m), out / "rewards.png")
    latencies = np.concatenate([e.latencies_ms for e in episodes])
    report = {
        "checkpoint": cfg.checkpoint,
        "options": asdict(cfg),
        "episodes": [e.summary(cfg.track_tolerance_m) for e in episodes],
        "step_latency_ms": {
            "median": round(float(np.median(latencies)), 3),
            "p99": round(float(np.percentile(latencies, 99)), 3),
            "mean": round(float(latencies.mean()), 3),
        },
        "files": {"video": video.name, "rewards": plot.name},
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(report_path, report)
    _print_summary(report, [video, plot, report_path])
    return report


def _episode(env, task, policy, name: str, seed: int, context: int, bar) -> Episode:
    """Real context frames from MuJoCo, the imagined episode from there, then its MuJoCo replay."""
    obs = task.observe()
    frames, states, actions = [obs["pixels"]], [obs["agent_pos"]], []
    for _ in range(context - 1):  # the world model starts from what the real camera saw
        action = policy.act({k: v[None] for k, v in obs.items()})[0]
        obs = task.step(action).obs
        frames.append(obs["pixels"])
        states.append(obs["agent_pos"])
        actions.append(action)
    start = task.get_physics_state()
    episode = Episode(name, seed)
    options = {"frames": np.stack(frames), "agent_pos": np.stack(states)}
    if actions:
        options["actions"] = np.stack(actions)
    imagined, _ = env.reset(seed=seed, options=options)
    done = False
    while not done:
        action = policy.act({k: v[None] for k, v in imagined.items()})[0]
        tick = time.perf_counter()
        imagined, reward, terminated, truncated, _ = env.step(action)
        episode.latencies_ms.append((time.perf_counter() - tick) * 1e3)
        episode.actions.append(action)
        episode.imagined_frames.append(imagined["pixels"])
        episode.imagined_rewards.append(reward)
        episode.imagined_states.append(imagined["agent_pos"])
        done = terminated or truncated
        bar.update(1)
    for result in replay_in_physics(task, start, episode.actions):  # the same state and actions, real physics
        episode.true_frames.append(result.obs["pixels"])
        episode.true_rewards.append(result.reward)
        episode.true_states.append(result.obs["agent_pos"])
    return episode


def _side_by_side(episodes: list[Episode], scale: int = 4) -> list[np.ndarray]:
    """Video frames: imagined | MuJoCo, with a caption naming the policy and step."""
    return [
        captioned_pair(
            imagined, true, f"imagined ({episode.policy}, step {t + 1})", "MuJoCo, same actions", scale
        )
        for episode in episodes
        for t, (imagined, true) in enumerate(zip(episode.imagined_frames, episode.true_frames, strict=True))
    ]


def _reward_figure(episodes: list[Episode], tolerance_m: float):
    """Top row: imagined vs true reward per step; bottom row: how far the imagined arm is from the real one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(episodes), figsize=(5 * len(episodes), 5.6), sharex=True, squeeze=False)
    for column, episode in enumerate(episodes):
        steps = np.arange(1, len(episode.true_rewards) + 1)
        top, bottom = axes[0, column], axes[1, column]
        top.plot(steps, episode.true_rewards, label="MuJoCo (true)", color="black")
        top.plot(steps, episode.imagined_rewards, label="world model (imagined)", color="tab:orange")
        top.set_title(f"{episode.policy} policy")
        bottom.plot(steps, 100 * episode.fingertip_error_m(), color="tab:blue")
        bottom.axhline(
            100 * tolerance_m, color="grey", linestyle="--", linewidth=1, label="tracking tolerance"
        )
        bottom.set_xlabel("step")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("reward")
    axes[0, 0].legend()
    axes[1, 0].set_ylabel("fingertip: imagined - true (cm)")
    axes[1, 0].legend()
    fig.suptitle("the same actions in the world model and in MuJoCo: reward per step, and where the arm is")
    fig.tight_layout()
    return fig


def _print_summary(report: dict, paths: list[Path]) -> None:
    lines = []
    for e in report["episodes"]:
        psnrs = ", ".join(f"{'' if h == 'end' else 'h'}{h}={v:.1f}" for h, v in e["psnr"].items())
        lines.append(
            f"{e['policy']:>6}: {e['steps']} steps, return imagined {e['imagined_return']:.2f} "
            f"vs MuJoCo {e['true_return']:.2f}; PSNR dB {psnrs}; arm tracked for "
            f"{e['tracks_for_steps']} steps (fingertip within {report['options']['track_tolerance_m']} m)"
        )
    latency = report["step_latency_ms"]
    lines.append(f"env.step: median {latency['median']:.1f} ms, p99 {latency['p99']:.1f} ms")
    lines += [f"wrote {p}" for p in paths]
    lines.append(f"done in {report['seconds']:.0f} s")
    print("\n".join(lines))
