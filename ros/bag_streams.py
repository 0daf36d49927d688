"""Reading a rosbag into per-topic streams, for `wm-sim ros import-bag` (`bag_import.py`).

Every message of the chosen topics is converted into the array a row holds (a square RGB frame, a
command or joint-state vector, a reward) and timed: its header stamp where it has one, the bag's
receive time otherwise. Each topic serves one role: "command", "joint_state", "reward", "marker",
or "image:<camera>" for each camera's images. `bag_episodes.py` cuts the streams into episodes.

rosbags is imported lazily, inside the functions that read a bag, so `wm-sim --help` stays light.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm
from wm_sim.ros.messages import compressed_to_rgb, image_to_rgb, square_frame

from wm_sim.errors import WmSimError
from wm_sim.optional import require

if TYPE_CHECKING:
    from wm_sim.ros.bag_import import ImportBagConfig

# what reading bytes that are not a bag raises besides rosbags' own errors (UnicodeDecodeError is a ValueError)
UNREADABLE = (ValueError, EOFError, struct.error, IndexError, KeyError)
# A header-stamped topic whose stamps sit further than this from the bag's receive times is on
# another clock (simulated time, a robot's unsynchronised clock) than the topics without headers.
CLOCK_TOLERANCE_NS = 1_000_000_000

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
COMMAND_TYPES = (
    "std_msgs/msg/Float64MultiArray",
    "std_msgs/msg/Float32MultiArray",
    "geometry_msgs/msg/Twist",
    "geometry_msgs/msg/TwistStamped",
)
JOINT_STATE_TYPES = ("sensor_msgs/msg/JointState",)
REWARD_TYPES = ("std_msgs/msg/Float32", "std_msgs/msg/Float64")
ACCEPTED_TYPES = {
    "image": IMAGE_TYPES,
    "command": COMMAND_TYPES,
    "joint_state": JOINT_STATE_TYPES,
    "reward": REWARD_TYPES,
}  # the marker topic may carry anything
TWIST_NAMES = ["linear.x", "linear.y", "linear.z", "angular.x", "angular.y", "angular.z"]
IMAGE_ROLE = "image:"  # a camera's role is "image:<camera>"; the first camera's images set the clock
REQUIRED = ("image", "command", "joint_state")  # kinds of topic every row needs a message of


def role_kind(role: str) -> str:
    """What a role's topic carries: "image" for every camera's, else the role itself."""
    return "image" if role.startswith(IMAGE_ROLE) else role


def describe_role(role: str) -> str:
    return f"image of camera {role[len(IMAGE_ROLE) :]}" if role.startswith(IMAGE_ROLE) else role


def image_roles(streams: dict) -> list[str]:
    """The cameras' roles, in the store's camera order: the first is the clock."""
    return [role for role in streams if role.startswith(IMAGE_ROLE)]


@dataclass
class Stream:
    """One topic's messages in time order: their times (ns) and what each was turned into."""

    role: str
    topic: str
    msgtype: str
    times: np.ndarray  # (M,) int64 ns
    values: np.ndarray  # (M, ...)
    clock: str = ""  # which time each message got, in words
    offset_ns: int = 0  # median receive time minus header stamp, over header-stamped messages
    names: list[str] | None = None  # the entries of a vector (command, joint state)

    def between(self, lo: int, hi: int) -> tuple[int, int]:
        """The index range [start, stop) of the messages timed in [lo, hi)."""
        return int(np.searchsorted(self.times, lo)), int(np.searchsorted(self.times, hi))


def _topic_types(reader) -> dict[str, list[str]]:
    """Every topic of the bag with the message types recorded on it."""
    return {
        topic: sorted({c.msgtype for c in info.connections}) for topic, info in sorted(reader.topics.items())
    }


