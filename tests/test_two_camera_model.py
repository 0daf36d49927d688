"""A world model of several cameras: tokens per camera, one dynamics step over all of them."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny import tiny_architecture

from wm_sim.world_model import WorldModel, WorldModelConfig

TWO = WorldModelConfig(
    image_size=32, grid=4, latent_dim=8, tokenizer_width=32, dim=32, depth=2, n_heads=2, window=4,
    cameras=2, anchored=True, residual=True, scene_reward=True, transition=False, frame_reward=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def model() -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(TWO).eval()


def _frames(batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, steps, *TWO.frame_shape), generator=g, dtype=torch.uint8)


def test_each_camera_is_encoded_to_its_own_tokens_and_decoded_from_them(model):
    frames = _frames(2, 3)
    latents = model.encode(frames)
    assert TWO.frame_shape == (2, 32, 32, 3)
    assert latents.shape == (2, 3, 2 * 16, 8)  # grid x grid tokens for each camera, in turn
    # camera 1's pixels change camera 1's tokens only
    other = frames.clone()
    other[:, :, 1] = 255 - other[:, :, 1]
    changed = model.encode(other)
    assert torch.equal(changed[..., :16, :], latents[..., :16, :])
    assert not torch.allclose(changed[..., 16:, :], latents[..., 16:, :])
    # each camera's tokens encode as that camera's frame alone would
    assert torch.equal(model.encoder.from_scaled(
        frames[:, 0, 1].permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    ), latents[:, 0, 16:])  # fmt: skip
    anchor = model.anchor(frames[:, -1])
    assert anchor.pixels.shape == (2, 2, 3, 32, 32)
    state = torch.randn(2, 3, TWO.state_dim)  # each frame's agent_pos, read for both of its cameras
    decoded = model.decode(latents, anchor, state)
    assert decoded.shape == (2, 3, 2, 32, 32, 3)
    # camera 0's picture does not depend on camera 1's tokens or anchor
    swapped = latents.clone()
    swapped[..., 16:, :] = latents.flip(0)[..., 16:, :]
    anchor.pixels[:, 1] = 0.0
    again = model.decode(swapped, anchor, state)
    assert torch.allclose(again[:, :, 0], decoded[:, :, 0])
    assert not torch.allclose(again[:, :, 1], decoded[:, :, 1])


def test_one_dynamics_step_attends_over_every_camera_and_streams_as_the_forward_pass(model):
    frames = _frames(2, 4, seed=1)
    latents = model.encode(frames)
    state, action = torch.randn(2, 4, TWO.state_dim), torch.rand(2, 4, TWO.action_dim) * 2 - 1
    with torch.no_grad():
        whole = model(latents, state, action)
        cache = model.new_stream(2)
        streamed = [model.stream_step(cache, latents[:, t], state[:, t], action[:, t]) for t in range(4)]
    assert whole.latents.shape == (2, 4, 32, 8)
    assert torch.allclose(torch.cat([p.latents for p in streamed], 1), whole.latents, atol=1e-5)
    # what camera 1 shows reaches camera 0's next tokens: the cameras share one step
    other = latents.clone()
    other[:, :, 16:] = -other[:, :, 16:]
    with torch.no_grad():
        moved = model(other, state, action)
    assert not torch.allclose(moved.latents[:, :, :16], whole.latents[:, :, :16])


def test_the_scene_reward_reads_its_goal_off_the_first_camera(model):
    frames = _frames(3, 1, seed=2)[:, 0]  # (B, 2, S, S, 3)
    goal = model.scene_reward.goal(frames)
    alone = WorldModel(dataclasses.replace(TWO, cameras=1))
    alone.scene_reward.load_state_dict(model.scene_reward.state_dict())
    assert torch.equal(goal, alone.scene_reward.goal(frames[:, 0]))


def test_a_config_of_no_camera_is_refused():
    with pytest.raises(ValueError, match="cameras must be at least 1"):
        dataclasses.replace(TWO, cameras=0)


# --- end to end: collect two cameras, train, step as an env, evaluate, package -----------------


@pytest.fixture(scope="module")
def two_camera_run(tmp_path_factory):
    """Four reacher episodes seen by the top and the side camera, and a tiny model trained on them."""
    from wm_sim.collect import CollectConfig, collect
    from wm_sim.tracking import WandbConfig
    from wm_sim.train import TrainConfig, TrainingRecipe, train

    root = tmp_path_factory.mktemp("two-cameras")
    data = root / "reacher.zarr"
    collect(CollectConfig(task="reacher", policy="mixed", episodes=4, workers=1, seed=7, out=str(data),
                          cameras=["top", "side"]))  # fmt: skip
    tiny = tiny_architecture(anchored=True, frame_reward=True)
    run = train(
        TrainConfig(
            data=str(data), model=tiny, out=str(root / "run"), steps=4, val_fraction=0.5, threads=1,
            training=TrainingRecipe(decoder_steps=0, transition_rollout_steps=0, batch_size=4, lr=3e-3, reward_fit_steps=20), wandb=WandbConfig(mode="disabled"),
        )
    )  # fmt: skip
    return data, run


@pytest.mark.slow
def test_a_two_camera_run_observes_pixels_per_camera_as_an_env(two_camera_run):
    import gymnasium as gym
    import numpy as np
    from gymnasium.utils.env_checker import check_env

    from wm_sim.data.store import EpisodeStore

    data, run = two_camera_run
    env = gym.make("wm_sim/WorldModel-v0", checkpoint=str(run))
    assert env.unwrapped.cameras == ("top", "side")
    assert set(env.observation_space["pixels"].spaces) == {"top", "side"}
    obs, _ = env.reset(seed=0)
    assert {k: v.shape for k, v in obs["pixels"].items()} == {"top": (64, 64, 3), "side": (64, 64, 3)}
    assert not np.array_equal(obs["pixels"]["top"], obs["pixels"]["side"])  # two views, not one twice
    obs, reward, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and np.isfinite(reward)
    check_env(env.unwrapped, skip_render_check=True)
    # reset from one's own images: a dict of frames per camera, each as the store holds them
    store = EpisodeStore.open(data)
    first, _ = store.episode_bounds(0)
    mine = {c: store.read(f"observation.images.{c}", first, first + 3) for c in ("top", "side")}
    obs, _ = env.reset(options={"frames": mine})
    assert np.array_equal(obs["pixels"]["side"], mine["side"][-1])
    with pytest.raises(ValueError, match="dict of images per camera"):
        env.reset(options={"frames": mine["top"]})
    with pytest.raises(ValueError, match="exactly the cameras"):
        env.reset(options={"frames": {"top": mine["top"]}})
    # the vector env: a dict of batched images, one forward pass for every camera of every row
    vec = gym.make_vec("wm_sim/WorldModel-v0", num_envs=3, checkpoint=str(run), episode_steps=2,
                       autoreset_mode="same_step")  # fmt: skip
    obs, _ = vec.reset(seed=1)
    assert {k: v.shape for k, v in obs["pixels"].items()} == {"top": (3, 64, 64, 3), "side": (3, 64, 64, 3)}
    for _ in range(2):  # every episode ends within two steps
        obs, _, terminated, truncated, info = vec.step(vec.action_space.sample())
        ended = np.flatnonzero(terminated | truncated)
        if len(ended):
            break
    final = info["final_obs"][ended[0]]
    assert {k: v.shape for k, v in final["pixels"].items()} == {"top": (64, 64, 3), "side": (64, 64, 3)}


@pytest.mark.slow
def test_a_two_camera_model_evaluates_and_packages_and_refuses_a_one_camera_dataset(two_camera_run, tmp_path):
    import json

    from wm_sim.collect import CollectConfig, collect
    from wm_sim.errors import WmSimError
    from wm_sim.evaluate import EvaluateConfig, evaluate
    from wm_sim.package import PackageConfig, package

    data, run = two_camera_run
    out = evaluate(EvaluateConfig(checkpoint=str(run), data=str(data), out=str(tmp_path / "eval"), context=2,
                                  episodes=1, video_episodes=1))  # fmt: skip
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"]["psnr"]["model"]["1"] is not None
    assert (out / "strip.png").is_file()
    packaged = package(PackageConfig(checkpoint=str(run), data=str(data), out=str(tmp_path / "model"),
                                     contexts=4, context_frames=3, evaluate=False))  # fmt: skip
    assert "cameras `top`, `side`" in (packaged / "MODEL_CARD.md").read_text()
    one = tmp_path / "one.zarr"
    collect(CollectConfig(task="reacher", policy="mixed", episodes=1, workers=1, seed=7, out=str(one)))
    with pytest.raises(WmSimError, match=r"has cameras \['top'\], but the model sees \['top', 'side'\]"):
        evaluate(EvaluateConfig(checkpoint=str(run), data=str(one), out=str(tmp_path / "eval-one")))
    from wm_sim.verify import Harness

    with pytest.raises(WmSimError, match=r"verify and rank run world models of one camera; .* \['top', 'side'\]"):
        Harness("reacher", str(run), batch=1)


@pytest.mark.slow
def test_an_env_observes_the_cameras_asked_of_those_its_model_was_trained_on(two_camera_run):
    import gymnasium as gym
    import numpy as np

    _, run = two_camera_run
    both = gym.make("wm_sim/WorldModel-v0", checkpoint=str(run))
    side = gym.make("wm_sim/WorldModel-v0", checkpoint=str(run), cameras=["side"], render_mode="rgb_array")
    assert side.observation_space["pixels"].shape == (64, 64, 3)  # one camera: one image, as the twin
    seen, _ = both.reset(seed=4)
    only, _ = side.reset(seed=4)
    assert np.array_equal(only["pixels"], seen["pixels"]["side"])
    assert np.array_equal(side.render(), seen["pixels"]["side"])
    swapped = gym.make("wm_sim/WorldModel-v0", checkpoint=str(run), cameras=["side", "top"])
    assert list(swapped.reset(seed=4)[0]["pixels"]) == ["side", "top"]
    for wrong in (["wrist"], [], ["top", "top"]):
        with pytest.raises(ValueError, match=r"cameras must name some of the cameras .* \['top', 'side'\]"):
            gym.make("wm_sim/WorldModel-v0", checkpoint=str(run), cameras=wrong)
