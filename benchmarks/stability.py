"""`stability`: a 4-minute closed-loop rollout that must still look like the task at its end.

One continuous stream per policy (12,000 steps of reacher at 50 fps; no reset, the KV cache's
window sliding all the way), each row of the engine driven by its own policy reading the imagined
observations. Every frame is reduced to statistics (per-channel mean and spread, a colour
histogram's distance to real frames), and the predicted joint angles are read before any
clipping. The ranges they are judged against come from the physics twin's real frames, run under the same
policies in the same run, so no dataset is needed. A rollout passes when, in every window of
`stability_window` steps, nearly all frames lie inside the real ranges (widened by a margin), and
every predicted joint angle lies within the joint limits. A picture that dissolves drifts out of
these ranges (colours wash to the mean, spread collapses, the histogram moves) and fails there.

Beside each verdict stands the decoder's ceiling: the same real frames encoded and decoded again
(no dynamics), judged against the same ranges. Where that share is low, the tokenizer cannot draw
the task's frames inside them, and no better dynamics would make the stream hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from wm_sim.benchmarks.context import Bench
from wm_sim.benchmarks.stats import target

from wm_sim.errors import WmSimError
from wm_sim.world_model import WorldModel

BINS = 4  # levels per colour channel: a 4 x 4 x 4 = 64-bin colour histogram
STAT_NAMES = ("mean_r", "mean_g", "mean_b", "spread_r", "spread_g", "spread_b", "histogram_distance")
MARGIN = 0.1  # real ranges are widened by this fraction of their span
MIN_IN_RANGE = 0.9  # of a window's frames
JOINT_TOLERANCE = 0.05  # rad beyond a joint limit still counts as within it (float rounding)
CONTEXT = 4  # real frames each stream starts from
SNAPSHOTS = 6  # frames kept per stream for the plot


def frame_statistics(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame colour statistics of (B, S, S, 3) uint8 frames.

    Returns (B, 6) per-channel mean and standard deviation in [0, 1], and (B, BINS**3) normalised
    colour histograms.
    """
    x = pixels.float().flatten(1, 2) / 255.0  # (B, S*S, 3)
    moments = torch.cat([x.mean(1), x.std(1)], dim=1)
    levels = (pixels.long() * BINS // 256).flatten(1, 2)  # (B, S*S, 3) in [0, BINS)
    index = levels[..., 0] * BINS * BINS + levels[..., 1] * BINS + levels[..., 2]
    hist = torch.zeros(pixels.shape[0], BINS**3, device=pixels.device)
    hist.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float32))
    return moments, hist / index.shape[1]


