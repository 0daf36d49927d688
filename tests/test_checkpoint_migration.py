"""Checkpoints of older schema versions (wm_sim.checkpoint_migration), through load_checkpoint:
what each version changed is read as this version writes it, and nothing else changes."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import BARE_MODEL

from wm_sim.checkpoint import LAST, META, WEIGHTS, load_checkpoint, resolve_checkpoint, save_checkpoint
from wm_sim.checkpoint_migration import CHECKPOINT_SCHEMA_VERSION
from wm_sim.errors import WmSimError
from wm_sim.world_model import WorldModel, WorldModelConfig

TINY = WorldModelConfig(
    image_size=32,
    grid=4,
    latent_dim=8,
    tokenizer_width=32,
    dim=32,
    depth=1,
    n_heads=2,
    window=2,
    **BARE_MODEL,
)
DATA_META = {"dataset": {"task": "reacher", "fps": 50.0, "image_size": 32}, "step": 3}


def test_a_schema_1_checkpoint_loads_without_its_old_scene_reward_and_keeps_every_other_weight(tmp_path):
    torch.manual_seed(0)
    config = WorldModelConfig(**{**TINY.to_dict(), "transition": True, "scene_reward": True})
    save_checkpoint(tmp_path, "step-000003", WorldModel(config), DATA_META)
    directory = tmp_path / LAST
    # what version 1 wrote: its scene reward an MLP over keypoints (other names, other shapes)
    tensors = {
        k: v for k, v in load_file(str(directory / WEIGHTS)).items() if not k.startswith("scene_reward.")
    }
    kept = dict(tensors)
    tensors |= {"scene_reward.net.0.weight": torch.zeros(256, 40), "scene_reward.low": torch.tensor(-1.0)}
    save_file(tensors, str(directory / WEIGHTS))
    meta = json.loads((directory / META).read_text())
    (directory / META).write_text(json.dumps({**meta, "schema_version": 1}))
    with pytest.warns(UserWarning, match="scene reward is of the old form"):
        model, loaded_meta = load_checkpoint(directory)
    assert model.scene_reward is None and model.transition is not None
    assert (
        not loaded_meta["model"]["scene_reward"]
        and loaded_meta["schema_version"] == CHECKPOINT_SCHEMA_VERSION
    )
    for name, value in model.state_dict().items():
        assert torch.equal(value, kept[name]), name
    # a version-1 checkpoint without a scene reward is read as it was, without a word
    save_checkpoint(tmp_path / "plain", "step-000003", WorldModel(TINY), DATA_META)
    plain = tmp_path / "plain" / LAST
    (plain / META).write_text(json.dumps({**json.loads((plain / META).read_text()), "schema_version": 1}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(plain)


def test_a_checkpoint_from_before_the_parts_were_defaults_loads_without_the_parts_it_never_had(tmp_path):
    """Schema 2 and before: a part the metadata does not name did not exist when it was written,
    so it is off, whatever today's defaults (the shipped architecture, every part on)."""
    save_checkpoint(tmp_path, "step-000003", WorldModel(TINY), DATA_META)
    directory = tmp_path / LAST
    meta = json.loads((directory / META).read_text())
    old_model = {
        k: v for k, v in meta["model"].items() if k not in ("anchored", "frame_reward", "scene_reward")
    }
    (directory / META).write_text(json.dumps({**meta, "model": old_model, "schema_version": 2}))
    model, loaded = load_checkpoint(directory)
    assert not (model.config.anchored or model.config.frame_reward or model.config.scene_reward)
    assert loaded["schema_version"] == CHECKPOINT_SCHEMA_VERSION
    # a schema-3 (or later) checkpoint that omits a part gets today's default: on
    (directory / META).write_text(json.dumps({**meta, "model": {**old_model, "transition": False}}))
    with pytest.raises(WmSimError, match="weights do not match the model config"):
        load_checkpoint(directory)  # its weights have no anchored decoder, frame or scene reward


def _under_old_names(directory, schema_version: int = 3):
    """Rewrite a checkpoint as schemas 2 and 3 wrote it: the head count `heads`, the pooled
    output's weights `heads.weight` and `heads.bias` (now n_heads and step_out)."""
    tensors = load_file(str(directory / WEIGHTS))
    assert {"step_out.weight", "step_out.bias"} <= set(tensors) and not any(
        k.startswith("heads.") for k in tensors
    )
    old = {
        ("heads." + k.removeprefix("step_out.") if k.startswith("step_out.") else k): v
        for k, v in tensors.items()
    }
    save_file(old, str(directory / WEIGHTS))
    meta = json.loads((directory / META).read_text())
    assert meta["schema_version"] >= 4 and "heads" not in meta["model"]  # written under today's names
    model = {("heads" if k == "n_heads" else k): v for k, v in meta["model"].items() if k != "anchor_detail"}
    (directory / META).write_text(json.dumps({**meta, "model": model, "schema_version": schema_version}))


