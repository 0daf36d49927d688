"""`wm-sim train`: fit the world model to a collected dataset, with checkpoints and resume.

The configs (model architecture, training recipe, the run's options), then the run: the dataset split
into windows, the model started fresh, from `init=` (upgraded to this run's shape) or resumed,
its small parts fitted up front (wm_sim.head_fitting), then steps of the objective
(wm_sim.objective) under the run lifecycle every trainer shares (wm_sim.run_lifecycle), on one
process or several under `torchrun` (wm_sim.distributed).
"""

from __future__ import annotations

import faulthandler
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from wm_sim.checkpoint import (
    LAST,
    load_checkpoint,
    load_train_state,
    lock_run_directory,
    run_contexts,
)
from wm_sim.data.angles import episode_states, wrapped_entries
from wm_sim.data.schema import ACTION_KEY, REWARD_KEY, STATE_KEY, TERMINATED_KEY, frames_of, image_key
from wm_sim.data.store import EpisodeStore
from wm_sim.data.windows import EpisodeWindows, episodes_with_frames
from wm_sim.decoder_tuning import FAR_PIXELS, DecoderTuningConfig, tune_decoder
from wm_sim.distributed import Distributed, average_gradients
from wm_sim.errors import WmSimError
from wm_sim.head_fitting import fit_frame_reward, fit_scene_reward, fit_transition
from wm_sim.metrics import background_frame
from wm_sim.model_upgrade import differences, initial_model
from wm_sim.objective import Objective, copying_warning, to_batch, validate
from wm_sim.recipe import ModelArchitecture, TrainingRecipe
from wm_sim.rollout import rollout_video
from wm_sim.run_lifecycle import (
    check_finite,
    checkpoint_due,
    restore_training_state,
    resume_auto,
    resumes,
    save_model_checkpoint,
    set_lr,
)
from wm_sim.tracking import Tracker, WandbConfig, new_run_id
from wm_sim.world_model import WorldModel, WorldModelConfig


