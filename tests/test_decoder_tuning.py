"""The anchored decoder and `wm-sim tune-decoder`: compositing, conversion, frozen parts, resume."""

from __future__ import annotations

import dataclasses
import json
import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from tiny import BARE_MODEL

from wm_sim.checkpoint import LAST, load_checkpoint
from wm_sim.data.store import EpisodeStore
from wm_sim.decoder_tuning import (
    DecoderTuningConfig,
    anchored,
    far_pixels,
    latent_sources,
    own_rollouts,
    shown_earlier,
    tune_decoder,
    tuning_batch,
)
from wm_sim.errors import WmSimError
from wm_sim.evaluate import EvaluateConfig, evaluate
from wm_sim.package import PackageConfig, package
from wm_sim.world_model import Anchor, WorldModel, WorldModelConfig

TINY = WorldModelConfig(
    image_size=32, grid=4, latent_dim=8, tokenizer_width=32, dim=32, depth=1, n_heads=2, window=3, **BARE_MODEL
)


def _frames(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8)


def _own_channel_bias(model: WorldModel) -> torch.Tensor:
    return model.decoder.net[-2].bias[12:]  # the draw-or-copy channel, before the pixel shuffle


def test_the_own_weight_chooses_between_the_decoded_colour_and_the_anchor():
    torch.manual_seed(0)
    plain = WorldModel(TINY).eval()
    model = anchored(plain).eval()
    latents, anchor = model.encode(_frames(2, 0)), model.anchor(_frames(2, 1))
    with torch.no_grad():
        _own_channel_bias(model).fill_(-50.0)  # copy every pixel
        copied = anchor.pixels.permute(0, 2, 3, 1)  # (B, S, S, 3), as decode's frames
        torch.testing.assert_close(model.decode(latents, anchor), copied, rtol=0, atol=1e-6)
        _own_channel_bias(model).fill_(50.0)  # draw every pixel: what the plain decoder drew
        torch.testing.assert_close(model.decode(latents, anchor), plain.decode(latents), rtol=0, atol=1e-6)


def test_conversion_starts_halfway_between_the_plain_decoder_and_the_anchor():
    torch.manual_seed(0)
    plain = WorldModel(TINY).eval()
    model = anchored(plain).eval()
    assert model.config.anchored and not plain.config.anchored
    latents, anchor = plain.encode(_frames(3, 2)), plain.anchor(_frames(3, 3))
    with torch.no_grad():
        expected = 0.5 * plain.decode(latents) + 0.5 * anchor.pixels.permute(0, 2, 3, 1)
        torch.testing.assert_close(model.decode(latents, anchor), expected, rtol=0, atol=1e-6)
    # everything but the decoder is the plain model's
    for name, value in plain.state_dict().items():
        if not name.startswith("decoder."):
            assert torch.equal(model.state_dict()[name], value), name


def test_anchor_detail_starts_from_the_anchored_decoder_and_reads_the_anchors_own_pixels():
    torch.manual_seed(0)
    tokens_only = anchored(WorldModel(TINY), detail=False).eval()
    detailed = anchored(tokens_only).eval()
    assert detailed.config.anchor_detail and not tokens_only.config.anchor_detail
    latents, anchor = tokens_only.encode(_frames(2, 4)), tokens_only.anchor(_frames(2, 5))
    # the same anchor tokens over other pixels: what only the pixels can tell apart
    other = Anchor(anchor.latents, tokens_only.anchor(_frames(2, 6)).pixels)
    with torch.no_grad():
        torch.testing.assert_close(detailed.decode(latents, anchor), tokens_only.decode(latents, anchor), rtol=0, atol=1e-6)
        for model in (tokens_only, detailed):
            _own_channel_bias(model).fill_(50.0)  # draw every pixel: no copying from the anchor
        assert torch.equal(tokens_only.decode(latents, anchor), tokens_only.decode(latents, other))
        assert torch.equal(detailed.decode(latents, anchor), detailed.decode(latents, other))  # inputs at zero
        detailed.decoder.detail.weight.normal_(0.0, 0.5)  # what tuning learns
        drawn, drawn_over_other = detailed.decode(latents, anchor), detailed.decode(latents, other)
    assert (drawn - drawn_over_other).abs().amax() > 0.01
    with pytest.raises(WmSimError, match="can add to what it reads, not change it"):
        anchored(detailed, detail=False)


