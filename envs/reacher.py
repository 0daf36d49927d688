"""Reacher: Gymnasium's Reacher-v5 physics, top and oblique cameras, and a Jacobian-transpose expert."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import mujoco
import numpy as np
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv
from wm_sim.envs.catalog import TASK_SPECS
from wm_sim.envs.rendering import CameraSpec
from wm_sim.envs.task import ArmTask

SUCCESS_DISTANCE = 0.02  # metres between fingertip and target centres (their radii are ~0.01)
CONTROL_WEIGHT = 1.0  # Reacher-v5's reward_control_weight

WALL = (0.45, 0.45, 0.50, 1.0)
# Straight down on the 0.4 m arena: the walls sit just inside the frame. The shipped model was
# trained on exactly these frames. Saturated, distinct colours and thickened links keep arm,
# fingertip and target legible at 64x64.
TOP_VIEW = CameraSpec(
    lookat=(0.0, 0.0, 0.0),
    distance=0.56,
    azimuth=90.0,
    elevation=-90.0,
    colours={
        "ground": (0.10, 0.11, 0.14, 1.0),
        "sideS": WALL,
        "sideE": WALL,
        "sideN": WALL,
        "sideW": WALL,
        "root": (0.7, 0.7, 0.7, 1.0),
        "link0": (1.0, 0.55, 0.10, 1.0),
        "link1": (0.15, 0.65, 1.0, 1.0),
        "fingertip": (1.0, 1.0, 1.0, 1.0),
        "target": (1.0, 0.12, 0.12, 1.0),
    },
    thickness={"link0": 2.2, "link1": 2.2, "fingertip": 1.8, "target": 3.0, "root": 1.5},
)
# Obliquely from one corner, styled as the top view: the same scene seen in perspective.
SIDE_VIEW = replace(TOP_VIEW, lookat=(-0.02, -0.02, 0.0), distance=0.58, azimuth=45.0, elevation=-45.0)
CAMERAS = {"top": TOP_VIEW, "side": SIDE_VIEW}


class ReacherTask(ArmTask):
    """Two-link planar arm; the target is visible only in the pixels, not in agent_pos."""

    name = "reacher"
    fps = TASK_SPECS["reacher"].fps
    episode_steps = TASK_SPECS["reacher"].episode_steps

    camera_names = tuple(CAMERAS)
    views = CAMERAS

    def __init__(self, image_size: int = 64, cameras: Sequence[str] | None = None):
        # Gymnasium's class gives the model, its start-state distribution and do_simulation;
        # rendering, reward and success are this task's own, computed from the physics state.
        self._gym = ReacherEnv(render_mode=None)
        super().__init__(
            self._gym.model, self._gym.data, image_size, arm_joints=("joint0", "joint1"), cameras=cameras
        )
        m = self.model
        self._tip = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "fingertip")
        self._target = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "target")
        self._base = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "body0")

    def _reset_physics(self, seed: int) -> None:
        self._gym.reset(seed=seed)

    def _advance(self, ctrl: np.ndarray) -> None:
        self._gym.do_simulation(ctrl, self._gym.frame_skip)

    def tip_to_target(self) -> np.ndarray:
        return self.data.xpos[self._target] - self.data.xpos[self._tip]

    def reward_and_success(self, ctrl: np.ndarray) -> tuple[float, bool, bool]:
        distance = float(np.linalg.norm(self.tip_to_target()))
        reward = -distance - CONTROL_WEIGHT * float(np.square(ctrl).sum())
        return reward, distance < SUCCESS_DISTANCE, False

    def goal(self) -> np.ndarray:
        """The target's position relative to the arm's base, (2,): fixed for the whole episode."""
        return (self.data.xpos[self._target][:2] - self.data.xpos[self._base][:2]).copy()

    def expert_action(self) -> np.ndarray:
        """Inverse kinematics to the target, then a PD controller on the joint angles."""
        return reacher_expert(self.data.qpos[self._arm_qpos], self.data.qvel[self._arm_dofs], self.goal())


def reacher_expert(q: np.ndarray, qvel: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """The expert's normalised action from joint angles q (2,), their velocities (2,) and the goal (2,).

    It needs nothing but what agent_pos holds and where the target is, so the same expert drives
    MuJoCo (reading the physics) and a world model (reading its predicted agent_pos).
    """
    q_goal = _two_link_ik(goal, LINK_LENGTHS, elbow_sign=np.sign(q[1]) or 1.0)
    error = q_goal - q
    error[0] = (error[0] + np.pi) % (2 * np.pi) - np.pi  # joint0 turns freely: take the short way
    return np.clip(EXPERT_KP * error - EXPERT_KD * qvel, -1.0, 1.0)


LINK_LENGTHS = (0.1, 0.11)  # root -> elbow, elbow -> fingertip centre (reacher.xml)


def fingertip(q: np.ndarray) -> np.ndarray:
    """The fingertip's position relative to the arm's base, (..., 2), from joint angles q (..., 2)."""
    l0, l1 = LINK_LENGTHS
    shoulder, reach = q[..., 0], q[..., 0] + q[..., 1]
    return np.stack(
        [l0 * np.cos(shoulder) + l1 * np.cos(reach), l0 * np.sin(shoulder) + l1 * np.sin(reach)], axis=-1
    )


EXPERT_KP = 0.3  # normalised torque per radian (gentle: Reacher-v5 charges |a|^2 per step)
EXPERT_KD = 0.05  # normalised torque per rad/s


def _two_link_ik(goal: np.ndarray, lengths: tuple[float, float], elbow_sign: float) -> np.ndarray:
    """Joint angles putting a planar two-link arm's tip at `goal` (or as close as it reaches)."""
    l0, l1 = lengths
    r2 = float(goal @ goal)
    cos_elbow = np.clip((r2 - l0 * l0 - l1 * l1) / (2 * l0 * l1), -1.0, 1.0)
    elbow = elbow_sign * np.arccos(cos_elbow)
    shoulder = np.arctan2(goal[1], goal[0]) - np.arctan2(l1 * np.sin(elbow), l0 + l1 * np.cos(elbow))
    return np.array([shoulder, elbow])
