"""The zarr episode store: layout, attributes, crash debris, concurrent readers (its training
windows: test_windows.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr
from wm_sim.envs.catalog import TASK_SPECS

import wm_sim.data.store as store_module
from wm_sim.data.manifest import MANIFEST_FILE
from wm_sim.data.schema import SCHEMA_VERSION, image_key
from wm_sim.data.store import FRAMES_PER_SHARD, EpisodeStore, check_store
from wm_sim.data.windows import EpisodeWindows
from wm_sim.errors import WmSimError

LEROBOT_KEYS = ["observation.state", "action", "next.reward", "next.done", "next.success", "timestamp"]

L = TASK_SPECS["reacher"].episode_steps  # rows per reacher episode


@pytest.fixture
def store_copy(reacher_store_path, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(reacher_store_path, copy)
    return copy


def test_layout_follows_diffusion_policy_with_lerobot_keys(reacher_store_path):
    root = zarr.open_group(str(reacher_store_path), mode="r")
    data_keys = set(root["data"].array_keys())
    assert {image_key("top"), *LEROBOT_KEYS, "next.terminated", "physics_state"} <= data_keys
    assert set(root["meta"].array_keys()) == {"episode_ends", "episode_seed"}
    ends = root["meta"]["episode_ends"][:]
    assert ends.tolist() == [L, 2 * L, 3 * L, 4 * L]
    assert root["data"][image_key("top")].shape == (4 * L, 64, 64, 3)
    assert root["data"][image_key("top")].dtype == np.uint8
    attrs = dict(root.attrs)
    assert attrs["schema_version"] == SCHEMA_VERSION
    assert attrs["task"] == "reacher" and attrs["fps"] == 50.0 and attrs["image_size"] == 64
    assert attrs["cameras"] == ["top"]
    assert attrs["action_low"] == [-1.0, -1.0] and attrs["action_high"] == [1.0, 1.0]
    assert attrs["features"]["observation.state"]["names"] == [
        "joint0.pos",
        "joint1.pos",
        "joint0.vel",
        "joint1.vel",
    ]
    assert attrs["features"]["action"]["shape"] == [2]


def test_images_are_chunked_per_frame_and_sharded_per_block(reacher_store_path):
    images = zarr.open_array(str(reacher_store_path / "data" / image_key("top")), mode="r")
    assert images.chunks == (1, 64, 64, 3)
    assert images.shards == (FRAMES_PER_SHARD, 64, 64, 3)
    chunk_files = [
        p
        for p in (reacher_store_path / "data" / image_key("top")).rglob("*")
        if p.is_file() and p.name != "zarr.json"
    ]
    assert 1 <= len(chunk_files) <= 4 * L // FRAMES_PER_SHARD + 1  # not one file per frame


def test_episode_rows_are_consistent(reacher_store_path):
    store = EpisodeStore.open(reacher_store_path)
    for e in range(store.num_episodes):
        ep = store.episode(e)
        assert ep["frame_index"].tolist() == list(range(L))
        assert set(ep["episode_index"].tolist()) == {e}
        assert ep["next.done"].tolist() == [False] * (L - 1) + [True]
        np.testing.assert_allclose(ep["timestamp"], np.arange(L) / 50.0, rtol=1e-6)
        assert np.all(np.abs(ep["action"]) <= 1.0)


def test_open_refuses_missing_foreign_and_unknown_version_stores(tmp_path, store_copy):
    with pytest.raises(WmSimError, match="no dataset store"):
        EpisodeStore.open(tmp_path / "absent.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(WmSimError, match="not a zarr v3 dataset store"):
        EpisodeStore.open(tmp_path / "plain")
    meta = json.loads((store_copy / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = 99
    (store_copy / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(WmSimError, match="schema version 99"):
        EpisodeStore.open(store_copy)


def test_open_refuses_corrupt_metadata(store_copy):
    (store_copy / "zarr.json").write_text("{ not json")
    with pytest.raises(WmSimError, match="corrupt"):
        EpisodeStore.open(store_copy)


def test_open_refuses_store_with_a_missing_array(store_copy):
    shutil.rmtree(store_copy / "data" / "action")
    with pytest.raises(WmSimError, match="corrupt"):
        EpisodeStore.open(store_copy)


def test_half_written_episode_is_invisible_and_trimmed_on_append(store_copy):
    # What a kill between writing rows and committing the episode leaves behind:
    root = zarr.open_group(str(store_copy), mode="r+")
    for key in root["data"].array_keys():
        arr = root["data"][key]
        arr.resize((4 * L + 30, *arr.shape[1:]))
    root["meta"]["episode_seed"].resize((5,))
    root["meta"]["episode_ends"].resize((5,))  # grown, but the end itself never written (reads 0)
    (store_copy / "data" / "action" / "junk.1234.partial").write_bytes(b"torn")

    reader = EpisodeStore.open(store_copy, mode="r")
    assert reader.num_episodes == 4 and reader.num_frames == 4 * L
    writer = EpisodeStore.open(store_copy, mode="a")
    assert all(writer.array(k).shape[0] == 4 * L for k in writer.keys)
    assert not list(store_copy.rglob("*.partial"))
    writer.append_episode(reader.episode(1), seed=123)
    reopened = EpisodeStore.open(store_copy)
    assert reopened.episode_ends.tolist() == [L, 2 * L, 3 * L, 4 * L, 5 * L]
    np.testing.assert_array_equal(reopened.episode(4)[image_key("top")], reader.episode(1)[image_key("top")])
    assert reopened.episode_seeds()[-1] == 123


def test_reader_sees_a_consistent_snapshot_while_a_writer_appends(store_copy):
    reader = EpisodeStore.open(store_copy, mode="r")
    writer = EpisodeStore.open(store_copy, mode="a")
    before = reader.episode(3)
    writer.append_episode(before, seed=1)
    assert reader.num_episodes == 4
    np.testing.assert_array_equal(reader.episode(3)["action"], before["action"])
    with pytest.raises(IndexError):
        reader.read("action", 4 * L, 5 * L)
    reader.refresh()
    assert reader.num_episodes == 5
    np.testing.assert_array_equal(reader.episode(4)["action"], before["action"])


def test_only_one_writer_at_a_time(store_copy):
    writer = EpisodeStore.open(store_copy, mode="a")
    with pytest.raises(WmSimError, match="being written by another process"):
        EpisodeStore.open(store_copy, mode="a")
    assert EpisodeStore.open(store_copy, mode="r").num_episodes == 4  # readers are not blocked
    writer.close()
    EpisodeStore.open(store_copy, mode="a").close()


def test_a_store_whose_creation_never_finished_says_so(store_copy):
    meta = json.loads((store_copy / "zarr.json").read_text())
    meta["attributes"] = {}
    (store_copy / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(WmSimError, match="creation never finished"):
        EpisodeStore.open(store_copy)


def test_read_only_store_refuses_appends(reacher_store_path):
    store = EpisodeStore.open(reacher_store_path, mode="r")
    with pytest.raises(WmSimError, match="read-only"):
        store.append_episode(store.episode(0), seed=0)


def test_append_refuses_malformed_episodes(store_copy):
    store = EpisodeStore.open(store_copy, mode="a")
    episode = store.episode(0)
    with pytest.raises(WmSimError, match="missing"):
        store.append_episode({k: v for k, v in episode.items() if k != "action"}, seed=0)
    with pytest.raises(WmSimError, match="differ in length"):
        store.append_episode({**episode, "action": episode["action"][:10]}, seed=0)
    with pytest.raises(WmSimError, match="dtype"):
        store.append_episode({**episode, "action": episode["action"].astype(np.float64)}, seed=0)
    assert EpisodeStore.open(store_copy).num_episodes == 4


def test_create_never_overwrites(reacher_store_path):
    store = EpisodeStore.open(reacher_store_path)
    with pytest.raises(WmSimError, match="already exists"):
        EpisodeStore.create(reacher_store_path, store.info)


# --- integrity: the manifest, damaged chunks, kills mid-append, concurrent writers -------------

IMAGES = image_key("top")
# The reacher store's 4 episodes of 200 frames: image shard i holds rows [256 i, 256 (i + 1)).
DAMAGES = {
    "deleted image shard": (f"data/{IMAGES}", "c/1/0/0/0", "delete", "episodes 1-2"),
    "deleted state chunk": ("data/observation.state", "c/0/0", "delete", "episodes 0-3"),
    "truncated image shard": (f"data/{IMAGES}", "c/2/0/0/0", "truncate", "episodes 2-3"),
}


def damage(store: Path, array: str, chunk: str, how: str) -> None:
    """What a disk or copy error does to one chunk file."""
    file = store / array / chunk
    if how == "delete":
        file.unlink()
    elif how == "truncate":
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    else:  # "flip": same size, one byte changed
        data = bytearray(file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        file.write_bytes(bytes(data))


def digest(path: Path) -> str:
    """Every file's name and bytes under `path`: equal digests mean nothing on disk changed."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(p.relative_to(path).as_posix().encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_each_commit_writes_a_manifest_of_every_chunk_file_its_episodes_need(reacher_store_path):
    manifest = json.loads((reacher_store_path / MANIFEST_FILE).read_text())
    assert manifest["episode_ends"] == [L, 2 * L, 3 * L, 4 * L]
    assert manifest["episode_seed"] == EpisodeStore.open(reacher_store_path).episode_seeds().tolist()
    for array, files in manifest["chunks"].items():
        on_disk = {
            p.relative_to(reacher_store_path / array).as_posix()
            for p in (reacher_store_path / array).rglob("*")
            if p.is_file() and p.name != "zarr.json"
        }
        assert set(files) == on_disk, array  # every file listed; none left out
        for chunk, (size, crc) in files.items():
            data = (reacher_store_path / array / chunk).read_bytes()
            assert size == len(data) and crc == f"{google_crc32c.value(data):08x}"
    assert len(manifest["chunks"][f"data/{IMAGES}"]) == 4  # 800 frames, 256 a shard
    assert manifest["chunks"]["data/next.terminated"] == {}  # all False: zarr writes no chunk


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_opening_refuses_a_damaged_store_in_one_line_naming_key_chunk_and_episodes(store_copy, kind):
    array, chunk, how, episodes = DAMAGES[kind]
    damage(store_copy, array, chunk, how)
    before = digest(store_copy)
    openers = {
        "read": lambda: EpisodeStore.open(store_copy),
        "append (collect resume)": lambda: EpisodeStore.open(store_copy, mode="a"),
        "training windows": lambda: EpisodeWindows(store_copy, 3, 1, in_memory=True, progress=False),
    }
    for name, opener in openers.items():
        with pytest.raises(WmSimError) as refused:
            opener()
        message = str(refused.value)
        assert "\n" not in message, name
        assert f"{array} chunk {chunk}" in message and f"holds {episodes}" in message, (name, message)
        assert "check-data" in message
    assert digest(store_copy) == before
    with pytest.raises(WmSimError, match="is damaged"):  # the refused writer released its lock
        EpisodeStore.open(store_copy, mode="a")


