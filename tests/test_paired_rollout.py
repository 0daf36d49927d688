"""Imagination replayed in physics and back: the same actions from the same start, in both."""

from __future__ import annotations

import numpy as np
from wm_sim.envs import make_task

from wm_sim.paired_rollout import replay_in_imagination, replay_in_physics


def test_replay_in_physics_reproduces_an_episode_from_its_start_state():
    task = make_task("reacher")
    task.reset(3)
    start = task.get_physics_state()
    actions = np.random.default_rng(0).uniform(-1, 1, (20, 2)).astype(np.float32)
    first = [task.step(a) for a in actions]
    task.reset(4)  # somewhere else entirely
    again = replay_in_physics(task, start, actions)
    assert [r.reward for r in again] == [r.reward for r in first]
    assert all(np.array_equal(a.obs["pixels"], b.obs["pixels"]) for a, b in zip(again, first, strict=True))
    task.close()


def test_replay_in_imagination_is_the_env_stepped_by_hand_and_leaves_other_rows_idle(tiny_model_path):
    from wm_sim.envs.world_model_env import WorldModelVectorEnv

    env = WorldModelVectorEnv(num_envs=3, checkpoint=str(tiny_model_path))
    env.reset(seed=0)
    task = make_task("reacher")
    obs = task.reset(1)
    frames, agent_pos = obs["pixels"][None, None], obs["agent_pos"][None, None]
    actions = np.random.default_rng(1).uniform(-1, 1, (1, 6, 2)).astype(np.float32)
    rewards = replay_in_imagination(env, frames, agent_pos, actions)
    env.reset_to(frames, agent_pos, rows=[0])
    by_hand = [env.step(np.concatenate([actions[:, t], np.zeros((2, 2), np.float32)]))[1][0] for t in range(6)]
    assert rewards.shape == (1, 6) and np.allclose(rewards[0], by_hand)
    env.close()
    task.close()
