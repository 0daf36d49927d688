"""Pusher: Gymnasium's Pusher-v5 physics, an oblique camera over the table, and a scripted pusher."""

from __future__ import annotations

import mujoco
import numpy as np
from gymnasium.envs.mujoco.pusher_v5 import PusherEnv

from wm_sim.envs.catalog import TASK_SPECS
from wm_sim.envs.rendering import CameraSpec
from wm_sim.envs.task import MujocoTask, hinge_angles, hinge_bounds, velocity_bounds

SUCCESS_DISTANCE = 0.05  # metres between puck and goal centres, in the table plane
# Pusher-v5's reward weights
NEAR_WEIGHT, DIST_WEIGHT, CONTROL_WEIGHT = 0.5, 1.0, 0.1
ARM_JOINTS = (
    "r_shoulder_pan_joint",
    "r_shoulder_lift_joint",
    "r_upper_arm_roll_joint",
    "r_elbow_flex_joint",
    "r_forearm_roll_joint",
    "r_wrist_flex_joint",
    "r_wrist_roll_joint",
)


class PusherTask(MujocoTask):
    """Seven-joint arm and a puck; the puck and goal are visible only in the pixels."""

    name = "pusher"
    fps = TASK_SPECS["pusher"].fps
    episode_steps = TASK_SPECS["pusher"].episode_steps

    def __init__(self, image_size: int = 64):
        self._gym = PusherEnv(render_mode=None)
        super().__init__(self._gym.model, self._gym.data, image_size)
        m = self.model
        self._arm_joints = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n) for n in ARM_JOINTS]
        self._arm_dofs = [int(m.jnt_dofadr[j]) for j in self._arm_joints]
        self._arm_qpos = [int(m.jnt_qposadr[j]) for j in self._arm_joints]
        self._mid_range = m.jnt_range[self._arm_joints].mean(axis=1)
        self._tip = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "tips_arm")
        self._hand = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "r_wrist_roll_link")
        self._object = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "object")
        self._goal = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "goal")

    def camera_spec(self) -> CameraSpec:
        return CameraSpec(
            lookat=(0.25, -0.2, -0.3),
            distance=1.3,
            azimuth=180.0,
            elevation=-60.0,
            colours={"table": (0.10, 0.11, 0.14, 1.0)},
        )

    def _reset_physics(self, seed: int) -> None:
        self._gym.reset(seed=seed)

    def _advance(self, ctrl: np.ndarray) -> None:
        self._gym.do_simulation(ctrl, self._gym.frame_skip)

    @property
    def state_names(self) -> list[str]:
        short = [n.removeprefix("r_").removesuffix("_joint") for n in ARM_JOINTS]
        return [f"{n}.pos" for n in short] + [f"{n}.vel" for n in short]

    @property
    def state_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        low, high = hinge_bounds(self.model, self._arm_joints)
        speed = velocity_bounds(self.model, self._arm_joints)
        return np.concatenate([low, -speed]), np.concatenate([high, speed])

    def agent_pos(self) -> np.ndarray:
        pos = hinge_angles(self.model, self.data, self._arm_joints)
        vel = self.data.qvel[self._arm_dofs]
        low, high = self.state_bounds
        return np.clip(np.concatenate([pos, vel]), low, high).astype(np.float32)

    def puck_to_goal(self) -> np.ndarray:
        return (self.data.xpos[self._goal] - self.data.xpos[self._object])[:2]

    def reward_and_success(self, ctrl: np.ndarray) -> tuple[float, bool, bool]:
        near = np.linalg.norm(self.data.xpos[self._object] - self.data.xpos[self._tip])
        dist = np.linalg.norm(self.data.xpos[self._object] - self.data.xpos[self._goal])
        reward = -NEAR_WEIGHT * near - DIST_WEIGHT * dist - CONTROL_WEIGHT * float(np.square(ctrl).sum())
        return float(reward), bool(np.linalg.norm(self.puck_to_goal()) < SUCCESS_DISTANCE), False

    def expert_action(self) -> np.ndarray:
        """Resolved-rate control of the hand's pose: over the puck, down behind it, then through to the goal.

        The phase is read from the physics state alone (no memory), so the expert is a pure function
        of the state and recovers on its own when the puck slips out of the scoop.
        """
        m, d = self.model, self.data
        puck, goal = d.xpos[self._object], d.xpos[self._goal]
        palm, rot = d.xpos[self._hand], d.xmat[self._hand].reshape(3, 3)
        heading = np.r_[rot[:2, 0], 0.0]
        to_goal = np.r_[goal[:2] - puck[:2], 0.0]
        # Push along puck->goal; once the puck is nearly there that direction is noise, so keep the hand's.
        push = to_goal if np.linalg.norm(to_goal) > SETTLE_DISTANCE else heading
        push /= np.linalg.norm(push) + 1e-9

        along, across = push @ (palm - puck), np.cross(push, palm - puck)[2]
        aligned = heading @ push > ALIGN_COS
        low = palm[2] < PUSH_HEIGHT + HEIGHT_TOLERANCE
        if low and aligned and -STANDOFF - 0.05 < along < -0.04 and abs(across) < CAPTURE_HALF_WIDTH:
            target = goal - (CONTACT_OFFSET - OVERSHOOT) * push  # engaged: drive the puck onto the goal
            target[2] = PUSH_HEIGHT
        else:
            target = puck - STANDOFF * push
            near = np.linalg.norm((palm - target)[:2]) < STAGING_TOLERANCE
            target[2] = PUSH_HEIGHT if near and aligned else HOVER_HEIGHT
            if palm[2] < HOVER_HEIGHT - HEIGHT_TOLERANCE and not near:
                target[:2] = palm[:2]  # too low to pass over the puck: rise first
        return self.from_ctrl(self._pose_torque(target, push))

    def _pose_torque(self, target: np.ndarray, heading: np.ndarray) -> np.ndarray:
        """Joint torques that move the palm to `target`, scoop level and its opening facing `heading`."""
        m, d = self.model, self.data
        palm, rot = d.xpos[self._hand], d.xmat[self._hand].reshape(3, 3)
        up = np.array([0.0, 0.0, 1.0 if rot[2, 2] >= 0 else -1.0])  # the U is symmetric: either face up
        desired = np.column_stack([heading, np.cross(up, heading), up])
        rot_error = 0.5 * sum(np.cross(rot[:, i], desired[:, i]) for i in range(3))
        pos_error = target - palm
        speed = np.linalg.norm(pos_error) * POS_GAIN
        velocity = pos_error * POS_GAIN * min(1.0, MAX_SPEED / (speed + 1e-9))
        twist = np.r_[velocity, ROT_GAIN * rot_error]

        jacp, jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        mujoco.mj_jacBody(m, d, jacp, jacr, self._hand)
        jac = np.vstack([jacp, jacr])[:, self._arm_dofs]
        jac_pinv = jac.T @ np.linalg.inv(jac @ jac.T + DLS_DAMPING**2 * np.eye(6))
        qpos = d.qpos[self._arm_qpos]
        posture = POSTURE_GAIN * (self._mid_range - qpos)
        qvel_des = jac_pinv @ twist + (np.eye(len(ARM_JOINTS)) - jac_pinv @ jac) @ posture
        return VEL_GAIN * (qvel_des - d.qvel[self._arm_dofs])


