"""Gymnasium ids, registered by string entry point so that registering imports no simulator."""

from __future__ import annotations

import gymnasium

# Registered physics twins: task name -> Gymnasium id. The world-model ids join in later issues.
PHYSICS_TWIN_IDS: dict[str, str] = {
    "reacher": "wm_sim/Reacher-MuJoCo-v0",
    "pusher": "wm_sim/Pusher-MuJoCo-v0",
}


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
