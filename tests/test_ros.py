"""`wm-sim ros serve` as a separate process, driven from this process with plain rclpy, and RosEnv.

Every test talks over real DDS on the local host, in a ROS domain of its own.
"""

from __future__ import annotations

import ast
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

import rclpy
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float32, Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from tiny import tiny_architecture
from wm_sim.ros import topics
from wm_sim.ros.serve import ServeConfig, read_ros_params, with_params_file

from wm_sim.errors import WmSimError

# a domain of our own: tests running beside other ROS traffic on this host never cross it
os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 100))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
STARTUP_S = 90.0  # loading torch and a model on a busy 2-core machine


class Server:
    """`wm-sim ros serve ...` in its own process."""

    def __init__(self, tmp_path: Path, *args: str):
        self.stdout = open(tmp_path / f"serve-{time.monotonic_ns()}.out", "w+")
        self.stderr = open(tmp_path / f"serve-{time.monotonic_ns()}.err", "w+")
        self.process = subprocess.Popen(
            ["wm-sim", "ros", "serve", "threads=1", *args], stdout=self.stdout, stderr=self.stderr
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> tuple[str, str]:
        self.stdout.seek(0), self.stderr.seek(0)
        return self.stdout.read(), self.stderr.read()

    def interrupt(self, timeout: float = 20.0) -> int:
        """Ctrl-C, as a terminal sends it; returns the exit code."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait()


class Client:
    """A plain rclpy node in this process that records what the server publishes."""

    def __init__(self, namespace: str = "/wm_sim"):
        self.ns = namespace
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"test_client_{time.monotonic_ns()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        qos = topics.Qos.make()
        self.images: list[tuple[int, float, Image]] = []  # (stamp ns, arrival time, msg)
        self.joints: list[JointState] = []
        self.rewards: list[float] = []
        self.dones: list[bool] = []
        name = lambda t: topics.join(namespace, t)  # noqa: E731
        self.node.create_subscription(
            Image, name(topics.IMAGE), lambda m: self.images.append((topics.stamp_ns(m.header.stamp), time.monotonic(), m)), qos.sensor
        )  # fmt: skip
        self.node.create_subscription(JointState, name(topics.JOINT_STATES), self.joints.append, qos.reliable)
        self.node.create_subscription(
            Float32, name(topics.REWARD), lambda m: self.rewards.append(m.data), qos.reliable
        )
        self.node.create_subscription(
            Bool, name(topics.DONE), lambda m: self.dones.append(m.data), qos.reliable
        )
        self.commands = self.node.create_publisher(Float64MultiArray, name(topics.COMMANDS), qos.reliable)
        self.reset_client = self.node.create_client(Trigger, name(topics.RESET))
        self.pause_client = self.node.create_client(SetBool, name(topics.PAUSE))

    def spin_until(self, ready, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                return False
            self.executor.spin_once(timeout_sec=0.02)
        return True

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    def connect(self, server: Server) -> None:
        ready = lambda: (  # noqa: E731
            not server.alive()
            or (self.commands.get_subscription_count() > 0 and self.reset_client.service_is_ready())
        )
        assert self.spin_until(ready, STARTUP_S), "the server never came up"
        assert server.alive(), server.output()
        self.spin_for(0.5)  # the image subscription matches a moment later than the command topic

    def send(self, values) -> None:
        self.commands.publish(Float64MultiArray(data=[float(v) for v in values]))

    def step(self, values, timeout: float = 10.0) -> tuple[int, Image]:
        """Command, then the next image: the lock-step round trip."""
        count = len(self.images)
        self.send(values)
        assert self.spin_until(lambda: len(self.images) > count, timeout), "no image after the command"
        stamp, _, msg = self.images[-1]
        return stamp, msg

    def call(self, client, request, timeout: float = 10.0):
        assert self.spin_until(client.service_is_ready, timeout)
        future = client.call_async(request)
        assert self.spin_until(future.done, timeout)
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture(scope="module")
def lockstep(tmp_path_factory):
    """The shipped reacher world model, served in lock-step, and a connected client."""
    server = Server(tmp_path_factory.mktemp("serve"), "env=wm_sim/Reacher-v0", "mode=lockstep")
    client = Client()
    try:
        client.connect(server)
        yield server, client
    finally:
        client.close()
        server.kill()


def test_lockstep_round_trip_is_one_stamped_step_per_command(lockstep):
    server, client = lockstep
    client.call(client.reset_client, Trigger.Request())
    client.spin_for(0.3)
    before = len(client.images)
    stamps = [client.step([0.3, -0.2])[0] for _ in range(10)]
    client.spin_for(0.3)
    assert len(client.images) == before + 10  # exactly one observation per command
    assert np.all(np.diff(stamps) == 20_000_000)  # one simulated step at 50 fps, in simulated time
    image = client.images[-1][2]
    assert (image.encoding, image.height, image.width, image.step) == ("rgb8", 64, 64, 192)
    assert image.header.frame_id == "camera" and len(image.data) == 64 * 64 * 3
    joints = client.joints[-1]
    assert topics.stamp_ns(joints.header.stamp) == stamps[-1]  # the joint state of that very step
    assert list(joints.name) == ["joint0", "joint1"]
    assert len(joints.position) == 2 and len(joints.velocity) == 2
    assert len(client.rewards) >= 10 and client.dones[-1] is False
    assert server.alive()


def test_reset_and_pause(lockstep):
    server, client = lockstep
    reply = client.call(client.reset_client, Trigger.Request())
    assert reply.success
    reset_stamp = int(reply.message.split("stamp_ns=")[1])
    assert client.spin_until(lambda: any(s == reset_stamp for s, _, _ in client.images))

    assert client.call(client.pause_client, SetBool.Request(data=True)).message == "paused"
    count = len(client.images)
    client.send([0.1, 0.1])
    client.spin_for(1.0)
    assert len(client.images) == count  # paused: the command is dropped, nothing is stepped
    assert client.call(client.pause_client, SetBool.Request(data=False)).message == "running"
    stamp, _ = client.step([0.1, 0.1])
    assert stamp == reset_stamp + 20_000_000  # the dropped command did not advance time
    assert server.alive()


@pytest.mark.slow
def test_bad_traffic_is_dropped_and_the_node_keeps_serving(lockstep, tmp_path):
    server, client = lockstep
    client.call(client.reset_client, Trigger.Request())
    client.spin_for(0.3)
    count = len(client.images)
    client.send([0.1, 0.2, 0.3])  # wrong length
    client.send([float("nan"), 0.0])  # NaN
    client.send([float("inf"), 0.0])
    client.spin_for(1.0)
    assert len(client.images) == count  # nothing stepped

    # subscribers (best effort and reliable) that vanish in the middle of the stream
    listener = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _LISTENER.format(
                topic=topics.join("/wm_sim", topics.IMAGE), joints=topics.join("/wm_sim", topics.JOINT_STATES)
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert listener.stdout.readline().strip() == "listening"
    for _ in range(5):
        client.step([0.2, 0.0])
    listener.kill()
    listener.wait()

    for i in range(10_000):  # a flood, faster than the node can step
        client.commands.publish(Float64MultiArray(data=[0.0, 0.0] if i % 2 else [1.0]))
    client.spin_for(2.0)
    assert server.alive()
    client.call(client.reset_client, Trigger.Request())
    stamp, _ = client.step([0.0, 0.5])  # still serving, in lock-step
    assert stamp > 0
    _, stderr = server.output()
    warnings = [line for line in stderr.splitlines() if "dropped" in line]
    assert any("expected 2 values" in line for line in warnings)
    assert any("NaN" in line for line in warnings)
    assert len(warnings) < 30  # rate-limited: 5,000 bad commands do not make 5,000 lines


_LISTENER = """
import os, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
rclpy.init()
node = rclpy.create_node("vanishing_listener")
node.create_subscription(Image, "{topic}", lambda m: None, qos_profile_sensor_data)
node.create_subscription(JointState, "{joints}", lambda m: None, 10)  # reliable: the server tracks acks
while node.count_publishers("{joints}") == 0:
    rclpy.spin_once(node, timeout_sec=0.05)
print("listening", flush=True)
rclpy.spin(node)
"""


@pytest.mark.slow
def test_ros_env_passes_check_env_and_runs_a_policy_episode(lockstep):
    from gymnasium.utils.env_checker import check_env
    from wm_sim.policies.saved import load_policy
    from wm_sim.ros.ros_env import RosEnv

    server, _ = lockstep
    env = RosEnv(timeout=10.0)
    try:
        assert env.observation_space["pixels"].shape == (64, 64, 3)
        assert env.observation_space["agent_pos"].shape == (4,)
        check_env(env, skip_render_check=True)

        policy, _ = load_policy("shipped:reacher")  # trained in imagination, acting over ROS unchanged
        obs, info = env.reset(seed=3)
        policy.reset()
        steps, done, total = 0, False, 0.0
        stamps = [info["elapsed"]]
        while not done:
            action = policy.act({k: v[None] for k, v in obs.items()})[0]
            obs, reward, terminated, truncated, info = env.step(action)
            total += reward
            steps += 1
            stamps.append(info["elapsed"])
            done = terminated or truncated
        assert steps == 200 and truncated and not terminated  # reacher's time limit, from the server
        assert np.allclose(np.diff(stamps), 0.02)
        assert np.isfinite(total)
        first, _ = env.reset(seed=3)
        again, _ = env.reset(seed=3)
        assert np.array_equal(first["pixels"], again["pixels"])  # the seed travels to the server
    finally:
        env.close()
    assert server.alive()


def test_ros_env_without_a_server_is_one_clear_error():
    from wm_sim.ros.ros_env import RosEnv, RosTimeoutError

    with pytest.raises(RosTimeoutError, match="wm-sim ros serve"):
        RosEnv(namespace="/nobody_here", connect_timeout=1.0)
    with pytest.raises(WmSimError, match="action_low and action_high"):
        RosEnv(namespace="/nobody_here", server=None, image_size=64, connect_timeout=1.0)


@pytest.mark.slow
def test_realtime_ticks_on_its_clock_holds_the_command_and_stops_on_ctrl_c(tmp_path):
    """Behaviour only: the rate it holds under load is measured by `wm-sim bench suite=ros`
    (benchmarks/), not asserted here, where a loaded machine would fail it."""
    # a namespace of its own: the module's lock-step server is still up, on /wm_sim
    server = Server(
        tmp_path, "env=wm_sim/Reacher-MuJoCo-v0", "mode=realtime", "rate=50", "namespace=/realtime"
    )
    client = Client("/realtime")
    try:
        client.connect(server)
        client.send([1.0, 0.0])  # held for every tick until the next command
        # Every frame is stamped on the server's 20 ms clock: ticks a busy client drops from its
        # best-effort queue still advance the stamps by whole periods.
        period = 20_000_000
        assert client.spin_until(lambda: len(client.images) > 0, 10.0)
        first = client.images[0][0]
        ticks = lambda: (client.images[-1][0] - first) // period  # noqa: E731
        assert client.spin_until(lambda: ticks() >= 100, 60.0)
        stamps = np.array([s for s, _, _ in client.images])
        assert np.all(np.diff(stamps) > 0) and np.all(np.diff(stamps) % period == 0)
        joints = np.array([j.position[0] for j in client.joints[-50:]])
        assert np.ptp(joints) > 0  # the held command keeps moving the arm
        code = server.interrupt()
    finally:
        client.close()
        server.kill()
    stdout, stderr = server.output()
    assert code == 0, stderr
    assert "stopped:" in stdout and "Hz (target 50)" in stdout
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_unservable_env_and_bad_options_are_one_line_errors(tmp_path):
    for args, expected in (
        (["env=CartPole-v1"], "1-D Box action space"),
        (["env=wm_sim/Nope-v0"], "wm_sim/Reacher-v0"),
        (["mode=fast"], "lockstep, realtime"),
        (["namespace=/9bad"], "not a valid ROS namespace"),
    ):
        result = subprocess.run(
            ["wm-sim", "ros", "serve", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr


def test_params_file_is_a_layer_under_the_command_line(tmp_path):
    from wm_sim.config import load_config

    def compose(*overrides: str) -> ServeConfig:
        return load_config("ros serve", ServeConfig, with_params_file(list(overrides)))

    path = tmp_path / "serve.yaml"
    path.write_text(
        "/**:\n  ros__parameters:\n    mode: realtime\n    rate: 25.0\n    use_sim_time: true\n"
        "simulator:\n  ros__parameters:\n    seed: 7\n    env_kwargs:\n      checkpoint: outputs/it's/last\n"
    )
    cfg = compose(f"params={path}", "rate=40.0")
    assert (cfg.mode, cfg.rate, cfg.seed) == ("realtime", 40.0, 7)  # the command line's rate wins
    assert cfg.env_kwargs == {"checkpoint": "outputs/it's/last"}  # quoted through Hydra intact
    assert compose(f"params={path}", "mode=lockstep").mode == "lockstep"  # even naming the default
    path.write_text("/**:\n  ros__parameters:\n    seed: many\n")
    with pytest.raises(WmSimError, match="seed"):  # type-checked like a typed value
        compose(f"params={path}")
    path.write_text("/**:\n  ros__parameters:\n    colour: red\n")
    with pytest.raises(WmSimError, match="unknown parameters \\['colour'\\]"):
        compose(f"params={path}")
    path.write_text("other_node:\n  ros__parameters:\n    mode: realtime\n")
    with pytest.raises(WmSimError, match="no ros__parameters for node /wm_sim/simulator"):
        compose(f"params={path}")


def test_shipped_launch_file_and_its_parameters():
    from importlib.resources import files

    ros = files("wm_sim.ros")
    launch = ros / "launch" / "serve.launch.py"
    ast.parse(launch.read_text())  # for teams with a full ROS 2 install: no launch package here
    assert "params/serve.yaml" in launch.read_text()
    values = read_ros_params(Path(str(ros / "params" / "serve.yaml")), "simulator", "/wm_sim")
    assert (
        set(values) <= {f for f in ServeConfig.__dataclass_fields__} and values["env"] == "wm_sim/Reacher-v0"
    )


def test_joint_layout_round_trip():
    layout = topics.JointLayout.of(["joint0.pos", "joint1.pos", "joint0.vel", "joint1.vel"])
    assert layout.joints == ("joint0", "joint1")
    state = np.array([0.1, -0.2, 1.5, -2.5], dtype=np.float32)
    msg = layout.to_msg(state, topics.time_msg(1.25))
    assert list(msg.position) == pytest.approx([0.1, -0.2]) and list(msg.velocity) == pytest.approx(
        [1.5, -2.5]
    )
    msg.name, msg.position, msg.velocity = ["joint1", "joint0"], [-0.2, 0.1], [-2.5, 1.5]  # another order
    assert np.allclose(layout.from_msg(msg), state)
    plain = topics.JointLayout.of(["x", "y"])
    assert plain.joints == ("x", "y") and plain.velocity is None
    assert topics.stamp_ns(topics.time_msg(1.25)) == 1_250_000_000
    assert (
        topics.join("/wm_sim", "commands") == "/wm_sim/commands" and topics.join("/a", "/clock") == "/clock"
    )


class FakeRobot:
    """A robot driver in a thread of this process: a camera at 20 Hz (each frame preceded by a
    depth image RosEnv cannot use), joint states on the driver's own clock, a command topic."""

    def __init__(self, namespace: str, wrist: bool = False):
        import threading

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("fake_robot", namespace=namespace, context=self.context)
        qos = topics.Qos.make()
        self.image = self.node.create_publisher(Image, "camera/image_raw", qos.sensor)
        # a second camera (green, 64x64), stamped 2 ms after the first: its own driver's clock
        self.wrist = self.node.create_publisher(Image, "wrist/image_raw", qos.sensor) if wrist else None
        self.joints = self.node.create_publisher(JointState, "joint_states", qos.reliable)
        self.commands: list[list[float]] = []
        self.node.create_subscription(
            Float64MultiArray, "cmd", lambda m: self.commands.append(list(m.data)), qos.reliable
        )
        self.ticks = 0
        self.node.create_timer(0.05, self._on_tick)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except ExternalShutdownException:  # close() shut the context down under the wait
            pass

    def _on_tick(self) -> None:
        from wm_sim.ros.messages import rgb_to_image_fields

        self.ticks += 1
        t = self.ticks * 0.05
        depth = Image(height=2, width=2, encoding="16UC1", step=4, data=bytes(8))  # not a colour image
        depth.header.stamp = topics.time_msg(t)
        self.image.publish(depth)
        frame = np.zeros((96, 128, 3), np.uint8)
        frame[..., 0] = 200  # red, sent as bgr8
        fields = rgb_to_image_fields(frame, "bgr8")
        good = Image(**{**fields, "data": fields["data"].tobytes()})
        good.header.stamp = topics.time_msg(t + 0.001)
        joints = JointState(name=["b", "a"], position=[2.0 * t, t])
        joints.header.stamp = topics.time_msg(t + 0.004)  # the driver's own clock: close, not equal
        self.joints.publish(joints)
        self.image.publish(good)
        if self.wrist is not None:
            green = np.zeros((64, 64, 3), np.uint8)
            green[..., 1] = 150
            self.wrist.publish(topics.rgb_image_msg(green, topics.time_msg(t + 0.003), "wrist"))

    def close(self) -> None:
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)
        self.node.destroy_node()


