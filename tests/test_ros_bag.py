"""`wm-sim ros import-bag`: rosbag2 recordings written here with rosbags become trainable stores."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("rosbags")

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from tiny import tiny_architecture
from wm_sim.ros.bag_import import ImportBagConfig, import_bag
from wm_sim.ros.messages import ENCODINGS, image_to_rgb, rgb_to_image_fields, square_frame

from wm_sim.data.store import EpisodeStore
from wm_sim.errors import WmSimError

TYPES = get_typestore(Stores.ROS2_HUMBLE)
MS = 1_000_000  # ns
BASE = 1_000_000 * MS  # the recording starts 1000 s into its clock: a zero header stamp means "unset"
IMAGE, COMMAND, JOINTS, REWARD, MARKER = (
    "/camera/image_raw",
    "/commands",
    "/joint_states",
    "/reward",
    "/episode",
)


def frame(i: int) -> np.ndarray:
    """Image i: a 48x64 frame whose centre 48x48 square is the solid colour (i, 255 - i, 7), with
    blue side bands that the centre crop must cut away."""
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :, 2] = 255
    rgb[:, 8:56] = (i, 255 - i, 7)
    return rgb


def stamp(ns: int):
    time = TYPES.types["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
    return TYPES.types["std_msgs/msg/Header"](stamp=time, frame_id="camera")


def image_msg(ns: int, rgb: np.ndarray, encoding: str = "rgb8"):
    return TYPES.types["sensor_msgs/msg/Image"](header=stamp(ns), **rgb_to_image_fields(rgb, encoding))


def command_msg(values):
    types = TYPES.types
    layout = types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return types["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(values, np.float64))


def joints_msg(ns: int, names: list[str], position):
    pos = np.asarray(position, np.float64)
    return TYPES.types["sensor_msgs/msg/JointState"](
        header=stamp(ns), name=names, position=pos, velocity=-pos, effort=np.zeros(0)
    )


def write_bag(path: Path, messages: list[tuple[str, str, int, object]], storage: str = "sqlite3") -> Path:
    """A rosbag2 directory holding (topic, type, receive time ns, message), in receive-time order."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {}
        for topic, msgtype, ns, msg in sorted(messages, key=lambda m: m[2]):
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=TYPES)
            writer.write(connections[topic], ns, bytes(TYPES.serialize_cdr(msg, msgtype)))
    return path


def recording() -> list[tuple[str, str, int, object]]:
    """Two stretches, [0, 2) s and [4, 6) s, with a marker at 5 s.

    Images at 20 Hz (header stamp t, received 3 ms later), commands at 10 Hz from 0.12 s (no
    header: receive time), joint states at 50 Hz naming their joints in a changing order, rewards
    at 20 Hz 10 ms after each image, whose value is their own time in seconds.
    """
    messages = []
    for start in (0, 4000):
        for k in range(40):
            t = (start + 50 * k) * MS
            i = start // 50 + k  # 0..39, then 80..119
            messages.append(
                (IMAGE, "sensor_msgs/msg/Image", BASE + t + 3 * MS, image_msg(BASE + t, frame(i)))
            )
            rew = TYPES.types["std_msgs/msg/Float32"](data=(t + 10 * MS) / 1e9)
            messages.append((REWARD, "std_msgs/msg/Float32", BASE + t + 10 * MS, rew))
        for k in range(19):
            t = (start + 120 + 100 * k) * MS
            messages.append(
                (COMMAND, "std_msgs/msg/Float64MultiArray", BASE + t, command_msg([t / 1e9, -2 * t / 1e9]))
            )
        for k in range(100):
            t = (start + 20 * k) * MS
            names = ["elbow", "shoulder"] if k % 2 == 0 else ["shoulder", "elbow"]
            by_name = {"elbow": t / 1e9, "shoulder": 10 * t / 1e9}
            messages.append(
                (
                    JOINTS,
                    "sensor_msgs/msg/JointState",
                    BASE + t + MS,
                    joints_msg(BASE + t, names, [by_name[n] for n in names]),
                )
            )
    messages.append((MARKER, "std_msgs/msg/Empty", BASE + 5000 * MS, TYPES.types["std_msgs/msg/Empty"]()))
    return messages


