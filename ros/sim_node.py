"""The node behind `wm-sim ros serve`: one Gymnasium env behind ROS 2 topics and services.

Lockstep: every command on `commands` advances the env exactly one step, and the observation it
produces goes out stamped with the simulated time of that step (what RL over ROS needs): an env
with several cameras publishes each camera's frame on its own topic, all with that one stamp.
Realtime: a timer steps at `rate` Hz whether commands come or not, holding the last one (what a
robot stack expects of a driver); a step that overruns its period is logged and published on
/diagnostics. Simulated time advances one env period (1 / fps) per step and per reset and never
goes back, so /clock is valid for `use_sim_time` nodes.

Bad traffic (wrong length, NaN, a flood) is counted, warned about at most every few seconds,
and dropped; the node keeps serving.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
from wm_sim.ros import topics

from wm_sim.errors import WmSimError
from wm_sim.optional import require

# without ROS: one error naming the wm-sim[ros] extra, before the imports below
for _package in (
    "rclpy",
    "rcl_interfaces",
    "diagnostic_msgs",
    "rosgraph_msgs",
    "sensor_msgs",
    "std_msgs",
    "std_srvs",
):
    require(_package)
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from rcl_interfaces.msg import ParameterDescriptor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, Float32, Float64MultiArray  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

WARN_EVERY_S = 2.0  # rate limit of each kind of warning


@dataclass(frozen=True)
class NodeConfig:
    """What the node needs beyond the env; `wm-sim ros serve` builds it from ServeConfig."""

    mode: str = "lockstep"  # lockstep | realtime
    rate: float = 0.0  # realtime steps per wall-clock second; 0: the env's fps
    namespace: str = "/wm_sim"
    node_name: str = "simulator"
    frame_id: str = "camera"
    seed: int | None = 0  # the first episode's seed
    autoreset: bool = True  # a command after the end of an episode starts the next one
    publish_clock: bool = True  # /clock is global: one simulator per ROS domain should publish it


def _is_image(space: gymnasium.Space) -> bool:
    return isinstance(space, gymnasium.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


@dataclass(frozen=True)
class Cameras:
    """Where an env's observation holds its camera images, and which cameras they are."""

    key: str | None  # the observation's image entry; None: the observation is the image itself
    names: tuple[str, ...]  # the cameras, in the order their topics are published
    shape: tuple[int, ...]  # (H, W, 3): every camera's

    def frames(self, obs: Any) -> list[np.ndarray]:
        """Each camera's (H, W, 3) frame of one observation, in `names` order."""
        pixels = obs if self.key is None else obs[self.key]
        if isinstance(pixels, Mapping):
            return [pixels[name] for name in self.names]
        return [pixels]


def find_cameras(env: gymnasium.Env) -> Cameras:
    """The observation's images: a (H, W, 3) uint8 Box, alone or in a Dict, or a Dict of them per
    camera (LeRobot's layout, `obs["pixels"][camera]`), named and ordered by the env's `cameras`."""
    found = _image_entry(env.observation_space)
    if found is None:
        raise WmSimError(
            "ros serve needs a pixel observation: a (H, W, 3) uint8 Box, alone or in a Dict, or a Dict "
            f"of them per camera; got {env.observation_space}"
        )
    key, images = found
    declared = tuple(getattr(env.unwrapped, "cameras", None) or ())
    if images is None:  # one image, named after the env's camera where it declares one
        image = env.observation_space if key is None else env.observation_space[key]
        images = {declared[0] if len(declared) == 1 else "camera": image}
    elif sorted(declared) == sorted(images):  # the env's camera order: a Dict space sorts its keys
        images = {name: images[name] for name in declared}
    shapes = {tuple(image.shape) for image in images.values()}
    if len(shapes) != 1:
        raise WmSimError(
            "ros serve publishes every camera at one size (its image_height and image_width parameters); "
            "the cameras' images have shapes " + ", ".join(f"{n}: {s.shape}" for n, s in images.items())
        )
    shape = shapes.pop()
    if shape[-1] != 3:
        raise WmSimError(f"ros serve publishes rgb8 images; the observation's image has shape {shape}")
    return Cameras(key, tuple(str(name) for name in images), shape)


