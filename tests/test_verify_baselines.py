"""Honest scores: verify's table of every policy against random and standing still, timed per
action, and behaviour cloning as a baseline trained on the same dataset."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import replace

import numpy as np
import pytest
from wm_sim.policies.catalog import Setting, make_policy

from wm_sim.checkpoint import load_checkpoint
from wm_sim.data.schema import ACTION_KEY, STATE_KEY, image_key
from wm_sim.data.store import EpisodeStore
from wm_sim.data.windows import split_episodes
from wm_sim.errors import WmSimError
from wm_sim.tracking import WandbConfig
from wm_sim.train_policy import TrainPolicyConfig, train_policy
from wm_sim.verify import VerifyConfig, verify

VAL_FRACTION = 0.5  # the tiny model's (conftest): of 4 episodes, 1 and 3 are held out


@pytest.fixture(scope="module")
def learnable_store(reacher_store_path, tmp_path_factory):
    """The 4 recorded episodes with each action replaced by 0.8 sin(joint angles).

    Two training episodes of the mixed policy say nothing about the goals of two others (BC on
    them overfits), so the test that cloning generalises clones a known function of what the
    policy sees: its held-out error must fall well below an untrained actor's.
    """
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


@pytest.fixture(scope="module")
def bc_run(tiny_model_path, learnable_store, tmp_path_factory):
    """Behaviour cloning on the tiny model's eyes and the 4-episode store: a second or two."""
    out = tmp_path_factory.mktemp("bc") / "run"
    cfg = TrainPolicyConfig(
        algo="bc", checkpoint=str(tiny_model_path), data=str(learnable_store), out=str(out), steps=300,
        batch=64, lr=1e-3, threads=1, wandb=WandbConfig(mode="disabled"),
    )  # fmt: skip
    return train_policy(cfg), cfg


def test_behaviour_cloning_beats_an_untrained_actor_on_held_out_episodes(bc_run):
    run, _ = bc_run
    meta = json.loads((run / "last" / "policy.json").read_text())
    metrics = meta["metrics"]
    assert meta["kind"] == "actor_critic" and meta["train"]["algo"] == "bc"
    assert meta["train"]["val_fraction"] == VAL_FRACTION  # the world model's own split
    assert metrics["bc/val_episodes"] == 2 and metrics["bc/val_pairs"] == metrics["bc/train_pairs"]
    assert metrics["bc/val_mse"] < 0.5 * metrics["bc/val_mse_untrained"]


def test_behaviour_cloning_loads_and_acts_from_pixels_and_proprioception(bc_run, learnable_store):
    """The saved policy, fed the held-out episodes' frames and agent_pos, misses the recorded actions
    by exactly the validation MSE reported: it acts as it was trained, on episodes it never saw."""
    run, _ = bc_run
    store = EpisodeStore.open(learnable_store)
    held_out = [
        store.episode(e, [image_key(store.info.cameras[0]), STATE_KEY, ACTION_KEY])
        for e in split_episodes(store.num_episodes, "val", VAL_FRACTION)
    ]
    store.close()
    pixels = np.concatenate([e[image_key("top")] for e in held_out])
    agent_pos = np.concatenate([e[STATE_KEY] for e in held_out])
    recorded = np.concatenate([e[ACTION_KEY] for e in held_out])
    setting = Setting(task="reacher", num_envs=len(pixels), action_dim=2, image_size=64, state_dim=4)
    policy = make_policy(str(run), setting)
    actions = policy.act({"pixels": pixels, "agent_pos": agent_pos})
    metrics = json.loads((run / "last" / "policy.json").read_text())["metrics"]
    assert actions.shape == recorded.shape and actions.dtype == np.float32
    assert np.mean((actions - recorded) ** 2) == pytest.approx(metrics["bc/val_mse"], rel=1e-4)


def test_behaviour_cloning_never_trains_on_held_out_episodes(tiny_model_path, reacher_store_path):
    from wm_sim.policies.actor_critic import ObservationEncoder

    from wm_sim.behaviour_cloning import encode_pairs

    model, _ = load_checkpoint(tiny_model_path)
    pairs = encode_pairs(ObservationEncoder.from_world_model(model), str(reacher_store_path), VAL_FRACTION)
    store = EpisodeStore.open(reacher_store_path)
    val = {r for e in (1, 3) for r in range(*store.episode_bounds(e))}
    store.close()
    assert set(pairs.val_rows.tolist()) == val and pairs.val_episodes == [1, 3]
    assert not set(pairs.train_rows.tolist()) & val
    assert len(pairs.train_rows) + len(pairs.val_rows) == len(pairs.features)


def test_behaviour_cloning_refuses_a_used_run_directory_and_resume(bc_run):
    run, cfg = bc_run
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(WmSimError, match="already holds a run"):
        train_policy(cfg)
    with pytest.raises(WmSimError, match="does not resume"):
        train_policy(replace(cfg, resume="auto"))
    with pytest.raises(WmSimError, match="lr must be a positive"):
        train_policy(replace(cfg, lr=float("nan")))
    assert sorted(p.name for p in run.iterdir()) == before


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


@pytest.mark.slow
def test_verify_scores_every_policy_against_random_and_zero(bc_run, tiny_model_path, tmp_path):
    """zero is the policy under test (in imagination too, needing no physics), and a reference;
    a baseline given twice, or already a reference, is run and listed once."""
    run, _ = bc_run
    out = tmp_path / "verify"
    report = verify(
        VerifyConfig(
            policy="zero", checkpoint=str(tiny_model_path), episodes=3, batch=2, out=str(out), threads=1,
            baselines=[str(run), "random", str(run)], videos=False,
        )
    )  # fmt: skip
    table = report["policies"]
    assert {name: row["role"] for name, row in table.items()} == {
        "zero": "policy", "random": "reference", "expert": "reference", str(run): "baseline",
    }  # fmt: skip
    r = {name: row["mean_true_return"] for name, row in table.items()}
    for name, row in table.items():
        assert row["score_vs_random"] == pytest.approx((r[name] - r["random"]) / (r["expert"] - r["random"]))
        assert row["score_vs_zero"] == pytest.approx((r[name] - r["zero"]) / (r["expert"] - r["zero"]))
        # 3 episodes side by side in twos: 200 calls of 2 rows, then 200 of 1
        assert row["rows_per_call"] == pytest.approx(1.5)
        assert row["seconds_per_action"] == pytest.approx(row["seconds_per_act_call"] / 1.5)
    assert table["expert"]["success_rate"] == 1.0 and table["expert"]["score_vs_zero"] == pytest.approx(1.0)
    assert table[str(run)]["seconds_per_action"] > table["zero"]["seconds_per_action"]  # it encodes pixels
    assert report["score_vs_zero"] == table["zero"]["score_vs_zero"] == 0.0
    assert report["normalized_score"] == pytest.approx(table["zero"]["score_vs_random"])
    assert report["mean_true_return"]["zero"] == report["mean_true_return"]["policy"] == r["zero"]
    assert json.loads((out / "verify.json").read_text())["policies"] == table


def test_verify_refuses_a_bad_baseline_before_running_anything(tiny_model_path, tmp_path):
    out = tmp_path / "verify"
    with pytest.raises(WmSimError, match="not a saved policy"):
        verify(
            VerifyConfig(
                policy="zero", checkpoint=str(tiny_model_path), episodes=1, out=str(out),
                baselines=[str(tmp_path / "missing")], videos=False,
            )
        )  # fmt: skip
    assert not out.exists()
