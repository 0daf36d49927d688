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
        self._slots: tuple[torch.Tensor, int | None, torch.Tensor | None] | None = None  # this step's

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Forget the history of `rows` (bool mask or indices; all rows when None)."""
        self._slots = None
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
        if self._slots is None:
            self.begin_step()
        frame, shared, mask = self._slots
        for store, new in ((self.keys[index], k), (self.values[index], v)):
            # (B, H, W, N, Dh) view: row b's frame goes to [b, :, frame[b]], an (H, N, Dh) block
            ring = store.view(b, h, w, n, dh)
            if shared is not None:  # every row at the same slot: one strided copy, no scatter
                ring[:, :, shared] = new.to(store.dtype)
            else:
                ring[self._rows, :, frame] = new.to(store.dtype)
        return self.keys[index].to(k.dtype), self.values[index].to(v.dtype), mask

    def begin_step(self) -> int | None:
        """Read what every block of this step needs of the rows' frame counters: each row's ring
        slot, the slot all rows share (else None) and the attention mask of the slots filled
        (None when every row's window is full), in one host sync for all blocks. Returns the
        frame index all rows are at, None unless they all are at the same one.

        With always_mask, no sync: the slot is never shared, the mask always built, and None."""
        w = self.config.window
        frame = self.time % w  # (B,) each row's ring slot for this frame
        filled = torch.clamp(self.time + 1, max=w)  # (B,) frames held, this one included
        shared, full, time = None, False, None
        if not self.always_mask and frame.numel():
            stats = torch.stack([frame.min(), frame.max(), filled.min(), self.time.min(), self.time.max()])
            first, last, least, earliest, latest = stats.tolist()
            shared, full = (first if first == last else None), least == w
            time = earliest if earliest == latest else None
        mask = None  # steady state: every slot valid, and flash-attn may be used
        if not full:
            mask = (self._slot_frame[None, :] < filled[:, None])[:, None, None, :]  # (B, 1, 1, W*N)
        self._slots = (frame, shared, mask)
        return time

    def advance(self) -> None:
        self.time += 1
        self._slots = None


@dataclass(frozen=True)
class LayerCache:
    """What one block reads and writes of a StreamCache: its own layer of keys and values."""

    cache: StreamCache
    index: int

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return self.cache.append(self.index, k, v)