def config(bag: Path, out: Path, **options) -> ImportBagConfig:
    topics = {"image_topic": IMAGE, "action_topic": COMMAND}
    return ImportBagConfig(bag=str(bag), out=str(out), gap=0.5, **(topics | options))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    return write_bag(tmp_path_factory.mktemp("bags") / "run1", recording())


@pytest.fixture(scope="module")
def imported(recorded, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("datasets") / "run1.zarr"
    return import_bag(
        config(recorded, out, joint_state_topic=JOINTS, reward_topic=REWARD, marker_topic=MARKER)
    )


# Kept ticks of the three episodes (ms): [0, 2) s loses 0-100 ms waiting for the first command and
# ends at the last command before the gap (1.92 s); after the gap both topics publish again at
# 4.12 s, the first image after that is 4.15 s; the marker at 5 s starts the third, whose tick at
# 5 s waits for the command at 5.02 s.
EPISODE_TICKS_MS = [range(150, 1901, 50), range(4150, 4901, 50), range(5050, 5901, 50)]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_splits_at_gaps_and_markers_and_holds_the_last_message(storage, tmp_path):
    bag = write_bag(tmp_path / f"run-{storage}", recording(), storage)
    out = import_bag(
        config(bag, tmp_path / "out.zarr", joint_state_topic=JOINTS, reward_topic=REWARD, marker_topic=MARKER)
    )
    store = EpisodeStore.open(out)
    assert store.info.fps == 20.0  # estimated from the images' 50 ms period
    assert [int(n) for n in np.diff(store.episode_ends, prepend=0)] == [len(r) for r in EPISODE_TICKS_MS]
    assert store.info.episode_steps == 36
    assert store.info.cameras == ["camera"]
    for episode, ticks_ms in enumerate(EPISODE_TICKS_MS):
        rows = store.episode(episode)
        ticks = np.asarray(ticks_ms) / 1000.0
        # the frame at each tick is the image stamped at it (header stamps, not the later receive times)
        frames = rows["observation.images.camera"]
        assert frames.shape[1:] == (64, 64, 3)
        assert (frames[:, :, :, 0] == np.round(ticks * 20).astype(np.uint8)[:, None, None]).all()
        assert (frames[:, :, :, 2] == 7).all()  # the blue side bands were cropped away
        # the command in force: the last one at or before the tick (10 Hz from x.x2 s: each held twice)
        in_force = np.floor((ticks - 0.02) * 10) / 10 + 0.02
        low, high = (
            np.asarray(store.info.collection["command_low"]),
            np.asarray(store.info.collection["command_high"]),
        )
        raw = low + (rows["action"].astype(np.float64) + 1) / 2 * (high - low)
        np.testing.assert_allclose(raw, np.stack([in_force, -2 * in_force], 1), atol=1e-5)
        # joints reordered by the first message's names (elbow, shoulder), each the latest at the tick
        joint_time = np.floor(np.round(ticks * 1000) / 20) * 0.02
        np.testing.assert_allclose(
            rows["observation.state"], np.stack([joint_time, 10 * joint_time], 1), atol=1e-5
        )
        # the reward that followed each row: in force at the next tick, published 10 ms after this one
        np.testing.assert_allclose(rows["next.reward"], ticks + 0.01, atol=1e-5)
        np.testing.assert_allclose(rows["timestamp"], ticks - ticks[0], atol=1e-5)
        assert rows["next.done"].tolist() == [False] * (len(ticks) - 1) + [True]
        assert not rows["next.terminated"].any() and not rows["next.success"].any()
        assert (rows["episode_index"] == episode).all()
    assert store.info.features["observation.state"].names == ["elbow", "shoulder"]
    assert "physics_state" not in store.keys
    assert store.read("action", 0, store.num_frames).min() == -1.0
    assert store.read("action", 0, store.num_frames).max() == 1.0


def test_report_counts_dropped_held_and_waiting(imported):
    report = json.loads((imported / "import_report.json").read_text())
    assert [e["starts_at"] for e in report["episodes"]] == ["the bag's start", "a gap", "a marker"]
    topics = report["topics"]
    assert topics[IMAGE]["clock"] == "header stamp"
    assert topics[COMMAND]["clock"] == "receive time"
    counts = {
        t: {k: v for k, v in c.items() if k in ("read", "used", "dropped", "held", "outside", "waiting")}
        for t, c in topics.items()
    }
    assert counts[IMAGE] == {"read": 80, "used": 70, "dropped": 0, "held": 0, "outside": 10, "waiting": 0}
    assert counts[COMMAND] == {"read": 38, "used": 35, "dropped": 0, "held": 35, "outside": 3, "waiting": 4}
    # 50 Hz joint states sampled at 20 Hz: one or two superseded before each tick
    assert counts[JOINTS] == {"read": 200, "used": 70, "dropped": 102, "held": 0, "outside": 28, "waiting": 0}
    assert topics[MARKER]["read"] == 1
    assert EpisodeStore.open(imported).info.collection["report"] == "import_report.json"


def six_frames(image=image_msg, command=lambda k: command_msg([k])) -> list[tuple[str, str, int, object]]:
    """Six images and six commands at 20 Hz, made by `image(ns, rgb)` and `command(k)`."""
    first = 1000 * MS
    images = [image(first + 50 * k * MS, frame(k)) for k in range(6)]
    commands = [command(k) for k in range(6)]
    messages = [(IMAGE, m.__msgtype__, first + 50 * k * MS, m) for k, m in enumerate(images)]
    return messages + [(COMMAND, m.__msgtype__, first + 50 * k * MS, m) for k, m in enumerate(commands)]


def png_msg(ns: int, rgb: np.ndarray):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    data = np.frombuffer(buffer.getvalue(), np.uint8)
    return TYPES.types["sensor_msgs/msg/CompressedImage"](header=stamp(ns), format="png", data=data)


def twist_msg(k: int):
    types = TYPES.types
    twist = types["geometry_msgs/msg/Twist"](
        linear=types["geometry_msgs/msg/Vector3"](x=k, y=0.0, z=0.0),
        angular=types["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=-k),
    )
    return types["geometry_msgs/msg/TwistStamped"](header=stamp(1000 * MS + 50 * k * MS), twist=twist)


def test_bgr8_rgb8_and_png_recordings_store_the_same_frames(tmp_path):
    bags = {
        "rgb8": six_frames(),
        "bgr8": six_frames(image=lambda ns, rgb: image_msg(ns, rgb, "bgr8")),
        "png": six_frames(image=png_msg, command=twist_msg),
    }
    stores = {
        name: EpisodeStore.open(
            import_bag(config(write_bag(tmp_path / name, bag), tmp_path / f"{name}.zarr"))
        )
        for name, bag in bags.items()
    }
    frames = {name: s.read("observation.images.camera", 0, s.num_frames) for name, s in stores.items()}
    assert len(frames["rgb8"]) == 6
    np.testing.assert_array_equal(frames["rgb8"], frames["bgr8"])
    np.testing.assert_array_equal(frames["rgb8"], frames["png"])
    # without a joint-state topic the state is the previous row's action, 0 on the first row
    state, action = stores["rgb8"].read("observation.state", 0, 6), stores["rgb8"].read("action", 0, 6)
    np.testing.assert_array_equal(state[1:], action[:-1])
    assert (state[0] == 0).all()
    assert stores["rgb8"].info.features["observation.state"].names == ["previous command_0"]
    # a twist command is its six velocities; the constant ones map to 0
    twist = stores["png"]
    assert twist.info.features["action"].names[:3] == ["linear.x", "linear.y", "linear.z"]
    np.testing.assert_allclose(
        twist.read("action", 0, 6)[:, [0, 5]], [[a, -a] for a in np.linspace(-1, 1, 6)], atol=1e-6
    )
    assert (twist.read("action", 0, 6)[:, 1:5] == 0).all()


def test_given_command_bounds_map_onto_minus_one_to_one_and_clip(tmp_path):
    bag = write_bag(tmp_path / "bag", six_frames())
    out = import_bag(config(bag, tmp_path / "out.zarr", action_low=[0.0], action_high=[4.0]))
    np.testing.assert_allclose(EpisodeStore.open(out).read("action", 0, 6)[:, 0], [-1, -0.5, 0, 0.5, 1, 1])
    report = json.loads((out / "import_report.json").read_text())
    assert report["command_bounds"] == "given" and report["commands_clipped"] == 1
    with pytest.raises(WmSimError, match="need 1 entries each"):
        import_bag(config(bag, tmp_path / "bad.zarr", action_low=[0.0, 0.0], action_high=[1.0, 1.0]))


def test_ros1_bag_file_imports(tmp_path):
    from rosbags.rosbag1 import Writer as Ros1Writer

    ros1 = get_typestore(Stores.ROS1_NOETIC)
    path = tmp_path / "old.bag"
    with Ros1Writer(path) as writer:
        images = writer.add_connection(IMAGE, "sensor_msgs/msg/Image", typestore=ros1)
        commands = writer.add_connection(COMMAND, "std_msgs/msg/Float64MultiArray", typestore=ros1)
        for k, (_, msgtype, ns, msg) in enumerate(six_frames()[:6]):
            header = ros1.types["std_msgs/msg/Header"](seq=k, stamp=msg.header.stamp, frame_id="camera")
            image = ros1.types[msgtype](
                **{
                    f: getattr(msg, f)
                    for f in ("height", "width", "encoding", "is_bigendian", "step", "data")
                },
                header=header,
            )
            writer.write(images, ns, ros1.serialize_ros1(image, msgtype))
            writer.write(
                commands, ns, ros1.serialize_ros1(command_msg([k]), "std_msgs/msg/Float64MultiArray")
            )
    store = EpisodeStore.open(import_bag(config(path, tmp_path / "old.zarr")))
    assert store.num_frames == 6 and store.info.task == "rosbag:old"
    assert (store.read("observation.images.camera", 0, 6)[:, 0, 0, 0] == np.arange(6)).all()


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_every_supported_encoding_reads_back_as_rgb(encoding):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    fields = rgb_to_image_fields(rgb, encoding)
    expected = (
        rgb if encoding != "mono8" else np.repeat(rgb.mean(2, keepdims=True).round().astype(np.uint8), 3, 2)
    )
    np.testing.assert_array_equal(image_to_rgb(type("Msg", (), fields)), expected)


def test_padded_rows_and_centre_crop():
    rgb = frame(9)
    fields = rgb_to_image_fields(rgb, "bgr8")
    padded = np.zeros((48, 64 * 3 + 5), np.uint8)
    padded[:, : 64 * 3] = fields["data"].reshape(48, -1)
    msg = type("Msg", (), fields | {"step": 64 * 3 + 5, "data": padded.reshape(-1)})
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)
    square = square_frame(rgb, 16)
    assert square.shape == (16, 16, 3) and (square == (9, 246, 7)).all()


def test_unsupported_encoding_is_one_clear_error(tmp_path):
    bad = TYPES.types["sensor_msgs/msg/Image"](
        header=stamp(0),
        height=2,
        width=2,
        encoding="16UC1",
        is_bigendian=0,
        step=4,
        data=np.zeros(8, np.uint8),
    )
    messages = [
        (IMAGE, "sensor_msgs/msg/Image", 0, bad),
        (COMMAND, "std_msgs/msg/Float64MultiArray", 0, command_msg([0])),
    ]
    bag = write_bag(tmp_path / "depth", messages)
    with pytest.raises(WmSimError, match=r"encoding '16UC1' is not supported; expected one of: rgb8, bgr8"):
        import_bag(config(bag, tmp_path / "out.zarr"))
    assert not (tmp_path / "out.zarr").exists()


def test_missing_topic_lists_the_bags_topics(recorded, tmp_path):
    with pytest.raises(WmSimError) as error:
        import_bag(config(recorded, tmp_path / "out.zarr", image_topic="/front/image"))
    message = str(error.value)
    assert "no topic '/front/image'" in message
    assert (
        f"{IMAGE} (sensor_msgs/msg/Image)" in message
        and f"{COMMAND} (std_msgs/msg/Float64MultiArray)" in message
    )


def test_wrong_topic_type_and_changing_command_length_are_refused(recorded, tmp_path):
    with pytest.raises(WmSimError, match="the command topic must carry one of"):
        import_bag(config(recorded, tmp_path / "a.zarr", action_topic=REWARD))
    messages = [
        (IMAGE, "sensor_msgs/msg/Image", k * 50 * MS, image_msg((200 + k * 50) * MS, frame(k)))
        for k in range(4)
    ]
    messages += [
        (COMMAND, "std_msgs/msg/Float64MultiArray", k * 50 * MS, command_msg([0.0] * (2 + k // 3)))
        for k in range(4)
    ]
    bag = write_bag(tmp_path / "ragged", messages)
    with pytest.raises(WmSimError, match=r"message 3 of /commands .* has 3 entries; the first message had 2"):
        import_bag(config(bag, tmp_path / "b.zarr"))


def test_existing_out_is_never_overwritten(recorded, tmp_path):
    out = tmp_path / "taken.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(WmSimError, match="already exists; refusing to overwrite"):
        import_bag(config(recorded, out))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_failed_import_leaves_nothing_behind(recorded, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(EpisodeStore, "append_episode", fail)
    with pytest.raises(KeyboardInterrupt):
        import_bag(config(recorded, tmp_path / "out.zarr"))
    assert list(tmp_path.iterdir()) == []
    # the debris of a killed import (its process gone) is cleared by the next import
    stale = tmp_path / ".out.zarr.importing-999999999"
    stale.mkdir()
    monkeypatch.undo()
    import_bag(config(recorded, tmp_path / "out.zarr"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_sim_time_header_stamps_against_wall_clock_receive_times_are_refused(tmp_path):
    wall = 1_700_000_000 * 1_000_000_000
    messages = [
        (IMAGE, "sensor_msgs/msg/Image", wall + k * 50 * MS, image_msg((200 + k * 50) * MS, frame(k)))
        for k in range(4)
    ]
    messages += [
        (COMMAND, "std_msgs/msg/Float64MultiArray", wall + k * 50 * MS, command_msg([k])) for k in range(4)
    ]
    bag = write_bag(tmp_path / "simtime", messages)
    with pytest.raises(WmSimError, match=r"different clocks .* pass stamps=receive"):
        import_bag(config(bag, tmp_path / "a.zarr"))
    store = EpisodeStore.open(import_bag(config(bag, tmp_path / "b.zarr", stamps="receive")))
    assert store.num_frames == 4


def test_imported_store_trains(imported, tmp_path):
    from wm_sim.tracking import WandbConfig
    from wm_sim.train import TrainConfig, TrainingRecipe, train

    tiny = tiny_architecture()
    run = train(
        TrainConfig(
            data=str(imported), model=tiny, out=str(tmp_path / "run"), steps=2, training=TrainingRecipe(decoder_steps=0, transition_rollout_steps=0, batch_size=4),
            val_fraction=0.5, threads=1, wandb=WandbConfig(mode="disabled"),
        )
    )  # fmt: skip
    assert (run / "last").exists()
    meta = json.loads(next(run.glob("step-*/meta.json")).read_text())
    assert meta["dataset"]["task"] == "rosbag:run1"
    assert meta["dataset"]["state_names"] == ["elbow", "shoulder"]


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "wm_sim", "ros", "import-bag", *args]
    return subprocess.run(command, capture_output=True, text=True, env=os.environ, timeout=120)


def test_cli_imports_a_bag(recorded, tmp_path):
    out = tmp_path / "cli.zarr"
    args = [
        f"bag={recorded}",
        f"image_topic={IMAGE}",
        f"action_topic={COMMAND}",
        f"out={out}",
        "gap=0.5",
        "fps=10",
        f"joint_state_topic={JOINTS}",
        "joints=[shoulder]",
        "joint_velocity=true",
        "action_low=[0,-12]",
        "action_high=[6,0]",
    ]
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert "2 episodes" in done.stdout and "10 fps (fps=)" in done.stdout
    store = EpisodeStore.open(out)
    assert store.info.fps == 10.0
    assert store.info.features["observation.state"].names == ["shoulder", "shoulder.velocity"]
    assert store.info.collection["command_high"] == [6.0, 0.0]
    again = run_cli(args)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("wm-sim ros import-bag: error:")
    assert "already exists" in again.stderr


@pytest.mark.parametrize(
    "damage", ["ros1_file", "metadata", "sqlite3_storage", "mcap_storage", "mcap_truncated"]
)
def test_random_bytes_are_one_clear_error_and_write_nothing(damage, tmp_path):
    noise = np.random.default_rng(7).bytes(4096)
    if damage == "ros1_file":
        bag = tmp_path / "noise.bag"
        bag.write_bytes(noise)
    else:
        storage = "mcap" if damage.startswith("mcap") else "sqlite3"
        bag = write_bag(tmp_path / "damaged", recording(), storage=storage)
        target = (
            bag / "metadata.yaml"
            if damage == "metadata"
            else next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
        )
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2] if damage == "mcap_truncated" else noise)
    out = tmp_path / "out.zarr"
    done = run_cli([f"bag={bag}", f"image_topic={IMAGE}", f"action_topic={COMMAND}", f"out={out}"])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and lines[-1].startswith("wm-sim ros import-bag: error:")
    assert str(bag) in lines[-1]
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))


TOP, SIDE = "/top/image_raw", "/side/image_raw"


def side_frame(i: int) -> np.ndarray:
    """Side image i: a 96x128 frame (another size than the top camera's) of solid (i, 100, 200)."""
    return np.broadcast_to(np.array([i, 100, 200], np.uint8), (96, 128, 3)).copy()


def two_cameras() -> list[tuple[str, str, int, object]]:
    """Twelve frames of each of two cameras at 20 Hz, the side camera 10 ms after the top one, and
    a command with each top frame (no header: its receive time)."""
    first = 1000 * MS
    messages = []
    for k in range(12):
        t = first + 50 * k * MS
        messages.append((TOP, "sensor_msgs/msg/Image", t + 3 * MS, image_msg(t, frame(k))))
        messages.append((SIDE, "sensor_msgs/msg/Image", t + 13 * MS, image_msg(t + 10 * MS, side_frame(k))))
        messages.append((COMMAND, "std_msgs/msg/Float64MultiArray", t, command_msg([k])))
    return messages


def test_two_camera_bag_stores_every_camera_on_the_same_ticks(tmp_path):
    bag = write_bag(tmp_path / "two", two_cameras())
    out = import_bag(config(bag, tmp_path / "two.zarr", image_topic="", image_topics=[TOP, SIDE]))
    store = EpisodeStore.open(out)
    assert store.info.cameras == ["top", "side"]  # named by the topics, in the order given
    assert store.info.fps == 20.0  # the first camera's period sets the clock
    # the ticks start at the top camera's first frame; the first waits for the side camera's first
    top, side = (store.read(f"observation.images.{c}", 0, store.num_frames) for c in ("top", "side"))
    state = store.read("observation.state", 0, store.num_frames)
    assert len(top) == len(side) == len(state) == store.num_frames == 11
    assert top.shape[1:] == side.shape[1:] == (64, 64, 3)  # each camera cropped and resized alike
    np.testing.assert_array_equal(top[:, 0, 0, 0], np.arange(1, 12))  # the top frame stamped at tick k
    np.testing.assert_array_equal(side[:, 0, 0, 0], np.arange(0, 11))  # the side frame 40 ms before it
    assert (side[..., 1] == 100).all() and (side[..., 2] == 200).all()
    report = json.loads((out / "import_report.json").read_text())
    assert report["cameras"] == ["top", "side"]
    assert {t: (c["role"], c.get("camera")) for t, c in report["topics"].items()} == {
        TOP: ("image", "top"),
        SIDE: ("image", "side"),
        COMMAND: ("command", None),
    }
    assert report["topics"][SIDE]["waiting"] == 1 and report["topics"][TOP]["used"] == 11
    assert store.info.collection["topics"]["images"] == {"top": TOP, "side": SIDE}


def test_cli_imports_several_cameras_under_the_names_given(tmp_path):
    bag = write_bag(tmp_path / "two", two_cameras())
    out = tmp_path / "named.zarr"
    done = run_cli(
        [f"bag={bag}", f"image_topics=[{SIDE},{TOP}]", "cameras=[wrist,overhead]", f"action_topic={COMMAND}", f"out={out}"]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{SIDE}  image (wrist)" in done.stdout and f"{TOP}   image (overhead)" in done.stdout
    store = EpisodeStore.open(out)
    assert store.info.cameras == ["wrist", "overhead"]
    # the side camera listed first sets the clock now: ticks at its frames, each holding the top
    # frame of 10 ms before, so no tick waits
    wrist, overhead = (store.read(f"observation.images.{c}", 0, 11) for c in ("wrist", "overhead"))
    assert store.num_frames == 11
    np.testing.assert_array_equal(wrist[:, 0, 0, 0], np.arange(11))
    np.testing.assert_array_equal(overhead[:, 0, 0, 0], np.arange(11))


def test_camera_names_tell_the_topics_apart():
    from wm_sim.ros.bag_import import camera_names

    assert camera_names(["/wrist/image_raw"]) == ["wrist"]  # one topic: its first name, as before
    assert camera_names(["/wm_sim/top/image_raw", "/wm_sim/side/image_raw"]) == ["top", "side"]
    assert camera_names(["/cam1/color/image_raw", "/cam2/color/image_raw"]) == ["cam1", "cam2"]
    with pytest.raises(WmSimError, match=r"name them with cameras=\[\.\.\.\]"):
        camera_names(["/a/x/image", "/a/y/image", "/b/x/image"])


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"image_topics": [TOP, "/front/image_raw"]}, r"no topic '/front/image_raw' \(image_topics, the image of camera front\)"),
        ({"image_topics": [TOP, SIDE], "cameras": ["a", "a"]}, f"image topics {TOP} and {SIDE} both give camera 'a'"),
        ({"image_topics": [TOP, SIDE], "cameras": ["a"]}, r"names 1 cameras \['a'\] for 2 image topics"),
        ({"image_topics": [TOP, SIDE], "cameras": ["a", "b/c"]}, f"camera name 'b/c' \\(of {SIDE}\\)"),
        ({"image_topics": [TOP, TOP]}, "each topic may serve one role only"),
        ({"image_topic": TOP, "image_topics": [TOP, SIDE]}, "not both"),
    ],
    ids=["missing_topic", "same_name", "too_few_names", "bad_name", "same_topic", "both_options"],
)  # fmt: skip
def test_bad_camera_topics_are_one_clear_error_and_write_nothing(options, expected, tmp_path):
    bag = write_bag(tmp_path / "two", two_cameras())
    out = tmp_path / "out.zarr"
    with pytest.raises(WmSimError, match=expected):
        import_bag(config(bag, out, **({"image_topic": ""} | options)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]
