"""The world-model Gymnasium envs: spaces, determinism, forks, the vector env, and bad input."""

from __future__ import annotations

import json
import shutil
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from safetensors.torch import load_file, save_file
from tiny import random_obs

import wm_sim  # noqa: F401
from wm_sim.checkpoint import CONTEXTS, WEIGHTS
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
    with pytest.raises(ValueError, match="NaN"):
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


def test_a_bf16_env_shows_the_float32_world_within_rounding(tiny_model_path):
    envs = {
        p: gym.make_vec("wm_sim/WorldModel-v0", num_envs=3, checkpoint=str(tiny_model_path), precision=p)
        for p in ("float32", "bfloat16")
    }
    assert envs["bfloat16"].unwrapped.sim.precision == "bfloat16"
    assert type(envs["bfloat16"].unwrapped.sim.engine.step).__name__ == "AcceleratedStep"
    first = [env.reset(seed=1)[0] for env in envs.values()]
    assert np.array_equal(first[0]["pixels"], first[1]["pixels"])  # real start frames: no model yet
    for a in np.random.default_rng(3).uniform(-1, 1, (5, 3, 2)).astype(np.float32):
        (o32, r32, *_), (o16, r16, *_) = (env.step(a) for env in envs.values())
        levels = np.abs(o32["pixels"].astype(int) - o16["pixels"].astype(int))
        assert levels.max() <= 16 and levels.mean() < 1.0
        assert np.allclose(o32["agent_pos"], o16["agent_pos"], atol=0.1) and np.allclose(r32, r16, atol=0.05)
    with pytest.raises(WmSimError, match=r"precision must be one of .*got 'fp16'"):
        gym.make("wm_sim/WorldModel-v0", checkpoint=str(tiny_model_path), precision="fp16")


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


def _same_state(a, b) -> bool:
    engine = all(torch.equal(a["engine"][k], b["engine"][k]) for k in a["engine"])
    return engine and a["np_random"] == b["np_random"] and a["needs_reset"] == b["needs_reset"]


def test_a_reset_with_zero_frames_is_a_clear_error(env):
    with pytest.raises(ValueError, match="at least one frame"):
        env.reset(options={"frames": np.zeros((0, 64, 64, 3), np.uint8)})
    with pytest.raises(ValueError, match="at least one frame"):
        env.reset(options={"frames": np.zeros((2, 0, 64, 3), np.uint8)})


def test_set_state_of_something_that_is_not_a_state_is_refused_and_changes_nothing(env):
    env.reset(seed=5)
    env.step(np.array([0.3, -0.2], np.float32))
    good = env.unwrapped.get_state()
    wrong_batch = {**good, "engine": {**good["engine"], "keys": good["engine"]["keys"][:, :0]}}
    wrong_dtype = {**good, "engine": {**good["engine"], "pixels": good["engine"]["pixels"].float()}}
    cases = [
        ("junk", "not an env state"),
        ({}, "not an env state"),
        ({**good, "engine": 1}, r"state\['engine'\] must be a dict"),
        ({**good, "engine": {}}, "not a simulator state"),
        (wrong_batch, r"state\['keys'\] must be a torch.float32 tensor of shape"),
        (wrong_dtype, r"state\['pixels'\] must be a torch.uint8 tensor"),
        ({**good, "np_random": {"bit_generator": "MT19937"}}, "is not a PCG64 state"),
        ({**good, "needs_reset": "no"}, r"state\['needs_reset'\] must be a bool"),
    ]
    for state, message in cases:
        with pytest.raises(ValueError, match=message):
            env.unwrapped.set_state(state)
        assert _same_state(env.unwrapped.get_state(), good)


def test_a_vector_env_refuses_a_state_that_is_not_its_own(tiny_model_path):
    envs = gym.make_vec("wm_sim/WorldModel-v0", num_envs=2, checkpoint=str(tiny_model_path))
    other = gym.make_vec("wm_sim/WorldModel-v0", num_envs=3, checkpoint=str(tiny_model_path))
    envs.reset(seed=0)
    other.reset(seed=0)
    with pytest.raises(ValueError, match=r"state\['keys'\] must be"):
        envs.unwrapped.set_state(other.unwrapped.get_state())
    with pytest.raises(ValueError, match="not an env state"):
        envs.unwrapped.set_state(None)
    envs.close()
    other.close()


def test_a_huge_action_is_clipped_as_any_out_of_range_action(env):
    env.reset(seed=2)
    state = env.unwrapped.get_state()
    big, *_, big_info = env.unwrapped.step(np.array([1e300, -np.inf]))
    env.unwrapped.set_state(state)
    edge, *_, edge_info = env.unwrapped.step(np.array([1.0, -1.0], np.float32))
    assert big_info["action_clipped"] and not edge_info["action_clipped"]
    assert np.array_equal(big["pixels"], edge["pixels"]) and np.array_equal(
        big["agent_pos"], edge["agent_pos"]
    )
    *_, info = env.unwrapped.step(np.array([0.1, -0.7]))  # float64 inside the bounds: not clipped
    assert not info["action_clipped"]
    with pytest.raises(ValueError, match="NaN"):
        env.unwrapped.step(np.array([np.nan, 1e300]))