def test_a_chunk_lost_or_torn_after_opening_is_refused_when_read_never_read_as_zeros(store_copy):
    store = EpisodeStore.open(store_copy)
    damage(store_copy, "data/observation.state", "c/0/0", "delete")
    with pytest.raises(
        WmSimError, match=r"observation.state chunk c/0/0 is missing \(it holds episodes 0-3\)"
    ):
        store.read("observation.state", 0, 10)
    damage(store_copy, f"data/{IMAGES}", "c/1/0/0/0", "truncate")
    with pytest.raises(WmSimError) as refused:
        store.read(IMAGES, 250, 300)  # rows of shard 0 (intact) and shard 1 (torn)
    message = str(refused.value)
    assert "\n" not in message and "chunk c/1/0/0/0 cannot be decoded" in message
    assert "holds episodes 1-2" in message
    assert store.read(IMAGES, 0, 10).shape == (10, 64, 64, 3)  # intact chunks still read


def test_a_store_without_a_manifest_still_opens_and_gets_one_when_appended_to(store_copy, capfd):
    (store_copy / MANIFEST_FILE).unlink()  # what a store written before the manifest looks like
    data_before = digest(store_copy / "data")
    store = EpisodeStore.open(store_copy)
    assert store.num_episodes == 4 and not store.has_manifest
    warning = capfd.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and f"{store_copy} has no {MANIFEST_FILE}" in warning[0]
    assert check_store(store_copy).damages == []  # decodes: nothing torn
    EpisodeStore.open(store_copy, mode="a").close()
    assert digest(store_copy / "data") == data_before  # only the manifest was added
    assert EpisodeStore.open(store_copy).has_manifest
    damage(store_copy, f"data/{IMAGES}", "c/0/0/0/0", "delete")
    with pytest.raises(WmSimError, match="holds episodes 0-1"):  # from now on, checked
        EpisodeStore.open(store_copy)


