"""Shared fixtures: small real datasets made by the project's own collector, and the tiny models
and policy runs that tests of several modules read."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import tiny_architecture

import wm_sim  # noqa: F401  (registers the Gymnasium ids, selects offscreen rendering)
from wm_sim.collect import CollectConfig, collect


@pytest.fixture(scope="session")
def reacher_store_path(tmp_path_factory) -> Path:
    """Four mixed-policy reacher episodes, collected in this process."""
    out = tmp_path_factory.mktemp("data") / "reacher.zarr"
    collect(CollectConfig(task="reacher", policy="mixed", episodes=4, workers=1, seed=7, out=str(out)))
    return out


@pytest.fixture(scope="session")
def tiny_model_path(reacher_store_path, tmp_path_factory) -> Path:
    """A tiny world model, packaged with 8 start contexts of 3 frames.

    30 steps teach it that reacher never terminates, so test episodes run to truncation.
    """
    from wm_sim.package import PackageConfig, package
    from wm_sim.tracking import WandbConfig
    from wm_sim.train import TrainConfig, TrainingRecipe, train

    root = tmp_path_factory.mktemp("tiny-model")
    tiny = tiny_architecture()
    run = train(
        TrainConfig(
            data=str(reacher_store_path), model=tiny, out=str(root / "run"), steps=30, training=TrainingRecipe(decoder_steps=0, transition_rollout_steps=0, batch_size=4, lr=3e-3),
            val_fraction=0.5, threads=1, wandb=WandbConfig(mode="disabled"),
        )
    )  # fmt: skip
    return package(
        PackageConfig(
            checkpoint=str(run), data=str(reacher_store_path), out=str(root / "model"), contexts=8,
            context_frames=3, evaluate=False,
        )
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_planning_model_path(reacher_store_path, tmp_path_factory) -> Path:
    """A tiny world model with a state transition and a scene reward: what the latent planner and
    the latent actor imagine with. Briefly fitted: tests check behaviour, not skill."""
    from wm_sim.tracking import WandbConfig
    from wm_sim.train import TrainConfig, TrainingRecipe, train

    tiny = tiny_architecture(transition=True, scene_reward=True)
    fitting = TrainingRecipe(
        batch_size=4, lr=3e-3, transition_steps=200, scene_reward_steps=200, scene_goal_steps=20,
        transition_rollout_steps=0, decoder_steps=0,
    )  # fmt: skip
    return train(
        TrainConfig(
            data=str(reacher_store_path), model=tiny, out=str(tmp_path_factory.mktemp("tiny-planning") / "run"),
            steps=2, training=fitting, val_fraction=0.5, threads=1, wandb=WandbConfig(mode="disabled"),
        )
    )  # fmt: skip


@pytest.fixture(scope="session")
def policy_run(tiny_model_path, reacher_store_path, tmp_path_factory):
    """Two updates of imagination training on the tiny model, checkpointed at each (train-policy
    and verify read it)."""
    from wm_sim.tracking import WandbConfig
    from wm_sim.train_policy import TrainPolicyConfig, train_policy

    out = tmp_path_factory.mktemp("policy") / "run"
    cfg = TrainPolicyConfig(
        checkpoint=str(tiny_model_path), data=str(reacher_store_path), out=str(out), steps=2, batch=8,
        horizon=3, context=2, checkpoint_every=1, verify_every=1, verify_rows=2, verify_horizon=5, threads=1,
        wandb=WandbConfig(mode="disabled"),
    )  # fmt: skip
    return train_policy(cfg), cfg


@pytest.fixture(scope="session")
def learnable_store(reacher_store_path, tmp_path_factory):
    """The 4 recorded episodes with each action replaced by 0.8 sin(joint angles).

    Two training episodes of the mixed policy say nothing about the goals of two others (BC on
    them overfits), so the test that cloning generalises clones a known function of what the
    policy sees: its held-out error must fall well below an untrained actor's.
    """
    import numpy as np

    from wm_sim.data.schema import ACTION_KEY, STATE_KEY
    from wm_sim.data.store import EpisodeStore

    out = tmp_path_factory.mktemp("learnable") / "reacher.zarr"
    source = EpisodeStore.open(reacher_store_path)
    target = EpisodeStore.create(out, source.info)
    for episode, seed in zip(range(source.num_episodes), source.episode_seeds(), strict=True):
        rows = source.episode(episode)
        rows[ACTION_KEY] = (0.8 * np.sin(rows[STATE_KEY][:, :2])).astype(np.float32)
        target.append_episode(rows, int(seed))
    source.close()
    target.close()
    return out


@pytest.fixture(scope="session")
def bc_run(tiny_model_path, learnable_store, tmp_path_factory):
    """Behaviour cloning on the tiny model's eyes and the 4-episode store: a second or two (its
    tests, verify's with it as a baseline, and train-policy's run-directory locks read it)."""
    from wm_sim.tracking import WandbConfig
    from wm_sim.train_policy import TrainPolicyConfig, train_policy

    out = tmp_path_factory.mktemp("bc") / "run"
    cfg = TrainPolicyConfig(
        algo="bc", checkpoint=str(tiny_model_path), data=str(learnable_store), out=str(out), steps=300,
        batch=64, lr=1e-3, threads=1, wandb=WandbConfig(mode="disabled"),
    )  # fmt: skip
    return train_policy(cfg), cfg
