"""The world-model env inside the tools people already use, each on the env exactly as `gym.make` or
`gym.make_vec` returns it: Gymnasium's wrappers and its vector wrappers (RecordEpisodeStatistics,
RecordVideo, NumpyToTorch), its SyncVectorEnv and AsyncVectorEnv (fork and spawn), TorchRL's
GymWrapper, and Stable-Baselines3 PPO and SAC. docs/envs.md shows each one's smallest snippet."""

from __future__ import annotations

import functools
import warnings

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from gymnasium.wrappers import RecordEpisodeStatistics, RecordVideo, TimeLimit
from wm_sim.envs.catalog import TASK_SPECS

import wm_sim  # noqa: F401  (registers the envs)

EPISODE_STEPS = TASK_SPECS["reacher"].episode_steps


def _make(tiny_model_path, **kwargs):
    return gym.make("wm_sim/WorldModel-v0", checkpoint=str(tiny_model_path), **kwargs)


def test_record_video_writes_every_frame_of_an_episode(tiny_model_path, tmp_path):
    env = RecordVideo(
        _make(tiny_model_path, render_mode="rgb_array", max_episode_steps=12),
        video_folder=str(tmp_path / "videos"),
        episode_trigger=lambda episode: True,
        disable_logger=True,
    )
    env.reset(seed=0)
    env.action_space.seed(0)
    shown = [env.render()]
    done = False
    while not done:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        shown.append(env.render())
        done = terminated or truncated
    env.close()
    (video,) = sorted((tmp_path / "videos").glob("*.mp4"))
    frames = iio.imread(video)  # (T, H, W, 3)
    # The reset frame and 12 steps; moviepy's writer may drop the very last frame of a clip.
    assert frames.shape[1:] == (64, 64, 3) and len(frames) in (len(shown), len(shown) - 1)
    # The video is the env's own predicted frames, in order (up to the codec's loss).
    error = np.abs(frames.astype(np.float32) - np.stack(shown[: len(frames)]).astype(np.float32)).mean()
    assert error < 8.0, error


def test_record_episode_statistics_sums_the_model_rewards(tiny_model_path):
    env = RecordEpisodeStatistics(_make(tiny_model_path, max_episode_steps=15))
    env.reset(seed=1)
    env.action_space.seed(1)
    rewards, info, done = [], {}, False
    while not done:
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        rewards.append(reward)
        done = terminated or truncated
    assert info["episode"]["l"] == len(rewards) == 15
    assert info["episode"]["r"] == pytest.approx(sum(rewards), abs=1e-5)
    env.close()


def test_time_limit_truncates_at_its_limit_and_the_task_length_applies_without_it(tiny_model_path):
    short = TimeLimit(_make(tiny_model_path).unwrapped, max_episode_steps=7)
    short.reset(seed=0)
    flags = [short.step(np.zeros(2, np.float32))[3] for _ in range(7)]
    assert flags == [False] * 6 + [True]
    short.close()

    bare = _make(tiny_model_path).unwrapped  # no wrapper: the task's own episode length
    bare.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, _ = bare.step(np.zeros(2, np.float32))
        assert not terminated  # reacher never terminates; the tiny model learned that
        steps += 1
    assert steps == EPISODE_STEPS
    bare.close()


def test_sync_vector_env_over_the_single_env_matches_single_envs(tiny_model_path):
    envs = gym.vector.SyncVectorEnv([lambda: _make(tiny_model_path) for _ in range(2)])
    obs, _ = envs.reset(seed=[3, 4])
    assert obs["pixels"].shape == (2, 64, 64, 3) and obs["agent_pos"].dtype == np.float32
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 2, 2)).astype(np.float32)
    frames = [envs.step(a)[0]["pixels"] for a in actions]
    envs.close()
    for row, seed in enumerate((3, 4)):
        single = _make(tiny_model_path)
        single.reset(seed=seed)
        for t, a in enumerate(actions):
            np.testing.assert_array_equal(single.step(a[row])[0]["pixels"], frames[t][row])
        single.close()


