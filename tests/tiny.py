"""The tiny model shapes tests train in seconds (the shipped architecture's parts off unless
asked), and the tiny training runs the tests of train, init= upgrades and up-front fits share."""

from __future__ import annotations

import numpy as np
import torch

from wm_sim.checkpoint import load_checkpoint
from wm_sim.tracking import WandbConfig
from wm_sim.train import ModelArchitecture, TrainConfig, TrainingRecipe, train

TINY_SIZES = dict(grid=4, latent_dim=8, tokenizer_width=32, dim=32, depth=1, n_heads=2, mlp_ratio=2, window=3)
# The parts a model may have, all off: a test turns on those it is about (each one adds up-front fits).
NO_PARTS = dict(anchored=False, transition=False, frame_reward=False, scene_reward=False)


def tiny_architecture(**options) -> ModelArchitecture:
    """A tiny ModelArchitecture: residual latents, and only the parts named in `options` (e.g.
    anchored=True)."""
    return ModelArchitecture(**{**TINY_SIZES, **NO_PARTS, **options})

# WorldModelConfig's options as they were before its defaults became the shipped architecture:
# what tests of the bare tokenizer and transformer build on.
BARE_MODEL = dict(residual=False, anchored=False, transition=False, frame_reward=False, scene_reward=False)


def run_config(data, out, **overrides) -> TrainConfig:
    """A tiny run of 4 steps (tiny_architecture() unless model= says); overrides of
    TrainingRecipe's fields go into the training group."""
    fitting = {k: overrides.pop(k) for k in list(overrides) if k in TrainingRecipe.__dataclass_fields__}
    # no decoder phase and no rollout refit of a transition unless a test asks: they cost seconds
    defaults = {"batch_size": 4, "val_every": 2, "checkpoint_every": 2, "decoder_steps": 0, "transition_rollout_steps": 0}
    training = TrainingRecipe(**{**defaults, **fitting})
    base = dict(
        data=str(data),
        model=tiny_architecture(),
        out=str(out),
        steps=4,
        training=training,
        threads=1,
        wandb=WandbConfig(mode="disabled"),
    )
    return TrainConfig(**{**base, **overrides})


def fine_tuned(
    store_path,
    tmp_path,
    model: ModelArchitecture,
    base_model: ModelArchitecture | None = None,
    base_options=None,
    **options,
):
    """(before, after): a 2-step run of `base_model` (tiny_architecture()), and 2 steps at
    learning rate 0 of `model` started from it (init=), so only what `model` adds or refits up
    front differs."""
    base_model = base_model or tiny_architecture()
    base = train(run_config(store_path, tmp_path / "base", model=base_model, steps=2, **(base_options or {})))
    tuned = train(
        run_config(
            store_path,
            tmp_path / "tuned",
            model=model,
            init=str(base),
            steps=2,
            lr=0.0,
            tokenizer_lr=0.0,
            **options,
        )
    )
    return load_checkpoint(base)[0], load_checkpoint(tuned)[0]


def random_inputs(state_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents (2, 3, 16, 8), states and actions of the tiny model, for comparing two models' outputs."""
    g = torch.Generator().manual_seed(0)
    latents = torch.rand(2, 3, 16, 8, generator=g) * 2 - 1
    return latents, torch.randn(2, 3, state_dim, generator=g), torch.rand(2, 3, 2, generator=g) * 2 - 1


def random_obs(rows: int, size: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Observations of `rows` envs: random reacher-sized frames and agent_pos."""
    rng = np.random.default_rng(seed)
    return {
        "pixels": rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8),
        "agent_pos": rng.normal(size=(rows, 4)).astype(np.float32),
    }
