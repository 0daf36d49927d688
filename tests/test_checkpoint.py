"""Checkpoints: atomic saves, exact reloads, and loading that never executes what a file holds."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from wm_sim.checkpoint import LAST, META, WEIGHTS, load_checkpoint, resolve_checkpoint, save_checkpoint
from wm_sim.errors import WmSimError
from wm_sim.world_model import WorldModel, WorldModelConfig

TINY = WorldModelConfig(
    image_size=32, grid=4, latent_dim=8, tokenizer_width=32, dim=32, depth=1, heads=2, window=2
)
DATA_META = {"dataset": {"task": "reacher", "fps": 50.0, "image_size": 32}, "step": 3}


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = WorldModel(TINY)
    model.state_std.fill_(2.5)
    save_checkpoint(tmp_path, "step-000003", model, DATA_META)
    return tmp_path, model


def test_reload_gives_identical_weights_and_metadata(saved):
    run_dir, model = saved
    loaded, meta = load_checkpoint(run_dir / LAST)
    assert meta["dataset"]["task"] == "reacher" and meta["step"] == 3 and meta["model"] == TINY.to_dict()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert resolve_checkpoint(run_dir) == (run_dir / "step-000003").resolve()  # a run dir means its last


def test_last_moves_only_to_whole_checkpoints_and_nothing_is_overwritten(saved):
    run_dir, model = saved
    save_checkpoint(run_dir, "step-000006", model, {**DATA_META, "step": 6})
    assert os.readlink(run_dir / LAST) == "step-000006"
    with pytest.raises(WmSimError, match="already exists"):
        save_checkpoint(run_dir, "step-000006", model, DATA_META)
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".partial")]


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_payload_is_never_executed(saved):
    run_dir, _ = saved
    marker = run_dir / "pwned"
    payload = _Payload()
    payload.marker = marker
    (run_dir / LAST / WEIGHTS).write_bytes(pickle.dumps({"weights": payload}))
    with pytest.raises(WmSimError, match="not a valid safetensors file"):
        load_checkpoint(run_dir / LAST)
    assert not marker.exists()


def test_truncated_weights_are_one_clear_error(saved):
    run_dir, _ = saved
    weights = run_dir / LAST / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(WmSimError, match=str(weights.name)):
        load_checkpoint(run_dir / LAST)


def test_weights_of_another_config_are_refused(saved):
    run_dir, _ = saved
    meta_file = run_dir / LAST / META
    meta = json.loads(meta_file.read_text())
    meta["model"]["dim"] = 64
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(WmSimError, match="do not match the model config"):
        load_checkpoint(run_dir / LAST)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: {**m, "schema_version": 99}, "schema version 99"),
        (lambda m: {**m, "model": {**m["model"], "grid": 3}}, "invalid model config"),
        (lambda m: {k: v for k, v in m.items() if k != "model"}, "invalid model config"),
    ],
)
def test_bad_metadata_is_one_clear_error(saved, edit, message):
    run_dir, _ = saved
    meta_file = run_dir / LAST / META
    meta_file.write_text(json.dumps(edit(json.loads(meta_file.read_text()))))
    with pytest.raises(WmSimError, match=message):
        load_checkpoint(run_dir / LAST)


def test_missing_and_unknown_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(WmSimError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    with pytest.raises(WmSimError, match="not a checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(WmSimError, match="no shipped checkpoint 'nope'"):
        load_checkpoint("shipped:nope")
