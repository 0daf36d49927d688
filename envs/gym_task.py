"""`gym:<EnvId>`: any Gymnasium MuJoCo environment as a task, its own reward the verifiable one."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium
import numpy as np
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from wm_sim.envs.catalog import GYM_PREFIX
from wm_sim.envs.rendering import CameraSpec
from wm_sim.envs.task import MujocoTask, check_camera, select_cameras

from wm_sim.errors import WmSimError


class GymTask(MujocoTask):
    """A Gymnasium MuJoCo env rendered offscreen; agent_pos is the env's own state observation."""

    camera_names = ("default",)  # Gymnasium's own render camera: the one camera of these tasks

    def __init__(self, env_id: str, image_size: int = 64, cameras: Sequence[str] | None = None):
        self.name = f"{GYM_PREFIX}{env_id}"
        select_cameras(self.name, self.camera_names, cameras)  # refused before anything is built
        try:
            env = gymnasium.make(env_id, render_mode="rgb_array", width=image_size, height=image_size)
        except gymnasium.error.Error as exc:
            raise WmSimError(f"task {GYM_PREFIX}{env_id}: Gymnasium cannot make it ({exc})") from exc
        except TypeError as exc:  # an env whose constructor takes no width/height does not render offscreen
            raise WmSimError(
                f"task {GYM_PREFIX}{env_id} does not render offscreen at a chosen size ({exc})"
            ) from exc
        self._env = env.unwrapped
        if not isinstance(self._env, MujocoEnv):
            env.close()
            raise WmSimError(
                f"task {GYM_PREFIX}{env_id} is not a Gymnasium MuJoCo environment; expected e.g. gym:Hopper-v5"
            )
        space = self._env.observation_space
        if not isinstance(space, gymnasium.spaces.Box) or len(space.shape) != 1:
            raise WmSimError(f"task {GYM_PREFIX}{env_id} has observation space {space}; expected a flat Box")
        super().__init__(self._env.model, self._env.data, image_size, cameras)
        self.fps = float(self._env.metadata.get("render_fps") or round(1.0 / self._env.dt))
        self.episode_steps = int(env.spec.max_episode_steps or 1000)
        self._obs_space = space
        self._last_obs = np.zeros(space.shape, dtype=np.float32)
        self._last_reward, self._last_terminated, self._last_info = 0.0, False, {}

    def camera_spec(self, name: str) -> CameraSpec:  # unused: Gymnasium's own camera renders this task
        raise NotImplementedError

    def render(self, camera: str | None = None) -> np.ndarray:
        if camera is not None:
            check_camera(self.name, self.camera_names, camera)
        try:
            frame = self._env.render()
        except Exception as exc:  # GL and MuJoCo raise assorted types; one clear line instead
            raise WmSimError(f"task {self.name} failed to render offscreen: {exc}") from exc
        if not isinstance(frame, np.ndarray) or frame.shape != (self.image_size, self.image_size, 3):
            raise WmSimError(
                f"task {self.name} rendered {getattr(frame, 'shape', frame)!r}; expected ({self.image_size}, {self.image_size}, 3)"
            )
        return frame.astype(np.uint8, copy=True)

    def _reset_physics(self, seed: int) -> None:
        obs, _ = self._env.reset(seed=seed)
        self._last_obs = np.asarray(obs, dtype=np.float32)

    def _advance(self, ctrl: np.ndarray) -> None:
        obs, reward, terminated, _, info = self._env.step(ctrl.astype(self._env.action_space.dtype))
        self._last_obs = np.asarray(obs, dtype=np.float32)
        self._last_reward, self._last_terminated, self._last_info = float(reward), bool(terminated), info

    def set_physics_state(self, state: np.ndarray) -> None:
        super().set_physics_state(state)
        self._last_obs = np.asarray(self._env._get_obs(), dtype=np.float32)

    @property
    def state_names(self) -> list[str]:
        return [f"obs.{i}" for i in range(self._obs_space.shape[0])]

    @property
    def state_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self._obs_space.low.astype(np.float64), self._obs_space.high.astype(np.float64)

    def agent_pos(self) -> np.ndarray:
        return self._last_obs.copy()

    def reward_and_success(self, ctrl: np.ndarray) -> tuple[float, bool, bool]:
        return self._last_reward, bool(self._last_info.get("is_success", False)), self._last_terminated

    def close(self) -> None:
        self._env.close()
