"""`wm-sim collect`: determinism, exact replay, SIGKILL survival, resume, and refusals."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from wm_sim.envs import make_task
from wm_sim.envs.catalog import TASK_SPECS

from wm_sim.collect import CollectConfig, collect
from wm_sim.data.schema import image_key
from wm_sim.data.store import EpisodeStore
from wm_sim.errors import WmSimError

L = TASK_SPECS["reacher"].episode_steps  # rows per reacher episode


def tree_digest(path: Path) -> str:
    """A digest of every file's name and bytes below `path`: equal digests, untouched store."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_replaying_stored_actions_from_the_first_physics_state_reproduces_frames_and_rewards(
    reacher_store_path,
):
    store = EpisodeStore.open(reacher_store_path)
    task = make_task("reacher", image_size=store.info.image_size)
    for e in range(store.num_episodes):
        episode = store.episode(e)
        obs = task.reset(0)  # a different start: only the stored state may matter
        obs = {"pixels": task.set_physics_state(episode["physics_state"][0]) or task.render()}
        for t, action in enumerate(episode["action"]):
            np.testing.assert_array_equal(obs["pixels"], episode[image_key("top")][t])
            np.testing.assert_array_equal(task.get_physics_state(), episode["physics_state"][t])
            result = task.step(action)
            assert np.float32(result.reward) == episode["next.reward"][t]
            assert result.success == episode["next.success"][t]
            obs = result.obs
    task.close()


@pytest.mark.slow
def test_worker_count_does_not_change_the_data(tmp_path):
    one = collect(
        CollectConfig(
            task="reacher", policy="mixed", episodes=3, workers=1, seed=3, out=str(tmp_path / "a.zarr")
        )
    )
    two = collect(
        CollectConfig(
            task="reacher", policy="mixed", episodes=3, workers=2, seed=3, out=str(tmp_path / "b.zarr")
        )
    )
    for key in (image_key("top"), "action", "next.reward", "physics_state"):
        np.testing.assert_array_equal(one.read(key, 0, one.num_frames), two.read(key, 0, two.num_frames))
    np.testing.assert_array_equal(one.episode_seeds(), two.episode_seeds())


@pytest.mark.slow
def test_policies_differ_and_the_expert_succeeds(tmp_path):
    expert = collect(
        CollectConfig(task="reacher", policy="expert", episodes=2, workers=1, out=str(tmp_path / "e.zarr"))
    )
    rand = collect(
        CollectConfig(task="reacher", policy="random", episodes=2, workers=1, out=str(tmp_path / "r.zarr"))
    )
    assert expert.read("next.success", 0, 2 * L).reshape(2, L)[:, -1].all()
    assert expert.read("next.reward", 0, 2 * L).sum() > rand.read("next.reward", 0, 2 * L).sum() + 20


@pytest.mark.slow
def test_gym_task_collects_with_its_own_reward_and_terminations(tmp_path):
    store = collect(
        CollectConfig(
            task="gym:Hopper-v5", policy="random", episodes=2, workers=1, out=str(tmp_path / "h.zarr")
        )
    )
    assert store.info.task == "gym:Hopper-v5"
    episode = store.episode(0)
    assert episode["next.terminated"][-1] and episode["next.done"][-1]  # random hopping falls over
    assert len(episode["action"]) < store.info.episode_steps


@pytest.mark.slow
def test_sigkill_mid_run_keeps_only_complete_episodes_and_resume_finishes(tmp_path):
    out = tmp_path / "killed.zarr"
    args = ["wm-sim", "collect", "task=reacher", "policy=mixed", "episodes=14", "workers=2", f"out={out}"]
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if out.exists() and (out / "zarr.json").exists():
            try:
                if EpisodeStore.open(out).num_episodes >= 3:
                    break
            except WmSimError:
                pass  # the store is being created
        time.sleep(0.05)
    else:
        pytest.fail("collect did not commit 3 episodes in time")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    survived = EpisodeStore.open(out)
    assert 3 <= survived.num_episodes < 14
    assert survived.episode_ends.tolist() == [L * (i + 1) for i in range(survived.num_episodes)]
    for e in range(survived.num_episodes):
        assert survived.episode(e, keys=["frame_index"])["frame_index"].tolist() == list(range(L))

    # workers notice their parent is gone and exit by themselves
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        orphans = subprocess.run(
            ["pgrep", "-s", str(process.pid)], capture_output=True, text=True
        ).stdout.split()
        if not orphans:
            break
        time.sleep(0.2)
    assert orphans == []

    resumed = subprocess.run([*args, "resume=true"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    final = EpisodeStore.open(out)
    assert final.num_episodes == 14
    # the resumed store equals an uninterrupted collection of the same seed
    reference = collect(
        CollectConfig(task="reacher", policy="mixed", episodes=14, workers=2, out=str(tmp_path / "ref.zarr"))
    )
    for key in ("action", "next.reward", image_key("top")):
        np.testing.assert_array_equal(
            final.read(key, 0, final.num_frames), reference.read(key, 0, reference.num_frames)
        )


def test_resume_refuses_an_incompatible_store_and_changes_nothing(store_copy_factory):
    path = store_copy_factory()
    before = tree_digest(path)
    for override in (dict(task="pusher"), dict(image_size=48), dict(policy="random"), dict(seed=1)):
        cfg = CollectConfig(
            **{
                "task": "reacher",
                "policy": "mixed",
                "seed": 7,
                "episodes": 6,
                "workers": 1,
                "out": str(path),
                "resume": True,
                **override,
            }
        )
        with pytest.raises(WmSimError, match="cannot resume"):
            collect(cfg)
    with pytest.raises(WmSimError, match="already exists"):
        collect(CollectConfig(task="reacher", policy="mixed", seed=7, episodes=6, workers=1, out=str(path)))
    assert tree_digest(path) == before


def test_resume_on_a_full_store_does_nothing(store_copy_factory):
    path = store_copy_factory()
    before = tree_digest(path)
    store = collect(
        CollectConfig(
            task="reacher", policy="mixed", seed=7, episodes=4, workers=1, out=str(path), resume=True
        )
    )
    assert store.num_episodes == 4
    assert tree_digest(path) == before


def test_collect_releases_the_store_so_it_can_be_continued_in_the_same_process(tmp_path):
    out = str(tmp_path / "twice.zarr")
    first = collect(CollectConfig(task="reacher", policy="random", episodes=1, workers=1, out=out))
    assert not first.writable
    second = collect(
        CollectConfig(task="reacher", policy="random", episodes=2, workers=1, out=out, resume=True)
    )
    assert second.num_episodes == 2
    np.testing.assert_array_equal(first.episode(0)["action"], second.episode(0)["action"])


def test_cli_refuses_a_corrupt_store_in_one_line(store_copy_factory):
    path = store_copy_factory()
    (path / "zarr.json").write_text("garbage")
    result = subprocess.run(
        [sys.executable, "-m", "wm_sim", "collect", f"out={path}", "resume=true", "episodes=5", "seed=7"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "corrupt" in result.stderr
    assert (path / "zarr.json").read_text() == "garbage"


@pytest.fixture
def store_copy_factory(reacher_store_path, tmp_path):
    import shutil

    def make() -> Path:
        path = tmp_path / f"copy{len(list(tmp_path.iterdir()))}.zarr"
        shutil.copytree(reacher_store_path, path)
        return path

    return make
