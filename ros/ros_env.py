"""`RosEnv`: any ROS 2 robot or simulator as a Gymnasium env, so this project's policies run on it.

`step(action)` publishes the command and waits for the next camera image (every camera's, with
several), and the joint state stamped with it; reward and termination come from their topics
when the robot has them. Against `wm-sim ros serve` the spaces, bounds, cameras and joint names
are read from the server's parameters, seeds travel with each reset, and a seeded episode is
reproducible:

    env = RosEnv()                                   # /wm_sim, served by `wm-sim ros serve`
    env = RosEnv(namespace="/arm", image_topic="/arm/camera/image_raw", action_low=[-1] * 7,
                 action_high=[1] * 7, state_names=[...], image_size=64, reward_topic="")
    env = RosEnv(..., image_topics={"wrist": "/wrist/image_raw", "front": "/front/image_raw"})
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces
from wm_sim.ros import topics
from wm_sim.ros.messages import image_to_rgb, square_frame

from wm_sim.errors import WmSimError
from wm_sim.optional import require


class RosTimeoutError(WmSimError, TimeoutError):
    """The robot or simulator did not answer in time."""


class RosEnv(gymnasium.Env):
    """A Gymnasium env whose dynamics are whatever answers on the ROS topics.

    Observation: Dict(pixels=Box(0, 255, (S, S, 3), uint8), agent_pos=Box(float32)) (agent_pos
    only with a joint-state topic): the spaces of this project's envs. With several cameras,
    pixels is Dict({camera: Box(0, 255, (S, S, 3), uint8)}) in `cameras` order (LeRobot's layout),
    each camera's frame the one stamped like the first camera's. Images of another size are
    centre-cropped and resized; images of an unknown encoding are dropped with a warning.
    Action: Box(action_low, action_high). `info["elapsed"]`: seconds since the episode's first
    observation, by the stamps; `stamp`: the last observation's stamp in seconds.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        namespace: str = "/wm_sim",
        server: str | None = "simulator",
        command_topic: str = topics.COMMANDS,
        image_topic: str = topics.IMAGE,
        image_topics: Mapping[str, str] | None = None,
        joint_state_topic: str = topics.JOINT_STATES,
        reward_topic: str | None = None,
        done_topic: str | None = None,
        terminated_topic: str | None = None,
        reset_service: str | None = None,
        action_low: Sequence[float] | None = None,
        action_high: Sequence[float] | None = None,
        state_names: Sequence[str] | None = None,
        image_size: int | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 20.0,
        slop: float = 0.0,
        localhost_only: bool = True,
        render_mode: str | None = None,
    ):
        """Topic names are relative to `namespace` unless absolute; "" turns an optional one off.

        `server` names the node whose parameters describe the spaces (`wm-sim ros serve`'s
        node); None for a robot, which then needs action_low, action_high and image_size (and
        state_names with a joint-state topic). The reward, done, terminated topics and the reset
        service default to the server's names with a server, and to off (None) without one.
        `image_topics` ({camera: topic}, instead of `image_topic`) observes several cameras;
        against a server that declares several, its cameras are observed unless an image topic
        is named. `slop`: how far (s) a joint state's or another camera's stamp may be from the
        first camera's image; 0 matches stamps exactly, as `wm-sim ros serve` stamps them alike.
        `localhost_only` keeps DDS discovery on this host unless the shell sets
        ROS_AUTOMATIC_DISCOVERY_RANGE: pass False for a robot on the network.
        """
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if timeout <= 0 or connect_timeout <= 0 or slop < 0:
            raise ValueError("timeout and connect_timeout must be positive, slop >= 0")
        rclpy = require("rclpy")
        topics.use_local_discovery(localhost_only)
        self.render_mode = render_mode
        self.timeout = timeout
        self.slop_ns = round(slop * 1e9)
        self.namespace = topics.check_namespace(namespace)
        self.topics = self._topic_names(
            server,
            command_topic,
            joint_state_topic,
            reward_topic,
            done_topic,
            terminated_topic,
            reset_service,
        )
        self._init_buffers()
        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        try:
            self._start_node(rclpy)
            self._server = topics.join(self.namespace, server) if server else None
            described = self._read_server_parameters(connect_timeout) if self._server else {}
            self.image_topics = _camera_topics(described, image_topic, image_topics, self._full_name)
            # the cameras in observation order; the first one's frames pace the steps
            self.cameras: tuple[str, ...] = tuple(self.image_topics)
            self._images = {camera: [] for camera in self.cameras}
            self._build_spaces(described, action_low, action_high, state_names, image_size)
            self._open_topics()
            self._connect(connect_timeout)
        except BaseException:
            self.close()
            raise

    # --- construction ---------------------------------------------------------------------------

    def _full_name(self, topic: str) -> str:
        """A topic's full name: relative ones are in the namespace; "" (turned off) stays ""."""
        return topics.join(self.namespace, topic) if topic else ""

    def _topic_names(
        self,
        server: str | None,
        command_topic: str,
        joint_state_topic: str,
        reward_topic: str | None,
        done_topic: str | None,
        terminated_topic: str | None,
        reset_service: str | None,
    ) -> dict[str, str]:
        """Every topic's full name by what it carries ("" when off); the optional ones left None
        default to the server's names with a server, and to off without one."""

        def optional(given: str | None, default: str) -> str:
            return self._full_name(default if given is None and server else given)

        return {
            "commands": self._full_name(command_topic),
            "joint_states": self._full_name(joint_state_topic),
            "reward": optional(reward_topic, topics.REWARD),
            "done": optional(done_topic, topics.DONE),
            "terminated": optional(terminated_topic, topics.TERMINATED),
            "reset": optional(reset_service, topics.RESET),
        }

    def _init_buffers(self) -> None:
        """The env's state before any message arrived: what the callbacks fill and the steps consume."""
        self._may_warn = topics.Throttle()
        self._handled = 0  # messages handled by this env's callbacks: how _drain knows it is done
        self._subscriptions: list[Any] = []
        self.dropped_images = 0
        self._last_stamp = -1
        self._episode_start = 0
        self._pixels: np.ndarray | None = None  # the first camera's last frame: what render() shows
        self._needs_reset = True
        # camera -> its (stamp_ns, pixels), oldest first
        self._images: dict[str, list[tuple[int, np.ndarray]]] = {}
        self._joints: dict[int, np.ndarray] = {}  # stamp_ns -> agent_pos
        self._rewards: list[float] = []
        self._dones: list[bool] = []
        self._terminations: list[bool] = []

    def _start_node(self, rclpy: Any) -> None:
        """This env's own node in its own context, spun by hand: steps wait on it, nothing else does."""
        from rclpy.executors import SingleThreadedExecutor

        self._node = rclpy.create_node(
            f"wm_sim_ros_env_{id(self):x}", context=self._context, start_parameter_services=False
        )
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)

    def _open_topics(self) -> None:
        """The command publisher, a reader per enabled topic and the reset client, once the spaces
        say which topics there are (the joint states only with joint names)."""
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, Float32, Float64MultiArray

        self._Float64MultiArray = Float64MultiArray
        qos = topics.Qos.make()
        self._publisher = self._node.create_publisher(
            Float64MultiArray, self.topics["commands"], qos.reliable
        )

        def subscribe(kind: Any, topic: str, callback: Callable[[Any], None], profile: Any) -> None:
            self._subscriptions.append(
                self._node.create_subscription(kind, topic, self._counted(callback), profile)
            )

        for camera, topic in self.image_topics.items():
            subscribe(Image, topic, lambda m, c=camera: self._on_image(c, m), qos.sensor)
        if self.joint_layout is not None:
            # a robot's driver may publish joint states best effort: a best-effort reader takes both
            profile = qos.reliable if self._server else qos.sensor
            subscribe(JointState, self.topics["joint_states"], self._on_joints, profile)
        for key, store, kind in (
            ("reward", self._rewards, Float32),
            ("done", self._dones, Bool),
            ("terminated", self._terminations, Bool),
        ):
            if self.topics[key]:
                subscribe(kind, self.topics[key], lambda m, s=store: s.append(m.data), qos.reliable)
        self._reset_client = None
        if self.topics["reset"]:
            from std_srvs.srv import Trigger

            self._reset_client = self._node.create_client(Trigger, self.topics["reset"])

    # --- Gymnasium API --------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if options:
            raise ValueError(f"RosEnv.reset takes no options, got {sorted(options)}")
        self._needs_reset = True  # until the new episode's first observation is in hand
        self._drain()
        after = self._newest_stamp()  # without a reset service: the robot's next frame
        if self._reset_client is not None:
            if self._seedable:  # the client owns the randomness: the same seed, the same episode
                self._set_reset_seed(int(self.np_random.integers(2**31 - 1)))
            self._clear_scalars()
            reply = self._call(self._reset_client, require("std_srvs").srv.Trigger.Request(), "reset")
            if not reply.success:
                raise WmSimError(f"{self.topics['reset']} refused the reset: {reply.message}")
            stamp = topics.reset_stamp(reply.message)  # `wm-sim ros serve` says the frame's stamp
            after = stamp - 1 if stamp is not None else after
        obs, stamp = self._wait_observation(after, "the first observation after the reset")
        if self._seedable:  # our server publishes reward 0 and done false with a reset: consume them
            self._wait_scalars("the reward and done of the reset")
        self._clear_scalars()
        self._needs_reset = False
        self._episode_start = stamp
        return obs, {"elapsed": 0.0}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Publish `action`; return the first observation stamped after it was sent.

        Lock-step servers answer each command with exactly one step. Against a free-running
        robot or a realtime server, the reward is the sum of those received since the last
        observation returned, and the episode is over if any of them said so.
        """
        if self._needs_reset:
            raise gymnasium.error.ResetNeeded(
                "call reset() before step(), after the episode ends, and after a step timed out"
            )
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape or not np.isfinite(action).all():
            raise ValueError(
                f"action must be {self.action_space.shape} finite numbers, got {action.tolist()}"
            )
        low, high = self.action_space.low, self.action_space.high
        clipped = np.clip(action, low, high)
        if not np.array_equal(clipped, action):  # never send a robot a command outside its bounds
            self._warn("clipped", f"action {action.tolist()} clipped to [{low.tolist()}, {high.tolist()}]")
        self._needs_reset = True  # a step that times out leaves the stream out of step: reset first
        self._drain()
        after = self._newest_stamp()  # a free-running camera keeps sending: wait for a newer frame
        self._publisher.publish(self._Float64MultiArray(data=clipped.tolist()))
        obs, stamp = self._wait_observation(after, "the observation after a command")
        self._wait_scalars("the reward and done of that step")
        self._drain()
        reward = float(np.sum(self._rewards)) if self._rewards else 0.0
        done = any(self._dones)
        terminated = any(self._terminations) if self.topics["terminated"] else done
        self._clear_scalars()
        self._needs_reset = done
        info = {
            "elapsed": (stamp - self._episode_start) / 1e9,
            "action_clipped": bool((clipped != action).any()),
        }
        return obs, reward, terminated, done and not terminated, info

    @property
    def stamp(self) -> float:
        """The stamp of the last observation, in seconds (simulated time from `wm-sim ros serve`)."""
        return self._last_stamp / 1e9

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self._pixels is None:
            return None
        return self._pixels.copy()

    def close(self) -> None:
        if getattr(self, "_context", None) is None:
            return
        context, self._context = self._context, None
        if getattr(self, "_executor", None) is not None:
            self._executor.shutdown()
        if getattr(self, "_node", None) is not None:
            self._node.destroy_node()
        require("rclpy").try_shutdown(context=context)

    # --- spaces ---------------------------------------------------------------------------------

    def _read_server_parameters(self, timeout: float) -> dict[str, Any]:
        """The server's description of itself: bounds, image size, state names, fps."""
        from rcl_interfaces.srv import GetParameters

        client = self._node.create_client(GetParameters, f"{self._server}/get_parameters")
        names = [
            "action_low",
            "action_high",
            "image_height",
            "image_width",
            "state_names",
            "state_low",
            "state_high",
            "fps",
            topics.CAMERAS_PARAMETER,
            topics.IMAGE_TOPICS_PARAMETER,
        ]  # a server from before several cameras declares no cameras: it has one, on image_raw
        request = GetParameters.Request(names=names)
        try:
            reply = self._call(client, request, f"the parameters of {self._server}", timeout)
        except RosTimeoutError as exc:
            raise RosTimeoutError(
                f"no simulator node {self._server} answered within {timeout:g} s: start `wm-sim ros serve` "
                "(namespace and node_name must match), or for a robot pass server=None with action_low, "
                "action_high, image_size and state_names"
            ) from exc
        finally:
            self._node.destroy_client(client)
        from rclpy.parameter import parameter_value_to_python

        values = {n: parameter_value_to_python(v) for n, v in zip(names, reply.values, strict=True)}
        self._seedable = True
        return {n: v for n, v in values.items() if v is not None}

    def _build_spaces(self, described, action_low, action_high, state_names, image_size) -> None:
        self._seedable = bool(described)
        low = np.asarray(
            action_low if action_low is not None else described.get("action_low", []), np.float32
        )
        high = np.asarray(
            action_high if action_high is not None else described.get("action_high", []), np.float32
        )
        if low.size == 0 or low.shape != high.shape or not (low < high).all():
            raise WmSimError(
                "RosEnv needs the command's bounds: action_low and action_high of equal length with "
                f"low < high (got {low.tolist()} and {high.tolist()}), or a server that declares them"
            )
        size = image_size or described.get("image_height")
        if not size or (image_size is None and described.get("image_width") != size):
            raise WmSimError(
                "RosEnv needs image_size (square frames of that many pixels) or a server that declares it"
            )
        names = list(state_names) if state_names is not None else list(described.get("state_names", []))
        self.joint_layout = topics.JointLayout.of(names) if names and self.topics["joint_states"] else None
        self.action_space = spaces.Box(low, high, dtype=np.float32)
        self._image_size = int(size)
        frame = spaces.Box(0, 255, (int(size), int(size), 3), np.uint8)
        # a list of pairs keeps the cameras' order (a Dict of a mapping sorts it)
        pixels = frame if len(self.cameras) == 1 else spaces.Dict([(c, frame) for c in self.cameras])
        observation: dict[str, spaces.Space] = {"pixels": pixels}
        if self.joint_layout is not None:
            s_low = np.asarray(described.get("state_low", [-np.inf] * len(names)), np.float32)
            s_high = np.asarray(described.get("state_high", [np.inf] * len(names)), np.float32)
            if state_names is not None and len(s_low) != len(names):
                s_low, s_high = (
                    np.full(len(names), -np.inf, np.float32),
                    np.full(len(names), np.inf, np.float32),
                )
            observation["agent_pos"] = spaces.Box(s_low, s_high, dtype=np.float32)
        self.observation_space = spaces.Dict(observation)
        fps = described.get("fps")
        if fps:
            self.metadata = {**self.metadata, "render_fps": float(fps)}

    # --- waiting on ROS -------------------------------------------------------------------------

    def _connect(self, timeout: float) -> None:
        """Wait until the command topic has a subscriber and every image topic a publisher."""
        checks = [
            (
                lambda: self._publisher.get_subscription_count() > 0,
                f"a subscriber on {self.topics['commands']}",
            ),
        ]
        checks += [
            (lambda t=topic: self._node.count_publishers(t) > 0, f"a publisher on {topic}")
            for topic in self.image_topics.values()
        ]
        checks += [
            (lambda s=s: s.get_publisher_count() > 0, f"our reader of {s.topic_name} to match its publisher")
            for s in self._subscriptions
        ]  # discovery is per reader: messages sent before a reader matched never reach it
        if self._reset_client is not None:
            checks.append((self._reset_client.service_is_ready, f"the service {self.topics['reset']}"))
        for ready, what in checks:
            self._wait_for(ready, what, timeout)

    def _wait_for(self, ready: Callable[[], bool], what: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0:
                local = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
                raise RosTimeoutError(
                    f"waited {timeout or self.timeout:g} s for {what} in vain: is the robot or "
                    "`wm-sim ros serve` running in this namespace and ROS domain, and not paused?"
                    + (
                        " Discovery is limited to this host (localhost_only=False to look further)."
                        if local
                        else ""
                    )
                )
            self._executor.spin_once(timeout_sec=min(left, 0.05))

    def _drain(self, limit: int = 10_000) -> None:
        """Handle everything that already arrived, without waiting (spin_once handles one message)."""
        for _ in range(limit):
            handled = self._handled
            self._executor.spin_once(timeout_sec=0.0)
            if self._handled == handled:
                return

    def _counted(self, callback: Callable[[Any], None]) -> Callable[[Any], None]:
        def counted(msg: Any) -> None:
            self._handled += 1
            callback(msg)

        return counted

    def _call(self, client: Any, request: Any, what: str, timeout: float | None = None) -> Any:
        self._wait_for(client.service_is_ready, f"the service for {what}", timeout)
        future = client.call_async(request)
        self._wait_for(future.done, f"the answer to {what}", timeout)
        return future.result()

    def _set_reset_seed(self, seed: int) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        if not hasattr(self, "_seed_client"):
            self._seed_client = self._node.create_client(SetParameters, f"{self._server}/set_parameters")
        request = SetParameters.Request(
            parameters=[Parameter(topics.RESET_SEED_PARAMETER, value=seed).to_parameter_msg()]
        )
        reply = self._call(self._seed_client, request, "seeding the reset")
        if not reply.results[0].successful:
            raise WmSimError(f"{self._server} refused the reset seed: {reply.results[0].reason}")

    def _wait_observation(self, after_ns: int, what: str) -> tuple[dict[str, Any], int]:
        """The first image of the first camera stamped after `after_ns`, with the other cameras'
        images and the joint state stamped with it; its stamp."""
        found: list[tuple[dict[str, Any], int]] = []
        first, others = self.cameras[0], self.cameras[1:]

        def ready() -> bool:
            for stamp, pixels in self._images[first]:
                if stamp <= after_ns:
                    continue
                frames = {first: pixels, **{c: self._frame_at(c, stamp) for c in others}}
                lacking = [c for c, frame in frames.items() if frame is None]
                if lacking:
                    # best-effort frames get lost: once a camera sent a later one, this stamp never completes
                    if all(self._newest_stamp(c) > stamp + self.slop_ns for c in lacking):
                        continue
                    return False
                obs: dict[str, Any] = {
                    "pixels": pixels.copy() if not others else {c: f.copy() for c, f in frames.items()}
                }
                if self.joint_layout is not None:
                    state = self._joint_state_at(stamp)
                    if state is None:
                        return False
                    obs["agent_pos"] = state
                found.append((obs, stamp))
                return True
            return False

        self._wait_for(ready, what)
        obs, stamp = found[0]
        self._last_stamp = stamp
        self._pixels = obs["pixels"] if not others else obs["pixels"][first]
        self._images = {
            camera: [(s, p) for s, p in images if s > stamp + (self.slop_ns if camera != first else 0)]
            for camera, images in self._images.items()
        }
        self._joints = {s: v for s, v in self._joints.items() if s >= stamp - self.slop_ns}
        return obs, stamp

    def _frame_at(self, camera: str, stamp: int) -> np.ndarray | None:
        """The camera's image stamped `stamp` (nearest within the slop), or None while it has none."""
        near = [
            (abs(s - stamp), i)
            for i, (s, _) in enumerate(self._images[camera])
            if abs(s - stamp) <= self.slop_ns
        ]
        return self._images[camera][min(near)[1]][1] if near else None

    def _joint_state_at(self, stamp: int) -> np.ndarray | None:
        if self.slop_ns == 0:
            state = self._joints.get(stamp)
        else:
            near = [s for s in self._joints if abs(s - stamp) <= self.slop_ns]
            state = self._joints[min(near, key=lambda s: abs(s - stamp))] if near else None
        return None if state is None else state.copy()

    def _newest_stamp(self, camera: str | None = None) -> int:
        """The newest stamp seen of `camera`'s images (the first camera's by default)."""
        return max([self._last_stamp, *(stamp for stamp, _ in self._images[camera or self.cameras[0]])])

    def _wait_scalars(self, what: str) -> None:
        """Wait for a message on each enabled reward, done and terminated topic."""
        stores = (("reward", self._rewards), ("done", self._dones), ("terminated", self._terminations))
        self._wait_for(lambda: all(not self.topics[key] or values for key, values in stores), what)

    def _clear_scalars(self) -> None:
        for values in (self._rewards, self._dones, self._terminations):
            values.clear()

    # --- subscriptions --------------------------------------------------------------------------

    def _on_image(self, camera: str, msg: Any) -> None:
        try:
            rgb = image_to_rgb(msg)
        except WmSimError as exc:
            self.dropped_images += 1
            self._warn(
                "image", f"image of {self.image_topics[camera]} dropped ({self.dropped_images} so far): {exc}"
            )
            return
        size = self._image_size
        pixels = rgb if rgb.shape[:2] == (size, size) else square_frame(rgb, size)
        images = self._images[camera]
        images.append((topics.stamp_ns(msg.header.stamp), pixels))
        del images[:-32]

    def _on_joints(self, msg: Any) -> None:
        try:
            state = self.joint_layout.from_msg(msg)
        except (KeyError, IndexError):
            self._warn("joints", f"joint state without the joints {list(self.joint_layout.joints)} dropped")
            return
        self._joints[topics.stamp_ns(msg.header.stamp)] = state
        if len(self._joints) > 64:
            del self._joints[min(self._joints)]

    def _warn(self, reason: str, text: str) -> None:
        if self._may_warn(reason):
            self._node.get_logger().warning(text)


def _camera_topics(
    described: dict[str, Any],
    image_topic: str,
    image_topics: Mapping[str, str] | None,
    name: Callable[[str], str],
) -> dict[str, str]:
    """{camera: full image topic}: those asked, else a server's several cameras, else `image_topic`."""
    if image_topics is not None:
        if not image_topics or not all(camera and topic for camera, topic in image_topics.items()):
            raise ValueError(f"image_topics must map camera names to image topics, got {dict(image_topics)}")
        return {str(camera): name(topic) for camera, topic in image_topics.items()}
    cameras = list(described.get(topics.CAMERAS_PARAMETER) or [])
    served = list(described.get(topics.IMAGE_TOPICS_PARAMETER) or [])
    if image_topic == topics.IMAGE and len(cameras) > 1 and len(served) == len(cameras):
        return {camera: name(topic) for camera, topic in zip(cameras, served, strict=True)}
    return {cameras[0] if len(cameras) == 1 else "camera": name(image_topic)}