# The expert's geometry, in metres (heights are world z of the palm; the table is at -0.325).
PUSH_HEIGHT = -0.275  # palm level with the puck's centre
HOVER_HEIGHT = -0.17  # scoop clears the puck's top (-0.225) by a few centimetres
HEIGHT_TOLERANCE = 0.02
CONTACT_OFFSET = 0.07  # palm-bar centre to puck centre when touching: puck radius + capsule radius
STANDOFF = 0.13  # palm behind the puck's centre before descending
STAGING_TOLERANCE = 0.03
CAPTURE_HALF_WIDTH = 0.04  # lateral slack of the puck between the fingers (gap 0.16 m, puck 0.10 m)
OVERSHOOT = 0.01  # push the palm this far past the contact pose, against the contact's give
SETTLE_DISTANCE = 0.02  # below this puck->goal distance the push direction is kept from the hand
ALIGN_COS = 0.9  # cosine between the hand's heading and the push direction counted as aligned
# Gains of the resolved-rate controller.
POS_GAIN = 6.0  # 1/s: palm velocity per metre of error
MAX_SPEED = 0.6  # m/s: cap on the commanded palm speed
ROT_GAIN = 6.0  # 1/s: angular velocity per radian of orientation error
DLS_DAMPING = 0.05  # damping of the least-squares inverse (metres or radians)
POSTURE_GAIN = 1.0  # 1/s: null-space pull of the joints toward mid-range
VEL_GAIN = 2.0  # N m per rad/s of joint-velocity error
