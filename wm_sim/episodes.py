"""Recording one episode of a policy in a physics task, as the rows a dataset store holds."""

from __future__ import annotations

import numpy as np

from wm_sim.data.schema import (
    ACTION_KEY,
    PHYSICS_STATE_KEY,
    REWARD_KEY,
    STATE_KEY,
    SUCCESS_KEY,
    TERMINATED_KEY,
    DatasetInfo,
    episode_bookkeeping,
    frame_features,
    image_key,
)
from wm_sim.envs.task import MujocoTask, frames_by_camera
from wm_sim.policies.base import Policy


def dataset_info(task: MujocoTask, task_name: str, collection: dict) -> DatasetInfo:
    """The store attributes for episodes of `task` (named `task_name` in the catalog): one image
    array per camera the task observes (`task.cameras`)."""
    features = frame_features(
        list(task.cameras),
        task.image_size,
        task.state_names,
        task.action_names,
        task.physics_state_size,
    )
    return DatasetInfo(
        task=task_name,
        fps=float(task.fps),
        image_size=task.image_size,
        cameras=list(task.cameras),
        action_low=[-1.0] * task.action_dim,
        action_high=[1.0] * task.action_dim,
        features=features,
        episode_steps=int(task.episode_steps),
        collection=collection,
    )


def episode_seeds(episode_seed: int) -> tuple[int, int]:
    """(task seed, policy seed) for one episode, independent streams derived from its seed."""
    task_seed, policy_seed = np.random.SeedSequence(episode_seed).generate_state(2)
    return int(task_seed), int(policy_seed)


def record_episode(
    task: MujocoTask, policy: Policy, episode_seed: int, episode_index: int
) -> dict[str, np.ndarray]:
    """Run `policy` (batch of one) in `task` for one episode; rows hold (o_t, a_t, r_t+1, ...)."""
    task_seed, policy_seed = episode_seeds(episode_seed)
    obs = task.reset(task_seed)
    policy.reset(seeds=[policy_seed])
    frames: dict[str, list[np.ndarray]] = {camera: [] for camera in task.cameras}
    rows: dict[str, list] = {
        key: []
        for key in (
            STATE_KEY,
            ACTION_KEY,
            REWARD_KEY,
            TERMINATED_KEY,
            SUCCESS_KEY,
            PHYSICS_STATE_KEY,
        )
    }
    for _ in range(task.episode_steps):
        rows[PHYSICS_STATE_KEY].append(task.get_physics_state())
        action = policy.act(batch_of_one(obs))[0]
        result = task.step(action)
        for camera, frame in frames_by_camera(obs["pixels"], task.cameras).items():
            frames[camera].append(frame)
        rows[STATE_KEY].append(obs["agent_pos"])
        rows[ACTION_KEY].append(action)
        rows[REWARD_KEY].append(result.reward)
        rows[TERMINATED_KEY].append(result.terminated)
        rows[SUCCESS_KEY].append(result.success)
        obs = result.obs
        if result.terminated:
            break
    length = len(rows[ACTION_KEY])
    images = {image_key(camera): np.stack(frames[camera]).astype(np.uint8) for camera in task.cameras}
    columns = {
        STATE_KEY: np.stack(rows[STATE_KEY]).astype(np.float32),
        ACTION_KEY: np.stack(rows[ACTION_KEY]).astype(np.float32),
        REWARD_KEY: np.asarray(rows[REWARD_KEY], dtype=np.float32),
        TERMINATED_KEY: np.asarray(rows[TERMINATED_KEY], dtype=bool),
        SUCCESS_KEY: np.asarray(rows[SUCCESS_KEY], dtype=bool),
        PHYSICS_STATE_KEY: np.stack(rows[PHYSICS_STATE_KEY]).astype(np.float64),
    }
    return images | columns | episode_bookkeeping(episode_index, np.arange(length) / task.fps)


def batch_of_one(obs: dict) -> dict:
    """`obs` as a batch of one row, as a policy takes it; nested dicts (several cameras) too."""
    return {key: batch_of_one(v) if isinstance(v, dict) else v[None] for key, v in obs.items()}