def test_ros_env_drives_a_robot_without_a_server():
    from wm_sim.ros.ros_env import RosEnv

    robot = FakeRobot("/arm")
    try:
        env = RosEnv(
            namespace="/arm", server=None, command_topic="cmd", image_topic="camera/image_raw",
            reward_topic="", done_topic="", terminated_topic="", reset_service="",
            action_low=[-1, -1, -1], action_high=[1, 1, 1], state_names=["a", "b"], image_size=64,
            slop=0.01, timeout=5.0, connect_timeout=30.0,
        )  # fmt: skip
        try:
            assert env.observation_space["pixels"].shape == (64, 64, 3)
            env.reset()  # no reset service: the robot's next image starts the episode
            obs, reward, terminated, truncated, info = env.step(np.array([0.5, 0.0, -0.5], np.float32))
            deadline = time.monotonic() + 5.0  # the camera runs free: the command may land later
            while not robot.commands and time.monotonic() < deadline:
                time.sleep(0.01)
            assert robot.commands == [[0.5, 0.0, -0.5]]
            assert obs["pixels"].shape == (64, 64, 3) and (obs["pixels"][..., 0] == 200).all()
            assert (obs["pixels"][..., 1:] == 0).all()  # bgr8 became RGB; 96x128 cropped and resized
            t = round(env.stamp - 0.001, 3)  # the image's stamp is t + 1 ms, its joint state's t + 4 ms
            assert obs["agent_pos"] == pytest.approx([t, 2.0 * t])  # by joint name, within the slop
            assert (reward, terminated, truncated) == (0.0, False, False)
            assert info["elapsed"] > 0
            assert env.dropped_images >= 1  # the 16UC1 images: dropped with a warning, not fatal
        finally:
            env.close()
    finally:
        robot.close()


