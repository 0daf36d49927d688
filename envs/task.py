"""The physics task: MuJoCo with camera pixels, proprioception, a reward from the physics state.

Every task exposes the same small surface, so the collector, the Gymnasium twin and (later) the
verification harness treat them alike. Actions are always normalised to [-1, 1] and mapped
linearly onto the actuators' native range here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import mujoco
import numpy as np
from wm_sim.envs.rendering import CameraSpec, OffscreenCamera

from wm_sim.errors import WmSimError

# The full integration state: time, qpos, qvel, act, warm-start accelerations, controls, mocap,
# applied forces, user data. Restoring it replays a trajectory bit for bit.
PHYSICS_STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION


@dataclass
class StepResult:
    """One transition of a task: the observation after the action and what the physics says of it."""

    obs: dict[str, np.ndarray]
    reward: float
    terminated: bool
    success: bool
    info: dict = field(default_factory=dict)


class MujocoTask(ABC):
    """A MuJoCo physics environment returning pixels, proprioception, true reward and success."""

    name: str
    fps: float
    episode_steps: int
    camera_names: tuple[str, ...] = ("top",)

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, image_size: int):
        self.model = model
        self.data = data
        self.image_size = image_size
        self.ctrl_low = model.actuator_ctrlrange[:, 0].astype(np.float64).copy()
        self.ctrl_high = model.actuator_ctrlrange[:, 1].astype(np.float64).copy()
        self._camera: OffscreenCamera | None = None
        self._state_size = mujoco.mj_stateSize(model, PHYSICS_STATE_SPEC)

    # --- what a subclass provides -------------------------------------------------------------

    @abstractmethod
    def camera_spec(self) -> CameraSpec:
        """Where the camera looks from, and the render-only styling that makes 64x64 frames legible."""

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

    def reset(self, seed: int) -> dict[str, np.ndarray]:
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

    def observe(self) -> dict[str, np.ndarray]:
        return {"pixels": self.render(), "agent_pos": self.agent_pos()}

    def render(self) -> np.ndarray:
        """The camera frame of the current state, (H, W, 3) uint8."""
        if self._camera is None:
            self._camera = OffscreenCamera(self.model, self.image_size, self.camera_spec())
        return self._camera.render(self.data)

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
        if self._camera is not None:
            self._camera.close()
            self._camera = None


class ArmTask(MujocoTask):
    """A task whose proprioception is its arm's hinge angles, then their velocities."""

    def __init__(
        self, model: mujoco.MjModel, data: mujoco.MjData, image_size: int, arm_joints: tuple[str, ...]
    ):
        super().__init__(model, data, image_size)
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
