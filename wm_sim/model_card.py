"""MODEL_CARD.md beside every packaged checkpoint: what it is, what made it, what it measures.

Written by `wm-sim package` from the checkpoint's own metadata and its evaluation, so the card
says what the files say; a user reads it instead of the project's history.
"""

from __future__ import annotations

from dataclasses import asdict
from itertools import pairwise
from pathlib import Path

from wm_sim.checkpoint import checkpoint_cameras

PARTS = {
    "residual": "latents predicted as changes of the current ones",
    "anchored": "decoder composites over the last real frame (scene kept where nothing moved)",
    "anchor_detail": "the decoder's last stage reads that frame's pixels too (edges kept to the pixel)",
    "anchor_memory": "and earlier context frames' pixels (what the arm covered in the last one is drawn when it leaves)",
    "decoder_state": "the decoder reads agent_pos too (the arm drawn where the predicted joints put it)",
    "transition": "agent_pos predicted by a state-transition MLP the transformer reads",
    "frame_reward": "reward read off the (re-encoded) frame shown",
    "scene_reward": "reward of an imagined state in a real frame's scene (latent planner and actor)",
}


def model_card(meta: dict, metrics: dict | None, out_name: str) -> str:
    """The card's Markdown for a package of checkpoint metadata `meta` and evaluation `metrics`."""
    model, data, train = meta.get("model", {}), meta.get("dataset", {}), meta.get("train", {})
    lines = [f"# {out_name}: a wm-sim world model of `{data.get('task', '?')}`", ""]
    lines += ["## Model", ""]
    lines.append(
        f"{model.get('grid', '?')}x{model.get('grid', '?')} latent tokens of {model.get('latent_dim', '?')} "
        f"numbers per {model.get('image_size', '?')}x{model.get('image_size', '?')} frame; a transformer of "
        f"{model.get('depth', '?')} blocks, width {model.get('dim', '?')}, over a window of "
        f"{model.get('window', '?')} frames."
    )
    lines += [""] + [f"- `{k}`: {text}" for k, text in PARTS.items() if model.get(k)] + [""]
    lines += ["## Data", ""]
    fraction = train.get("val_fraction")
    held_out = f"every {round(1 / fraction)}th episode" if fraction else "no episode"
    lines.append(
        f"`{data.get('path', '?')}`: {data.get('num_episodes', '?')} episodes, {data.get('num_frames', '?')} "
        f"frames at {data.get('fps', '?')} fps, {_cameras(data)}; {held_out} held out "
        "(start contexts and evaluation come from those)."
    )
    lines += ["", "## How it was made", ""]
    lines += _recipe(meta)
    if train.get("init"):
        lines.append(
            f"It started from `{train['init']}` (`init=`): that checkpoint's own card or recipe says how it "
            "was made."
        )
        lines.append("")
    packaged = meta.get("packaged_from", {})
    lines.append(f"Packaged from `{packaged.get('checkpoint', '?')}` by `wm-sim package`.")
    lines += ["", "## Evaluation", ""]
    lines += _metrics_table(metrics) if metrics else ["Not evaluated when packaged (`evaluate=false`)."]
    return "\n".join(lines) + "\n"


def _recipe(meta: dict) -> list[str]:
    """The commands that made a checkpoint (its data's and its training run's, as the metadata
    recorded them) and the time the run took."""
    data, train = meta.get("dataset", {}), meta.get("train", {})
    lines = []
    collection = data.get("collection")
    if collection:
        lines += ["The data:", "", "```bash"]
        lines.append(
            f"wm-sim collect task={data.get('task')} policy={collection.get('policy')} "
            f"episodes={data.get('num_episodes')} seed={collection.get('seed')} out={data.get('path')}"
        )
        lines += ["```", ""]
    first = (_phases(meta.get("decoder_tuning")) or [{}])[0]
    if "far_pixels" in first:  # the recipe's option, recorded by its first decoder phase (a run's steps may
        train = {**train, "decoder_far_pixels": first["far_pixels"]}  # predate it; the last phase sets its own)
    lines += ["The model, by the last training run, as its checkpoint recorded it:", ""]
    lines += ["```bash", _train_command(train, _architecture(meta)), "```", ""]
    seconds, decoder = meta.get("seconds"), meta.get("decoder_seconds")
    if seconds:
        took = f"{seconds / 60:.0f} min: up-front fits and {train.get('steps', '?')} steps"
        if decoder:
            took += f", then {decoder / 60:.0f} min tuning its anchored decoder ({_decoder_phases(meta.get('decoder_tuning', {}))})"
        lines += [f"It took {took}.", ""]
    return lines