def test_ros_env_observes_a_robots_cameras_paired_by_stamp():
    from wm_sim.ros.ros_env import RosEnv

    robot = FakeRobot("/arm2", wrist=True)
    try:
        env = RosEnv(
            namespace="/arm2", server=None, command_topic="cmd",
            image_topics={"front": "camera/image_raw", "wrist": "wrist/image_raw"},
            reward_topic="", done_topic="", terminated_topic="", reset_service="",
            action_low=[-1, -1, -1], action_high=[1, 1, 1], state_names=["a", "b"], image_size=32,
            slop=0.01, timeout=5.0, connect_timeout=30.0,
        )  # fmt: skip
        try:
            assert env.cameras == ("front", "wrist")
            assert list(env.observation_space["pixels"]) == ["front", "wrist"]  # the order given
            env.reset()
            obs, *_ = env.step(np.zeros(3, np.float32))
            assert env.observation_space.contains(obs)
            assert (obs["pixels"]["front"][..., 0] == 200).all()  # bgr8 red, cropped and resized to 32
            wrist = obs["pixels"]["wrist"]
            assert (wrist[..., 1] == 150).all() and (wrist[..., 0] == 0).all()  # paired within the slop
        finally:
            env.close()
    finally:
        robot.close()


def test_each_camera_gets_its_own_topic_and_one_camera_keeps_image_raw():
    import gymnasium as gym
    from wm_sim.ros.sim_node import find_cameras

    assert topics.image_topics(["top"]) == ["image_raw"]  # one camera: the topic of old, whatever its name
    assert topics.image_topics(["top", "side"]) == ["top/image_raw", "side/image_raw"]
    with pytest.raises(WmSimError, match="camera 'wrist-left' cannot name a ROS topic"):
        topics.image_topics(["top", "wrist-left"])
    for cameras, expected in ((None, ("top",)), (["side", "top"], ("side", "top"))):
        env = gym.make("wm_sim/Reacher-MuJoCo-v0", cameras=cameras)
        try:
            found = find_cameras(env)
            assert (found.key, found.names, found.shape) == ("pixels", expected, (64, 64, 3))
            obs, _ = env.reset(seed=0)
            frames = found.frames(obs)
            assert len(frames) == len(expected) and all(f.shape == (64, 64, 3) for f in frames)
        finally:
            env.close()