def histogram_distance(hist: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Total-variation distance (0: same colours, 1: disjoint) of each histogram to `reference`."""
    return 0.5 * np.abs(hist - reference).sum(-1)


def judged_statistics(pixels: torch.Tensor, mean_histograms: np.ndarray) -> np.ndarray:
    """Every STAT_NAMES statistic of (B, S, S, 3) uint8 frames, (B, len(STAT_NAMES)): the moments,
    and the histogram's distance to `mean_histograms` (each row's, or one for all)."""
    moments, hists = frame_statistics(pixels)
    distance = histogram_distance(hists.cpu().numpy(), mean_histograms)
    return np.concatenate([moments.cpu().numpy(), distance[:, None]], axis=1)


def by_statistic(stats: np.ndarray, reference: Reference) -> dict:
    """Where each statistic of frames' stats (T, len(STAT_NAMES)) sits beside its range (how far out
    a failing one is), and how often it leaves it (the way the picture fails, if it does)."""
    inside = (stats >= reference.low) & (stats <= reference.high)
    return {
        "median_by_statistic": {n: round(float(np.median(stats[:, i])), 4) for i, n in enumerate(STAT_NAMES)},
        "out_of_range_by_statistic": {n: round(float(1.0 - inside[:, i].mean()), 4) for i, n in enumerate(STAT_NAMES)},
    }


@dataclass
class Reference:
    """What real frames and joints of one policy look like: ranges of every statistic."""

    mean_histogram: np.ndarray  # (BINS**3,)
    low: np.ndarray  # (len(STAT_NAMES),)
    high: np.ndarray
    joint_low: np.ndarray  # joint limits, (J,)
    joint_high: np.ndarray
    real_joint_range: tuple[np.ndarray, np.ndarray]  # seen in the real frames

    @classmethod
    def from_real(
        cls,
        moments: np.ndarray,
        hists: np.ndarray,
        joints: np.ndarray,
        limits: tuple[np.ndarray, np.ndarray],
    ) -> Reference:
        """Ranges of real frames' statistics (moments (T, 6), histograms (T, BINS**3)), widened.

        Real MuJoCo frames alone: the frames as the model's tokenizer redraws them once joined
        these ranges, and they let a picture that had faded (less colour spread than any real
        frame, a target no longer drawn) pass as if it held.
        """
        mean_hist = hists.mean(0)
        stats = np.concatenate([moments, histogram_distance(hists, mean_hist)[:, None]], axis=1)
        low, high = stats.min(0), stats.max(0)
        span = np.maximum(high - low, 1e-6)
        low, high = low - MARGIN * span, high + MARGIN * span
        low[-1] = 0.0  # a histogram closer to the real ones than any real frame is no failure
        return cls(mean_hist, low, high, limits[0], limits[1], (joints.min(0), joints.max(0)))

    def to_dict(self) -> dict:
        return {
            "ranges": {
                n: [round(float(a), 4), round(float(b), 4)]
                for n, a, b in zip(STAT_NAMES, self.low, self.high, strict=True)
            },
            "joint_limits": [self.joint_low.round(4).tolist(), self.joint_high.round(4).tolist()],
            "real_joint_range": [r.round(4).tolist() for r in self.real_joint_range],
        }


def judge(stats: np.ndarray, joints: np.ndarray, reference: Reference, window: int, fps: float) -> dict:
    """Pass/fail of one stream: stats (T, len(STAT_NAMES)) and raw joint angles (T, J) over time."""
    inside = ((stats >= reference.low) & (stats <= reference.high)).all(1)  # (T,)
    starts = range(0, max(len(inside) - window + 1, 1), window)
    fractions = np.array([inside[s : s + window].mean() for s in starts])
    failing = np.flatnonzero(fractions < MIN_IN_RANGE)
    low, high = reference.joint_low - JOINT_TOLERANCE, reference.joint_high + JOINT_TOLERANCE
    joints_out = ~((joints >= low) & (joints <= high)).all(1)
    first_bad = [int(failing[0]) * window] if len(failing) else []
    first_bad += [int(np.flatnonzero(joints_out)[0])] if joints_out.any() else []
    held = min(first_bad) if first_bad else len(inside)
    return {
        "passed": not first_bad,
        "frames_in_range": round(float(inside.mean()), 4),
        "worst_window_in_range": round(float(fractions.min()), 4),
        "worst_window_start_s": round(float(np.argmin(fractions)) * window / fps, 1),
        "joint_steps_out_of_limits": int(joints_out.sum()),
        "held_steps": int(held),
        "held_minutes": round(held / fps / 60.0, 2),
        **by_statistic(stats, reference),
    }


def _setting(bench: Bench, goal: np.ndarray | None, seed: int):
    from wm_sim.policies.catalog import Setting

    c = bench.model.config
    return Setting(
        task=bench.task, num_envs=1, action_dim=c.action_dim, image_size=c.image_size, state_dim=c.state_dim,
        goals=None if goal is None else goal[None], world_model=bench.checkpoint, seed=seed,
    )  # fmt: skip


def _start(twin, ref: str, bench: Bench, seed: int):
    """A real start (reset at `seed`) and `ref`'s policy for it; returns (obs, policy)."""
    from wm_sim.policies.catalog import make_policy

    obs, _ = twin.reset(seed=seed)
    task = twin.unwrapped.task
    goal = task.goal() if hasattr(task, "goal") else None
    return obs, make_policy(ref, _setting(bench, goal, seed))


def _act(policy, obs: dict[str, np.ndarray]) -> np.ndarray:
    return policy.act({k: np.asarray(v)[None] for k, v in obs.items()})[0]


def _joint_columns(twin) -> list[int]:
    return [i for i, n in enumerate(twin.unwrapped.task.state_names) if n.endswith(".pos")]


