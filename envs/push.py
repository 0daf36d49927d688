"""Push: reacher's two-link arm with a downward finger slides a puck onto a goal disc on a table.

The puck is a free body resting on the table with real contact friction, so it moves only while
the finger pushes it and stops soon after. The goal is a mocap disc, so it sits in the physics
state (and replays) without any dynamics of its own. Neither is in agent_pos: the model sees
them in the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import mujoco
import numpy as np
from wm_sim.envs.catalog import TASK_SPECS
from wm_sim.envs.rendering import CameraSpec, metres_per_pixel
from wm_sim.envs.task import ArmTask

from wm_sim.errors import WmSimError

# --- geometry (metres) ------------------------------------------------------------------------
LINK_LENGTHS = (0.1, 0.11)  # shoulder -> elbow, elbow -> finger axis: reacher's arm
LINK_RADIUS, LINK_DRAWN = 0.01, 1.4  # the links' radius, and how much thicker the cameras draw them
ELBOW_LIMIT = 3.0  # rad, as reacher: folded, the finger passes under the upper link, near the shoulder
ARM_HEIGHT = 0.05  # the links pass over the puck (0.02 tall); only the finger reaches down to it
PUCK_RADIUS, PUCK_HALF_HEIGHT, PUCK_MASS = 0.025, 0.01, 0.1  # a 5 cm, 100 g plastic puck
FINGER_RADIUS = 0.015  # thicker than the drawn links, so that it shows from above
GOAL_RADIUS = 0.025  # drawn as large as the success tolerance: the puck's centre inside it succeeds
# the task's options (PushTask(puck_mass=, goal_radius=)): a puck the two motors can still push,
# a goal the start states can still keep clear of the arm
PUCK_MASS_RANGE = (0.01, 0.5)  # kg: at 1 kg the expert moved it 1-3 cm in 4 s in two seeds of three
GOAL_RADIUS_RANGE = (0.005, 0.05)  # m
FRICTION = 0.3  # sliding friction of puck on table: plastic on laminate
FINGER_FRICTION = 0.1  # finger on puck (the finger's geom has priority): a smooth rod slides along it
WALL = 0.25  # half-width of the walled arena

# --- start states -----------------------------------------------------------------------------
PUCK_REACH = (0.09, 0.15)  # puck's distance from the shoulder: the finger can get behind it
GOAL_REACH = (0.07, 0.16)
MIN_SEPARATION = 0.08  # puck to goal
MIN_PATH_CLEARANCE = 0.07  # the straight push keeps this far from the shoulder, which it cannot cross
ARM_CLEARANCE = 0.02  # between the drawn arm and puck or goal at the start: both are seen whole

# --- reward and success -----------------------------------------------------------------------
SUCCESS_DISTANCE = GOAL_RADIUS  # puck centre to goal centre, in the table plane: inside the disc
REACH_WEIGHT = 0.2  # the finger's distance to the puck's rim, a shaping term
CONTROL_WEIGHT = 0.01  # per unit of normalised action squared

STEPS_PER_FRAME = 4  # x timestep 0.005 s: 50 control steps per second


def _xml(puck_mass: float, goal_radius: float) -> str:
    return f"""