@pytest.mark.slow
def test_stable_baselines3_ppo_trains_for_a_few_thousand_steps_on_the_env_unmodified(tiny_model_path):
    pytest.importorskip("stable_baselines3", reason="Stable-Baselines3 is in the test extra")
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = _make(tiny_model_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env.unwrapped)
    assert not [w for w in caught if "stable_baselines3" in (w.filename or "")], [
        str(w.message) for w in caught
    ]
    torch.manual_seed(0)
    agent = PPO(
        "MultiInputPolicy", env, n_steps=512, batch_size=128, n_epochs=2, seed=0, device="cpu", verbose=0
    )
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.learn(total_timesteps=2048)
    assert agent.num_timesteps >= 2048
    # Whole imagined episodes ran through SB3's Monitor, and the update moved the policy.
    episodes = list(agent.ep_info_buffer)
    assert len(episodes) >= 2048 // EPISODE_STEPS - 1
    assert all(e["l"] == EPISODE_STEPS and np.isfinite(e["r"]) for e in episodes)
    assert any(not torch.equal(b, p) for b, p in zip(before, agent.policy.parameters(), strict=True))
    action, _ = agent.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(action)
    env.close()


def test_the_readmes_snippet_runs_on_the_shipped_model():
    """The README's env example, verbatim, on `wm_sim/Reacher-v0` (the shipped checkpoint)."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = [b.split("```")[0] for b in readme.split("```python\n")[1:]]
    (snippet,) = [b for b in blocks if "wm_sim/Reacher-v0" in b]
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # the README is ours: running it keeps it true
    env, envs = scope["env"], scope["envs"]
    assert envs.observation_space.contains(scope["obs"])
    assert scope["obs"]["pixels"].shape == (256, 64, 64, 3)
    assert type(envs).__name__ == "WorldModelVectorEnv"  # make_vec found the native vector env
    assert np.isfinite(scope["rewards"]).all() and np.isfinite(scope["reward"])
    env.close()
    envs.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_async_vector_env_with_fork_and_spawn_matches_the_sync_vector_env(tiny_model_path, context):
    """Workers in their own processes step the same episodes as SyncVectorEnv in this one. The
    parent has run torch on several threads first: before fork_safety, every forked worker hung on
    its first step, waiting on the thread pool a fork does not copy."""
    torch.set_num_threads(2)
    torch.randn(256, 256) @ torch.randn(256, 256)  # the parent's pool is now in use
    # what a spawned worker unpickles must import there: gymnasium's make, and the "module:id" form
    # imports wm_sim (registering its ids) in the worker; a function of this test module would not
    make = functools.partial(gym.make, "wm_sim:wm_sim/WorldModel-v0", checkpoint=str(tiny_model_path))
    fns = [make for _ in range(2)]
    actions = np.random.default_rng(0).uniform(-1, 1, (4, 2, 2)).astype(np.float32)
    runs = []
    for envs in (gym.vector.SyncVectorEnv(fns), gym.vector.AsyncVectorEnv(fns, context=context)):
        try:
            obs, _ = envs.reset(seed=[3, 4])
            steps = [envs.step(a) for a in actions]
        finally:
            envs.close()
        runs.append((obs, steps))
    (sync_obs, sync_steps), (async_obs, async_steps) = runs
    np.testing.assert_array_equal(sync_obs["pixels"], async_obs["pixels"])
    for (s_obs, s_reward, *_), (a_obs, a_reward, *_) in zip(sync_steps, async_steps, strict=True):
        # workers step on one thread, this process on two: the same frames to within a grey level
        assert np.abs(s_obs["pixels"].astype(int) - a_obs["pixels"]).max() <= 1
        np.testing.assert_allclose(s_obs["agent_pos"], a_obs["agent_pos"], atol=1e-4)
        np.testing.assert_allclose(s_reward, a_reward, atol=1e-4)


def test_torchrl_wraps_the_single_and_the_vector_env_and_checks_their_specs(tiny_model_path):
    """TorchRL's GymWrapper over the env as gym.make and gym.make_vec return it: its spec check
    (a real rollout against the declared specs) and a rollout of a whole episode and more, which
    crosses the vector env's autoreset."""
    torchrl_envs = pytest.importorskip("torchrl.envs")
    from torchrl.envs.utils import check_env_specs

    single = torchrl_envs.GymWrapper(_make(tiny_model_path))
    check_env_specs(single, seed=0)
    rollout = single.rollout(12)
    assert rollout["next", "pixels"].shape == (12, 64, 64, 3)
    assert rollout["next", "reward"].shape == (12, 1) and torch.isfinite(rollout["next", "reward"]).all()
    single.close()

    # TorchRL takes vector envs that autoreset on the same step (or not at all), as Gymnasium's own
    vector = torchrl_envs.GymWrapper(
        gym.make_vec(
            "wm_sim/WorldModel-v0", num_envs=3, checkpoint=str(tiny_model_path), autoreset_mode="same_step"
        )
    )
    assert vector.batch_size == torch.Size([3])
    check_env_specs(vector, seed=0)
    rollout = vector.rollout(EPISODE_STEPS + 5, break_when_any_done=False)
    assert rollout["next", "pixels"].shape == (3, EPISODE_STEPS + 5, 64, 64, 3)
    done = rollout["next", "done"].squeeze(-1)
    assert done[:, EPISODE_STEPS - 1].all() and not done[:, : EPISODE_STEPS - 1].any()
    vector.close()


