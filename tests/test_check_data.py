"""`wm-sim check-data` and the refusals of a damaged store: found, named, refused, repaired."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from wm_sim.cli import main
from wm_sim.collect import CollectConfig, collect
from wm_sim.data.manifest import MANIFEST_FILE
from wm_sim.data.schema import image_key
from wm_sim.data.store import EpisodeStore, lock_for_writing
from wm_sim.errors import WmSimError

IMAGES = image_key("top")
# The reacher store's 4 episodes of 200 frames: image shard i holds rows [256 i, 256 (i + 1)).
DAMAGES = {
    "deleted image shard": (f"data/{IMAGES}", "c/1/0/0/0", "delete", [1, 2]),
    "deleted state chunk": ("data/observation.state", "c/0/0", "delete", [0, 1, 2, 3]),
    "truncated image shard": (f"data/{IMAGES}", "c/3/0/0/0", "truncate", [3]),
    "flipped byte in an image shard": (f"data/{IMAGES}", "c/0/0/0/0", "flip", [0, 1]),
}


def damage(store: Path, array: str, chunk: str, how: str) -> None:
    """What a disk or copy error does to one chunk file."""
    file = store / array / chunk
    if how == "delete":
        file.unlink()
    elif how == "truncate":
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    else:  # "flip": same size, one byte changed; only a checksum finds it
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


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in sorted(folder.iterdir())}


@pytest.fixture
def store_copy(reacher_store_path, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(reacher_store_path, copy)
    return copy


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_check_data_names_the_damaged_episodes_and_exits_2_changing_nothing(store_copy, kind, capsys):
    array, chunk, how, episodes = DAMAGES[kind]
    damage(store_copy, array, chunk, how)
    before = folder_digest(store_copy.parent)
    assert main(["check-data", f"data={store_copy}"]) == 2
    out, err = capsys.readouterr()
    assert f"{array} chunk {chunk}" in out
    assert len(err.strip().splitlines()) == 1
    listed = f"episodes {episodes[0]}-{episodes[-1]}" if len(episodes) > 1 else f"episode {episodes[0]}"
    assert f"{len(episodes)} of 4 episodes are damaged ({listed})" in err
    assert folder_digest(store_copy.parent) == before


def test_check_data_of_an_intact_store_exits_0(store_copy, capsys):
    before = folder_digest(store_copy.parent)
    assert main(["check-data", f"data={store_copy}"]) == 0
    assert "no damage found" in capsys.readouterr().out
    assert main(["check-data", f"data={store_copy}", "repair=true"]) == 0  # nothing to repair
    assert folder_digest(store_copy.parent) == before  # no backup either


@pytest.mark.parametrize("kind", ["deleted image shard", "truncated image shard", "deleted state chunk"])
def test_repair_copies_the_store_then_keeps_the_intact_episodes_bit_for_bit(
    store_copy, reacher_store_path, kind, capsys
):
    array, chunk, how, dropped = DAMAGES[kind]
    damage(store_copy, array, chunk, how)
    damaged_digest = digest(store_copy)
    assert main(["check-data", f"data={store_copy}", "repair=true"]) == 0
    out = capsys.readouterr().out
    backups = sorted(store_copy.parent.glob("copy.zarr.bak-*"))
    assert len(backups) == 1 and digest(backups[0]) == damaged_digest  # the store as it was
    assert sorted(p.name for p in store_copy.parent.iterdir()) == ["copy.zarr", backups[0].name]
    assert "dropped episode" in out

    original = EpisodeStore.open(reacher_store_path)
    repaired = EpisodeStore.open(store_copy)
    kept = [e for e in range(4) if e not in dropped]
    assert repaired.num_episodes == len(kept)
    np.testing.assert_array_equal(repaired.episode_seeds(), original.episode_seeds()[kept])
    for new, old in enumerate(kept):
        want = original.episode(old)
        for key, value in repaired.episode(new).items():
            assert value.dtype == want[key].dtype
            np.testing.assert_array_equal(value, want[key], err_msg=f"{key} of episode {old}")
    assert main(["check-data", f"data={store_copy}"]) == 0


def test_a_repaired_store_refuses_collect_resume_which_would_repeat_episodes(store_copy, capsys):
    damage(store_copy, f"data/{IMAGES}", "c/1/0/0/0", "delete")
    assert main(["check-data", f"data={store_copy}", "repair=true"]) == 0
    before = digest(store_copy)
    with pytest.raises(WmSimError, match=r"dropped its episodes \[1, 2\]"):
        collect(CollectConfig(task="reacher", policy="mixed", episodes=5, workers=1, seed=7,
                              out=str(store_copy), resume=True))  # fmt: skip
    assert digest(store_copy) == before


def test_damaged_episode_bookkeeping_is_rebuilt_from_the_manifest_without_dropping_episodes(
    store_copy, reacher_store_path, capsys
):
    damage(store_copy, "meta/episode_ends", "c/0", "delete")
    with pytest.raises(WmSimError, match=r"meta/episode_ends chunk c/0 is missing"):
        EpisodeStore.open(store_copy)  # zarr would read 0 for every end
    assert main(["check-data", f"data={store_copy}"]) == 2
    assert "bookkeeping is damaged" in capsys.readouterr().err
    assert main(["check-data", f"data={store_copy}", "repair=true"]) == 0
    repaired = EpisodeStore.open(store_copy)
    assert repaired.episode_ends.tolist() == EpisodeStore.open(reacher_store_path).episode_ends.tolist()


def test_check_data_of_a_store_without_a_manifest_decodes_every_chunk(store_copy, capsys):
    (store_copy / MANIFEST_FILE).unlink()  # as written before the manifest existed
    damage(store_copy, f"data/{IMAGES}", "c/2/0/0/0", "truncate")
    assert main(["check-data", f"data={store_copy}"]) == 2
    out, err = capsys.readouterr()
    assert "no manifest.json" in out and "every chunk decoded" in out
    assert f"data/{IMAGES} chunk c/2/0/0/0 cannot be decoded" in out
    assert "2 of 4 episodes are damaged (episodes 2-3)" in err
    assert main(["check-data", f"data={store_copy}", "repair=true"]) == 0
    repaired = EpisodeStore.open(store_copy)
    assert repaired.num_episodes == 2 and repaired.has_manifest  # the rewrite has one


def test_training_refuses_a_damaged_store_in_one_line(store_copy, tmp_path, capsys):
    damage(store_copy, "data/observation.state", "c/0/0", "delete")
    before = digest(store_copy)
    run = tmp_path / "run"
    args = ["train", f"data={store_copy}", f"out={run}", "steps=1", "threads=1", "wandb=disabled"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "data/observation.state chunk c/0/0 is missing (it holds episodes 0-3)" in err[0]
    assert digest(store_copy) == before


def test_collect_resume_refuses_a_damaged_store_and_changes_nothing(store_copy):
    damage(store_copy, f"data/{IMAGES}", "c/3/0/0/0", "truncate")
    before = digest(store_copy)
    with pytest.raises(WmSimError, match=r"chunk c/3/0/0/0 is truncated: .* \(it holds episode 3\)"):
        collect(CollectConfig(task="reacher", policy="mixed", episodes=5, workers=1, seed=7,
                              out=str(store_copy), resume=True))  # fmt: skip
    assert digest(store_copy) == before


def test_check_data_refuses_bad_input_in_one_line(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    (tmp_path / "file.zarr").write_text("not a store")
    for data, expected in (
        ("", "data= is required"),
        (str(tmp_path / "absent.zarr"), "no dataset store"),
        (str(tmp_path / "plain"), "not a zarr v3 dataset store"),
        (str(tmp_path / "file.zarr"), "not a zarr v3 dataset store"),
    ):
        before = folder_digest(tmp_path)
        assert main(["check-data", f"data={data}", "repair=true"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (data, err)
        assert folder_digest(tmp_path) == before


def test_repair_refuses_while_another_process_writes_the_store(store_copy, capsys):
    damage(store_copy, f"data/{IMAGES}", "c/1/0/0/0", "delete")
    writers_lock = lock_for_writing(store_copy)  # what a collect appending to it holds
    before = folder_digest(store_copy.parent)
    try:
        assert main(["check-data", f"data={store_copy}", "repair=true"]) == 2
        assert "being written by another process" in capsys.readouterr().err
        assert folder_digest(store_copy.parent) == before
    finally:
        os.close(writers_lock)