def test_anchor_memory_starts_from_the_detail_decoder_and_reads_the_earlier_context_frames():
    torch.manual_seed(0)
    detailed = anchored(WorldModel(TINY)).eval()
    with torch.no_grad():
        detailed.decoder.detail.weight.normal_(0.0, 0.5)  # a tuned detail phase
    remembering = anchored(detailed, memory=(1, 3)).eval()
    assert remembering.config.anchor_memory == (1, 3) and detailed.config.anchor_memory == ()
    context = torch.stack([_frames(4, 10), _frames(4, 11)])  # (2, 4, S, S, 3): rows 0 and 1
    anchor = remembering.anchor(context[:, -1], context=context)
    # gap 1 is the frame before the anchor's, gap 3 the first; RGB of each in turn
    picked = torch.cat([context[:, 2], context[:, 0]], -1).movedim(-1, -3).float() / 255
    assert torch.equal(anchor.earlier, picked)
    short = remembering.anchor(context[:, 1], context=context[:, :2])  # gap 3 is before the context
    assert torch.equal(short.earlier, torch.cat([context[:, 0], context[:, 0]], -1).movedim(-1, -3).float() / 255)
    latents = detailed.encode(_frames(2, 12))
    with torch.no_grad():
        for model in (detailed, remembering):
            _own_channel_bias(model).fill_(50.0)  # draw every pixel
        assert torch.equal(remembering.decode(latents, anchor), detailed.decode(latents, anchor))  # new inputs at zero
        remembering.decoder.detail.weight[:, 12:].normal_(0.0, 0.5)  # what tuning learns
        other = Anchor(anchor.latents, anchor.pixels, earlier=anchor.earlier.flip(0))
        assert (remembering.decode(latents, anchor) - remembering.decode(latents, other)).abs().amax() > 0.01
        # no earlier frame seen: the anchor's pixels stand for each
        alone = remembering.anchor(context[:, -1])
        assert alone.earlier is None
        repeated = Anchor(alone.latents, alone.pixels, earlier=alone.pixels.repeat(1, 2, 1, 1))
        assert torch.equal(remembering.decode(latents, alone), remembering.decode(latents, repeated))
    with pytest.raises(WmSimError, match="not change it"):
        anchored(remembering, memory=(2,))


def test_a_decoder_reading_agent_pos_starts_as_it_drew_and_draws_the_state_it_is_told():
    torch.manual_seed(0)
    remembering = anchored(WorldModel(TINY), memory=(1,)).eval()
    told = anchored(remembering, memory=(1,), state=True).eval()
    assert told.config.decoder_state and told.state_tokens is not None
    latents, anchor = told.encode(_frames(2, 20)), told.anchor(_frames(2, 21))
    state, other = torch.randn(2, TINY.state_dim), torch.randn(2, TINY.state_dim)
    with torch.no_grad():
        for model in (remembering, told):
            _own_channel_bias(model).fill_(50.0)  # draw every pixel
        assert torch.equal(told.decode(latents, anchor, state), remembering.decode(latents, anchor))  # inputs at zero
        told.decoder.net[0].weight[:, -32:].normal_(0.0, 0.5)  # what tuning learns
        told.state_tokens.net[-1].weight.normal_(0.0, 1.0)
        drawn = told.decode(latents, anchor, state)
        assert (drawn - told.decode(latents, anchor, other)).abs().amax() > 0.01
        # (B, T) frames: each frame's own state
        pair = told.decode(torch.stack([latents, latents], 1), anchor, torch.stack([state, other], 1))
        torch.testing.assert_close(pair[:, 0], drawn, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="reads agent_pos: decode needs each frame's normalised state"):
        told.decode(latents, anchor)
    with pytest.raises(WmSimError, match="not change it"):
        anchored(told, memory=(1,), state=False)


@pytest.mark.parametrize("memory", [(), (1, 2)])
def test_the_engine_keeps_each_rows_anchor_term_and_draws_what_decode_draws(memory):
    """The imagination engine computes the anchor's (and earlier context frames') pixels' share
    once per episode; its frames are the ones decode draws computing it every time (float32), to
    within one level: oneDNN may round the last bit of a one-row reset's convolution otherwise."""
    from wm_sim.envs.imagination import ImaginationEngine

    torch.manual_seed(0)
    model = anchored(WorldModel(TINY), memory=memory, state=bool(memory)).eval()
    with torch.no_grad():
        model.decoder.detail.weight.normal_(0.0, 0.5)
        model.decoder.net[0].weight.normal_(0.0, 0.5)  # a decoder reading agent_pos: the state's inputs too
    engine = ImaginationEngine(model, 3, None)
    frames = torch.stack([_frames(3, 7 + b) for b in range(3)])  # (3, 3, S, S, 3)
    engine.reset_rows(torch.arange(3), frames, torch.zeros(3, 3, 4), torch.zeros(3, 2, 2))
    engine.reset_rows(torch.tensor([1]), frames[[0]], torch.zeros(1, 3, 4), torch.zeros(1, 2, 2))
    step = engine.step(torch.rand(3, 2))
    with torch.no_grad():
        rows = [0, 0, 2]  # row 1 restarted from row 0's context
        anchors = model.anchor(frames[rows, -1], context=frames[rows])
        assert (anchors.earlier is None) == (not memory)
        assert anchors.detail is None  # computed at each decode
        expected = model.decode_and_reencode(engine.latents, anchors, engine.norm_state)[0]
    assert (step.pixels.int() - expected.int()).abs().max() <= 1
    assert (step.pixels == expected).float().mean() > 0.99