def _check_topics(roles: dict[str, str], topics: dict[str, list[str]], cfg: ImportBagConfig) -> None:
    """Refuse a topic the bag lacks, or one whose type this importer cannot read."""
    listing = "; ".join(f"{t} ({', '.join(types)})" for t, types in topics.items()) or "none"
    for role, topic in roles.items():
        kind = role_kind(role)
        if topic not in topics:
            option = "image_topics" if kind == "image" and cfg.image_topics else f"{kind}_topic"
            raise WmSimError(
                f"the bag has no topic {topic!r} ({option}, the {describe_role(role)}); its topics: {listing}"
            )
        wrong = [t for t in topics[topic] if t not in ACCEPTED_TYPES.get(kind, (t,))]
        if wrong:
            raise WmSimError(
                f"topic {topic} carries {', '.join(wrong)}; the {kind} topic must carry one of: "
                + ", ".join(ACCEPTED_TYPES[kind])
            )


class _Converter:
    """Turns each message of one role into the array a row holds; checks that shapes never change."""

    def __init__(self, role: str, cfg: ImportBagConfig):
        self.role, self.cfg = role_kind(role), cfg
        self.names: list[str] | None = None  # entry names, fixed by the first message
        self.joint_order: list[str] = []  # the joints kept, fixed by the first message

    def __call__(self, msg, msgtype: str) -> np.ndarray:
        if self.role == "image":
            rgb = image_to_rgb(msg) if msgtype.endswith("/Image") else compressed_to_rgb(msg)
            return square_frame(rgb, self.cfg.image_size)
        if self.role == "reward":
            return np.float32(msg.data)
        if self.role == "marker":
            return np.float32(0)
        value, names = self._vector(msg, msgtype)
        if self.names is None:
            self.names = names
        elif len(names) != len(self.names):
            raise WmSimError(
                f"its {self.role.replace('_', ' ')} has {len(names)} entries; the first message had "
                f"{len(self.names)}, and every message must have the same"
            )
        return value

    def _vector(self, msg, msgtype: str) -> tuple[np.ndarray, list[str]]:
        if self.role == "joint_state":
            return self._joints(msg)
        if msgtype.endswith("MultiArray"):
            data = np.asarray(msg.data, dtype=np.float64).reshape(-1)
            return data, [f"command_{i}" for i in range(len(data))]
        twist = msg.twist if msgtype.endswith("Stamped") else msg
        lin, ang = twist.linear, twist.angular
        return np.array([lin.x, lin.y, lin.z, ang.x, ang.y, ang.z]), TWIST_NAMES

    def _joints(self, msg) -> tuple[np.ndarray, list[str]]:
        position = np.asarray(msg.position, dtype=np.float64)
        velocity = np.asarray(msg.velocity, dtype=np.float64)
        names = list(msg.name) or [f"joint_{i}" for i in range(len(position))]  # unnamed: by position
        if len(position) != len(names):
            raise WmSimError(f"it names {len(names)} joints but has {len(position)} positions")
        if not self.joint_order:  # the first message fixes which joints, in which order
            self.joint_order = list(self.cfg.joints) or names
        missing = [n for n in self.joint_order if n not in names]
        if missing:
            raise WmSimError(f"it lacks joints {missing}; it names {names}")
        order = [names.index(n) for n in self.joint_order]
        if not self.cfg.joint_velocity:
            return position[order], list(self.joint_order)
        if len(velocity) != len(position):
            raise WmSimError(
                f"it has {len(velocity)} velocities for {len(position)} joints (joint_velocity=true needs them all)"
            )
        labels = self.joint_order + [f"{n}.velocity" for n in self.joint_order]
        return np.concatenate([position[order], velocity[order]]), labels


def read_streams(bag: Path, roles: dict[str, str], cfg: ImportBagConfig) -> dict[str, Stream]:
    """Every message of the chosen topics, converted and timed, one Stream per role."""
    require("rosbags")
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.typesys import Stores, get_typestore

    # bags recorded before message definitions were stored (ROS 2 Humble's sqlite3) read with
    # the standard definitions
    reader = AnyReader([bag], default_typestore=get_typestore(Stores.LATEST))
    try:
        reader.open()
    except (AnyReaderError, *UNREADABLE) as exc:
        # rosbags turns its own reader errors into AnyReaderError; bytes that are not a bag at all
        # (a damaged or mislabelled file) surface as decoding or parsing errors instead
        raise WmSimError(f"cannot read {bag} as a rosbag ({type(exc).__name__}: {exc})") from exc
    try:  # opened above, where its errors are told apart from ours: `with` would open it again
        _check_topics(roles, _topic_types(reader), cfg)
        return _read_messages(reader, roles, cfg, bag)
    finally:
        reader.close()


