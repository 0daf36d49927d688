"""Checkpoints: atomic saves, exact reloads, loading that never executes what a file holds and
refuses damaged weights and metadata, and the run directory's lock and leftovers."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import BARE_MODEL

from wm_sim.checkpoint import (
    CONTEXTS,
    LAST,
    META,
    TRAIN_TENSORS,
    WEIGHTS,
    load_checkpoint,
    load_start_contexts,
    load_train_state,
    lock_run_directory,
    read_tensors,
    remove_partial_saves,
    resolve_checkpoint,
    save_checkpoint,
)
from wm_sim.errors import WmSimError
from wm_sim.world_model import WorldModel, WorldModelConfig

TINY = WorldModelConfig(
    image_size=32, grid=4, latent_dim=8, tokenizer_width=32, dim=32, depth=1, n_heads=2, window=2, **BARE_MODEL
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


# --- damaged weights and metadata ----------------------------------------------------------------


def _poison(file, name: str, value: float) -> None:
    tensors = load_file(str(file))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[1] = value
    save_file(tensors, str(file))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_first_bad_tensor(saved, value):
    run_dir, model = saved
    names = [k for k, v in model.state_dict().items() if v.is_floating_point() and v.numel() > 1]
    _poison(run_dir / LAST / WEIGHTS, names[5], value)
    with pytest.raises(WmSimError, match=rf"tensor '{names[5]}' holds 1 non-finite value"):
        load_checkpoint(run_dir / LAST)


def test_non_finite_training_state_is_refused(tmp_path):
    model = WorldModel(TINY)
    state = {"exp_avg": torch.ones(3), "torch_rng": torch.get_rng_state()}
    save_checkpoint(tmp_path, "step-000001", model, DATA_META, train_tensors=state, train_meta={"step": 1})
    _poison(tmp_path / LAST / TRAIN_TENSORS, "exp_avg", float("nan"))
    with pytest.raises(WmSimError, match="tensor 'exp_avg' holds 1 non-finite value"):
        load_train_state(tmp_path)


def test_reward_bounds_a_model_starts_with_unset_may_stay_infinite_but_never_nan(tmp_path):
    # an unfitted frame-reward head keeps its -inf/+inf bounds: a real state, not damage
    model = WorldModel(WorldModelConfig(**{**TINY.to_dict(), "frame_reward": True}))
    assert torch.isinf(model.reward_head.low)
    save_checkpoint(tmp_path, "step-000003", model, DATA_META)
    loaded, _ = load_checkpoint(tmp_path)
    assert torch.isinf(loaded.reward_head.low) and torch.isinf(loaded.reward_head.high)
    tensors = load_file(str(tmp_path / LAST / WEIGHTS))
    tensors["reward_head.low"] = torch.tensor(float("nan"))
    save_file(tensors, str(tmp_path / LAST / WEIGHTS))
    with pytest.raises(WmSimError, match=r"reward_head\.low"):
        load_checkpoint(tmp_path)


def test_a_policy_of_nan_weights_is_refused(tmp_path):
    from wm_sim.policies.saved import POLICY_TENSORS, load_policy, resolve_policy

    policy = tmp_path / "policy"
    shutil.copytree(resolve_policy("shipped:reacher"), policy)
    name = sorted(k for k, v in load_file(str(policy / POLICY_TENSORS)).items() if v.numel() > 1)[0]
    _poison(policy / POLICY_TENSORS, name, float("nan"))
    with pytest.raises(WmSimError, match=rf"tensor '{name}' holds 1 non-finite value"):
        load_policy(policy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["model"].update(depth=-1), "model.depth must be a positive integer, got -1"),
        (lambda m: m["model"].update(latent_dim=0), "model.latent_dim must be a positive integer, got 0"),
        (lambda m: m["model"].update(n_heads="2"), 'model.n_heads must be a positive integer, got "2"'),
        (lambda m: m["model"].update(window=2.5), "model.window must be a positive integer, got 2.5"),
        (lambda m: m["model"].update(anchored="yes"), 'model.anchored must be true or false, got "yes"'),
        (lambda m: m["model"].update(periodic_state=[-1]), "model.periodic_state must be a list of"),
        (lambda m: m["model"].update(colour=3), "unknown option 'colour'"),
        (lambda m: m.update(model=[1]), "model must be an object"),
        (lambda m: m.update(dataset="reacher"), 'dataset must be an object, got "reacher"'),
        (lambda m: m.update(train=None), "train must be an object, got nothing"),
        (lambda m: m.update(step=-1), "step must be a non-negative integer, got -1"),
        (lambda m: m["dataset"].update(task=3), "dataset.task must be a string, got 3"),
        (lambda m: m["dataset"].update(fps=0), "dataset.fps must be a positive number, got 0"),
        (
            lambda m: m["dataset"].update(episode_steps=-5),
            "dataset.episode_steps must be a positive integer or null",
        ),
        (lambda m: m["dataset"].update(state_names="q"), "dataset.state_names must be a list of 4 strings"),
        (lambda m: m["dataset"].update(action_low=[0]), "dataset.action_low must be a list of 2 numbers"),
    ],
)
def test_metadata_of_the_wrong_shape_or_type_is_one_error_naming_the_key(saved, edit, message):
    run_dir, _ = saved
    meta_file = run_dir / LAST / META
    meta = json.loads(meta_file.read_text())
    edit(meta)
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(WmSimError, match=re.escape(message)):
        load_checkpoint(run_dir / LAST)


def test_start_contexts_of_another_image_size_are_refused(saved):
    run_dir, _ = saved
    checkpoint = run_dir / LAST
    contexts = {
        "frames": torch.zeros(2, 3, 16, 16, 3, dtype=torch.uint8),  # the model's frames are 32x32
        "state": torch.zeros(2, 3, 4),
        "action": torch.zeros(2, 3, 2),
    }
    save_file(contexts, str(checkpoint / CONTEXTS))
    with pytest.raises(WmSimError, match=re.escape("frames are uint8 of shape (2, 3, 16, 16, 3)")):
        load_start_contexts(checkpoint)
    contexts["frames"] = torch.zeros(2, 3, 32, 32, 3, dtype=torch.uint8)
    save_file(contexts, str(checkpoint / CONTEXTS))
    assert load_start_contexts(checkpoint)["frames"].shape == (2, 3, 32, 32, 3)
    contexts["action"] = torch.zeros(2, 3, 5)
    save_file(contexts, str(checkpoint / CONTEXTS))
    with pytest.raises(WmSimError, match=re.escape("action are float32 of shape (2, 3, 5)")):
        load_start_contexts(checkpoint)


# --- the run directory's lock and what killed saves leave ----------------------------------------


def _listing(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_a_run_directory_has_one_writer_at_a_time(saved):
    run_dir, _ = saved
    before = _listing(run_dir)
    with lock_run_directory(run_dir):
        with pytest.raises(WmSimError, match="being written by another process"):
            lock_run_directory(run_dir)
        assert _listing(run_dir) == before
    with lock_run_directory(run_dir) as again:  # released: the next run takes it
        again.release()  # releasing twice is harmless
    assert _listing(run_dir) == before


def test_the_lock_is_held_against_other_processes(saved):
    run_dir, _ = saved
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys; from wm_sim.checkpoint import lock_run_directory; "
            f"lock = lock_run_directory({str(run_dir)!r}); print('locked', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WmSimError, match="being written by another process"):
            lock_run_directory(run_dir)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    lock_run_directory(run_dir).release()  # a dead holder's lock is gone with it


def test_a_lock_that_created_the_run_directory_removes_it_if_nothing_was_written(tmp_path):
    with lock_run_directory(tmp_path / "runs" / "new"):
        assert (tmp_path / "runs" / "new").is_dir()
    assert not (tmp_path / "runs" / "new").exists()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(WmSimError, match="cannot be created"):
        lock_run_directory(tmp_path / "a-file" / "run")


def test_taking_the_lock_removes_what_killed_saves_left_and_nothing_else(saved):
    run_dir, _ = saved
    staging = run_dir / f".step-0000009.{uuid.uuid4().hex}.partial"
    staging.mkdir()
    (staging / WEIGHTS).write_bytes(b"half")
    pending = run_dir / f".last.{uuid.uuid4().hex}"
    os.symlink("step-0000009", pending)
    (run_dir / ".notes").write_text("keep")
    (run_dir / "media").mkdir()
    kept = _listing(run_dir)
    kept = [p for p in kept if not p.startswith((staging.name, pending.name))]
    with lock_run_directory(run_dir):
        assert _listing(run_dir) == kept
    assert os.readlink(run_dir / LAST) == "step-000003"
    assert remove_partial_saves(run_dir) == []


def test_a_save_killed_mid_write_leaves_a_partial_that_the_next_start_removes(saved):
    run_dir, _ = saved
    script = textwrap.dedent(
        f"""
        import os, signal
        from wm_sim.checkpoint import commit_directory

        def write(staging):
            (staging / "model.safetensors").write_bytes(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)

        commit_directory({str(run_dir)!r}, "step-000006", write, "meta.json")
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p for p in run_dir.iterdir() if p.name.endswith(".partial")]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".step-000006.")
    with lock_run_directory(run_dir):
        assert not [p for p in run_dir.iterdir() if p.name.endswith(".partial")]
    _, meta = load_checkpoint(run_dir)  # the last whole checkpoint is untouched
    assert meta["step"] == 3


def test_loaded_tensors_own_their_memory_and_do_not_follow_the_file(tmp_path):
    """read_tensors copies what it reads. A mapped file would be read a page at a time as tensors
    are touched (resident memory creeping up reset by reset as an env touches more of its start
    contexts) and would change, or fault, when the file is rewritten under the process."""
    file = tmp_path / "contexts.safetensors"
    frames = torch.arange(4 * 2**20, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(64, -1)
    save_file({"frames": frames}, str(file))
    loaded = read_tensors(file)["frames"]
    data = bytearray(file.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header:] = bytes(len(data) - header)  # the tensor's bytes zeroed, in place, same size
    with open(file, "r+b") as f:
        f.write(data)
    assert torch.equal(loaded, frames)