def test_a_torn_shard_of_a_store_without_a_manifest_is_one_line_not_a_traceback(store_copy):
    (store_copy / MANIFEST_FILE).unlink()
    damage(store_copy, f"data/{IMAGES}", "c/2/0/0/0", "truncate")
    store = EpisodeStore.open(store_copy)  # nothing to check it against
    with pytest.raises(WmSimError, match=r"chunk c/2/0/0/0 cannot be decoded .*holds episodes 2-3"):
        store.episode(2)
    found = check_store(store_copy, checksums=True)  # decoding finds it
    assert [(d.array, d.chunk, d.episodes) for d in found.damages] == [
        (f"data/{IMAGES}", "c/2/0/0/0", (2, 3))
    ]


def _fail_once(monkeypatch, owner, name: str) -> None:
    """Make `owner.name` raise the first time it is called: the process "dies" there."""
    original = getattr(owner, name)

    def dying(*args, **kwargs):
        monkeypatch.setattr(owner, name, original)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(owner, name, dying)


def test_an_append_killed_before_its_commit_is_invisible_and_resume_undoes_it_to_the_byte(
    store_copy, monkeypatch
):
    before = digest(store_copy)
    writer = EpisodeStore.open(store_copy, mode="a")
    episode = writer.episode(3)
    _fail_once(monkeypatch, store_module.Manifest, "save")  # rows, seed and end written; no commit
    with pytest.raises(KeyboardInterrupt):
        writer.append_episode(episode, seed=9)
    with pytest.raises(WmSimError, match="failed half-way"):  # not on top of the torn one
        writer.append_episode(episode, seed=9)
    writer.close()
    assert (store_copy / "rollback").is_dir()  # the shard episode 3 shares with 4, as committed
    found = check_store(store_copy, checksums=True)
    assert found.damages == [] and found.interrupted_append and len(found.episode_ends) == 4
    reader = EpisodeStore.open(store_copy)
    assert reader.num_episodes == 4
    EpisodeStore.open(store_copy, mode="a").close()
    assert digest(store_copy) == before  # rows, chunk files, meta and manifest as before the append


