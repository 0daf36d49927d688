"""`wm-sim ros serve`: any registered Gymnasium env as a ROS 2 simulator node.

    wm-sim ros serve env=wm_sim/Reacher-v0 mode=lockstep
    wm-sim ros serve env=wm_sim/Reacher-MuJoCo-v0 mode=realtime rate=50   # the physics twin, same topics
    wm-sim ros serve params=my_robot.yaml                                   # ROS parameter file
    wm-sim ros serve env=wm_sim/Reacher-MuJoCo-v0 "+env_kwargs.cameras=[top,side]"   # a topic per camera

Topics, services and their QoS are in `wm_sim.ros.topics`; the node is `wm_sim.ros.sim_node`.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
from wm_sim.ros import topics

from wm_sim.errors import WmSimError
from wm_sim.optional import require

MODES = ("lockstep", "realtime")


@dataclass
class ServeConfig:
    """Options of `wm-sim ros serve`."""

    env: str = field(
        default="wm_sim/Reacher-v0",
        metadata={"help": "a registered Gymnasium id with a Box action and a pixel observation"},
    )
    env_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "keyword arguments of gymnasium.make, e.g. +env_kwargs.checkpoint=PATH"},
    )
    mode: str = field(
        default="lockstep", metadata={"help": "lockstep (a command, a step) or realtime (steps at rate Hz)"}
    )
    rate: float = field(default=0.0, metadata={"help": "realtime steps per second (0: the env's fps)"})
    namespace: str = field(default="/wm_sim", metadata={"help": "the topics' namespace"})
    node_name: str = field(default="simulator", metadata={"help": "the node's name in that namespace"})
    frame_id: str = field(
        default="camera",
        metadata={"help": "frame_id of the published images (several cameras: <camera>_<frame_id>)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the first episode (-1: unseeded)"})
    autoreset: bool = field(
        default=True, metadata={"help": "a command after an episode's end starts the next episode"}
    )
    publish_clock: bool = field(
        default=True, metadata={"help": "publish simulated time on /clock (one simulator per ROS domain)"}
    )
    localhost_only: bool = field(
        default=True, metadata={"help": "DDS discovery on this host only (unless the shell sets it)"}
    )
    params: str = field(
        default="", metadata={"help": "ROS 2 parameter YAML (ros__parameters); the command line wins over it"}
    )
    duration: float = field(default=0.0, metadata={"help": "stop after this many seconds (0: at Ctrl-C)"})
    # One env steps at batch 1, where a second intra-op thread gains little and its busy-waiting
    # collapses the rate when anything else wants the cores (a command flood, DDS, another job):
    # served 12.6 Hz at threads=2 against 49.6 at 1, under a flood with every core busy (`wm-sim bench suite=ros`).
    threads: int = field(
        default=1,
        metadata={"help": "torch CPU threads (1 holds a realtime rate under load; 0: torch's default)"},
    )


def serve(cfg: ServeConfig) -> None:
    """Serve `cfg.env` until Ctrl-C (or `cfg.duration`), then shut down cleanly."""
    _check(cfg)
    rclpy = require("rclpy")
    topics.use_local_discovery(cfg.localhost_only)
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from wm_sim.ros.sim_node import NodeConfig, SimulatorNode

    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    env = make_env(cfg.env, cfg.env_kwargs)
    context = rclpy.Context()
    # Ctrl-C and SIGTERM (`docker stop`, launch) only ask the loop below to stop, and the main
    # thread then shuts ROS down itself, in order. With rclpy's own handlers (which shut the
    # context down from their thread, whatever this one is doing) a CI run once saw the process
    # not exit at Ctrl-C.
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous = {
        s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)
    }
    node = None
    executor = SingleThreadedExecutor(context=context)
    try:
        node = SimulatorNode(
            env,
            NodeConfig(
                mode=cfg.mode,
                rate=cfg.rate,
                namespace=topics.check_namespace(cfg.namespace),
                node_name=cfg.node_name,
                frame_id=cfg.frame_id,
                seed=None if cfg.seed < 0 else cfg.seed,
                autoreset=cfg.autoreset,
                publish_clock=cfg.publish_clock,
            ),
            context=context,
        )
        executor.add_node(node)
        ns = node.get_namespace()
        print(
            f"serving {cfg.env} ({cfg.mode}{f', {node.rate:g} Hz' if cfg.mode == 'realtime' else ''}) "
            f"as {node.get_fully_qualified_name()}: commands on {topics.join(ns, topics.COMMANDS)} "
            f"[{node.action_dim} floats], observations on "
            f"{', '.join(topics.join(ns, topic) for topic in node.image_topics)}, "
            f"{topics.join(ns, topics.JOINT_STATES)}, {topics.join(ns, topics.REWARD)}, "
            f"{topics.join(ns, topics.DONE)}, /clock; Ctrl-C stops",
            flush=True,
        )
        deadline = time.monotonic() + cfg.duration if cfg.duration > 0 else float("inf")
        while context.ok() and not stop.is_set() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=min(0.1, max(0.0, deadline - time.monotonic())))
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if node is not None:
            print(f"stopped: {node.summary()}", flush=True)
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown(context=context)
        env.close()


def make_env(env_id: str, kwargs: dict[str, Any]) -> gymnasium.Env:
    """gymnasium.make, with an unknown id or bad keyword turned into one clear error."""
    import wm_sim  # noqa: F401  (registers the wm_sim ids)

    try:
        return gymnasium.make(env_id, **kwargs)
    except gymnasium.error.Error as exc:
        ours = sorted(k for k in gymnasium.registry if k.startswith("wm_sim/"))
        raise WmSimError(f"cannot make env {env_id!r}: {exc}; wm-sim registers {', '.join(ours)}") from exc
    except TypeError as exc:
        if not kwargs:
            raise
        raise WmSimError(f"env {env_id!r} does not take env_kwargs {dict(kwargs)}: {exc}") from exc


# Parameters every ROS node may be given in a shared `/**` section; they mean nothing to this one.
STANDARD_ROS_PARAMETERS = ("use_sim_time", "qos_overrides", "start_type_description_service")


def with_params_file(overrides: list[str]) -> list[str]:
    """The command line's overrides with its `params=` file's values placed before them.

    Composed in that order, the command line wins over the file and the file over the defaults,
    and the file's values are type-checked like typed ones. The file is ROS 2's:
    `<node>: {ros__parameters: {...}}`; the sections for `/**`, the node name and its full name
    apply in that order.
    """
    given = dict(o.lstrip("+").split("=", 1) for o in overrides if "=" in o)
    if not given.get("params"):
        return overrides
    path = Path(given["params"].strip("'\""))
    node_name = given.get("node_name", ServeConfig.node_name).strip("'\"")
    namespace = given.get("namespace", ServeConfig.namespace).strip("'\"")
    values = read_ros_params(path, node_name, namespace)
    fields = {f.name for f in dataclasses.fields(ServeConfig)} - {"params"}
    unknown = sorted(set(values) - fields - set(STANDARD_ROS_PARAMETERS))
    if unknown:
        raise WmSimError(
            f"{path}: unknown parameters {unknown}; `wm-sim ros serve` takes {', '.join(sorted(fields))}"
        )
    layer = []
    for name, value in values.items():
        if name not in fields:
            continue
        if isinstance(value, dict):  # env_kwargs: one override per entry, added to the dict
            layer += [f"++{name}.{key}={_hydra_value(item, path)}" for key, item in value.items()]
        else:
            layer.append(f"{name}={_hydra_value(value, path)}")
    return layer + overrides


def _hydra_value(value: object, path: Path) -> str:
    """A YAML scalar as Hydra override text: strings quoted, so no character is taken as syntax."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list) and not any(isinstance(item, list | dict) for item in value):
        return "[" + ",".join(_hydra_value(item, path) for item in value) + "]"  # e.g. cameras: [top, side]
    raise WmSimError(f"{path}: parameter value {value!r} is not a string, number, boolean or list of them")


