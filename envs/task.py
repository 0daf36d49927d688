"""The physics task: MuJoCo with camera pixels, proprioception, a reward from the physics state.

Every task exposes the same small surface, so the collector, the Gymnasium twin and (later) the
verification harness treat them alike. Actions are always normalised to [-1, 1] and mapped
linearly onto the actuators' native range here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import mujoco
import numpy as np
from wm_sim.envs.rendering import CameraSpec, OffscreenCamera

from wm_sim.errors import WmSimError

# The full integration state: time, qpos, qvel, act, warm-start accelerations, controls, mocap,
# applied forces, user data. Restoring it replays a trajectory bit for bit.
PHYSICS_STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION

# An observation's pixels: one camera's (H, W, 3) uint8 frame, or {camera: frame} for several
# cameras in their selected order (LeRobot's gym-env layout).
Pixels = np.ndarray | dict[str, np.ndarray]


@dataclass
class StepResult:
    """One transition of a task: the observation after the action and what the physics says of it."""

    obs: dict[str, Any]  # {"pixels": Pixels, "agent_pos": (D,) float32}
    reward: float
    terminated: bool
    success: bool
    info: dict = field(default_factory=dict)


class MujocoTask(ABC):
    """A MuJoCo physics environment returning pixels, proprioception, true reward and success.

    `camera_names` are every camera the task can render, `cameras` the ones its observations
    carry (chosen at construction; by default the first alone, the layout stores had before
    tasks had several cameras).
    """

    name: str
    fps: float
    episode_steps: int
    camera_names: tuple[str, ...] = ("top",)

    def __init__(
        self,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        image_size: int,
        cameras: Sequence[str] | None = None,
    ):
        self.model = model
        self.data = data
        self.image_size = image_size
        self.cameras: tuple[str, ...] = select_cameras(self.name, self.camera_names, cameras)
        self.ctrl_low = model.actuator_ctrlrange[:, 0].astype(np.float64).copy()
        self.ctrl_high = model.actuator_ctrlrange[:, 1].astype(np.float64).copy()
        self._renderers: dict[str, OffscreenCamera] = {}  # camera name -> renderer, made on first use
        self._state_size = mujoco.mj_stateSize(model, PHYSICS_STATE_SPEC)

    # --- what a subclass provides -------------------------------------------------------------

    # Where each camera looks from, and the render-only styling that makes 64x64 frames legible.
    views: ClassVar[dict[str, CameraSpec]] = {}

    def camera_spec(self, name: str) -> CameraSpec:
        """Camera `name`'s view (one of `views`)."""
        check_camera(self.name, self.camera_names, name)
        return self.views[name]

    @abstractmethod
    def _reset_physics(self, seed: int) -> None:
        """Sample a start state into self.data from `seed` (deterministically)."""

    @abstractmethod
    def _advance(self, ctrl: np.ndarray) -> None:
        """Apply native controls `ctrl` and integrate one control period."""

    @abstractmethod
    def agent_pos(self) -> np.ndarray:
        """The robot's proprioceptive state, float32, shaped like `state_names`."""

    @abstractmethod
    def reward_and_success(self, ctrl: np.ndarray) -> tuple[float, bool, bool]:
        """(reward, success, terminated) computed from the current physics state and applied controls."""

    @property
    @abstractmethod
    def state_names(self) -> list[str]:
        """Names of the agent_pos entries."""

    @property
    @abstractmethod
    def state_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of agent_pos (may be infinite)."""

    def expert_action(self) -> np.ndarray:
        """The scripted expert's normalised action for the current physics state."""
        raise WmSimError(f"task {self.name!r} has no scripted expert; use policy=random")

    # --- the shared surface -------------------------------------------------------------------

    @property
    def action_dim(self) -> int:
        return int(self.model.nu)

    @property
    def action_names(self) -> list[str]:
        return [
            mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_ACTUATOR, i) or f"a{i}"
            for i in range(self.model.nu)
        ]

    def reset(self, seed: int) -> dict[str, Any]:
        """Start a new episode from `seed`; the same seed gives the same start state."""
        self._reset_physics(int(seed))
        mujoco.mj_forward(self.model, self.data)
        return self.observe()

    def step(self, action: np.ndarray) -> StepResult:
        """Apply the normalised action in [-1, 1] (clipped) for one control period."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (self.action_dim,):
            raise WmSimError(f"action must have {self.action_dim} entries, got shape {action.shape}")
        if not np.all(np.isfinite(action)):
            raise WmSimError(f"action must be finite, got {action}")
        ctrl = self.to_ctrl(action)
        self._advance(ctrl)
        # mj_step leaves positions computed from the pre-step state; recompute so that the frame,
        # the reward and a state restored later all see the same, current configuration.
        mujoco.mj_forward(self.model, self.data)
        reward, success, terminated = self.reward_and_success(ctrl)
        return StepResult(self.observe(), float(reward), bool(terminated), bool(success))

    def to_ctrl(self, action: np.ndarray) -> np.ndarray:
        """Map a normalised action in [-1, 1] onto the actuators' native control range."""
        action = np.clip(action, -1.0, 1.0)
        return self.ctrl_low + (action + 1.0) * 0.5 * (self.ctrl_high - self.ctrl_low)

    def from_ctrl(self, ctrl: np.ndarray) -> np.ndarray:
        """Inverse of to_ctrl, clipped to [-1, 1]."""
        span = np.where(self.ctrl_high > self.ctrl_low, self.ctrl_high - self.ctrl_low, 1.0)
        return np.clip(2.0 * (np.asarray(ctrl) - self.ctrl_low) / span - 1.0, -1.0, 1.0)

    def observe(self) -> dict[str, Any]:
        """The current observation: `pixels` of the selected cameras (see Pixels) and `agent_pos`."""
        frames = {name: self.render(name) for name in self.cameras}
        pixels = frames[self.cameras[0]] if len(self.cameras) == 1 else frames
        return {"pixels": pixels, "agent_pos": self.agent_pos()}

    def render(self, camera: str | None = None) -> np.ndarray:
        """The frame of the current state from `camera` (any of camera_names; default the first
        selected one), (H, W, 3) uint8."""
        name = self.cameras[0] if camera is None else camera
        renderer = self._renderers.get(name)
        if renderer is None:  # camera_spec refuses a camera the task does not have
            renderer = OffscreenCamera(self.model, self.image_size, self.camera_spec(name))
            self._renderers[name] = renderer
        return renderer.render(self.data)

    def get_physics_state(self) -> np.ndarray:
        """The full integration state as a float64 vector (see PHYSICS_STATE_SPEC)."""
        state = np.empty(self._state_size, dtype=np.float64)
        mujoco.mj_getState(self.model, self.data, state, PHYSICS_STATE_SPEC)
        return state

    def set_physics_state(self, state: np.ndarray) -> None:
        """Restore a state from get_physics_state; stepping on from it replays exactly."""
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        if state.shape != (self._state_size,):
            raise WmSimError(
                f"physics_state for task {self.name!r} must have {self._state_size} entries, got {state.shape[0]}"
            )
        mujoco.mj_setState(self.model, self.data, state, PHYSICS_STATE_SPEC)
        mujoco.mj_forward(self.model, self.data)

    @property
    def physics_state_size(self) -> int:
        return self._state_size

    def close(self) -> None:
        renderers, self._renderers = self._renderers, {}
        for renderer in renderers.values():
            renderer.close()