def real_episodes(bench: Bench, twin, ref: str, own_seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """MuJoCo episodes of policy `ref` (the physics twin): the one from the stream's own start
    (`own_seed`: the real counterpart of what the stream shows) and `reference_episodes` others,
    each as (frames (1 + reference_steps, S, S, 3) uint8, agent_pos (1 + reference_steps, D)), the
    reset's first."""
    sizes = bench.sizes
    episodes = []
    for seed in [own_seed] + [10_000 + e for e in range(sizes.reference_episodes)]:
        obs, policy = _start(twin, ref, bench, seed=seed)
        frames, states = [obs["pixels"]], [obs["agent_pos"]]
        for _ in range(sizes.reference_steps):
            obs, *_ = twin.step(_act(policy, obs))
            frames.append(obs["pixels"])
            states.append(obs["agent_pos"])
        episodes.append((np.stack(frames), np.stack(states)))
    return episodes


def real_reference(episodes: list[tuple[np.ndarray, np.ndarray]], twin) -> Reference:
    """Ranges of the statistics over the real episodes' frames after their resets."""
    columns = _joint_columns(twin)
    frames = np.concatenate([f[1:] for f, _ in episodes])
    joints = np.concatenate([s[1:, columns] for _, s in episodes])
    moments, hists = frame_statistics(torch.from_numpy(frames))
    low, high = twin.unwrapped.task.state_bounds
    return Reference.from_real(moments.numpy(), hists.numpy(), joints, (low[columns], high[columns]))


@torch.no_grad()
def redrawn_in_range(model: WorldModel, episodes: list[tuple[np.ndarray, np.ndarray]], reference: Reference) -> dict:
    """The decoder's ceiling: the real frames after each episode's first CONTEXT, encoded and
    decoded again over that context (as a stream's anchor) with their recorded agent_pos, judged
    against the real ranges. No dynamics runs, so a share well below 1 is a tokenizer that cannot
    draw the task's frames inside them, and no stream of its can hold."""
    stats, device = [], next(model.parameters()).device
    for frames, states in episodes:
        real = torch.from_numpy(frames).to(device)
        anchor = model.anchor(real[CONTEXT - 1 : CONTEXT], real[None, :CONTEXT])
        latents = model.encode(real[CONTEXT:])[None]
        norm_state = model.normalise_state(torch.from_numpy(states[CONTEXT:]).float().to(device))[None]
        drawn = model.decode(latents, anchor, norm_state)[0].mul(255.0).add(0.5).clamp(0, 255).to(torch.uint8)
        stats.append(judged_statistics(drawn, reference.mean_histogram))
    stats = np.concatenate(stats)
    inside = ((stats >= reference.low) & (stats <= reference.high)).all(1)
    return {"frames_in_range": round(float(inside.mean()), 4), **by_statistic(stats, reference)}


def imagined_streams(bench: Bench, twin, refs: list[str], references: dict[str, Reference]) -> dict:
    """One stream per policy, all in one engine batch: statistics and raw joint angles per step."""
    steps, rows, columns = bench.sizes.stability_steps, len(refs), _joint_columns(twin)
    engine = bench.make_engine(rows)
    low, high = twin.unwrapped.task.state_bounds
    engine.bound_state(low, high)  # what the policies read, as the env gives it
    policies, contexts = [], []
    for row, ref in enumerate(refs):  # each stream starts from real frames of its own policy
        obs, policy = _start(twin, ref, bench, seed=row)  # the seed its reference also runs
        frames, states, actions = [obs["pixels"]], [obs["agent_pos"]], []
        for _ in range(CONTEXT - 1):
            actions.append(_act(policy, obs))
            obs, *_ = twin.step(actions[-1])
            frames.append(obs["pixels"])
            states.append(obs["agent_pos"])
        policies.append(policy)
        contexts.append((np.stack(frames), np.stack(states), np.stack(actions)))
    engine.reset_rows(
        torch.arange(rows), *(torch.from_numpy(np.stack([c[i] for c in contexts])) for i in range(3))
    )
    mean_hists = np.stack([references[r].mean_histogram for r in refs])  # (rows, BINS**3)
    stats = np.zeros((steps, rows, len(STAT_NAMES)), np.float32)
    joints = np.zeros((steps, rows, len(columns)), np.float32)
    keep = set(np.linspace(0, steps - 1, SNAPSHOTS).astype(int).tolist())
    snapshots = []
    model = engine.model
    for t in tqdm(range(steps), desc="stability", unit="step", mininterval=1.0):
        pixels, agent_pos = engine.pixels.cpu().numpy(), engine.agent_pos.cpu().numpy()
        actions = np.stack(
            [_act(p, {"pixels": pixels[r], "agent_pos": agent_pos[r]}) for r, p in enumerate(policies)]
        )
        out = engine.step(torch.from_numpy(actions))
        stats[t] = judged_statistics(out.pixels, mean_hists)
        with torch.no_grad():  # the prediction itself, before the observation's clipping
            joints[t] = model.denormalise_state(engine.norm_state.float())[:, columns].cpu().numpy()
        if t in keep:
            snapshots.append((t, out.pixels.cpu().numpy().copy()))
    return {"stats": stats, "joints": joints, "snapshots": snapshots}


def plot(path: Path, refs: list[str], streams: dict, references: dict[str, Reference], fps: float) -> Path:
    """Statistics over time against the real ranges, one column per policy, and frames along the way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wm_sim.media import save_figure

    rows = [("colour mean", slice(0, 3)), ("colour spread", slice(3, 6)), ("histogram distance", slice(6, 7))]
    fig, axes = plt.subplots(5, len(refs), figsize=(6 * len(refs), 13), squeeze=False)
    minutes = np.arange(streams["stats"].shape[0]) / fps / 60.0
    colours = ["tab:red", "tab:green", "tab:blue"]
    for col, ref in enumerate(refs):
        reference = references[ref]
        for row, (title, cols) in enumerate(rows):
            ax = axes[row, col]
            for k, i in enumerate(range(cols.start, cols.stop)):
                colour = colours[k] if cols.stop - cols.start == 3 else "black"
                ax.plot(minutes, streams["stats"][:, col, i], color=colour, lw=0.6)
                ax.axhspan(reference.low[i], reference.high[i], color=colour, alpha=0.08)
            ax.set_title(f"{ref}: {title} (bands: real range)")
        ax = axes[3, col]
        for j in range(streams["joints"].shape[2]):
            ax.plot(minutes, streams["joints"][:, col, j], lw=0.6, label=f"joint {j}")
            ax.axhline(reference.joint_low[j], color="grey", ls="--", lw=0.6)
            ax.axhline(reference.joint_high[j], color="grey", ls="--", lw=0.6)
        ax.set_title(f"{ref}: predicted joint angles (dashed: limits)")
        ax.legend(loc="upper right", fontsize=7)
        strip = np.concatenate([frames[col] for _, frames in streams["snapshots"]], axis=1)
        axes[4, col].imshow(strip)
        axes[4, col].set_title(
            "frames at " + ", ".join(f"{t / fps / 60:.1f}" for t, _ in streams["snapshots"]) + " min"
        )
        axes[4, col].axis("off")
        for row in range(4):
            axes[row, col].set_xlabel("minutes")
            axes[row, col].grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.suptitle("closed-loop stability: imagined frame statistics against real MuJoCo ranges")
    fig.tight_layout()
    return save_figure(fig, path)


def run(bench: Bench) -> dict:
    import gymnasium as gym

    from wm_sim.registration import PHYSICS_TWIN_IDS

    if bench.task not in PHYSICS_TWIN_IDS:
        raise WmSimError(
            f"stability needs a physics twin of task {bench.task!r} for its real ranges; tasks with one: "
            + ", ".join(PHYSICS_TWIN_IDS)
        )
    refs = list(bench.policies)
    twin = gym.make(PHYSICS_TWIN_IDS[bench.task]).unwrapped
    episodes = {  # stream i starts from seed i (imagined_streams)
        ref: real_episodes(bench, twin, ref, own_seed=i)
        for i, ref in enumerate(tqdm(refs, desc="stability: MuJoCo reference"))
    }
    references = {ref: real_reference(episodes[ref], twin) for ref in refs}
    ceilings = {ref: redrawn_in_range(bench.model, episodes[ref], references[ref]) for ref in refs}
    streams = imagined_streams(bench, twin, refs, references)
    twin.close()
    fps = float(bench.loaded[1].get("dataset", {}).get("fps", 50.0))
    verdicts = {
        ref: judge(
            streams["stats"][:, i],
            streams["joints"][:, i],
            references[ref],
            bench.sizes.stability_window,
            fps,
        )
        for i, ref in enumerate(refs)
    }
    figures = {
        "steps": bench.sizes.stability_steps,
        "minutes": round(bench.sizes.stability_steps / fps / 60.0, 2),
        "verdicts": verdicts,
        "references": {ref: r.to_dict() for ref, r in references.items()},
        # the same real frames as the tokenizer redraws them: what no stream of this decoder can beat
        "redrawn_real_frames": ceilings,
    }
    plot_path = bench.artifact("stability.png")
    if plot_path is not None:
        figures["plot"] = plot(plot_path, refs, streams, references, fps).name
    return {
        "figures": figures,
        "targets": [
            target(
                f"{ref}: steps held in the real ranges",
                v["held_steps"],
                ">=",
                bench.sizes.stability_steps,
                "steps",
            )
            for ref, v in verdicts.items()
        ],
        "table": [
            [
                f"{ref}: {figures['minutes']:g} min closed loop",
                f"{'pass' if v['passed'] else 'fail'}: held {v['held_minutes']:g} min, {v['frames_in_range']:.1%} of frames in the real ranges "
                f"(real frames redrawn by the tokenizer: {ceilings[ref]['frames_in_range']:.1%})",
            ]
            for ref, v in verdicts.items()
        ],
    }
