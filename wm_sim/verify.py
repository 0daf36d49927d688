"""`wm-sim verify`: the MuJoCo harness. Does what a policy earns in imagination hold in physics?

For each episode, from one MuJoCo start state:
  1. the policy runs closed-loop in the physics twin on real rendered pixels, with the true reward
     from the physics state;
  2. it runs closed-loop in the world model, seeded with the same first frame;
  3. MuJoCo's action sequence is replayed open-loop in the world model, step for step, so the
     imagined reward of each real step can be checked against the true one.
The expert and random policies run in MuJoCo from the same start states to anchor the score:
(R - R_random) / (R_expert - R_random), with R a mean true return.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wm_sim.checkpoint import load_checkpoint, write_json
from wm_sim.errors import WmSimError
from wm_sim.media import captioned_pair, save_figure, write_video


@dataclass
class VerifyConfig:
    """Options of `wm-sim verify`."""

    policy: str = field(
        default="shipped:reacher", metadata={"help": "a policy name or saved policy (see docs)"}
    )
    task: str = field(default="reacher", metadata={"help": "the MuJoCo task"})
    checkpoint: str = field(default="", metadata={"help": "world model; empty: shipped:<task>"})
    episodes: int = field(default=50, metadata={"help": "episodes, each from its own start state"})
    batch: int = field(default=10, metadata={"help": "episodes run side by side"})
    seed: int = field(default=0, metadata={"help": "start state of episode i is seed + i"})
    out: str = field(default="", metadata={"help": "output folder; empty: outputs/verify/<policy>"})
    videos: bool = field(default=True, metadata={"help": "write the best and the worst episode as MP4"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})


@dataclass
class Rollouts:
    """One policy's episodes: true, imagined and replayed rewards, (E, T) each."""

    policy: str
    true_rewards: np.ndarray
    imagined_rewards: np.ndarray
    replayed_rewards: np.ndarray
    success: np.ndarray  # (E,) the task's success flag at the last step
    seeds: np.ndarray
    true_frames: list[np.ndarray] = field(default_factory=list)  # per episode (T, S, S, 3), if kept
    imagined_frames: list[np.ndarray] = field(default_factory=list)

    @property
    def true_returns(self) -> np.ndarray:
        return self.true_rewards.sum(axis=1)

    @property
    def imagined_returns(self) -> np.ndarray:
        return self.imagined_rewards.sum(axis=1)


