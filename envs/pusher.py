"""Pusher: Gymnasium's Pusher-v5 physics, a steep and a side camera over the table, and a scripted pusher."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import mujoco
import numpy as np
from gymnasium.envs.mujoco.pusher_v5 import PusherEnv
from wm_sim.envs.catalog import TASK_SPECS
from wm_sim.envs.rendering import CameraSpec
from wm_sim.envs.task import ArmTask

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

# The arm's named link geoms (the scoop's capsules, the puck and the goal are unnamed in the model)
ARM_GEOMS = ("sp", "sl", "uar", "ua", "ef", "fr", "fa", "wf")

ARM_COLOUR = (0.25, 0.45, 0.85, 1.0)
# Steeply from above, looking back at the arm, framing where the puck starts, the goal and the hand.
# Steep, so the arm rarely covers the puck; the arm in blue so that the white puck and the grey scoop
# stand out from it at 64x64; the thin wrist link and the finger tips thickened. The shipped model
# was trained on exactly these frames.
TOP_VIEW = CameraSpec(
    lookat=(0.42, -0.2, -0.32),
    distance=0.9,
    azimuth=180.0,
    elevation=-72.0,
    colours={"table": (0.10, 0.11, 0.14, 1.0), **{name: ARM_COLOUR for name in ARM_GEOMS}},
    thickness={"wf": 3.0, "uar": 1.5, "fr": 1.5, "tip_arml": 2.0, "tip_armr": 2.0},
)
# Low, from the side of the table across from the arm, styled as the top view: the hand's height
# over the table shows, and the arm, reaching in from behind, does not cover the puck or the goal.
SIDE_VIEW = replace(TOP_VIEW, lookat=(0.4, -0.35, -0.25), distance=1.1, azimuth=270.0, elevation=-35.0)
CAMERAS = {"top": TOP_VIEW, "side": SIDE_VIEW}


class PusherTask(ArmTask):
    """Seven-joint arm and a puck; the puck and goal are visible only in the pixels."""

    name = "pusher"
    fps = TASK_SPECS["pusher"].fps
    episode_steps = TASK_SPECS["pusher"].episode_steps
    camera_names = tuple(CAMERAS)
    views = CAMERAS

    def __init__(self, image_size: int = 64, cameras: Sequence[str] | None = None):
        self._gym = PusherEnv(render_mode=None)
        super().__init__(self._gym.model, self._gym.data, image_size, arm_joints=ARM_JOINTS, cameras=cameras)
        m = self.model
        self._arm_range = m.jnt_range[self._arm_joints].copy()
        self._tip = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "tips_arm")
        self._hand = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "r_wrist_roll_link")
        self._scratch = mujoco.MjData(m)  # kinematics for the expert's inverse kinematics only
        self._object = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "object")
        self._goal = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "goal")

    def _reset_physics(self, seed: int) -> None:
        self._gym.reset(seed=seed)

    def _advance(self, ctrl: np.ndarray) -> None:
        self._gym.do_simulation(ctrl, self._gym.frame_skip)

    def puck_to_goal(self) -> np.ndarray:
        return (self.data.xpos[self._goal] - self.data.xpos[self._object])[:2]

    def reward_and_success(self, ctrl: np.ndarray) -> tuple[float, bool, bool]:
        near = np.linalg.norm(self.data.xpos[self._object] - self.data.xpos[self._tip])
        dist = np.linalg.norm(self.data.xpos[self._object] - self.data.xpos[self._goal])
        reward = -NEAR_WEIGHT * near - DIST_WEIGHT * dist - CONTROL_WEIGHT * float(np.square(ctrl).sum())
        return float(reward), bool(np.linalg.norm(self.puck_to_goal()) < SUCCESS_DISTANCE), False

    def expert_action(self) -> np.ndarray:
        """Over the puck, down behind it, then through it to the goal, with the puck in the scoop.

        The phase is read from the physics state alone (no memory), so the expert is a pure function of
        the state and starts over by itself when the puck slips out of the scoop.
        """
        d = self.data
        puck, goal = d.xpos[self._object], d.xpos[self._goal]
        palm, rot = d.xpos[self._hand], d.xmat[self._hand].reshape(3, 3)
        to_goal = np.r_[goal[:2] - puck[:2], 0.0]
        # Push along puck->goal; once the puck is nearly there that direction is noise, so keep the hand's.
        push = to_goal if np.linalg.norm(to_goal) > SETTLE_DISTANCE else np.r_[rot[:2, 0], 0.0]
        push /= np.linalg.norm(push) + 1e-9
        heading = self._heading(push)
        side = np.cross(UP, heading)
        # Where the puck should sit in the scoop: against the palm bar, pressed into the finger on the side
        # the hand moves towards when its heading is turned away from the push direction.
        slant = float(np.clip(np.cross(heading, push)[2] / np.sin(CORNER_ANGLE), -1.0, 1.0))
        seat = CONTACT_OFFSET * heading - CORNER_OFFSET * slant * side

        rel = puck - palm
        along, lateral = rel @ heading, rel @ side
        low = abs(palm[2] - PUSH_HEIGHT) < HEIGHT_TOLERANCE
        if low and SCOOP_DEPTH[0] < along < SCOOP_DEPTH[1] and abs(lateral) < SCOOP_HALF_WIDTH:
            # Puck in the scoop: keep the palm bar deep inside it (the contact is soft, see PUSH_DEPTH) until
            # it reaches the goal, then hold.
            target = puck - PUSH_DEPTH * push if np.linalg.norm(to_goal) > SETTLE_DISTANCE else palm.copy()
            target[2] = PUSH_HEIGHT
        else:
            target = puck - seat - APPROACH * push
            # Glide down while closing in, rather than hover then drop: every step away from the puck costs.
            gap = np.linalg.norm((palm - target)[:2]) - STAGING_TOLERANCE
            height = PUSH_HEIGHT + (HOVER_HEIGHT - PUSH_HEIGHT) * float(np.clip(gap / DESCENT_RAMP, 0.0, 1.0))
            if palm[2] < height - HEIGHT_TOLERANCE:
                target[:2] = palm[:2]  # too low to pass over the puck: rise first
            target[2] = height
        # Hops of at most MAX_HOP keep the palm near a straight line between poses far apart in joint space;
        # longer than the puck's own pace, so that the reach is over in about a second.
        hop = target - palm
        target = palm + hop * min(1.0, MAX_HOP / (np.linalg.norm(hop) + 1e-9))
        return self.from_ctrl(self._pose_torque(target, heading))

    @staticmethod
    def _heading(push: np.ndarray) -> np.ndarray:
        """The scoop's opening: the push direction, turned back to at most MAX_HEADING_ANGLE from +x.

        Pushes back towards the arm's side (-x) would need the wrist to turn the hand back on the arm;
        turned part way, the puck still wedges in a corner of the scoop and goes where the hand goes.
        """
        angle = min(np.arctan2(push[1], push[0]), MAX_HEADING_ANGLE)
        return np.array([np.cos(angle), np.sin(angle), 0.0])

    def _pose_torque(self, target: np.ndarray, heading: np.ndarray) -> np.ndarray:
        """Joint torques towards the arm pose that puts the palm at `target`, bar level, facing `heading`.

        The pose comes from inverse kinematics (see _inverse_kinematics): a velocity-level Jacobian
        controller started from the straight arm folds the elbow into its limit and never gets low near the
        shoulder. The torques are a PD law scaled by the arm's inertia, plus the joints' own damping, capped
        at MAX_TORQUE to keep the control cost down.
        """
        m, d = self.model, self.data
        goal_q = self._inverse_kinematics(target, heading)
        qpos, qvel = d.qpos[self._arm_qpos], d.qvel[self._arm_dofs]
        # Scale all joints' speeds together, so the arm moves on a straight line in joint space.
        qvel_des = JOINT_KP * (goal_q - qpos)
        qvel_des *= min(1.0, MAX_JOINT_SPEED / (np.abs(qvel_des).max() + 1e-9))
        mass = np.zeros((m.nv, m.nv))
        mujoco.mj_fullM(m, d, mass)
        mass = mass[np.ix_(self._arm_dofs, self._arm_dofs)]
        torque = JOINT_KD * mass @ (qvel_des - qvel) + m.dof_damping[self._arm_dofs] * qvel_des
        return np.clip(torque, -MAX_TORQUE, MAX_TORQUE)

    def _inverse_kinematics(self, target: np.ndarray, heading: np.ndarray) -> np.ndarray:
        """Joint angles (within limits) for palm at `target`, palm bar level, yaw along `heading`.

        Damped least squares on a scratch copy of the kinematics from each of IK_STARTS and from the
        current pose; the closest fit wins, ties going to the pose nearest the current one. The hand's
        pitch is left free: the wrist needs it to reach low near the shoulder.
        """
        current = self.data.qpos[self._arm_qpos]
        best, best_cost = current, np.inf
        for start in (current, *IK_STARTS):
            qpos, error = self._solve_ik(np.array(start, dtype=np.float64), target, heading)
            cost = error @ error + IK_MOTION_COST * np.sum(np.square(qpos - current))
            if cost < best_cost:
                best, best_cost = qpos, cost
        return best

    def _solve_ik(
        self, qpos: np.ndarray, target: np.ndarray, heading: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Damped least-squares iterations from `qpos`, clipped to the joint limits: (angles, error)."""
        m, scratch = self.model, self._scratch
        low, high = self._arm_range[:, 0], self._arm_range[:, 1]
        jacp, jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        for i in range(IK_ITERATIONS + 1):
            scratch.qpos[self._arm_qpos] = qpos
            mujoco.mj_kinematics(m, scratch)
            palm, rot = scratch.xpos[self._hand], scratch.xmat[self._hand].reshape(3, 3)
            yaw_error = np.arctan2(np.cross(rot[:, 0], heading)[2], rot[:2, 0] @ heading[:2])
            # The U is symmetric, so upside down counts as level too.
            roll = np.arctan(rot[2, 1] / (rot[2, 2] + np.copysign(1e-9, rot[2, 2])))
            error = np.r_[target - palm, IK_ANGLE_WEIGHT * yaw_error, -IK_ANGLE_WEIGHT * roll]
            if i == IK_ITERATIONS:
                break
            mujoco.mj_comPos(m, scratch)  # the Jacobian needs the com-based motion frames
            mujoco.mj_jacBody(m, scratch, jacp, jacr, self._hand)
            rot_jac = IK_ANGLE_WEIGHT * jacr[:, self._arm_dofs]
            jac = np.vstack([jacp[:, self._arm_dofs], UP @ rot_jac, rot[:, 0] @ rot_jac])
            step = jac.T @ np.linalg.solve(jac @ jac.T + IK_DAMPING**2 * np.eye(len(error)), error)
            qpos = np.clip(qpos + step, low, high)
        return qpos, error


