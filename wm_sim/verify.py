"""`wm-sim verify`: the MuJoCo harness. Does what a policy earns in imagination hold in physics?

For each episode, from one MuJoCo start state:
  1. the policy runs closed-loop in the physics twin on real rendered pixels, with the true reward
     from the physics state;
  2. it runs closed-loop in the world model, seeded with the same first frame;
  3. MuJoCo's action sequence is replayed open-loop in the world model, step for step, so the
     imagined reward of each real step can be checked against the true one.
The reference policies (random, zero actions, and the expert where the task has one) and any
`baselines=` run in MuJoCo from the same start states to anchor the scores, with R a mean true
return: (R - R_random) / (R_expert - R_random), and (R - R_zero) / (R_expert - R_zero), because
standing still already beats random's control cost by a wide margin on reacher. Every policy's
seconds per action are timed around its act() calls in MuJoCo.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wm_sim.checkpoint import checkpoint_cameras, load_checkpoint, write_json
from wm_sim.errors import WmSimError
from wm_sim.media import captioned_pair, save_figure, write_video
from wm_sim.metrics import MIN_OBJECT_PIXELS
from wm_sim.paired_rollout import padded, replay_in_imagination


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
    baselines: list[str] = field(
        default_factory=list,
        metadata={"help": "more policies scored in MuJoCo only, like the references: [a,b,...]"},
    )
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
    act_seconds: float = 0.0  # wall-clock time inside policy.act() in MuJoCo
    act_calls: int = 0
    act_rows: int = 0  # actions returned by those calls, one per env row

    @property
    def true_returns(self) -> np.ndarray:
        return self.true_rewards.sum(axis=1)

    @property
    def imagined_returns(self) -> np.ndarray:
        return self.imagined_rewards.sum(axis=1)


IMAGINED_REWARDS = ("auto", "model", "task")


def check_imagined_reward(reward: str) -> None:
    """One clear error for a `reward=` that is not one of IMAGINED_REWARDS."""
    if reward not in IMAGINED_REWARDS:
        raise WmSimError(f"reward must be one of {', '.join(IMAGINED_REWARDS)}, got {reward!r}")


class Harness:
    """MuJoCo tasks and the world model's vector env, `batch` rows of each, reused across episodes."""

    def __init__(self, task: str, checkpoint: str, batch: int, reward: str = "model"):
        """`reward`: what an imagined step earns, the world model's reward ("model") or the task's
        own reward read off the imagined observation ("task", envs.observed_reward); "auto": the
        task's where it has one and the model sees the camera it is read from, else the model's."""
        from wm_sim.envs.catalog import make_task
        from wm_sim.envs.world_model_env import WorldModelVectorEnv

        _, meta = load_checkpoint(checkpoint)
        modelled = meta.get("dataset", {}).get("task", task)
        if modelled != task:
            raise WmSimError(f"task={task} but the world model {checkpoint} simulates {modelled!r}")
        check_imagined_reward(reward)
        self.cameras = checkpoint_cameras(meta, [])
        if len(self.cameras) > 1:
            raise WmSimError(
                f"verify and rank run world models of one camera; {checkpoint} sees {self.cameras}: "
                "train one on a dataset of one camera (wm-sim collect cameras=[top])"
            )
        if reward == "auto":
            reward = "task" if self._task_reads_this_model(task) else "model"
        if reward == "task":  # one clear error, before any episode: no such reward, or not this camera
            from wm_sim.envs.observed_reward import ObservedReward

            ObservedReward(task, self._reward_cameras(), np.zeros((1, 2)), 1)
        self.task, self.checkpoint, self.batch, self.reward = task, checkpoint, batch, reward
        # the harness ends each episode itself, after the task's steps: the env never truncates
        self.env = WorldModelVectorEnv(num_envs=batch, checkpoint=checkpoint, stream=True)
        self.env.reset(seed=0)
        size = self.env.sim.config.image_size  # MuJoCo renders what the model was trained on
        self.tasks = [make_task(task, image_size=size, cameras=self.cameras or None) for _ in range(batch)]
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

        `replay` also replays MuJoCo's actions open-loop in the model, for the per-step reward check
        (the model's own reward, whatever `reward` is).
        """
        t = self.episode_steps
        n = len(seeds)
        out = Rollouts(
            ref, np.zeros((n, t)), np.full((n, t), np.nan), np.full((n, t), np.nan), np.zeros(n, bool), seeds
        )
        for first in range(0, n, self.batch):
            chunk = seeds[first : first + self.batch]
            starts, goals, actions = self._in_physics(ref, chunk, first, out, keep_frames, bar)
            if imagine:
                self._in_imagination(ref, chunk, first, starts, goals, out, keep_frames, bar)
            if imagine and replay:
                self._replay(starts, actions, first, out)
        return out

    def check(self, ref: str) -> None:
        """Build policy `ref` for one MuJoCo row: a bad name or path is an error before any episode."""
        from wm_sim.policies.catalog import make_policy

        make_policy(ref, self.setting(1, False, 0, None))

    def _in_physics(self, ref, chunk, first, out: Rollouts, keep_frames: bool, bar):
        """1. MuJoCo, closed loop, real pixels, true reward; times every act() call."""
        from wm_sim.policies.catalog import make_policy

        k, t = len(chunk), self.episode_steps
        tasks = self.tasks[:k]
        starts = [task.reset(int(s)) for task, s in zip(tasks, chunk, strict=True)]
        goals = np.stack([task.goal() for task in tasks]) if hasattr(tasks[0], "goal") else None
        policy = make_policy(ref, self.setting(k, False, int(chunk[0]), goals))
        obs = _stack(starts)
        actions = np.zeros((k, t, policy.action_dim), np.float32)
        frames = np.zeros((k, t, *starts[0]["pixels"].shape), np.uint8) if keep_frames else None
        for step in range(t):
            tick = time.perf_counter()
            chosen = policy.act(obs)
            out.act_seconds += time.perf_counter() - tick
            out.act_calls, out.act_rows = out.act_calls + 1, out.act_rows + k
            actions[:, step] = chosen
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
        return starts, goals, actions

    def _in_imagination(self, ref, chunk, first, starts, goals, out: Rollouts, keep_frames: bool, bar):
        """2. The world model, closed loop from the same first frame."""
        from wm_sim.policies.catalog import make_policy

        k, t = len(chunk), self.episode_steps
        first_frames, first_state = _first_context(starts)
        policy = make_policy(ref, self.setting(k, True, int(chunk[0]), goals))
        obs = self.env.reset_to(first_frames, first_state, rows=np.arange(k))
        read, seen = self._task_reward(obs, goals, k)
        imagined = np.zeros((k, t, *starts[0]["pixels"].shape), np.uint8) if keep_frames else None
        for step in range(t):
            full = padded(policy.act({key: v[:k] for key, v in obs.items()}), self.batch)
            obs, reward, _, _, _ = self.env.step(full)
            if read is not None:  # the control cost of what the env applied: actions within bounds
                applied = np.clip(full[:k], -1.0, 1.0)
                reward, seen = read(obs["pixels"][:k], obs["agent_pos"][:k], applied, seen)
            out.imagined_rewards[first : first + k, step] = reward[:k]
            if imagined is not None:
                imagined[:, step] = obs["pixels"][:k]
            if bar is not None:
                bar.update(k)
        if imagined is not None:
            out.imagined_frames.extend(imagined)
        unseen = np.isnan(out.imagined_rewards[first : first + k]).any(axis=1)
        if read is not None and unseen.any():  # its reward needs the object seen; NaN ranks nothing
            raise WmSimError(
                f"reward=task: in the episode from seed {int(chunk[unseen][0])}, neither the start frame nor "
                f"the imagined frames up to some step showed {self.task}'s object (read by its colour, "
                f">= {MIN_OBJECT_PIXELS} pixels of a {self.env.sim.config.image_size}-pixel frame); use reward=model"
            )

    def _task_reward(self, obs: dict, goals: np.ndarray | None, k: int):
        """With reward="task": the reader of the task's reward off k rows' observations, and where
        the start frames `obs` show the task object; else (None, None)."""
        if self.reward != "task":
            return None, None
        from wm_sim.envs.observed_reward import ObservedReward

        read = ObservedReward(self.task, self._reward_cameras(), goals, k)
        _, seen = read(
            obs["pixels"][:k],
            obs["agent_pos"][:k],
            np.zeros((k, self.env.sim.config.action_dim)),
            read.unseen(),
        )
        return read, seen

    def _task_reads_this_model(self, task: str) -> bool:
        """Whether `task` has a reward read off observations, from a camera this model sees."""
        from wm_sim.envs.catalog import TASK_SPECS

        spec = TASK_SPECS.get(task)
        seen = spec is not None and spec.observed_camera in self._reward_cameras()
        return seen and bool(spec.observed_reward)

    def _reward_cameras(self) -> list[str]:
        """The model's cameras; a checkpoint from before they were recorded saw the top one."""
        return self.cameras or ["top"]

    def _replay(self, starts, actions: np.ndarray, first: int, out: Rollouts) -> None:
        """3. MuJoCo's actions replayed open-loop in the world model."""
        first_frames, first_state = _first_context(starts)
        rewards = replay_in_imagination(self.env, first_frames, first_state, actions)
        out.replayed_rewards[first : first + len(starts)] = rewards

    def close(self) -> None:
        self.env.close()
        for task in self.tasks:
            task.close()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stack(observations: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.stack([o[key] for o in observations]) for key in observations[0]}


def _first_context(starts: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The start observations as one-frame contexts: (k, 1, S, S, 3) frames, (k, 1, D) states."""
    frames = np.stack([s["pixels"] for s in starts])[:, None]
    return frames, np.stack([s["agent_pos"] for s in starts])[:, None]


def normalized_score(
    policy: float, reference: float, expert: float | None, name: str = "random"
) -> tuple[float, str]:
    """(R - R_ref) / (R_expert - R_ref); without an expert, (R - R_ref) / |R_ref|. NaN where the
    two references' returns are equal, since there is then no scale to read the policy on."""
    if expert is not None:
        span = expert - reference
        score = (policy - reference) / span if span != 0 else float("nan")
    else:
        score = (policy - reference) / max(abs(reference), 1e-8)
    return score, score_formula(name, expert is not None)


def score_formula(name: str, has_expert: bool) -> str:
    if has_expert:
        return f"(R - R_{name}) / (R_expert - R_{name})"
    return f"(R - R_{name}) / |R_{name}| (the task has no expert)"


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
    references = ["random", "zero", *(["expert"] if task_has_expert(cfg.task) else [])]
    # a baseline already among the references (or the policy itself) is run and listed once
    extra = [ref for ref in dict.fromkeys(cfg.baselines) if ref not in (*references, cfg.policy)]
    harness = Harness(cfg.task, checkpoint, min(cfg.batch, cfg.episodes))
    seeds = cfg.seed + np.arange(cfg.episodes)
    try:
        for ref in extra:
            harness.check(ref)
        others = [ref for ref in (*references, *extra) if ref != cfg.policy]
        steps = cfg.episodes * harness.episode_steps * (2 + len(others))
        with tqdm(total=steps, desc="verify", unit="step") as bar:
            main = harness.run(cfg.policy, seeds, imagine=True, keep_frames=cfg.videos, bar=bar)
            runs = {ref: harness.run(ref, seeds, imagine=False, bar=bar) for ref in others}
    finally:
        harness.close()
    reference_runs = {name: runs.get(name, main) for name in references}
    baselines = {ref: runs[ref] for ref in extra}

    out.mkdir(parents=True, exist_ok=True)
    report = summarise(cfg, checkpoint, main, reference_runs, baselines)
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


def summarise(
    cfg: VerifyConfig,
    checkpoint: str,
    main: Rollouts,
    reference_runs: dict[str, Rollouts],
    baselines: dict[str, Rollouts] | None = None,
) -> dict:
    means = {name: float(r.true_returns.mean()) for name, r in reference_runs.items()}
    score, formula = normalized_score(float(main.true_returns.mean()), means["random"], means.get("expert"))
    table = policy_table({cfg.policy: main}, reference_runs, baselines or {})
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
        "normalized_score": _finite(score),
        "normalized_score_formula": formula,
        "score_vs_zero": table[cfg.policy]["score_vs_zero"],
        "score_vs_zero_formula": score_formula("zero", "expert" in means),
        "policies": table,
        "success_rate": float(main.success.mean()),
        "success_rate_random": float(reference_runs["random"].success.mean()),
        **(
            {"success_rate_expert": float(reference_runs["expert"].success.mean())}
            if "expert" in reference_runs
            else {}
        ),
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


def policy_table(
    main: dict[str, Rollouts], reference_runs: dict[str, Rollouts], baselines: dict[str, Rollouts]
) -> dict[str, dict]:
    """One row per policy: success, mean true return, both scores and the time it takes to act.

    seconds_per_action is per env row: a planner that answers a batch of rows in one call shows
    its per-call time and batch size beside it, so neither figure flatters it.
    """
    expert = float(reference_runs["expert"].true_returns.mean()) if "expert" in reference_runs else None
    random, zero = (float(reference_runs[name].true_returns.mean()) for name in ("random", "zero"))
    table = {}
    for name, r in {
        **main,
        **{k: v for k, v in reference_runs.items() if k not in main},
        **baselines,
    }.items():
        mean = float(r.true_returns.mean())
        table[name] = {
            "role": "policy" if name in main else "reference" if name in reference_runs else "baseline",
            "success_rate": float(r.success.mean()),
            "mean_true_return": mean,
            "score_vs_random": _finite(normalized_score(mean, random, expert)[0]),
            "score_vs_zero": _finite(normalized_score(mean, zero, expert, "zero")[0]),
            "seconds_per_action": r.act_seconds / max(r.act_rows, 1),
            "seconds_per_act_call": r.act_seconds / max(r.act_calls, 1),
            "rows_per_call": r.act_rows / max(r.act_calls, 1),
        }
    return table


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined score is written as null."""
    return float(value) if np.isfinite(value) else None


def _figure(main: Rollouts, report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.scatter(main.true_returns, main.imagined_returns, s=16, color="tab:blue")
    lo = min(main.true_returns.min(), main.imagined_returns.min())
    hi = max(main.true_returns.max(), main.imagined_returns.max())
    left.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="imagined = true")
    colours = {"expert": "black", "random": "tab:red", "zero": "tab:green"}
    for name, value in report["mean_true_return"].items():
        if name != "policy":
            left.axvline(value, color=colours.get(name, "grey"), lw=1, ls=":", label=f"{name} (mean)")
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
    score = _fmt(report["normalized_score"])
    fig.suptitle(f"{report['policy']} on {report['task']}: normalized score {score}")
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
        f"normalized score {_fmt(report['normalized_score'], 3)}  {report['normalized_score_formula']}",
        f"score vs zero actions {_fmt(report['score_vs_zero'], 3)}  {report['score_vs_zero_formula']}",
        f"success rate {report['success_rate']:.2f}; imagined return {report['mean_imagined_return']:.2f}",
        f"imagined vs true return: pearson {report['imagined_vs_true_return']['pearson']}",
        f"replayed actions, per-step reward: pearson {report['replayed_reward_agreement']['pearson']}, "
        f"mean abs error {report['replayed_reward_agreement']['mean_abs_error']:.4f}",
        *_table_lines(report["policies"]),
        f"wrote {out}/verify.json ({report['seconds']:.0f} s)",
    ]
    print("\n".join(lines))


def _table_lines(table: dict[str, dict]) -> list[str]:
    """One line per policy: what verify.json's `policies` holds."""
    from wm_sim.policies.catalog import describe

    header = f"{'policy':<28} {'role':<9} {'success':>7} {'true return':>11} {'vs random':>9} {'vs zero':>8} {'s/action':>9} {'rows/call':>9}"
    lines = [header]
    for name, row in table.items():
        lines.append(
            f"{describe(name)[:28]:<28} {row['role']:<9} {row['success_rate']:>7.2f} "
            f"{row['mean_true_return']:>11.2f} {_fmt(row['score_vs_random'], 3):>9} "
            f"{_fmt(row['score_vs_zero'], 3):>8} {row['seconds_per_action']:>9.2e} {row['rows_per_call']:>9.1f}"
        )
    return lines


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