def test_huge_actions_in_a_reset_context_are_clipped_too(env):
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    env.reset(options={"frames": frames, "actions": np.array([[1e300, 0.0], [0.0, -1e300]])})
    clipped = env.unwrapped.get_state()
    env.reset(options={"frames": frames, "actions": np.array([[1.0, 0.0], [0.0, -1.0]])})
    assert all(torch.equal(v, env.unwrapped.get_state()["engine"][k]) for k, v in clipped["engine"].items())
    with pytest.raises(ValueError, match="NaN"):
        env.reset(options={"frames": frames, "actions": np.full((2, 2), np.nan)})


def test_a_closed_env_refuses_to_step_and_closing_again_is_fine(tiny_model_path):
    env = gym.make("wm_sim/WorldModel-v0", checkpoint=str(tiny_model_path))
    env.reset(seed=0)
    env.close()
    env.close()
    with pytest.raises(gym.error.ClosedEnvironmentError, match="closed"):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(gym.error.ClosedEnvironmentError):
        env.reset(seed=0)
    envs = gym.make_vec("wm_sim/WorldModel-v0", num_envs=2, checkpoint=str(tiny_model_path))
    envs.reset(seed=0)
    envs.close()
    with pytest.raises(gym.error.ClosedEnvironmentError):
        envs.step(np.zeros((2, 2), np.float32))


def test_start_contexts_of_another_image_size_are_one_clear_error(tiny_model_path, tmp_path):

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_path, copy)
    contexts = load_file(str(copy / CONTEXTS))
    contexts["frames"] = contexts["frames"][:, :, ::2, ::2].contiguous()  # 32x32 for a 64x64 model
    save_file(contexts, str(copy / CONTEXTS))
    env = gym.make("wm_sim/WorldModel-v0", checkpoint=str(copy))
    with pytest.raises(WmSimError, match=r"frames are uint8 of shape \(8, 3, 32, 32, 3\); the model expects"):
        env.reset(seed=0)
    env.close()


def test_a_task_id_refuses_a_checkpoint_of_another_task(tiny_model_path, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_path, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["dataset"]["task"] = "push"  # as a push model's metadata names its task
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="simulates the 'push' task, not 'reacher'"):
        gym.make("wm_sim/Reacher-v0", checkpoint=str(copy))
    with pytest.raises(ValueError, match="simulates the 'push' task, not 'reacher'"):
        gym.make_vec("wm_sim/Reacher-v0", num_envs=2, checkpoint=str(copy))


def test_the_shipped_push_model_is_an_env_of_its_twins_spaces_that_refuses_to_be_a_reacher():
    env, twin = gym.make("wm_sim/Push-v0"), gym.make("wm_sim/Push-MuJoCo-v0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert not caught, [str(w.message) for w in caught]
    assert env.observation_space == twin.observation_space and env.action_space == twin.action_space
    obs, _ = env.reset(seed=0)
    moved = env.step(np.full(env.action_space.shape, 0.8, np.float32))[0]
    assert np.abs(moved["agent_pos"] - obs["agent_pos"]).max() > 1e-3  # the arm answers an action
    env.close()
    twin.close()
    with pytest.raises(ValueError, match="simulates the 'push' task, not 'reacher'"):
        gym.make("wm_sim/Reacher-v0", checkpoint="shipped:push")


def test_a_checkpoint_of_nan_weights_does_not_make_an_env(tiny_model_path, tmp_path):

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_path, copy)
    weights = load_file(str(copy / WEIGHTS))
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(copy / WEIGHTS))
    with pytest.raises(WmSimError, match=f"tensor '{name}'"):
        gym.make("wm_sim/WorldModel-v0", checkpoint=str(copy))


def test_a_stream_never_truncates_and_episode_steps_sets_the_length(tiny_model_path):
    stream = gym.make("wm_sim/WorldModel-v0", checkpoint=str(tiny_model_path), stream=True).unwrapped
    stream.reset(seed=0)
    for _ in range(260):  # past the recorded episodes' 200 steps
        _, _, terminated, truncated, _ = stream.step(np.zeros(2, np.float32))
        assert not truncated and not terminated  # the tiny model learned reacher never terminates
    short = gym.make("wm_sim/WorldModel-v0", checkpoint=str(tiny_model_path), episode_steps=5).unwrapped
    short.reset(seed=0)
    flags = [short.step(np.zeros(2, np.float32))[3] for _ in range(5)]
    assert flags == [False] * 4 + [True]
    vector = gym.make_vec("wm_sim/WorldModel-v0", num_envs=2, checkpoint=str(tiny_model_path), stream=True)
    vector.reset(seed=0)
    for _ in range(201):
        _, _, _, truncated, _ = vector.step(np.zeros((2, 2), np.float32))
        assert not truncated.any()


@pytest.mark.parametrize("kwargs", [{"stream": True, "episode_steps": 100}, {"episode_steps": 0}])
def test_a_stream_with_an_episode_length_is_one_clear_error(tiny_model_path, kwargs):
    with pytest.raises(ValueError, match=r"stream=True never truncates|episode_steps must be"):
        gym.make("wm_sim/WorldModel-v0", checkpoint=str(tiny_model_path), **kwargs)


def test_reset_to_starts_each_sub_env_from_its_own_context(tiny_model_path):
    from wm_sim.envs.world_model_env import WorldModelVectorEnv

    env = WorldModelVectorEnv(num_envs=2, checkpoint=str(tiny_model_path))
    obs = random_obs(2)
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