def _read_messages(reader, roles: dict[str, str], cfg: ImportBagConfig, bag: Path) -> dict[str, Stream]:
    role_of = {topic: role for role, topic in roles.items()}
    connections = [c for c in reader.connections if c.topic in role_of]
    converters = {role: _Converter(role, cfg) for role in roles}
    times: dict[str, list[int]] = {role: [] for role in roles}
    received: dict[str, list[int]] = {role: [] for role in roles}
    stamped: dict[str, list[bool]] = {role: [] for role in roles}
    values: dict[str, list] = {role: [] for role in roles}
    total = sum(c.msgcount for c in connections)
    messages = reader.messages(connections=connections)
    for connection, receive_ns, raw in tqdm(
        _guarded(messages, bag), total=total, unit="msg", desc="read bag"
    ):
        role = role_of[connection.topic]
        try:
            msg = reader.deserialize(raw, connection.msgtype)
        except UNREADABLE as exc:
            raise WmSimError(
                f"message {len(values[role])} of {connection.topic} in {bag} is damaged: it does not decode as "
                f"{connection.msgtype} ({type(exc).__name__}: {exc})"
            ) from exc
        try:
            values[role].append(converters[role](msg, connection.msgtype))
        except WmSimError as exc:
            raise WmSimError(
                f"message {len(values[role])} of {connection.topic} (received at {receive_ns / 1e9:.3f} s): {exc}"
            ) from exc
        stamp = _header_stamp(msg) if cfg.stamps == "header" else 0
        times[role].append(stamp or receive_ns)
        received[role].append(receive_ns)
        stamped[role].append(bool(stamp))
    streams = {}
    for role, topic in roles.items():
        if not values[role] and role_kind(role) in REQUIRED:
            raise WmSimError(f"topic {topic} ({describe_role(role)}) has no messages in the bag")
        order = np.argsort(np.asarray(times[role], dtype=np.int64), kind="stable")
        msgtypes = sorted({c.msgtype for c in connections if c.topic == topic})
        stream = Stream(
            role,
            topic,
            ", ".join(msgtypes),
            np.asarray(times[role], dtype=np.int64)[order],
            np.asarray(values[role])[order] if values[role] else np.zeros((0,), np.float32),
        )
        stream.clock, stream.offset_ns = _clock(stamped[role], times[role], received[role])
        stream.names = converters[role].names
        streams[role] = stream
    return streams


def _guarded(messages: Iterator, bag: Path) -> Iterator:
    """The bag's messages; a damaged chunk part-way through is one clear error, not a traceback."""
    try:
        yield from messages
    except UNREADABLE as exc:
        raise WmSimError(
            f"{bag} is damaged part-way through: its messages stop decoding ({type(exc).__name__}: {exc})"
        ) from exc


def _header_stamp(msg) -> int:
    """The message's header stamp in ns, or 0 when it has no header (or an unset stamp)."""
    header = getattr(msg, "header", None)
    if header is None:
        return 0
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _clock(stamped: list[bool], times: list[int], received: list[int]) -> tuple[str, int]:
    """Which time a topic's messages got, in words, and the median receive-minus-stamp delay."""
    count = sum(stamped)
    if count == 0:
        return "receive time", 0
    delays = [r - t for r, t, s in zip(received, times, stamped, strict=True) if s]
    offset = int(np.median(delays))
    if count == len(stamped):
        return "header stamp", offset
    return f"header stamp ({len(stamped) - count} unstamped: receive time)", offset


def check_clocks(streams: dict[str, Stream]) -> None:
    """Refuse to line up header stamps and receive times that are on different clocks."""
    unstamped = [s.topic for s in streams.values() if s.clock == "receive time" and len(s.times)]
    for stream in streams.values():
        if stream.clock != "receive time" and abs(stream.offset_ns) > CLOCK_TOLERANCE_NS and unstamped:
            raise WmSimError(
                f"the header stamps of {stream.topic} are {stream.offset_ns / 1e9:.1f} s away from the bag's "
                f"receive times, which {', '.join(unstamped)} (no header) must use: different clocks "
                "(simulated time?); pass stamps=receive to time every message by its receive time"
            )
