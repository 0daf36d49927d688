"""The dynamics transformer's time embedding: a rotary embedding over frame indices.

Queries and keys are turned by an angle proportional to their frame's index, so attention
depends only on how many frames apart two tokens are: a ring-buffer cache keeps old keys as they
were stored however far the window slides (wm_sim.stream_cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


def time_rotation(t: torch.Tensor, head_dim: int, dtype: torch.dtype, base: float = 1000.0) -> Rotation:
    """The rotary embedding over time of tokens at frame indices t (B, S), for heads of `head_dim`.

    Attention then depends only on how many frames apart two tokens are, which is what lets a
    ring-buffer cache keep old keys unchanged as the window slides. Computed once per pass and
    shared by every layer's queries and keys (`rotate`).
    """
    half = head_dim // 2
    # float64 angles: frame indices of long streams (1e6) would lose the rotation's precision in float32
    freqs = base ** (-torch.arange(half, device=t.device, dtype=torch.float64) / half)  # (D/2,)
    angles = t.to(torch.float64)[:, None, :, None] * freqs  # (B, 1, S, D/2)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


Rotation = tuple[torch.Tensor, torch.Tensor]  # cos, signed sin (B, 1, S, D): see time_rotation


@dataclass(frozen=True)
class SharedRotation:
    """One time rotation for every token of a pass: cos and signed sin (D,) of the frame index all
    rows of a stream share (rows stepped together, as a vector env's are).

    A rotation is linear, so it is folded into the query and key rows of each block's projection
    (`rotated_projection`): a matrix of 2 x dim rows a step instead of three passes over every
    row's queries and keys, a tenth of a bf16 dynamics step at batch 1,024 on a CPU. The sums
    are rounded in another order, so it is used only where bf16 rounds them anyway
    (WorldModel.stream_step).
    """

    cos: torch.Tensor
    sin: torch.Tensor

    def rotated_projection(self, qkv: nn.Linear, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight (3 dim, dim) and bias (3 dim,) of `qkv` with this rotation applied to what
        each head's queries and keys are: q' = R q = (R W) x + R b."""
        dim = qkv.in_features
        weight = torch.cat([qkv.weight, qkv.bias[:, None]], dim=1)  # (3 dim, dim + 1)
        query_key = weight[: 2 * dim].view(2, n_heads, dim // n_heads, dim + 1).transpose(-1, -2)
        rotated = rotate(query_key, (self.cos, self.sin)).transpose(-1, -2).reshape(2 * dim, dim + 1)
        weight = torch.cat([rotated, weight[2 * dim :]])
        return weight[:, :-1], weight[:, -1]


def rotate(x: torch.Tensor, rotation: Rotation) -> torch.Tensor:
    """x (..., B, H, S, D) rotated: each pair (x_i, x_i+D/2) turned by its angle.

    The same arithmetic as [x1 cos - x2 sin, x1 sin + x2 cos] to the bit, in three whole-tensor
    operations instead of eight on half-tensors.
    """
    cos, sin = rotation
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat([x2, x1], dim=-1) * sin.to(x.dtype)
