"""`wm-sim rank`: does the world model order policies the way MuJoCo does?

Every policy runs from the same start states in MuJoCo (true return) and in the world model
(imagined return, closed loop from the same first frame). The two orderings are compared with
Spearman's and Pearson's correlation and the mean maximum rank violation (MMRV): for each policy,
the largest true-return difference to a policy the world model puts on the wrong side of it,
averaged over policies. A team that would pick its policy in imagination loses at most that much.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wm_sim.checkpoint import write_json
from wm_sim.errors import WmSimError
from wm_sim.media import save_figure
from wm_sim.verify import Harness, check_imagined_reward, pearson

# Spread-out quality without any training: random, the expert under five noise scales and the
# expert; then the task's shipped imagination-trained policy where wm-sim packages one.
# docs/policies.md ("Ranking policies") adds training checkpoints.
NOISE_LADDER = [
    "random",
    "noisy_expert:1.0",
    "noisy_expert:0.6",
    "noisy_expert:0.4",
    "noisy_expert:0.25",
    "noisy_expert:0.1",
    "expert",
]


def default_population(task: str) -> list[str]:
    """The noise ladder, and `shipped:<task>` where a policy for the task is packaged."""
    from wm_sim.policies.saved import resolve_policy

    try:
        resolve_policy(f"shipped:{task}")
    except WmSimError:
        return list(NOISE_LADDER)
    return [*NOISE_LADDER, f"shipped:{task}"]


@dataclass
class RankConfig:
    """Options of `wm-sim rank`."""

    policies: list[str] = field(
        default_factory=list,
        metadata={"help": "policies to rank, [a,b,...]; empty: the task's noisy experts and shipped policy"},
    )
    task: str = field(default="reacher", metadata={"help": "the MuJoCo task"})
    checkpoint: str = field(default="", metadata={"help": "world model; empty: shipped:<task>"})
    episodes: int = field(default=20, metadata={"help": "episodes per policy, the same start states for all"})
    batch: int = field(default=10, metadata={"help": "episodes run side by side"})
    seed: int = field(default=1000, metadata={"help": "start state of episode i is seed + i"})
    out: str = field(default="outputs/rank", metadata={"help": "folder for rank.json and rank.png"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    reward: str = field(
        default="auto",
        metadata={
            "help": "imagined reward: model (the world model's), task (the task's own, read off the imagined"
            " frames) or auto (task where the task has one, as push does; else model)"
        },
    )


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `values` (ascending), ties sharing their mean rank."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    return pearson(average_ranks(a), average_ranks(b))


def mmrv(true: np.ndarray, imagined: np.ndarray) -> float:
    """Mean over policies of the largest |true_i - true_j| among pairs the imagined order flips."""
    true, imagined = np.asarray(true, float), np.asarray(imagined, float)
    flipped = (true[:, None] < true[None, :]) != (imagined[:, None] < imagined[None, :])
    return float((np.abs(true[:, None] - true[None, :]) * flipped).max(axis=1).mean())


def rank(cfg: RankConfig) -> dict:
    """Evaluate every policy both ways, write rank.json and rank.png; returns the report."""
    import torch

    from wm_sim.policies.catalog import describe

    started = time.perf_counter()
    policies = list(cfg.policies) or default_population(cfg.task)
    if len(policies) < 3 or len(set(policies)) != len(policies):
        raise WmSimError(f"rank needs at least 3 distinct policies, got {policies}")
    if cfg.episodes < 1 or cfg.batch < 1:
        raise WmSimError(f"episodes and batch must be at least 1, got {cfg.episodes} and {cfg.batch}")
    check_imagined_reward(cfg.reward)  # before anything runs
    out = Path(cfg.out)
    if (out / "rank.json").exists():
        raise WmSimError(f"{out / 'rank.json'} exists; choose another out= (rank never overwrites a report)")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    checkpoint = cfg.checkpoint or f"shipped:{cfg.task}"
    harness = Harness(cfg.task, checkpoint, min(cfg.batch, cfg.episodes), reward=cfg.reward)
    seeds = cfg.seed + np.arange(cfg.episodes)
    rows = []
    with harness, tqdm(
        total=len(policies) * cfg.episodes * harness.episode_steps * 2, desc="rank", unit="step"
    ) as bar:
        for ref in policies:
            result = harness.run(ref, seeds, imagine=True, replay=False, bar=bar)
            rows.append(
                {
                    "policy": ref,
                    "label": describe(ref),
                    "true_return": float(result.true_returns.mean()),
                    "imagined_return": float(result.imagined_returns.mean()),
                    "true_return_std": float(result.true_returns.std()),
                    "success_rate": float(result.success.mean()),
                }
            )
    true = np.array([r["true_return"] for r in rows])
    imagined = np.array([r["imagined_return"] for r in rows])
    for r, t, i in zip(rows, average_ranks(-true), average_ranks(-imagined), strict=True):
        r["true_rank"], r["imagined_rank"] = float(t), float(i)
    spread = float(true.max() - true.min())
    report = {
        "task": cfg.task,
        "world_model": checkpoint,
        "imagined_reward": harness.reward,
        "episodes": cfg.episodes,
        "options": asdict(cfg),
        "spearman": spearman(true, imagined),
        "pearson": pearson(true, imagined),
        "mmrv": mmrv(true, imagined),
        "mmrv_normalized": mmrv(true, imagined) / spread if spread > 0 else 0.0,
        "policies": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    report["files"] = {"plot": save_figure(_figure(rows, report), out / "rank.png").name}
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "rank.json", report)
    print(f"{'policy':<40} {'true':>9} {'imagined':>9}  rank true/imagined")
    for r in sorted(rows, key=lambda r: r["true_rank"]):
        print(
            f"{r['label']:<40} {r['true_return']:>9.2f} {r['imagined_return']:>9.2f}  {r['true_rank']:.0f}/{r['imagined_rank']:.0f}"
        )
    print(
        f"spearman {_fmt(report['spearman'])}, pearson {_fmt(report['pearson'])}, "
        f"MMRV {report['mmrv']:.2f} ({report['mmrv_normalized']:.3f} of the true-return range); "
        f"wrote {out}/rank.json ({report['seconds']:.0f} s)"
    )
    return report


def _figure(rows: list[dict], report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    true = [r["true_return"] for r in rows]
    imagined = [r["imagined_return"] for r in rows]
    ax.scatter(true, imagined, color="tab:blue", zorder=3)
    for r in rows:
        ax.annotate(
            r["label"],
            (r["true_return"], r["imagined_return"]),
            fontsize=7,
            xytext=(4, 2),
            textcoords="offset points",
        )
    lo, hi = min(true + imagined), max(true + imagined)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="imagined = true")
    ax.set_xlabel("mean true return (MuJoCo)")
    ax.set_ylabel("mean imagined return (world model)")
    ax.set_title(
        f"{report['task']}: Spearman {_fmt(report['spearman'])}, Pearson {_fmt(report['pearson'])}, "
        f"MMRV {report['mmrv_normalized']:.3f}"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"
