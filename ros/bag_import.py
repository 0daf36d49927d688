"""`wm-sim ros import-bag`: a rosbag2 recording (sqlite3 or mcap) into a zarr dataset store.

How messages become the fixed-rate rows of episodes:
- Every message gets a time: its header stamp where it has a header with a non-zero stamp, the
  bag's receive time otherwise (`stamps=receive`: the receive time always).
- A silence longer than `gap` on an image topic or the command topic ends an episode; the next
  starts once they all publish again. A message of any type on `marker_topic` starts a new episode too.
- In each episode a clock ticks at `fps` from the first image of the first camera (the one image
  topic, or the first of `image_topics`). At every tick each topic, every camera's alike, gives
  its latest message at or before the tick (zero-order hold: nothing is interpolated). Ticks
  before every camera, the command topic (and the joint-state topic) have published in the
  episode are skipped; the episode ends at the last message of its image, command or
  joint-state topics, whichever is first.
- Row k holds each camera's frame, the joint state and the command in force at tick k, and the
  reward in force at tick k + 1: the reward that followed the command, as in collected datasets.

The import is in four parts: reading the bag into per-topic streams (`bag_streams.py`), cutting
them into episodes on the fixed-rate clock (`bag_episodes.py`), the report of what was used
(`bag_report.py`), and here the options, the store's rows and the verb that writes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from wm_sim.ros.bag_episodes import Episode, cut_segments, estimate_fps, resample_episode
from wm_sim.ros.bag_report import build_report, format_report
from wm_sim.ros.bag_streams import IMAGE_ROLE, Stream, check_clocks, image_roles, read_streams

from wm_sim.data.imports import write_imported_store
from wm_sim.data.schema import (
    ACTION_KEY,
    REWARD_KEY,
    STATE_KEY,
    SUCCESS_KEY,
    TERMINATED_KEY,
    DatasetInfo,
    episode_bookkeeping,
    frame_features,
    image_key,
)
from wm_sim.errors import WmSimError

REPORT_FILE = "import_report.json"
STAMPS = ("header", "receive")
CAMERA_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a store camera name: part of a zarr array's name


@dataclass
class ImportBagConfig:
    """Options of `wm-sim ros import-bag`."""

    bag: str = field(
        default="", metadata={"help": "the rosbag2 directory (holding metadata.yaml), or a ROS 1 .bag file"}
    )
    image_topic: str = field(
        default="",
        metadata={"help": "sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) or CompressedImage"},
    )
    image_topics: list[str] = field(
        default_factory=list,
        metadata={"help": "several cameras' image topics, instead of image_topic; the first sets the clock"},
    )
    action_topic: str = field(
        default="",
        metadata={
            "help": "commands: std_msgs/Float64MultiArray or Float32MultiArray, geometry_msgs/Twist(Stamped)"
        },
    )
    joint_state_topic: str = field(
        default="",
        metadata={"help": "sensor_msgs/JointState: the state's positions; '' = the previous command"},
    )
    reward_topic: str = field(default="", metadata={"help": "std_msgs/Float32 or Float64; '' = reward 0"})
    marker_topic: str = field(
        default="", metadata={"help": "a message of any type on it starts a new episode; '' = none"}
    )
    fps: float = field(
        default=0.0, metadata={"help": "rows per second; 0 = from the image topic's median period"}
    )
    gap: float = field(
        default=1.0, metadata={"help": "seconds of silence on the image or command topic that end an episode"}
    )
    stamps: str = field(
        default="header", metadata={"help": "header: header stamps where present; receive: the bag's times"}
    )
    image_size: int = field(default=64, metadata={"help": "square frame size: centre crop, then resize"})
    camera: str = field(default="", metadata={"help": "camera name in the store; '' = from image_topic"})
    cameras: list[str] = field(
        default_factory=list,
        metadata={
            "help": "camera names of image_topics, in order; [] = the first level where the topic names differ"
        },
    )
    joints: list[str] = field(
        default_factory=list,
        metadata={"help": "joints kept, in this order; [] = all, as the first message names them"},
    )
    joint_velocity: bool = field(default=False, metadata={"help": "also store joint velocities"})
    action_low: list[float] = field(
        default_factory=list, metadata={"help": "command mapped to -1, per entry; [] = the smallest observed"}
    )
    action_high: list[float] = field(
        default_factory=list, metadata={"help": "command mapped to +1, per entry; [] = the largest observed"}
    )
    min_episode_steps: int = field(default=2, metadata={"help": "shorter episodes are left out"})
    task: str = field(default="", metadata={"help": "the dataset's task name; '' = rosbag:<bag name>"})
    out: str = field(default="", metadata={"help": "the zarr store to create; '' = datasets/<bag name>.zarr"})


# --- rows --------------------------------------------------------------------------------------


@dataclass
class Actions:
    """Each episode's commands mapped linearly from [low, high] onto [-1, 1]."""

    per_episode: list[np.ndarray]  # (T, A) float32
    low: np.ndarray  # (A,) the command mapped to -1
    high: np.ndarray  # (A,) the command mapped to +1
    clipped: int  # entries outside [low, high], clipped