def test_params_file_passes_a_list_of_cameras_to_the_env(tmp_path):
    from wm_sim.config import load_config

    path = tmp_path / "serve.yaml"
    path.write_text(
        "simulator:\n  ros__parameters:\n    env: wm_sim/Reacher-MuJoCo-v0\n"
        "    env_kwargs:\n      cameras: [top, side]\n"
    )
    cfg = load_config("ros serve", ServeConfig, with_params_file([f"params={path}"]))
    assert cfg.env_kwargs == {"cameras": ["top", "side"]}


@pytest.fixture(scope="session")
def two_camera_checkpoint(tmp_path_factory) -> Path:
    """A tiny world model of a two-camera (top, side) reacher dataset, trained a few steps: enough
    to be served, not to be right."""
    from wm_sim.collect import CollectConfig, collect
    from wm_sim.tracking import WandbConfig
    from wm_sim.train import TrainConfig, TrainingRecipe, train

    root = tmp_path_factory.mktemp("two-cameras")
    data = root / "reacher-two.zarr"
    collect(
        CollectConfig(
            task="reacher",
            policy="mixed",
            episodes=2,
            workers=1,
            seed=7,
            out=str(data),
            cameras=["top", "side"],
        )
    )
    tiny = tiny_architecture()
    return train(
        TrainConfig(
            data=str(data), model=tiny, out=str(root / "run"), steps=5, training=TrainingRecipe(decoder_steps=0, transition_rollout_steps=0, batch_size=4, lr=3e-3),
            val_fraction=0.5, threads=1, wandb=WandbConfig(mode="disabled"),
        )
    )  # fmt: skip


