"""The world model's dynamics: streaming with a ring-buffer cache equals the full forward pass."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import BARE_MODEL

import wm_sim.world_model as world_model
from wm_sim.model_heads import wrap_angle
from wm_sim.rotary import SharedRotation, rotate, time_rotation
from wm_sim.world_model import WorldModel, WorldModelConfig, attend, attend_batched

TINY = WorldModelConfig(
    image_size=32, grid=4, latent_dim=8, tokenizer_width=32, dim=32, depth=2, n_heads=2, window=4, **BARE_MODEL
)


def _inputs(model: WorldModel, batch: int, frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    pixels = torch.randint(
        0, 256, (batch, frames, c.image_size, c.image_size, 3), generator=g, dtype=torch.uint8
    )
    state = torch.randn(batch, frames, c.state_dim, generator=g)
    action = torch.rand(batch, frames, c.action_dim, generator=g) * 2 - 1
    return model.encode(pixels), state, action


@pytest.fixture(
    params=[
        {},
        {"residual": True},
        {"residual": True, "transition": True, "periodic_state": (0,)},
        {"residual": True, "frame_reward": True},
        {"residual": True, "normalised_latents": True},
    ],
    ids=["absolute", "residual", "transition", "frame-reward", "normalised-latents"],
)
def model(request) -> WorldModel:
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(**{**TINY.to_dict(), **request.param}))
    latents, _, _ = _inputs(model, 2, 5, seed=1)
    model.observe_latents(latents)  # statistics away from the identity, where a model keeps them
    return model.eval()


def test_normalised_latents_track_the_training_latents_and_scale_the_predicted_change():
    model = WorldModel(WorldModelConfig(**{**TINY.to_dict(), "residual": True, "normalised_latents": True}))
    first, _, _ = _inputs(model, 2, 5, seed=1)
    model.observe_latents(first)  # the first batch sets the statistics
    torch.testing.assert_close(model.latent_mean, first.flatten(0, -2).mean(0))
    torch.testing.assert_close(model.latent_std, first.flatten(0, -2).std(0))
    raw = torch.atanh(first.clamp(-0.999, 0.999))
    step = (raw[:, 1:] - raw[:, :-1]).pow(2).flatten(0, -2).mean(0).sqrt()
    torch.testing.assert_close(model.latent_step, step)
    second, _, _ = _inputs(model, 2, 5, seed=2)
    before = model.latent_mean.clone()
    model.observe_latents(second, momentum=0.25)  # later batches move them by the momentum
    torch.testing.assert_close(model.latent_mean, 0.75 * before + 0.25 * second.flatten(0, -2).mean(0))
    assert int(model.latent_observed) == 2
    # the change head's output is scaled per channel by the typical step
    latents, state, action = _inputs(model, 2, 3)
    latents = latents * 0.5  # away from +-1, where atanh would magnify rounding
    with torch.no_grad():
        scaled = model(latents, state, action).latents
        model.latent_step.fill_(1.0)
        unscaled = model(latents, state, action).latents
    current = torch.atanh(latents.clamp(-0.999, 0.999))
    torch.testing.assert_close(
        torch.atanh(scaled.clamp(-0.999, 0.999)) - current,
        (torch.atanh(unscaled.clamp(-0.999, 0.999)) - current) * step,
        rtol=1e-3,
        atol=1e-3,
    )
    plain = WorldModel(TINY)
    plain.observe_latents(first)  # a model without normalised latents keeps no statistics
    assert not any(name.startswith("latent_") for name, _ in plain.named_buffers())


def test_a_residual_model_with_a_zero_change_head_copies_the_last_frame():
    residual = WorldModel(WorldModelConfig(**{**TINY.to_dict(), "residual": True})).eval()
    torch.nn.init.zeros_(residual.latent_out.weight)
    torch.nn.init.zeros_(residual.latent_out.bias)
    latents, state, action = _inputs(residual, 2, 5)
    with torch.no_grad():
        predicted = residual(latents, state, action).latents
    torch.testing.assert_close(predicted, latents, rtol=0, atol=1e-5)


def test_tokenizer_shapes_round_trip(model):
    latents, _, _ = _inputs(model, 2, 3)
    assert latents.shape == (2, 3, TINY.tokens, TINY.latent_dim)
    assert latents.abs().max() < 1.0
    frames = model.decode(latents)
    assert frames.shape == (2, 3, 32, 32, 3)
    assert 0.0 <= frames.min() and frames.max() <= 1.0


@pytest.mark.parametrize("frames", [3, 4, 11])  # shorter than, equal to, and far beyond the window
def test_streaming_step_reproduces_the_full_forward_pass(model, frames):
    latents, state, action = _inputs(model, 3, frames)
    with torch.no_grad():
        full = model(latents, state, action)
        cache = model.new_stream(3)
        steps = [model.stream_step(cache, latents[:, t], state[:, t], action[:, t]) for t in range(frames)]
    streamed = torch.cat([s.latents for s in steps], dim=1)
    torch.testing.assert_close(streamed, full.latents, rtol=1e-5, atol=1e-5)
    if full.reward is not None:  # a frame-reward model reads rewards off frames, not here
        torch.testing.assert_close(torch.cat([s.reward for s in steps], 1), full.reward, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([s.state for s in steps], 1), full.state, rtol=1e-5, atol=1e-5)


def test_cache_is_written_in_place_however_long_the_stream(model):
    latents, state, action = _inputs(model, 1, 1)
    cache = model.new_stream(1)
    buffers = (cache.keys.data_ptr(), cache.values.data_ptr(), cache.keys.shape)
    with torch.no_grad():
        for _ in range(3 * TINY.window):
            model.stream_step(cache, latents[:, 0], state[:, 0], action[:, 0])
    assert (cache.keys.data_ptr(), cache.values.data_ptr(), cache.keys.shape) == buffers
    assert cache.keys.shape[3] == TINY.window * TINY.tokens
    assert int(cache.time[0]) == 3 * TINY.window


def test_resetting_one_row_restarts_only_that_row(model):
    latents, state, action = _inputs(model, 2, 6)
    with torch.no_grad():
        cache = model.new_stream(2)
        for t in range(3):
            model.stream_step(cache, latents[:, t], state[:, t], action[:, t])
        cache.reset(torch.tensor([True, False]))
        out = [model.stream_step(cache, latents[:, t], state[:, t], action[:, t]) for t in range(3, 6)]
        fresh = model(latents[:1, 3:], state[:1, 3:], action[:1, 3:])  # row 0: a new history from frame 3
        whole = model(latents[1:], state[1:], action[1:])  # row 1: never reset
    torch.testing.assert_close(
        torch.cat([o.latents[:1] for o in out], 1), fresh.latents, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        torch.cat([o.latents[1:] for o in out], 1), whole.latents[:, 3:], rtol=1e-5, atol=1e-5
    )


def test_the_time_rotation_turns_each_pair_by_its_angle_and_leaves_only_relative_time():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 2, 3, 5, 8, generator=g)  # (B, H, S, D) each
    t = torch.randint(0, 10**6, (2, 5), generator=g)
    freqs = 1000.0 ** (-torch.arange(4, dtype=torch.float64) / 4)
    angles = t.double()[:, None, :, None] * freqs
    cos, sin = angles.cos().float(), angles.sin().float()
    x1, x2 = q[..., :4], q[..., 4:]
    expected = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    assert torch.equal(rotate(q, time_rotation(t, 8, torch.float32)), expected)  # the same arithmetic
    # scores depend on how many frames apart a query and a key are, not on when they happened
    scores = [
        rotate(q, time_rotation(t + shift, 8, torch.float32))
        @ rotate(k, time_rotation(t + shift, 8, torch.float32)).transpose(-1, -2)
        for shift in (0, 12_345)
    ]
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-4, atol=1e-4)


def test_a_rotation_the_rows_share_folded_into_the_projection_rotates_queries_and_keys_alike():
    torch.manual_seed(0)
    model = WorldModel(TINY).eval()
    attention = model.blocks[0].attn
    x = torch.randn(3, TINY.tokens, TINY.dim)
    head = TINY.dim // TINY.n_heads
    per_row = time_rotation(torch.full((3, TINY.tokens), 1234), head, torch.float32)
    cos, sin = time_rotation(torch.full((1, 1), 1234), head, torch.float32)
    with torch.no_grad():
        folded = attention.project(x, SharedRotation(cos.view(-1), sin.view(-1)))
        rotated = attention.project(x, per_row)
    for a, b in zip(folded, rotated, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_bf16_stream_of_rows_in_step_folds_their_rotation_and_draws_what_rotating_each_row_does(monkeypatch):
    """From SHARED_ROTATION_ROWS rows at one frame index, a bf16 step rotates the projection, not
    the queries and keys: within bf16 rounding of the per-row rotation, and of float32."""
    torch.manual_seed(0)
    model = WorldModel(TINY).eval()
    rows = world_model.SHARED_ROTATION_ROWS
    latents, state, action = _inputs(model, rows, 6)

    def stream(precision: torch.dtype) -> torch.Tensor:
        cache = model.new_stream(rows, dtype=precision)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != torch.float32):
            steps = [model.stream_step(cache, latents[:, t], state[:, t], action[:, t]) for t in range(6)]
        return torch.cat([s.latents.float() for s in steps], dim=1)

    folded, exact = stream(torch.bfloat16), stream(torch.float32)
    monkeypatch.setattr(world_model, "SHARED_ROTATION_ROWS", rows + 1)  # each row rotated instead
    per_row = stream(torch.bfloat16)
    assert not torch.equal(folded, per_row)  # the fold ran: the sums were rounded in another order
    torch.testing.assert_close(folded, per_row, rtol=0.03, atol=0.03)
    torch.testing.assert_close(folded, exact, rtol=0.03, atol=0.03)


def test_a_step_reads_the_rows_frame_counters_once_and_knows_when_they_agree(model):
    latents, state, action = _inputs(model, 3, 2)
    cache = model.new_stream(3)
    assert cache.begin_step() == 0  # every row at frame 0
    with torch.no_grad():
        model.stream_step(cache, latents[:, 0], state[:, 0], action[:, 0])
        assert cache.begin_step() == 1
        cache.reset(torch.tensor([True, False, False]))
        assert cache.begin_step() is None  # rows at frames 0, 1 and 1
    cache.always_mask = True  # a compiled step: no host sync, so nothing is known to agree
    cache.reset()
    assert cache.begin_step() is None


def test_the_encoder_reads_unscaled_levels_with_the_scaling_folded_into_its_first_layer():
    torch.manual_seed(0)
    model = WorldModel(TINY).eval()
    frames = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_levels(frames.float()), model.encode(frames), rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            from_levels, scaled = model.encode_levels(frames.to(torch.bfloat16)), model.encode(frames)
    torch.testing.assert_close(from_levels.float(), scaled.float(), rtol=0.03, atol=0.03)


def test_the_tokenizer_computes_what_its_layers_compute_one_by_one():
    """The fused strided and reordered convolutions (run_fused) against plain nn.Sequential."""
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(**{**TINY.to_dict(), "anchored": True})).eval()
    g = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=g)
    scaled = frames.permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0
    tokens = torch.randn(3, TINY.tokens, TINY.latent_dim, generator=g)
    anchor = model.anchor(frames)
    with torch.no_grad():
        encoded = torch.tanh(model.encoder.net(scaled).flatten(2).transpose(1, 2))
        torch.testing.assert_close(model.encoder(frames), encoded, rtol=1e-5, atol=1e-6)
        z = torch.cat([tokens, anchor.latents], -1).transpose(1, 2).reshape(3, -1, TINY.grid, TINY.grid)
        out = torch.sigmoid(model.decoder.net(z))
        drawn = torch.lerp(anchor.pixels, out[:, :3], out[:, 3:]).permute(0, 2, 3, 1)
        torch.testing.assert_close(model.decoder(tokens, anchor.latents, anchor.pixels), drawn)
    # and the same with a gradient flowing (training), out of place
    decoded = model.decoder(tokens.requires_grad_(), anchor.latents, anchor.pixels)
    torch.testing.assert_close(decoded, drawn)
    decoded.sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    # a decoder without an anchor, whose in-place sigmoid is all it does after the layers
    plain = WorldModel(TINY).eval()
    with torch.no_grad():
        z = tokens.detach().transpose(1, 2).reshape(3, -1, TINY.grid, TINY.grid)
        expected = torch.sigmoid(plain.decoder.net(z)).permute(0, 2, 3, 1)
        torch.testing.assert_close(plain.decoder(tokens.detach()), expected)
        # float frames in are read, not overwritten
        levels = frames.float()
        plain.encoder(levels)
    assert torch.equal(levels, frames.float())


def test_attention_mask_covers_exactly_the_window(model):
    latents, state, action = _inputs(model, 1, TINY.window + 1)
    changed = latents.clone()
    changed[:, 0] = -changed[:, 0]  # the frame that just left the window of the last step
    with torch.no_grad():
        a = model(latents, state, action).latents[:, -1]
        b = model(changed, state, action).latents[:, -1]
    # it still reaches the last step through the later frames' representations (as in the stream),
    # so only check the mask itself: a one-layer model must ignore it entirely
    one_layer = WorldModel(WorldModelConfig(**{**TINY.to_dict(), "depth": 1})).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            one_layer(latents, state, action).latents[:, -1], one_layer(changed, state, action).latents[:, -1]
        )
    assert not torch.allclose(a, b)


def test_attention_without_flash_matches_a_direct_softmax():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 5, 5, generator=g) > 0.3
    mask[..., 0] = True
    weights = (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~mask, float("-inf")).softmax(-1)
    torch.testing.assert_close(attend(q, k, v, mask), weights @ v, rtol=1e-5, atol=1e-5)


def test_a_bf16_cpu_step_attends_with_batched_matmuls_within_rounding_of_the_float32_softmax():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 2, 4, 8, generator=g)  # 4 queries against 12 keys, per row and head
    k, v = torch.randn(3, 2, 12, 8, generator=g), torch.randn(3, 2, 12, 8, generator=g)
    mask = torch.rand(3, 1, 1, 12, generator=g) > 0.4  # a row's unfilled ring slots (StreamCache)
    mask[..., 0] = True
    for rows_mask in (mask, None):
        expected = attend(q, k, v, rows_mask)  # float32: scaled_dot_product_attention
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            batched = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), rows_mask)
        assert batched.dtype == torch.bfloat16
        torch.testing.assert_close(batched.float(), expected, rtol=0.03, atol=0.03)
    hidden = attend_batched(q.bfloat16(), k.bfloat16(), (v + 1000.0 * ~mask.mT).bfloat16(), mask)
    torch.testing.assert_close(hidden.float(), attend(q, k, v, mask), rtol=0.03, atol=0.03)  # masked: unread


def test_config_rejects_shapes_that_cannot_tile():
    with pytest.raises(ValueError, match="power of two"):
        WorldModelConfig(image_size=64, grid=3)
    with pytest.raises(ValueError, match="heads"):
        WorldModelConfig(dim=30, n_heads=4)


@pytest.mark.skipif(
    not (torch.cuda.is_available() and __import__("wm_sim.world_model").world_model.HAS_FLASH_ATTN),
    reason="needs CUDA and flash-attn",
)
def test_flash_attention_matches_sdpa_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(2)
    q, k, v = (torch.randn(2, 4, 64, 32, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    flash = attend(q, k, v, None)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(flash, sdpa, rtol=2e-2, atol=2e-2)


def test_state_difference_wraps_periodic_entries_in_normalised_units():
    model = WorldModel(WorldModelConfig(**{**TINY.to_dict(), "transition": True, "periodic_state": (0,)}))
    model.state_std.copy_(torch.tensor([2.0, 1.0, 1.0, 1.0]))
    a = model.normalise_state(torch.tensor([math.pi - 0.01, 3.1, 0.0, 0.0]))
    b = model.normalise_state(torch.tensor([-math.pi + 0.01, -3.1, 0.0, 0.0]))
    diff = model.state_difference(a, b)
    torch.testing.assert_close(diff[:2], torch.tensor([-0.02 / 2.0, 6.2]), atol=1e-5, rtol=0)
    assert wrap_angle(torch.tensor(3 * math.pi)).abs() == pytest.approx(math.pi)


def test_a_transition_model_predicts_the_state_with_its_mlp_and_reads_it():
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(**{**TINY.to_dict(), "transition": True})).eval()
    latents, state, action = _inputs(model, 2, 3)
    with torch.no_grad():
        pred = model(latents, state, action)
        expected = model.normalise_state(model.transition(model.denormalise_state(state), action))
        torch.testing.assert_close(pred.state, expected)
        # the transformer's frames depend on what the transition says comes next
        model.transition.net[-1].bias.add_(1.0)
        assert not torch.allclose(model(latents, state, action).latents, pred.latents)


def test_a_frame_reward_is_read_off_the_frame_shown_and_the_action():
    """The dynamics predict no reward; an imagined step's reward is the head's read of the frame
    the model shows, encoded again."""
    model = WorldModel(
        WorldModelConfig(**{**TINY.to_dict(), "residual": True, "anchored": True, "frame_reward": True})
    ).eval()
    assert model.step_out.out_features == TINY.state_dim + 1  # no reward row in step_out
    latents, state, action = _inputs(model, 2, 1)
    frames = torch.randint(
        0, 256, (2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        pred = model.stream_step(model.new_stream(2), latents[:, 0], state[:, 0], action[:, 0])
        assert pred.reward is None
        _, seen = model.decode_and_reencode(pred.latents[:, 0], model.anchor(frames))
        reward = model.imagined_reward(pred, seen, action[:, 0])
        torch.testing.assert_close(reward, model.reward_head.read(seen, action[:, 0]))
        assert not torch.allclose(reward, model.reward_head(seen.flip(0), action[:, 0]))
        assert not torch.allclose(reward, model.reward_head(seen, -action[:, 0]))
        # inside the rewards the data holds: what lies beyond is read as the nearest bound
        model.reward_head.low.fill_(float(reward.min()) + 1e-3)
        model.reward_head.high.fill_(float(reward.max()) - 1e-3)
        bounded = model.imagined_reward(pred, seen, action[:, 0])
        torch.testing.assert_close(
            bounded, reward.clamp(float(reward.min()) + 1e-3, float(reward.max()) - 1e-3)
        )


def test_decode_and_reencode_gives_the_shown_frame_and_its_encoding():
    model = WorldModel(WorldModelConfig(**{**TINY.to_dict(), "anchored": True})).eval()
    latents, _, _ = _inputs(model, 2, 3)
    frames = torch.randint(
        0, 256, (2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    anchor = model.anchor(frames)
    with torch.no_grad():
        pixels, seen = model.decode_and_reencode(latents, anchor)
        expected = (model.decode(latents, anchor) * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
        assert torch.equal(seen, model.encode(pixels))  # the same levels through the same layers
    assert pixels.dtype == torch.uint8 and pixels.shape == (2, 3, 32, 32, 3)
    assert torch.equal(pixels, expected)


def test_an_anchored_bf16_step_shows_the_float32_frame_within_rounding_and_reads_its_levels():
    """An anchored decoder blends in float32: a bf16 step turns it into levels without a clamp
    and re-encodes the levels as they are (Encoder.from_levels), within rounding of float32."""
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(**{**TINY.to_dict(), "anchored": True, "anchor_detail": True})).eval()
    model.decoder.detail.weight.data.normal_(0.0, 0.5)
    latents, _, _ = _inputs(model, 2, 3)
    frames = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    anchor = model.anchor(frames)
    with torch.no_grad():
        exact, _ = model.decode_and_reencode(latents, anchor)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pixels, seen = model.decode_and_reencode(latents, anchor)
        reencoded = model.encode(pixels)
    assert pixels.dtype == torch.uint8 and (pixels.int() - exact.int()).abs().max() <= 8
    assert (pixels.int() - exact.int()).abs().float().mean() < 0.5
    torch.testing.assert_close(seen.float(), reencoded, rtol=0.03, atol=0.03)


def test_decode_and_reencode_encodes_the_shown_frame_exactly_also_under_bf16_autocast():
    """Without an anchor the decoded frame stays in the autocast precision; its levels are still
    read back as the uint8 frame shown."""
    model = WorldModel(TINY).eval()
    latents, _, _ = _inputs(model, 2, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pixels, seen = model.decode_and_reencode(latents, None)
        assert torch.equal(seen, model.encode(pixels))
