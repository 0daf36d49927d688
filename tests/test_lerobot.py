"""LeRobot v3.0 in and out, against real files: our own export, and a folder the official
`lerobot` package wrote (tests/fixtures/lerobot_v3_official, made by make_lerobot_v3_fixture.py)."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wm_sim.cli import main
from wm_sim.data.schema import ACTION_KEY, IMAGE_PREFIX, REWARD_KEY, STATE_KEY, SUCCESS_KEY
from wm_sim.data.store import EpisodeStore
from wm_sim.errors import WmSimError
from wm_sim.lerobot_export import ExportLeRobotConfig, export_lerobot
from wm_sim.lerobot_import import ImportLeRobotConfig, VideoReader, import_lerobot

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "lerobot_v3_official"
CAMERA = "observation.images.top"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def fixture_script():
    """The script that made the official fixture: its frame, state and action formulas."""
    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURES / "make_lerobot_v3_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported(reacher_store_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lerobot") / "reacher_lerobot"
    export_lerobot(ExportLeRobotConfig(data=str(reacher_store_path), out=str(out)))
    return out


@pytest.fixture(scope="module")
def reimported(exported, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("back") / "reacher.zarr"
    import_lerobot(ImportLeRobotConfig(root=str(exported), out=str(out)))
    return out


def test_export_then_import_gives_back_every_episode_exactly_and_frames_within_codec_error(
    reacher_store_path, reimported
):
    original, back = EpisodeStore.open(reacher_store_path), EpisodeStore.open(reimported)
    assert np.array_equal(back.episode_ends, original.episode_ends)
    assert back.info.features == original.info.features
    assert (back.info.task, back.info.fps, back.info.cameras) == (
        original.info.task,
        original.info.fps,
        ["top"],
    )
    assert (back.info.action_low, back.info.action_high) == (
        original.info.action_low,
        original.info.action_high,
    )
    assert back.info.collection["unlabelled"] == []
    for episode in range(original.num_episodes):
        mine, theirs = original.episode(episode), back.episode(episode)
        for key in original.keys:
            if key.startswith(IMAGE_PREFIX):
                assert psnr(mine[key], theirs[key]) > 30.0, (episode, key)
            else:
                assert mine[key].dtype == theirs[key].dtype and np.array_equal(mine[key], theirs[key]), key


def test_export_writes_a_lerobot_v3_folder(reacher_store_path, exported):
    store = EpisodeStore.open(reacher_store_path)
    info = json.loads((exported / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 50
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (4, store.num_frames, 1)
    assert info["splits"] == {"train": "0:4"}
    assert info["features"][CAMERA]["dtype"] == "video" and info["features"][CAMERA]["shape"] == [64, 64, 3]
    assert info["features"][STATE_KEY]["names"] == store.info.features[STATE_KEY].names

    data = pq.read_table(exported / "data/chunk-000/file-000.parquet")
    for column in ("timestamp", "frame_index", "episode_index", "index", "task_index", STATE_KEY, ACTION_KEY):
        assert column in data.column_names
    assert data.column("index").to_pylist() == list(range(store.num_frames))
    episodes = pq.read_table(exported / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["dataset_to_index"] for e in episodes] == store.episode_ends.tolist()
    assert episodes[1][f"videos/{CAMERA}/from_timestamp"] == pytest.approx(200 / 50)
    assert "stats/action/mean" in episodes[0] and episodes[0]["tasks"] == ["reacher"]
    tasks = pq.read_table(exported / "meta/tasks.parquet")
    assert tasks.column("__index_level_0__").to_pylist() == ["reacher"]
    assert b"pandas" in tasks.schema.metadata  # LeRobot reads it with pandas: the task is the index
    stats = json.loads((exported / "meta/stats.json").read_text())
    assert np.asarray(stats[CAMERA]["mean"]).shape == (3, 1, 1)
    assert stats[ACTION_KEY]["count"] == [store.num_frames]

    with av.open(str(exported / f"videos/{CAMERA}/chunk-000/file-000.mp4")) as video:
        stream = video.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert sum(1 for _ in video.decode(stream)) == store.num_frames


def test_a_video_read_out_of_order_gives_the_frames_read_in_order(exported):
    video = exported / f"videos/{CAMERA}/chunk-000/file-000.mp4"
    times = {episode: episode * 4.0 + np.arange(0, 200) / 50 for episode in (0, 2)}
    in_order = VideoReader(CAMERA)
    expected = {e: in_order.frames_at(video, times[e], 0.4 / 50, 64) for e in (0, 2)}
    backwards = VideoReader(CAMERA)  # episode 2 first: episode 0 then needs a seek back
    assert np.array_equal(backwards.frames_at(video, times[2], 0.4 / 50, 64), expected[2])
    assert np.array_equal(backwards.frames_at(video, times[0], 0.4 / 50, 64), expected[0])
    in_order.close()
    backwards.close()


def test_the_official_lerobot_fixture_imports_with_its_shapes_episodes_and_fps(tmp_path):
    script = fixture_script()
    out = tmp_path / "official.zarr"
    import_lerobot(ImportLeRobotConfig(root=str(OFFICIAL), out=str(out), image_size=32))
    store = EpisodeStore.open(out)
    assert store.info.fps == 10.0 and store.info.cameras == ["top"] and store.info.image_size == 32
    assert store.episode_ends.tolist() == [10, 20]
    assert store.info.features[STATE_KEY].names == ["joint_0", "joint_1"]
    assert store.info.features[ACTION_KEY].names == ["motor_0", "motor_1"]
    collection = store.info.collection
    assert collection["codebase_version"] == "v3.0" and collection["tasks"] == ["reach the toy"]
    # no reward or success labels in it: the store says so, and still holds every key
    assert {REWARD_KEY, SUCCESS_KEY, "next.terminated"} <= set(collection["unlabelled"])
    low, high = np.asarray(collection["command_low"]), np.asarray(collection["command_high"])
    for episode in range(2):
        rows = store.episode(episode)
        assert rows[f"{IMAGE_PREFIX}top"].shape == (10, 32, 32, 3)
        expected_state = np.stack([script.state(episode, i) for i in range(10)])
        assert np.array_equal(rows[STATE_KEY], expected_state)
        recorded = np.stack([script.action(episode, i) for i in range(10)])
        assert np.allclose(low + (rows[ACTION_KEY] + 1) / 2 * (high - low), recorded, atol=1e-6)
        assert rows[ACTION_KEY].min() >= -1 and rows[ACTION_KEY].max() <= 1
        assert np.array_equal(rows["frame_index"], np.arange(10)) and rows["next.done"].tolist() == [
            0
        ] * 9 + [1]
        assert not rows[REWARD_KEY].any()


def test_the_official_fixture_frames_decode_within_codec_error(tmp_path):
    script = fixture_script()
    out = tmp_path / "official.zarr"
    import_lerobot(ImportLeRobotConfig(root=str(OFFICIAL), out=str(out), image_size=64))
    store = EpisodeStore.open(out)
    for episode in range(2):
        expected = np.stack([script.frame(episode, i) for i in range(10)])
        assert psnr(store.episode(episode)[f"{IMAGE_PREFIX}top"], expected) > 30.0


def test_image_features_stored_in_the_data_files_import(tmp_path):
    """dtype "image": PNG bytes in the data parquet (LeRobot's use_videos=False), here the fixture's frames."""
    from PIL import Image

    root = tmp_path / "images"
    shutil.copytree(OFFICIAL, root, ignore=shutil.ignore_patterns("videos"))
    with av.open(str(OFFICIAL / f"videos/{CAMERA}/chunk-000/file-000.mp4")) as video:
        frames = [frame.to_ndarray(format="rgb24") for frame in video.decode(video=0)]
    cells = []
    for frame in frames:
        png = io.BytesIO()
        Image.fromarray(frame).save(png, format="PNG")
        cells.append({"bytes": png.getvalue(), "path": None})
    data_file = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(data_file)
    pq.write_table(table.append_column(CAMERA, pa.array(cells)), data_file)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"][CAMERA] = {
        "dtype": "image",
        "shape": [64, 64, 3],
        "names": ["height", "width", "channel"],
    }
    (root / "meta/info.json").write_text(json.dumps(info))

    out = tmp_path / "images.zarr"
    import_lerobot(ImportLeRobotConfig(root=str(root), out=str(out)))
    store = EpisodeStore.open(out)
    assert store.episode_ends.tolist() == [10, 20]
    assert np.array_equal(store.read(f"{IMAGE_PREFIX}top", 0, 20), np.stack(frames))  # PNG is lossless


def test_every_camera_is_kept_in_and_out(tmp_path):
    """A second camera (the fixture's video again, under another key) survives import, export, import."""
    root = tmp_path / "two"
    shutil.copytree(OFFICIAL, root)
    side = "observation.images.side"
    shutil.copytree(root / f"videos/{CAMERA}", root / f"videos/{side}")
    episodes_file = root / "meta/episodes/chunk-000/file-000.parquet"
    episodes = pq.read_table(episodes_file)
    for name in [n for n in episodes.column_names if n.startswith(f"videos/{CAMERA}/")]:
        episodes = episodes.append_column(name.replace(CAMERA, side), episodes.column(name))
    pq.write_table(episodes, episodes_file)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"][side] = info["features"][CAMERA]
    (root / "meta/info.json").write_text(json.dumps(info))

    first, again = tmp_path / "two.zarr", tmp_path / "again.zarr"
    import_lerobot(ImportLeRobotConfig(root=str(root), out=str(first)))
    export_lerobot(ExportLeRobotConfig(data=str(first), out=str(tmp_path / "exported")))
    import_lerobot(ImportLeRobotConfig(root=str(tmp_path / "exported"), out=str(again)))
    stores = EpisodeStore.open(first), EpisodeStore.open(again)
    for store in stores:
        assert store.info.cameras == ["top", "side"]
        assert np.array_equal(
            store.read(f"{IMAGE_PREFIX}top", 0, 20), store.read(f"{IMAGE_PREFIX}side", 0, 20)
        )
    assert (
        psnr(stores[0].read(f"{IMAGE_PREFIX}side", 0, 20), stores[1].read(f"{IMAGE_PREFIX}side", 0, 20)) > 30
    )
    assert np.array_equal(stores[0].read(ACTION_KEY, 0, 20), stores[1].read(ACTION_KEY, 0, 20))


# --- bad input: one clear error, nothing at out ---------------------------------------------------


@pytest.fixture
def copy(tmp_path) -> Path:
    root = tmp_path / "dataset"
    shutil.copytree(OFFICIAL, root)
    return root


def refused(root: Path, out: Path, capsys) -> str:
    """`wm-sim import-lerobot`: exit 2, one line, and nothing written at (or beside) `out`."""
    capsys.readouterr()
    assert main(["import-lerobot", f"root={root}", f"out={out}"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not tqdm's
    assert len(lines) == 1, lines
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "a partial store was left behind"
    return lines[0]


def test_a_folder_that_is_not_a_lerobot_dataset_is_refused(reacher_store_path, tmp_path, capsys):
    line = refused(reacher_store_path, tmp_path / "out.zarr", capsys)
    assert "is not a LeRobot dataset" in line and "meta/info.json" in line


def test_an_unknown_codebase_version_is_refused(copy, tmp_path, capsys):
    info = json.loads((copy / "meta/info.json").read_text())
    (copy / "meta/info.json").write_text(json.dumps(info | {"codebase_version": "v2.1"}))
    line = refused(copy, tmp_path / "out.zarr", capsys)
    assert "codebase_version 'v2.1'" in line and "v3.0 only" in line and "info.json" in line


def test_a_missing_video_file_is_refused(copy, tmp_path, capsys):
    video = copy / f"videos/{CAMERA}/chunk-000/file-000.mp4"
    video.unlink()
    line = refused(copy, tmp_path / "out.zarr", capsys)
    assert str(video) in line and "missing" in line


def test_a_camera_named_in_info_json_but_absent_is_refused(copy, tmp_path, capsys):
    info = json.loads((copy / "meta/info.json").read_text())
    info["features"]["observation.images.side"] = info["features"][CAMERA]
    (copy / "meta/info.json").write_text(json.dumps(info))
    line = refused(copy, tmp_path / "out.zarr", capsys)
    assert "'observation.images.side'" in line and "absent" in line


@pytest.mark.parametrize(
    "damaged", ["data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet"]
)
def test_a_damaged_parquet_file_is_refused(copy, tmp_path, capsys, damaged):
    path = copy / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    line = refused(copy, tmp_path / "out.zarr", capsys)
    assert str(path) in line and "damaged" in line


def test_a_video_that_fails_half_way_leaves_nothing_at_out(copy, tmp_path, capsys):
    video = copy / f"videos/{CAMERA}/chunk-000/file-000.mp4"
    with av.open(str(OFFICIAL / f"videos/{CAMERA}/chunk-000/file-000.mp4")) as source:
        stream = source.streams.video[0]
        with av.open(str(video), mode="w") as short:  # the first episode's frames only
            out_stream = short.add_stream("libx264", rate=10)
            out_stream.width = out_stream.height = 64
            for index, frame in enumerate(source.decode(stream)):
                if index == 10:
                    break
                frame.pts = index
                short.mux(out_stream.encode(frame))
            short.mux(out_stream.encode(None))
    line = refused(copy, tmp_path / "out.zarr", capsys)
    assert str(video) in line and "ends before" in line


def test_an_existing_out_is_never_overwritten(exported, reacher_store_path, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(WmSimError, match="already exists"):
        import_lerobot(ImportLeRobotConfig(root=str(exported), out=str(out)))
    with pytest.raises(WmSimError, match="already exists"):
        export_lerobot(ExportLeRobotConfig(data=str(reacher_store_path), out=str(out)))
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_export_of_a_missing_store_writes_nothing(tmp_path, capsys):
    out = tmp_path / "lerobot"
    assert main(["export-lerobot", f"data={tmp_path / 'missing.zarr'}", f"out={out}"]) == 2
    assert "no dataset store" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".lerobot*"))