def check_camera(task: str, available: Sequence[str], name: object) -> None:
    """Raise a WmSimError naming `name` and the task's cameras unless it is one of `available`."""
    if not isinstance(name, str) or not name:
        raise WmSimError(
            f"a camera name must be a non-empty string, got {name!r}; task {task!r} has cameras {list(available)}"
        )
    if name not in available:
        raise WmSimError(f"task {task!r} has no camera {name!r}; its cameras are {list(available)}")


def select_cameras(task: str, available: Sequence[str], cameras: Sequence[str] | None) -> tuple[str, ...]:
    """The cameras a task observes: `cameras` checked against `available`, or the first one if None."""
    if cameras is None:
        return (available[0],)
    if isinstance(cameras, str):  # a bare string is a sequence of one-letter names: refuse, don't guess
        raise WmSimError(
            f"cameras for task {task!r} must be a list of camera names, got the string {cameras!r}; "
            f"e.g. cameras=[{cameras}]"
        )
    chosen = tuple(cameras)
    if not chosen:
        raise WmSimError(f"cameras for task {task!r} is empty; expected one or more of {list(available)}")
    for name in chosen:
        check_camera(task, available, name)
    repeated = [name for i, name in enumerate(chosen) if name in chosen[:i]]
    if repeated:
        raise WmSimError(
            f"cameras for task {task!r} names {repeated[0]!r} more than once ({list(chosen)}); name each camera once"
        )
    return chosen