def _actions(cfg: ImportBagConfig, commands: Stream, episodes: list[Episode]) -> Actions:
    """The commands in force at every row, normalised like a collected dataset's actions."""
    raw = [commands.values[e.picks["command"]] for e in episodes]
    dim = commands.values.shape[1]
    if cfg.action_low:
        low, high = np.asarray(cfg.action_low, np.float64), np.asarray(cfg.action_high, np.float64)
        if low.shape != (dim,) or high.shape != (dim,):
            raise WmSimError(
                f"action_low and action_high need {dim} entries each (the command's length), "
                f"got {len(cfg.action_low)} and {len(cfg.action_high)}"
            )
        if not (low < high).all():
            raise WmSimError(
                f"action_low must be below action_high in every entry, got {low.tolist()} and {high.tolist()}"
            )
    else:  # the range the imported rows use
        low, high = np.concatenate(raw).min(0), np.concatenate(raw).max(0)
    span = np.where(high > low, high - low, 1.0)
    per_episode, clipped = [], 0
    for commands_ in raw:
        # a constant entry (low == high) maps to 0
        actions = np.where(high > low, 2.0 * (commands_ - low) / span - 1.0, 0.0)
        clipped += int((np.abs(actions) > 1.0 + 1e-6).sum())
        per_episode.append(np.clip(actions, -1.0, 1.0).astype(np.float32))
    return Actions(per_episode, low, high, clipped)


def _dataset_info(
    cfg: ImportBagConfig,
    bag: Path,
    fps: float,
    streams: dict[str, Stream],
    episodes: list[Episode],
    actions: Actions,
) -> DatasetInfo:
    """The store's attributes: a collected dataset's features, without physics_state."""
    action_names = streams["command"].names
    if "joint_state" in streams:
        state_names = streams["joint_state"].names
    else:
        state_names = [f"previous {n}" for n in action_names]
    images = {role[len(IMAGE_ROLE) :]: streams[role].topic for role in image_roles(streams)}
    cameras = list(images)
    return DatasetInfo(
        task=cfg.task or f"rosbag:{_bag_name(bag)}",
        fps=fps,
        image_size=cfg.image_size,
        cameras=cameras,
        action_low=[-1.0] * len(action_names),
        action_high=[1.0] * len(action_names),
        features=frame_features(cameras, cfg.image_size, state_names, action_names),
        episode_steps=max(len(e.ticks) for e in episodes),
        collection={
            "source": "rosbag",
            "bag": str(bag.resolve()),
            "topics": {role: s.topic for role, s in streams.items() if not role.startswith(IMAGE_ROLE)}
            | {"images": images},  # camera -> its image topic
            "stamps": cfg.stamps,
            "command_low": actions.low.tolist(),
            "command_high": actions.high.tolist(),
            "report": REPORT_FILE,
        },
    )


