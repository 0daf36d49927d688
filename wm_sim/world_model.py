"""The world model: a frame tokenizer and an action-conditioned, block-causal dynamics transformer.

Reads top-down: attention backend, transformer blocks, the config, then the model with its
training forward pass and its streaming step. The frame tokenizer is wm_sim.tokenizer.

A frame becomes a G x G grid of latent tokens (tanh-bounded). An anchored decoder also reads a
real "anchor" frame (the last real frame before imagination began) and blends, per pixel, its own
colour with the anchor's: what has not moved since (the background, a target) is copied exactly
however far a rollout has drifted. The dynamics transformer sees, for each time step t, the
tokens of frame t plus embeddings of the proprioceptive state s_t and the action a_t, attends to
every token of frames <= t (block-causal), and predicts all tokens of frame t+1 at once and,
from their pooled features (`step_out`), the reward r_t+1, the continue probability and s_t+1.
With a state transition, s_t+1 comes instead from a small MLP of (s_t, a_t), fitted on every
transition of the data, and the transformer reads it too: the joints' own dynamics are smooth
and far easier to predict than pixels, and a transformer told where the arm goes next only has
to draw it there. With a frame reward, r_t+1 comes from a head on the predicted frame t+1 and
a_t alone (FrameReward). Streaming keeps the keys and values of the last `window` frames in a
ring buffer (wm_sim.stream_cache), so a step costs the same at step 10 and at step 100,000.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from wm_sim import compiled_kernels
from wm_sim.layout_kernels import InplaceGELU, bf16_inference, linear_gelu
from wm_sim.model_heads import FrameReward, SceneReward, StateTransition, wrap_angle
from wm_sim.optional import is_available
from wm_sim.rotary import Rotation, SharedRotation, rotate, time_rotation
from wm_sim.stream_cache import LayerCache, StreamCache
from wm_sim.tokenizer import STATE_CHANNELS, Decoder, Encoder, StateTokens, scale_frames

# --- attention backend -------------------------------------------------------------------------

# Detected once. flash-attn takes (B, S, H, D) half-precision CUDA tensors and no mask; everything
# else, and any call that needs a mask, goes through PyTorch's scaled_dot_product_attention.
HAS_FLASH_ATTN = is_available("flash_attn")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention of q (B, H, Sq, D) over k, v (B, H, Sk, D); mask True = may attend."""
    if HAS_FLASH_ATTN and mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from flash_attn import flash_attn_func

        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, Sq, H, D)
        return out.transpose(1, 2)
    if q.dtype == torch.bfloat16 and bf16_inference(q):
        compiled = compiled_kernels.attention(q, k, v, mask)  # None: not built here, or other shapes
        return attend_batched(q, k, v, mask) if compiled is None else compiled
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attend_batched(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """attend as two batched matmuls and a softmax between them: what a bf16 CPU step uses.

    A streamed step's attention is many tiny problems, 16 queries against the window's 128 keys
    per row and head, and PyTorch's CPU flash kernel pays its per-block overhead on each: at
    batch 1,024 it reached about 50 GFLOP/s, where one batched matmul over all of them runs near
    twice as fast. The scores are rounded to bf16 before the softmax (the kernel keeps them in
    float32), an error of the size of any other bf16 product of the step.
    """
    b, h, sq, d = q.shape
    keys, values = k.reshape(b * h, -1, d), v.reshape(b * h, -1, d)
    # (BH, Sq, Sk), scaled in the matmul's float32 sums (a 0-dim "input" that beta=0 ignores)
    scores = torch.baddbmm(q.new_zeros(()), q.reshape(b * h, sq, d), keys.transpose(1, 2), beta=0.0, alpha=d**-0.5)
    if mask is not None:
        scores = scores.view(b, h, sq, -1).masked_fill_(~mask, float("-inf")).view(b * h, sq, -1)
    return torch.bmm(torch.softmax(scores, dim=-1), values).view(b, h, sq, d)


# --- dynamics transformer ----------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def project(
        self, x: torch.Tensor, rotation: Rotation | SharedRotation
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, S, dim), the tokens' time rotation -> q, k, v (B, H, S, dim/H) with time rotated in."""
        b, s, d = x.shape
        if isinstance(rotation, SharedRotation):  # rotated in the projection itself
            qkv = F.linear(x, *rotation.rotated_projection(self.qkv, self.n_heads))
            return qkv.view(b, s, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4).unbind(0)
        qkv = self.qkv(x).view(b, s, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = rotate(qkv[:2], rotation)  # queries and keys in one pass
        return q, k, qkv[2]

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        b, h, s, dh = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, s, h * dh))