def test_an_append_killed_after_its_commit_keeps_the_episode(store_copy, monkeypatch):
    writer = EpisodeStore.open(store_copy, mode="a")
    episode = writer.episode(3)
    _fail_once(monkeypatch, store_module.shutil, "rmtree")  # committed, rollback/ left behind
    with pytest.raises(KeyboardInterrupt):
        writer.append_episode(episode, seed=9)
    writer.close()
    assert check_store(store_copy, checksums=True).damages == []
    resumed = EpisodeStore.open(store_copy, mode="a")
    assert resumed.num_episodes == 5 and not (store_copy / "rollback").exists()
    assert check_store(store_copy, checksums=True).damages == []
    np.testing.assert_array_equal(resumed.episode(4)[IMAGES], episode[IMAGES])


APPENDER = """
import sys
from wm_sim.data.store import EpisodeStore
store = EpisodeStore.open(sys.argv[1], mode="a")
episode = store.episode(0)
print("appending", flush=True)
while True:
    store.append_episode(episode, seed=5)
"""


def _start_appender(path: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", APPENDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "appending"
    return process


@pytest.mark.slow
def test_sigkill_at_any_point_of_appends_leaves_a_store_that_checks_out_and_resumes(
    store_copy, reacher_store_path
):
    original = EpisodeStore.open(reacher_store_path)
    for delay in (0.0, 0.07, 0.19, 0.31):
        process = _start_appender(store_copy)
        time.sleep(delay)
        process.kill()
        process.wait()
        assert check_store(store_copy, checksums=True).damages == []  # before any clean-up
        EpisodeStore.open(store_copy, mode="a").close()  # resume: rollback and trim
        assert check_store(store_copy, checksums=True).damages == []
    store = EpisodeStore.open(store_copy)
    assert store.num_episodes >= 4 and not (store_copy / "rollback").exists()
    for e in range(store.num_episodes):
        want = original.episode(e if e < 4 else 0)
        for key, value in store.episode(e).items():
            np.testing.assert_array_equal(value, want[key], err_msg=f"episode {e} {key}")


def test_readers_never_see_damage_while_another_process_appends(store_copy):
    process = _start_appender(store_copy)
    try:
        reader = EpisodeStore.open(store_copy)
        seen = set()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            EpisodeStore.open(store_copy)  # the open-time check, racing the writer's replacements
            reader.refresh()
            last = reader.num_episodes - 1
            seen.add(last)
            assert reader.episode(last, keys=["frame_index"])["frame_index"].tolist() == list(range(L))
    finally:
        process.kill()
        process.wait()
    assert len(seen) > 1  # the writer did append meanwhile


CREATOR = """
import sys, time
import wm_sim.data.store as store_module
from wm_sim.data.store import EpisodeStore
info = EpisodeStore.open(sys.argv[1]).info
stage = sys.argv[3]
original = getattr(store_module, "_create_arrays")
def paused(root, info):
    if stage == "attributes":
        original(root, info)
    print("creating", flush=True)
    time.sleep(60)
store_module._create_arrays = paused
if stage == "zarr.json":
    store_module.zarr.open_group = lambda *a, **k: paused(None, None)
EpisodeStore.create(sys.argv[2], info)
"""


@pytest.mark.parametrize("stage", ["zarr.json", "attributes"])
def test_a_store_being_created_by_another_process_says_so_to_readers_and_writers(
    reacher_store_path, tmp_path, stage
):
    path = tmp_path / "new.zarr"
    process = subprocess.Popen(
        [sys.executable, "-c", CREATOR, str(reacher_store_path), str(path), stage],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "creating"
        before = digest(path)
        for attempt in (
            lambda: EpisodeStore.open(path),
            lambda: EpisodeStore.open(path, mode="a"),
            lambda: EpisodeStore.create(path, EpisodeStore.open(reacher_store_path).info),
        ):
            with pytest.raises(WmSimError, match="being written by another process"):
                attempt()
        assert digest(path) == before
    finally:
        process.kill()
        process.wait()
    # the creator is gone: now the store really is unfinished
    expected = "not a zarr v3 dataset store" if stage == "zarr.json" else "creation never finished"
    for mode in ("r", "a"):
        with pytest.raises(WmSimError, match=expected):
            EpisodeStore.open(path, mode=mode)
