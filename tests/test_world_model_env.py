"""The world-model Gymnasium envs: spaces, determinism, forks, the vector env, and bad input."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import wm_sim  # noqa: F401
from wm_sim.errors import WmSimError


@pytest.fixture
def env(tiny_model_path):
    env = gym.make("wm_sim/WorldModel-v0", checkpoint=str(tiny_model_path))
    yield env
    env.close()


def _rollout(env, actions):
    return [env.step(a)[0]["pixels"] for a in actions]


def test_check_env_passes_without_warnings(env):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert not caught, [str(w.message) for w in caught]


def test_the_spaces_are_the_physics_twins(env):
    twin = gym.make("wm_sim/Reacher-MuJoCo-v0")
    assert env.observation_space == twin.observation_space
    assert env.action_space == twin.action_space
    assert env.metadata["render_fps"] == twin.metadata["render_fps"] == 50.0
    twin.close()


def test_seeded_resets_and_steps_are_deterministic(env, tiny_model_path):
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 2)).astype(np.float32)
    first, _ = env.reset(seed=3)
    frames = _rollout(env, actions)
    again, _ = env.reset(seed=3)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert all(np.array_equal(a, b) for a, b in zip(frames, _rollout(env, actions), strict=True))


def test_a_fork_replays_bit_identically(env):
    env.reset(seed=1)
    actions = np.random.default_rng(1).uniform(-1, 1, (5, 2)).astype(np.float32)
    _rollout(env, actions[:2])
    state = env.unwrapped.get_state()
    first = _rollout(env, actions)
    _rollout(env, actions[::-1])  # wander off
    env.unwrapped.set_state(state)
    assert all(np.array_equal(a, b) for a, b in zip(first, _rollout(env, actions), strict=True))


def test_reset_from_a_users_own_camera_image(env):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)  # another resolution: resized
    obs, _ = env.reset(options={"frames": image, "agent_pos": np.zeros(4, np.float32)})
    assert obs["pixels"].shape == (64, 64, 3) and np.allclose(obs["agent_pos"], 0.0)
    with pytest.raises(ValueError, match="RGB"):
        env.reset(options={"frames": rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)})
    with pytest.raises(ValueError, match="uint8"):
        env.reset(options={"frames": np.zeros((64, 64, 3), np.float32)})
    with pytest.raises(ValueError, match="need frames"):
        env.reset(options={"agent_pos": np.zeros(4, np.float32)})


def test_bad_actions_are_clear_errors_and_out_of_range_ones_are_clipped(env):
    with pytest.raises(gym.error.ResetNeeded):
        env.unwrapped.step(np.zeros(2, np.float32))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.unwrapped.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="finite"):
        env.unwrapped.step(np.array([np.nan, 0.0], np.float32))
    *_, info = env.unwrapped.step(np.array([5.0, 0.0], np.float32))
    assert info["action_clipped"] and info["uncertainty"] >= 0.0
    *_, info = env.unwrapped.step(np.array([0.5, 0.0], np.float32))
    assert not info["action_clipped"]


def test_an_ended_episode_needs_a_reset(env):
    env.reset(seed=0)
    terminated = truncated = False
    steps = 0
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.unwrapped.step(env.action_space.sample())
        steps += 1
    assert steps == 200 if truncated else steps <= 200  # truncation at the task's episode length
    with pytest.raises(gym.error.ResetNeeded):
        env.unwrapped.step(env.action_space.sample())


def test_a_missing_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(WmSimError, match="no checkpoint at"):
        gym.make("wm_sim/WorldModel-v0", checkpoint=str(tmp_path / "nowhere"))


def test_the_vector_env_matches_the_single_env(tiny_model_path, env):
    envs = gym.make_vec("wm_sim/WorldModel-v0", num_envs=1, checkpoint=str(tiny_model_path))
    assert type(envs.unwrapped).__name__ == "WorldModelVectorEnv"
    actions = np.random.default_rng(2).uniform(-1, 1, (5, 1, 2)).astype(np.float32)
    obs, _ = envs.reset(seed=4)
    single, _ = env.reset(seed=4)
    assert np.array_equal(obs["pixels"][0], single["pixels"])
    for a in actions:
        obs, reward, *_ = envs.step(a)
        s_obs, s_reward, *_ = env.step(a[0])
        assert np.array_equal(obs["pixels"][0], s_obs["pixels"]) and reward[0] == pytest.approx(s_reward)


def test_the_vector_env_autoresets_on_the_next_step_and_resets_partially(tiny_model_path):
    envs = gym.make_vec("wm_sim/WorldModel-v0", num_envs=3, checkpoint=str(tiny_model_path))
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    envs.reset(seed=0)
    zeros = np.zeros((3, 2), np.float32)
    ended = np.zeros(3, bool)
    for _ in range(200):
        _, _, terminated, truncated, _ = envs.step(zeros)
        ended = terminated | truncated
        if ended.any():
            break
    assert ended.any()  # every row truncates at step 200 at the latest
    _, reward, terminated, truncated, _ = envs.step(zeros)  # the autoreset step of the ended rows
    assert (reward[ended] == 0).all() and not terminated[ended].any() and not truncated[ended].any()
    state = envs.unwrapped.get_state()
    moved, *_ = envs.step(zeros)
    obs, _ = envs.reset(options={"reset_mask": np.array([True, False, False])})
    assert np.array_equal(obs["pixels"][1:], moved["pixels"][1:])  # untouched rows keep going
    envs.unwrapped.set_state(state)
    again, *_ = envs.step(zeros)
    assert np.array_equal(again["pixels"], moved["pixels"])


def test_the_torch_interface_keeps_tensors(tiny_model_path):
    envs = gym.make_vec(
        "wm_sim/WorldModel-v0", num_envs=2, checkpoint=str(tiny_model_path), array_type="torch"
    )
    obs, _ = envs.reset(seed=0)
    obs, reward, *_ = envs.step(torch.zeros(2, 2))
    assert isinstance(obs["pixels"], torch.Tensor) and obs["pixels"].dtype == torch.uint8
    assert isinstance(reward, torch.Tensor) and reward.shape == (2,)