def _image_entry(space: gymnasium.Space) -> tuple[str | None, dict[str, Any] | None] | None:
    """(key, None) of the first single image (key None: the space is one), (key, {camera: space})
    of the first Dict of images, or None when the observation has no image."""
    if _is_image(space):
        return None, None
    if not isinstance(space, gymnasium.spaces.Dict):
        return None
    for key, sub in space.spaces.items():
        if _is_image(sub):
            return key, None
        if isinstance(sub, gymnasium.spaces.Dict) and sub.spaces and all(map(_is_image, sub.spaces.values())):
            return key, dict(sub.spaces)
    return None


def check_servable(env: gymnasium.Env) -> tuple[Cameras, str | None]:
    """(cameras, state key) of an env `ros serve` can serve, or one error saying what it lacks."""
    space = env.action_space
    if not (isinstance(space, gymnasium.spaces.Box) and len(space.shape) == 1):
        raise WmSimError(f"ros serve needs a 1-D Box action space (a command vector); got {space}")
    cameras = find_cameras(env)
    state = None
    if isinstance(env.observation_space, gymnasium.spaces.Dict):
        for key in ("agent_pos", "state", "proprio"):
            if key in env.observation_space.spaces:
                state = key
                break
    return cameras, state


class SimulatorNode(Node):
    """Serves `env` on the topics of `wm_sim.ros.topics`, under `config.namespace`."""

    def __init__(self, env: gymnasium.Env, config: NodeConfig, context: Any = None):
        super().__init__(config.node_name, namespace=config.namespace, context=context)
        if config.mode not in ("lockstep", "realtime"):
            raise WmSimError(f"mode must be 'lockstep' or 'realtime', got {config.mode!r}")
        self.env = env
        self.config = config
        self.cameras, self.state_key = check_servable(env)
        self.image_topics = topics.image_topics(self.cameras.names)
        several = len(self.cameras.names) > 1  # each camera its own frame, as each has its own optics
        self.frame_ids = [
            f"{c}_{config.frame_id}" if several else config.frame_id for c in self.cameras.names
        ]
        self.action_low = env.action_space.low.astype(np.float64)
        self.action_high = env.action_space.high.astype(np.float64)
        self.action_dim = int(env.action_space.shape[0])
        fps = float(env.metadata.get("render_fps") or 0.0)
        if fps <= 0:
            fps = 50.0
            self.get_logger().warning(
                "the env declares no metadata['render_fps']: simulating 50 steps per second"
            )
        self.period_ns = round(1e9 / fps)  # simulated time of one step
        self.rate = config.rate or fps
        state_dim = int(np.prod(env.observation_space[self.state_key].shape)) if self.state_key else 0
        names = list(getattr(env.unwrapped, "state_names", None) or [])
        if len(names) != state_dim:
            if names:
                self.get_logger().warning(
                    f"the env names {len(names)} state entries for a state of {state_dim}: publishing joint_0 ..."
                )
            names = [f"joint_{i}" for i in range(state_dim)]
        self.joints = topics.JointLayout.of(names)

        self.sim_ns = 0
        self.steps = 0
        self.episodes = 0
        self.paused = False
        self.episode_over = True
        self.command = np.zeros(self.action_dim, dtype=np.float64)  # held between realtime ticks
        self.drops: Counter[str] = Counter()
        self.overruns = 0
        self.late_ticks = 0
        self.clipped = 0
        self._may_warn = topics.Throttle(WARN_EVERY_S)
        self._last_tick: float | None = None
        self._tick_gaps: list[float] = []

        self._declare_parameters(fps, state_dim)
        qos = topics.Qos.make()
        self.pub_images = [self.create_publisher(Image, topic, qos.sensor) for topic in self.image_topics]
        self.pub_joints = self.create_publisher(JointState, topics.JOINT_STATES, qos.reliable)
        self.pub_reward = self.create_publisher(Float32, topics.REWARD, qos.reliable)
        self.pub_done = self.create_publisher(Bool, topics.DONE, qos.reliable)
        self.pub_terminated = self.create_publisher(Bool, topics.TERMINATED, qos.reliable)
        self.pub_clock = self.create_publisher(Clock, topics.CLOCK, qos.reliable)
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos.reliable)
        self.create_subscription(Float64MultiArray, topics.COMMANDS, self._on_command, qos.reliable)
        self.create_service(Trigger, topics.RESET, self._on_reset)
        self.create_service(SetBool, topics.PAUSE, self._on_pause)
        self.timer = self.create_timer(1.0 / self.rate, self._on_tick) if config.mode == "realtime" else None
        self._reset(config.seed)

    # --- parameters: what a client needs to know of this simulator --------------------------

    def _declare_parameters(self, fps: float, state_dim: int) -> None:
        fixed = ParameterDescriptor(read_only=True)
        shape = self.cameras.shape
        state_space = self.env.observation_space[self.state_key] if self.state_key else None
        for name, value in {
            "mode": self.config.mode,
            "fps": fps,
            "rate": float(self.rate),
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
            "image_height": int(shape[0]),
            "image_width": int(shape[1]),
            topics.CAMERAS_PARAMETER: list(self.cameras.names),
            topics.IMAGE_TOPICS_PARAMETER: list(self.image_topics),
        }.items():
            self.declare_parameter(name, value, fixed)
        if state_space is not None:  # an empty array has no ROS parameter type: no state, no entries
            self.declare_parameter("state_names", list(self.joints.state_names), fixed)
            self.declare_parameter("state_low", _finite(state_space.low), fixed)
            self.declare_parameter("state_high", _finite(state_space.high), fixed)
        self.declare_parameter(
            topics.RESET_SEED_PARAMETER,
            -1,
            ParameterDescriptor(description="seed of the next reset (then back to -1: unseeded)"),
        )

    # --- callbacks ------------------------------------------------------------------------------

    def _on_command(self, msg: Float64MultiArray) -> None:
        action = np.asarray(msg.data, dtype=np.float64)
        if action.shape != (self.action_dim,):
            self._drop(
                "wrong_length", f"command of length {action.size} dropped: expected {self.action_dim} values"
            )
            return
        if not np.isfinite(action).all():
            self._drop("not_finite", f"command {action.tolist()} dropped: NaN or infinite values")
            return
        if self.paused and self.config.mode == "lockstep":
            self._drop("paused", "command dropped: the simulator is paused (call pause with data=false)")
            return
        if self.config.mode == "realtime":
            self.command = action
            return
        if self.episode_over:
            if not self.config.autoreset:
                self._drop("episode_over", "command dropped: the episode is over; call the reset service")
                return
            self._reset(None)  # Gymnasium's next-step autoreset: this command starts the next episode
            return
        self._step(action)

    def _on_tick(self) -> None:
        start = time.perf_counter()
        period = 1.0 / self.rate
        if self._last_tick is not None:
            gap = start - self._last_tick
            self._tick_gaps.append(gap)
            del self._tick_gaps[:-200]
            if gap > 1.5 * period:  # the executor was busy (or the machine): ticks came late or not at all
                self.late_ticks += 1
                self._report_overrun(f"tick came {(gap - period) * 1e3:.1f} ms late", gap)
        self._last_tick = start
        if self.paused or (self.episode_over and not self.config.autoreset):
            return  # time stands still until resumed, or until the reset service is called
        if self.episode_over:
            self._reset(None)
        else:
            self._step(self.command)
        took = time.perf_counter() - start
        if took > period:
            self.overruns += 1
            self._report_overrun(f"step took {took * 1e3:.1f} ms", took)

    def _on_reset(self, request: Any, response: Any) -> Any:
        seed = self.get_parameter(topics.RESET_SEED_PARAMETER).value
        if seed >= 0:  # a seed is good for one reset
            self.set_parameters([Parameter(topics.RESET_SEED_PARAMETER, value=-1)])
        self._reset(int(seed) if seed >= 0 else None)
        response.success = True
        response.message = topics.reset_reply(self.episodes, self.sim_ns)
        return response

    def _on_pause(self, request: Any, response: Any) -> Any:
        self.paused = bool(request.data)
        self._last_tick = None  # a pause is not an overrun
        response.success = True
        response.message = "paused" if self.paused else "running"
        self.get_logger().info(f"simulation {response.message} at t={self.sim_ns / 1e9:.3f} s")
        return response

    # --- stepping and publishing ---------------------------------------------------------------

    def _reset(self, seed: int | None) -> None:
        obs, _ = self.env.reset(seed=seed)
        self.episodes += 1
        self.episode_over = False
        self.sim_ns += self.period_ns
        self._publish(obs, 0.0, False, False)

    def _step(self, action: np.ndarray) -> None:
        clipped = np.clip(action, self.action_low, self.action_high)
        if not np.array_equal(clipped, action):
            self.clipped += 1
            self._warn("clipped", f"command {action.tolist()} clipped to the action bounds")
        obs, reward, terminated, truncated, _ = self.env.step(clipped.astype(self.env.action_space.dtype))
        self.steps += 1
        self.sim_ns += self.period_ns
        self.episode_over = bool(terminated or truncated)
        self._publish(obs, float(reward), bool(terminated), self.episode_over)

    def _publish(self, obs: Any, reward: float, terminated: bool, done: bool) -> None:
        stamp = topics.time_msg(self.sim_ns / 1e9)
        if self.config.publish_clock:
            self.pub_clock.publish(Clock(clock=stamp))
        if self.state_key is not None:
            self.pub_joints.publish(self.joints.to_msg(obs[self.state_key], stamp))
        self.pub_reward.publish(Float32(data=reward))
        self.pub_terminated.publish(Bool(data=terminated))
        self.pub_done.publish(Bool(data=done))
        # every camera's frame of a step carries that step's stamp: a client pairs them by it
        for publisher, pixels, frame_id in zip(
            self.pub_images, self.cameras.frames(obs), self.frame_ids, strict=True
        ):
            publisher.publish(topics.rgb_image_msg(pixels, stamp, frame_id))

    # --- reporting ------------------------------------------------------------------------------

    def _drop(self, reason: str, text: str) -> None:
        self.drops[reason] += 1
        self._warn(reason, f"{text} ({self.drops[reason]} so far)")

    def _warn(self, reason: str, text: str) -> None:
        if self._may_warn(reason):
            self.get_logger().warning(text)

    def _report_overrun(self, what: str, took: float) -> None:
        period = 1.0 / self.rate
        text = f"realtime {what}, over the period of {period * 1e3:.1f} ms"
        self._warn("overrun", f"{text} ({self.overruns} slow steps, {self.late_ticks} late ticks so far)")
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN,
            name=f"{self.get_fully_qualified_name()}: realtime step",
            message=text,
            hardware_id="wm_sim",
            values=[
                KeyValue(key="overruns", value=str(self.overruns)),
                KeyValue(key="late_ticks", value=str(self.late_ticks)),
                KeyValue(key="steps", value=str(self.steps)),
                KeyValue(key="duration_ms", value=f"{took * 1e3:.2f}"),
                KeyValue(key="period_ms", value=f"{period * 1e3:.2f}"),
            ],
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = topics.time_msg(self.sim_ns / 1e9)
        self.pub_diagnostics.publish(array)

    def measured_rate(self) -> float:
        """Realtime ticks per wall-clock second over the last 200 ticks (0 before two ticks)."""
        return len(self._tick_gaps) / sum(self._tick_gaps) if self._tick_gaps else 0.0

    def summary(self) -> str:
        parts = [f"{self.steps} steps", f"{self.episodes} episodes", f"t={self.sim_ns / 1e9:.2f} s simulated"]
        if self.timer is not None:
            parts.append(
                f"{self.measured_rate():.1f} Hz (target {self.rate:g}), {self.overruns} slow steps, "
                f"{self.late_ticks} late ticks"
            )
        if self.drops:
            parts.append("dropped " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.drops.items())))
        if self.clipped:
            parts.append(f"{self.clipped} commands clipped")
        return "; ".join(parts)


def _finite(values: np.ndarray) -> list[float]:
    """Bounds as ROS parameters: a double array cannot hold inf, so infinite bounds become +-1e308."""
    return np.clip(np.asarray(values, dtype=np.float64), -1e308, 1e308).tolist()
