"""The node behind `wm-sim ros serve`: one Gymnasium env behind ROS 2 topics and services.

Lockstep: every command on `commands` advances the env exactly one step, and the observation it
produces goes out stamped with the simulated time of that step (what RL over ROS needs).
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


def pixel_key(space: gymnasium.Space) -> str | None:
    """The observation's image: None for a Box image, else the Dict key of the (H, W, 3) uint8 Box."""
    if isinstance(space, gymnasium.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3:
        return None
    if isinstance(space, gymnasium.spaces.Dict):
        for key, sub in space.spaces.items():
            if isinstance(sub, gymnasium.spaces.Box) and sub.dtype == np.uint8 and len(sub.shape) == 3:
                return key
    raise WmSimError(
        f"ros serve needs a pixel observation: a (H, W, 3) uint8 Box, alone or in a Dict; got {space}"
    )


def check_servable(env: gymnasium.Env) -> tuple[str | None, str | None]:
    """(pixel key, state key) of an env `ros serve` can serve, or one error saying what it lacks."""
    space = env.action_space
    if not (isinstance(space, gymnasium.spaces.Box) and len(space.shape) == 1):
        raise WmSimError(f"ros serve needs a 1-D Box action space (a command vector); got {space}")
    image = pixel_key(env.observation_space)
    state = None
    if isinstance(env.observation_space, gymnasium.spaces.Dict):
        for key in ("agent_pos", "state", "proprio"):
            if key in env.observation_space.spaces:
                state = key
                break
    shape = env.observation_space[image].shape if image else env.observation_space.shape
    if shape[-1] != 3:
        raise WmSimError(f"ros serve publishes rgb8 images; the observation's image has shape {shape}")
    return image, state


class SimulatorNode(Node):
    """Serves `env` on the topics of `wm_sim.ros.topics`, under `config.namespace`."""

    def __init__(self, env: gymnasium.Env, config: NodeConfig, context: Any = None):
        super().__init__(config.node_name, namespace=config.namespace, context=context)
        if config.mode not in ("lockstep", "realtime"):
            raise WmSimError(f"mode must be 'lockstep' or 'realtime', got {config.mode!r}")
        self.env = env
        self.config = config
        self.image_key, self.state_key = check_servable(env)
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
        self.pub_image = self.create_publisher(Image, topics.IMAGE, qos.sensor)
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
        space = self.env.observation_space
        shape = space[self.image_key].shape if self.image_key else space.shape
        state_space = space[self.state_key] if self.state_key else None
        for name, value in {
            "mode": self.config.mode,
            "fps": fps,
            "rate": float(self.rate),
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
            "image_height": int(shape[0]),
            "image_width": int(shape[1]),
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
        pixels = obs[self.image_key] if self.image_key else obs
        self.pub_image.publish(topics.rgb_image_msg(pixels, stamp, self.config.frame_id))

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
