"""`init=` upgrades (wm_sim.model_upgrade): a run starts from another checkpoint's weights, adding
the parts it asks for so that the model first predicts what the old one did."""

from __future__ import annotations

import pytest
import torch
from tiny import fine_tuned, random_inputs, run_config, tiny_architecture

from wm_sim.checkpoint import load_checkpoint
from wm_sim.errors import WmSimError
from wm_sim.train import ModelArchitecture, train

TINY = tiny_architecture()


def test_init_starts_from_another_checkpoints_weights(reacher_store_path, tmp_path):
    first = train(run_config(reacher_store_path, tmp_path / "first", steps=2))
    # With zero learning rates the fine-tuned weights must be exactly the ones it started from.
    tuned = train(
        run_config(reacher_store_path, tmp_path / "tuned", steps=2, lr=0.0, tokenizer_lr=0.0, init=str(first))
    )
    before, _ = load_checkpoint(first)
    after, meta = load_checkpoint(tuned)
    assert meta["train"]["init"] == str(first)
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    bigger = ModelArchitecture(**{**TINY.__dict__, "dim": 64})
    with pytest.raises(WmSimError, match=r"cannot start from .*differs"):
        train(run_config(reacher_store_path, tmp_path / "other", model=bigger, init=str(first)))
    assert not (tmp_path / "other").exists()


def test_init_turns_an_absolute_model_into_a_residual_one_that_starts_as_copy_last(
    reacher_store_path, tmp_path
):
    absolute = ModelArchitecture(**{**TINY.__dict__, "residual": False})
    first = train(run_config(reacher_store_path, tmp_path / "abs", model=absolute, steps=2))
    tuned = train(
        run_config(reacher_store_path, tmp_path / "res", steps=2, lr=0.0, tokenizer_lr=0.0, init=str(first))
    )
    before, _ = load_checkpoint(first)
    after, _ = load_checkpoint(tuned)
    assert not before.config.residual and after.config.residual
    assert not after.latent_out.weight.any() and not after.latent_out.bias.any()
    assert torch.equal(before.encoder.net[1].weight, after.encoder.net[1].weight)


def test_init_never_turns_a_residual_model_into_an_absolute_one(reacher_store_path, tmp_path):
    first = train(run_config(reacher_store_path, tmp_path / "res", steps=2))
    absolute = ModelArchitecture(**{**TINY.__dict__, "residual": False})
    with pytest.raises(WmSimError, match=r"residual \(saved True, this run False"):
        train(run_config(reacher_store_path, tmp_path / "abs", model=absolute, init=str(first)))


def test_an_added_transition_starts_unread_by_the_transformer(reacher_store_path, tmp_path):
    with_transition = ModelArchitecture(**{**TINY.__dict__, "transition": True})
    before, after = fine_tuned(reacher_store_path, tmp_path, with_transition, transition_steps=5)
    assert not after.next_state_in.weight.any() and not after.next_state_in.bias.any()
    latents, state, action = random_inputs(4)
    with torch.no_grad():
        old, new = before(latents, state, action), after(latents, state, action)
    torch.testing.assert_close(new.latents, old.latents)
    torch.testing.assert_close(new.reward, old.reward)
