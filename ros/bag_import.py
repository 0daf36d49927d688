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

rosbags is imported lazily, inside the functions that read a bag, so `wm-sim --help` stays light.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm
from wm_sim.ros.messages import compressed_to_rgb, image_to_rgb, square_frame

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
from wm_sim.optional import require

REPORT_FILE = "import_report.json"
STAMPS = ("header", "receive")
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
CAMERA_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a store camera name: part of a zarr array's name


def _kind(role: str) -> str:
    """What a role's topic carries: "image" for every camera's, else the role itself."""
    return "image" if role.startswith(IMAGE_ROLE) else role


def _describe(role: str) -> str:
    return f"image of camera {role[len(IMAGE_ROLE) :]}" if role.startswith(IMAGE_ROLE) else role


def _image_roles(streams: dict) -> list[str]:
    """The cameras' roles, in the store's camera order: the first is the clock."""
    return [role for role in streams if role.startswith(IMAGE_ROLE)]


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


# --- reading the bag ---------------------------------------------------------------------------


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
        kind = _kind(role)
        if topic not in topics:
            option = "image_topics" if kind == "image" and cfg.image_topics else f"{kind}_topic"
            raise WmSimError(
                f"the bag has no topic {topic!r} ({option}, the {_describe(role)}); its topics: {listing}"
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
        self.role, self.cfg = _kind(role), cfg
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


def _read_streams(bag: Path, roles: dict[str, str], cfg: ImportBagConfig) -> dict[str, Stream]:
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
        if not values[role] and _kind(role) in REQUIRED:
            raise WmSimError(f"topic {topic} ({_describe(role)}) has no messages in the bag")
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


def _check_clocks(streams: dict[str, Stream]) -> None:
    """Refuse to line up header stamps and receive times that are on different clocks."""
    unstamped = [s.topic for s in streams.values() if s.clock == "receive time" and len(s.times)]
    for stream in streams.values():
        if stream.clock != "receive time" and abs(stream.offset_ns) > CLOCK_TOLERANCE_NS and unstamped:
            raise WmSimError(
                f"the header stamps of {stream.topic} are {stream.offset_ns / 1e9:.1f} s away from the bag's "
                f"receive times, which {', '.join(unstamped)} (no header) must use: different clocks "
                "(simulated time?); pass stamps=receive to time every message by its receive time"
            )


# --- episodes and the fixed-rate clock ---------------------------------------------------------

NEVER, FOREVER = np.iinfo(np.int64).min, np.iinfo(np.int64).max
START, GAP, MARKER = "the bag's start", "a gap", "a marker"  # what began an episode


@dataclass
class Segment:
    """A stretch of the bag that makes one episode: messages timed in [lo, hi)."""

    lo: int
    hi: int
    starts_at: str  # START, GAP or MARKER


def _segments(streams: dict[str, Stream], gap_ns: int) -> list[Segment]:
    """The bag cut at every silence longer than gap on an image or the command topic, and at markers."""
    silences = []
    for role in (*_image_roles(streams), "command"):
        times = streams[role].times
        for i in np.flatnonzero(np.diff(times) > gap_ns):
            silences.append((int(times[i]) + 1, int(times[i + 1])))
    merged: list[list[int]] = []
    for lo, hi in sorted(silences):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    segments, lo, why = [], NEVER, START
    for silence_lo, silence_hi in merged:
        segments.append(Segment(lo, silence_lo, why))
        lo, why = silence_hi, GAP
    segments.append(Segment(lo, FOREVER, why))
    markers = streams["marker"].times if "marker" in streams else np.zeros(0, np.int64)
    for marker in markers:
        for i, seg in enumerate(segments):
            if seg.lo < marker < seg.hi:  # a marker in a silence, or at a start already, cuts nothing
                segments[i : i + 1] = [
                    Segment(seg.lo, int(marker), seg.starts_at),
                    Segment(int(marker), seg.hi, MARKER),
                ]
                break
    return segments


@dataclass
class Episode:
    """One episode's kept ticks and, per role, the index of the message in force at each."""

    segment: Segment
    ticks: np.ndarray  # (T,) int64 ns
    picks: dict[str, np.ndarray]  # role -> (T,) message index into the role's Stream
    waiting: dict[str, int]  # role -> ticks skipped before its first message
    reward_missing: int = 0  # rows before the first reward message (reward 0)


REQUIRED = ("image", "command", "joint_state")  # kinds of topic every row needs a message of


def _episode(streams: dict[str, Stream], segment: Segment, period_ns: float) -> Episode | None:
    """The ticks of one segment and the message each topic holds at each; None when it has none."""
    bounds = {role: s.between(segment.lo, segment.hi) for role, s in streams.items()}
    required = [r for r in streams if _kind(r) in REQUIRED]
    if any(bounds[r][0] == bounds[r][1] for r in required):
        return None
    clock = _image_roles(streams)[0]
    t0 = int(streams[clock].times[bounds[clock][0]])
    end = min(int(streams[r].times[bounds[r][1] - 1]) for r in required)
    if end < t0:
        return None
    count = int((end - t0) // period_ns) + 1
    ticks = t0 + np.round(np.arange(count) * period_ns).astype(np.int64)
    ticks = ticks[ticks <= end]
    picks, waiting = {}, {}
    for role in required:
        start, stop = bounds[role]
        local = np.searchsorted(streams[role].times[start:stop], ticks, side="right") - 1
        picks[role] = start + local
        waiting[role] = int((local < 0).sum())
    skipped = max(waiting.values())
    if skipped == len(ticks):
        return None
    episode = Episode(segment, ticks[skipped:], {r: p[skipped:] for r, p in picks.items()}, waiting)
    if "reward" in streams:  # the reward that followed each row's command: in force at the next tick
        start, stop = bounds["reward"]
        local = (
            np.searchsorted(
                streams["reward"].times[start:stop], episode.ticks + round(period_ns), side="right"
            )
            - 1
        )
        episode.picks["reward"] = np.where(local >= 0, start + local, -1)
        episode.reward_missing = int((local < 0).sum())
    return episode


def _estimate_fps(images: Stream, gap_ns: int) -> tuple[float, str]:
    periods = np.diff(images.times)
    periods = periods[(periods > 0) & (periods <= gap_ns)]
    if len(periods) == 0:
        raise WmSimError(
            f"cannot estimate fps from {images.topic}: it has no two messages less than gap apart; pass fps="
        )
    median = float(np.median(periods))
    fps = round(1e9 / median, 1)
    if fps <= 0:
        raise WmSimError(
            f"{images.topic}'s median period is {median / 1e9:.1f} s, too long to estimate fps; pass fps="
        )
    return fps, f"estimated from {images.topic}: median period {median / 1e6:.1f} ms"


# --- the report --------------------------------------------------------------------------------


def _topic_counts(stream: Stream, episodes: list[Episode]) -> dict:
    """read, used, dropped (several in one tick: the last kept), held, outside, waiting."""
    used, dropped, held, waiting = set(), 0, 0, 0
    for episode in episodes:
        picks = episode.picks.get(stream.role)
        waiting += episode.waiting.get(stream.role, 0)
        if picks is None:
            continue
        picks = picks[picks >= 0]
        if len(picks) == 0:
            continue
        distinct = np.unique(picks)
        used.update(distinct.tolist())
        dropped += int(picks[-1] - picks[0] + 1 - len(distinct))
        held += int((np.diff(picks) == 0).sum())
    read = len(stream.times)
    counts = {"read": read, "used": len(used), "dropped": dropped, "held": held}
    counts["outside"] = read - len(used) - dropped
    counts["waiting"] = waiting
    return counts


def _report(
    cfg: ImportBagConfig,
    out: Path,
    info: DatasetInfo,
    streams: dict[str, Stream],
    episodes: list[Episode],
    short: list[Episode],
    fps_source: str,
    actions: Actions,
) -> dict:
    """Everything the import did, as JSON: per topic, how its messages were used."""
    topics = {}
    for role, stream in streams.items():
        topics[stream.topic] = {"role": _kind(role), "type": stream.msgtype, "clock": stream.clock}
        if role.startswith(IMAGE_ROLE):
            topics[stream.topic]["camera"] = role[len(IMAGE_ROLE) :]
        if role != "marker":
            topics[stream.topic] |= _topic_counts(stream, episodes)
        else:
            topics[stream.topic]["read"] = len(stream.times)
    if cfg.joint_state_topic:
        velocities = " and velocities" if cfg.joint_velocity else ""
        state = f"joint positions{velocities} of {cfg.joint_state_topic}"
    else:
        state = "the previous row's action (no joint_state_topic); 0 on an episode's first row"
    return {
        "bag": info.collection["bag"],
        "out": str(out),
        "fps": info.fps,
        "fps_source": fps_source,
        "cameras": info.cameras,
        "gap_s": cfg.gap,
        "min_episode_steps": cfg.min_episode_steps,
        "rows": int(sum(len(e.ticks) for e in episodes)),
        "episodes": [
            {
                "start_s": round(int(e.ticks[0]) / 1e9, 6),
                "steps": len(e.ticks),
                "starts_at": e.segment.starts_at,
            }
            for e in episodes
        ],
        "left_out_short": [
            {"start_s": round(int(e.ticks[0]) / 1e9, 6), "steps": len(e.ticks)} for e in short
        ],
        "reward_missing_rows": sum(e.reward_missing for e in episodes),
        "state": state,
        "command_low": actions.low.tolist(),
        "command_high": actions.high.tolist(),
        "command_bounds": "given" if cfg.action_low else "observed",
        "commands_clipped": actions.clipped,
        "topics": topics,
    }


def _role_label(topic: dict) -> str:
    return f"image ({topic['camera']})" if "camera" in topic else topic["role"]


def _numbers(values: list[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


def format_report(report: dict) -> str:
    """The report as a few lines and a table, as `wm-sim ros import-bag` prints it."""
    starts = [e["starts_at"] for e in report["episodes"]]
    lines = [
        f"{report['bag']} -> {report['out']}: {len(starts)} episodes, {report['rows']} rows at "
        f"{report['fps']:g} fps ({report['fps_source']})",
        f"  episodes: {starts.count(START)} from the bag's start, {starts.count(GAP)} after a silence longer "
        f"than gap={report['gap_s']:g} s, {starts.count(MARKER)} at a marker; "
        f"{len(report['left_out_short'])} shorter than min_episode_steps={report['min_episode_steps']} left out",
        f"  state: {report['state']}",
        f"  action: the command mapped linearly from [{_numbers(report['command_low'])}] .. "
        f"[{_numbers(report['command_high'])}] ({report['command_bounds']}) onto [-1, 1]; "
        f"{report['commands_clipped']} entries clipped",
    ]
    header = ("topic", "role", "type", "clock", "read", "used", "dropped", "held", "outside", "waiting")
    rows = [
        (topic, _role_label(t), t["type"], t["clock"], *(str(t.get(k, "")) for k in header[4:]))
        for topic, t in report["topics"].items()
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append(
            "  "
            + "  ".join(
                str(v).ljust(w) if i < 4 else str(v).rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    lines.append(
        "  dropped: superseded before the next tick (only the last kept); held: a tick reusing the "
        "previous tick's message (zero-order hold, nothing interpolated); outside: in no kept row "
        "(before an episode's first row, after its end, in a gap); waiting: ticks skipped before the "
        "topic's first message in an episode"
    )
    return "\n".join(lines)


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
    images = {role[len(IMAGE_ROLE) :]: streams[role].topic for role in _image_roles(streams)}
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
        for role in _image_roles(streams)
    }  # every camera's frame in force at each tick
    rows |= {
        STATE_KEY: state,
        ACTION_KEY: actions,
        REWARD_KEY: reward,
        TERMINATED_KEY: np.zeros(length, dtype=bool),
        SUCCESS_KEY: np.zeros(length, dtype=bool),
    }
    return rows | episode_bookkeeping(index, (episode.ticks - episode.ticks[0]) / 1e9)


# --- writing -----------------------------------------------------------------------------------


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
    streams = _read_streams(bag, roles, cfg)
    _check_clocks(streams)
    gap_ns = int(cfg.gap * 1e9)
    fps, fps_source = (
        (float(cfg.fps), "fps=") if cfg.fps else _estimate_fps(streams[_image_roles(streams)[0]], gap_ns)
    )
    candidates = [e for seg in _segments(streams, gap_ns) if (e := _episode(streams, seg, 1e9 / fps))]
    episodes = [e for e in candidates if len(e.ticks) >= cfg.min_episode_steps]
    short = [e for e in candidates if len(e.ticks) < cfg.min_episode_steps]
    if not episodes:
        raise WmSimError(
            f"{bag} yields no episode of at least min_episode_steps={cfg.min_episode_steps} rows at {fps:g} fps "
            f"(candidates: {[len(e.ticks) for e in candidates]}); check the topics, gap= and fps="
        )
    actions = _actions(cfg, streams["command"], episodes)
    info = _dataset_info(cfg, bag, fps, streams, episodes, actions)
    report = _report(cfg, out, info, streams, episodes, short, fps_source, actions)
    rows = [
        _rows(e, i, streams, a) for i, (e, a) in enumerate(zip(episodes, actions.per_episode, strict=True))
    ]
    write_imported_store(out, info, rows, report, REPORT_FILE)
    print(format_report(report))
    print(f"  report: {out / REPORT_FILE}")
    return out
