"""Several cameras on the physics side: the top view unchanged, a legible side view, the chosen
cameras in observations, Gymnasium spaces and collected stores, and clear refusals."""

from __future__ import annotations

import shutil
import warnings

import gymnasium as gym
import numpy as np
import pytest
from colours import count_colour
from gymnasium.utils.env_checker import check_env
from wm_sim.envs import make_task

from wm_sim.cli import main
from wm_sim.collect import CollectConfig, collect
from wm_sim.config import load_config
from wm_sim.data.schema import STATE_KEY, image_key
from wm_sim.errors import WmSimError
from wm_sim.registration import PHYSICS_TWIN_IDS

TASKS = list(PHYSICS_TWIN_IDS)  # the catalog's own tasks: reacher, pusher
BAD_CAMERAS = [["front"], ["top", "top"], [""], "top", []]


def _rollout(task, steps: int = 6) -> list[dict]:
    """Observations of a fixed random rollout from seed 2."""
    rng = np.random.default_rng(0)
    observations = [task.reset(2)]
    for _ in range(steps):
        observations.append(task.step(rng.uniform(-1, 1, task.action_dim)).obs)
    return observations


@pytest.mark.parametrize("task_name", TASKS)
def test_top_frames_are_the_same_whichever_cameras_are_observed(task_name):
    alone, both = make_task(task_name), make_task(task_name, cameras=["top", "side"])
    assert alone.cameras == ("top",) and both.cameras == ("top", "side")
    for one, two in zip(_rollout(alone), _rollout(both), strict=True):
        assert isinstance(one["pixels"], np.ndarray)
        np.testing.assert_array_equal(one["pixels"], two["pixels"]["top"])
        np.testing.assert_array_equal(one["agent_pos"], two["agent_pos"])
    np.testing.assert_array_equal(alone.render(), both.render("top"))
    alone.close()
    both.close()


@pytest.mark.parametrize("task_name", TASKS)
def test_side_view_differs_from_top_and_follows_the_arm(task_name):
    task = make_task(task_name, cameras=["side", "top"])
    observations = _rollout(task, steps=10)
    first, last = observations[0]["pixels"], observations[-1]["pixels"]
    assert list(first) == ["side", "top"]  # the order asked
    assert first["side"].shape == (64, 64, 3) and first["side"].dtype == np.uint8
    assert (np.abs(first["side"].astype(int) - first["top"]).max(axis=-1) > 40).mean() > 0.1
    # the arm moved: the side view shows it move
    assert (np.abs(first["side"].astype(int) - last["side"]).max(axis=-1) > 40).sum() >= 20
    # arm and target (reacher: orange and blue links, red target; pusher: blue arm, red goal)
    assert count_colour(first["side"], "blue") >= 25
    assert count_colour(first["side"], "red") >= 6
    if task_name == "reacher":
        assert count_colour(first["side"], "orange") >= 25
    task.close()


def test_a_task_renders_any_of_its_cameras_and_closes_them_all():
    task = make_task("reacher")  # observes top only, yet renders side on request
    task.reset(0)
    side = task.render("side")
    assert side.shape == (64, 64, 3) and not np.array_equal(side, task.render())
    assert set(task._renderers) == {"top", "side"}
    task.close()
    assert task._renderers == {}


@pytest.mark.parametrize("cameras", BAD_CAMERAS)
def test_bad_camera_choices_raise_one_clear_error(cameras):
    with pytest.raises(WmSimError, match="camera"):
        make_task("reacher", cameras=cameras)


def test_unknown_camera_error_names_the_camera_and_the_tasks_cameras():
    with pytest.raises(WmSimError, match=r"no camera 'front'; its cameras are \['top', 'side'\]"):
        make_task("pusher", cameras=["top", "front"])
    with pytest.raises(WmSimError, match=r"no camera 'top'; its cameras are \['default'\]"):
        make_task("gym:Hopper-v5", cameras=["top"])
    task = make_task("reacher")
    with pytest.raises(WmSimError, match="no camera 'front'"):
        task.render("front")
    task.close()


@pytest.mark.parametrize("cameras", [["top"], ["top", "side"]])
@pytest.mark.parametrize("env_id", list(PHYSICS_TWIN_IDS.values()))
def test_twin_with_chosen_cameras_passes_check_env_without_warnings(env_id, cameras):
    env = gym.make(env_id, render_mode="rgb_array", cameras=cameras)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []
    assert env.unwrapped.cameras == tuple(cameras)
    frame = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    pixels = env.observation_space["pixels"]
    if len(cameras) == 1:
        assert pixels == frame
    else:
        assert isinstance(pixels, gym.spaces.Dict) and list(pixels) == cameras
        assert all(pixels[name] == frame for name in cameras)
    obs, _ = env.reset(seed=0)
    first = obs["pixels"] if len(cameras) == 1 else obs["pixels"][cameras[0]]
    np.testing.assert_array_equal(env.render(), first)
    env.close()


def test_twin_default_is_the_first_camera_alone():
    env = gym.make("wm_sim/Reacher-MuJoCo-v0")
    assert env.unwrapped.cameras == ("top",)
    assert env.observation_space["pixels"] == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    env.close()


