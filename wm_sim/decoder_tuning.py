"""`wm-sim tune-decoder`: teach a world model's decoder to draw its frames over a real anchor frame.

Long imagined rollouts lose what never moves. The dynamics' small errors, fed back, erode the
latents of a static target until the decoder no longer draws it, and smear the background; a
still copy of the last real frame keeps both exact. An anchored decoder (`tokenizer.Decoder`)
also reads that last real frame and learns, pixel by pixel, whether to draw or to copy it.

With anchor_detail (the default) the decoder's last stage also reads the anchor's pixels, and
with anchor_memory earlier context frames' pixels too; added to a decoder without them, the new
inputs start at zero, so tuning starts from what it drew. Pixels the anchor frame does not show
as the target frame does, but an earlier frame did (a target the arm covered at the anchor and
has left since), are few: they weigh `memory_weight` more in the loss, else the earlier frames
go unread. With decoder_state the decoder also reads agent_pos (the recorded state in tuning, the
predicted one in rollouts); far_pixels=all then trains far predictions on every pixel, since the
state says where the arm is, and latent_shift decodes real frames from a nearby frame's latents,
so that the arm is drawn where agent_pos puts it rather than where drifting latents do.

This stage trains the decoder alone. The encoder and the dynamics are frozen, so the latents do
not change and everything built on them (policies trained on latents) stays valid. Each batch mixes:

- real frames' latents decoded over another real frame of the same episode, any distance apart,
  so that the decoder learns to paint over where the arm was and to keep what is still there;
- the dynamics' own open-loop predictions after `context` real frames of a training episode,
  decoded over the last of them, against the recorded frames: on the whole frame up to `horizon`
  frames out, and out to `far_horizon` only where the anchor's foreground still stands (the
  target), so the decoder learns to keep a target that the drifting latents have lost.

Far predictions are deliberately not trained on the rest of the frame: there the arm's place is
uncertain, and a squared-error decoder learns to erase it (an empty scene is closer to the truth
than a misplaced arm). That flatters SSIM and shows the user nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from wm_sim import run_lifecycle as lifecycle
from wm_sim.checkpoint import (
    LAST,
    check_dataset_fits,
    checkpoint_cameras,
    load_checkpoint,
    load_train_state,
    run_contexts,
)
from wm_sim.data.schema import ACTION_KEY, STATE_KEY, image_key
from wm_sim.data.store import EpisodeStore
from wm_sim.data.windows import episodes_with_frames
from wm_sim.errors import WmSimError
from wm_sim.metrics import background_frame
from wm_sim.rollout import open_loop
from wm_sim.world_model import Anchor, WorldModel


@dataclass
class DecoderTuningConfig:
    """Options of `wm-sim tune-decoder`."""

    checkpoint: str = field(
        default="", metadata={"help": "the world model whose decoder to tune (checkpoint or run dir)"}
    )
    data: str = field(default="datasets/reacher.zarr", metadata={"help": "the dataset it was trained on"})
    out: str = field(default="outputs/reacher-anchored", metadata={"help": "run directory: checkpoints"})
    steps: int = field(default=2500, metadata={"help": "optimiser steps in all"})
    resume: str = field(default="false", metadata={"help": "false: new run; auto: continue out/last"})
    batch_size: int = field(default=64, metadata={"help": "frames per step"})
    lr: float = field(default=6e-4, metadata={"help": "peak learning rate (warm-up, then cosine decay)"})
    episodes: int = field(default=256, metadata={"help": "training episodes used (0: all)"})
    context: int = field(default=8, metadata={"help": "real frames before each own rollout"})
    horizon: int = field(default=8, metadata={"help": "own-prediction frames per rollout trained on"})
    real_fraction: float = field(
        default=0.5, metadata={"help": "share of each batch that is real frames over another real frame"}
    )
    far_horizon: int = field(
        default=64,
        metadata={"help": "own-prediction frames out to which only the far_pixels are trained (0: none)"},
    )
    far_pixels: str = field(
        default="still",
        metadata={
            "help": "far predictions' trained pixels: still (the anchor's foreground where it still stands), "
            "anchor (all of the anchor's foreground: kept where it stands, erased where it left) or all "
            "(every pixel: for a decoder that reads agent_pos, which says where the arm is)"
        },
    )
    anchor_detail: bool = field(
        default=True,
        metadata={
            "help": "the decoder's last stage also reads the anchor's pixels (added with zeroed weights to a "
            "decoder without them, so tuning starts from what it drew)"
        },
    )
    anchor_memory: tuple[int, ...] = field(
        default=(2, 4, 7),
        metadata={
            "help": "with anchor_detail, the earlier context frames it also reads, as gaps back from the anchor "
            "([]: none; added with zeroed weights)"
        },
    )
    memory_weight: float = field(
        default=10.0,
        metadata={"help": "extra loss weight of pixels the anchor does not show but an earlier frame did"},
    )
    still_weight: float = field(
        default=0.0,
        metadata={
            "help": "extra loss weight of far predictions' still pixels (the anchor's foreground where it still "
            "stands: a target), on top of far_pixels"
        },
    )
    decoder_state: bool = field(
        default=True,
        metadata={"help": "the decoder also reads agent_pos (added with zeroed weights)"},
    )
    latent_shift: int = field(
        default=0,
        metadata={
            "help": "with decoder_state: real frames' latents come from a frame up to this many frames away, their "
            "state from the frame drawn, so the robot is drawn where agent_pos puts it, not where drifted latents do"
        },
    )
    checkpoint_every: int = field(default=500, metadata={"help": "steps between checkpoints"})
    seed: int = field(default=0, metadata={"help": "seeds the batch order"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})


# What must not change for a resumed run to be the same run.
RUN_IDENTITY = (
    "checkpoint",
    "data",
    "batch_size",
    "lr",
    "episodes",
    "context",
    "horizon",
    "real_fraction",
    "far_horizon",
    "far_pixels",
    "anchor_detail",
    "anchor_memory",
    "memory_weight",
    "still_weight",
    "decoder_state",
    "latent_shift",
    "seed",
)
# what a run recorded before an option existed did
LEGACY_OPTIONS = {
    "far_pixels": "still", "anchor_detail": False, "anchor_memory": [], "memory_weight": 0.0, "still_weight": 0.0,
    "decoder_state": False, "latent_shift": 0,
}  # fmt: skip


def anchored(
    model: WorldModel, detail: bool = True, memory: tuple[int, ...] = (), state: bool = False
) -> WorldModel:
    """The same model with an anchored decoder, reading the anchor's pixels too if `detail`, the
    earlier frames `memory` names and agent_pos if `state`, that starts from its decoder's weights
    and decodes as it did.

    What is new enters through zeroed weights: a plain decoder's anchor tokens, the anchor's (and
    earlier frames') pixels in the last convolution, the state's tokens in the first. A plain
    decoder's draw-or-copy channel starts at one half everywhere: training moves it towards the
    anchor where the anchor is right.
    """
    config, memory = model.config, tuple(memory) if detail else ()
    had = (config.anchor_detail, config.anchor_memory, config.decoder_state)
    wants = (detail, memory, state)
    taken = (had[0] and not detail) or (had[1] and had[1] != memory) or (had[2] and not state)
    if config.anchored and taken:
        raise WmSimError(
            f"this model's anchored decoder reads anchor_detail={had[0]}, anchor_memory={list(had[1])}, "
            f"decoder_state={had[2]}; tuning can add to what it reads, not change it to anchor_detail={detail}, "
            f"anchor_memory={list(memory)}, decoder_state={state}"
        )
    if config.anchored and had == wants:
        return model
    converted = WorldModel(
        replace(config, anchored=True, anchor_detail=detail, anchor_memory=memory, decoder_state=state)
    )
    source, target = model.state_dict(), converted.state_dict()
    with torch.no_grad():
        for name, value in target.items():
            before = source.get(name)
            if before is None and name.startswith("state_tokens."):  # its output enters through zeroed inputs
                continue
            if before is None:  # the convolution of the anchor's pixels
                value.zero_()
            elif before.shape == value.shape:
                value.copy_(before)
            else:  # a plain decoder's first convolution (inputs) or last (outputs), or the anchor's
                # pixels' convolution (the earlier frames' inputs), grew
                value.zero_()
                value[tuple(slice(0, n) for n in before.shape)] = before
    converted.load_state_dict(target)
    return converted


def tune_decoder(cfg: DecoderTuningConfig) -> Path:
    """Train an anchored decoder on a frozen world model; returns the run directory."""
    began = time.perf_counter()  # its seconds, summed over resumes (the model card's time)
    _check_options(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out)
    resuming = lifecycle.resumes(cfg.resume, run_dir)
    torch.manual_seed(cfg.seed)  # a decoder reading agent_pos for the first time draws its new weights
    model, meta = _source(cfg, run_dir, resuming)
    # resumed: this run's time so far; tuning an already tuned decoder: that tuning's time, so
    # the model card counts every decoder phase (`earlier` in the metadata names the one before)
    spent = float(meta.get("decoder_seconds", 0.0)) if resuming or meta["decoder_tuning"].get("earlier") else 0.0
    store = EpisodeStore.open(cfg.data)
    check_dataset_fits(model.config, meta, store.info, cfg.data)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model.eval()  # frozen parts stay in inference behaviour; only the decoder learns
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.decoder_parameters():
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(model.decoder_parameters(), lr=cfg.lr, weight_decay=0.0)
    for group in optimiser.param_groups:
        group["peak_lr"] = cfg.lr
    step = 0
    if resuming:
        tensors, train_meta = load_train_state(run_dir / LAST)
        lifecycle.restore_training_state(tensors, train_meta, optimiser, rng)
        step = int(train_meta["step"])
    (camera,) = checkpoint_cameras(meta, store.info.cameras[:1])  # one camera: multi-camera models refused
    data = own_rollouts(model, store, camera, meta, cfg)
    val_fraction = float(meta.get("train", {}).get("val_fraction", 0.1))
    contexts = run_contexts(store, [camera], val_fraction, model.config.window)
    bar = tqdm(total=cfg.steps, initial=step, desc="tune-decoder", unit="step")
    try:
        while step < cfg.steps:
            lifecycle.set_lr(optimiser, step, cfg.steps)
            decoded, target, weight = tuning_batch(model, data, cfg, rng)
            error = decoded - target
            loss = ((error.pow(2) + 0.5 * error.abs()) * weight).sum() / (3 * weight.sum()).clamp(min=1.0)
            lifecycle.check_finite(loss, step, run_dir)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.decoder_parameters(), 1.0)
            optimiser.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.5f}")
            if lifecycle.checkpoint_due(step, cfg.checkpoint_every, cfg.steps):
                meta["decoder_seconds"] = round(spent + time.perf_counter() - began, 1)
                lifecycle.save_model_checkpoint(run_dir, step, model, optimiser, rng, meta, contexts)
    finally:
        bar.close()
    return run_dir


def _check_options(cfg: DecoderTuningConfig) -> None:
    """One clear error for options no tuning run can use, before anything is read."""
    if not cfg.checkpoint:
        raise WmSimError("checkpoint= is required: the world model whose decoder to tune")
    if min(cfg.steps, cfg.batch_size, cfg.context, cfg.horizon, cfg.checkpoint_every) < 1 or cfg.episodes < 0:
        raise WmSimError(
            "steps, batch_size, context, horizon and checkpoint_every must be >= 1 and episodes >= 0, got "
            f"{cfg.steps}, {cfg.batch_size}, {cfg.context}, {cfg.horizon}, {cfg.checkpoint_every}, {cfg.episodes}"
        )
    if not 0.0 <= cfg.real_fraction <= 1.0:
        raise WmSimError(f"real_fraction must be within [0, 1], got {cfg.real_fraction}")
    if cfg.far_pixels not in FAR_PIXELS:
        raise WmSimError(f"far_pixels must be one of {', '.join(FAR_PIXELS)}, got {cfg.far_pixels!r}")
    if cfg.far_horizon and cfg.far_horizon <= cfg.horizon:
        raise WmSimError(f"far_horizon must be 0 or beyond horizon={cfg.horizon}, got {cfg.far_horizon}")
    if cfg.still_weight < 0:
        raise WmSimError(f"still_weight must be >= 0, got {cfg.still_weight}")
    if any(not isinstance(g, int) or g < 1 for g in cfg.anchor_memory) or cfg.memory_weight < 0:
        raise WmSimError(
            "anchor_memory must list frames back from the anchor (each >= 1) and memory_weight be >= 0, got "
            f"{list(cfg.anchor_memory)}, {cfg.memory_weight}"
        )
    if cfg.latent_shift < 0 or (cfg.latent_shift and not cfg.decoder_state):
        raise WmSimError(
            f"latent_shift must be >= 0, and above 0 only with decoder_state=true (agent_pos then says where the "
            f"robot is), got latent_shift={cfg.latent_shift}, decoder_state={cfg.decoder_state}"
        )
    if cfg.anchor_memory and not cfg.anchor_detail:
        raise WmSimError(f"anchor_memory={list(cfg.anchor_memory)} is read beside the anchor's pixels: it needs anchor_detail=true")
    lifecycle.resume_auto(cfg.resume)


def _source(cfg: DecoderTuningConfig, run_dir: Path, resuming: bool) -> tuple[WorldModel, dict]:
    """The model to tune (anchored) and the metadata its checkpoints carry: the source's data and
    training, this run's options; a resumed run must be asked for with the same options."""
    options = json.loads(json.dumps(asdict(cfg)))  # as the metadata keeps them (lists, not tuples)
    model, meta = load_checkpoint(run_dir / LAST if resuming else cfg.checkpoint)
    if model.config.cameras > 1:
        raise WmSimError(
            f"tune-decoder tunes one-camera models; {cfg.checkpoint} sees {model.config.cameras} cameras "
            "(train it anchored from the start: model.anchored=true)"
        )
    meta = {k: v for k, v in meta.items() if k not in ("schema_version", "model", "step")}
    was = meta.get("decoder_tuning")  # a resumed run's own options, or the source's tuning if it had one
    if resuming:
        was = was or {}
        for key in RUN_IDENTITY:
            before = was.get(key, LEGACY_OPTIONS.get(key))
            if before != options[key]:
                raise WmSimError(
                    f"cannot resume {run_dir}: it was tuned with {key}={before!r}, this run asks for "
                    f"{options[key]!r} (remove {run_dir} to tune afresh)"
                )
        earlier = was.get("earlier")
    else:  # the tuning before this one, which names its own earlier one
        earlier = was if isinstance(was, dict) else None
    tuned = anchored(model, cfg.anchor_detail, tuple(cfg.anchor_memory), cfg.decoder_state)
    return tuned, {**meta, "decoder_tuning": {**options, "earlier": earlier}}


@dataclass
class TuningData:
    """What the decoder is tuned on, for E training episodes."""

    frames: list[torch.Tensor]  # E x (L_e, S, S, 3) uint8: every recorded frame
    own: torch.Tensor  # (E, H, N, C): the frozen model's predictions after `context` real frames
    anchors: Anchor  # (E, ...): the last of those real frames
    background: torch.Tensor  # (S, S, 3) in [0, 1]: the scene without what moves
    states: list[torch.Tensor]  # E x (L_e, D): every recorded frame's normalised agent_pos


@torch.no_grad()
def own_rollouts(
    model: WorldModel, store: EpisodeStore, camera: str, meta: dict, cfg: DecoderTuningConfig
) -> TuningData:
    """Every chosen training episode's frames and the model's own rollout from its start."""
    val_fraction = float(meta.get("train", {}).get("val_fraction", 0.1))
    length = cfg.context + max(cfg.horizon, cfg.far_horizon)
    chosen = episodes_with_frames(store, "train", val_fraction, length)
    if not chosen:
        raise WmSimError(
            f"{cfg.data} has no training episode of context + max(horizon, far_horizon) = {length} frames"
        )
    if cfg.episodes and cfg.episodes < len(chosen):
        chosen = [chosen[i] for i in np.linspace(0, len(chosen) - 1, cfg.episodes).round().astype(int)]
    keys = [image_key(camera), STATE_KEY, ACTION_KEY]
    frames, states, own, anchors = [], [], [], []
    for start in tqdm(range(0, len(chosen), 64), desc="own rollouts", unit="batch"):
        data = [store.episode(e, keys) for e in chosen[start : start + 64]]
        frames += [torch.from_numpy(d[keys[0]]) for d in data]
        states += [model.normalise_state(torch.from_numpy(d[keys[1]]).float()) for d in data]
        image, state, action = (torch.from_numpy(np.stack([d[k][:length] for d in data])) for k in keys)
        rollout = open_loop(model, image, state.float(), action[:, : length - 1].float(), cfg.context)
        own.append(rollout.latents)  # (b, H, N, C): frames context .. length-1
        anchors.append(rollout.anchor)
    earlier = None if anchors[0].earlier is None else torch.cat([a.earlier for a in anchors])
    anchor = Anchor(torch.cat([a.latents for a in anchors]), torch.cat([a.pixels for a in anchors]), earlier=earlier)
    sample = np.concatenate([f[:: max(1, len(f) // 8)].numpy() for f in frames])
    background = torch.from_numpy(background_frame(sample[:: max(1, len(sample) // 512)]))
    return TuningData(frames, torch.cat(own), anchor, background, states)


FAR_PIXELS = ("still", "anchor", "all")


def far_pixels(
    frames: torch.Tensor, anchor: torch.Tensor, background: torch.Tensor, which: str = "still"
) -> torch.Tensor:
    """The pixels (..., S, S, 1) a far prediction is trained on. Frames and anchor (..., S, S, 3).

    still: where the anchor shows something other than the background and the frame still shows
    it: what stood still since (a target). anchor: also where the anchor's foreground has left
    (the frame shows background there), so that a pushed object is not copied on where it was.
    all: every pixel (a decoder told agent_pos knows where the arm is).
    """
    if which not in FAR_PIXELS:
        raise WmSimError(f"far_pixels must be one of {', '.join(FAR_PIXELS)}, got {which!r}")
    if which == "all":
        return torch.ones_like(frames[..., :1], dtype=torch.bool)
    shown = (anchor - background).abs().amax(-1, keepdim=True) >= 0.1
    unchanged = (frames - anchor).abs().amax(-1, keepdim=True) < 0.1
    if which == "still":
        return unchanged & shown
    left = (frames - background).abs().amax(-1, keepdim=True) < 0.1
    return shown & (unchanged | left)


def shown_earlier(frames: torch.Tensor, anchor: Anchor) -> torch.Tensor:
    """The pixels (B, S, S, 1) of frames (B, S, S, 3) that the anchor frame does not show as they
    are, but one of its earlier frames did: what the arm covered at the anchor and has left since."""
    pixels = anchor.pixels.permute(0, 2, 3, 1)  # (B, S, S, 3)
    earlier = anchor.earlier.permute(0, 2, 3, 1).unflatten(-1, (-1, 3))  # (B, S, S, M, 3)
    differs = (frames - pixels).abs().amax(-1, keepdim=True) >= 0.1
    matches = ((frames.unsqueeze(-2) - earlier).abs().amax(-1) < 0.1).any(-1, keepdim=True)
    return differs & matches


def latent_sources(lengths: list[int], shown: list[int], shift: int, rng: np.random.Generator) -> list[int]:
    """The frame whose latents each real row decodes: the frame it shows (`shown`), or with `shift`
    one up to that many frames away within its episode (`lengths`). The row's target and agent_pos
    stay the shown frame's, so the robot must be drawn where agent_pos puts it: in a rollout the
    latents drift off the pose faster than the predicted agent_pos does."""
    if not shift:
        return list(shown)
    offsets = rng.integers(-shift, shift + 1, len(shown))
    return [min(max(j + int(d), 0), n - 1) for j, d, n in zip(shown, offsets, lengths, strict=True)]


def tuning_batch(
    model: WorldModel, data: TuningData, cfg: DecoderTuningConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch decoded (with gradients into the decoder), its recorded frames (B, S, S, 3) and
    the pixels' loss weights (B, S, S, 1).

    Own predictions past `horizon` (half of the own ones, with `far_horizon`) are trained only on
    `far_pixels`: there copying the anchor is right wherever the arm went. Everywhere else their
    truth is where the arm really is, and learning it would teach erasing a misplaced arm;
    far_pixels=anchor accepts some of that where the anchor's foreground left (it also erases an
    arm predicted to stay where the real one left), so that a pushed object is not kept.
    """
    frames, own, anchors = data.frames, data.own, data.anchors
    b = cfg.batch_size
    rows = rng.integers(0, len(frames), b)
    real = rng.random(b) < cfg.real_fraction
    far = ~real & (rng.random(b) < 0.5) if cfg.far_horizon else np.zeros(b, dtype=bool)
    h = np.where(
        far,
        rng.integers(cfg.horizon, max(cfg.far_horizon, cfg.horizon + 1), b),
        rng.integers(0, cfg.horizon, b),
    )
    latents = own[rows, h].clone()  # (B, N, C)
    anchor = anchors[torch.from_numpy(rows)]
    target = torch.stack([frames[r][cfg.context + t] for r, t in zip(rows, h, strict=True)])
    # the recorded state of each target frame: what a decoder reading agent_pos is told
    state = torch.stack([data.states[r][cfg.context + t] for r, t in zip(rows, h, strict=True)])
    if real.any():
        picked = np.flatnonzero(real)
        shown = [int(rng.integers(0, len(frames[rows[i]]))) for i in picked]
        under = [int(rng.integers(0, len(frames[rows[i]]))) for i in picked]
        shown_frames = torch.stack([frames[rows[i]][j] for i, j in zip(picked, shown, strict=True)])
        under_frames = torch.stack([frames[rows[i]][j] for i, j in zip(picked, under, strict=True)])
        index = torch.from_numpy(picked)
        source = latent_sources([len(frames[rows[i]]) for i in picked], shown, cfg.latent_shift, rng)
        encoded = (
            shown_frames
            if source == shown
            else torch.stack([frames[rows[i]][j] for i, j in zip(picked, source, strict=True)])
        )
        with torch.no_grad():
            latents[index] = model.encode(encoded)
            real_anchor = model.anchor(under_frames)
        anchor.latents[index], anchor.pixels[index] = real_anchor.latents, real_anchor.pixels
        if anchor.earlier is not None:  # the earlier frames of that anchor frame's episode
            contexts = [frames[rows[i]][None, : j + 1] for i, j in zip(picked, under, strict=True)]
            anchor.earlier[index] = torch.cat([model.earlier_frames(c) for c in contexts])
        target[index] = shown_frames
        state[index] = torch.stack([data.states[rows[i]][j] for i, j in zip(picked, shown, strict=True)])
    target = target.float() / 255.0
    weight = torch.ones_like(target[..., :1])
    if far.any():
        index = torch.from_numpy(np.flatnonzero(far))
        anchor_frames = anchor.pixels[index].permute(0, 2, 3, 1)  # (k, S, S, 3), as the targets
        weight[index] = far_pixels(target[index], anchor_frames, data.background, cfg.far_pixels).float()
        if cfg.still_weight:  # the target, where it still stands: kept over an arm drawn a little off
            still = far_pixels(target[index], anchor_frames, data.background, "still")
            weight[index] += cfg.still_weight * still.float()
    if cfg.memory_weight and anchor.earlier is not None:
        weight = weight + cfg.memory_weight * shown_earlier(target, anchor).float()
    return model.decode(latents, anchor, state), target, weight
