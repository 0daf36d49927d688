"""Shared fixtures: small real datasets made by the project's own collector."""

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
            data=str(reacher_store_path), model=tiny, out=str(root / "run"), steps=30, training=TrainingRecipe(batch_size=4, lr=3e-3),
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
        batch_size=4, lr=3e-3, transition_steps=200, scene_reward_steps=200, scene_goal_steps=20
    )
    return train(
        TrainConfig(
            data=str(reacher_store_path), model=tiny, out=str(tmp_path_factory.mktemp("tiny-planning") / "run"),
            steps=2, training=fitting, val_fraction=0.5, threads=1, wandb=WandbConfig(mode="disabled"),
        )
    )  # fmt: skip
