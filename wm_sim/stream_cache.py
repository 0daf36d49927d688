"""The streaming key-value cache: the last `window` frames' keys and values of every row.

A ring buffer per row, so a streamed step costs the same at step 10 and at step 100,000, and rows
reset independently (the vector env's partial resets). Each transformer block reads and writes
its own layer through a LayerCache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from wm_sim.world_model import WorldModelConfig


class StreamCache:
    """Keys and values of the last `window` frames of every row, in a ring buffer.

    Each row keeps its own frame counter, so rows of a batch can be reset independently (the
    vector env's partial resets); slots a row has not filled yet are masked out.
    """

    def __init__(self, config: WorldModelConfig, batch: int, device, dtype):
        self.config = config
        n, w = config.tokens, config.window
        shape = (config.depth, batch, config.n_heads, w * n, config.dim // config.n_heads)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, H, W*N, Dh)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.time = torch.zeros(batch, dtype=torch.long, device=device)  # frames seen per row
        # Build the mask even in steady state: no host sync, so a step can be compiled whole and
        # captured in a CUDA graph (wm_sim.envs.acceleration), at the price of the flash-attn path.
        self.always_mask = False
        self._slot_frame = torch.arange(w * n, device=device) // n  # (W*N,) ring slot -> frame slot
        self._rows = torch.arange(batch, device=device)

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Forget the history of `rows` (bool mask or indices; all rows when None)."""
        if rows is None:
            self.time.zero_()
        else:
            self.time[rows] = 0

    def layer(self, index: int) -> LayerCache:
        """Block `index`'s view of the cache."""
        return LayerCache(self, index)

    def append(
        self, index: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store this frame's k, v (B, H, N, Dh) of block `index`; all its cached k, v
        (B, H, W*N, Dh) and the mask of the slots filled (None when all are)."""
        n, w = self.config.tokens, self.config.window
        b, h, _, dh = k.shape
        frame = self.time % w  # (B,) each row's ring slot for this frame
        # (B, H, W, N, Dh) views: row b's frame goes to [b, :, frame[b]], an (H, N, Dh) block
        self.keys[index].view(b, h, w, n, dh)[self._rows, :, frame] = k.to(self.keys.dtype)
        self.values[index].view(b, h, w, n, dh)[self._rows, :, frame] = v.to(self.values.dtype)
        filled = torch.clamp(self.time + 1, max=w)  # (B,) frames held, this one included
        if not self.always_mask and bool((filled == w).all()):
            mask = None  # steady state: every slot valid, and flash-attn may be used
        else:
            frame_slot = self._slot_frame[None, :]  # (1, W*N)
            mask = (frame_slot < filled[:, None])[:, None, None, :]  # (B, 1, 1, W*N)
        return self.keys[index].to(k.dtype), self.values[index].to(v.dtype), mask

    def advance(self) -> None:
        self.time += 1


@dataclass(frozen=True)
class LayerCache:
    """What one block reads and writes of a StreamCache: its own layer of keys and values."""

    cache: StreamCache
    index: int

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return self.cache.append(self.index, k, v)