class Block(nn.Module):
    """Pre-norm transformer block whose attention can read keys and values from a cache."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), InplaceGELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(
        self,
        x: torch.Tensor,
        rotation: Rotation | SharedRotation,
        mask: torch.Tensor | None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """x (B, S, dim); with a cache, S is one frame's tokens and they attend over the window's."""
        q, k, v = self.attn.project(self.norm1(x), rotation)
        if cache is not None:
            k, v, mask = cache.append(k, v)
        x = x + self.attn.merge(attend(q, k, v, mask))
        up, gelu, down = self.mlp
        return x + down(linear_gelu(up, gelu, self.norm2(x)))


# From this many rows a step, a bf16 step folds a rotation the rows share into the projections
# (SharedRotation): rotating a block's weights took 93 us on the 2-core CPU, rotating the queries
# and keys of 16 rows 65 us and of 64 rows 180 us.
SHARED_ROTATION_ROWS = 32

LATENT_LIMIT = 0.999  # |latent| kept below 1 before atanh: atanh(0.999) = 3.8

# --- config and model --------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldModelConfig:
    """Shapes of the world model; saved in every checkpoint's metadata. The defaults are the
    architecture that ships (the data sets image, state and action sizes, wrapped angles and
    cameras); a checkpoint
    written before a part existed loads without it (wm_sim.checkpoint migrates its metadata by
    schema version)."""

    image_size: int = 64
    action_dim: int = 2
    state_dim: int = 4
    grid: int = 4  # latent tokens per frame: grid x grid
    latent_dim: int = 32
    tokenizer_width: int = 128
    dim: int = 128
    depth: int = 4
    n_heads: int = 4  # attention heads
    mlp_ratio: int = 4
    window: int = 8  # frames the dynamics attends to (and trains on)
    # Predict the next latents as a change of the current ones (in atanh space), so what does not
    # move (the background, a target) is copied for free and only motion must be learned.
    residual: bool = True
    # Composite decoded frames over a real anchor frame (see Decoder). Trained from scratch, an
    # anchored decoder learns to copy its anchor and never draws the arm move (a 750-step run
    # matched copy-last at every horizon), so `wm-sim train` trains a plain one and tunes the
    # anchored one onto the trained model last (wm_sim.decoder_tuning), as the shipped model's was.
    anchored: bool = True
    # An anchored decoder's last stage also reads the anchor's pixels (see Decoder; a decoder
    # that is not anchored has none). Tuned onto the shipped reacher model's anchored decoder, it
    # drew 0.80 of the target's pixels 16 frames out where tokens alone drew 0.72 (docs/model.md).
    anchor_detail: bool = True
    # With anchor detail, the earlier real frames it also reads, as gaps back from the anchor frame
    # (a context shorter than a gap gives its first frame). What the arm covered in the last real
    # frame, a target an earlier frame showed, is then drawn again when the arm leaves it: tuned
    # onto the shipped reacher model, 0.48 of such pixels 16 frames out, where none were (docs/model.md).
    anchor_memory: tuple[int, ...] = (2, 4, 7)
    # The anchored decoder also reads agent_pos (StateTokens): the predicted joints place the arm
    # where the drifting latents smear it. Tuned onto the shipped reacher model, a 12,000-step
    # random stream's frames stayed inside real MuJoCo frames' ranges 85% of the time, against
    # 57% without (docs/model.md).
    decoder_state: bool = True
    # Predict the next state with a StateTransition MLP, which the transformer also reads
    # (without one, the transformer predicts the state itself).
    transition: bool = True
    # Entries of the state that are angles wrapped into [-pi, pi) (found in the data by
    # wm_sim.data.angles.wrapped_entries): the transition and state errors take them the short way round.
    periodic_state: tuple[int, ...] = ()
    # Read the reward off the next frame (in rollouts: the frame shown, re-encoded) and the action
    # with a FrameReward head, not off the transformer's pooled features.
    frame_reward: bool = True
    # A SceneReward head: the reward of an imagined state in the scene a real frame shows, what
    # the latent planner and the latent actor imagine with (wm_sim.latent_model).
    scene_reward: bool = True
    # Cameras seen at once (a dataset's every camera): each is encoded to its own grid x grid
    # tokens and decoded from them, and one dynamics step attends over all of them. A frame is
    # then (..., K, S, S, 3) (`frame_shape`); with one camera it is (..., S, S, 3), as always.
    cameras: int = 1
    # Feed the dynamics latents standardised per channel, and scale its predicted change by the
    # per-channel size of a frame-to-frame change (running statistics of the training latents,
    # frozen outside training). Where little of the frame moves (a push scene: a small arm and a
    # puck on a large table), a step's latent change is ~30x smaller than reacher's; unscaled,
    # a 4,000-step push model predicted no better than copying the last frame (docs/model.md).
    normalised_latents: bool = False

    def __post_init__(self):
        object.__setattr__(self, "periodic_state", tuple(int(i) for i in self.periodic_state))  # JSON: a list
        object.__setattr__(self, "anchor_memory", tuple(int(i) for i in self.anchor_memory))
        if not self.anchored:  # only an anchored decoder has an anchor to read: one way to say "plain"
            object.__setattr__(self, "anchor_detail", False)
            object.__setattr__(self, "decoder_state", False)  # tuned onto an anchored decoder only
        if not self.anchor_detail:  # the earlier frames are read beside the anchor's pixels
            object.__setattr__(self, "anchor_memory", ())
        if any(g < 1 for g in self.anchor_memory):
            raise ValueError(f"anchor_memory counts frames back from the anchor (>= 1), got {self.anchor_memory}")
        if any(not 0 <= i < self.state_dim for i in self.periodic_state):
            raise ValueError(
                f"periodic_state must index the {self.state_dim} state entries, got {self.periodic_state}"
            )
        if self.cameras < 1:
            raise ValueError(f"cameras must be at least 1, got {self.cameras}")
        if self.image_size < 4 * self.grid:
            raise ValueError(f"image_size must be at least 4 x grid, got {self.image_size} and {self.grid}")
        if self.tokenizer_width % 16:
            raise ValueError(f"tokenizer_width must be a multiple of 16, got {self.tokenizer_width}")
        if self.image_size % self.grid or (self.image_size // self.grid) & (self.image_size // self.grid - 1):
            raise ValueError(f"image_size / grid must be a power of two, got {self.image_size} / {self.grid}")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(
                f"dim must split into n_heads heads of even size, got dim={self.dim}, n_heads={self.n_heads}"
            )

    @property
    def tokens(self) -> int:
        """Latent tokens per time step: grid x grid for each camera."""
        return self.cameras * self.grid * self.grid

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """One time step's pixels: (S, S, 3), or (K, S, S, 3) with several cameras."""
        image = (self.image_size, self.image_size, 3)
        return image if self.cameras == 1 else (self.cameras, *image)

    def to_dict(self) -> dict:
        """The config as JSON holds it (lists, not tuples), so a saved config equals a fresh one's."""
        return {**asdict(self), "periodic_state": list(self.periodic_state), "anchor_memory": list(self.anchor_memory)}