@pytest.mark.slow
def test_same_step_and_disabled_autoreset_follow_gymnasiums_contract(tiny_model_path):
    """Same-step: the step that ends an episode returns the next one's first observation, the last
    one in info["final_obs"]; it is next-step's pair of steps in one. Disabled: an ended sub-env
    must be reset before it steps again."""
    from gymnasium.vector import AutoresetMode

    runs = {}
    for mode in ("next_step", "same_step"):
        envs = gym.make_vec(
            "wm_sim/WorldModel-v0", num_envs=2, checkpoint=str(tiny_model_path), autoreset_mode=mode
        )
        assert envs.autoreset_mode == AutoresetMode(envs.metadata["autoreset_mode"])
        envs.reset(seed=5)
        runs[mode] = [envs.step(np.full((2, 2), 0.3, np.float32)) for _ in range(EPISODE_STEPS + 1)]
        envs.close()
    last = EPISODE_STEPS - 1
    nxt, same = runs["next_step"], runs["same_step"]
    assert nxt[last][3].all() and same[last][3].all()  # both truncate at the task's length
    np.testing.assert_array_equal(same[last][1], nxt[last][1])
    info = same[last][4]
    assert info["_final_obs"].all() and "final_obs" not in nxt[last][4]
    for row in range(2):
        np.testing.assert_array_equal(info["final_obs"][row]["pixels"], nxt[last][0]["pixels"][row])
    np.testing.assert_array_equal(same[last][0]["pixels"], nxt[last + 1][0]["pixels"])  # the new first frame
    assert not same[last + 1][3].any() and same[last + 1][1].any()  # and it steps on, no zero-reward step

    envs = gym.make_vec(
        "wm_sim/WorldModel-v0", num_envs=2, checkpoint=str(tiny_model_path), autoreset_mode="disabled"
    )
    envs.reset(seed=5)
    for _ in range(EPISODE_STEPS):
        *_, truncated, _ = envs.step(np.zeros((2, 2), np.float32))
    assert truncated.all()
    with pytest.raises(gym.error.ResetNeeded, match=r"sub-envs \[0, 1\] ended"):
        envs.step(np.zeros((2, 2), np.float32))
    envs.reset(options={"reset_mask": np.array([True, True])})
    assert not envs.step(np.zeros((2, 2), np.float32))[3].any()
    envs.close()
    with pytest.raises(ValueError, match="autoreset_mode must be an AutoresetMode or one of"):
        gym.make_vec(
            "wm_sim/WorldModel-v0", num_envs=2, checkpoint=str(tiny_model_path), autoreset_mode="often"
        )