def test_a_schema_3_checkpoint_loads_under_the_new_names_and_equals_the_model_it_was_saved_from(tmp_path):
    torch.manual_seed(0)
    config = WorldModelConfig(**{**TINY.to_dict(), "transition": False, "frame_reward": False})
    model = WorldModel(config).eval()
    save_checkpoint(tmp_path, "step-000003", model, DATA_META)
    _under_old_names(tmp_path / LAST)
    loaded, meta = load_checkpoint(tmp_path / LAST)
    assert meta["schema_version"] == CHECKPOINT_SCHEMA_VERSION and meta["model"] == config.to_dict()
    assert loaded.config == config and loaded.config.n_heads == 2
    before, after = model.state_dict(), loaded.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    latents, state, action = torch.rand(2, 2, 16, 8) * 2 - 1, torch.randn(2, 2, 4), torch.rand(2, 2, 2)
    with torch.no_grad():
        want, got = model(latents, state, action), loaded.eval()(latents, state, action)
    assert all(
        torch.equal(getattr(got, k), getattr(want, k))
        for k in ("latents", "state", "reward", "continue_logit")
    )
    # saved again, it is written in the current version, under the new names
    save_checkpoint(tmp_path / "again", "step-000003", loaded, DATA_META)
    again = json.loads((tmp_path / "again" / LAST / META).read_text())
    assert again["schema_version"] == CHECKPOINT_SCHEMA_VERSION and again["model"]["n_heads"] == 2
    assert "step_out.weight" in load_file(str(tmp_path / "again" / LAST / WEIGHTS))


def test_a_schema_4_checkpoint_with_the_old_head_count_name_is_refused_naming_it(tmp_path):
    save_checkpoint(tmp_path, "step-000003", WorldModel(TINY), DATA_META)
    meta = json.loads((tmp_path / LAST / META).read_text())
    (tmp_path / LAST / META).write_text(json.dumps({**meta, "model": {**meta["model"], "heads": 2}}))
    with pytest.raises(WmSimError, match="unknown option 'heads'"):
        load_checkpoint(tmp_path / LAST)


def test_the_shipped_model_written_as_schema_2_loads_back_tensor_for_tensor(tmp_path):
    """The shipped model of 2026-12-03 was stored in schema 2 (`heads` count, `heads.*` weights)
    and is gone; today's shipped weights, rewritten as schema 2 wrote them, load under the new
    names (n_heads, step_out), tensor for tensor."""
    import shutil

    directory = resolve_checkpoint("shipped:reacher")
    model, _ = load_checkpoint("shipped:reacher")
    old = tmp_path / "schema2"
    shutil.copytree(directory, old)
    _under_old_names(old, schema_version=2)
    # schema 2 had no anchor detail: its decoder read the anchor's tokens only
    stored = {k: v for k, v in load_file(str(old / WEIGHTS)).items() if not k.startswith("decoder.detail.")}
    save_file(stored, str(old / WEIGHTS))
    migrated, migrated_meta = load_checkpoint(old)
    assert migrated_meta["schema_version"] == CHECKPOINT_SCHEMA_VERSION and migrated.config.n_heads == 4
    assert "heads" not in migrated_meta["model"] and not migrated.config.anchor_detail
    assert torch.equal(migrated.step_out.weight, stored["heads.weight"])
    state = migrated.state_dict()
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("decoder.detail.")}
    assert state.keys() == expected.keys() and len(state) == len(stored)
    assert all(torch.equal(v, expected[k]) for k, v in state.items())


# The decoder's inputs added since schema 4: the option, the version before it existed, and the
# value a checkpoint of that version had (today's default is the other).
DECODER_INPUTS = [("anchor_detail", 4, False), ("anchor_memory", 5, ()), ("decoder_state", 6, False)]


@pytest.mark.parametrize(("option", "version", "before"), DECODER_INPUTS)
def test_a_checkpoint_from_before_a_decoder_input_existed_loads_without_it(tmp_path, option, version, before):
    """Written before the option existed, an anchored decoder did not read that input; today's
    default (it does) does not apply to it, and it decodes as it did."""
    older = {"anchored": True, "anchor_detail": True, "anchor_memory": (), "decoder_state": False}
    config = WorldModelConfig(**{**TINY.to_dict(), **older, option: before})
    model = WorldModel(config).eval()
    save_checkpoint(tmp_path, "step-000003", model, DATA_META)
    directory = tmp_path / LAST
    meta = json.loads((directory / META).read_text())
    old_model = {k: v for k, v in meta["model"].items() if k != option}
    (directory / META).write_text(json.dumps({**meta, "model": old_model, "schema_version": version}))
    loaded, loaded_meta = load_checkpoint(directory)
    assert loaded.config == config and loaded_meta["model"][option] == (list(before) if option == "anchor_memory" else before)
    context = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        want = model.decode(model.encode(context[:, 0]), model.anchor(context[:, -1]))
        got = loaded.decode(loaded.encode(context[:, 0]), loaded.anchor(context[:, -1], context=context))
    assert torch.equal(got, want)
    # written today without the option, the model has that input: these weights lack it
    (directory / META).write_text(json.dumps({**meta, "model": old_model}))
    with pytest.raises(WmSimError, match="weights do not match the model config"):
        load_checkpoint(directory)