# what a run's decoder phases may have added that its recorded architecture predates
DECODER_INPUTS = {"anchor_detail": False, "anchor_memory": [], "decoder_state": False}


def _architecture(meta: dict) -> dict | None:
    """The run's architecture as today's options name it: a run recorded before anchor detail or
    memory existed says nothing of them, and the model says whether its decoder phases added them."""
    architecture, model = meta.get("architecture"), meta.get("model", {})
    if architecture is None or not model.get("anchored"):
        return architecture
    missing = {k: model.get(k, off) for k, off in DECODER_INPUTS.items() if k not in architecture}
    if not model.get("anchor_detail"):  # no anchor memory without it, whatever that option says
        missing.pop("anchor_memory", None)
    return {**architecture, **missing}


def _phases(tuning: dict | None) -> list[dict]:
    """A model's decoder phases' options, first to last (each phase names the one before it)."""
    phases, phase = [], tuning
    while isinstance(phase, dict):
        phases.append(phase)
        phase = phase.get("earlier")
    return phases[::-1]


def _decoder_phases(tuning: dict) -> str:
    """The decoder phases' steps in words, first to last: what each added to what the decoder reads."""
    first_to_last = _phases(tuning)
    words = [f"{first_to_last[0].get('steps', '?')} steps"]  # the first phase reads what it reads
    for before, phase in pairwise(first_to_last):
        added = ""
        if phase.get("decoder_state") and not before.get("decoder_state"):
            added = " reading agent_pos too"
        elif phase.get("anchor_memory") and not before.get("anchor_memory"):
            added = " reading earlier context frames too"
        elif phase.get("anchor_detail") and not before.get("anchor_detail"):
            added = " reading the anchor's pixels too"
        words.append(f"{phase.get('steps', '?')}{added}")
    return ", then ".join(words)


def _train_command(train: dict, architecture: dict | None) -> str:
    """The `wm-sim train` command of a run: its data, out and steps, and the options it set away
    from the defaults (the model's as model.*, the recipe's as training.*)."""
    from wm_sim.recipe import ModelArchitecture, TrainingRecipe
    from wm_sim.train import TrainConfig

    recipe, run = asdict(TrainingRecipe()), asdict(TrainConfig())
    always, skip = ("data", "out", "steps"), {"resume", "threads", "device", "dist_timeout_s", "model", "training", "wandb"}
    options = [f"{k}={train[k]}" for k in always if k in train]
    for key, value in sorted(train.items()):
        if key in always or key in skip:
            continue
        if key in recipe and value != recipe[key]:
            options.append(f"training.{key}={value}")
        elif key in run and key not in recipe and value != run[key]:
            options.append(f"{key}={value}")
    shipped = asdict(ModelArchitecture())
    shipped = {k: list(v) if isinstance(v, tuple) else v for k, v in shipped.items()}
    options += [f"model.{k}={_option(v)}" for k, v in (architecture or {}).items() if shipped.get(k) != v]
    return "wm-sim train " + " ".join(options)


def _option(value: object) -> str:
    """A value as the command line takes it: true, 3, [2,4,7]."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value).lower()


def _metrics_table(metrics: dict) -> list[str]:
    horizons = metrics.get("horizons", [])
    lines = [
        f"Open loop on the recorded actions of {metrics.get('episodes', '?')} held-out episodes after "
        f"{metrics.get('context', '?')} real frames (`metrics.json`, `errors.png`, `rollouts.mp4`):",
        "",
        "| metric (model / copy_last) | " + " | ".join(str(h) for h in horizons) + " |",
        "|---" * (len(horizons) + 1) + "|",
    ]
    for name, by_method in sorted(metrics.get("metrics", {}).items()):
        model, copy = by_method.get("model", {}), by_method.get("copy_last", {})
        cells = [f"{_fmt(model.get(h))} / {_fmt(copy.get(h))}" for h in horizons]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    beats = metrics.get("model_beats_copy_last_at_every_horizon")
    if isinstance(beats, dict):  # per metric (PSNR, SSIM); older reports held one bool
        beats = bool(beats) and all(beats.values())
    if beats is not None:
        lines += ["", f"Beats copy-last at every horizon: {'yes' if beats else 'no'}."]
    motion = metrics.get("object_motion", {}).get("model")
    if motion and motion.get("episodes_moved", 0) + motion.get("episodes_still", 0) > 0:
        lines += [
            "",
            f"The task object, over the first {motion['motion_horizon']} frames: it moves in "
            f"{_share(motion['agreement_when_moved'], motion['episodes_moved'], 'moves')}, and stays in "
            f"{_share(motion['agreement_when_still'], motion['episodes_still'], 'stays')}.",
        ]
    return lines


def _share(agreement: float | None, episodes: int, what: str) -> str:
    """'85% of the 40 held-out episodes in which MuJoCo's stays' (a share, not a count of episodes)."""
    if agreement is None or not episodes:
        return f"none of the held-out episodes: MuJoCo's never {what}"
    return f"{agreement:.0%} of the {episodes} held-out episodes in which MuJoCo's {what}"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def write_model_card(directory: Path, meta: dict, metrics: dict | None, out_name: str) -> Path:
    path = directory / "MODEL_CARD.md"
    path.write_text(model_card(meta, metrics, out_name))
    return path


