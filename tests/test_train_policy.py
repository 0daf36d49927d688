"""`wm-sim train-policy` (wm_sim.train_policy): lambda returns, imagination from encoded frames,
checkpoints and resume, run-directory locks, and refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import replace

import numpy as np
import pytest
import torch
from wm_sim.policies.actor_critic import ActorCritic, feature_dim
from wm_sim.policies.saved import load_policy

from wm_sim.checkpoint import load_checkpoint
from wm_sim.errors import WmSimError
from wm_sim.tracking import WandbConfig
from wm_sim.train_policy import TrainPolicyConfig, lambda_returns, train_policy


def test_lambda_returns_match_their_definition():
    rewards = torch.tensor([[1.0], [2.0]])
    values = torch.tensor([[0.5], [0.25], [4.0]])
    continues = torch.ones(2, 1)
    g, lam = 0.9, 0.5
    last = 2.0 + g * 4.0
    first = 1.0 + g * ((1 - lam) * 0.25 + lam * last)
    np.testing.assert_allclose(
        lambda_returns(rewards, values, continues, g, lam)[:, 0], [first, last], rtol=1e-6
    )


def test_train_policy_checkpoints_and_resumes(policy_run):
    run, cfg = policy_run
    assert sorted(p.name for p in run.glob("step-*")) == ["step-0000001", "step-0000002"]
    meta = json.loads((run / "last" / "policy.json").read_text())
    assert meta["step"] == 2 and "verify/reward_gap" in meta["metrics"]  # replayed in MuJoCo
    assert "verify/deployed_reward_gap" in meta["metrics"]  # and the mean-action policy, longer
    assert np.isfinite(meta["metrics"]["verify/true_reward"])
    with pytest.raises(WmSimError, match="already holds a run"):
        train_policy(cfg)
    from dataclasses import replace

    train_policy(replace(cfg, steps=3, resume="auto"))
    assert json.loads((run / "last" / "policy.json").read_text())["step"] == 3
    before = load_policy(run / "step-0000002")[0].net.state_dict()
    after = load_policy(run)[0].net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the third update learned


def test_train_policy_refuses_bad_options(tiny_model_path, tmp_path):
    base = TrainPolicyConfig(
        checkpoint=str(tiny_model_path), out=str(tmp_path / "run"), wandb=WandbConfig(mode="disabled")
    )
    from dataclasses import replace

    with pytest.raises(WmSimError, match=r"unknown algo 'dreamer'; expected one of: actor_critic, bc"):
        train_policy(replace(base, algo="dreamer"))
    assert not tmp_path.joinpath("run").exists()  # refused before anything is written
    with pytest.raises(WmSimError, match="horizon must be at least 1"):
        train_policy(replace(base, horizon=0))
    with pytest.raises(WmSimError, match="simulates 'reacher'"):
        train_policy(replace(base, task="pusher"))
    with pytest.raises(WmSimError, match="no dataset at"):
        train_policy(replace(base, data=str(tmp_path / "missing.zarr")))


def test_start_states_are_the_encoded_frames_and_mark_episode_starts(tiny_model_path, reacher_store_path):
    from wm_sim.data.schema import image_key
    from wm_sim.data.store import EpisodeStore
    from wm_sim.train_policy import encode_dataset

    model, _ = load_checkpoint(tiny_model_path)
    states = encode_dataset(model, str(reacher_store_path), context=3, early_steps=10)
    store = EpisodeStore.open(reacher_store_path)
    firsts = {store.episode_bounds(e)[0] for e in range(store.num_episodes)}
    assert len(states.early) == store.num_episodes * (10 - 2) and set(states.early) <= set(states.starts)
    assert all(row - 2 in firsts for row in states.early[:: 10 - 2])  # each episode's first start: its row 2
    frame = torch.from_numpy(store.read(image_key(store.info.cameras[0]), 5, 6))
    with torch.no_grad():
        np.testing.assert_allclose(states.latents[5].float(), model.encode(frame)[0], atol=1e-3)


def test_imagined_rollouts_read_the_frame_shown_for_the_policy_and_a_frame_reward(reacher_store_path):
    """The policy acts on, and a frame-reward model's reward is read off, the encoder's latents of
    each imagined frame as decoded over the start frame: what a camera would give."""
    from wm_sim.train_policy import encode_dataset, imagine
    from wm_sim.world_model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    config = WorldModelConfig(
        grid=4, latent_dim=8, tokenizer_width=32, dim=32, depth=1, n_heads=2, window=3, residual=True,
        anchored=True, frame_reward=True, transition=False, scene_reward=False,
    )  # fmt: skip
    model = WorldModel(config).eval().requires_grad_(False)
    states = encode_dataset(model, str(reacher_store_path), context=2)
    assert states.pixels is not None and states.pixels.shape[1:] == (64, 64, 3)
    net = ActorCritic(feature_dim(config), config.action_dim)
    rows = states.starts[:3]
    batch = imagine(model, net, states, rows, horizon=3, context=2, device="cpu")
    n = config.tokens * config.latent_dim
    anchor = model.anchor(states.pixels[torch.from_numpy(rows)])
    for t in range(2):
        seen = batch.features[t + 1, :, :n].view(-1, config.tokens, config.latent_dim)
        applied = batch.actions[t].clamp(-1.0, 1.0)
        torch.testing.assert_close(batch.rewards[t], model.reward_head.read(seen, applied))
    # the first imagined frame, replayed by hand: decoded over the start frame, then encoded
    cache = model.new_stream(3)
    index = torch.from_numpy(rows)
    model.stream_step(
        cache, states.latents[index - 1].float(), states.norm_state[index - 1], states.actions[index - 1]
    )
    first = model.stream_step(
        cache, states.latents[index].float(), states.norm_state[index], batch.actions[0].clamp(-1.0, 1.0)
    )
    _, seen = model.decode_and_reencode(first.latents[:, 0], anchor, first.state[:, 0])
    torch.testing.assert_close(batch.features[1, :, :n], seen.flatten(1))


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["bc", "actor_critic", "latent_actor"])
def test_a_policy_run_directory_another_process_writes_is_refused_and_leftovers_cleared(
    algo, bc_run, tmp_path
):
    """Every algo takes its run directory's lock before anything else (as `wm-sim train` does), so
    two trainings into one out= cannot interleave; the next start removes a killed save's folder."""
    _, cfg = bc_run
    out = tmp_path / "policy"
    held = subprocess.Popen(
        [sys.executable, "-c", "import sys; from wm_sim.checkpoint import lock_run_directory; "
         f"lock = lock_run_directory({str(out)!r}); print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert held.stdout.readline().strip() == "locked"
        staging = out / f".step-0000300.{uuid.uuid4().hex}.partial"
        staging.mkdir()
        with pytest.raises(WmSimError, match="being written by another process"):
            train_policy(replace(cfg, algo=algo, out=str(out)))
        assert staging.is_dir()  # a live writer's staging folder is never touched
    finally:
        held.communicate("")
    train_policy(replace(cfg, out=str(out), steps=5))  # the holder is gone: the next run starts
    assert not staging.exists() and (out / "last").exists()