UP = np.array([0.0, 0.0, 1.0])
# The expert's geometry, in metres (heights are world z of the palm; the table is at -0.325).
PUSH_HEIGHT = -0.275  # palm level with the puck's centre
HOVER_HEIGHT = -0.17  # scoop clears the puck's top (-0.225) by a few centimetres
HEIGHT_TOLERANCE = 0.025
CONTACT_OFFSET = 0.07  # palm-bar centre to puck centre when touching: puck radius + capsule radius
CORNER_OFFSET = 0.03  # puck centre's sideways slack between the fingers (gap 0.16, puck 0.10)
CORNER_ANGLE = np.deg2rad(20.0)  # heading offset (rad) from which the puck is seated fully in a corner
APPROACH = 0.03  # extra distance behind the seat where the scoop descends
SCOOP_DEPTH = (-0.01, 0.2)  # puck centre ahead of the palm (min, max) counted as in or entering the scoop
SCOOP_HALF_WIDTH = 0.045
STAGING_TOLERANCE = 0.025
DESCENT_RAMP = 0.1  # m: horizontal distance from the staging point over which the palm glides down
# m: palm behind the puck's centre while pushing. Pusher-v5's puck weighs 8 mg, so MuJoCo's contact
# regularisation (scaled by the body's inverse weight, ~1.3e5 /kg) makes its contacts ~1e4 times softer
# than the arm's: the push force grows with the overlap and stays near 0.02 N, which against the
# puck's joint damping (0.5 N s/m) moves it at no more than about 5 cm/s.
PUSH_DEPTH = 0.005
SETTLE_DISTANCE = 0.02  # below this puck->goal distance the push direction is kept from the hand
MAX_HEADING_ANGLE = np.deg2rad(100.0)  # rad from +x: the furthest the hand turns back
# The arm controller.
MAX_HOP = 0.2  # m: the furthest ahead of the palm that the arm is sent in one step
# rad: arm poses the inverse kinematics starts from, one per family of pushing poses
IK_STARTS = (
    (0.73, 0.94, -0.24, -1.1, 0.68, 0.0, -0.54),
    (0.56, 0.74, -0.7, -0.85, -0.56, -0.67, 1.14),
    (0.97, 0.97, 0.17, -1.15, -0.49, -0.52, 0.49),
    (0.44, 0.69, -1.24, -1.1, -1.5, -0.05, -0.83),
)
IK_ITERATIONS = 15
IK_DAMPING = 0.03  # damping of the least-squares inverse (m)
IK_ANGLE_WEIGHT = 0.1  # m per rad: how orientation errors count against position errors
IK_MOTION_COST = 1e-4  # m^2 per rad^2: prefer, among equal fits, the pose nearest the current one
JOINT_KP = 5.0  # 1/s: joint velocity per radian of error
MAX_JOINT_SPEED = 3.0  # rad/s: the fastest joint, the others scaled with it
# Low gains and a torque cap, as the reward charges 0.1 * sum(ctrl^2) per step: the arm glides to the
# puck rather than snapping there (full torque on every joint would cost 2.8 per step).
JOINT_KD = 4.0  # 1/s: joint acceleration per rad/s of velocity error (times the arm's inertia)
MAX_TORQUE = 1.0  # N m: caps the control cost at 0.7 per step (the motors allow 2)
