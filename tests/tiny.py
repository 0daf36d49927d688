"""The tiny model shapes tests train in seconds: the shipped architecture's parts off unless asked."""

from __future__ import annotations

from wm_sim.train import ModelArchitecture

TINY_SIZES = dict(grid=4, latent_dim=8, tokenizer_width=32, dim=32, depth=1, n_heads=2, mlp_ratio=2, window=3)
# The parts a model may have, all off: a test turns on those it is about (each one adds up-front fits).
NO_PARTS = dict(anchored=False, transition=False, frame_reward=False, scene_reward=False)


def tiny_architecture(**options) -> ModelArchitecture:
    """A tiny ModelArchitecture: residual latents, and only the parts named in `options` (e.g. anchored=True)."""
    return ModelArchitecture(**{**TINY_SIZES, **NO_PARTS, **options})

# WorldModelConfig's options as they were before its defaults became the shipped architecture:
# what tests of the bare tokenizer and transformer build on.
BARE_MODEL = dict(residual=False, anchored=False, transition=False, frame_reward=False, scene_reward=False)
