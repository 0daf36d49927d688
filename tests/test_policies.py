"""Policies (policies/): the interface, save/load, named and scripted policies, and the latent
planner on a tiny model (training them: test_train_policy.py; verify and rank: test_verify.py,
test_rank.py)."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
import torch
from tiny import random_obs
from wm_sim.policies.actor_critic import ActorCritic, ActorCriticPolicy, ObservationEncoder, feature_dim
from wm_sim.policies.catalog import Setting, check_fits, make_policy
from wm_sim.policies.saved import load_policy, save_policy

from wm_sim.checkpoint import load_checkpoint
from wm_sim.errors import WmSimError


@pytest.fixture(scope="module")
def fresh_policy(tiny_model_path) -> ActorCriticPolicy:
    model, _ = load_checkpoint(tiny_model_path)
    torch.manual_seed(0)
    net = ActorCritic(feature_dim(model.config), model.config.action_dim)
    torch.nn.init.normal_(net.actor[-1].weight, std=0.5)  # not the near-zero start: actions differ per input
    return ActorCriticPolicy(net, ObservationEncoder.from_world_model(model), num_envs=3)


def test_actions_are_batched_bounded_and_survive_save_load(fresh_policy, tmp_path):
    obs = random_obs(3)
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


def test_push_expert_in_imagination_follows_the_puck_the_frame_shows():
    """Without physics, push's expert reads the puck off each frame: moving the puck in the
    frame changes the action, and a frame that loses it keeps the last place seen."""
    import mujoco
    from wm_sim.envs.catalog import make_task

    task = make_task("push")
    obs = task.reset(3)
    setting = Setting(
        task="push", num_envs=1, action_dim=2, image_size=64, state_dim=4, goals=task.goal()[None]
    )
    expert = make_policy("expert", setting)
    batch = {key: value[None] for key, value in obs.items()}
    np.testing.assert_allclose(expert.act(batch)[0], task.expert_action(), atol=0.15)
    task.data.qpos[task._puck_qpos : task._puck_qpos + 2] = -task.puck()  # across the shoulder
    mujoco.mj_forward(task.model, task.data)
    moved = {"pixels": task.render()[None], "agent_pos": batch["agent_pos"]}
    lost = {"pixels": np.zeros_like(moved["pixels"]), "agent_pos": batch["agent_pos"]}
    before = expert.act(batch)
    after = expert.act(moved)
    assert not np.allclose(after, before, atol=0.05)
    np.testing.assert_array_equal(expert.act(lost), after)
    with pytest.raises(WmSimError, match=r"reads the top camera; the observation has \['side'\]"):
        expert.act({"pixels": {"side": moved["pixels"]}, "agent_pos": batch["agent_pos"]})
    task.close()


def test_zero_stands_still_in_physics_and_in_imagination():
    from wm_sim.envs.catalog import make_task

    imagination = Setting(task="reacher", num_envs=3, action_dim=2, image_size=64, state_dim=4)
    assert imagination.tasks is None  # no physics to read: zero needs none
    actions = make_policy("zero", imagination).act(random_obs(3))
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


def test_the_planner_plans_in_latent_space_and_beats_the_zero_sequence_it_starts_from(
    tiny_planning_model_path,
):
    import torch
    from wm_sim.policies.planner import CEMConfig, CEMPlanner

    config = CEMConfig.parse("horizon=5,population=64,elites=8,iterations=3")
    planner = CEMPlanner(str(tiny_planning_model_path), num_envs=2, config=config, seed=0)
    obs = random_obs(2, seed=1)
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


def test_the_search_never_takes_an_unscored_candidate_for_an_elite():
    """A candidate whose imagined return is NaN (reward=task before the object was seen) ranks
    below every scored one, so the search still climbs where some candidates are scored."""
    from wm_sim.policies.planner import CEMConfig, cem_search

    config = CEMConfig.parse("horizon=2,population=32,elites=4,iterations=4")

    def returns_of(candidates: torch.Tensor) -> torch.Tensor:  # (R, P, H, A) -> (R, P)
        first = candidates[..., 0, 0]
        scored = -((candidates + 0.5) ** 2).sum((-1, -2))  # best at -0.5 everywhere
        return torch.where(first < -0.05, scored, torch.nan)  # unscored where the first action >= -0.05

    warm = torch.zeros(1, 2, 1)
    best = cem_search(returns_of, warm, config, torch.Generator().manual_seed(0))
    assert best[0, 0, 0] < -0.05 and torch.isfinite(returns_of(best[:, None]))[0, 0]
    assert returns_of(best[:, None])[0, 0] > -0.5  # better than all-zero actions would score


def test_the_stream_planner_searches_through_the_streaming_step_and_replans_on_schedule(tiny_model_path):
    """The planner for models without a latent model: it streams the real frames it has seen
    into the cache, finds a plan whose imagined return beats the poor one it starts from, and
    searches again only every `replan` frames."""
    import torch
    from wm_sim.policies.stream_planner import StreamCEMConfig, StreamPlanner

    config = StreamCEMConfig.parse("horizon=3,population=8,elites=2,iterations=2,context=2,repeat=2,replan=3")
    planner = StreamPlanner(str(tiny_model_path), num_envs=2, config=config, seed=0)
    planner._plan = torch.ones_like(planner._plan)  # full throttle: a large control cost
    searches, rewards = [], []
    search, step = planner._search, planner.engine.step
    planner._search = lambda: (searches.append(len(planner._frames)), search())[1]
    planner.engine.step = lambda actions: (out := step(actions), rewards.append(out.reward.view(2, -1)))[0]
    for t in range(7):
        action = planner.act(random_obs(2, seed=t))
        assert action.shape == (2, 2) and action.dtype == np.float32 and np.all(np.abs(action) <= 1)
    assert searches == [1, 2, 2]  # at frames 0, 3 and 6, with at most `context` real frames streamed in
    # in the first search, the last iteration's first candidate (the best plan found) earns at
    # least what the first iteration's first candidate (the full-throttle start) earned
    frames = config.horizon * config.repeat
    started = torch.stack(rewards[:frames]).sum(0)[:, 0]
    found = torch.stack(rewards[frames : 2 * frames]).sum(0)[:, 0]
    assert torch.all(found >= started), (found, started)
    planner.reset()
    assert planner._left == 0 and not planner._frames and not planner._plan.any()


def test_the_stream_planners_tail_counts_the_horizons_last_reward_again(tiny_model_path, monkeypatch):
    """tail=N: a candidate's return is its imagined rewards plus N times the last of them."""
    import torch
    import wm_sim.policies.stream_planner as stream_planner
    from wm_sim.policies.stream_planner import StreamCEMConfig, StreamPlanner

    config = StreamCEMConfig.parse(
        "horizon=2,population=3,elites=1,iterations=1,context=1,repeat=2,replan=1,tail=5"
    )
    planner = StreamPlanner(str(tiny_model_path), num_envs=1, config=config, seed=0)
    rewards, returns = [], []
    step = planner.engine.step
    planner.engine.step = lambda actions: (out := step(actions), rewards.append(out.reward.clone()))[0]

    def score_once(returns_of, warm, cfg, generator):
        candidates = torch.rand(1, cfg.population, cfg.horizon, 2, generator=generator) * 2 - 1
        returns.append(returns_of(candidates))
        return warm

    monkeypatch.setattr(stream_planner, "cem_search", score_once)
    planner.act(random_obs(1, seed=0))
    per_step = torch.stack(rewards)  # (horizon * repeat, population)
    expected = per_step.sum(0) + 5 * per_step[-1]
    torch.testing.assert_close(returns[0][0], expected)


