"""Behaviour cloning (wm_sim.behaviour_cloning): a baseline trained on the dataset's own actions,
on the world model's encoder, never on held-out episodes (verify scores it: test_verify.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from wm_sim.policies.catalog import Setting, make_policy

from wm_sim.checkpoint import load_checkpoint
from wm_sim.data.schema import ACTION_KEY, STATE_KEY, image_key
from wm_sim.data.store import EpisodeStore
from wm_sim.data.windows import split_episodes
from wm_sim.errors import WmSimError
from wm_sim.train_policy import train_policy

VAL_FRACTION = 0.5  # the tiny model's (conftest): of 4 episodes, 1 and 3 are held out


def test_behaviour_cloning_beats_an_untrained_actor_on_held_out_episodes(bc_run):
    run, _ = bc_run
    meta = json.loads((run / "last" / "policy.json").read_text())
    metrics = meta["metrics"]
    assert meta["kind"] == "actor_critic" and meta["train"]["algo"] == "bc"
    assert meta["train"]["val_fraction"] == VAL_FRACTION  # the world model's own split
    assert metrics["bc/val_episodes"] == 2 and metrics["bc/val_pairs"] == metrics["bc/train_pairs"]
    assert metrics["bc/val_mse"] < 0.5 * metrics["bc/val_mse_untrained"]


def test_behaviour_cloning_loads_and_acts_from_pixels_and_proprioception(bc_run, learnable_store):
    """The saved policy, fed the held-out episodes' frames and agent_pos, misses the recorded actions
    by exactly the validation MSE reported: it acts as it was trained, on episodes it never saw."""
    run, _ = bc_run
    store = EpisodeStore.open(learnable_store)
    held_out = [
        store.episode(e, [image_key(store.info.cameras[0]), STATE_KEY, ACTION_KEY])
        for e in split_episodes(store.num_episodes, "val", VAL_FRACTION)
    ]
    store.close()
    pixels = np.concatenate([e[image_key("top")] for e in held_out])
    agent_pos = np.concatenate([e[STATE_KEY] for e in held_out])
    recorded = np.concatenate([e[ACTION_KEY] for e in held_out])
    setting = Setting(task="reacher", num_envs=len(pixels), action_dim=2, image_size=64, state_dim=4)
    policy = make_policy(str(run), setting)
    actions = policy.act({"pixels": pixels, "agent_pos": agent_pos})
    metrics = json.loads((run / "last" / "policy.json").read_text())["metrics"]
    assert actions.shape == recorded.shape and actions.dtype == np.float32
    assert np.mean((actions - recorded) ** 2) == pytest.approx(metrics["bc/val_mse"], rel=1e-4)


def test_behaviour_cloning_never_trains_on_held_out_episodes(tiny_model_path, reacher_store_path):
    from wm_sim.policies.actor_critic import ObservationEncoder

    from wm_sim.behaviour_cloning import encode_pairs

    model, _ = load_checkpoint(tiny_model_path)
    pairs = encode_pairs(ObservationEncoder.from_world_model(model), str(reacher_store_path), VAL_FRACTION)
    store = EpisodeStore.open(reacher_store_path)
    val = {r for e in (1, 3) for r in range(*store.episode_bounds(e))}
    store.close()
    assert set(pairs.val_rows.tolist()) == val and pairs.val_episodes == [1, 3]
    assert not set(pairs.train_rows.tolist()) & val
    assert len(pairs.train_rows) + len(pairs.val_rows) == len(pairs.features)


def test_behaviour_cloning_refuses_a_used_run_directory_and_resume(bc_run):
    run, cfg = bc_run
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(WmSimError, match="already holds a run"):
        train_policy(cfg)
    with pytest.raises(WmSimError, match="does not resume"):
        train_policy(replace(cfg, resume="auto"))
    with pytest.raises(WmSimError, match="lr must be a positive"):
        train_policy(replace(cfg, lr=float("nan")))
    assert sorted(p.name for p in run.iterdir()) == before