@dataclass
class TrainConfig:
    """Options of `wm-sim train`. Groups: model=, training=, wandb= (files under configs/)."""

    # Options since renamed (config.load_config refuses the old spelling, naming the new one).
    RENAMED_OPTIONS: ClassVar[dict[str, str]] = {"model.heads": "model.n_heads"}

    data: str = field(default="datasets/reacher.zarr", metadata={"help": "the zarr dataset to train on"})
    model: ModelArchitecture = field(
        default_factory=ModelArchitecture, metadata={"help": "model architecture: model=small|tiny"}
    )
    out: str = field(default="outputs/reacher", metadata={"help": "run directory: checkpoints and logs"})
    steps: int = field(
        default=20000, metadata={"help": "optimiser steps in all (a resumed run counts from its start)"}
    )
    resume: str = field(
        default="false", metadata={"help": "false: new run; auto: continue out/last if present"}
    )
    training: TrainingRecipe = field(
        default_factory=TrainingRecipe,
        metadata={"help": "training=default|quick; training.lr=... and the rest one by one"},
    )
    init: str = field(
        default="", metadata={"help": "start from this checkpoint's weights (fine-tuning); '' for scratch"}
    )
    val_fraction: float = field(
        default=0.1, metadata={"help": "every 1/f-th episode is held out for validation"}
    )
    seed: int = field(default=0, metadata={"help": "seeds the initialisation and the batch order"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if available), cpu, cuda"})
    dist_timeout_s: float = field(
        default=1800.0,
        metadata={"help": "under torchrun: seconds one process waits for the others before failing"},
    )
    wandb: WandbConfig = field(
        default_factory=WandbConfig,
        metadata={"help": "logging: wandb=offline|online|disabled, or wandb.mode=..."},
    )

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise WmSimError(f"threads must be at least 0 (0: torch's default), got {self.threads}")
        if self.seed < 0:  # numpy's generators take no negative seed
            raise WmSimError(f"seed must be a non-negative integer, got {self.seed}")


def model_config(arch: ModelArchitecture, store: EpisodeStore) -> WorldModelConfig:
    """The full model shape: the chosen architecture, plus what the dataset fixes."""
    info = store.info
    return WorldModelConfig(
        image_size=info.image_size,
        action_dim=info.features[ACTION_KEY].shape[0],
        state_dim=info.features[STATE_KEY].shape[0],
        periodic_state=wrapped_entries(episode_states(store)) if arch.transition else (),
        cameras=len(info.cameras),
        **{k: getattr(arch, k) for k in ModelArchitecture.__dataclass_fields__},
    )


def _device(cfg: TrainConfig, job: Distributed) -> torch.device:
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise WmSimError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise WmSimError("device=cuda, but torch sees no CUDA device")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda", job.local_rank) if use_cuda else torch.device("cpu")


def train(cfg: TrainConfig) -> Path:
    """Train (or continue training) a world model; returns the run directory.

    Under `torchrun --nproc_per_node=N`, each process takes 1/N of every batch and the gradients
    are averaged over the processes after each backward (NCCL on CUDA, gloo on CPU); all processes
    draw the same batch indices, so a run's data order does not depend on N. Only rank 0
    validates, writes checkpoints and logs.
    """
    began = time.perf_counter()  # a run's seconds, up-front fits included, summed over its resumes
    _check_options(cfg)
    fit, job, run_dir = cfg.training, Distributed.from_environment(), Path(cfg.out)
    if job.is_main:  # before any work: refuses an out= another process writes, or that cannot be made
        lock_run_directory(run_dir).release()
    if fit.batch_size % job.world_size:
        raise WmSimError(
            f"training.batch_size={fit.batch_size} must divide evenly over {job.world_size} processes"
        )
    resuming = resumes(cfg.resume, run_dir)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg, job)
    store = EpisodeStore.open(cfg.data)
    if _tunes_decoder(cfg):
        _check_decoder_phase(cfg, store)
    try:  # with a decoder phase, the steps train the model with a plain decoder
        config = model_config(replace(cfg.model, anchored=False) if _tunes_decoder(cfg) else cfg.model, store)
    except ValueError as exc:
        raise WmSimError(f"model architecture {cfg.model} does not fit {cfg.data}: {exc}") from exc
    train_set, val_set = _windows(cfg, store, config.window + 1, job.is_main)
    model, optimiser, step, rng, run_meta = _start(
        cfg, config, store, train_set.episodes, _run_meta(cfg, store, job.world_size),
        run_dir if resuming else None, device,
    )  # fmt: skip
    spent = float(run_meta.get("seconds", 0.0))
    objective = _objective(model, train_set, store.info.cameras, fit).to(device)
    joined = _join(job, device, cfg.dist_timeout_s, model)
    contexts = (
        run_contexts(store, store.info.cameras, cfg.val_fraction, config.window) if job.is_main else None
    )
    run_lock = lock_run_directory(run_dir) if job.is_main else None  # held until the run ends
    tracker = Tracker(cfg.wandb, run_dir, run_meta["wandb_run_id"], run_meta, active=job.is_main)
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", disable=not job.is_main)
    started, seen = time.perf_counter(), 0
    try:
        if job.is_main and not resuming and run_meta["fitted_up_front"]:  # a resume starts after them
            run_meta["seconds"] = round(spent + time.perf_counter() - began, 1)
            save_model_checkpoint(run_dir, 0, model, optimiser, rng, run_meta, contexts)
        while step < cfg.steps:
            set_lr(optimiser, step, cfg.steps)
            picks = rng.integers(0, len(train_set), fit.batch_size)
            passes = 0 if step < fit.teacher_forced_steps else None  # None: the recipe's
            terms, total = _step(objective, optimiser, train_set, picks, job, step, run_dir, device, passes)
            step, seen = step + 1, seen + fit.batch_size
            rate = seen / (time.perf_counter() - started)
            bar.update(1)
            bar.set_postfix(loss=f"{total.item() / job.world_size:.4f}", samples_per_s=f"{rate:.1f}")
            if not job.is_main:
                continue
            if step % 10 == 0 and tracker.active:
                tracker.log(
                    {f"train/{k}": v.item() for k, v in terms.items()} | {"samples_per_s": rate}, step
                )
            if step % fit.val_every == 0 or step == cfg.steps:
                _validate_and_log(objective, val_set, store, run_meta, step, cfg, tracker, bar)
            if checkpoint_due(step, fit.checkpoint_every, cfg.steps):
                run_meta["seconds"] = round(spent + time.perf_counter() - began, 1)
                save_model_checkpoint(run_dir, step, model, optimiser, rng, run_meta, contexts)
    finally:
        bar.close()
        tracker.finish()
        if joined:
            dist.destroy_process_group()
            faulthandler.unregister(signal.SIGTERM)
        if run_lock is not None:
            run_lock.release()
    if job.is_main and _tunes_decoder(cfg):
        return _tune_decoder(cfg, run_dir)
    return run_dir


