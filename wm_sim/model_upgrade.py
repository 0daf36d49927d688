"""A new run's world model: fresh, or `init=`'s weights in the shape this run asks for.

`init=` starts a run from another checkpoint's weights (fine-tuning). The run may ask for parts
the checkpoint's model did not have (residual latents, a state transition, a frame or scene
reward): each is added so that, before any step, the model predicts what the old one did, and
learns from there. Any other difference of shape is one clear error naming the option to pass.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import torch
import torch.nn as nn

from wm_sim.checkpoint import load_checkpoint
from wm_sim.data.schema import STATE_KEY
from wm_sim.data.store import EpisodeStore
from wm_sim.errors import WmSimError
from wm_sim.world_model import WorldModel, WorldModelConfig

# What the dataset fixes of a model's shape; the rest is chosen with model.<option>= (ModelArchitecture).
FIXED_BY_DATA = {"image_size", "action_dim", "state_dim", "periodic_state", "cameras"}


def initial_model(
    init: str, config: WorldModelConfig, store: EpisodeStore, train_episodes: list[int]
) -> tuple[WorldModel, WorldModelConfig | None]:
    """A new run's model, and the shape `init` saved it in: `init`'s weights (fine-tuning) or,
    with no init, fresh ones (and None)."""
    if init:  # the weights and the state normalisation they were trained with
        model, _ = load_checkpoint(init)
        return upgraded(model, config, init), model.config
    model = WorldModel(config)
    # Normalisation statistics from the training episodes only: validation stays unseen.
    states = np.concatenate([store.read(STATE_KEY, *store.episode_bounds(e)) for e in train_episodes])
    model.state_mean.copy_(torch.from_numpy(states.mean(0)))
    model.state_std.copy_(torch.from_numpy(states.std(0) + 1e-3))
    return model, None


def differences(saved: WorldModelConfig, now: WorldModelConfig) -> str:
    """The fields two model shapes disagree on, as the overrides that would match the saved one."""
    a, b = saved.to_dict(), now.to_dict()
    sizes = {f.name for f in fields(WorldModelConfig)} - FIXED_BY_DATA
    return ", ".join(
        f"{k} (saved {a[k]}, this run {b[k]}: "
        + (f"pass model.{k}={a[k]})" if k in sizes else "fixed by the dataset)")
        for k in a
        if a[k] != b[k]
    )


def upgraded(model: WorldModel, config: WorldModelConfig, init: str) -> WorldModel:
    """`model`'s weights in the shape `config` asks for, where it only adds what later models have.

    residual: the change head starts at zero, so before any step it predicts "nothing moves",
    the copy-last baseline, and learns from there. transition: a new state-transition MLP (fitted
    before training), read through an input that starts at zero, so the transformer starts as it
    was; the old state head goes. frame_reward: a new FrameReward head (fitted before training);
    the old reward row of the pooled output (`step_out`) goes.
    """
    saved = model.config
    adds = {}
    if config.residual and not saved.residual:
        adds["residual"] = True
    if config.transition and not saved.transition:
        adds |= {"transition": True, "periodic_state": config.periodic_state}
    if config.frame_reward and not saved.frame_reward:
        adds["frame_reward"] = True
    if config.scene_reward and not saved.scene_reward:
        adds["scene_reward"] = True
    if replace(saved, **adds) != config:
        raise WmSimError(
            f"cannot start from {init}: its model differs from this run's in " + differences(saved, config)
        )
    if not adds:
        return model
    converted = WorldModel(config)
    weights = model.state_dict()
    # The rows of the pooled output step_out: [state (without a transition), reward (without a frame
    # reward), continue]; drop those a new part takes over.
    rows = ["state"] * (0 if saved.transition else saved.state_dim)
    rows += ([] if saved.frame_reward else ["reward"]) + ["continue"]
    dropped = {"state"} if "transition" in adds else set()
    dropped |= {"reward"} if "frame_reward" in adds else set()
    keep = [i for i, row in enumerate(rows) if row not in dropped]
    weights["step_out.weight"], weights["step_out.bias"] = (
        weights["step_out.weight"][keep],
        weights["step_out.bias"][keep],
    )
    missing, unexpected = converted.load_state_dict(weights, strict=False)
    new_parts = ("transition.", "next_state_in.", "reward_head.", "scene_reward.")
    assert not unexpected and all(k.startswith(new_parts) for k in missing), (
        missing,
        unexpected,
    )
    if "residual" in adds:
        nn.init.zeros_(converted.latent_out.weight)
        nn.init.zeros_(converted.latent_out.bias)
    if "transition" in adds:
        nn.init.zeros_(converted.next_state_in.weight)
        nn.init.zeros_(converted.next_state_in.bias)
    return converted
