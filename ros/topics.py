"""The topic contract between `wm-sim ros serve` and `RosEnv`: names, message types, QoS, time.

Both ends import this module, so a topic renamed or a QoS changed on one side changes on the
other. ROS itself is imported lazily (`wm_sim.optional.require`): importing this module needs
no ROS install, and a missing one is one error naming the `wm-sim[ros]` extra.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from wm_sim.errors import WmSimError
from wm_sim.optional import require

# Topic and service names, relative to the namespace (default /wm_sim): /wm_sim/commands, ...
COMMANDS = (
    "commands"  # std_msgs/Float64MultiArray: the raw action, as ros2_control's forward controller takes it
)
IMAGE = "image_raw"  # sensor_msgs/Image, rgb8, sensor-data QoS; several cameras: <camera>/image_raw
JOINT_STATES = "joint_states"  # sensor_msgs/JointState: the (predicted) proprioception
REWARD = "reward"  # std_msgs/Float32
DONE = "done"  # std_msgs/Bool: the episode is over, terminated or truncated
TERMINATED = "terminated"  # std_msgs/Bool: over because the task ended it (done and not this: truncated)
RESET = "reset"  # std_srvs/Trigger
PAUSE = "pause"  # std_srvs/SetBool
CLOCK = "/clock"  # rosgraph_msgs/Clock: simulated time, absolute (what use_sim_time nodes read)
DIAGNOSTICS = "/diagnostics"  # diagnostic_msgs/DiagnosticArray: realtime overruns

# The serving node's parameter that seeds the next reset (Trigger carries no arguments).
RESET_SEED_PARAMETER = "reset_seed"
# Its read-only parameters naming the cameras and, in the same order, their image topics.
CAMERAS_PARAMETER = "cameras"
IMAGE_TOPICS_PARAMETER = "image_topics"


def image_topics(cameras: tuple[str, ...] | list[str]) -> list[str]:
    """Each camera's image topic, relative to the namespace, in the cameras' order.

    One camera keeps the single-camera name (`image_raw`), so one-camera clients never change;
    several follow the ROS camera-driver layout, `<camera>/image_raw`, one topic per camera.
    """
    if len(cameras) == 1:
        return [IMAGE]
    for camera in cameras:
        if not _is_token(camera):
            raise WmSimError(
                f"camera {camera!r} cannot name a ROS topic ({camera}/{IMAGE}): expected ASCII letters, "
                "digits and single underscores, starting with a letter"
            )
    if len(set(cameras)) != len(cameras):
        raise WmSimError(f"camera names must differ to get a topic each, got {list(cameras)}")
    return [f"{camera}/{IMAGE}" for camera in cameras]


def reset_reply(episode: int, stamp_ns: int) -> str:
    """The reset service's message: says the stamp of the episode's first observation."""
    return f"episode {episode} started; stamp_ns={stamp_ns}"


def reset_stamp(message: str) -> int | None:
    """The stamp in a `reset_reply`, or None for another server's reply."""
    match = re.search(r"stamp_ns=(\d+)", message)
    return int(match.group(1)) if match else None


def join(namespace: str, name: str) -> str:
    """`name` under `namespace` (absolute names stay as they are): ('/wm_sim', 'commands') -> '/wm_sim/commands'."""
    if name.startswith("/"):
        return name
    return "/" + "/".join(part for part in (*namespace.strip("/").split("/"), name) if part)


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # a ROS name token: ASCII, no leading digit


def _is_token(text: str) -> bool:
    return bool(_NAME.fullmatch(text)) and "__" not in text


def check_namespace(namespace: str) -> str:
    """A valid absolute ROS namespace, or one error saying what a namespace may hold."""
    parts = namespace.strip("/").split("/") if namespace.strip("/") else []
    if not all(_is_token(part) for part in parts):
        raise WmSimError(
            f"namespace {namespace!r} is not a valid ROS namespace: expected '/'-separated names of ASCII "
            "letters, digits and single underscores, each starting with a letter (e.g. /wm_sim or /robot1/sim)"
        )
    return "/" + "/".join(parts)


def check_node_name(name: str) -> str:
    """A valid ROS node name, or one error saying what a node name may hold."""
    if not _is_token(name):
        raise WmSimError(
            f"node_name {name!r} is not a valid ROS node name: expected ASCII letters, digits and single "
            "underscores, starting with a letter (e.g. simulator)"
        )
    return name


