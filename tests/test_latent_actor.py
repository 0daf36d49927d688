"""The latent actor: trained by backpropagation through the latent model, saved, loaded, acting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wm_sim.checkpoint import load_checkpoint
from wm_sim.data.store import EpisodeStore
from wm_sim.errors import WmSimError
from wm_sim.latent_model import LatentModel
from wm_sim.train_policy import TrainPolicyConfig, train_policy


def _config(model, data, out, **overrides) -> TrainPolicyConfig:
    base = dict(
        algo="latent_actor", checkpoint=str(model), data=str(data), out=str(out), steps=40, batch=32,
        horizon=8, lr=3e-3, threads=1,
    )  # fmt: skip
    return TrainPolicyConfig(**{**base, **overrides})


@pytest.mark.slow
def test_the_latent_actor_earns_more_imagined_return_than_an_untrained_one_and_loads_as_a_policy(
    tiny_planning_model_path, reacher_store_path, tmp_path
):
    from wm_sim.policies.catalog import Setting, make_policy
    from wm_sim.policies.latent_actor import LatentActor

    from wm_sim.train_latent_actor import imagined_loss, recorded_scenes

    run = train_policy(_config(tiny_planning_model_path, reacher_store_path, tmp_path / "actor"))
    setting = Setting(task="reacher", num_envs=3, action_dim=2, image_size=64, state_dim=4)
    policy = make_policy(str(run), setting)
    world, _ = load_checkpoint(tiny_planning_model_path)
    model = LatentModel.of(world)
    goals, states, _, _ = recorded_scenes(model, EpisodeStore.open(reacher_store_path), [0, 1])
    untrained = LatentActor(model.scene_reward, 2)
    with torch.no_grad():
        _, before = imagined_loss(untrained, model, goals[:256], states[:256], 8, 0.98)
        _, after = imagined_loss(policy.actor, model, goals[:256], states[:256], 8, 0.98)
    assert after > before, (after, before)
    obs = {
        "pixels": np.zeros((3, 64, 64, 3), np.uint8),
        "agent_pos": np.zeros((3, 4), np.float32),
    }
    action = policy.act(obs)
    assert action.shape == (3, 2) and action.dtype == np.float32 and np.all(np.abs(action) <= 1)
    # packaged, it carries a card naming the command that made it and quoting its verification
    import json

    from wm_sim.policies.saved import PackagePolicyConfig, package_policy

    report = {"policy": "p", "episodes": 2, "options": {"policy": "p", "seed": 9}, "success_rate": 0.5,
              "mean_true_return": {"policy": -7.0, "zero": -40.0}, "score_vs_zero": 0.9}  # fmt: skip
    (tmp_path / "verify.json").write_text(json.dumps(report))
    packaged = package_policy(
        PackagePolicyConfig(policy=str(run), out=str(tmp_path / "packaged"), verified=str(tmp_path / "verify.json"))
    )
    card = (packaged / "MODEL_CARD.md").read_text()
    assert "wm-sim train-policy algo=latent_actor" in card and "steps=40" in card and "lr=0.003" in card
    assert "| policy | 0.50 | -7.00 |" in card and "0.900" in card
    make_policy(str(packaged), setting)  # still a policy, card and all


def test_a_latent_actor_run_is_never_overwritten_and_needs_a_model_to_plan_with(
    tiny_planning_model_path, tiny_model_path, reacher_store_path, tmp_path
):
    run = train_policy(_config(tiny_planning_model_path, reacher_store_path, tmp_path / "actor", steps=2))
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(WmSimError, match="already holds a policy run"):
        train_policy(_config(tiny_planning_model_path, reacher_store_path, run, steps=2))
    assert sorted(p.name for p in run.iterdir()) == before
    with pytest.raises(WmSimError, match="no state transition and scene reward"):
        train_policy(_config(tiny_model_path, reacher_store_path, tmp_path / "other", steps=2))
    assert not (tmp_path / "other").exists()