DECODER_DIR = "decoder"  # the phase after the steps: the anchored decoder tuned (its own checkpoints)
DETAIL_DIR = "detail"  # with model.anchor_detail: the anchor's pixels read too
MEMORY_DIR = "memory"  # with model.anchor_memory: earlier context frames read too
STATE_DIR = "state"  # with model.decoder_state: agent_pos read too (the final model)
# The last phase trains far predictions on every pixel, and the target's (the anchor's foreground
# where it still stands) this much more: at 0 the arm drawn a little off hid the target (reacher's
# recall 16 frames out fell from 0.85 to 0.76); at 3, 0.84 (CHANGELOG, 2026-12-07).
STILL_WEIGHT = 3.0
# ... and runs this many times training.decoder_steps: it learns a new input, the pose, and at 2,500
# steps it was undertrained (2,500 more lifted reacher's PSNR 16 frames out by 0.75 dB and a random
# stream's frames in the real ranges from 85% to 90%; CHANGELOG, 2026-12-07).
STATE_STEPS = 2


def _tunes_decoder(cfg: TrainConfig) -> bool:
    """Whether the anchored decoder is tuned on last (the steps train a plain one). Not in a
    fine-tuning run (init=): its decoder is init's, anchored as model.anchored says."""
    return cfg.model.anchored and cfg.training.decoder_steps > 0 and not cfg.init


def _check_decoder_phase(cfg: TrainConfig, store: EpisodeStore) -> None:
    """Refuse, before any training, a decoder phase the data cannot feed."""
    if len(store.info.cameras) > 1:
        raise WmSimError(
            f"training.decoder_steps tunes an anchored decoder onto one-camera models; {cfg.data} has "
            f"{len(store.info.cameras)} cameras: pass training.decoder_steps=0 (trains it anchored from the start)"
        )
    tuning = DecoderTuningConfig()
    length = tuning.context + max(tuning.horizon, tuning.far_horizon)
    if not episodes_with_frames(store, "train", cfg.val_fraction, length):
        raise WmSimError(
            f"training.decoder_steps tunes the decoder on the model's own {length - tuning.context}-frame "
            f"rollouts after {tuning.context} real frames; no training episode of {cfg.data} has {length} "
            "frames: pass training.decoder_steps=0, or collect longer episodes"
        )


def _tune_decoder(cfg: TrainConfig, run_dir: Path) -> Path:
    """The recipe's last phases, on the frozen model of the last step (what `wm-sim tune-decoder`
    does, resumable as the steps were): an anchored decoder tuned from the plain one (out/decoder),
    then, with model.anchor_detail, tuned again reading the anchor's pixels too (out/detail), and
    with model.anchor_memory once more, reading earlier context frames too (out/memory), and with
    model.decoder_state once more, reading agent_pos too, on every pixel, from shifted latents
    (training.decoder_latent_shift) and for STATE_STEPS times as many steps (out/state). Returns
    the final model's directory.

    Each phase starts from the one before, its new inputs at zero: a run made before a phase
    existed gains it by `resume=auto`.
    """
    far, arch, steps = cfg.training.decoder_far_pixels, cfg.model, cfg.training.decoder_steps
    phases = [(DECODER_DIR, dict(far_pixels=far, anchor_detail=False))]
    if arch.anchor_detail:
        phases.append((DETAIL_DIR, dict(far_pixels=far)))
        if arch.anchor_memory:
            phases.append((MEMORY_DIR, dict(far_pixels=far, anchor_memory=tuple(arch.anchor_memory))))
    if arch.decoder_state:  # what the phase before it read, and agent_pos, on every pixel, for longer
        state = dict(
            far_pixels="all", still_weight=STILL_WEIGHT, decoder_state=True, steps=STATE_STEPS * steps,
            latent_shift=cfg.training.decoder_latent_shift,
        )
        phases.append((STATE_DIR, dict(phases[-1][1], **state)))
    source = run_dir / f"step-{cfg.steps:07d}"
    for name, options in phases:
        out = run_dir / name
        options = {"anchor_memory": (), "decoder_state": False, "steps": steps, **options}
        tuned = tune_decoder(
            DecoderTuningConfig(
                checkpoint=str(source), data=cfg.data, out=str(out),
                memory_weight=DecoderTuningConfig.memory_weight if options["anchor_memory"] else 0.0,
                resume="auto" if (out / LAST).exists() else "false", seed=cfg.seed, threads=cfg.threads,
                **options,
            )
        )  # fmt: skip
        source = out / LAST
    print(f"the trained model, with its anchored decoder: {tuned}")
    return tuned