class Harness:
    """MuJoCo tasks and the world model's vector env, `batch` rows of each, reused across episodes."""

    def __init__(self, task: str, checkpoint: str, batch: int):
        from wm_sim.envs.catalog import make_task
        from wm_sim.envs.world_model_env import WorldModelVectorEnv

        _, meta = load_checkpoint(checkpoint)
        modelled = meta.get("dataset", {}).get("task", task)
        if modelled != task:
            raise WmSimError(f"task={task} but the world model {checkpoint} simulates {modelled!r}")
        self.task, self.checkpoint, self.batch = task, checkpoint, batch
        self.env = WorldModelVectorEnv(num_envs=batch, checkpoint=checkpoint)
        self.env.reset(seed=0)
        self.tasks = [make_task(task, image_size=self.env.sim.config.image_size) for _ in range(batch)]
        self.episode_steps = self.tasks[0].episode_steps
        self.fps = self.tasks[0].fps

    def setting(self, rows: int, imagination: bool, seed: int, goals: np.ndarray | None):
        from wm_sim.policies.catalog import Setting

        config = self.env.sim.config
        return Setting(
            task=self.task, num_envs=rows, action_dim=config.action_dim, image_size=config.image_size,
            state_dim=config.state_dim, tasks=None if imagination else self.tasks[:rows], goals=goals,
            world_model=self.checkpoint, seed=seed,
        )  # fmt: skip

    def run(
        self,
        ref: str,
        seeds: np.ndarray,
        imagine: bool = True,
        replay: bool = True,
        keep_frames: bool = False,
        bar=None,
    ) -> Rollouts:
        """Episodes of policy `ref` from start states `seeds`: in MuJoCo, and (if `imagine`) in the model.

        `replay` also replays MuJoCo's actions open-loop in the model, for the per-step reward check.
        """
        from wm_sim.policies.catalog import make_policy

        t = self.episode_steps
        n = len(seeds)
        out = Rollouts(
            ref, np.zeros((n, t)), np.full((n, t), np.nan), np.full((n, t), np.nan), np.zeros(n, bool), seeds
        )
        for first in range(0, n, self.batch):
            chunk = seeds[first : first + self.batch]
            k = len(chunk)
            tasks = self.tasks[:k]
            starts = [task.reset(int(s)) for task, s in zip(tasks, chunk, strict=True)]
            goals = np.stack([task.goal() for task in tasks]) if hasattr(tasks[0], "goal") else None
            # 1. MuJoCo, closed loop, real pixels, true reward
            policy = make_policy(ref, self.setting(k, False, int(chunk[0]), goals))
            obs = _stack(starts)
            actions = np.zeros((k, t, policy.action_dim), np.float32)
            frames = np.zeros((k, t, *starts[0]["pixels"].shape), np.uint8) if keep_frames else None
            for step in range(t):
                actions[:, step] = policy.act(obs)
                results = [task.step(a) for task, a in zip(tasks, actions[:, step], strict=True)]
                out.true_rewards[first : first + k, step] = [r.reward for r in results]
                obs = _stack([r.obs for r in results])
                if frames is not None:
                    frames[:, step] = obs["pixels"]
                if bar is not None:
                    bar.update(k)
            out.success[first : first + k] = [r.success for r in results]
            if frames is not None:
                out.true_frames.extend(frames)
            if not imagine:
                continue
            first_frames = np.stack([s["pixels"] for s in starts])[:, None]
            first_state = np.stack([s["agent_pos"] for s in starts])[:, None]
            rows = np.arange(k)
            # 2. the world model, closed loop from the same first frame
            policy = make_policy(ref, self.setting(k, True, int(chunk[0]), goals))
            obs = self.env.reset_to(first_frames, first_state, rows=rows)
            imagined = np.zeros((k, t, *starts[0]["pixels"].shape), np.uint8) if keep_frames else None
            for step in range(t):
                full = self._pad(policy.act({key: v[:k] for key, v in obs.items()}))
                obs, reward, _, _, _ = self.env.step(full)
                out.imagined_rewards[first : first + k, step] = reward[:k]
                if imagined is not None:
                    imagined[:, step] = obs["pixels"][:k]
                if bar is not None:
                    bar.update(k)
            if imagined is not None:
                out.imagined_frames.extend(imagined)
            # 3. MuJoCo's actions replayed open-loop in the world model
            if not replay:
                continue
            self.env.reset_to(first_frames, first_state, rows=rows)
            for step in range(t):
                _, reward, _, _, _ = self.env.step(self._pad(actions[:, step]))
                out.replayed_rewards[first : first + k, step] = reward[:k]
        return out

    def _pad(self, actions: np.ndarray) -> np.ndarray:
        """Rows beyond a short last chunk idle with zero actions (their results are ignored)."""
        full = np.zeros((self.batch, actions.shape[1]), np.float32)
        full[: len(actions)] = actions
        return full

    def close(self) -> None:
        self.env.close()
        for task in self.tasks:
            task.close()


def _stack(observations: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.stack([o[key] for o in observations]) for key in observations[0]}


def normalized_score(policy: float, random: float, expert: float | None) -> tuple[float, str]:
    """(R - R_random) / (R_expert - R_random); without an expert, (R - R_random) / |R_random|."""
    if expert is not None:
        return (policy - random) / (expert - random), "(R - R_random) / (R_expert - R_random)"
    return (policy - random) / max(abs(random), 1e-8), "(R - R_random) / |R_random| (the task has no expert)"


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def verify(cfg: VerifyConfig) -> dict:
    """Run the harness, write verify.json, verify.png and the best/worst videos; returns the report."""
    import torch

    from wm_sim.envs.catalog import task_has_expert
    from wm_sim.policies.catalog import describe

    started = time.perf_counter()
    if cfg.episodes < 1 or cfg.batch < 1:
        raise WmSimError(f"episodes and batch must be at least 1, got {cfg.episodes} and {cfg.batch}")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out or f"outputs/verify/{describe(cfg.policy).replace(':', '-')}")
    if (out / "verify.json").exists():
        raise WmSimError(
            f"{out / 'verify.json'} exists; choose another out= (verify never overwrites a report)"
        )
    checkpoint = cfg.checkpoint or f"shipped:{cfg.task}"
    harness = Harness(cfg.task, checkpoint, min(cfg.batch, cfg.episodes))
    seeds = cfg.seed + np.arange(cfg.episodes)
    has_expert = task_has_expert(cfg.task)
    references = ["random", *(["expert"] if has_expert else [])]
    steps = cfg.episodes * harness.episode_steps * (2 + len(references))
    with tqdm(total=steps, desc="verify", unit="step") as bar:
        main = harness.run(cfg.policy, seeds, imagine=True, keep_frames=cfg.videos, bar=bar)
        anchors = {name: harness.run(name, seeds, imagine=False, bar=bar) for name in references}
    harness.close()

    out.mkdir(parents=True, exist_ok=True)
    report = summarise(cfg, checkpoint, main, anchors)
    report["files"] = {"plot": save_figure(_figure(main, report), out / "verify.png").name}
    if cfg.videos:
        for label, episode in (
            ("best", int(np.argmax(main.true_returns))),
            ("worst", int(np.argmin(main.true_returns))),
        ):
            video = write_video(out / f"{label}.mp4", _side_by_side(main, episode), fps=harness.fps)
            report["files"][f"{label}_video"] = video.name
            report[f"{label}_episode"] = {
                "seed": int(seeds[episode]),
                "true_return": round(float(main.true_returns[episode]), 3),
            }
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "verify.json", report)
    _print(report, out)
    return report