def _make_vec(tiny_model_path, num_envs, **kwargs):
    return gym.make_vec("wm_sim/WorldModel-v0", num_envs=num_envs, checkpoint=str(tiny_model_path), **kwargs)


@pytest.mark.parametrize("autoreset_mode", ["next_step", "same_step"])
def test_vector_record_episode_statistics_sums_each_sub_envs_rewards(tiny_model_path, autoreset_mode):
    """Gymnasium's vector RecordEpisodeStatistics over the native vector env, for two whole
    episodes: it reads the autoreset mode from the env's metadata, so next-step's reset step (reward
    0, no flags) must not count towards the second episode's length."""
    from gymnasium.wrappers.vector import RecordEpisodeStatistics as VectorRecordEpisodeStatistics

    envs = VectorRecordEpisodeStatistics(_make_vec(tiny_model_path, 3, autoreset_mode=autoreset_mode))
    envs.reset(seed=2)
    envs.action_space.seed(2)
    returns, stats, restarting = np.zeros(3), [], False
    while len(stats) < 2:
        _, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        if restarting:  # next-step: this step began the new episode
            assert not reward.any() and "episode" not in info
            restarting = False
            continue
        returns += reward
        done = terminated | truncated
        if not done.any():
            assert "episode" not in info
            continue
        assert done.all() and info["_episode"].all()  # reacher never terminates: all truncate together
        stats.append(info["episode"])
        np.testing.assert_allclose(info["episode"]["r"], returns, rtol=1e-6)
        returns = np.zeros(3)
        restarting = autoreset_mode == "next_step"
    for episode in stats:
        np.testing.assert_array_equal(episode["l"], [EPISODE_STEPS] * 3)
    assert not np.allclose(stats[0]["r"], stats[1]["r"])  # two different episodes, each summed afresh
    assert list(envs.length_queue) == [EPISODE_STEPS] * 6 and len(envs.return_queue) == 6
    envs.close()


def test_vector_record_video_writes_the_episode_of_every_sub_env(tiny_model_path, tmp_path):
    """Gymnasium's vector RecordVideo: the first episode of both sub-envs side by side in one
    video, finished when the next-step autoreset begins the next episode."""
    from gymnasium.wrappers.vector import RecordVideo as VectorRecordVideo

    folder = tmp_path / "videos"
    envs = VectorRecordVideo(
        _make_vec(tiny_model_path, 2, render_mode="rgb_array"),
        video_folder=str(folder),
        episode_trigger=lambda episode: episode == 0,
        disable_logger=True,
    )
    obs, _ = envs.reset(seed=0)
    envs.action_space.seed(0)
    shown = [obs["pixels"]]
    for _ in range(EPISODE_STEPS):
        obs, *_ = envs.step(envs.action_space.sample())
        shown.append(obs["pixels"])
    assert not list(folder.glob("*.mp4"))  # the episode has ended; its video ends on the reset step
    envs.step(envs.action_space.sample())
    assert [p.name for p in folder.glob("*.mp4")] == ["rl-video-episode-0.mp4"]
    envs.close()
    (video,) = folder.glob("*.mp4")
    frames = iio.imread(video)  # (T, H, W, 3)
    assert iio.immeta(video)["fps"] == envs.metadata["render_fps"] == 50
    # two 64x64 sub-envs side by side; the reset frame and every step (moviepy may drop the last)
    assert frames.shape[1:] == (64, 128, 3) and len(frames) in (len(shown), len(shown) - 1)
    expected = np.concatenate(np.stack(shown[: len(frames)]).transpose(1, 0, 2, 3, 4), axis=2)
    error = np.abs(frames.astype(np.float32) - expected.astype(np.float32)).mean()
    assert error < 8.0, error


