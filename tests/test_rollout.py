"""Open-loop rollouts (wm_sim.rollout): imagined frames from real context frames and actions."""

from __future__ import annotations

import torch
from tiny import BARE_MODEL

from wm_sim.world_model import WorldModel, WorldModelConfig

TINY = WorldModelConfig(
    image_size=32, grid=4, latent_dim=8, tokenizer_width=32, dim=32, depth=2, n_heads=2, window=4, **BARE_MODEL
)


def test_open_loop_reads_each_imagined_frames_reward_off_the_frame_shown():
    from wm_sim.rollout import open_loop

    torch.manual_seed(0)
    model = WorldModel(
        WorldModelConfig(**{**TINY.to_dict(), "residual": True, "anchored": True, "frame_reward": True})
    ).eval()
    g = torch.Generator().manual_seed(2)
    frames = torch.randint(0, 256, (2, 3, 32, 32, 3), generator=g, dtype=torch.uint8)
    state, actions = torch.randn(2, 3, TINY.state_dim, generator=g), torch.rand(2, 5, 2, generator=g) * 2 - 1
    rollout = open_loop(model, frames, state, actions, context=3)
    assert rollout.reward.shape == (2, 3)
    with torch.no_grad():
        _, seen = model.decode_and_reencode(rollout.latents, rollout.anchor)
        torch.testing.assert_close(rollout.reward, model.reward_head.read(seen, actions[:, 2:]))