def test_each_rows_anchor_serves_all_of_its_frames():
    torch.manual_seed(0)
    model = anchored(WorldModel(TINY)).eval()
    with torch.no_grad():
        _own_channel_bias(model).fill_(0.3)
        latents = model.encode(_frames(8, 4)).reshape(2, 4, TINY.tokens, TINY.latent_dim)
        anchor = model.anchor(_frames(2, 5))
        together = model.decode(latents, anchor)  # (2, 4, S, S, 3)
        for b in range(2):
            alone = model.decode(latents[b], Anchor(anchor.latents[[b] * 4], anchor.pixels[[b] * 4]))
            torch.testing.assert_close(together[b], alone, rtol=1e-6, atol=1e-6)


def test_an_anchored_model_refuses_to_decode_without_an_anchor():
    model = anchored(WorldModel(TINY)).eval()
    with pytest.raises(ValueError, match="anchored"):
        model.decode(model.encode(_frames(1, 0)))


def _tuning(checkpoint, data, out, **overrides) -> DecoderTuningConfig:
    base = dict(
        checkpoint=str(checkpoint), data=str(data), out=str(out), steps=4, batch_size=6, episodes=2,
        context=2, horizon=3, far_horizon=6, checkpoint_every=2, threads=1,
    )  # fmt: skip
    return DecoderTuningConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def tuned(tiny_model_path, reacher_store_path, tmp_path_factory):
    return tune_decoder(_tuning(tiny_model_path, reacher_store_path, tmp_path_factory.mktemp("tune") / "run"))


def test_tuning_changes_the_decoder_only_and_records_how(tuned, tiny_model_path):
    source, _ = load_checkpoint(tiny_model_path)
    model, meta = load_checkpoint(tuned)
    assert model.config.anchored and meta["step"] == 4
    assert meta["decoder_tuning"]["checkpoint"] == str(tiny_model_path)
    start = anchored(source, state=True).state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, start[name]) == (not name.startswith(("decoder.", "state_tokens."))), name
    assert sorted(p.name for p in tuned.iterdir() if p.name.startswith("step-")) == [
        "step-0000002",
        "step-0000004",
    ]


