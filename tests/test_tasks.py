"""MuJoCo tasks: legible frames, exact replay from physics state, experts, the Gymnasium twins."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from colours import count_colour
from gymnasium.utils.env_checker import check_env
from wm_sim.envs import make_task

from wm_sim.errors import WmSimError
from wm_sim.registration import PHYSICS_TWIN_IDS

TWIN_IDS = list(PHYSICS_TWIN_IDS.values())


@pytest.mark.parametrize("env_id", TWIN_IDS)
def test_physics_twin_passes_check_env_without_warnings(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []
    assert isinstance(env.observation_space, gym.spaces.Dict)
    assert env.observation_space["pixels"].dtype == np.uint8
    assert env.observation_space["agent_pos"].dtype == np.float32
    assert env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    env.close()


@pytest.mark.parametrize("env_id", TWIN_IDS)
def test_same_seed_gives_the_same_episode(env_id):
    def rollout(seed: int):
        env = gym.make(env_id)
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        frames, rewards = [obs["pixels"]], []
        for _ in range(15):
            obs, reward, *_ = env.step(env.action_space.sample())
            frames.append(obs["pixels"])
            rewards.append(reward)
        env.close()
        return np.stack(frames), np.array(rewards)

    frames_a, rewards_a = rollout(3)
    frames_b, rewards_b = rollout(3)
    frames_c, _ = rollout(4)
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(rewards_a, rewards_b)
    assert not np.array_equal(frames_a, frames_c)


@pytest.mark.parametrize("env_id", TWIN_IDS)
def test_twin_truncates_at_the_task_episode_length(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        *_, truncated, _ = env.step(env.action_space.sample())
        steps += 1
    assert steps == env.spec.max_episode_steps == env.unwrapped.task.episode_steps
    env.close()


@pytest.mark.parametrize("task_name", ["reacher", "pusher", "gym:Hopper-v5"])
def test_restoring_physics_state_replays_frames_and_rewards_exactly(task_name):
    task = make_task(task_name)
    rng = np.random.default_rng(0)
    task.reset(5)
    for _ in range(3):
        task.step(rng.uniform(-1, 1, task.action_dim))
    start = task.get_physics_state()
    actions = rng.uniform(-1, 1, (12, task.action_dim)).astype(np.float32)
    first = [task.step(a) for a in actions]
    task.reset(99)  # somewhere else entirely
    task.set_physics_state(start)
    second = [task.step(a) for a in actions]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.obs["pixels"], b.obs["pixels"])
        np.testing.assert_array_equal(a.obs["agent_pos"], b.obs["agent_pos"])
        assert a.reward == b.reward
    task.close()


def test_reacher_frame_shows_arm_and_target_at_64px():
    task = make_task("reacher", image_size=64)
    for seed in range(5):
        frame = task.reset(seed)["pixels"]
        assert frame.shape == (64, 64, 3)
        # link0 orange and link1 blue each cover a visible stretch; the target is a red blob
        assert count_colour(frame, "orange") >= 25, seed
        assert count_colour(frame, "blue") >= 25, seed
        assert count_colour(frame, "red") >= 6, seed
    task.close()


def test_pusher_frame_shows_arm_puck_and_goal_at_64px():
    task = make_task("pusher", image_size=64)
    frame = task.reset(0)["pixels"]
    background = np.median(frame.reshape(-1, 3), axis=0)
    assert (
        np.abs(frame.astype(int) - background).max(axis=-1) > 40
    ).mean() > 0.10  # robot + objects fill the frame
    assert count_colour(frame, "red") >= 6  # the goal
    assert count_colour(frame, "white") >= 4  # the puck
    task.close()


def _expert_versus_random(task_name: str, seeds: range, measure):
    """Per seed, `measure(task, start_measure)` after an expert episode; and the mean returns of both."""
    task = make_task(task_name)
    rng = np.random.default_rng(0)
    measured, expert_returns, random_returns = [], [], []
    for seed in seeds:
        task.reset(seed)
        before = measure(task, None)
        expert_returns.append(sum(task.step(task.expert_action()).reward for _ in range(task.episode_steps)))
        measured.append(measure(task, before))
        task.reset(seed)
        random_returns.append(
            sum(task.step(rng.uniform(-1, 1, task.action_dim)).reward for _ in range(task.episode_steps))
        )
    task.close()
    return measured, np.mean(expert_returns), np.mean(random_returns)


@pytest.mark.slow
def test_reacher_expert_touches_the_target_and_beats_random():
    def on_target(task, _):
        return np.linalg.norm(task.tip_to_target()) < 0.02

    on_target_at_end, expert, random = _expert_versus_random("reacher", range(10), on_target)
    assert np.mean(on_target_at_end) >= 0.9
    assert expert > random + 20.0


def test_reacher_fingertip_from_joint_angles_is_where_mujoco_puts_it():
    from wm_sim.envs.reacher import fingertip

    task = make_task("reacher")
    task.reset(3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        obs = task.step(rng.uniform(-1, 1, task.action_dim)).obs
        tip = task.goal() - task.tip_to_target()[:2]  # the fingertip relative to the arm's base
        assert np.allclose(fingertip(obs["agent_pos"][:2].astype(np.float64)), tip, atol=1e-5)
    task.close()


@pytest.mark.slow
def test_pusher_expert_moves_the_puck_towards_the_goal_and_beats_random():
    def progress(task, start):
        distance = np.linalg.norm(task.puck_to_goal())
        return distance if start is None else distance < start - 0.02

    closer, expert, random = _expert_versus_random("pusher", range(6), progress)
    assert np.mean(closer) >= 0.6
    assert expert > random + 30.0


def test_gym_task_reward_is_the_environments_own():
    task = make_task("gym:Hopper-v5")
    env = gym.make("Hopper-v5")
    env.reset(seed=11)
    task.reset(11)
    rng = np.random.default_rng(1)
    for _ in range(10):
        action = rng.uniform(-1, 1, task.action_dim).astype(np.float32)
        _, reward, terminated, _, _ = env.step(action)  # Hopper's actions already span [-1, 1]
        result = task.step(action)
        assert result.reward == pytest.approx(reward, rel=1e-9, abs=1e-9)
        assert result.terminated == terminated
        if terminated:
            break
    env.close()
    task.close()


@pytest.mark.parametrize("name", ["nope", "gym:", "gym:CartPole-v1", "gym:NoSuchEnv-v0"])
def test_bad_task_names_raise_clear_errors(name):
    with pytest.raises(WmSimError):
        make_task(name)


def test_wrong_action_shape_is_refused():
    task = make_task("reacher")
    task.reset(0)
    with pytest.raises(WmSimError, match="2 entries"):
        task.step(np.zeros(3))
    with pytest.raises(WmSimError, match="finite"):
        task.step(np.array([np.nan, 0.0]))
    task.close()