<mujoco model="push">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.005" integrator="implicitfast" gravity="0 0 -9.81"/>
  <!-- frames up to 512 pixels (make_task's limit); coarse primitives: at 64x64 they look the same,
       and a software renderer draws them ~3x faster -->
  <visual><global offwidth="512" offheight="512"/><quality numslices="12" numstacks="6"/></visual>
  <default>
    <joint armature="0.005" damping="0.1"/>
    <geom contype="0" conaffinity="0" density="1000" friction="{FRICTION} 0.005 0.0001"/>
    <motor ctrlrange="-1 1" gear="0.5"/>
  </default>
  <worldbody>
    <!-- contype 1: table and walls; the puck (conaffinity 3) touches them and the finger (contype 2) -->
    <geom name="ground" type="plane" size="{WALL + 0.05} {WALL + 0.05} 0.05" contype="1" rgba="0.9 0.9 0.9 1"/>
    <geom name="sideS" type="capsule" fromto="-{WALL} -{WALL} .02  {WALL} -{WALL} .02" size=".01" contype="1"/>
    <geom name="sideE" type="capsule" fromto=" {WALL} -{WALL} .02  {WALL}  {WALL} .02" size=".01" contype="1"/>
    <geom name="sideN" type="capsule" fromto="-{WALL}  {WALL} .02  {WALL}  {WALL} .02" size=".01" contype="1"/>
    <geom name="sideW" type="capsule" fromto="-{WALL} -{WALL} .02 -{WALL}  {WALL} .02" size=".01" contype="1"/>
    <geom name="root" type="cylinder" fromto="0 0 0 0 0 {ARM_HEIGHT}" size=".012"/>
    <body name="body0" pos="0 0 {ARM_HEIGHT}">
      <joint name="joint0" type="hinge" axis="0 0 1"/>
      <geom name="link0" type="capsule" fromto="0 0 0 {LINK_LENGTHS[0]} 0 0" size="{LINK_RADIUS}"/>
      <body name="body1" pos="{LINK_LENGTHS[0]} 0 0">
        <joint name="joint1" type="hinge" axis="0 0 1" range="-{ELBOW_LIMIT} {ELBOW_LIMIT}"/>
        <geom name="link1" type="capsule" fromto="0 0 0 {LINK_LENGTHS[1]} 0 0" size="{LINK_RADIUS}"/>
        <body name="fingertip" pos="{LINK_LENGTHS[1]} 0 0">
          <geom name="fingertip" type="capsule" fromto="0 0 0 0 0 -{ARM_HEIGHT - 0.015}"
                size="{FINGER_RADIUS}" contype="2" priority="1" friction="{FINGER_FRICTION} 0.005 0.0001"/>
        </body>
      </body>
    </body>
    <body name="puck" pos="0.1 0 {PUCK_HALF_HEIGHT}">
      <freejoint name="puck"/>
      <geom name="puck" type="cylinder" size="{PUCK_RADIUS} {PUCK_HALF_HEIGHT}" mass="{puck_mass}"
            conaffinity="3"/>
    </body>
    <body name="goal" mocap="true" pos="-0.1 0 0">
      <geom name="goal" type="cylinder" size="{goal_radius} 0.0005" pos="0 0 0.0006"/>
    </body>
  </worldbody>
  <actuator>
    <motor name="joint0" joint="joint0"/>
    <motor name="joint1" joint="joint1"/>
  </actuator>
</mujoco>
"""


WALL_COLOUR = (0.45, 0.45, 0.50, 1.0)
# Straight down on the arena, styled as reacher's top view (orange and blue links, white finger)
# with a green puck and a red goal disc, so each stays legible at 64x64.
TOP_VIEW = CameraSpec(
    lookat=(0.0, 0.0, 0.0),
    distance=0.62,
    azimuth=90.0,
    elevation=-90.0,
    colours={
        "ground": (0.10, 0.11, 0.14, 1.0),
        **{name: WALL_COLOUR for name in ("sideS", "sideE", "sideN", "sideW")},
        "root": (0.7, 0.7, 0.7, 1.0),
        "link0": (1.0, 0.55, 0.10, 1.0),
        "link1": (0.15, 0.65, 1.0, 1.0),
        "fingertip": (1.0, 1.0, 1.0, 1.0),
        "puck": (0.15, 0.95, 0.25, 1.0),
        "goal": (1.0, 0.12, 0.12, 1.0),
    },
    thickness={"link0": LINK_DRAWN, "link1": LINK_DRAWN, "root": 1.5},
)
TOP_VIEW_FOVY = 45.0  # degrees: MuJoCo's default vertical field of view, which _xml keeps
# Obliquely from one corner, styled as the top view: the puck's and the finger's height shows.
SIDE_VIEW = replace(TOP_VIEW, lookat=(0.0, 0.0, 0.0), distance=0.72, azimuth=45.0, elevation=-45.0)
CAMERAS = {"top": TOP_VIEW, "side": SIDE_VIEW}


class PushTask(ArmTask):
    """Two-link arm, a free puck and a goal; puck and goal are visible only in the pixels."""

    name = "push"
    fps = TASK_SPECS["push"].fps
    episode_steps = TASK_SPECS["push"].episode_steps
    camera_names = tuple(CAMERAS)
    views = CAMERAS

    def __init__(
        self,
        image_size: int = 64,
        cameras: Sequence[str] | None = None,
        puck_mass: float = PUCK_MASS,
        goal_radius: float = GOAL_RADIUS,
    ):
        for name, value, (low, high), unit in (
            ("puck_mass", puck_mass, PUCK_MASS_RANGE, "kg"),
            ("goal_radius", goal_radius, GOAL_RADIUS_RANGE, "m"),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise WmSimError(f"push: {name} must be a number in [{low}, {high}] {unit}, got {value!r}")
        self.goal_radius = float(goal_radius)  # the success tolerance too: the puck's centre inside it
        model = mujoco.MjModel.from_xml_string(_xml(float(puck_mass), self.goal_radius))
        super().__init__(
            model, mujoco.MjData(model), image_size, arm_joints=("joint0", "joint1"), cameras=cameras
        )
        m = self.model
        self._tip = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "fingertip")
        self._puck = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "puck")
        puck_joint = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "puck")
        self._puck_qpos = int(m.jnt_qposadr[puck_joint])
        self._goal_mocap = int(m.body_mocapid[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "goal")])

    def _reset_physics(self, seed: int) -> None:
        q, puck, goal = sample_start(np.random.default_rng(seed), self.goal_radius)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._arm_qpos] = q
        self.data.qpos[self._puck_qpos : self._puck_qpos + 7] = [*puck, PUCK_HALF_HEIGHT, 1.0, 0.0, 0.0, 0.0]
        self.data.mocap_pos[self._goal_mocap] = [*goal, 0.0]

    def _advance(self, ctrl: np.ndarray) -> None:
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=STEPS_PER_FRAME)

    def puck(self) -> np.ndarray:
        """The puck's centre in the table plane, (2,)."""
        return self.data.xpos[self._puck][:2].copy()

    def goal(self) -> np.ndarray:
        """The goal's centre in the table plane, (2,): fixed for the whole episode."""
        return self.data.mocap_pos[self._goal_mocap][:2].copy()

    def finger(self) -> np.ndarray:
        """The finger's axis in the table plane, (2,)."""
        return self.data.xpos[self._tip][:2].copy()

    def puck_to_goal(self) -> np.ndarray:
        return self.goal() - self.puck()

    def reward_and_success(self, ctrl: np.ndarray) -> tuple[float, bool, bool]:
        distance = float(np.linalg.norm(self.puck_to_goal()))
        reward = float(push_reward(self.puck(), self.finger(), self.goal(), self.from_ctrl(ctrl)))
        return reward, distance < self.goal_radius, False

    def expert_action(self) -> np.ndarray:
        """Behind the puck on the line to the goal, then push along it (see push_expert)."""
        return push_expert(
            self.data.qpos[self._arm_qpos], self.data.qvel[self._arm_dofs], self.puck(), self.goal()
        )


def table_point(pixel: np.ndarray, image_size: int, height: float = 0.0) -> np.ndarray:
    """The table-plane (x, y), (..., 2), of a point `height` above the table that the top view
    shows at (row, column) `pixel` (..., 2) of a square frame: how a frame's object centre becomes
    a position a controller can use. The view looks straight down with +x to the right and +y up;
    a raised point is nearer the camera, so it spans fewer metres per pixel."""
    pixel = np.asarray(pixel, dtype=np.float64)
    metres = metres_per_pixel(TOP_VIEW, TOP_VIEW_FOVY, image_size, height)
    centre = (image_size - 1) / 2
    x = TOP_VIEW.lookat[0] + (pixel[..., 1] - centre) * metres
    y = TOP_VIEW.lookat[1] - (pixel[..., 0] - centre) * metres
    return np.stack([x, y], axis=-1)


def push_reward(puck: np.ndarray, finger: np.ndarray, goal: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Push's reward (...,) from table-plane points (..., 2) and normalised actions (..., 2): the
    puck's distance to the goal, the finger's gap to the puck's rim (zero while touching it) as a
    shaping term, and a small control cost."""
    distance = np.linalg.norm(goal - puck, axis=-1)
    gap = np.maximum(0.0, np.linalg.norm(puck - finger, axis=-1) - PUCK_RADIUS - FINGER_RADIUS)
    return -distance - REACH_WEIGHT * gap - CONTROL_WEIGHT * np.square(action).sum(-1)


def observed_reward(
    frames: np.ndarray, agent_pos: np.ndarray, goal: np.ndarray, action: np.ndarray, last_puck: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Push's reward as observations show it, for frames the physics never made (imagined ones):
    the puck where top-view frames (B, S, S, 3) uint8 show it (`last_puck` (B, 2) where a frame
    shows too little of it), the finger from agent_pos's joint angles, the goal known at the start
    (B, 2). Returns (rewards (B,), the puck used (B, 2))."""
    puck = puck_seen(frames, last_puck)
    finger = fingertip(np.asarray(agent_pos, dtype=np.float64)[:, :2])
    return push_reward(puck, finger, goal, action), puck


def puck_seen(frames: np.ndarray, last: np.ndarray) -> np.ndarray:
    """The puck's centre (B, 2) where top-view frames (B, S, S, 3) show it, and `last` (B, 2) (the
    last place seen; NaN: never) where a frame shows too little of it (the arm passes over it)."""
    seen = puck_in_frames(frames)
    return np.where(np.isnan(seen), last, seen)


def puck_in_frames(frames: np.ndarray) -> np.ndarray:
    """The puck's table-plane centre (B, 2) as top-view frames (B, S, S, 3) uint8 show it (read
    from its colour, its top face's height); NaN where a frame shows too little of it."""
    import torch

    from wm_sim.metrics import object_centre

    frames = np.asarray(frames)
    pixels = torch.from_numpy(frames).float() / 255.0
    centre = object_centre(pixels, TASK_SPECS["push"].object_rgb).numpy()
    return table_point(centre, frames.shape[-2], height=2 * PUCK_HALF_HEIGHT)


def sample_start(
    rng: np.random.Generator, goal_radius: float = GOAL_RADIUS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(arm angles (2,), puck (2,), goal (2,)) of a start state, drawn until it is a fair one.

    Fair: puck and goal within reach and apart, the straight push clear of the shoulder, and the
    arm covering neither in the top view.
    """
    while True:
        q = np.array([rng.uniform(-np.pi, np.pi), rng.uniform(-ELBOW_LIMIT + 0.3, ELBOW_LIMIT - 0.3)])
        puck, goal = _in_annulus(rng, PUCK_REACH), _in_annulus(rng, GOAL_REACH)
        if np.linalg.norm(goal - puck) < MIN_SEPARATION:
            continue
        if _distance_to_segment(np.zeros(2), puck, goal) < MIN_PATH_CLEARANCE:
            continue
        elbow = np.array([np.cos(q[0]), np.sin(q[0])]) * LINK_LENGTHS[0]
        tip = fingertip(q)
        arm_gap = min(
            min(_distance_to_segment(p, np.zeros(2), elbow), _distance_to_segment(p, elbow, tip))
            - radius
            - LINK_RADIUS * LINK_DRAWN
            for p, radius in ((puck, PUCK_RADIUS), (goal, goal_radius))
        )
        if arm_gap >= ARM_CLEARANCE:
            return q, puck, goal


def _in_annulus(rng: np.random.Generator, radii: tuple[float, float]) -> np.ndarray:
    radius, angle = rng.uniform(*radii), rng.uniform(-np.pi, np.pi)
    return radius * np.array([np.cos(angle), np.sin(angle)])


def _distance_to_segment(point: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip((point - a) @ ab / (ab @ ab + 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(point - (a + t * ab)))


def fingertip(q: np.ndarray) -> np.ndarray:
    """The finger's position relative to the shoulder, (..., 2), from joint angles q (..., 2)."""
    l0, l1 = LINK_LENGTHS
    q0, q01 = q[..., 0], q[..., 0] + q[..., 1]
    return np.stack([l0 * np.cos(q0) + l1 * np.cos(q01), l0 * np.sin(q0) + l1 * np.sin(q01)], axis=-1)


# --- the scripted expert ----------------------------------------------------------------------
CONTACT = PUCK_RADIUS + FINGER_RADIUS  # finger axis to puck centre when touching
ORBIT = CONTACT + 0.015  # the finger circles the puck this far out to get behind it
PUSH_CONE = 0.3  # the finger counts as behind the puck within this lateral/along ratio (~17 degrees)
PUSH_LEAD = 0.02  # how far ahead of the contact point the finger is sent while pushing
SETTLE_DISTANCE = 0.006  # puck this close to the goal: stop pushing, step back
MAX_ORBIT_STEP = np.deg2rad(50.0)  # the furthest round the puck a waypoint is set
MAX_HOP = 0.03  # the furthest from the finger a target is set: the arm moves on near-straight lines
EXPERT_KP = 3.0  # normalised torque per radian
EXPERT_KD = 0.05  # normalised torque per rad/s


def push_expert(q: np.ndarray, qvel: np.ndarray, puck: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """The expert's normalised action from joint angles and velocities (2,) and puck and goal (2,).

    A pure function of the state (no memory): re-approaching after the puck drifts off the line
    needs no phase to be remembered.
    """
    finger = fingertip(q)
    hop = finger_target(finger, puck, goal) - finger
    target = finger + hop * min(1.0, MAX_HOP / (np.linalg.norm(hop) + 1e-9))
    error = _two_link_ik(target, elbow_sign=np.sign(q[1]) or 1.0) - q
    error[0] = (error[0] + np.pi) % (2 * np.pi) - np.pi  # joint0 turns freely: take the short way
    return np.clip(EXPERT_KP * error - EXPERT_KD * qvel, -1.0, 1.0)


def finger_target(finger: np.ndarray, puck: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Where the finger should go next: behind the puck on the goal line, or on through it."""
    to_goal = goal - puck
    distance = float(np.linalg.norm(to_goal))
    rel = finger - puck
    if distance < SETTLE_DISTANCE:  # there: back away from the puck so it is left at rest
        return puck + rel / (np.linalg.norm(rel) + 1e-9) * ORBIT
    push = to_goal / distance
    side = np.array([-push[1], push[0]])
    along, lateral = rel @ push, rel @ side
    if along < -0.6 * CONTACT and abs(lateral) < PUSH_CONE * -along:
        # behind it: the contact point on the line, moved on towards the goal; a finger off the
        # line is drawn back onto it, which turns the puck back towards the goal
        return puck + push * (min(distance, PUSH_LEAD) - CONTACT)
    staging = puck - ORBIT * push
    if _distance_to_segment(puck, finger, staging) >= CONTACT + 0.005:
        return staging
    # the way to the staging point passes the puck: circle round it, on the side the finger is
    angle = np.arctan2(rel[1], rel[0])
    turn = (np.arctan2(-push[1], -push[0]) - angle + np.pi) % (2 * np.pi) - np.pi
    angle += np.clip(turn, -MAX_ORBIT_STEP, MAX_ORBIT_STEP)
    return puck + ORBIT * np.array([np.cos(angle), np.sin(angle)])


def _two_link_ik(target: np.ndarray, elbow_sign: float) -> np.ndarray:
    """Joint angles putting the finger at `target` (or as close as the arm reaches)."""
    l0, l1 = LINK_LENGTHS
    r2 = float(target @ target)
    cos_elbow = np.clip((r2 - l0 * l0 - l1 * l1) / (2 * l0 * l1), np.cos(ELBOW_LIMIT), 1.0)
    elbow = elbow_sign * np.arccos(cos_elbow)
    shoulder = np.arctan2(target[1], target[0]) - np.arctan2(l1 * np.sin(elbow), l0 + l1 * np.cos(elbow))
    return np.array([shoulder, elbow])