def test_a_killed_tuning_resumes_to_the_same_weights(tuned, tiny_model_path, reacher_store_path, tmp_path):
    out = tmp_path / "run"
    tune_decoder(_tuning(tiny_model_path, reacher_store_path, out, steps=2))
    tune_decoder(_tuning(tiny_model_path, reacher_store_path, out, resume="auto"))
    resumed, _ = load_checkpoint(out / LAST)
    whole, _ = load_checkpoint(tuned)
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_refusals(tuned, tiny_model_path, reacher_store_path, tmp_path):
    with pytest.raises(WmSimError, match="already holds a run"):
        tune_decoder(_tuning(tiny_model_path, reacher_store_path, tuned))
    with pytest.raises(WmSimError, match="tuned with lr"):
        tune_decoder(_tuning(tiny_model_path, reacher_store_path, tuned, resume="auto", steps=6, lr=1e-3))
    with pytest.raises(WmSimError, match="checkpoint= is required"):
        tune_decoder(_tuning("", reacher_store_path, tmp_path / "a"))
    with pytest.raises(WmSimError, match="far_horizon\\) = 10000"):
        tune_decoder(_tuning(tiny_model_path, reacher_store_path, tmp_path / "b", far_horizon=9998))
    with pytest.raises(WmSimError, match="far_horizon must be 0 or beyond horizon=3"):
        tune_decoder(_tuning(tiny_model_path, reacher_store_path, tmp_path / "b", far_horizon=3))
    with pytest.raises(WmSimError, match="far_pixels must be one of still, anchor, all, got 'moved'"):
        tune_decoder(_tuning(tiny_model_path, reacher_store_path, tmp_path / "b", far_pixels="moved"))
    with pytest.raises(WmSimError, match=re.escape("each >= 1) and memory_weight be >= 0, got [2, 0], 10.0")):
        tune_decoder(_tuning(tiny_model_path, reacher_store_path, tmp_path / "b", anchor_memory=(2, 0)))
    with pytest.raises(WmSimError, match=re.escape("got [2], -1.0")):
        tune_decoder(_tuning(tiny_model_path, reacher_store_path, tmp_path / "b", anchor_memory=(2,), memory_weight=-1.0))
    with pytest.raises(WmSimError, match=re.escape("anchor_memory=[2] is read beside the anchor's pixels: it needs anchor_detail=true")):
        tune_decoder(_tuning(tiny_model_path, reacher_store_path, tmp_path / "b", anchor_memory=(2,), anchor_detail=False))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_an_anchored_model_evaluates_and_its_env_keeps_and_forks_the_anchor(
    tuned, reacher_store_path, tmp_path
):
    report = evaluate(
        EvaluateConfig(checkpoint=str(tuned), data=str(reacher_store_path), out=str(tmp_path / "eval"), context=2, episodes=1, video_episodes=1)
    )  # fmt: skip
    metrics = json.loads((report / "metrics.json").read_text())["metrics"]
    assert metrics["ssim"]["model"]["1"] is not None
    packaged = package(
        PackageConfig(checkpoint=str(tuned), data=str(reacher_store_path), out=str(tmp_path / "pkg"), contexts=4, context_frames=3, evaluate=False)
    )  # fmt: skip
    env = gym.make("wm_sim/WorldModel-v0", checkpoint=str(packaged))
    first, _ = env.reset(seed=0)
    engine = env.unwrapped.sim.engine
    anchor = (engine.anchor.pixels[0].permute(1, 2, 0) * 255).round().byte().numpy()
    np.testing.assert_array_equal(anchor, first["pixels"])
    actions = np.random.default_rng(0).uniform(-1, 1, (4, 2)).astype(np.float32)
    state = env.unwrapped.get_state()
    frames = [env.step(a)[0]["pixels"] for a in actions]
    env.reset(seed=5)  # another start: another anchor
    env.unwrapped.set_state(state)
    assert all(np.array_equal(a, env.step(b)[0]["pixels"]) for a, b in zip(frames, actions, strict=True))
    env.close()


@pytest.mark.parametrize("which", ["still", "anchor"])
def test_far_predictions_are_trained_only_on_what_stood_still_in_the_anchors_foreground(
    tiny_model_path, reacher_store_path, which
):
    source, meta = load_checkpoint(tiny_model_path)
    model = anchored(source).eval()
    store = EpisodeStore.open(reacher_store_path)
    cfg = _tuning(
        tiny_model_path,
        reacher_store_path,
        "unused",
        real_fraction=0.0,
        batch_size=64,
        episodes=1,
        far_pixels=which,
    )
    data = own_rollouts(model, store, store.info.cameras[0], meta, cfg)
    assert data.own.shape[:2] == (1, 6)  # the rollout runs out to far_horizon
    _, target, weight = tuning_batch(model, data, cfg, np.random.default_rng(0))
    ones = (weight == 1).flatten(1).all(1)  # rows trained on the whole frame: the near ones
    assert 0 < int(ones.sum()) < 64
    expected = far_pixels(target, data.anchors.pixels[0].permute(1, 2, 0), data.background, which)
    assert torch.equal(weight[~ones], expected[~ones].float())
    # what stood still in the anchor's foreground is a sliver of the frame
    assert 0 < weight[~ones].mean() < 0.2


def test_memory_pixels_are_what_the_anchor_frame_covered_and_an_earlier_frame_showed():
    """A target the arm covers in the anchor frame, shown by an earlier frame and by the frame
    now: those pixels, not the arm's nor the background's."""
    background = torch.full((8, 8, 3), 0.3)
    target, arm = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.6, 0.9])
    earlier, anchor, frame = background.clone(), background.clone(), background.clone()
    earlier[1:3, 1:3] = frame[1:3, 1:3] = target
    anchor[0:4, 1:3] = arm  # over the target
    frame[5:7, 5:7] = arm  # gone elsewhere
    both = torch.cat([earlier, background], -1)  # two earlier frames, RGB in turn
    rows = Anchor(torch.zeros(1), anchor.permute(2, 0, 1)[None], earlier=both.permute(2, 0, 1)[None])
    expected = torch.zeros(1, 8, 8, 1, dtype=torch.bool)
    expected[0, 1:3, 1:3] = True
    expected[0, 0, 1:3] = expected[0, 3, 1:3] = True  # where the arm left the background the earlier frames show
    assert torch.equal(shown_earlier(frame[None], rows), expected)


