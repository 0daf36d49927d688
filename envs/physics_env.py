"""The physics twin: a MuJoCo task as a Gymnasium env with the observation a world model predicts.

One per task (`wm_sim.registration.PHYSICS_TWIN_IDS`): `wm_sim/Reacher-MuJoCo-v0`,
`wm_sim/Pusher-MuJoCo-v0` and `wm_sim/Push-MuJoCo-v0`. Each shares its spaces with the
world-model envs of the same task, so a policy moves between imagination and physics unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces
from wm_sim.envs.catalog import make_task
from wm_sim.envs.task import frames_by_camera


class PhysicsTwinEnv(gymnasium.Env):
    """Pixels and proprioception from MuJoCo; reward and success computed from the physics state.

    Observation: Dict(pixels=Box(0, 255, (H, W, 3), uint8), agent_pos=Box(float32)) for one camera;
    for several (`cameras=["top", "side"]`), pixels is Dict({camera: Box(0, 255, (H, W, 3), uint8)})
    in the order asked (LeRobot's gym-env layout). `cameras` holds the selected names; render()
    shows the first.
    Action: Box(-1, 1, (action_dim,), float32), mapped linearly onto the actuators' range.
    `info["is_success"]` is the task's success flag. Episodes never truncate here: the registered
    ids add Gymnasium's TimeLimit at the task's episode length.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        task: str = "reacher",
        image_size: int = 64,
        render_mode: str | None = None,
        cameras: Sequence[str] | None = None,
        **task_options: Any,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.task = make_task(task, image_size=image_size, cameras=cameras, **task_options)
        self.cameras: tuple[str, ...] = self.task.cameras  # the cameras `pixels` holds, in order
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.task.fps}
        low, high = self.task.state_bounds
        self.observation_space = spaces.Dict(
            {
                "pixels": self._pixels_space(image_size),
                "agent_pos": spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (self.task.action_dim,), np.float32)
        self.state_names: list[str] = list(self.task.state_names)  # agent_pos's entries
        self._obs: dict[str, Any] | None = None

    def _pixels_space(self, image_size: int) -> spaces.Space:
        """One camera: its frame's Box, as before tasks had several; else a Dict of Boxes."""
        shape = (image_size, image_size, 3)
        if len(self.cameras) == 1:
            return spaces.Box(0, 255, shape, np.uint8)
        # a list of pairs keeps the selected order (a mapping would be sorted by name)
        return spaces.Dict([(name, spaces.Box(0, 255, shape, np.uint8)) for name in self.cameras])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # the task's start state is drawn from this env's seeded generator: same seed, same episode
        self._obs = self.task.reset(int(self.np_random.integers(2**31 - 1)))
        return self._obs, {"is_success": False}

    def step(self, action):
        if self._obs is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        result = self.task.step(np.asarray(action, dtype=np.float32))
        self._obs = result.obs
        return result.obs, result.reward, result.terminated, False, {"is_success": result.success}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        if self._obs is None:
            raise gymnasium.error.ResetNeeded("call reset() before render()")
        return frames_by_camera(self._obs["pixels"], self.cameras)[self.cameras[0]].copy()

    def get_physics_state(self) -> np.ndarray:
        """The full MuJoCo integration state; set_physics_state of it replays exactly."""
        return self.task.get_physics_state()

    def set_physics_state(self, state: np.ndarray) -> dict[str, Any]:
        """Restore a state from get_physics_state; returns the observation there."""
        self.task.set_physics_state(state)
        self._obs = self.task.observe()
        return self._obs

    def close(self) -> None:
        self.task.close()
