"""The up-front fits of the small parts (wm_sim.head_fitting): the state transition, the frame
reward and the scene reward, fitted before training (on `init=` or from scratch) and then frozen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import fine_tuned, random_inputs, run_config, tiny_architecture

from wm_sim.checkpoint import load_checkpoint
from wm_sim.data.angles import episode_states, wrapped_entries
from wm_sim.data.schema import ACTION_KEY, REWARD_KEY, STATE_KEY, image_key
from wm_sim.errors import WmSimError
from wm_sim.train import ModelArchitecture, train
from wm_sim.world_model import WorldModel

TINY = tiny_architecture()


@pytest.mark.slow
def test_init_adds_a_transition_fitted_up_front_then_frozen(reacher_store_path, tmp_path):
    from wm_sim.data.store import EpisodeStore

    base = train(run_config(reacher_store_path, tmp_path / "base", steps=2))
    with_transition = ModelArchitecture(**{**TINY.__dict__, "transition": True})
    run = train(
        run_config(
            reacher_store_path, tmp_path / "tr", model=with_transition, init=str(base), transition_steps=300
        )
    )
    first, _ = load_checkpoint(run / "step-0000002")
    last, _ = load_checkpoint(run)
    before, _ = load_checkpoint(base)
    store = EpisodeStore.open(reacher_store_path)
    assert last.config.transition and last.config.periodic_state == wrapped_entries(episode_states(store))
    assert before.step_out.out_features == before.config.state_dim + 2 and last.step_out.out_features == 2
    for name, value in first.transition.state_dict().items():  # frozen while the world model trains
        assert torch.equal(last.transition.state_dict()[name], value), name
    # fitted: one step ahead it beats "the state does not change" on every transition of the data
    state = torch.from_numpy(np.concatenate(list(episode_states(store))))
    action = torch.from_numpy(store.read("action", 0, store.num_frames))
    now = _transition_rows(store)
    with torch.no_grad():
        predicted = last.transition(state[now], action[now])
    error = last.transition.wrap(predicted - state[now + 1]).pow(2).mean(0)
    still = last.transition.wrap(state[now] - state[now + 1]).pow(2).mean(0)
    assert (error < 0.5 * still).all(), (error, still)


def _transition_rows(store) -> torch.Tensor:
    """Every row of `store` that has a next row in its episode."""
    rows = [np.arange(*store.episode_bounds(e))[:-1] for e in range(store.num_episodes)]
    return torch.from_numpy(np.concatenate(rows))


@pytest.mark.slow
def test_init_adds_a_frame_reward_fitted_on_real_frames(reacher_store_path, tmp_path):
    from wm_sim.data.store import EpisodeStore

    with_reward = ModelArchitecture(**{**TINY.__dict__, "frame_reward": True})
    before, after = fine_tuned(reacher_store_path, tmp_path, with_reward, reward_fit_steps=300)
    d = before.config.state_dim
    assert before.step_out.out_features == d + 2 and after.step_out.out_features == d + 1
    latents, state, action = random_inputs(d)
    with torch.no_grad():
        old, new = before(latents, state, action), after(latents, state, action)
    # the pooled head kept its state and continue rows; only the reward moved to the new head
    torch.testing.assert_close(new.state, old.state)
    torch.testing.assert_close(new.continue_logit, old.continue_logit)
    # fitted up front on every real frame: it reads the reward off a frame far better than the mean
    store = EpisodeStore.open(reacher_store_path)
    rows = _transition_rows(store)
    pixels = torch.from_numpy(store.read(image_key(store.info.cameras[0]), 0, store.num_frames))
    reward = torch.from_numpy(store.read(REWARD_KEY, 0, store.num_frames))[rows]
    action = torch.from_numpy(store.read(ACTION_KEY, 0, store.num_frames))[rows]
    with torch.no_grad():
        read = after.reward_head(after.encode(pixels[rows + 1]), action)
    error = (read - reward).pow(2).mean()
    assert (float(after.reward_head.low), float(after.reward_head.high)) == (
        float(reward.min()),
        float(reward.max()),
    )
    assert error < 0.25 * reward.var(), (error, reward.var())


@pytest.mark.slow
def test_refit_transition_fits_inits_transition_again_and_needs_one(reacher_store_path, tmp_path):
    from wm_sim.data.store import EpisodeStore

    with_transition = ModelArchitecture(**{**TINY.__dict__, "transition": True})
    before, after = fine_tuned(
        reacher_store_path, tmp_path, with_transition, base_model=with_transition,
        base_options={"transition_steps": 20}, transition_steps=300, refit_transition=True,
    )  # fmt: skip
    store = EpisodeStore.open(reacher_store_path)
    state = torch.from_numpy(np.concatenate(list(episode_states(store))))
    action = torch.from_numpy(store.read(ACTION_KEY, 0, store.num_frames))
    now = _transition_rows(store)

    def one_step_error(model: WorldModel) -> float:
        with torch.no_grad():
            predicted = model.transition(state[now], action[now])
        return float(model.transition.wrap(predicted - state[now + 1]).pow(2).mean())

    assert one_step_error(after) < 0.5 * one_step_error(before)
    torch.testing.assert_close(after.latent_out.weight, before.latent_out.weight)  # nothing else moved
    with pytest.raises(WmSimError, match="refit_transition"):
        train(run_config(reacher_store_path, tmp_path / "bad", refit_transition=True))


def _open_loop_state_error(model: WorldModel, state: torch.Tensor, action: torch.Tensor, steps: int) -> float:
    """Mean squared error (in typical one-step changes) of the transition rolled out `steps` steps on
    its own predictions from every real state of (E, T, D) episodes that has `steps` more frames."""
    transition = model.transition
    with torch.no_grad():
        predicted, error = state[:, :-steps], 0.0
        for k in range(steps):
            predicted = transition(predicted, action[:, k : k + predicted.shape[1]])
            target = state[:, k + 1 : k + 1 + predicted.shape[1]]
            error += float((transition.wrap(predicted - target) / transition.step_scale).pow(2).mean())
    return error / steps


@pytest.mark.slow
def test_a_transition_fitted_on_its_own_rollouts_drifts_less_than_a_one_step_fit(
    reacher_store_path, tmp_path
):
    from wm_sim.data.store import EpisodeStore
    from wm_sim.head_fitting import fit_transition
    from wm_sim.train import model_config

    store = EpisodeStore.open(reacher_store_path)
    shape = model_config(ModelArchitecture(**{**TINY.__dict__, "transition": True}), store)
    episodes = list(range(store.num_episodes))
    fitted = {}
    for horizon in (1, 16):
        torch.manual_seed(0)  # the same initial weights
        fitted[horizon] = WorldModel(shape)
        fit_transition(
            fitted[horizon], store, episodes, 300, seed=0, horizon=horizon, lr=3e-4, batch_size=256
        )
    state = torch.from_numpy(np.stack(list(episode_states(store)))).float()  # (E, T, D): equal lengths
    action = torch.stack(
        [torch.from_numpy(store.read(ACTION_KEY, *store.episode_bounds(e))) for e in episodes]
    ).float()
    drift = {h: _open_loop_state_error(m, state, action, steps=32) for h, m in fitted.items()}
    assert drift[16] < 0.7 * drift[1], drift
    with pytest.raises(WmSimError, match="no episode has more than 500"):
        fit_transition(fitted[1], store, episodes, steps=1, seed=0, horizon=500)
    with pytest.raises(WmSimError, match="transition_horizon"):
        train(run_config(reacher_store_path, tmp_path / "bad", transition_horizon=0))


@pytest.mark.slow
def test_init_adds_a_scene_reward_that_reads_the_reward_of_a_state_in_another_frames_scene(
    reacher_store_path, tmp_path
):
    from wm_sim.data.store import EpisodeStore

    with_scene = ModelArchitecture(**{**TINY.__dict__, "transition": True, "scene_reward": True})
    with_transition = ModelArchitecture(**{**TINY.__dict__, "transition": True})
    before, after = fine_tuned(
        reacher_store_path,
        tmp_path,
        with_scene,
        base_model=with_transition,
        base_options={"transition_steps": 50},
        scene_reward_steps=1500,
        scene_goal_steps=150,
    )
    assert before.scene_reward is None and after.scene_reward is not None
    # everything else is the base model's, bit for bit: the head is fitted alone, up front
    kept = {k: v for k, v in after.state_dict().items() if not k.startswith("scene_reward.")}
    for key, value in before.state_dict().items():
        torch.testing.assert_close(kept[key], value, rtol=0, atol=0)
    store = EpisodeStore.open(reacher_store_path)
    rows = _transition_rows(store)
    pixels = torch.from_numpy(store.read(image_key(store.info.cameras[0]), 0, store.num_frames))
    state = torch.from_numpy(store.read(STATE_KEY, 0, store.num_frames)).float()
    reward = torch.from_numpy(store.read(REWARD_KEY, 0, store.num_frames))[rows]
    action = torch.from_numpy(store.read(ACTION_KEY, 0, store.num_frames))[rows]
    # the scene is the first frame of each row's episode, not the frame the state belongs to
    ends = store.episode_ends
    episode = torch.from_numpy(np.searchsorted(ends, rows.numpy(), side="right"))
    firsts = torch.from_numpy(np.concatenate([[0], ends[:-1]]))
    head = after.scene_reward
    with torch.no_grad():
        goals = head.goal(pixels)
        read = head(goals[firsts[episode]], state[rows + 1], action)
    assert (float(head.low), float(head.high)) == (float(reward.min()), float(reward.max()))
    error = (read - reward).pow(2).mean()
    assert error < 0.1 * reward.var(), (error, reward.var())
    # one goal per scene: the frames of an episode agree on it far better than episodes do
    within = torch.stack([goals[a:b].std(0).norm() for a, b in zip(firsts, ends, strict=True)]).mean()
    between = torch.stack([goals[a:b].mean(0) for a, b in zip(firsts, ends, strict=True)]).std(0).norm()
    assert within < 0.5 * between, (within, between)
