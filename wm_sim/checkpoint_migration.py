"""Checkpoints written by older wm-sim versions, read as this version writes them.

A checkpoint's meta.json names the schema version it was written in. `load_checkpoint` reads
every version up to CHECKPOINT_SCHEMA_VERSION and migrates an older one here, in memory: the
files stay as they are (the shipped model of 2026-12-03 was schema 2), and a new save writes the
current version.

    1 -> 2  the scene reward became a distance between an effector and a goal point
            (SceneReward): a version-1 scene reward is of the old form and is dropped, with a
            warning; everything else loads as it was.
    2 -> 3  the model config's defaults became the architecture that ships: an optional part
            the metadata does not name did not exist when it was written, so it stays off.
    3 -> 4  names that say what they are: the attention head count `heads` is `n_heads`, and the
            Linear that reads the next state, reward and continue logit off a step's pooled
            tokens is `step_out` (its weights were `heads.weight` and `heads.bias`).
    4 -> 5  the anchored decoder may read the anchor's pixels (`anchor_detail`, on by default):
            a checkpoint written before had no such inputs, so it is off.
    5 -> 6  anchor detail may read earlier context frames too (`anchor_memory`, three by
            default): a checkpoint written before read the anchor's pixels alone.
    6 -> 7  the anchored decoder may read agent_pos (`decoder_state`, on by default): a
            checkpoint written before did not.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_SCHEMA_VERSION = 7
# A model's optional parts: before schema 3 the model's defaults left them out, and a checkpoint's
# metadata names only those that existed when it was written, so a missing one was off.
OPTIONAL_PARTS = ("residual", "anchored", "transition", "frame_reward", "scene_reward")
# Schema 4's renames: of the model config's options, and of the weights' name prefixes.
RENAMED_OPTIONS = {"heads": "n_heads"}
RENAMED_WEIGHTS = {"heads.": "step_out."}


def migrated_option_names(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata whose model options are named as this version names them (before it is checked,
    so that a bad value is reported under today's name); the rest of the metadata as it was."""
    model = meta.get("model")
    if meta["schema_version"] >= 4 or not isinstance(model, dict):
        return meta
    return {**meta, "model": {RENAMED_OPTIONS.get(k, k): v for k, v in model.items()}}


def migrated_meta(meta: dict[str, Any], directory: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    """An older checkpoint's (checked) metadata as this version reads it, and the prefixes of the
    weights to leave out.

    Version 1's scene reward was an MLP over keypoints and state; version 2's is a distance
    between points, with other weights. The old head is dropped (with a warning): the model
    loads and runs as an env as before, and `wm-sim train init=... model.scene_reward=true`
    fits the new head beside everything else unchanged.
    """
    if meta["schema_version"] < 3:
        meta = {**meta, "model": {**dict.fromkeys(OPTIONAL_PARTS, False), **meta["model"]}}
    if meta["schema_version"] < 5:
        meta = {**meta, "model": {"anchor_detail": False, **meta["model"]}}
    if meta["schema_version"] < 6:
        meta = {**meta, "model": {"anchor_memory": [], **meta["model"]}}
    if meta["schema_version"] < 7:
        meta = {**meta, "model": {"decoder_state": False, **meta["model"]}}
    if meta["schema_version"] != 1 or not meta["model"].get("scene_reward"):
        return {**meta, "schema_version": CHECKPOINT_SCHEMA_VERSION}, ()
    warnings.warn(
        f"{directory}: a schema-1 checkpoint; its scene reward is of the old form and is not loaded "
        f"(add the current one with `wm-sim train init={directory} model.scene_reward=true steps=1 training.lr=0`)",
        stacklevel=3,
    )
    model = {**meta["model"], "scene_reward": False}
    return {**meta, "model": model, "schema_version": CHECKPOINT_SCHEMA_VERSION}, ("scene_reward.",)


def migrated_weights(
    state: dict[str, torch.Tensor], version: int, dropped: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """The weights of a schema-`version` checkpoint under this version's names, without those
    under the `dropped` prefixes (migrated_meta's)."""
    state = {k: v for k, v in state.items() if not k.startswith(dropped)}
    if version >= 4:
        return state
    return {_renamed(k): v for k, v in state.items()}


def _renamed(key: str) -> str:
    for old, new in RENAMED_WEIGHTS.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key