@pytest.mark.slow
def test_two_camera_world_model_publishes_a_topic_per_camera_with_one_stamp(two_camera_checkpoint, tmp_path):
    from gymnasium.utils.env_checker import check_env
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python
    from wm_sim.ros.messages import image_to_rgb
    from wm_sim.ros.ros_env import RosEnv

    ns = "/two_cameras"  # a namespace of its own: the module's lock-step server may be up on /wm_sim
    server = Server(
        tmp_path,
        "env=wm_sim/WorldModel-v0",
        f"+env_kwargs.checkpoint={two_camera_checkpoint}",
        f"namespace={ns}",
    )
    client = Client(ns)
    frames: dict[str, list[Image]] = {"top": [], "side": []}
    for camera, received in frames.items():
        client.node.create_subscription(
            Image, topics.join(ns, f"{camera}/image_raw"), received.append, topics.Qos.make().sensor
        )
    stamps = lambda camera: [topics.stamp_ns(m.header.stamp) for m in frames[camera]]  # noqa: E731
    try:
        client.connect(server)
        names = ["cameras", "image_topics", "image_height", "image_width"]
        reply = client.call(
            client.node.create_client(GetParameters, f"{ns}/simulator/get_parameters"),
            GetParameters.Request(names=names),
        )
        declared = dict(zip(names, map(parameter_value_to_python, reply.values), strict=True))
        assert declared == {
            "cameras": ["top", "side"], "image_topics": ["top/image_raw", "side/image_raw"],
            "image_height": 64, "image_width": 64,
        }  # fmt: skip
        assert client.node.count_publishers(topics.join(ns, topics.IMAGE)) == 0  # no single-camera topic

        client.call(client.reset_client, Trigger.Request())
        assert client.spin_until(lambda: frames["top"] and stamps("side")[-1:] == stamps("top")[-1:])
        for _ in range(3):  # lock-step: each command, one frame of each camera, stamped alike
            count = len(frames["top"])
            client.send([0.3, -0.2])
            assert client.spin_until(lambda c=count: len(frames["top"]) > c and len(frames["side"]) > c)
            client.spin_for(0.2)
        assert stamps("top") == stamps("side") and len(set(stamps("top"))) == len(frames["top"]) >= 4
        assert np.all(np.diff(stamps("top")[-4:]) == 20_000_000)  # one simulated step apiece
        for camera, received in frames.items():
            msg = received[-1]
            assert (msg.encoding, msg.height, msg.width, msg.step) == ("rgb8", 64, 64, 192)
            assert msg.header.frame_id == f"{camera}_camera"  # each camera its own frame
        assert topics.stamp_ns(client.joints[-1].header.stamp) == stamps("top")[-1]

        env = RosEnv(namespace=ns, timeout=10.0)  # the server's cameras, from its parameters
        try:
            assert env.cameras == ("top", "side")
            assert list(env.observation_space["pixels"]) == ["top", "side"]
            check_env(env, skip_render_check=True)
            first, _ = env.reset(seed=5)
            assert not np.array_equal(
                first["pixels"]["top"], first["pixels"]["side"]
            )  # two views, not one twice
            obs, reward, *_ = env.step(np.array([0.5, -0.5], np.float32))
            assert env.observation_space.contains(obs) and np.isfinite(reward)
            assert env.render() is None  # no render_mode
            client.spin_for(0.5)  # what the plain subscriber got at that stamp is what the env observed
            at = {
                c: [m for m in frames[c] if topics.stamp_ns(m.header.stamp) == round(env.stamp * 1e9)]
                for c in frames
            }
            for camera in ("top", "side"):
                np.testing.assert_array_equal(image_to_rgb(at[camera][-1]), obs["pixels"][camera])
            again, _ = env.reset(seed=5)
            for camera in ("top", "side"):  # the seed travels to the server, for every camera
                np.testing.assert_array_equal(first["pixels"][camera], again["pixels"][camera])
        finally:
            env.close()
        assert server.alive()
        code = server.interrupt()
    finally:
        client.close()
        server.kill()
    stdout, stderr = server.output()
    assert code == 0, stderr
    assert f"{ns}/top/image_raw, {ns}/side/image_raw" in stdout and "Traceback" not in stderr