def frames_by_camera(pixels: Pixels, cameras: Sequence[str]) -> dict[str, np.ndarray]:
    """{camera: frame} of an observation's pixels, whichever layout they have (see Pixels)."""
    if isinstance(pixels, dict):
        return {name: pixels[name] for name in cameras}
    if len(cameras) != 1:
        raise WmSimError(
            f"pixels hold one camera's frame, but {len(cameras)} cameras were asked: {list(cameras)}"
        )
    return {cameras[0]: pixels}


class ArmTask(MujocoTask):
    """A task whose proprioception is its arm's hinge angles, then their velocities."""

    def __init__(
        self,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        image_size: int,
        arm_joints: tuple[str, ...],
        cameras: Sequence[str] | None = None,
    ):
        super().__init__(model, data, image_size, cameras)
        self._arm_names = arm_joints
        self._arm_joints = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in arm_joints]
        self._arm_dofs = [int(model.jnt_dofadr[j]) for j in self._arm_joints]
        self._arm_qpos = [int(model.jnt_qposadr[j]) for j in self._arm_joints]
        # fixed by the model: computed once, not on every step
        low, high = hinge_bounds(model, self._arm_joints)
        speed = velocity_bounds(model, self._arm_joints)
        self._state_low, self._state_high = np.concatenate([low, -speed]), np.concatenate([high, speed])

    @property
    def state_names(self) -> list[str]:
        short = [name.removeprefix("r_").removesuffix("_joint") for name in self._arm_names]
        return [f"{n}.pos" for n in short] + [f"{n}.vel" for n in short]

    @property
    def state_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self._state_low.copy(), self._state_high.copy()

    def agent_pos(self) -> np.ndarray:
        pos = hinge_angles(self.model, self.data, self._arm_joints)
        vel = self.data.qvel[self._arm_dofs]
        return np.clip(np.concatenate([pos, vel]), self._state_low, self._state_high).astype(np.float32)


def hinge_angles(model: mujoco.MjModel, data: mujoco.MjData, joint_ids: list[int]) -> np.ndarray:
    """Joint angles of hinges; unlimited ones wrapped into [-pi, pi) so they stay bounded."""
    angles = np.array([data.qpos[model.jnt_qposadr[j]] for j in joint_ids], dtype=np.float64)
    unlimited = ~model.jnt_limited[joint_ids].astype(bool)
    angles[unlimited] = (angles[unlimited] + np.pi) % (2 * np.pi) - np.pi
    return angles


def hinge_bounds(
    model: mujoco.MjModel, joint_ids: list[int], margin: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of hinge_angles: the joint range widened by `margin` (limits are soft), or [-pi, pi]."""
    limited = model.jnt_limited[joint_ids].astype(bool)
    low = np.where(limited, model.jnt_range[joint_ids, 0] - margin, -np.pi)
    high = np.where(limited, model.jnt_range[joint_ids, 1] + margin, np.pi)
    return low, high


def velocity_bounds(model: mujoco.MjModel, joint_ids: list[int], fallback: float = 100.0) -> np.ndarray:
    """Per-joint speed limit: where the joint's damping balances its strongest actuator torque.

    Coupling between links can push a joint slightly past it for an instant; agent_pos clips
    there, so the observation always lies inside its Box.
    """
    limits = np.full(len(joint_ids), fallback)
    for i, joint in enumerate(joint_ids):
        dof = model.jnt_dofadr[joint]
        acting = [a for a in range(model.nu) if model.actuator_trnid[a, 0] == joint]
        torque = max(
            (abs(model.actuator_gear[a, 0]) * np.abs(model.actuator_ctrlrange[a]).max() for a in acting),
            default=0.0,
        )
        if torque > 0 and model.dof_damping[dof] > 0:
            limits[i] = torque / model.dof_damping[dof]
    return limits
