"""Gymnasium ids, registered by string entry point so that registering imports no simulator."""

from __future__ import annotations

import gymnasium

# Registered physics twins: task name -> Gymnasium id. The world-model ids join in later issues.
PHYSICS_TWIN_IDS: dict[str, str] = {
    "reacher": "wm_sim/Reacher-MuJoCo-v0",
    "pusher": "wm_sim/Pusher-MuJoCo-v0",
    "push": "wm_sim/Push-MuJoCo-v0",
}


# World-model envs: id -> (default checkpoint, the task its checkpoint must simulate). A task's
# id refuses another task's checkpoint; WorldModel-v0 takes any (checkpoint=PATH).
WORLD_MODEL_IDS: dict[str, tuple[str, str | None]] = {
    "wm_sim/Reacher-v0": ("shipped:reacher", "reacher"),
    "wm_sim/Push-v0": ("shipped:push", "push"),
    "wm_sim/WorldModel-v0": ("shipped:reacher", None),
}


# Any ROS 2 robot or `wm-sim ros serve`, as a Gymnasium env (needs the wm-sim[ros] extra).
ROS_ENV_ID = "wm_sim/Ros-v0"


def register_envs() -> None:
    """Register every wm_sim Gymnasium id (idempotent)."""
    from wm_sim.envs.catalog import TASK_SPECS

    for task, env_id in PHYSICS_TWIN_IDS.items():
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point="wm_sim.envs.physics_env:PhysicsTwinEnv",
            kwargs={"task": task},
            max_episode_steps=TASK_SPECS[task].episode_steps,
        )
    for env_id, (checkpoint, task) in WORLD_MODEL_IDS.items():
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point="wm_sim.envs.world_model_env:WorldModelEnv",
            vector_entry_point="wm_sim.envs.world_model_env:WorldModelVectorEnv",
            kwargs={"checkpoint": checkpoint, "task": task},
            disable_env_checker=False,
        )
    if ROS_ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ROS_ENV_ID, entry_point="wm_sim.ros.ros_env:RosEnv")
