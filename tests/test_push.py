"""The push task: legible puck and goal, contact physics that starts and stops, exact replay,
a reward that follows the puck, and an expert that gets it there."""

from __future__ import annotations

import warnings

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from colours import count_colour
from gymnasium.utils.env_checker import check_env
from wm_sim.envs import make_task
from wm_sim.envs.push import (
    MIN_SEPARATION,
    PUCK_REACH,
    SUCCESS_DISTANCE,
    TOP_VIEW_FOVY,
    observed_reward,
    puck_in_frames,
)
from wm_sim.policies.scripted import PushFrameExpert

from wm_sim.errors import WmSimError

ENV_ID = "wm_sim/Push-MuJoCo-v0"


def green(frame: np.ndarray) -> int:
    """Pixels of the puck's saturated green."""
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    return int(((g > 150) & (g - r > 80) & (g - b > 80)).sum())


def _puck_dof(task) -> int:
    return int(task.model.jnt_dofadr[mujoco.mj_name2id(task.model, mujoco.mjtObj.mjOBJ_JOINT, "puck")])


def _place_puck(task, xy) -> None:
    """Put the puck at rest at `xy` on the table."""
    task.data.qpos[task._puck_qpos : task._puck_qpos + 2] = xy
    dof = _puck_dof(task)
    task.data.qvel[dof : dof + 6] = 0.0
    mujoco.mj_forward(task.model, task.data)


@pytest.fixture
def task():
    task = make_task("push")
    yield task
    task.close()