def test_vector_numpy_to_torch_returns_tensors_and_takes_tensor_actions(tiny_model_path):
    """Gymnasium's vector NumpyToTorch: tensors out (observations, rewards, flags, info), tensors in
    (actions, a reset mask), and the same episodes as the numpy env given the same actions."""
    pytest.importorskip(
        "array_api_compat", reason="NumpyToTorch needs array-api-compat (gymnasium[array-api])"
    )
    from gymnasium.wrappers.vector import NumpyToTorch

    envs, plain = NumpyToTorch(_make_vec(tiny_model_path, 2)), _make_vec(tiny_model_path, 2)
    obs, _ = envs.reset(seed=3)
    expected, _ = plain.reset(seed=3)
    actions = torch.rand(EPISODE_STEPS + 2, 2, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for t, action in enumerate(actions):
        assert isinstance(obs["pixels"], torch.Tensor) and isinstance(obs["agent_pos"], torch.Tensor)
        assert obs["pixels"].dtype == torch.uint8 and obs["pixels"].shape == (2, 64, 64, 3)
        assert obs["agent_pos"].dtype == torch.float32 and obs["agent_pos"].shape == (2, 4)
        np.testing.assert_array_equal(obs["pixels"].numpy(), expected["pixels"])
        np.testing.assert_array_equal(obs["agent_pos"].numpy(), expected["agent_pos"])
        obs, reward, terminated, truncated, info = envs.step(action)
        expected, want_reward, _, want_truncated, _ = plain.step(action.numpy())
        assert reward.dtype == torch.float32 and reward.shape == (2,)
        assert terminated.dtype == truncated.dtype == torch.bool
        assert isinstance(info["uncertainty"], torch.Tensor) and info["uncertainty"].shape == (2,)
        np.testing.assert_array_equal(reward.numpy(), want_reward)
        np.testing.assert_array_equal(truncated.numpy(), want_truncated)
        assert bool(truncated.all()) == (t == EPISODE_STEPS - 1)  # crossed the autoreset too
    obs, _ = envs.reset(options={"reset_mask": torch.tensor([True, False])})  # a partial reset
    expected, _ = plain.reset(options={"reset_mask": np.array([True, False])})
    np.testing.assert_array_equal(obs["pixels"].numpy(), expected["pixels"])
    envs.close()
    plain.close()


@pytest.mark.slow
def test_stable_baselines3_sac_trains_on_the_env_unmodified(tiny_model_path):
    """SB3's SAC, off-policy with a replay buffer of the Dict observations, for two imagined
    episodes on a tiny network: no warnings, every gradient step taken, the policy moved."""
    pytest.importorskip("stable_baselines3", reason="Stable-Baselines3 is in the test extra")
    from stable_baselines3 import SAC

    env = _make(tiny_model_path)
    torch.manual_seed(0)
    total, learning_starts, train_freq = 2 * EPISODE_STEPS, 100, 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agent = SAC(
            "MultiInputPolicy", env, buffer_size=1_000, learning_starts=learning_starts, batch_size=32,
            train_freq=train_freq, gradient_steps=1, seed=0, device="cpu", verbose=0,
            policy_kwargs={"net_arch": [32, 32], "features_extractor_kwargs": {"cnn_output_dim": 32}},
        )  # fmt: skip
        before = {name: p.detach().clone() for name, p in agent.policy.named_parameters()}
        agent.learn(total_timesteps=total)
    assert not [w for w in caught if "stable_baselines3" in (w.filename or "")], [
        str(w.message) for w in caught
    ]
    assert agent.num_timesteps == total and agent.replay_buffer.size() == total
    assert agent._n_updates == (total - learning_starts) // train_freq
    stored = agent.replay_buffer.observations["pixels"][:total]  # channels first, as SB3 stores images
    assert stored.shape == (total, 1, 3, 64, 64) and stored.dtype == np.uint8 and stored.any()
    episodes = list(agent.ep_info_buffer)
    assert [e["l"] for e in episodes] == [EPISODE_STEPS] * 2 and all(np.isfinite(e["r"]) for e in episodes)
    moved = {name for name, p in agent.policy.named_parameters() if not torch.equal(before[name], p)}
    assert any(n.startswith("actor.") for n in moved) and any(n.startswith("critic.") for n in moved)
    action, _ = agent.predict(env.reset(seed=0)[0], deterministic=True)
    assert action.shape == (2,) and env.action_space.contains(action)
    env.close()