def _check_options(cfg: TrainConfig) -> None:
    """One clear error for options no run can use, before anything is read or written."""
    fit = cfg.training
    if cfg.steps <= 0 or fit.batch_size <= 0:
        raise WmSimError(
            f"steps and training.batch_size must be positive, got {cfg.steps} and {fit.batch_size}"
        )
    if fit.val_every <= 0 or fit.checkpoint_every <= 0:
        raise WmSimError(
            f"training.val_every and training.checkpoint_every must be positive, got {fit.val_every}, {fit.checkpoint_every}"
        )
    if cfg.dist_timeout_s <= 0:
        raise WmSimError(f"dist_timeout_s must be positive, got {cfg.dist_timeout_s}")
    if min(fit.rollout_passes, fit.teacher_forced_steps, fit.foreground_weight, fit.reward_weight) < 0:
        raise WmSimError(
            "training.rollout_passes, training.teacher_forced_steps, training.foreground_weight and "
            "training.reward_weight must be >= 0, got "
            f"{fit.rollout_passes}, {fit.teacher_forced_steps}, {fit.foreground_weight}, {fit.reward_weight}"
        )
    if fit.transition_rollout_horizon < 1 or fit.transition_rollout_lr <= 0:
        raise WmSimError(
            "training.transition_rollout_horizon must be at least 1 and training.transition_rollout_lr "
            f"positive, got {fit.transition_rollout_horizon}, {fit.transition_rollout_lr}"
        )
    if fit.transition_horizon < 1 or fit.transition_lr <= 0:
        raise WmSimError(
            "training.transition_horizon must be at least 1 and training.transition_lr positive, got "
            f"{fit.transition_horizon}, {fit.transition_lr}"
        )
    if fit.decoder_far_pixels not in FAR_PIXELS:
        raise WmSimError(
            f"training.decoder_far_pixels must be one of {', '.join(FAR_PIXELS)}, got {fit.decoder_far_pixels!r}"
        )
    if fit.refit_transition and not (cfg.model.transition and cfg.init):
        raise WmSimError(
            "training.refit_transition=true fits init's state transition again: it needs init= and "
            f"model.transition=true, got init={cfg.init!r}, model.transition={cfg.model.transition}"
        )
    resume_auto(cfg.resume)


def _windows(
    cfg: TrainConfig, store: EpisodeStore, length: int, progress: bool
) -> tuple[EpisodeWindows, EpisodeWindows]:
    """The training windows (in memory) and the validation ones, of every camera of the dataset."""
    keys = [*map(image_key, store.info.cameras), STATE_KEY, ACTION_KEY, REWARD_KEY, TERMINATED_KEY]
    train_set = EpisodeWindows(
        store, length, 0, "train", cfg.val_fraction, keys, in_memory=True, pad_end=True, progress=progress
    )
    val_set = EpisodeWindows(store, length, 0, "val", cfg.val_fraction, keys, pad_end=True)
    if len(train_set) < cfg.training.batch_size:
        raise WmSimError(
            f"{cfg.data} has {len(train_set)} training windows of {length} frames, fewer than one "
            f"batch of {cfg.training.batch_size}: collect more episodes or lower training.batch_size"
        )
    return train_set, val_set


def _objective(
    model: WorldModel, train_set: EpisodeWindows, cameras: list[str], fit: TrainingRecipe
) -> Objective:
    """The losses of this run, with the scene's background from training frames only (the same
    sample on every resumed run)."""
    samples = np.linspace(0, len(train_set) - 1, min(len(train_set), 256)).astype(int)
    background = background_frame(np.stack([frames_of(train_set[int(i)], cameras)[0] for i in samples]))
    return Objective(
        model, fit.context_noise, fit.rollout_passes, torch.from_numpy(background),
        fit.foreground_weight, fit.reward_weight,
    )  # fmt: skip


def _join(job: Distributed, device: torch.device, timeout_s: float, model: WorldModel) -> bool:
    """Join the torchrun job's process group (whether this call did) and start every process from
    rank 0's weights."""
    joined = job.world_size > 1 and not dist.is_initialized()
    if joined:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        # torchrun stops the other workers with SIGTERM when one fails: each then prints where it
        # was, so a stalled collective shows which process waited on which.
        faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)
    if job.world_size > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)
    return joined