def _cameras(dataset: dict) -> str:
    """`top`, or `top`, `side` for a model of several cameras."""
    names = checkpoint_cameras({"dataset": dataset}, ["?"])
    return ("camera " if len(names) == 1 else "cameras ") + ", ".join(f"`{n}`" for n in names)


def policy_card(meta: dict, verified: dict | None, out_name: str) -> str:
    """The card's Markdown for a packaged policy of metadata `meta` (its policy.json) and, if
    given, the `wm-sim verify` report `verified` of it."""
    task, world_model = meta.get("task", "?"), meta.get("world_model", "?")
    lines = [f"# {out_name}: a wm-sim policy for `{task}`", ""]
    lines += [
        f"A `{meta.get('kind', '?')}` policy acting on the observations of `wm_sim/{task.capitalize()}-v0`",
        f"and its physics twin, trained only in imagination: in the world model `{world_model}`,",
        "with no physics step while it trained.",
        "",
        "## How it was made",
        "",
        "```bash",
        _policy_command(meta),
        "```",
        "",
        f"{meta.get('updates', meta.get('step', '?'))} updates on `{meta.get('data', '?')}`"
        + (f", {meta['seconds'] / 60:.1f} min" if meta.get("seconds") else "")
        + f"; packaged from `{meta.get('packaged_from', '?')}` by `wm-sim package-policy`.",
        "",
        "## Verified in MuJoCo",
        "",
    ]
    lines += _verify_table(verified) if verified else [
        f"Not verified when packaged: `wm-sim verify policy=<this folder> task={task} episodes=100`."
    ]
    return "\n".join(lines) + "\n"


def _policy_command(meta: dict) -> str:
    """The `wm-sim train-policy` options a policy records (those it was trained with)."""
    names = ("algo", "task", "checkpoint", "data", "steps", "horizon", "batch", "gamma", "lr", "seed")
    known = {"checkpoint": meta.get("world_model"), "steps": meta.get("updates"), **meta}
    return "wm-sim train-policy " + " ".join(f"{k}={known[k]}" for k in names if known.get(k) not in (None, ""))


def _verify_table(report: dict) -> list[str]:
    """Success and return of the policy beside the references `wm-sim verify` ran it with."""
    returns = report.get("mean_true_return", {})
    options = report.get("options", {})
    lines = [
        f"`wm-sim verify policy={options.get('policy', report.get('policy', '?'))} episodes={report.get('episodes')} "
        f"seed={options.get('seed', '?')}` ({report.get('episodes')} unseen MuJoCo starts):",
        "",
        "| policy | success | mean true return |",
        "|---|---|---|",
    ]
    success = {"policy": report.get("success_rate"), "expert": report.get("success_rate_expert"),
               "random": report.get("success_rate_random")}  # fmt: skip
    for name, value in returns.items():
        rate = success.get(name)
        lines.append(f"| {name} | {'-' if rate is None else f'{rate:.2f}'} | {value:.2f} |")
    lines += [
        "",
        f"Score against standing still, {report.get('score_vs_zero_formula', '')}: {report.get('score_vs_zero', float('nan')):.3f}; "
        f"against random, {report.get('normalized_score_formula', '')}: {report.get('normalized_score', float('nan')):.3f}.",
    ]
    return lines