def test_two_camera_twin_replays_exactly_from_a_physics_state():
    env = gym.make("wm_sim/Reacher-MuJoCo-v0", cameras=["top", "side"])
    env.reset(seed=4)
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1, 1, (8, 2)).astype(np.float32)
    state = env.unwrapped.get_physics_state()
    first = [env.step(a)[0] for a in actions]
    env.reset(seed=99)
    env.unwrapped.set_physics_state(state)
    second = [env.step(a)[0] for a in actions]
    for a, b in zip(first, second, strict=True):
        for name in ("top", "side"):
            np.testing.assert_array_equal(a["pixels"][name], b["pixels"][name])
        np.testing.assert_array_equal(a["agent_pos"], b["agent_pos"])
    env.close()


@pytest.mark.parametrize("cameras", BAD_CAMERAS)
def test_twin_refuses_bad_cameras(cameras):
    with pytest.raises(WmSimError, match="camera"):
        gym.make("wm_sim/Pusher-MuJoCo-v0", cameras=cameras)


@pytest.mark.slow
def test_two_camera_collect_writes_every_camera_with_the_top_frames_unchanged(tmp_path):
    both = collect(
        CollectConfig(
            task="reacher", policy="random", episodes=1, workers=1, cameras=["top", "side"],
            out=str(tmp_path / "both.zarr"),
        )
    )  # fmt: skip
    alone = collect(
        CollectConfig(task="reacher", policy="random", episodes=1, workers=1, out=str(tmp_path / "top.zarr"))
    )
    assert both.info.cameras == ["top", "side"] and alone.info.cameras == ["top"]
    episode = both.episode(0)
    rows = len(episode[STATE_KEY])
    assert episode[image_key("top")].shape == episode[image_key("side")].shape == (rows, 64, 64, 3)
    np.testing.assert_array_equal(episode[image_key("top")], alone.episode(0)[image_key("top")])
    np.testing.assert_array_equal(episode[STATE_KEY], alone.episode(0)[STATE_KEY])
    assert not np.array_equal(episode[image_key("side")], episode[image_key("top")])
    assert image_key("side") not in alone.episode(0)


@pytest.mark.slow
def test_resume_refuses_other_cameras_and_continues_the_same(tmp_path):
    out = tmp_path / "both.zarr"
    base = dict(task="reacher", policy="random", workers=1, out=str(out))
    collect(CollectConfig(**base, episodes=1, cameras=["top", "side"]))
    for cameras in ([], ["top"], ["side", "top"]):
        refusal = r"cannot resume .*cameras \['top', 'side'\].*cameras=\[top,side\]"
        with pytest.raises(WmSimError, match=refusal):
            collect(CollectConfig(**base, episodes=2, cameras=cameras, resume=True))
    assert collect(CollectConfig(**base, episodes=1, cameras=["top", "side"], resume=True)).num_episodes == 1


def test_resume_of_a_one_camera_store_refuses_a_second_camera(reacher_store_path, tmp_path):
    path = tmp_path / "copy.zarr"
    shutil.copytree(reacher_store_path, path)
    cfg = CollectConfig(
        task="reacher", policy="mixed", seed=7, episodes=5, workers=1, out=str(path), resume=True,
        cameras=["top", "side"],
    )  # fmt: skip
    with pytest.raises(WmSimError, match=r"holds cameras \['top'\], this run records \['top', 'side'\]"):
        collect(cfg)


@pytest.mark.parametrize("cameras", [["front"], ["top", "top"], [""]])
def test_collect_refuses_bad_cameras_before_making_a_store(tmp_path, cameras):
    out = tmp_path / "never.zarr"
    with pytest.raises(WmSimError, match="camera"):
        collect(CollectConfig(task="reacher", episodes=1, workers=1, cameras=cameras, out=str(out)))
    assert not out.exists()


def test_cameras_option_parses_from_the_command_line():
    cfg = load_config("collect", CollectConfig, ["task=pusher", "cameras=[top,side]"])
    assert cfg.cameras == ["top", "side"]
    assert load_config("collect", CollectConfig, []).cameras == []


def test_cli_refuses_an_unknown_camera_in_one_line(tmp_path, capsys):
    out = tmp_path / "never.zarr"
    assert main(["collect", "task=reacher", "cameras=[top,front]", "workers=1", f"out={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no camera 'front'" in err[0] and "['top', 'side']" in err[0], err
    assert not out.exists()


@pytest.mark.slow
def test_worker_processes_record_every_camera_as_this_process_does(tmp_path):
    stores = []
    for workers in (1, 2):
        cfg = CollectConfig(
            task="pusher", policy="mixed", episodes=2, workers=workers, seed=5, cameras=["side", "top"],
            out=str(tmp_path / f"w{workers}.zarr"),
        )  # fmt: skip
        stores.append(collect(cfg))
    one, two = stores
    assert one.info.cameras == two.info.cameras == ["side", "top"]
    for key in (image_key("side"), image_key("top"), STATE_KEY, "physics_state"):
        np.testing.assert_array_equal(one.read(key, 0, one.num_frames), two.read(key, 0, two.num_frames))