@dataclass
class Anchor:
    """A real frame an anchored decoder composites over; every decode of a rollout takes its context's."""

    latents: torch.Tensor  # (B, N, C)
    # (B, 3, S, S) float in [0, 1], best in channels-last memory (as model.anchor makes it): the
    # decoder blends in (B, S, S, 3) order, and reading a channels-first anchor there is strided.
    # With several cameras (B, K, 3, S, S).
    pixels: torch.Tensor
    # With anchor detail, the decoder's anchor_term of these pixels, where a caller keeps it for
    # a whole rollout under fixed weights (the imagination engine); None: computed at each decode.
    detail: torch.Tensor | None = None
    # With anchor memory, the earlier context frames (B, [K,] 3M, S, S) read with the pixels, M
    # frames' RGB in turn, in the pixels' memory layout; None: the anchor frame stands for each.
    earlier: torch.Tensor | None = None

    def __getitem__(self, rows) -> Anchor:
        picked = [None if x is None else x[rows] for x in (self.detail, self.earlier)]
        return Anchor(self.latents[rows], self.pixels[rows], *picked)


@dataclass
class Prediction:
    """What the dynamics predicts for the frame after each input frame."""

    latents: torch.Tensor  # (B, T, N, C)
    state: torch.Tensor  # (B, T, state_dim), normalised
    reward: torch.Tensor | None  # (B, T); None for a frame-reward model (see imagined_reward)
    continue_logit: torch.Tensor  # (B, T)


