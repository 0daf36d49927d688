"""The training objective (wm_sim.objective): the losses, their weights and the pixel weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_architecture

import wm_sim.objective as objective_module
from wm_sim.collect import CollectConfig, collect
from wm_sim.data.store import EpisodeStore
from wm_sim.data.windows import EpisodeWindows
from wm_sim.metrics import background_frame
from wm_sim.train import model_config
from wm_sim.world_model import WorldModel

TINY = tiny_architecture()


@pytest.mark.slow
def test_the_continue_head_is_trained_on_terminations(tmp_path):
    store = collect(
        CollectConfig(
            task="gym:Hopper-v5", policy="random", episodes=3, workers=1, out=str(tmp_path / "h.zarr")
        )
    )
    windows = EpisodeWindows(store, TINY.window + 1, 0, "all", 0.0, pad_end=True)
    batch = objective_module.to_batch([windows[i] for i in range(len(windows))], ["default"], torch.device("cpu"))
    assert batch["terminated"][:, :-1].sum() == 3  # each episode's fall is a transition the loss sees
    model = WorldModel(model_config(TINY, store))
    background = torch.from_numpy(background_frame(batch["pixels"][:, 0].numpy()))
    terms = objective_module.losses(model, batch, 0.1, 3, background, 2.0)  # the default recipe
    assert all(torch.isfinite(v) for v in terms.values())


def test_reward_weight_scales_the_reward_terms_in_the_total(reacher_store_path):
    store = EpisodeStore.open(reacher_store_path)
    windows = EpisodeWindows(store, TINY.window + 1, 0, "all", 0.0, pad_end=True)
    batch = objective_module.to_batch([windows[i] for i in range(4)], ["top"], torch.device("cpu"))
    model = WorldModel(model_config(TINY, store))
    background = torch.from_numpy(background_frame(batch["pixels"][:, 0].numpy()))
    totals = {}
    for weight in (0.1, 10.0):
        torch.manual_seed(0)  # the same noise, anchors and frames for both
        terms = objective_module.losses(model, batch, 0.1, 2, background, 2.0, weight)
        totals[weight] = terms
    rewards = totals[0.1]["teacher_reward"] + totals[0.1]["own_reward"]
    assert rewards > 0
    gap = totals[10.0]["total"] - totals[0.1]["total"]
    assert torch.allclose(gap, 9.9 * rewards, rtol=1e-4)


def test_training_losses_update_the_latent_statistics_and_validation_does_not(reacher_store_path):
    store = EpisodeStore.open(reacher_store_path)
    windows = EpisodeWindows(store, TINY.window + 1, 0, "all", 0.0, pad_end=True)
    batch = objective_module.to_batch([windows[i] for i in range(4)], ["top"], torch.device("cpu"))
    config = model_config(TINY, store)
    model = WorldModel(type(config)(**{**config.to_dict(), "normalised_latents": True}))
    background = torch.from_numpy(background_frame(batch["pixels"][:, 0].numpy()))
    objective_module.losses(model.train(), batch, 0.1, 1, background, 2.0)
    assert int(model.latent_observed) == 1
    with torch.no_grad():
        real = model.encode(batch["pixels"])
    torch.testing.assert_close(model.latent_mean, real.flatten(0, -2).mean(0))
    terms = objective_module.losses(model.eval(), batch, 0.1, 1, background, 2.0)
    assert int(model.latent_observed) == 1
    # copying's latent error is reported beside the losses, not one of them
    losses = {k: v for k, v in terms.items() if k not in ("total", "copy_latent")}
    full = ("recon", "predicted_pixels", "teacher_latent", "own_latent")  # the rest weigh 0.1
    expected = sum((1.0 if k in full else 0.1) * v for k, v in losses.items())
    assert terms["copy_latent"] > 0 and torch.allclose(terms["total"], expected)


def test_pixel_weights_weigh_what_differs_from_the_background():
    background = torch.zeros(2, 2, 3)
    frame = torch.zeros(1, 2, 2, 3)
    frame[0, 0, 0] = torch.tensor([1.0, 0.0, 0.0])  # a red pixel on black: foreground
    frame[0, 1, 1] = 0.02  # a faint difference: mostly background
    weight = objective_module.pixel_weights(frame, background, 8.0)[0, ..., 0]
    assert weight[0, 0] == 9.0 and weight[0, 1] == 1.0 and weight[1, 1] == pytest.approx(1.0 + 8.0 * 0.2)
    assert torch.equal(objective_module.pixel_weights(frame, background, 0.0), torch.ones(1, 2, 2, 1))
    # the weighted error is normalised by the weights: a uniform error stays itself
    uniform = objective_module.weighted_mse(
        frame + 0.1, frame, objective_module.pixel_weights(frame, background, 8.0)
    )
    assert uniform == pytest.approx(0.01)
    frames = np.zeros((5, 2, 2, 3), np.uint8)
    frames[:2, 0, 0] = 255  # something passing through two of five frames is not background
    assert float(background_frame(frames).max()) == 0.0


def test_a_run_whose_dynamics_only_copy_is_warned():
    assert objective_module.copying_warning({"teacher_latent": 0.0013, "copy_latent": 0.0013}) is not None
    assert objective_module.copying_warning({"teacher_latent": 0.012, "copy_latent": 0.042}) is None
    nothing_moves = {"teacher_latent": 0.0, "copy_latent": 0.0}
    assert objective_module.copying_warning(nothing_moves) is None
    assert objective_module.copying_warning({}) is None  # no validation windows