def read_ros_params(path: Path, node_name: str, namespace: str) -> dict[str, Any]:
    """The ros__parameters of a ROS 2 parameter file that apply to node `namespace/node_name`."""
    import yaml

    if not path.is_file():
        raise WmSimError(f"params file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise WmSimError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise WmSimError(f"params file {path}: expected a mapping of node names to ros__parameters")
    values: dict[str, Any] = {}
    full_name = topics.join(namespace, node_name)
    for key in ("/**", node_name, full_name.lstrip("/"), full_name):
        section = data.get(key)
        if section is None:
            continue
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
            raise WmSimError(f"params file {path}: section {key!r} must hold a ros__parameters mapping")
        values.update(section["ros__parameters"])
    if not values:
        raise WmSimError(
            f"params file {path} has no ros__parameters for node {full_name}: "
            f"expected a section named '/**', {node_name!r} or {full_name!r}"
        )
    return values


def _check(cfg: ServeConfig) -> None:
    if cfg.mode not in MODES:
        raise WmSimError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    if cfg.rate < 0:
        raise WmSimError(f"rate must be positive (steps per second) or 0 for the env's fps, got {cfg.rate}")
    if cfg.duration < 0:
        raise WmSimError(f"duration must be >= 0 seconds, got {cfg.duration}")
    topics.check_namespace(cfg.namespace)
    topics.check_node_name(cfg.node_name)