class Throttle:
    """At most one warning per `every` seconds for each reason: a flood of one kind never hides another."""

    def __init__(self, every: float = 2.0):
        self.every = every
        self._last: dict[str, float] = {}

    def __call__(self, reason: str) -> bool:
        """True when a warning for `reason` may be logged now (and counts it as logged)."""
        now = time.monotonic()
        if now - self._last.get(reason, -self.every) < self.every:
            return False
        self._last[reason] = now
        return True


def use_local_discovery(localhost_only: bool) -> None:
    """Keep DDS discovery on this host unless asked otherwise (set before rclpy.init).

    A value the user already exported wins: a team that wants the LAN says so in its shell.
    """
    if localhost_only:
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


@dataclass(frozen=True)
class Qos:
    """The QoS profiles of the contract, built once rclpy is importable."""

    sensor: Any  # images: best effort, keep last 5, as cameras publish
    reliable: Any  # commands, joint states, reward, done: reliable, keep last 10

    @classmethod
    def make(cls) -> Qos:
        qos = require("rclpy").qos
        return cls(
            sensor=qos.qos_profile_sensor_data,
            reliable=qos.QoSProfile(
                depth=10,
                reliability=qos.ReliabilityPolicy.RELIABLE,
                history=qos.HistoryPolicy.KEEP_LAST,
            ),
        )


def time_msg(seconds: float) -> Any:
    """builtin_interfaces/Time of simulated `seconds`, exact in nanoseconds."""
    from builtin_interfaces.msg import Time

    nanoseconds = round(seconds * 1e9)
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def stamp_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time as integer nanoseconds (comparable, hashable)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def rgb_image_msg(pixels: np.ndarray, stamp: Any, frame_id: str) -> Any:
    """sensor_msgs/Image (rgb8) of an (H, W, 3) uint8 array."""
    from sensor_msgs.msg import Image
    from wm_sim.ros.messages import rgb_to_image_fields

    fields = rgb_to_image_fields(pixels, "rgb8")
    msg = Image(**{**fields, "data": fields["data"].tobytes()})
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


@dataclass(frozen=True)
class JointLayout:
    """How an agent_pos vector maps onto sensor_msgs/JointState.

    Entries named `<joint>.pos` and `<joint>.vel` (the tasks' convention) become the position and
    velocity of `<joint>`; any other name is a joint whose position is that entry.
    """

    state_names: tuple[str, ...]
    joints: tuple[str, ...]
    position: tuple[int, ...]  # state index of each joint's position
    velocity: tuple[int, ...] | None  # state index of each joint's velocity, when every joint has one

    @classmethod
    def of(cls, state_names: list[str] | tuple[str, ...]) -> JointLayout:
        names = tuple(state_names)
        joints: list[str] = []
        position: dict[str, int] = {}
        velocity: dict[str, int] = {}
        for index, name in enumerate(names):
            joint, _, kind = name.rpartition(".")
            if kind == "vel" and joint:
                velocity[joint] = index
                continue
            joint = joint if kind == "pos" and joint else name
            joints.append(joint)
            position[joint] = index
        has_velocity = bool(velocity) and set(velocity) == set(joints)
        if velocity and not has_velocity:  # velocities without matching positions: plain joints
            return cls(names, names, tuple(range(len(names))), None)
        return cls(
            names,
            tuple(joints),
            tuple(position[j] for j in joints),
            tuple(velocity[j] for j in joints) if has_velocity else None,
        )

    def to_msg(self, state: np.ndarray, stamp: Any) -> Any:
        from sensor_msgs.msg import JointState

        msg = JointState(name=list(self.joints))
        msg.header.stamp = stamp
        values = np.asarray(state, dtype=np.float64)
        msg.position = [float(values[i]) for i in self.position]
        if self.velocity is not None:
            msg.velocity = [float(values[i]) for i in self.velocity]
        return msg

    def from_msg(self, msg: Any) -> np.ndarray:
        """agent_pos from a JointState, by joint name; KeyError/IndexError when it lacks a joint."""
        index = {name: i for i, name in enumerate(msg.name)}
        state = np.empty(len(self.state_names), dtype=np.float32)
        for joint, i in zip(self.joints, self.position, strict=True):
            state[i] = msg.position[index[joint]]
        if self.velocity is not None:
            for joint, i in zip(self.joints, self.velocity, strict=True):
                state[i] = msg.velocity[index[joint]]
        return state