def test_far_pixels_are_what_stood_still_and_with_anchor_also_where_the_anchors_foreground_left():
    """still: the target, not the background nor where the arm was or is. anchor: also where the
    arm was (erased there), still not where it is now (a far prediction's arm may be misplaced)."""
    background = torch.full((8, 8, 3), 0.3)
    anchor, frame = background.clone(), background.clone()
    anchor[1:3, 1:3] = frame[1:3, 1:3] = torch.tensor([0.9, 0.1, 0.1])  # the target, in both
    anchor[5:7, 0:4] = torch.tensor([0.1, 0.6, 0.9])  # the arm in the anchor...
    frame[0:4, 5:7] = torch.tensor([0.1, 0.6, 0.9])  # ...and somewhere else now
    still = torch.zeros(8, 8, 1, dtype=torch.bool)
    still[1:3, 1:3] = True
    assert torch.equal(far_pixels(frame, anchor, background), still)
    left = still.clone()
    left[5:7, 0:4] = True
    assert torch.equal(far_pixels(frame, anchor, background, "anchor"), left)


def test_with_far_pixels_all_and_a_still_weight_far_predictions_weigh_the_standing_target_more(
    tiny_model_path, reacher_store_path
):
    source, meta = load_checkpoint(tiny_model_path)
    model = anchored(source, state=True).eval()
    store = EpisodeStore.open(reacher_store_path)
    cfg = _tuning(
        tiny_model_path, reacher_store_path, "unused", real_fraction=0.0, batch_size=64, episodes=1,
        far_pixels="all", still_weight=3.0,
    )  # fmt: skip
    data = own_rollouts(model, store, store.info.cameras[0], meta, cfg)
    _, target, weight = tuning_batch(model, data, cfg, np.random.default_rng(0))
    far = (weight != 1).flatten(1).any(1)  # rows where a still pixel weighs more
    assert 0 < int(far.sum()) < 64
    still = far_pixels(target, data.anchors.pixels[0].permute(1, 2, 0), data.background, "still")
    assert torch.equal(weight[far], 1.0 + 3.0 * still[far].float())
    with pytest.raises(WmSimError, match=re.escape("still_weight must be >= 0, got -1.0")):
        tune_decoder(_tuning(tiny_model_path, reacher_store_path, "unused", still_weight=-1.0))


def test_latent_sources_stay_within_the_shift_and_the_episode():
    rng = np.random.default_rng(0)
    lengths, shown = [10] * 200 + [3], [0, 9] * 100 + [1]
    assert latent_sources(lengths, shown, 0, rng) == shown
    source = latent_sources(lengths, shown, 4, rng)
    assert all(abs(s - j) <= 4 and 0 <= s < n for s, j, n in zip(source, shown, lengths, strict=True))
    assert {s for s, j in zip(source, shown, strict=True) if j == 0} == {0, 1, 2, 3, 4}  # clipped at the start
    assert {s for s, j in zip(source, shown, strict=True) if j == 9} == {5, 6, 7, 8, 9}  # and at the end


def test_with_a_latent_shift_real_rows_decode_another_frames_latents_against_the_shown_frame(
    tiny_model_path, reacher_store_path, tmp_path
):
    source, meta = load_checkpoint(tiny_model_path)
    model = anchored(source, state=True).eval()
    store = EpisodeStore.open(reacher_store_path)
    cfg = _tuning(tiny_model_path, reacher_store_path, "unused", real_fraction=1.0, batch_size=32, episodes=1)
    data = own_rollouts(model, store, store.info.cameras[0], meta, cfg)
    with torch.no_grad():
        plain, target, weight = tuning_batch(model, data, cfg, np.random.default_rng(0))
        shifted, shifted_target, shifted_weight = tuning_batch(
            model, data, dataclasses.replace(cfg, latent_shift=3), np.random.default_rng(0)
        )
    assert torch.equal(shifted_target, target) and torch.equal(shifted_weight, weight)
    moved = (shifted - plain).abs().flatten(1).amax(1) > 0
    assert 0 < int(moved.sum()) < 32  # an offset of 0 (about 1 in 7) decodes the shown frame's own latents
    with pytest.raises(WmSimError, match=re.escape("got latent_shift=2, decoder_state=False")):
        tune_decoder(_tuning(tiny_model_path, reacher_store_path, tmp_path / "a", latent_shift=2, decoder_state=False))
    with pytest.raises(WmSimError, match=re.escape("got latent_shift=-1, decoder_state=True")):
        tune_decoder(_tuning(tiny_model_path, reacher_store_path, tmp_path / "a", latent_shift=-1))
    assert not (tmp_path / "a").exists()