def _rows(
    episode: Episode, index: int, streams: dict[str, Stream], actions: np.ndarray
) -> dict[str, np.ndarray]:
    """The store rows of one episode; `actions` are its normalised commands."""
    length = len(episode.ticks)
    if "joint_state" in streams:
        state = streams["joint_state"].values[episode.picks["joint_state"]].astype(np.float32)
    else:  # the command in force at the tick before; 0 (the range's middle) on the first row
        state = np.concatenate([np.zeros_like(actions[:1]), actions[:-1]])
    reward = np.zeros(length, np.float32)
    if "reward" in streams:
        picks = episode.picks["reward"]
        reward[picks >= 0] = streams["reward"].values[picks[picks >= 0]]
    rows = {
        image_key(role[len(IMAGE_ROLE) :]): streams[role].values[episode.picks[role]]
        for role in image_roles(streams)
    }  # every camera's frame in force at each tick
    rows |= {
        STATE_KEY: state,
        ACTION_KEY: actions,
        REWARD_KEY: reward,
        TERMINATED_KEY: np.zeros(length, dtype=bool),
        SUCCESS_KEY: np.zeros(length, dtype=bool),
    }
    return rows | episode_bookkeeping(index, (episode.ticks - episode.ticks[0]) / 1e9)


# --- the verb ----------------------------------------------------------------------------------


def _bag_path(bag: str) -> Path:
    """The path rosbags opens: a rosbag2 directory, or a ROS 1 .bag file."""
    if not bag:
        raise WmSimError(
            "bag= is required: the rosbag2 directory to import (the folder holding metadata.yaml)"
        )
    path = Path(bag)
    if not path.exists():
        raise WmSimError(f"no rosbag at {path}")
    if path.is_file() and path.suffix == ".bag":
        return path
    if path.is_file() and (path.parent / "metadata.yaml").is_file():
        return path.parent  # a storage file of a bag directory: the directory is the bag
    if path.is_file() or not (path / "metadata.yaml").is_file():
        raise WmSimError(
            f"{path} is not a rosbag2 directory: expected a folder holding metadata.yaml and its .mcap or "
            "db3 files (`ros2 bag reindex <folder>` rewrites a lost metadata.yaml), or a ROS 1 .bag file"
        )
    return path


def _check_config(cfg: ImportBagConfig) -> None:
    if not (cfg.image_topic or cfg.image_topics) or not cfg.action_topic:
        raise WmSimError(
            "image_topic= (or image_topics=[...] for several cameras) and action_topic= are required "
            "(the camera and command topics)"
        )
    if cfg.image_topic and cfg.image_topics:
        raise WmSimError(
            f"give image_topic= (one camera) or image_topics= (several), not both: got {cfg.image_topic!r} "
            f"and {cfg.image_topics}"
        )
    if cfg.camera and cfg.cameras:
        raise WmSimError(
            f"give camera= (one camera) or cameras= (several), not both: got {cfg.camera!r} and {cfg.cameras}"
        )
    topics = [
        cfg.image_topic, *cfg.image_topics, cfg.action_topic, cfg.joint_state_topic, cfg.reward_topic,
        cfg.marker_topic,
    ]  # fmt: skip
    named = [t for t in topics if t]
    if len(set(named)) != len(named):
        raise WmSimError(f"each topic may serve one role only, got {named}")
    if cfg.fps < 0:
        raise WmSimError(f"fps must be positive (or 0 to estimate it), got {cfg.fps}")
    if cfg.gap <= 0:
        raise WmSimError(f"gap must be a positive number of seconds, got {cfg.gap}")
    if cfg.stamps not in STAMPS:
        raise WmSimError(f"stamps must be one of {', '.join(STAMPS)}, got {cfg.stamps!r}")
    if not 16 <= cfg.image_size <= 512:
        raise WmSimError(f"image_size must be an integer in [16, 512], got {cfg.image_size}")
    if cfg.min_episode_steps < 1:
        raise WmSimError(f"min_episode_steps must be at least 1, got {cfg.min_episode_steps}")
    if bool(cfg.action_low) != bool(cfg.action_high):
        raise WmSimError("give both action_low and action_high, or neither (the observed range)")


def camera_name(topic: str) -> str:
    """A store camera name from an image topic: its first name, `/wrist/image_raw` -> `wrist`."""
    parts = [p for p in topic.split("/") if p]
    return re.sub(r"[^A-Za-z0-9_-]", "_", parts[0] if parts else "camera")


