"""`wm-sim evaluate`: how faithful is a checkpoint to MuJoCo, and how fast does it drift?

On held-out episodes, the model sees `context` real frames (with their states and actions), then
rolls out open-loop on the recorded actions, its own predictions fed back at every step. Each
predicted frame is compared with the recorded one (MuJoCo's, under the same actions) at horizons
1, 4, 16, 64 and the episode's end, beside two baselines that need no model: the last real frame
held still (`copy_last`) and the training set's mean frame (`mean_frame`). Besides PSNR and SSIM,
whether the frame keeps the scene: the recall of the task object's pixels (reacher's target,
read by its colour; where the arm covers it in the real frame it is not counted) and the
precision of the foreground drawn (no ghost of the arm where it no longer is); and where the
task's top camera looks straight down, the task object's position (wm_sim.contact): its distance
to MuJoCo's in cm at each horizon, and per episode whether it moves when MuJoCo's moves (pushed)
and stays when MuJoCo's stays. Writes:

    metrics.json      every metric, for each method, at each horizon, plus the full curves
    errors.png        PSNR, SSIM, state and reward error against horizon (the drift, as a picture)
    rollouts.mp4      true | predicted | difference, for a few episodes, side by side
    strip.png         the same at the named horizons, for one episode, as a still image
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wm_sim.checkpoint import check_dataset_fits, checkpoint_cameras, load_checkpoint
from wm_sim.config import check_output_path
from wm_sim.contact import POSITION_HORIZON, ObjectJudge, TaskObject, motion_summary, top_camera_scale
from wm_sim.data.angles import episode_states, wrapped_entries
from wm_sim.data.schema import ACTION_KEY, REWARD_KEY, STATE_KEY, TERMINATED_KEY
from wm_sim.data.store import EpisodeStore
from wm_sim.data.windows import episodes_with_frames, split_episodes
from wm_sim.errors import WmSimError
from wm_sim.media import (
    comparison_frames,
    difference,
    grid,
    save_figure,
    side_by_side,
    to_uint8,
    write_png,
    write_video,
)
from wm_sim.metrics import (
    background_frame,
    finite_or_none,
    foreground_precision,
    object_recall,
    psnr,
    ssim,
)
from wm_sim.model_heads import wrap_angle
from wm_sim.rollout import open_loop

HORIZONS = (1, 4, 16, 64)
METHODS = ("model", "copy_last", "mean_frame")
BACKGROUND = "background"  # the baseline entry holding the median frame
FRAMES = "frames"  # an episode's frames of every camera the model sees (schema.frames_of)
# metric name -> whether higher is better
METRICS = {
    "psnr": True,
    "ssim": True,
    "state_rmse": False,
    "reward_abs_error": False,
    "termination_accuracy": True,
    "object_recall": True,
    "object_recall_unseen": True,
    "object_recall_remembered": True,
    "foreground_precision": True,
    "object_error_cm": False,
    "object_within_2cm": True,
}


@dataclass
class EvaluateConfig:
    """Options of `wm-sim evaluate`."""

    checkpoint: str = field(
        default="shipped:reacher", metadata={"help": "checkpoint dir, run dir (its last), or shipped:<task>"}
    )
    data: str = field(default="datasets/reacher.zarr", metadata={"help": "the dataset to evaluate on"})
    out: str = field(default="outputs/evaluate", metadata={"help": "where metrics, plot and videos go"})
    split: str = field(
        default="val", metadata={"help": "val: the episodes held out in training; all: every episode"}
    )
    context: int = field(default=8, metadata={"help": "real frames the model sees before imagining"})
    episodes: int = field(default=0, metadata={"help": "evaluate at most this many episodes (0: all)"})
    batch_size: int = field(default=32, metadata={"help": "episodes rolled out together"})
    video_episodes: int = field(default=4, metadata={"help": "episodes shown in rollouts.mp4"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    object_rgb: list[int] = field(
        default_factory=list,
        metadata={"help": "the task object's rendered colour [r,g,b] for object_recall ([]: the task's own)"},
    )


def evaluate(cfg: EvaluateConfig) -> Path:
    """Evaluate a checkpoint on a dataset; returns the output directory."""
    if cfg.context < 1 or cfg.batch_size < 1 or cfg.episodes < 0 or cfg.video_episodes < 0:
        raise WmSimError(
            "need context >= 1, batch_size >= 1, episodes >= 0 and video_episodes >= 0, got "
            f"context={cfg.context}, batch_size={cfg.batch_size}, episodes={cfg.episodes}, "
            f"video_episodes={cfg.video_episodes}"
        )
    if cfg.split not in ("val", "all"):
        raise WmSimError(f"split must be val or all, got {cfg.split!r}")
    if cfg.threads < 0:
        raise WmSimError(f"threads must be at least 0 (0: torch's default), got {cfg.threads}")
    if cfg.object_rgb and (len(cfg.object_rgb) != 3 or not all(0 <= int(c) <= 255 for c in cfg.object_rgb)):
        raise WmSimError(f"object_rgb must be three integers in [0, 255], got {list(cfg.object_rgb)}")
    check_output_path(cfg.out)  # before the evaluation runs, not after
    out = Path(cfg.out)
    if (out / "metrics.json").exists():
        raise WmSimError(f"{out} already holds an evaluation (metrics.json); choose another out=")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    model, meta = load_checkpoint(cfg.checkpoint)
    model.eval()
    store = EpisodeStore.open(cfg.data)
    check_dataset_fits(model.config, meta, store.info, cfg.data)
    cameras = checkpoint_cameras(meta, store.info.cameras[:1])  # check_dataset_fits: all in the store
    val_fraction = float(meta.get("train", {}).get("val_fraction", 0.1))
    episodes = _pick_episodes(store, cfg, val_fraction)
    keys = [FRAMES, STATE_KEY, ACTION_KEY, REWARD_KEY, TERMINATED_KEY]
    baseline = _mean_baseline(store, cameras, keys, val_fraction)
    # Wrapped angles from the data, not the model: every model's state error, and the baselines',
    # takes a full turn as no error, so models with and without a state transition compare.
    periodic = wrapped_entries(episode_states(store))
    task_object = _task_object(cfg, meta, cameras[0], store.info.image_size)

    results: dict[str, dict[str, list[np.ndarray]]] = {m: {k: [] for k in METRICS} for m in METHODS}
    shown = set(episodes[:: max(1, len(episodes) // max(cfg.video_episodes, 1))][: cfg.video_episodes])
    videos: list[tuple[np.ndarray, np.ndarray]] = []  # (true, predicted) uint8 frames per shown episode
    scene_errors: list[np.ndarray] = []  # the scene reward's |error| per transition, per episode
    motion: dict[str, list[np.ndarray]] = {m: [] for m in ("truth", *METHODS)}  # per episode: moved?
    batches = [episodes[i : i + cfg.batch_size] for i in range(0, len(episodes), cfg.batch_size)]
    for chunk in tqdm(batches, desc="evaluate", unit="batch"):
        data = [_episode(store, e, cameras) for e in chunk]
        scores, predicted, moves = _score_batch(model, data, keys, cfg.context, baseline, periodic, task_object)
        for method in METHODS:
            for name in METRICS:
                results[method][name].extend(scores[method][name])
        for who, flags in moves.items():
            motion[who].append(flags)
        if model.scene_reward is not None:
            scene_errors += [_scene_reward_error(model, episode, keys, cfg.context) for episode in data]
        for row, e in enumerate(chunk):
            if e in shown:
                true = data[row][FRAMES][cfg.context :]
                videos.append((side_by_side(true), side_by_side(predicted[row][: len(true)])))

    report = _report(results, cfg, meta, len(episodes), store.info.fps)
    if scene_errors:
        report["scene_reward"] = _scene_reward_summary(np.concatenate(scene_errors), cfg.context)
    if motion["truth"]:
        report["object_motion"] = _motion_report(results, motion)
    out.mkdir(parents=True, exist_ok=True)
    _plot(report, out / "errors.png")
    if videos:
        _write_videos(videos, out, store.info.fps)
    tmp = out / ".metrics.json.partial"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / "metrics.json")  # last: its presence means the evaluation is complete
    _print_summary(report, out)
    return out


def _scene_reward_summary(errors: np.ndarray, context: int) -> dict:
    """metrics.json's `scene_reward`: the scene reward's |error| per held-out transition."""
    print(f"scene reward |error| per step: {errors.mean():.4f} (95th percentile {np.quantile(errors, 0.95):.4f})")
    return {
        "reads_goal_from": f"the last context frame (frame {context - 1})",
        "abs_error": float(errors.mean()),
        "abs_error_p95": float(np.quantile(errors, 0.95)),
        "transitions": int(errors.size),
    }


def _print_summary(report: dict, out: Path) -> None:
    if "object_motion" in report:
        m = report["object_motion"]["model"]
        print(
            f"task object: moves when MuJoCo's moves {m['agreement_when_moved']} ({m['episodes_moved']} episodes), "
            f"stays when it stays {m['agreement_when_still']} ({m['episodes_still']}); within 2 cm at "
            f"h=16: {report['metrics']['object_within_2cm']['model']['16']}"
        )
    summary = report["metrics"]["psnr"]
    print(
        "PSNR (dB) model / copy_last / mean_frame: "
        + ", ".join(
            f"h={h}: {summary['model'][h]:.1f} / {summary['copy_last'][h]:.1f} / {summary['mean_frame'][h]:.1f}"
            for h in report["horizons"]
            if summary["model"][h] is not None
        )
    )
    written = [out / name for name in ("metrics.json", "errors.png", "rollouts.mp4", "strip.png")]
    print("wrote " + ", ".join(str(f) for f in written if f.exists()))


@torch.no_grad()
def _scene_reward_error(model, episode: dict[str, np.ndarray], keys: list[str], context: int) -> np.ndarray:
    """|scene reward - recorded reward| of every transition of a held-out episode, the scene read
    once off its last context frame, as the planner reads the frame it sees and imagines on."""
    pixels, state, action, reward = (episode[k] for k in keys[:4])
    head = model.scene_reward
    device = next(model.parameters()).device
    goal = head.goal(torch.from_numpy(pixels[context - 1 : context]).to(device))
    states = torch.from_numpy(state[1:]).float().to(device)
    read = head.read(goal.expand(len(states), -1), states, torch.from_numpy(action[:-1]).float().to(device))
    return np.abs(read.cpu().numpy() - reward[:-1])


def _task_object(cfg: EvaluateConfig, meta: dict, camera: str, image_size: int) -> TaskObject | None:
    """The task object: its colour (object_rgb=, else the task's own) and, where the task's camera
    looks straight down, its scale; None: recall and position are not measured."""
    from wm_sim.envs.catalog import TASK_SPECS

    task = meta.get("dataset", {}).get("task", "")
    spec = TASK_SPECS.get(task)
    rgb = tuple(int(c) for c in cfg.object_rgb) if cfg.object_rgb else (spec.object_rgb if spec else None)
    if rgb is None:
        return None
    return TaskObject(rgb, top_camera_scale(task, camera, image_size))


def _pick_episodes(store: EpisodeStore, cfg: EvaluateConfig, val_fraction: float) -> list[int]:
    long_enough = episodes_with_frames(store, cfg.split, val_fraction, cfg.context + 1)
    if not long_enough:
        episodes = split_episodes(store.num_episodes, cfg.split, val_fraction)
        raise WmSimError(
            f"{cfg.data} has no {cfg.split} episode longer than context={cfg.context} frames "
            f"({len(episodes)} {cfg.split} episodes); collect more episodes or lower context"
        )
    if cfg.episodes and cfg.episodes < len(long_enough):
        picks = np.linspace(0, len(long_enough) - 1, cfg.episodes).round().astype(int)
        long_enough = [long_enough[i] for i in picks]
    return long_enough


def _episode(store: EpisodeStore, episode: int, cameras: list[str]) -> dict[str, np.ndarray]:
    """One episode's arrays, its cameras' frames as the model takes them under FRAMES."""
    first, stop = store.episode_bounds(episode)
    arrays = store.episode(episode, [STATE_KEY, ACTION_KEY, REWARD_KEY, TERMINATED_KEY])
    return arrays | {FRAMES: store.read_frames(cameras, first, stop)}


def _mean_baseline(
    store: EpisodeStore, cameras: list[str], keys: list[str], val_fraction: float
) -> dict[str, np.ndarray]:
    """Mean frame, state and reward of (up to 100 evenly spread) training episodes, and the
    background (their median frame, what the foreground is told from)."""
    train = split_episodes(store.num_episodes, "train", val_fraction)
    train = train or list(range(store.num_episodes))
    picks = [train[i] for i in np.linspace(0, len(train) - 1, min(100, len(train))).round().astype(int)]
    sums: dict[str, np.ndarray] = {}
    count, samples = 0, []
    for e in picks:
        episode = _episode(store, e, cameras)
        for key in keys:
            sums[key] = sums.get(key, 0.0) + episode[key].astype(np.float64).sum(0)
        count += len(episode[keys[0]])
        samples.append(episode[keys[0]][::20])
    means = {key: (value / count).astype(np.float32) for key, value in sums.items()}
    return means | {BACKGROUND: background_frame(np.concatenate(samples))}


def tiled(frames: torch.Tensor, cameras: int) -> torch.Tensor:
    """Several cameras' frames (..., K, S, S, 3) side by side (..., S, K*S, 3), as media.side_by_side;
    frames of one camera (..., S, S, 3) as they are."""
    return frames if cameras == 1 else torch.cat(frames.unbind(-4), dim=-2)


def _padded(data: list[dict[str, np.ndarray]], key: str, longest: int) -> torch.Tensor:
    """(B, longest, ...): each episode's `key`, padded with its last row."""
    rows = [np.concatenate([d[key], np.repeat(d[key][-1:], longest - len(d[key]), 0)]) for d in data]
    return torch.from_numpy(np.stack(rows))


def _score_batch(
    model,
    data: list[dict[str, np.ndarray]],
    keys: list[str],
    context: int,
    baseline: dict[str, np.ndarray],
    periodic: tuple[int, ...],
    task_object: TaskObject | None = None,
) -> tuple[dict[str, dict[str, list[np.ndarray]]], list[np.ndarray], dict[str, np.ndarray]]:
    """Per-episode metric curves (NaN past an episode's end), the predicted frames (uint8), and
    per episode whether the task object moved (in MuJoCo's frames: `truth`, and each method's)."""
    image, state_key, action_key, reward_key, term_key = keys
    lengths = [len(d[action_key]) for d in data]
    longest = max(lengths)

    frames, states, actions, rewards, terminated = (_padded(data, key, longest) for key in keys)
    terminated = terminated.bool()
    # Prediction h (1-based) is frame context-1+h, after the transition in row context-2+h: so H =
    # length - context frames can be compared, and one more reward and termination (the last row's).
    rollout = open_loop(model, frames, states, actions, context)
    horizon = longest - context + 1
    with torch.no_grad():
        predicted = rollout.frames(model)[:, : horizon - 1]  # (B, H-1, S, S, 3)
    true_frames = frames[:, context:].float() / 255.0  # (B, H-1, S, S, 3)
    true_state = states[:, context:]
    true_reward = rewards[:, context - 1 :]  # (B, H)
    true_term = terminated[:, context - 1 :]

    last = frames[:, context - 1 : context].float() / 255.0
    earlier = frames[:, : context - 1].float() / 255.0  # what a scene memory could have kept
    mean = torch.from_numpy(baseline[image]) / 255.0
    background = torch.from_numpy(baseline[BACKGROUND])
    guesses = {
        "model": (predicted, rollout.state[:, : horizon - 1], rollout.reward, rollout.continue_prob < 0.5),
        "copy_last": (
            last.expand_as(true_frames),
            states[:, context - 1 : context].expand_as(true_state),
            # the last reward seen (none seen with one context frame: the mean reward)
            (
                rewards[:, context - 2 : context - 1]
                if context >= 2
                else torch.full((len(data), 1), float(baseline[reward_key]))
            ).expand_as(true_reward),
            torch.zeros_like(true_term),  # the episode was still running
        ),
        "mean_frame": (
            mean.expand_as(true_frames),
            torch.from_numpy(baseline[state_key]).expand_as(true_state),
            torch.full_like(true_reward, float(baseline[reward_key])),
            torch.full_like(true_term, bool(baseline[term_key] > 0.5)),
        ),
    }
    frame_ok = torch.arange(horizon - 1)[None, :] < torch.tensor(lengths)[:, None] - context  # (B, H-1)
    step_ok = torch.arange(horizon)[None, :] < torch.tensor(lengths)[:, None] - context + 1  # (B, H)
    # several cameras side by side: each frame's metrics take every camera's pixels at once
    cameras = model.config.cameras
    truth = (tiled(true_frames, cameras), true_state, true_reward, true_term)
    background = tiled(background, cameras)
    seen = (tiled(last, cameras), tiled(earlier, cameras))  # the same for every method
    first = (lambda x: x) if cameras == 1 else (lambda x: x.select(-4, 0))  # positions: the top camera
    judge = None
    if task_object and task_object.cm_per_pixel:
        judge = ObjectJudge.of(task_object, first(true_frames), first(last[:, 0]), frame_ok)
    moves = {"truth": judge.moved()} if judge else {}
    nothing = torch.full(frame_ok.shape, torch.nan)
    scores: dict[str, dict[str, list[np.ndarray]]] = {}
    for method, (frame, state, reward, term) in guesses.items():
        guess = (tiled(frame, cameras), state, reward, term)
        rgb = task_object and task_object.rgb
        curves = _curves(guess, truth, seen, background, periodic, rgb, frame_ok, step_ok)
        error, within = judge.curves(first(frame)) if judge else (nothing, nothing)
        curves |= {"object_error_cm": (error, frame_ok), "object_within_2cm": (within, frame_ok)}
        if judge:
            moves[method] = judge.moved(first(frame))
        scores[method] = {
            name: [np.where(ok[b].numpy(), value[b].numpy(), np.nan) for b in range(len(data))]
            for name, (value, ok) in curves.items()
        }
    return scores, list(to_uint8(predicted.numpy())), moves


def _curves(
    guess: tuple[torch.Tensor, ...],
    truth: tuple[torch.Tensor, ...],
    seen: tuple[torch.Tensor, torch.Tensor],
    background: torch.Tensor,
    periodic: tuple[int, ...],
    object_rgb: tuple[int, int, int] | None,
    frame_ok: torch.Tensor,
    step_ok: torch.Tensor,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every metric of one method's (frames, states, rewards, terminations) against the truth, per
    episode and horizon, each with the mask of the horizons the episode reaches. `seen`: the last
    real frame (B, 1, S, S, 3), whose unseen object pixels `object_recall_unseen` counts, and the
    context frames before it (B, K, S, S, 3): `object_recall_remembered` counts the unseen pixels
    one of them showed."""
    (frame, state, reward, term), (true_frames, true_state, true_reward, true_term) = guess, truth
    last, earlier = seen
    state_error = state - true_state
    state_error[..., list(periodic)] = wrap_angle(state_error[..., list(periodic)])
    unmeasured = torch.full(frame_ok.shape, torch.nan)
    recall = object_recall(frame, true_frames, object_rgb) if object_rgb else unmeasured
    unseen = object_recall(frame, true_frames, object_rgb, unseen_in=last) if object_rgb else unmeasured
    remembered = object_recall(frame, true_frames, object_rgb, last, earlier) if object_rgb else unmeasured
    return {
        "psnr": (psnr(frame, true_frames), frame_ok),
        "ssim": (ssim(frame, true_frames), frame_ok),
        "state_rmse": (state_error.pow(2).mean(-1).sqrt(), frame_ok),
        "reward_abs_error": ((reward - true_reward).abs(), step_ok),
        "termination_accuracy": ((term == true_term).float(), step_ok),
        "object_recall": (recall, frame_ok),
        "object_recall_unseen": (unseen, frame_ok),
        "object_recall_remembered": (remembered, frame_ok),
        "foreground_precision": (foreground_precision(frame, true_frames, background), frame_ok),
    }


def _motion_report(results: dict, motion: dict[str, list[np.ndarray]]) -> dict:
    """metrics.json's `object_motion`, for each method: moves when MuJoCo's moves, stays when it stays."""
    truth = np.concatenate(motion["truth"])
    report = {}
    for method in METHODS:
        per_episode = results[method]["object_within_2cm"]
        at = np.array([c[POSITION_HORIZON - 1] if len(c) >= POSITION_HORIZON else np.nan for c in per_episode])
        report[method] = motion_summary(truth, np.concatenate(motion[method]), at)
    return report


def _report(results, cfg: EvaluateConfig, meta: dict, episodes: int, fps: float) -> dict:
    """metrics.json: each metric for each method at each horizon (mean over episodes), and curves."""
    names = [str(h) for h in HORIZONS] + ["end"]
    metrics: dict = {}
    curves: dict = {}
    for name in METRICS:
        metrics[name], curves[name] = {}, {}
        for method in METHODS:
            per_episode = results[method][name]
            width = max(len(c) for c in per_episode)
            table = np.full((len(per_episode), width), np.nan)
            for i, c in enumerate(per_episode):
                table[i, : len(c)] = c
            with warnings.catch_warnings():  # horizons no episode reaches are NaN, then null
                warnings.simplefilter("ignore", RuntimeWarning)
                curve = np.nanmean(table, axis=0)  # (H,) mean over the episodes that reach h
            at = {str(h): finite_or_none(curve[h - 1]) if h <= width else None for h in HORIZONS}
            ends = [c[~np.isnan(c)][-1] for c in per_episode if (~np.isnan(c)).any()]
            at["end"] = finite_or_none(float(np.mean(ends))) if ends else None
            metrics[name][method] = at
            curves[name][method] = [finite_or_none(v) for v in curve]
    beats = {}
    for name in ("psnr", "ssim"):
        pairs = [(metrics[name]["model"][h], metrics[name]["copy_last"][h]) for h in names]
        pairs = [(m, c) for m, c in pairs if m is not None and c is not None]
        beats[name] = bool(pairs) and all((m > c) == METRICS[name] for m, c in pairs)
    return {
        "checkpoint": str(cfg.checkpoint),
        "data": str(cfg.data),
        "task": meta.get("dataset", {}).get("task"),
        "fps": fps,
        "split": cfg.split,
        "episodes": episodes,
        "context": cfg.context,
        "horizons": names,
        "higher_is_better": METRICS,
        "metrics": metrics,
        "model_beats_copy_last_at_every_horizon": beats,
        "curves": curves,
    }


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "psnr": "PSNR (dB, higher is better)",
        "ssim": "SSIM (higher is better)",
        "state_rmse": "proprioceptive state RMSE",
        "reward_abs_error": "reward absolute error",
        "object_recall": "task object's pixels recalled (higher is better)",
        "object_recall_unseen": "task object pixels the last real frame hid, recalled",
        "object_recall_remembered": "...of them, those an earlier context frame showed, recalled",
        "foreground_precision": "foreground drawn that is real (higher is better)",
        "object_error_cm": "task object's distance to MuJoCo's (cm)",
        "object_within_2cm": "task object within 2 cm of MuJoCo's (higher is better)",
    }
    fig, axes = plt.subplots(2, 5, figsize=(26, 8))
    for ax, (name, label) in zip(axes.flat, labels.items(), strict=True):
        if all(v is None for v in report["curves"][name]["model"]):  # not measured for this task
            ax.set_visible(False)
            continue
        for method, style in zip(METHODS, ("-", "--", ":"), strict=True):
            curve = np.array([np.nan if v is None else v for v in report["curves"][name][method]])
            ax.plot(np.arange(1, len(curve) + 1), curve, style, label=method)
        for h in HORIZONS:
            ax.axvline(h, color="0.85", lw=0.8, zorder=0)
        ax.set_xscale("log")
        ax.set_xlabel(f"horizon (frames predicted open-loop; {report['fps']:g} per second)")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{report['task']}: {report['episodes']} {report['split']} episodes, {report['context']} real context frames",
        fontsize=11,
    )
    fig.tight_layout()
    save_figure(fig, path)


def _write_videos(videos: list[tuple[np.ndarray, np.ndarray]], out: Path, fps: float) -> None:
    """rollouts.mp4 (a row per episode: true | predicted | difference) and strip.png."""
    write_video(out / "rollouts.mp4", comparison_frames(videos), fps=min(fps, 30.0))
    true, pred = videos[0]
    steps = sorted({min(h, len(true)) - 1 for h in HORIZONS} | {len(true) - 1})
    write_png(
        out / "strip.png",
        grid(
            [
                [true[j] for j in steps],
                [pred[j] for j in steps],
                [difference(true[j], pred[j]) for j in steps],
            ],
            3,
        ),
    )
