"""`wm-sim train` on a tiny model: checkpoints, exact resume, and refusals that change nothing."""

from __future__ import annotations

import pytest
import torch

from wm_sim.checkpoint import LAST, load_checkpoint
from wm_sim.collect import CollectConfig, collect
from wm_sim.errors import WmSimError
from wm_sim.train import ModelSize, TrainConfig, train

TINY = ModelSize(grid=4, latent_dim=8, tokenizer_width=32, dim=32, depth=1, heads=2, mlp_ratio=2, window=3)


def config(data, out, **overrides) -> TrainConfig:
    base = dict(
        data=str(data),
        model=TINY,
        out=str(out),
        steps=4,
        batch_size=4,
        val_every=2,
        checkpoint_every=2,
        threads=1,
    )
    return TrainConfig(**{**base, **overrides})


def test_training_writes_loadable_checkpoints_with_dataset_metadata(reacher_store_path, tmp_path):
    run = train(config(reacher_store_path, tmp_path / "run"))
    assert sorted(p.name for p in run.iterdir()) == [LAST, "step-0000002", "step-0000004"]
    model, meta = load_checkpoint(run)
    assert meta["step"] == 4
    assert (
        meta["dataset"]["task"] == "reacher"
        and meta["dataset"]["image_size"] == 64
        and meta["dataset"]["fps"] == 50.0
    )
    assert meta["dataset"]["state_names"] == ["joint0.pos", "joint1.pos", "joint0.vel", "joint1.vel"]
    assert model.config.image_size == 64 and model.config.action_dim == 2 and model.config.state_dim == 4
    assert not torch.allclose(model.state_std, torch.ones(4))  # normalisation from the data, saved with it


def test_resumed_training_is_identical_to_an_uninterrupted_run(reacher_store_path, tmp_path):
    straight = train(config(reacher_store_path, tmp_path / "straight", steps=4))
    train(config(reacher_store_path, tmp_path / "resumed", steps=2))
    resumed = train(config(reacher_store_path, tmp_path / "resumed", steps=4, resume="auto"))
    a, _ = load_checkpoint(straight)
    b, _ = load_checkpoint(resumed)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_refusals_change_nothing(reacher_store_path, tmp_path):
    run = train(config(reacher_store_path, tmp_path / "run", steps=2))
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(WmSimError, match="already holds a run"):
        train(config(reacher_store_path, run, steps=2))
    with pytest.raises(WmSimError, match="differs from this run"):
        train(
            config(
                reacher_store_path, run, steps=4, resume="auto", model=ModelSize(**{**vars(TINY), "dim": 64})
            )
        )
    with pytest.raises(WmSimError, match="fewer than one batch"):
        train(config(reacher_store_path, tmp_path / "other", batch_size=10_000))
    assert sorted(p.name for p in run.iterdir()) == before
    assert not (tmp_path / "other").exists()


def test_a_dataset_of_another_image_size_cannot_resume_a_run(reacher_store_path, tmp_path):
    run = train(config(reacher_store_path, tmp_path / "run", steps=2))
    small = collect(
        CollectConfig(task="reacher", episodes=2, workers=1, image_size=32, out=str(tmp_path / "small.zarr"))
    )
    with pytest.raises(WmSimError, match="image_size=32"):
        train(config(small.path, run, steps=4, resume="auto"))