def camera_names(topics: list[str]) -> list[str]:
    """Store camera names from image topics: one topic's is `camera_name`'s; several are named by the
    first level at which every topic's name differs, so `/wm_sim/top/image_raw` and
    `/wm_sim/side/image_raw` (what `wm-sim ros serve` publishes) give `top` and `side`."""
    if len(topics) == 1:
        return [camera_name(topics[0])]
    levels = [[p for p in topic.split("/") if p] for topic in topics]
    for depth in range(max(map(len, levels))):
        names = [
            re.sub(r"[^A-Za-z0-9_-]", "_", parts[depth]) if depth < len(parts) else "" for parts in levels
        ]
        if all(names) and len(set(names)) == len(names):
            return names
    raise WmSimError(
        f"cannot name the cameras of image_topics {topics}: no level of the topic names tells them all "
        "apart; name them with cameras=[...], one name per topic"
    )


def _camera_topics(cfg: ImportBagConfig) -> dict[str, str]:
    """{camera: its image topic}, in the order given: the store's camera order."""
    topics = cfg.image_topics or [cfg.image_topic]
    given = cfg.cameras or ([cfg.camera] if cfg.camera else [])
    if given and len(given) != len(topics):
        raise WmSimError(
            f"cameras= names {len(given)} cameras {given} for {len(topics)} image topics {topics}: "
            "give one name per topic, in the same order"
        )
    names = given or camera_names(topics)
    for name, topic in zip(names, topics, strict=True):
        if not CAMERA_NAME.fullmatch(name):
            raise WmSimError(
                f"camera name {name!r} (of {topic}) is not a store camera name: expected ASCII letters, "
                "digits, '_' and '-'"
            )
    for i, name in enumerate(names):
        if name in names[:i]:
            first = topics[names.index(name)]
            raise WmSimError(
                f"image topics {first} and {topics[i]} both give camera {name!r}: each camera needs its "
                "own name; name them with cameras=[...], one name per topic"
            )
    return dict(zip(names, topics, strict=True))


def _bag_name(bag: Path) -> str:
    return bag.stem if bag.is_file() else bag.resolve().name


def import_bag(cfg: ImportBagConfig) -> Path:
    """Convert the rosbag `cfg.bag` into the new dataset store `cfg.out`; returns its path."""
    _check_config(cfg)
    bag = _bag_path(cfg.bag)
    out = Path(cfg.out or f"datasets/{_bag_name(bag)}.zarr")
    if out.exists():
        raise WmSimError(f"{out} already exists; refusing to overwrite it: choose another out= or delete it")
    cameras = _camera_topics(cfg)
    roles = {f"{IMAGE_ROLE}{camera}": topic for camera, topic in cameras.items()}
    roles["command"] = cfg.action_topic
    optional = {"joint_state": cfg.joint_state_topic, "reward": cfg.reward_topic, "marker": cfg.marker_topic}
    roles |= {role: topic for role, topic in optional.items() if topic}
    streams = read_streams(bag, roles, cfg)
    check_clocks(streams)
    gap_ns = int(cfg.gap * 1e9)
    fps, fps_source = (
        (float(cfg.fps), "fps=") if cfg.fps else estimate_fps(streams[image_roles(streams)[0]], gap_ns)
    )
    segments, period_ns = cut_segments(streams, gap_ns), 1e9 / fps
    candidates = [e for seg in segments if (e := resample_episode(streams, seg, period_ns))]
    episodes = [e for e in candidates if len(e.ticks) >= cfg.min_episode_steps]
    short = [e for e in candidates if len(e.ticks) < cfg.min_episode_steps]
    if not episodes:
        raise WmSimError(
            f"{bag} yields no episode of at least min_episode_steps={cfg.min_episode_steps} rows at {fps:g} fps "
            f"(candidates: {[len(e.ticks) for e in candidates]}); check the topics, gap= and fps="
        )
    actions = _actions(cfg, streams["command"], episodes)
    info = _dataset_info(cfg, bag, fps, streams, episodes, actions)
    report = build_report(cfg, out, info, streams, episodes, short, fps_source, actions)
    rows = [
        _rows(e, i, streams, a) for i, (e, a) in enumerate(zip(episodes, actions.per_episode, strict=True))
    ]
    write_imported_store(out, info, rows, report, REPORT_FILE)
    print(format_report(report))
    print(f"  report: {out / REPORT_FILE}")
    return out
