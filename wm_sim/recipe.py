"""What `wm-sim train` builds and how it fits it: the model's architecture (a file of
configs/model/) and the training recipe (a file of configs/training/), whose defaults are the
shipped model's. `wm_sim.train` runs them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from wm_sim.errors import WmSimError


@dataclass
class ModelArchitecture:
    """The size and parts of the world model (a file of configs/model/); the data fixes the rest of
    its shape. The defaults are WorldModelConfig's: the architecture that ships. Its anchored
    decoder, trained from scratch, only copies its anchor, so the recipe trains a plain one and
    tunes the anchored one onto the trained model after the last step (training.decoder_steps)."""

    grid: int = field(default=4, metadata={"help": "latent tokens per frame: grid x grid"})
    latent_dim: int = field(default=32, metadata={"help": "numbers per latent token"})
    tokenizer_width: int = field(default=128, metadata={"help": "encoder/decoder channels (x16)"})
    dim: int = field(default=128, metadata={"help": "transformer width"})
    depth: int = field(default=4, metadata={"help": "transformer blocks"})
    n_heads: int = field(default=4, metadata={"help": "attention heads"})
    mlp_ratio: int = field(default=4, metadata={"help": "MLP hidden size / dim"})
    window: int = field(default=8, metadata={"help": "frames attended to (and trained on)"})
    residual: bool = field(default=True, metadata={"help": "predict the change of each latent"})
    anchored: bool = field(
        default=True,
        metadata={
            "help": "decode over a real anchor frame: tuned onto the trained model last (training.decoder_steps), "
            "or trained from the start with training.decoder_steps=0 (from scratch it only copies its anchor)"
        },
    )
    anchor_detail: bool = field(
        default=True,
        metadata={
            "help": "the anchored decoder's last stage also reads the anchor's pixels: a second decoder phase "
            "(out/detail) tunes them in after the first"
        },
    )
    anchor_memory: tuple[int, ...] = field(
        default=(2, 4, 7),
        metadata={
            "help": "with anchor_detail, the earlier context frames read too, as gaps back from the anchor "
            "([]: none): a third decoder phase (out/memory) tunes them in"
        },
    )
    decoder_state: bool = field(
        default=True,
        metadata={
            "help": "the anchored decoder also reads agent_pos: a last decoder phase (out/state) tunes it in, "
            "on every pixel, for twice training.decoder_steps"
        },
    )
    transition: bool = field(
        default=True,
        metadata={"help": "predict agent_pos with a state-transition MLP the transformer reads"},
    )
    frame_reward: bool = field(
        default=True,
        metadata={"help": "read the reward off the next frame (re-encoded in rollouts) and the action"},
    )
    scene_reward: bool = field(
        default=True,
        metadata={"help": "a reward of (real frame, state, action) for the latent planner and actor"},
    )
    normalised_latents: bool = field(
        default=False,
        metadata={
            "help": "standardise the dynamics' input latents and scale its predicted change by the data's "
            "(meant for scenes where little moves, such as push; see docs/model.md)"
        },
    )

    def __post_init__(self) -> None:
        # refused where the option is read (model.depth=0), not as a shape error deep in the model
        sizes = ("grid", "latent_dim", "tokenizer_width", "dim", "depth", "n_heads", "mlp_ratio", "window")
        for name in sizes:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise WmSimError(f"model.{name} must be a positive integer, got {value!r}")
        self.anchor_memory = tuple(self.anchor_memory)  # from a config file or the command line: a list
        if any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in self.anchor_memory):
            raise WmSimError(f"model.anchor_memory must list frames back from the anchor (each >= 1), got {list(self.anchor_memory)}")


@dataclass
class TrainingRecipe:
    """How the model is fitted (a file of configs/training/): batch, optimiser, losses, cadence."""

    batch_size: int = field(default=32, metadata={"help": "windows per step"})
    lr: float = field(
        default=5e-4, metadata={"help": "peak learning rate of the dynamics (warm-up, then cosine decay)"}
    )
    tokenizer_lr: float = field(
        default=2e-3, metadata={"help": "peak learning rate of the encoder and decoder (same schedule)"}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    context_noise: float = field(
        default=0.1, metadata={"help": "max std of the noise added to input latents"}
    )
    rollout_passes: int = field(
        default=3, metadata={"help": "passes over the model's own predictions per step (0: teacher forcing)"}
    )
    teacher_forced_steps: int = field(
        default=0,
        metadata={"help": "first steps without own passes (where frames barely change, they hold it at copying)"},
    )
    foreground_weight: float = field(
        default=2.0, metadata={"help": "extra pixel-loss weight where a frame differs from the background"}
    )
    reward_weight: float = field(
        default=0.1, metadata={"help": "weight of the reward loss (latent terms weigh 1, pixels 1)"}
    )
    transition_steps: int = field(
        default=20000,
        metadata={"help": "steps fitting a new state transition on every training transition, up front"},
    )
    refit_transition: bool = field(
        default=False,
        metadata={"help": "fit init's state transition again up front (transition_steps more steps)"},
    )
    transition_lr: float = field(
        default=1e-3, metadata={"help": "peak learning rate of the up-front state-transition fit"}
    )
    transition_horizon: int = field(
        default=1,
        metadata={"help": "steps the state transition is rolled out on its own predictions when fitted"},
    )
    transition_rollout_steps: int = field(
        default=4000,
        metadata={"help": "then steps fitting it again on its own transition_rollout_horizon-step rollouts (0: none)"},
    )
    transition_rollout_horizon: int = field(
        default=32, metadata={"help": "steps of those rollouts (the planner imagines 16 and more)"}
    )
    transition_rollout_lr: float = field(
        default=3e-4, metadata={"help": "peak learning rate of that second fit"}
    )
    reward_fit_steps: int = field(
        default=3000,
        metadata={"help": "steps fitting a new frame-reward head on every real frame of the data, up front"},
    )
    scene_reward_steps: int = field(
        default=20000,
        metadata={"help": "steps fitting a new scene reward's effector and per-episode goals, up front"},
    )
    scene_goal_steps: int = field(
        default=2000,
        metadata={"help": "steps then fitting its goal net to find each episode's goal in every frame"},
    )
    decoder_steps: int = field(
        default=2500,
        metadata={
            "help": "a model.anchored=true run from scratch trains a plain decoder, then tunes an anchored one onto "
            "the frozen model for these steps after the last (out/decoder, as wm-sim tune-decoder; 0: anchored from the start)"
        },
    )
    decoder_far_pixels: str = field(
        default="still",
        metadata={"help": "the decoder phase's far_pixels (wm-sim tune-decoder's): still or anchor"},
    )
    decoder_latent_shift: int = field(
        default=32,
        metadata={
            "help": "with model.decoder_state, the agent_pos phase's latent_shift (wm-sim tune-decoder's): real "
            "frames decoded from latents up to this many frames away, so the robot is drawn where agent_pos says"
        },
    )
    val_every: int = field(default=500, metadata={"help": "steps between validations"})
    checkpoint_every: int = field(default=500, metadata={"help": "steps between checkpoints"})

    def __post_init__(self) -> None:
        # 0 is a valid rate: it freezes that part (the shipped stage 10 refit only its transition)
        rates = ("lr", "tokenizer_lr", "weight_decay", "context_noise")
        for name in (
            *rates,
            "transition_steps",
            "reward_fit_steps",
            "scene_reward_steps",
            "scene_goal_steps",
            "transition_rollout_steps",
            "decoder_steps",
            "decoder_latent_shift",
        ):
            value = getattr(self, name)
            if not 0 <= value < math.inf:  # NaN fails this too
                raise WmSimError(f"training.{name} must be a finite number >= 0, got {value!r}")