def test_the_stream_planner_scores_imagined_push_frames_by_the_task_reward(tiny_model_path):
    """reward=task: each imagined frame is scored as push scores a real one (the puck read off it,
    the finger from agent_pos, the goal known at the start). On the shipped push model the first
    imagined step's score is MuJoCo's reward for the same action, to the model's error; a model of
    a task without such a reward, or no goals, is one clear error."""
    import torch
    from wm_sim.envs.catalog import make_task
    from wm_sim.policies.stream_planner import StreamCEMConfig, StreamPlanner

    config = StreamCEMConfig.parse(
        "reward=task,horizon=1,population=2,elites=1,iterations=1,repeat=1,replan=1,context=2"
    )
    task = make_task("push")
    obs = task.reset(1002)
    planner = StreamPlanner("shipped:push", num_envs=1, config=config, goals=task.goal()[None])
    action = np.array([0.6, -0.4], np.float32)
    for _ in range(2):  # two real frames into its memory, the second after `action`
        planner._remember({key: value[None] for key, value in obs.items()})
        obs = task.step(action).obs
        planner._actions.append(torch.from_numpy(action)[None])
    planner._remember({key: value[None] for key, value in obs.items()})
    planner._actions = planner._actions[-1:]
    np.testing.assert_allclose(planner._object[0], task.puck(), atol=0.005)  # read off the real frame
    seen = np.repeat(planner._object, 2, axis=0)
    frames = torch.stack(planner._frames, 1).repeat_interleave(2, 0)
    states = torch.stack(planner._states, 1).repeat_interleave(2, 0)
    planner.engine.reset_rows(
        torch.arange(2), frames, states, torch.stack(planner._actions, 1).repeat(2, 1, 1)
    )
    actions = torch.from_numpy(np.stack([action, -action]))
    imagined, _ = planner._reward(planner.engine.step(actions), actions, seen)
    true = []
    for row in range(2):
        twin = make_task("push")
        twin.reset(1002)
        twin.set_physics_state(task.get_physics_state())
        true.append(twin.step(actions[row].numpy()).reward)
        twin.close()
    np.testing.assert_allclose(imagined.numpy(), true, atol=0.01)
    task.close()
    kept = planner._object.copy()
    planner.reset(np.array([False]))  # another row's reset: where this row's puck was stays known
    np.testing.assert_array_equal(planner._object, kept)
    planner.reset()
    assert np.isnan(planner._object).all()
    from wm_sim.envs.observed_reward import ObservedReward

    # the camera the task's reward reads, by name: a second camera's frame is not read
    reader = ObservedReward("push", ["side", "top"], task.goal()[None], 1)
    both = np.stack([np.zeros_like(obs["pixels"]), obs["pixels"]])[None]  # (1, 2, S, S, 3): side, top
    no_action = np.zeros((1, 2))
    _, puck = reader(both, obs["agent_pos"][None], no_action, reader.unseen())
    np.testing.assert_allclose(puck[0], task.puck(), atol=0.005)
    with pytest.raises(WmSimError, match=re.escape("needs push's 'top' camera; this model's: ['side']")):
        ObservedReward("push", ["side"], task.goal()[None], 1)
    with pytest.raises(WmSimError, match=re.escape("needs each row's goal, shape (1, 2); got none")):
        StreamPlanner("shipped:push", num_envs=1, config=config)
    with pytest.raises(
        WmSimError, match="task 'reacher' has no reward read off observations; tasks with one: push"
    ):
        StreamPlanner(str(tiny_model_path), num_envs=1, config=config, goals=np.zeros((1, 2)))


@pytest.mark.parametrize(
    "options, match",
    [
        ("replan=17", "cannot exceed the plan"),
        ("context=0", "at least 1"),
        ("elites=40", "cannot exceed population"),
        ("reward=physics", "reward must be one of model, task, got 'physics'"),
        ("tail=-1", "tail must be >= 0"),
    ],
)
def test_stream_planner_options_out_of_range_are_one_clear_error(options, match):
    from wm_sim.policies.stream_planner import StreamCEMConfig

    with pytest.raises(WmSimError, match=match):
        StreamCEMConfig.parse(options)


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