def summarise(cfg: VerifyConfig, checkpoint: str, main: Rollouts, anchors: dict[str, Rollouts]) -> dict:
    means = {name: float(r.true_returns.mean()) for name, r in anchors.items()}
    score, formula = normalized_score(float(main.true_returns.mean()), means["random"], means.get("expert"))
    gap = main.imagined_returns - main.true_returns
    replay = main.replayed_rewards.flatten(), main.true_rewards.flatten()
    per_episode = [
        {
            "seed": int(s),
            "true_return": round(float(tr), 4),
            "imagined_return": round(float(ir), 4),
            "gap": round(float(ir - tr), 4),
            "success": bool(ok),
        }
        for s, tr, ir, ok in zip(
            main.seeds, main.true_returns, main.imagined_returns, main.success, strict=True
        )
    ]
    return {
        "policy": cfg.policy,
        "task": cfg.task,
        "world_model": checkpoint,
        "episodes": len(main.seeds),
        "options": asdict(cfg),
        "mean_true_return": {"policy": float(main.true_returns.mean()), **means},
        "mean_imagined_return": float(main.imagined_returns.mean()),
        "normalized_score": float(score),
        "normalized_score_formula": formula,
        "success_rate": float(main.success.mean()),
        "success_rate_random": float(anchors["random"].success.mean()),
        **({"success_rate_expert": float(anchors["expert"].success.mean())} if "expert" in anchors else {}),
        "imagined_vs_true_return": {
            "pearson": pearson(main.imagined_returns, main.true_returns),
            "mean_gap": float(gap.mean()),
            "mean_abs_gap": float(np.abs(gap).mean()),
        },
        "replayed_reward_agreement": {
            "pearson": pearson(*replay),
            "mean_abs_error": float(np.abs(replay[0] - replay[1]).mean()),
        },
        "per_episode": per_episode,
    }


def _figure(main: Rollouts, report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.scatter(main.true_returns, main.imagined_returns, s=16, color="tab:blue")
    lo = min(main.true_returns.min(), main.imagined_returns.min())
    hi = max(main.true_returns.max(), main.imagined_returns.max())
    left.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="imagined = true")
    for name, value in report["mean_true_return"].items():
        if name != "policy":
            left.axvline(
                value, color="black" if name == "expert" else "tab:red", lw=1, ls=":", label=f"{name} (mean)"
            )
    r = report["imagined_vs_true_return"]["pearson"]
    left.set_title(f"returns per episode (r = {r:.2f})" if r is not None else "returns per episode")
    left.set_xlabel("true return (MuJoCo)")
    left.set_ylabel("imagined return (world model)")
    left.legend(fontsize=8)
    episode = int(np.argmax(main.true_returns))
    steps = np.arange(1, main.true_rewards.shape[1] + 1)
    right.plot(steps, main.true_rewards[episode], color="black", label="MuJoCo (true)")
    right.plot(steps, main.replayed_rewards[episode], color="tab:orange", label="world model, same actions")
    right.set_title("reward per step, the best episode's actions replayed")
    right.set_xlabel("step")
    right.legend(fontsize=8)
    fig.suptitle(f"{report['policy']} on {report['task']}: normalized score {report['normalized_score']:.2f}")
    fig.tight_layout()
    return fig


def _side_by_side(main: Rollouts, episode: int, scale: int = 4) -> list[np.ndarray]:
    """MuJoCo | imagined (both closed loop from the same first frame), captioned."""
    pairs = zip(main.true_frames[episode], main.imagined_frames[episode], strict=True)
    return [
        captioned_pair(true, imagined, f"MuJoCo (step {t + 1})", "world model, same policy", scale)
        for t, (true, imagined) in enumerate(pairs)
    ]


def _print(report: dict, out: Path) -> None:
    means = report["mean_true_return"]
    lines = [
        f"{report['policy']} on {report['task']}, {report['episodes']} episodes",
        "mean true return: " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()),
        f"normalized score {report['normalized_score']:.3f}  {report['normalized_score_formula']}",
        f"success rate {report['success_rate']:.2f}; imagined return {report['mean_imagined_return']:.2f}",
        f"imagined vs true return: pearson {report['imagined_vs_true_return']['pearson']}",
        f"replayed actions, per-step reward: pearson {report['replayed_reward_agreement']['pearson']}, "
        f"mean abs error {report['replayed_reward_agreement']['mean_abs_error']:.4f}",
        f"wrote {out}/verify.json ({report['seconds']:.0f} s)",
    ]
    print("\n".join(lines))
