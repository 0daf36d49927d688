"""Policies: the interface, save/load, imagination training, the planner, verify and rank on a tiny model."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from wm_sim.policies.actor_critic import ActorCritic, ActorCriticPolicy, ObservationEncoder, feature_dim
from wm_sim.policies.catalog import Setting, check_fits, make_policy
from wm_sim.policies.saved import load_policy, save_policy

from wm_sim.checkpoint import load_checkpoint
from wm_sim.errors import WmSimError
from wm_sim.rank import RankConfig, average_ranks, mmrv, rank, spearman
from wm_sim.tracking import WandbConfig
from wm_sim.train_policy import TrainPolicyConfig, lambda_returns, train_policy
from wm_sim.verify import VerifyConfig, verify


def _obs(rows: int, size: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "pixels": rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8),
        "agent_pos": rng.normal(size=(rows, 4)).astype(np.float32),
    }


@pytest.fixture(scope="module")
def fresh_policy(tiny_model_path) -> ActorCriticPolicy:
    model, _ = load_checkpoint(tiny_model_path)
    torch.manual_seed(0)
    net = ActorCritic(feature_dim(model.config), model.config.action_dim)
    torch.nn.init.normal_(net.actor[-1].weight, std=0.5)  # not the near-zero start: actions differ per input
    return ActorCriticPolicy(net, ObservationEncoder.from_world_model(model), num_envs=3)


@pytest.fixture(scope="module")
def policy_run(tiny_model_path, reacher_store_path, tmp_path_factory):
    """Two updates of imagination training on the tiny model, checkpointed at each."""
    out = tmp_path_factory.mktemp("policy") / "run"
    cfg = TrainPolicyConfig(
        checkpoint=str(tiny_model_path), data=str(reacher_store_path), out=str(out), steps=2, batch=8,
        horizon=3, context=2, checkpoint_every=1, verify_every=1, verify_rows=2, verify_horizon=5, threads=1,
        wandb=WandbConfig(mode="disabled"),
    )  # fmt: skip
    return train_policy(cfg), cfg


def test_actions_are_batched_bounded_and_survive_save_load(fresh_policy, tmp_path):
    obs = _obs(3)
    actions = fresh_policy.act(obs)
    assert actions.shape == (3, 2) and actions.dtype == np.float32
    assert np.all(np.abs(actions) <= 1.0)
    assert not np.allclose(actions[0], actions[1])  # each row acts on its own observation
    save_policy(tmp_path, "p", fresh_policy, {"task": "reacher"})
    loaded, meta = load_policy(tmp_path / "p", num_envs=3)
    assert meta["kind"] == "actor_critic" and meta["task"] == "reacher"
    np.testing.assert_array_equal(loaded.act(obs), actions)
    assert load_policy(tmp_path)[1]["kind"] == "actor_critic"  # a run directory resolves to `last`
    with pytest.raises(WmSimError, match="already exists"):
        save_policy(tmp_path, "p", fresh_policy, {})


def test_tampered_and_foreign_policy_files_are_clear_errors(fresh_policy, tmp_path):
    path = save_policy(tmp_path, "p", fresh_policy, {"task": "reacher"})
    weights = path / "policy.safetensors"
    weights.write_bytes(pickle.dumps({"boom": 1}))  # a pickle never loads, let alone runs
    with pytest.raises(WmSimError, match="not a valid safetensors"):
        load_policy(path)
    path = save_policy(tmp_path, "q", fresh_policy, {"task": "reacher"})
    meta = json.loads((path / "policy.json").read_text())
    (path / "policy.json").write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(WmSimError, match="schema version 99"):
        load_policy(path)
    (path / "policy.json").write_text(json.dumps({**meta, "params": {**meta["params"], "feature_dim": 7}}))
    with pytest.raises(WmSimError, match="do not match"):
        load_policy(path)
    with pytest.raises(WmSimError, match="not a saved policy"):
        load_policy(tmp_path / "nothing")
    with pytest.raises(WmSimError, match="no shipped policy"):
        load_policy("shipped:nonexistent")


def test_a_policy_for_other_spaces_names_both(fresh_policy, tmp_path):
    path = save_policy(tmp_path, "p", fresh_policy, {"task": "reacher"})
    meta = json.loads((path / "policy.json").read_text())
    pusher = Setting(task="pusher", num_envs=1, action_dim=7, image_size=64, state_dim=14)
    with pytest.raises(WmSimError, match=r"task 'reacher' with 2 actions.*task 'pusher' has 7 actions"):
        check_fits(str(path), meta, pusher)


def test_named_policies_and_their_bad_names():
    setting = Setting(
        task="reacher", num_envs=2, action_dim=2, image_size=64, state_dim=4, goals=np.zeros((2, 2))
    )
    expert = make_policy("expert", setting)
    noisy = make_policy("noisy_expert:0.5", setting)
    obs = {"pixels": np.zeros((2, 64, 64, 3), np.uint8), "agent_pos": np.ones((2, 4), np.float32)}
    assert not np.allclose(expert.act(obs), noisy.act(obs))
    with pytest.raises(WmSimError, match="noise scale"):
        make_policy("noisy_expert:loud", setting)
    with pytest.raises(WmSimError, match="unknown cem option"):
        make_policy("cem:depth=3", setting)
    pusher = Setting(task="pusher", num_envs=1, action_dim=7, image_size=64, state_dim=14)
    with pytest.raises(WmSimError, match="no expert that acts without the physics"):
        make_policy("expert", pusher)


def test_zero_stands_still_in_physics_and_in_imagination():
    from wm_sim.envs.catalog import make_task

    imagination = Setting(task="reacher", num_envs=3, action_dim=2, image_size=64, state_dim=4)
    assert imagination.tasks is None  # no physics to read: zero needs none
    actions = make_policy("zero", imagination).act(_obs(3))
    assert actions.shape == (3, 2) and actions.dtype == np.float32 and not actions.any()
    task = make_task("reacher")
    physics = Setting(task="reacher", num_envs=1, action_dim=2, image_size=64, state_dim=4, tasks=[task])
    policy = make_policy("zero", physics)
    task.reset(0)
    for _ in range(3):
        actions = policy.act({})
        assert actions.shape == (1, 2) and not actions.any()
        task.step(actions[0])
    task.close()


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


@pytest.mark.slow
def test_verify_reports_true_imagined_and_the_score(policy_run, tiny_model_path, tmp_path):
    run, _ = policy_run
    out = tmp_path / "verify"
    report = verify(
        VerifyConfig(
            policy=str(run), checkpoint=str(tiny_model_path), episodes=3, batch=2, out=str(out), threads=1
        )
    )
    means = report["mean_true_return"]
    assert set(means) == {"policy", "random", "zero", "expert"}
    expected = (means["policy"] - means["random"]) / (means["expert"] - means["random"])
    assert report["normalized_score"] == pytest.approx(expected)
    against_zero = (means["policy"] - means["zero"]) / (means["expert"] - means["zero"])
    assert report["score_vs_zero"] == pytest.approx(against_zero)
    assert report["policies"][str(run)]["score_vs_random"] == pytest.approx(expected)
    assert means["expert"] > means["random"]  # the anchors mean something on reacher
    episodes = report["per_episode"]
    assert len(episodes) == 3 and all(
        e["gap"] == pytest.approx(e["imagined_return"] - e["true_return"], abs=1e-3) for e in episodes
    )
    assert report["mean_true_return"]["policy"] == pytest.approx(
        np.mean([e["true_return"] for e in episodes]), abs=1e-3
    )
    for name in ("verify.json", "verify.png", "best.mp4", "worst.mp4"):
        assert (out / name).stat().st_size > 0
    with pytest.raises(WmSimError, match="exists"):
        verify(VerifyConfig(policy="random", checkpoint=str(tiny_model_path), episodes=1, out=str(out)))


def test_rank_statistics_on_known_orders():
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    # policies 0 and 1 swapped in imagination: each one's worst violation is |1 - 2| = 1
    assert mmrv(np.array([1.0, 2.0, 10.0]), np.array([2.0, 1.0, 10.0])) == pytest.approx(2 / 3)
    assert mmrv(np.array([1.0, 2.0, 10.0]), np.array([1.0, 2.0, 10.0])) == 0.0


@pytest.mark.slow
def test_rank_orders_a_tiny_population(tiny_model_path, tmp_path):
    report = rank(
        RankConfig(
            policies=["random", "noisy_expert:0.5", "expert"], checkpoint=str(tiny_model_path), episodes=2,
            batch=2, out=str(tmp_path / "rank"), threads=1,
        )
    )  # fmt: skip
    rows = {r["policy"]: r for r in report["policies"]}
    assert rows["expert"]["true_rank"] == 1 and rows["random"]["true_rank"] == 3  # MuJoCo's order
    assert -1 <= report["spearman"] <= 1 and report["mmrv"] >= 0
    assert (tmp_path / "rank" / "rank.png").stat().st_size > 0
    with pytest.raises(WmSimError, match="at least 3 distinct"):
        rank(RankConfig(policies=["random", "random", "expert"], checkpoint=str(tiny_model_path)))


def test_the_planner_plans_in_latent_space_and_beats_the_zero_sequence_it_starts_from(
    tiny_planning_model_path,
):
    import torch
    from wm_sim.policies.planner import CEMConfig, CEMPlanner

    config = CEMConfig.parse("horizon=5,population=64,elites=8,iterations=3")
    planner = CEMPlanner(str(tiny_planning_model_path), num_envs=2, config=config, seed=0)
    obs = _obs(2, seed=1)
    first = planner.act(obs)
    assert first.shape == (2, 2) and first.dtype == np.float32 and np.all(np.abs(first) <= 1)
    again = CEMPlanner(str(tiny_planning_model_path), num_envs=2, config=config, seed=0).act(obs)
    np.testing.assert_array_equal(first, again)  # seeded: the same search, the same plan
    # from a poor warm start (full throttle: a large control cost), the plan it finds and keeps
    # earns more imagined return than the one it started from
    planner = CEMPlanner(str(tiny_planning_model_path), num_envs=2, config=config, seed=0)
    start = torch.ones_like(planner._plan)
    planner._plan = start.clone()
    action = planner.act(obs)
    plan = torch.cat([torch.from_numpy(action)[:, None], planner._plan[:, :-1]], dim=1)  # (R, H, A)
    model = planner.model
    with torch.no_grad():
        scenes = model.goal(torch.from_numpy(obs["pixels"]))
        state = torch.from_numpy(obs["agent_pos"]).float()
        found, started = model.returns(scenes, state, plan), model.returns(scenes, state, start)
    assert torch.all(found > started), (found, started)
    planner.reset(np.array([True, False]))
    assert not planner._plan[0].any() and planner._plan[1].any()  # a reset forgets that row's plan


@pytest.mark.parametrize(
    "options, match",
    [
        ("population=4,elites=5", "cannot exceed"),
        ("horizon=0", "at least 1"),
        ("init_std=-1", "init_std"),
        ("context=2", "unknown cem option"),
    ],
)
def test_planner_options_out_of_range_are_one_clear_error(options, match):
    from wm_sim.policies.planner import CEMConfig

    with pytest.raises(WmSimError, match=match):
        CEMConfig.parse(options)


def test_the_planner_refuses_a_model_with_nothing_to_plan_with(tiny_model_path):
    from wm_sim.policies.planner import CEMPlanner

    with pytest.raises(WmSimError, match="no state transition and scene reward"):
        CEMPlanner(str(tiny_model_path))


def test_reset_to_starts_each_sub_env_from_its_own_context(tiny_model_path):
    from wm_sim.envs.world_model_env import WorldModelVectorEnv

    env = WorldModelVectorEnv(num_envs=2, checkpoint=str(tiny_model_path))
    obs = _obs(2)
    frames, state = obs["pixels"][:, None], obs["agent_pos"][:, None]
    started = env.reset_to(frames, state)
    np.testing.assert_array_equal(started["pixels"], obs["pixels"])
    single = WorldModelVectorEnv(num_envs=1, checkpoint=str(tiny_model_path))
    single.reset(options={"frames": obs["pixels"][1], "agent_pos": obs["agent_pos"][1]})
    action = np.array([[0.3, -0.2]], np.float32)
    both = env.step(np.repeat(action, 2, axis=0))[0]["pixels"]
    np.testing.assert_array_equal(both[1], single.step(action)[0]["pixels"][0])
    with pytest.raises(ValueError, match="frames must be uint8"):
        env.reset_to(frames.astype(np.float32), state)
    with pytest.raises(ValueError, match="agent_pos must have shape"):
        env.reset_to(frames, state[:, :, :2])


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


def test_the_score_falls_back_to_random_for_a_task_without_an_expert():
    from wm_sim.verify import normalized_score

    assert normalized_score(-40.0, -170.0, -4.0)[0] == pytest.approx(130 / 166)
    score, formula = normalized_score(-40.0, -160.0, None)
    assert score == pytest.approx(120 / 160) and "no expert" in formula


@pytest.mark.slow
def test_mixed_rest_leaves_the_arm_still_away_from_the_target_and_mixed_never_rests():
    """mixed_rest follows random segments with no-action rests (so a still arm is not always a
    successful one); plain mixed is MixedPolicy without rests, and never rests."""
    from wm_sim.envs.catalog import make_task
    from wm_sim.policies.scripted import MixedPolicy, make_scripted_policy

    task = make_task("reacher")

    def episode(policy, seed: int) -> tuple[np.ndarray, np.ndarray]:
        task.reset(seed)
        policy.reset(seeds=[seed])
        actions, distances = [], []
        for _ in range(200):
            actions.append(policy.act({})[0])
            task.step(actions[-1])
            distances.append(np.linalg.norm(task.tip_to_target()))
        return np.stack(actions), np.array(distances)

    resting = MixedPolicy([task], rest_probability=1.0)
    rests, far = 0, []
    for seed in range(3):
        actions, distances = episode(resting, seed)
        still = ~actions.any(axis=1)
        rests += int(still.sum())
        far.extend(distances[still])
    assert rests >= 20 and np.mean(far) > 0.05  # still, and not on the target (success is < 0.02)
    plain_actions, _ = episode(make_scripted_policy("mixed", [task], seed=0), 1)
    zero_rest_actions, _ = episode(MixedPolicy([task], seed=0, rest_probability=0.0), 1)
    assert plain_actions.any(axis=1).all() and np.array_equal(plain_actions, zero_rest_actions)
    task.close()


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
    _, seen = model.decode_and_reencode(first.latents[:, 0], anchor)
    torch.testing.assert_close(batch.features[1, :, :n], seen.flatten(1))