class WorldModel(nn.Module):
    """Tokenizer + dynamics transformer + output heads."""

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        c = config
        self.config = c
        self.encoder = Encoder(c.image_size, c.grid, c.latent_dim, c.tokenizer_width)
        self.decoder = Decoder(
            c.image_size, c.grid, c.latent_dim, c.tokenizer_width, c.anchored, c.anchor_detail,
            len(c.anchor_memory), STATE_CHANNELS if c.decoder_state else 0,
        )  # fmt: skip
        # what the decoder is told of agent_pos, per token of each camera
        self.state_tokens = StateTokens(c.state_dim, c.periodic_state, c.grid * c.grid) if c.decoder_state else None
        self.latent_in = nn.Linear(c.latent_dim, c.dim)
        self.state_in = nn.Linear(c.state_dim, c.dim)
        self.action_in = nn.Linear(c.action_dim, c.dim)
        self.transition = (
            StateTransition(c.state_dim, c.action_dim, c.periodic_state) if c.transition else None
        )
        self.next_state_in = nn.Linear(self.transition.features, c.dim) if self.transition else None
        self.position = nn.Parameter(torch.randn(c.tokens, c.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(c.dim, c.n_heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.latent_out = nn.Linear(c.dim, c.latent_dim)
        # read off the pooled tokens of each step: next state (unless the transition predicts it),
        # reward (unless a FrameReward predicts it), continue logit
        self.step_out = nn.Linear(c.dim, (0 if c.transition else c.state_dim) + (1 if c.frame_reward else 2))
        self.reward_head = FrameReward(c.tokens, c.latent_dim, c.action_dim) if c.frame_reward else None
        self.scene_reward = (
            SceneReward(c.image_size, c.state_dim, c.action_dim, c.periodic_state, c.cameras > 1)
            if c.scene_reward
            else None
        )
        # Normalisation of agent_pos, from the training data; saved with the weights.
        self.register_buffer("state_mean", torch.zeros(c.state_dim))
        self.register_buffer("state_std", torch.ones(c.state_dim))
        if c.normalised_latents:  # running statistics of the training latents (observe_latents)
            self.register_buffer("latent_mean", torch.zeros(c.latent_dim))
            self.register_buffer("latent_std", torch.ones(c.latent_dim))
            self.register_buffer("latent_step", torch.ones(c.latent_dim))  # rms change, atanh space
            self.register_buffer("latent_observed", torch.zeros((), dtype=torch.long))

    # -- tokenizer --

    def decoder_parameters(self) -> list[nn.Parameter]:
        """What draws the frames: the decoder, and what it is told of agent_pos if it reads it."""
        parts = [self.decoder] + ([self.state_tokens] if self.state_tokens is not None else [])
        return [p for part in parts for p in part.parameters()]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(..., *frame_shape) uint8 frames -> (..., N, C) latents."""
        return self.encode_scaled(scale_frames(pixels.to(torch.float32, copy=True)))

    def encode_scaled(self, scaled: torch.Tensor) -> torch.Tensor:
        """(..., *frame_shape) frames scaled as scale_frames scales them -> (..., N, C) latents
        (each camera's grid x grid tokens in turn)."""
        lead = scaled.shape[: -len(self.config.frame_shape)]
        latents = self.encoder.from_scaled(scaled.reshape(-1, *scaled.shape[-3:]).permute(0, 3, 1, 2))
        return latents.reshape(*lead, self.config.tokens, self.config.latent_dim)

    def anchor(self, frames: torch.Tensor, context: torch.Tensor | None = None) -> Anchor:
        """The anchor of rollouts that start after real frames (B, *frame_shape) uint8 (the last real
        ones). With anchor memory, `context` (B, T, *frame_shape) holds the real frames up to and
        including them, which the earlier frames are picked from (without it, none were seen)."""
        earlier = None if context is None else self.earlier_frames(context)
        return Anchor(self.encode(frames), frames.movedim(-1, -3).float() / 255.0, earlier=earlier)

    def earlier_frames(self, context: torch.Tensor) -> torch.Tensor | None:
        """The real frames (B, T, *frame_shape) uint8 up to an anchor's -> the earlier ones anchor
        memory reads, as Anchor.earlier holds them; None without anchor memory."""
        if not self.config.anchor_memory:
            return None
        picked = [context[:, max(0, context.shape[1] - 1 - gap)] for gap in self.config.anchor_memory]
        return torch.cat(picked, dim=-1).movedim(-1, -3).float() / 255.0  # (B, [K,] 3M, S, S)

    def decode(
        self, latents: torch.Tensor, anchor: Anchor | None = None, state: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, ..., N, C) latents -> (B, ..., *frame_shape) float frames in [0, 1].

        An anchored model needs the anchor of each row b (it is shared by the row's frames); a
        model that is not anchored ignores it, so callers pass it whatever the model. A decoder
        that reads agent_pos needs each frame's normalised `state` (B, ..., D); others ignore it.
        """
        frames = self.decoder(*self._decoder_inputs(latents, anchor, state))
        return frames.reshape(*latents.shape[:-2], *self.config.frame_shape)

    def _decoder_inputs(
        self, latents: torch.Tensor, anchor: Anchor | None, state: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        """decode's arguments as the decoder reads them, one frame (camera) per row: the latents,
        the anchor's latents, pixels and detail term (None if not anchored), the state's tokens."""
        c = self.config
        lead = latents.shape[:-2]
        per_camera = (-1, c.grid * c.grid, c.latent_dim)  # (M * K, G*G, C): a camera is a frame here
        flat = latents.reshape(per_camera)
        told = self._state_tokens(state)
        if not c.anchored:
            return flat, None, None, None, told
        if anchor is None:
            raise ValueError("this world model's decoder is anchored: decode needs model.anchor(frames)")
        pixels = _per_frame_image(anchor.pixels, lead)
        term = None
        if self.decoder.anchor_detail:  # once per row, not per frame, unless the anchor keeps it
            detail = anchor.detail if anchor.detail is not None else self.anchor_detail_term(anchor)
            term = _per_frame_image(detail, lead)
        anchor_latents = _per_frame(anchor.latents, lead).reshape(per_camera)
        return flat, anchor_latents, pixels, term, told

    def anchor_detail_term(self, anchor: Anchor) -> torch.Tensor:
        """With anchor detail, the decoder's share of each row's anchor (and earlier frames')
        pixels, (B, [K,] 4, S, S): the same for every frame decoded over that anchor, so a caller
        that decodes many keeps it in Anchor.detail (the imagination engine, per episode)."""
        pixels, earlier = (None if x is None else x.reshape(-1, *x.shape[-3:]) for x in (anchor.pixels, anchor.earlier))
        term = self.decoder.anchor_term(pixels, earlier)
        return term.reshape(*anchor.pixels.shape[:-3], *term.shape[-3:])

    def _state_tokens(self, state: torch.Tensor | None) -> torch.Tensor | None:
        """What the decoder reads of each frame's normalised state (B, ..., D): (M * K, G*G,
        STATE_CHANNELS), the same for every camera of a frame; None for a decoder without."""
        if self.state_tokens is None:
            return None
        if state is None:
            raise ValueError("this world model's decoder reads agent_pos: decode needs each frame's normalised state")
        flat = state.reshape(-1, state.shape[-1])
        told = self.state_tokens(flat, self.denormalise_state(flat))  # (M, G*G, S)
        return told.repeat_interleave(self.config.cameras, dim=0)  # (M * K, G*G, S)

    @torch.no_grad()  # a frame shown is uint8: no gradient flows through it, so none is tracked
    def decode_and_reencode(
        self, latents: torch.Tensor, anchor: Anchor | None, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted latents (B, ..., N, C) -> the frame they show (B, ..., S, S, 3) uint8, and the
        encoder's latents of that frame (B, ..., N, C).

        Over a rollout the predicted latents drift off anything the encoder makes of a real frame,
        while the frames they decode to still look right. What was fitted on real frames (a frame
        reward) or acts on a camera's latents (a policy) reads the re-encoded ones.
        """
        pixels, levels = self.decode_levels(latents, anchor, state)
        if levels.dtype == torch.bfloat16:  # a bf16 step's: exact, and read as they are
            return pixels, self.encode_levels(levels)
        # encode(pixels) to the bit, from the levels the uint8 cast truncated
        return pixels, self.encode_scaled(scale_frames(levels))

    def decode_levels(
        self, latents: torch.Tensor, anchor: Anchor | None, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """decode's frames as 0..255 levels, (B, ..., S, S, 3) uint8 and as the encoder reads them
        again (Decoder.levels: one compiled pass after the last convolution in a bf16 CPU step)."""
        pixels, levels = self.decoder.levels(*self._decoder_inputs(latents, anchor, state))
        shape = (*latents.shape[:-2], *self.config.frame_shape)
        return pixels.reshape(shape), levels.reshape(shape)

    def encode_levels(self, levels: torch.Tensor) -> torch.Tensor:
        """(..., *frame_shape) pixel levels 0..255, unscaled, as floats -> (..., N, C) latents,
        within rounding of encode (Encoder.from_levels)."""
        lead = levels.shape[: -len(self.config.frame_shape)]
        latents = self.encoder.from_levels(levels.reshape(-1, *levels.shape[-3:]).permute(0, 3, 1, 2))
        return latents.reshape(*lead, self.config.tokens, self.config.latent_dim)

    def imagined_reward(
        self, pred: Prediction, seen: torch.Tensor | None, action: torch.Tensor
    ) -> torch.Tensor:
        """The reward (B,) of a streamed step `pred` (T = 1) under `action` (B, A): a frame-reward
        model's head reading the frame shown, re-encoded (`seen` (B, N, C), from decode_and_reencode), inside
        the data's rewards (FrameReward.read); else the step's own predicted reward (`seen` may
        then be None)."""
        return pred.reward[:, 0] if self.reward_head is None else self.reward_head.read(seen, action)

    def normalise_state(self, state: torch.Tensor) -> torch.Tensor:
        return (state - self.state_mean) / self.state_std

    def denormalise_state(self, state: torch.Tensor) -> torch.Tensor:
        return state * self.state_std + self.state_mean

    def state_difference(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a - b of normalised states, wrapped angles the short way round (a turn is no error)."""
        periodic = list(self.config.periodic_state)
        if not periodic:
            return a - b
        out = a - b
        std = self.state_std[periodic]
        out[..., periodic] = wrap_angle(out[..., periodic] * std) / std
        return out

    # -- dynamics --

    @torch.no_grad()
    def observe_latents(self, latents: torch.Tensor, momentum: float = 0.01) -> None:
        """Update the running latent statistics from a training batch's (B, T, N, C) real latents
        (T >= 2); the first batch sets them. A model without normalised latents keeps none."""
        if not self.config.normalised_latents:
            return
        real = latents.detach().float()
        flat = real.flatten(0, -2)  # (B*T*N, C)
        raw = torch.atanh(real.clamp(-LATENT_LIMIT, LATENT_LIMIT))
        step = (raw[:, 1:] - raw[:, :-1]).pow(2).flatten(0, -2).mean(0).sqrt()
        batch = torch.stack([flat.mean(0), flat.std(0), step])
        if dist.is_available() and dist.is_initialized():  # every torchrun process keeps the same ones
            dist.all_reduce(batch)
            batch /= dist.get_world_size()
        rate = 1.0 if int(self.latent_observed) == 0 else momentum
        self.latent_mean.lerp_(batch[0], rate)
        self.latent_std.lerp_(batch[1].clamp(min=1e-4), rate)
        self.latent_step.lerp_(batch[2].clamp(min=1e-4), rate)
        self.latent_observed += 1

    def _tokens(
        self, latents: torch.Tensor, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """latents (B, T, N, C), normalised state (B, T, D), action (B, T, A) -> (B, T*N, dim) tokens,
        and the transition's normalised next state (B, T, D) (None without one)."""
        b, t, n, _ = latents.shape
        frame = self.state_in(state) + self.action_in(action)  # (B, T, dim)
        next_state = None
        if self.transition is not None:
            raw = self.transition(self.denormalise_state(state), action)
            frame = frame + self.next_state_in(self.transition.encode(raw))
            next_state = self.normalise_state(raw)
        if self.config.normalised_latents:
            latents = (latents - self.latent_mean) / self.latent_std
        x = self.latent_in(latents) + self.position + frame[:, :, None, :]  # (B, T, N, dim)
        return x.reshape(b, t * n, -1), next_state

    def _prediction(self, x: torch.Tensor, inputs: torch.Tensor, next_state: torch.Tensor | None) -> Prediction:
        """Transformer outputs x (B, T*N, dim), the input latents (B, T, N, C) and the transition's
        next state -> Prediction."""
        b, t = inputs.shape[:2]
        x = self.norm(x).view(b, t, self.config.tokens, -1)  # (B, T, N, dim)
        if self.config.residual:
            current = torch.atanh(inputs.clamp(-LATENT_LIMIT, LATENT_LIMIT))
            change = self.latent_out(x)
            if self.config.normalised_latents:
                change = change * self.latent_step
            latents = torch.tanh(current + change)  # (B, T, N, C)
        else:
            latents = torch.tanh(self.latent_out(x))
        pooled = self.step_out(x.mean(dim=2))  # (B, T, [D] + [1] + 1)
        if self.reward_head is None:
            reward, rest = pooled[..., -2], pooled[..., :-2]
        else:  # the reward is read off frames (imagined_reward), not predicted here
            reward, rest = None, pooled[..., :-1]
        state = rest if next_state is None else next_state
        return Prediction(latents, state, reward, pooled[..., -1])

    def forward(self, latents: torch.Tensor, state: torch.Tensor, action: torch.Tensor) -> Prediction:
        """Teacher-forced dynamics over a sequence: inputs at t predict frame t+1.

        latents (B, T, N, C), normalised state (B, T, D), action (B, T, A). A token sees every token
        of the last `window` frames up to its own: exactly what the streaming cache holds, so a
        stream reproduces this forward pass at any length.
        """
        b, t, n, _ = latents.shape
        x, next_state = self._tokens(latents, state, action)  # (B, T*N, dim)
        frame = torch.arange(t, device=x.device).repeat_interleave(n)  # (T*N,)
        lag = frame[:, None] - frame[None, :]
        mask = (lag >= 0) & (lag < self.config.window)  # block-causal, sliding window
        rotation = self._rotation(frame.expand(b, -1), x.dtype)
        for block in self.blocks:
            x = block(x, rotation, mask)
        return self._prediction(x, latents, next_state)

    def _rotation(self, times: torch.Tensor, dtype: torch.dtype) -> Rotation:
        return time_rotation(times, self.config.dim // self.config.n_heads, dtype)

    # -- streaming --

    def new_stream(
        self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> StreamCache:
        return StreamCache(self.config, batch, device, dtype)

    def stream_step(
        self, cache: StreamCache, latents: torch.Tensor, state: torch.Tensor, action: torch.Tensor
    ) -> Prediction:
        """One frame per row: latents (B, N, C), normalised state (B, D), action (B, A) -> Prediction of t+1.

        Appends the frame's keys and values to `cache` (dropping the oldest beyond the window).
        """
        b = latents.shape[0]
        x, next_state = self._tokens(latents[:, None], state[:, None], action[:, None])  # (B, N, dim)
        fast = bf16_inference(x)
        if fast:
            # A bf16 CPU step keeps the residual stream in bf16 too: its layer norms and additions
            # move half the memory and no layer converts its input. At batch 1,024 on the 2-core
            # CPU, 276 against 283 ms a step (median of 10, alternating); the shipped model's worst
            # frame 60 steps out stayed within 47.5 dB PSNR of float32's (50.4 with a float32
            # stream; benchmarks' precision suite). The state and latents between steps stay float32.
            x = x.to(torch.bfloat16)
        shared = cache.begin_step()  # the frame index every row is at, if they all are at one
        if fast and shared is not None and b >= SHARED_ROTATION_ROWS:
            cos, sin = self._rotation(torch.full((1, 1), shared, device=x.device), torch.float32)
            rotation = SharedRotation(cos.view(-1), sin.view(-1))
        else:
            rotation = self._rotation(cache.time[:, None].expand(b, self.config.tokens), x.dtype)  # (B, N)
        for layer, block in enumerate(self.blocks):
            x = block(x, rotation, None, cache=cache.layer(layer))
        cache.advance()
        return self._prediction(x, latents[:, None], next_state)


def _per_frame_image(row_image: torch.Tensor, lead: torch.Size) -> torch.Tensor:
    """Each row's (B, [K,] C, S, S) image, held in (B, [K,] S, S, C) memory, repeated for every frame
    of a (B, ...) = `lead` batch: (M * K, C, S, S) in that memory, where the decoder blends."""
    image = _per_frame(row_image.movedim(-3, -1), lead)
    return image.reshape(-1, *image.shape[-3:]).permute(0, 3, 1, 2)


def _per_frame(row_values: torch.Tensor, lead: torch.Size) -> torch.Tensor:
    """Each row's value (B, ...) repeated for every frame of a (B, ...) = `lead` batch, flattened (M, ...)."""
    tail = row_values.shape[1:]
    shaped = row_values.reshape(row_values.shape[0], *(1,) * (len(lead) - 1), *tail)
    return shaped.expand(*lead, *tail).reshape(-1, *tail)