def _step(
    objective: Objective,
    optimiser: torch.optim.Optimizer,
    train_set: EpisodeWindows,
    picks: np.ndarray,
    job: Distributed,
    step: int,
    run_dir: Path,
    device: torch.device,
    rollout_passes: int | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimiser step on this process's share of the batch `picks`; (terms, summed total)."""
    share = len(picks) // job.world_size
    objective.train()
    mine = picks[job.rank * share : (job.rank + 1) * share]
    batch = to_batch([train_set[int(i)] for i in mine], train_set.store.info.cameras, device)
    terms = objective(batch, rollout_passes=rollout_passes)
    total = terms["total"].detach().clone()
    if job.world_size > 1:
        dist.all_reduce(total)  # every rank stops together on a NaN anywhere
    check_finite(total, step, run_dir)
    optimiser.zero_grad(set_to_none=True)
    terms["total"].backward()
    if job.world_size > 1:
        average_gradients(objective.model, job.world_size)
    torch.nn.utils.clip_grad_norm_(objective.model.parameters(), 1.0)
    optimiser.step()
    return terms, total


def _validate_and_log(
    objective: Objective,
    val_set: EpisodeWindows,
    store: EpisodeStore,
    run_meta: dict,
    step: int,
    cfg: TrainConfig,
    tracker: Tracker,
    bar: tqdm,
) -> None:
    """Validation losses into the run's metadata (and its checkpoints), the log, and wandb."""
    cameras = store.info.cameras
    run_meta["val"] = validate(
        objective, val_set, cameras, cfg.training.batch_size, objective.background.device
    )
    run_meta["val_step"] = step
    bar.write(f"step {step}: " + ", ".join(f"val_{k}={v:.4f}" for k, v in run_meta["val"].items()))
    warning = copying_warning(run_meta["val"])
    if warning:
        bar.write(f"step {step}: warning: {warning}")
    tracker.log({f"val/{k}": v for k, v in run_meta["val"].items()}, step)
    if tracker.active and cfg.wandb.videos and val_set.episodes:
        video = rollout_video(
            objective.model, store, val_set.episodes[0], cameras, Path(cfg.out) / "media", step
        )
        tracker.video("val/rollout", video, step)


def _run_meta(cfg: TrainConfig, store: EpisodeStore, world_size: int) -> dict:
    """What a checkpoint records about its data and run, so it can be used without the dataset."""
    info = store.info
    options = asdict(cfg)
    return {
        "dataset": {
            "path": str(Path(cfg.data).resolve()),
            "task": info.task,
            "fps": info.fps,
            "image_size": info.image_size,
            "camera": info.cameras[0],  # what a reader from before several cameras reads
            "cameras": list(info.cameras),
            "action_low": info.action_low,
            "action_high": info.action_high,
            "state_names": info.features[STATE_KEY].names,
            "action_names": info.features[ACTION_KEY].names,
            "episode_steps": info.episode_steps,
            "num_episodes": store.num_episodes,
            "num_frames": store.num_frames,
            "collection": dict(info.collection),  # how the episodes were made (collect's policy, seed)
        },
        "architecture": options["model"],  # the model= options asked for (the model card's command)
        # flat: the run's options with the training group's inlined (what resume compares)
        "train": {k: v for k, v in options.items() if k not in ("model", "wandb", "training")}
        | options["training"],
        "wandb": options["wandb"],
        "wandb_run_id": new_run_id(),
        "world_size": world_size,
    }


def _start(
    cfg: TrainConfig,
    config: WorldModelConfig,
    store: EpisodeStore,
    train_episodes: list[int],
    run_meta: dict,
    resume_from: Path | None,
    device: torch.device,
):
    """(model, optimiser, step, batch rng, run metadata): fresh, or exactly as a checkpoint left them."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if resume_from is None:
        model, saved = initial_model(cfg.init, config, store, train_episodes)
        model.to(device)
        fitted = []  # the parts fitted up front (a record; the step-0 checkpoint after them spares a resume)
        if model.transition is not None and (
            cfg.training.refit_transition or not (saved and saved.transition)
        ):
            _fit_transition(model, store, train_episodes, cfg)
            fitted.append("transition")
        if model.reward_head is not None and not (saved and saved.frame_reward):
            fit_frame_reward(model, store, train_episodes, cfg.training.reward_fit_steps, cfg.seed)
            fitted.append("frame_reward")
        if model.scene_reward is not None and not (saved and saved.scene_reward):
            fit = cfg.training
            fit_scene_reward(
                model, store, train_episodes, fit.scene_reward_steps, fit.scene_goal_steps, cfg.seed
            )
            fitted.append("scene_reward")
        _freeze(model, cfg.training)
        return model, _optimiser(model, cfg.training), 0, rng, {**run_meta, "fitted_up_front": fitted}
    model, meta = load_checkpoint(resume_from / LAST)
    if model.config != config:
        raise WmSimError(
            f"cannot resume {resume_from}: its model differs from this run's in "
            + differences(model.config, config)
        )
    _check_same_run(resume_from, meta, run_meta)
    model.to(device)  # before the optimiser state is loaded, so that state lands on the same device
    _freeze(model, cfg.training)
    optimiser = _optimiser(model, cfg.training)
    tensors, train_meta = load_train_state(resume_from / LAST)
    restore_training_state(tensors, train_meta, optimiser, rng)
    # the same wandb run continues; the last validation stays on record until the next one
    kept = {k: meta[k] for k in ("wandb_run_id", "val", "val_step", "seconds", "fitted_up_front") if k in meta}
    return model, optimiser, int(train_meta["step"]), rng, {**run_meta, **kept}


def _fit_transition(model: WorldModel, store: EpisodeStore, episodes: list[int], cfg: TrainConfig) -> None:
    """The state transition, fitted up front: on single steps, then on its own rollouts."""
    fit = cfg.training
    fit_transition(
        model, store, episodes, fit.transition_steps, cfg.seed, fit.transition_horizon, fit.transition_lr
    )
    if fit.transition_rollout_steps:
        fit_transition(
            model, store, episodes, fit.transition_rollout_steps, cfg.seed,
            fit.transition_rollout_horizon, fit.transition_rollout_lr,
        )  # fmt: skip


def _freeze(model: WorldModel, fit: TrainingRecipe) -> None:
    """Turn off gradients of what this run does not train.

    The state transition is fitted once, up front (fit_transition), and not trained after. With
    `tokenizer_lr=0` the encoder and decoder stay as they are (latents, and policies trained on
    them, stay valid): computing their gradients would cost time and, through gradient clipping,
    shrink the dynamics' steps.
    """
    if model.transition is not None:
        model.transition.requires_grad_(False)
    if model.scene_reward is not None:  # fitted up front too, on far more frames than windows hold
        model.scene_reward.requires_grad_(False)
    if fit.tokenizer_lr == 0:
        model.encoder.requires_grad_(False)
        model.decoder.requires_grad_(False)


# What must not change for a resumed run to be the same run (steps, resume, threads, cadence may).
RUN_IDENTITY = (
    "batch_size",
    "lr",
    "tokenizer_lr",
    "weight_decay",
    "context_noise",
    "rollout_passes",
    "teacher_forced_steps",
    "foreground_weight",
    "reward_weight",
    "init",
    "val_fraction",
    "seed",
    "data",
)


# Options that runs from before they existed were trained with, in effect.
LEGACY_OPTIONS = {
    "rollout_passes": 1, "teacher_forced_steps": 0, "foreground_weight": 0.0, "init": "", "reward_weight": 0.1,
}  # fmt: skip


def _check_same_run(run_dir: Path, saved: dict, now: dict) -> None:
    for key in RUN_IDENTITY:
        was = saved.get("train", {}).get(key, LEGACY_OPTIONS.get(key))
        if was != now["train"][key]:
            raise WmSimError(
                f"cannot resume {run_dir}: it was trained with {key}={was!r}, this run asks for {now['train'][key]!r}"
            )
    for key in ("path", "num_frames"):
        if saved.get("dataset", {}).get(key) != now["dataset"][key]:
            raise WmSimError(
                f"cannot resume {run_dir}: its dataset {key} was {saved.get('dataset', {}).get(key)!r}, "
                f"now {now['dataset'][key]!r} (a changed dataset makes a different run; start a new out=)"
            )


def _optimiser(model: WorldModel, fit: TrainingRecipe) -> torch.optim.Optimizer:
    # The tokenizer is a plain autoencoder and learns faster at a higher rate than the transformer
    # tolerates: the small moving arm only appears in its reconstructions after ~1000 steps at 2e-3.
    tokenizer = [*model.encoder.parameters(), *model.decoder_parameters()]
    ids = {id(p) for p in tokenizer}
    dynamics = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": tokenizer, "lr": fit.tokenizer_lr, "peak_lr": fit.tokenizer_lr},
            {"params": dynamics, "lr": fit.lr, "peak_lr": fit.lr},
        ],
        weight_decay=fit.weight_decay,
    )