def test_push_twin_passes_check_env_without_warnings():
    env = gym.make(ENV_ID, render_mode="rgb_array", cameras=["top", "side"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []
    assert env.observation_space["agent_pos"].shape == (4,)  # arm only: the puck is seen, not told
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    assert env.spec.max_episode_steps == 200
    env.close()


def test_restoring_physics_state_replays_a_push_exactly():
    env = gym.make(ENV_ID)
    env.reset(seed=7)
    task = env.unwrapped.task
    for _ in range(40):  # the expert reaches the puck: the replay below includes contact
        env.step(task.expert_action())
    state = env.unwrapped.get_physics_state()
    puck_before = task.puck()
    actions = [task.expert_action()]
    first = [env.step(actions[0])]
    for _ in range(29):
        actions.append(task.expert_action())
        first.append(env.step(actions[-1]))
    assert np.linalg.norm(task.puck() - puck_before) > 0.005  # the puck moved
    env.reset(seed=99)
    env.unwrapped.set_physics_state(state)
    second = [env.step(a) for a in actions]
    for (obs_a, reward_a, *_), (obs_b, reward_b, *_) in zip(first, second, strict=True):
        np.testing.assert_array_equal(obs_a["pixels"], obs_b["pixels"])
        np.testing.assert_array_equal(obs_a["agent_pos"], obs_b["agent_pos"])
        assert reward_a == reward_b
    env.close()


def test_top_frame_shows_the_puck_and_the_goal_at_64px(task):
    for seed in range(8):
        frame = task.reset(seed)["pixels"]
        assert frame.shape == (64, 64, 3)
        assert green(frame) >= 20, seed  # the puck
        assert count_colour(frame, "red") >= 15, seed  # the goal disc
        assert count_colour(frame, "orange") >= 15 and count_colour(frame, "blue") >= 15, seed  # the links


def test_start_states_are_fair_and_follow_the_seed(task):
    for seed in range(40):
        task.reset(seed)
        puck, goal = task.puck(), task.goal()
        assert PUCK_REACH[0] <= np.linalg.norm(puck) <= PUCK_REACH[1]
        assert np.linalg.norm(goal - puck) >= MIN_SEPARATION
        assert not task.reward_and_success(np.zeros(2))[1]
    task.reset(3)
    state = task.get_physics_state()
    task.reset(4)
    task.reset(3)
    np.testing.assert_array_equal(task.get_physics_state(), state)


def test_puck_stays_put_without_contact(task):
    task.reset(0)
    start = task.puck()
    for _ in range(50):
        task.step(np.zeros(2))
    assert np.abs(task.puck() - start).max() < 1e-5


def test_pushed_puck_moves_then_stops_when_the_push_stops(task):
    task.reset(1)
    start = task.puck()
    steps = 0
    while np.linalg.norm(task.puck() - start) < 0.03:
        task.step(task.expert_action())
        steps += 1
        assert steps < 150, "the expert never moved the puck 3 cm"
    for _ in range(25):  # the arm coasts to rest under its joints' damping
        task.step(np.zeros(2))
    rest = task.puck()
    for _ in range(50):
        task.step(np.zeros(2))
    assert np.linalg.norm(task.puck() - rest) < 1e-4


def test_a_sliding_puck_stops_within_a_few_centimetres(task):
    """Friction of about 0.3: a puck let go at 0.3 m/s slides v^2 / (2 mu g) ~ 1.5 cm."""
    task.reset(2)
    _place_puck(task, task.puck())
    away = task.goal() - task.puck()
    dof = _puck_dof(task)
    task.data.qvel[dof : dof + 2] = -0.3 * away / np.linalg.norm(away)  # away from the goal: free table
    start = task.puck()
    for _ in range(25):  # 0.5 s
        task.step(np.zeros(2))
    slid = np.linalg.norm(task.puck() - start)
    assert 0.005 < slid < 0.03
    assert np.linalg.norm(task.data.qvel[dof : dof + 2]) < 1e-3


def test_reward_rises_as_the_puck_nears_the_goal_and_success_is_within_tolerance(task):
    task.reset(5)
    start, goal = task.puck(), task.goal()
    rewards, successes = [], []
    for fraction in np.linspace(0.0, 1.0, 6):
        _place_puck(task, start + fraction * (goal - start))
        reward, success, terminated = task.reward_and_success(np.zeros(2))
        rewards.append(reward)
        successes.append(success)
        assert not terminated
    assert np.all(np.diff(rewards) > 0)
    assert successes[-1] and not any(successes[:-1])
    _place_puck(task, goal + np.array([SUCCESS_DISTANCE * 1.05, 0.0]))
    assert not task.reward_and_success(np.zeros(2))[1]
    # the control cost: the same state, a larger action, a lower reward
    assert task.reward_and_success(task.to_ctrl(np.ones(2)))[0] < task.reward_and_success(np.zeros(2))[0]


def test_expert_gets_the_puck_onto_the_goal_in_nine_episodes_of_ten():
    task = make_task("push")
    task.observe = lambda: None  # the expert reads the physics: skip the frames, 10x faster
    successes = []
    for seed in range(20):
        task.reset(seed)
        for _ in range(task.episode_steps):
            result = task.step(task.expert_action())
        successes.append(result.success)
    task.close()
    assert np.mean(successes) >= 0.9


def test_the_puck_read_off_the_top_frame_is_where_the_physics_has_it(task):
    assert float(task.model.vis.global_.fovy) == TOP_VIEW_FOVY  # what table_point assumes
    for seed in range(6):
        obs = task.reset(seed)
        read = puck_in_frames(obs["pixels"][None])[0]
        assert np.linalg.norm(read - task.puck()) < 0.005, (seed, read, task.puck())  # < 0.6 pixel
    _place_puck(task, (0.5, 0.5))  # outside the arena's view: not shown, so not read
    assert np.isnan(puck_in_frames(task.render()[None])).all()


def test_the_frame_reading_expert_pushes_the_puck_home_in_physics():
    """The expert twin that can drive a world model (it reads the puck off the frames, not the
    physics) gets the puck onto the goal in MuJoCo too."""
    task = make_task("push")
    successes = []
    for seed in range(5):
        obs = task.reset(1000 + seed)
        policy = PushFrameExpert(task.goal()[None])
        for _ in range(task.episode_steps):
            batch = {key: value[None] for key, value in obs.items()}
            result = task.step(policy.act(batch)[0])
            obs = result.obs
        successes.append(result.success)
    task.close()
    assert np.mean(successes) >= 0.8


def test_the_reward_read_off_observations_is_the_physics_reward():
    """What a planner scores imagined frames by: the puck read off the frame, the finger from
    agent_pos, the goal from the start. On real frames it is the physics reward to a few
    millimetres of puck; where the arm hides the puck, the last place seen stands in."""
    task = make_task("push")
    rng = np.random.default_rng(0)
    task.reset(5)
    last, errors = task.puck()[None], []
    for _ in range(60):
        action = rng.uniform(-1, 1, 2)
        result = task.step(action)
        read, last = observed_reward(
            result.obs["pixels"][None], result.obs["agent_pos"][None], task.goal()[None], action[None], last
        )
        errors.append(abs(read[0] - result.reward))
    assert max(errors) < 0.01, max(errors)
    hidden = np.zeros_like(result.obs["pixels"])[None]  # a frame that shows no puck
    far = np.array([[0.5, 0.5]])
    read, used = observed_reward(hidden, result.obs["agent_pos"][None], task.goal()[None], action[None], far)
    np.testing.assert_array_equal(used, far)
    assert read[0] < result.reward - 0.2  # scored as the puck 0.5 m out would be
    task.close()


def test_a_heavier_puck_slides_less_from_the_same_kick():
    """puck_mass is physics, not a label: the same impulse moves a puck five times as heavy about a
    fifth as fast, so it stops sooner."""
    slid = []
    for mass in (0.1, 0.5):
        env = gym.make(ENV_ID, puck_mass=mass)
        env.reset(seed=0)
        task = env.unwrapped.task
        assert task.model.body_mass[task.model.body("puck").id] == pytest.approx(mass)
        start = task.puck()
        dof = _puck_dof(task)
        task.data.qvel[dof] = 0.03 / mass  # an impulse of 3 g m/s along x
        mujoco.mj_forward(task.model, task.data)
        for _ in range(50):
            task.step(np.zeros(2))
        slid.append(float(np.linalg.norm(task.puck() - start)))
        env.close()
    assert slid[1] < 0.5 * slid[0]


def test_a_larger_goal_counts_a_puck_further_out_as_success():
    task = make_task("push", goal_radius=0.04)
    try:
        task.reset(2)
        _place_puck(task, task.goal() + np.array([0.035, 0.0]))
        _, success, _ = task.reward_and_success(np.zeros(2))
        assert success
    finally:
        task.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: make_task("push", puck_mass=5.0),
            r"puck_mass must be a number in \[0.01, 0.5\] kg, got 5.0",
        ),
        (
            lambda: gym.make(ENV_ID, goal_radius=0.0),
            r"goal_radius must be a number in \[0.005, 0.05\] m, got 0.0",
        ),
        (
            lambda: make_task("reacher", puck_mass=0.2),
            "task 'reacher' has no option 'puck_mass'; its options: none",
        ),
        (
            lambda: make_task("push", puck_size=0.2),
            "has no option 'puck_size'; its options: puck_mass, goal_radius",
        ),
    ],
)
def test_a_push_option_out_of_range_or_unknown_is_one_clear_error(make, message):
    with pytest.raises(WmSimError, match=message):
        make()
